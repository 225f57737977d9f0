//! The filter's log records, captured from the sandbox's `wasmgate::filter` events.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One record a filter logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: Level,
    /// The message.
    pub message: String,
    /// The request it was logged for.
    pub request_id: String,
}

/// Records captured on one route.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<LogRecord>>>);

impl Capture {
    /// Run `f` (which drives the filter on this thread) with its log records captured.
    pub(crate) fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::with_default(subscriber, f)
    }

    pub(crate) fn records(&self) -> Vec<LogRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "wasmgate::filter" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let record = LogRecord {
            level: *event.metadata().level(),
            message: fields.message,
            request_id: fields.request_id,
        };
        eprintln!(
            "[{} {}] {}",
            record.level, record.request_id, record.message
        );
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    request_id: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "request_id" {
            self.request_id = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "request_id" => self.request_id = format!("{value:?}"),
            _ => {}
        }
    }
}
