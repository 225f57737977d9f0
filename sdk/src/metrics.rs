//! Metrics a filter keeps, exposed by the gateway's `GET /metrics`.
//!
//! Define a metric once per instance (in [`Filter::new`](crate::Filter::new)) and record into
//! it in the phases. The label count is part of the type, so a recording always gives one
//! value per label name:
//!
//! ```
//! use wasmgate_sdk::metrics::Counter;
//!
//! let refused = Counter::define("refused", "Requests refused, by reason", ["reason"])?;
//! refused.inc(["missing_key"]);
//! # Ok::<(), wasmgate_sdk::Error>(())
//! ```
//!
//! The gateway exposes it as `wasmgate_filter_<filter>_refused_total{route="...",reason="..."}`
//! (the filter's name with `-` turned into `_`; the route is always the first label). Metrics
//! belong to the filter, not the instance: every instance defines the same ones and records into
//! the same series, and a new version of the filter keeps them, as long as it defines them the
//! same way (change a metric's kind, labels or buckets under a new name).
//!
//! Label values should come from a small set (reasons, outcomes, methods): each metric keeps at
//! most 256 label sets, routes included; recordings for further sets are dropped and counted in
//! `wasmgate_filter_metric_overflow_total{filter, metric}`.
//!
//! Names (of metrics and labels) match `[a-z][a-z0-9_]*` and are at most 64 bytes; a metric
//! has at most 8 labels; `route`, `le` and names starting with `__` are reserved; metric names
//! may not end in `_total`, `_count`, `_sum` or `_bucket`. Outside the gateway (native unit
//! tests) definitions always succeed and recordings go to a per-thread table read by
//! [`recorded`].

use crate::__bindings::wasmgate::filter::telemetry as host;
use crate::Error;

/// A metric handle as the gateway gave it.
#[derive(Debug, Clone)]
struct Handle {
    id: u32,
    /// The name, for the native table.
    name: String,
}

impl Handle {
    fn define(
        name: &str,
        help: &str,
        kind: host::MetricKind,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<Handle, Error> {
        let id = if cfg!(target_family = "wasm") {
            host::define_metric(&host::Metric {
                name: name.to_string(),
                help: help.to_string(),
                kind,
                labels: labels.iter().map(|l| l.to_string()).collect(),
                buckets: buckets.to_vec(),
            })
            .map_err(Error::msg)?
        } else {
            0
        };
        Ok(Handle {
            id,
            name: name.to_string(),
        })
    }

    fn record(&self, op: Op, labels: &[&str], value: f64) {
        if cfg!(target_family = "wasm") {
            let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
            match op {
                Op::Add => host::add(self.id, &labels, value),
                Op::Set => host::set(self.id, &labels, value),
                Op::Observe => host::observe(self.id, &labels, value),
            }
        } else {
            native::record(&self.name, op, labels, value);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Add,
    Set,
    Observe,
}

/// A value that only goes up: requests refused, tokens issued. `N` is its number of labels.
#[derive(Debug, Clone)]
pub struct Counter<const N: usize>(Handle);

impl<const N: usize> Counter<N> {
    /// Define the counter `name` (shown with `_total`) with these label names.
    pub fn define(name: &str, help: &str, labels: [&str; N]) -> Result<Self, Error> {
        Handle::define(name, help, host::MetricKind::Counter, &labels, &[]).map(Counter)
    }

    /// Add one.
    pub fn inc(&self, labels: [&str; N]) {
        self.add(labels, 1.0);
    }

    /// Add `by` (negative values are dropped).
    pub fn add(&self, labels: [&str; N], by: f64) {
        self.0.record(Op::Add, &labels, by);
    }
}

/// A value that goes up and down, or is set: entries cached, keys loaded.
#[derive(Debug, Clone)]
pub struct Gauge<const N: usize>(Handle);

impl<const N: usize> Gauge<N> {
    /// Define the gauge `name` with these label names.
    pub fn define(name: &str, help: &str, labels: [&str; N]) -> Result<Self, Error> {
        Handle::define(name, help, host::MetricKind::Gauge, &labels, &[]).map(Gauge)
    }

    /// Add `by` (may be negative).
    pub fn add(&self, labels: [&str; N], by: f64) {
        self.0.record(Op::Add, &labels, by);
    }

    /// Set to `value`.
    pub fn set(&self, labels: [&str; N], value: f64) {
        self.0.record(Op::Set, &labels, value);
    }
}

/// Observations sorted into buckets: sizes, durations in seconds.
#[derive(Debug, Clone)]
pub struct Histogram<const N: usize>(Handle);

impl<const N: usize> Histogram<N> {
    /// Define the histogram `name` with these label names and bucket upper bounds
    /// (increasing, at most 32; empty for the default buckets, 5 ms to 10 s).
    pub fn define(
        name: &str,
        help: &str,
        labels: [&str; N],
        buckets: &[f64],
    ) -> Result<Self, Error> {
        Handle::define(name, help, host::MetricKind::Histogram, &labels, buckets).map(Histogram)
    }

    /// Observe `value`.
    pub fn observe(&self, labels: [&str; N], value: f64) {
        self.0.record(Op::Observe, &labels, value);
    }
}

/// Outside the gateway: what the metric `name` recorded on this thread for `labels` (a counter's
/// or gauge's value, a histogram's number of observations). For native unit tests.
pub fn recorded(name: &str, labels: &[&str]) -> Option<f64> {
    native::get(name, labels)
}

mod native {
    use super::Op;
    use std::cell::RefCell;
    use std::collections::HashMap;

    thread_local! {
        static TABLE: RefCell<HashMap<(String, Vec<String>), f64>> = RefCell::default();
    }

    pub(super) fn record(name: &str, op: Op, labels: &[&str], value: f64) {
        let key = (
            name.to_string(),
            labels.iter().map(|l| l.to_string()).collect(),
        );
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let entry = t.entry(key).or_default();
            match op {
                Op::Add => *entry += value,
                Op::Set => *entry = value,
                Op::Observe => *entry += 1.0,
            }
        });
    }

    pub(super) fn get(name: &str, labels: &[&str]) -> Option<f64> {
        let key = (
            name.to_string(),
            labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        );
        TABLE.with(|t| t.borrow().get(&key).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_recordings_can_be_read_back() {
        let c = Counter::define("refused", "", ["reason"]).unwrap();
        c.inc(["missing"]);
        c.add(["missing"], 2.0);
        let g = Gauge::define("keys", "", []).unwrap();
        g.set([], 7.0);
        let h = Histogram::define("size", "", [], &[]).unwrap();
        h.observe([], 0.3);
        h.observe([], 3.0);
        assert_eq!(recorded("refused", &["missing"]), Some(3.0));
        assert_eq!(recorded("keys", &[]), Some(7.0));
        assert_eq!(recorded("size", &[]), Some(2.0));
        assert_eq!(recorded("refused", &["other"]), None);
    }
}
