//! Logging through the gateway. Records carry the filter's name and the request id; the
//! gateway's log level applies. Outside the gateway (native unit tests) records go to stderr.
//! [`field`] adds a field to the request's access log record instead.

use crate::__bindings::wasmgate::filter::{log as host, types::LogLevel};

fn emit(level: LogLevel, message: &str) {
    if cfg!(target_family = "wasm") {
        host::log(level, message);
    } else {
        eprintln!("[{level:?}] {message}");
    }
}

/// Log at trace level.
pub fn trace(message: &str) {
    emit(LogLevel::Trace, message);
}

/// Log at debug level.
pub fn debug(message: &str) {
    emit(LogLevel::Debug, message);
}

/// Log at info level.
pub fn info(message: &str) {
    emit(LogLevel::Info, message);
}

/// Log at warn level.
pub fn warn(message: &str) {
    emit(LogLevel::Warn, message);
}

/// Log at error level.
pub fn error(message: &str) {
    emit(LogLevel::Error, message);
}

/// Add a field to this request's access log record (`fields.<name>` in the gateway's JSON
/// lines), e.g. the user a token named. Names match `[a-z][a-z0-9_]*` (at most 64 bytes);
/// values are cut to 256 bytes; at most 16 fields per request, a later one of the same name
/// replaces the earlier. Nothing happens when the route's requests are not logged. Outside the
/// gateway (native unit tests) fields are kept per thread and read with [`fields`].
pub fn field(name: &str, value: &str) {
    if cfg!(target_family = "wasm") {
        crate::__bindings::wasmgate::filter::telemetry::log_field(name, value);
    } else {
        FIELDS.with(|f| {
            let mut f = f.borrow_mut();
            f.retain(|(n, _)| n != name);
            f.push((name.to_string(), value.to_string()));
        });
    }
}

/// Outside the gateway: the fields [`field`] added on this thread since the last call.
pub fn fields() -> Vec<(String, String)> {
    FIELDS.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

thread_local! {
    static FIELDS: std::cell::RefCell<Vec<(String, String)>> = std::cell::RefCell::default();
}
