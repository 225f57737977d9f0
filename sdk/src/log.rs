//! Logging through the gateway. Records carry the filter's name and the request id; the
//! gateway's log level applies. Outside the gateway (native unit tests) records go to stderr.

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
