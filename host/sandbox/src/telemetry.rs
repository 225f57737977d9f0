//! What the `telemetry` import keeps: each filter's own metrics ([`FilterMetrics`], one per
//! filter name, read by the embedder when it exposes metrics) and the fields a filter adds to
//! its request's access log record ([`LogFields`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Metrics one filter may define.
pub const MAX_METRICS: usize = 64;
/// Label sets (the route included) one metric keeps; values for more are counted as overflow.
pub const MAX_SERIES: usize = 256;
/// Labels one metric may have besides `route`.
const MAX_LABELS: usize = 8;
/// Bucket bounds one histogram may have.
const MAX_BUCKETS: usize = 32;
/// Longest metric, label or field name.
const MAX_NAME: usize = 64;
/// Longest label value kept (longer ones are cut).
const MAX_LABEL_VALUE: usize = 128;
/// Fields one request's record holds.
pub const MAX_FIELDS: usize = 16;
/// Longest field value kept (longer ones are cut).
const MAX_FIELD_VALUE: usize = 256;
/// Histogram buckets when a definition gives none: Prometheus's defaults, 5 ms to 10 s.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down, or is set.
    Gauge,
    /// Observations sorted into buckets.
    Histogram,
}

/// One metric a filter defined.
#[derive(Debug)]
pub struct Metric {
    /// The name the filter gave (`[a-z][a-z0-9_]*`).
    pub name: String,
    /// Its help line.
    pub help: String,
    /// What it measures.
    pub kind: MetricKind,
    /// Its label names, after `route`.
    pub labels: Vec<String>,
    /// Histograms: bucket upper bounds, increasing (`+Inf` implied).
    pub buckets: Vec<f64>,
    series: Mutex<HashMap<Vec<String>, Value>>,
    overflow: AtomicU64,
}

/// The value of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's or gauge's value.
    Number(f64),
    /// A histogram: the count in each bucket (not cumulative; one more than the bounds, for
    /// `+Inf`), the sum and count of observations.
    Histogram {
        /// Observations per bucket.
        buckets: Vec<u64>,
        /// Sum of the observed values.
        sum: f64,
        /// Number of observations.
        count: u64,
    },
}

impl Metric {
    /// Every series: label values (the route first, then the filter's labels) and value.
    pub fn series(&self) -> Vec<(Vec<String>, Value)> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = series.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Recordings dropped because the metric already held [`MAX_SERIES`] label sets.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Apply `update` to the series for `route` + `values`, creating it if there is room.
    fn update(&self, route: &str, values: Vec<String>, update: impl FnOnce(&mut Value)) {
        if values.len() != self.labels.len() {
            return;
        }
        let mut key = Vec::with_capacity(values.len() + 1);
        key.push(route.to_string());
        key.extend(values.into_iter().map(|mut v| {
            truncate(&mut v, MAX_LABEL_VALUE);
            v
        }));
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(value) = series.get_mut(&key) {
            update(value);
        } else if series.len() >= MAX_SERIES {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut value = match self.kind {
                MetricKind::Histogram => Value::Histogram {
                    buckets: vec![0; self.buckets.len() + 1],
                    sum: 0.0,
                    count: 0,
                },
                _ => Value::Number(0.0),
            };
            update(&mut value);
            series.insert(key, value);
        }
    }

    /// Counters add non-negative values, gauges any value.
    pub(crate) fn add(&self, route: &str, values: Vec<String>, by: f64) {
        let ok = match self.kind {
            MetricKind::Counter => by >= 0.0 && by.is_finite(),
            MetricKind::Gauge => by.is_finite(),
            MetricKind::Histogram => false,
        };
        if ok {
            self.update(route, values, |v| {
                if let Value::Number(n) = v {
                    *n += by;
                }
            });
        }
    }

    /// Gauges only.
    pub(crate) fn set(&self, route: &str, values: Vec<String>, to: f64) {
        if self.kind == MetricKind::Gauge && !to.is_nan() {
            self.update(route, values, |v| *v = Value::Number(to));
        }
    }

    /// Histograms only.
    pub(crate) fn observe(&self, route: &str, values: Vec<String>, x: f64) {
        if self.kind != MetricKind::Histogram || x.is_nan() {
            return;
        }
        let bucket = self.buckets.partition_point(|bound| *bound < x);
        self.update(route, values, |v| {
            if let Value::Histogram {
                buckets,
                sum,
                count,
            } = v
            {
                buckets[bucket] += 1;
                *sum += x;
                *count += 1;
            }
        });
    }

    fn same_shape(&self, kind: MetricKind, labels: &[String], buckets: &[f64]) -> bool {
        self.kind == kind && self.labels == labels && self.buckets == buckets
    }
}

/// Every metric one filter defined, shared by all its instances and versions.
#[derive(Debug, Default)]
pub struct FilterMetrics {
    metrics: RwLock<Vec<Arc<Metric>>>,
}

impl FilterMetrics {
    /// Define `name`, or find it when defined before with the same kind, labels and buckets.
    /// Returns the handle the recording calls take.
    pub fn define(
        &self,
        name: String,
        help: String,
        kind: MetricKind,
        labels: Vec<String>,
        buckets: Vec<f64>,
    ) -> Result<u32, String> {
        check_name("metric name", &name)?;
        if ["_total", "_count", "_sum", "_bucket"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            return Err(format!(
                "metric name {name:?} ends in a suffix Prometheus reserves (_total, _count, _sum, _bucket)"
            ));
        }
        if labels.len() > MAX_LABELS {
            return Err(format!(
                "metric {name:?} has {} labels; at most {MAX_LABELS}",
                labels.len()
            ));
        }
        for (i, label) in labels.iter().enumerate() {
            check_name("label name", label)?;
            if label == "route" || label == "le" || label.starts_with("__") {
                return Err(format!("label name {label:?} is reserved"));
            }
            if labels[..i].contains(label) {
                return Err(format!("label {label:?} appears twice"));
            }
        }
        let buckets = match kind {
            MetricKind::Histogram if buckets.is_empty() => DEFAULT_BUCKETS.to_vec(),
            MetricKind::Histogram => {
                if buckets.len() > MAX_BUCKETS {
                    return Err(format!("at most {MAX_BUCKETS} buckets"));
                }
                if buckets.iter().any(|b| !b.is_finite())
                    || buckets.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err("bucket bounds must be finite and increasing".into());
                }
                buckets
            }
            _ if !buckets.is_empty() => {
                return Err(format!("metric {name:?}: only histograms have buckets"));
            }
            _ => buckets,
        };
        let mut help = help;
        help.retain(|c| c != '\n' && c != '\r');
        truncate(&mut help, 512);

        let mut metrics = self.metrics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = metrics.iter().position(|m| m.name == name) {
            return if metrics[i].same_shape(kind, &labels, &buckets) {
                Ok(i as u32)
            } else {
                Err(format!(
                    "metric {name:?} was defined before with another kind, labels or buckets \
                     (give a changed metric a new name)"
                ))
            };
        }
        if metrics.len() >= MAX_METRICS {
            return Err(format!("at most {MAX_METRICS} metrics per filter"));
        }
        metrics.push(Arc::new(Metric {
            name,
            help,
            kind,
            labels,
            buckets,
            series: Mutex::default(),
            overflow: AtomicU64::new(0),
        }));
        Ok(metrics.len() as u32 - 1)
    }

    /// The metric behind `handle`.
    pub(crate) fn get(&self, handle: u32) -> Option<Arc<Metric>> {
        let metrics = self.metrics.read().unwrap_or_else(|e| e.into_inner());
        metrics.get(handle as usize).cloned()
    }

    /// Every metric, in the order defined.
    pub fn all(&self) -> Vec<Arc<Metric>> {
        self.metrics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Fields filters add to one request's access log record: bounded, a later field of a name
/// replacing the earlier.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogFields {
    fields: Vec<(String, String)>,
}

impl LogFields {
    /// Add (or replace) a field; beyond [`MAX_FIELDS`], or with a bad name, it is dropped.
    pub fn add(&mut self, name: String, mut value: String) {
        if check_name("field name", &name).is_err() {
            return;
        }
        truncate(&mut value, MAX_FIELD_VALUE);
        if let Some(field) = self.fields.iter_mut().find(|(n, _)| *n == name) {
            field.1 = value;
        } else if self.fields.len() < MAX_FIELDS {
            self.fields.push((name, value));
        }
    }

    /// Add every field of `other`, in order.
    pub fn extend(&mut self, other: LogFields) {
        for (name, value) in other.fields {
            self.add(name, value);
        }
    }

    /// No field was added.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields, in the order first added.
    pub fn take(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.fields)
    }
}

/// `[a-z][a-z0-9_]*`, at most [`MAX_NAME`] bytes.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} must match [a-z][a-z0-9_]* and be at most {MAX_NAME} bytes"
        ))
    }
}

/// Cut `s` to at most `max` bytes, on a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defining_again_finds_the_same_metric_and_a_changed_shape_is_refused() {
        let m = FilterMetrics::default();
        let a = m
            .define(
                "refused".into(),
                "h".into(),
                MetricKind::Counter,
                labels(&["reason"]),
                vec![],
            )
            .unwrap();
        let again = m
            .define(
                "refused".into(),
                "other help".into(),
                MetricKind::Counter,
                labels(&["reason"]),
                vec![],
            )
            .unwrap();
        assert_eq!(a, again);
        let err = m
            .define(
                "refused".into(),
                "h".into(),
                MetricKind::Gauge,
                labels(&["reason"]),
                vec![],
            )
            .unwrap_err();
        assert!(err.contains("new name"), "{err}");
        for (name, label) in [
            ("Bad", "x"),
            ("ok", "route"),
            ("x_total", "y"),
            ("ok2", "le"),
        ] {
            assert!(
                m.define(
                    name.into(),
                    "".into(),
                    MetricKind::Counter,
                    labels(&[label]),
                    vec![]
                )
                .is_err(),
                "{name} {label}"
            );
        }
    }

    #[test]
    fn series_are_capped_and_the_overflow_counted() {
        let m = FilterMetrics::default();
        let h = m
            .define(
                "seen".into(),
                "".into(),
                MetricKind::Counter,
                labels(&["user"]),
                vec![],
            )
            .unwrap();
        let metric = m.get(h).unwrap();
        for i in 0..MAX_SERIES + 10 {
            metric.add("r", vec![format!("u{i}")], 1.0);
        }
        metric.add("r", vec!["u0".into()], 2.0);
        metric.add("r", vec![], 1.0); // wrong label count: dropped
        metric.add("r", vec!["u1".into()], -1.0); // counters only go up
        let series = metric.series();
        assert_eq!(series.len(), MAX_SERIES);
        assert_eq!(metric.overflow(), 10);
        let u0 = series.iter().find(|(k, _)| k[1] == "u0").unwrap();
        assert_eq!(u0.0[0], "r");
        assert_eq!(u0.1, Value::Number(3.0));
    }

    #[test]
    fn histograms_sort_observations_into_buckets() {
        let m = FilterMetrics::default();
        let h = m
            .define(
                "size".into(),
                "".into(),
                MetricKind::Histogram,
                vec![],
                vec![1.0, 10.0],
            )
            .unwrap();
        let metric = m.get(h).unwrap();
        for x in [0.5, 1.0, 5.0, 50.0] {
            metric.observe("r", vec![], x);
        }
        let series = metric.series();
        assert_eq!(
            series[0].1,
            Value::Histogram {
                buckets: vec![2, 1, 1],
                sum: 56.5,
                count: 4
            }
        );
    }

    #[test]
    fn log_fields_are_bounded_and_replaced_by_name() {
        let mut f = LogFields::default();
        f.add("user".into(), "ann".into());
        f.add("user".into(), "bob".into());
        f.add("Bad Name".into(), "x".into());
        f.add("long".into(), "é".repeat(200));
        for i in 0..40 {
            f.add(format!("f{i}"), "v".into());
        }
        let fields = f.take();
        assert_eq!(fields.len(), MAX_FIELDS);
        assert_eq!(fields[0], ("user".into(), "bob".into()));
        assert!(fields[1].1.len() <= MAX_FIELD_VALUE);
    }
}
