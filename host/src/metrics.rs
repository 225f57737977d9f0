//! The gateway's Prometheus metrics, one registry per running gateway, served by the admin
//! endpoint at `GET /metrics` in the text format (prometheus-client). Names follow Prometheus'
//! conventions: `wasmgate_` prefix, base units, `_total` for counters.

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use wasmgate_sandbox::{FilterMetrics, MetricKind, Value};

/// The last bucket's bound: prometheus-client writes `le="+Inf"` for `f64::MAX` only (it writes
/// `f64::INFINITY` as `inf`, which OpenMetrics parsers refuse).
const PLUS_INF: f64 = f64::MAX;

/// The content type of the OpenMetrics text `/metrics` serves by default.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of Prometheus' text format 0.0.4.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` values prefer Prometheus text 0.0.4 (`text/plain`) to
/// OpenMetrics: the higher `q` wins, OpenMetrics on a tie or when neither is named (`*/*`, no
/// `Accept` at all).
pub fn prefers_text_004<'a>(accept: impl Iterator<Item = &'a str>) -> bool {
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for range in accept.flat_map(|v| v.split(',')) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            openmetrics = openmetrics.max(q);
        } else if media.eq_ignore_ascii_case("text/plain") {
            text = text.max(q);
        }
    }
    text > openmetrics
}

/// OpenMetrics text (as [`Metrics::render`] writes it) rewritten in Prometheus' text format
/// 0.0.4: a counter's `# HELP` and `# TYPE` name its samples' `_total` name, `unknown` is
/// `untyped`, an info metric is a gauge named `_info`, and `# UNIT`, exemplars and `# EOF` go.
pub fn text_004(openmetrics: &str) -> String {
    let mut renamed: FxHashMap<&str, (String, &str)> = FxHashMap::default();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            let new = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" | "stateset" | "gaugehistogram" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            renamed.insert(name, new);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = renamed.get(name).map_or(name, |(new, _)| new.as_str());
            // 0.0.4 escapes only `\` and `\n` in help text.
            let help = help.replace("\\\"", "\"");
            out.push_str(&format!("# HELP {name} {help}\n"));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(name, _)| name);
            match renamed.get(name) {
                Some((new, kind)) => out.push_str(&format!("# TYPE {new} {kind}\n")),
                None => out.push_str(&format!("{line}\n")),
            }
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(without_exemplar(line));
            out.push('\n');
        }
    }
    out
}

/// A sample line without its exemplar (` # {...} value`), which 0.0.4 does not have.
fn without_exemplar(line: &str) -> &str {
    // Label values may hold `#`: look only after the label set, minding quotes.
    let mut in_quotes = false;
    let mut escaped = false;
    let mut after_labels = 0;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => {
                after_labels = i;
                break;
            }
            _ => {}
        }
    }
    match line[after_labels..].find(" # ") {
        Some(at) => &line[..after_labels + at],
        None => line,
    }
}

/// A label value shared without copying (route, service and filter names), interned: every
/// `Name` of one text shares its string and its slot, a small number by which the per-request
/// counts find their place without hashing or comparing the text.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>, u32);

/// Every name interned in this process, and its slot (names are few and come from configs).
static INTERNED: LazyLock<std::sync::Mutex<FxHashMap<Arc<str>, u32>>> =
    LazyLock::new(Default::default);

impl Name {
    /// The name `text`, with the slot it has had since it was first seen in this process.
    pub fn new(text: &str) -> Name {
        let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((text, slot)) = interned.get_key_value(text) {
            return Name(text.clone(), *slot);
        }
        let slot = u32::try_from(interned.len()).expect("fewer than 2^32 names");
        let text: Arc<str> = Arc::from(text);
        interned.insert(text.clone(), slot);
        Name(text, slot)
    }

    fn slot(&self) -> usize {
        self.1 as usize
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's name; `""` when no route matched.
    pub route: Name,
    /// The method, or `OTHER` for one outside RFC 9110's (bounded cardinality).
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Name,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: Name,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub service: Name,
    /// `connect_timeout`, `refused`, `connect_failed`, `reset`, `timeout`, `no_endpoint`,
    /// `overloaded`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub filter: Name,
    /// `request` or `response`.
    pub phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterFailureLabels {
    pub filter: Name,
    pub phase: &'static str,
    /// `trap`, `deadline`, `memory`, `error` or `invalid`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    pub filter: String,
    /// `loaded` or `rejected`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `applied` or `rejected`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindingLabels {
    pub route: Name,
    pub filter: Name,
}

/// One filter binding's state, read when metrics are scraped.
pub struct BindingState {
    pub route: Name,
    pub filter: Name,
    pub breaker_open: bool,
    pub instances_started: u64,
    pub instances_idle: usize,
}

/// One upstream endpoint's state, read when metrics are scraped (endpoints are bounded by the
/// config and by what DNS discovery resolved).
#[derive(Debug, Clone)]
pub struct EndpointSample {
    pub service: Name,
    /// The endpoint's URL, with the address DNS discovery resolved it to, if any.
    pub endpoint: Arc<str>,
    pub healthy: bool,
    pub ejected: bool,
    pub active: u64,
    pub requests: u64,
    pub failures: u64,
}

/// Endpoint states as the last scrape found them.
#[derive(Debug, Default)]
struct EndpointCollector {
    current: std::sync::Mutex<Vec<EndpointSample>>,
}

impl Collector for EndpointCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let samples = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        type Read = fn(&EndpointSample) -> u64;
        let families: [(&str, &str, MetricType, Read); 5] = [
            (
                "upstream_endpoint_requests",
                "Tries sent to an upstream endpoint since it appeared",
                MetricType::Counter,
                |s| s.requests,
            ),
            (
                "upstream_endpoint_failures",
                "Tries to an upstream endpoint that failed (no response or 5xx) since it appeared",
                MetricType::Counter,
                |s| s.failures,
            ),
            (
                "upstream_endpoint_active_requests",
                "Tries to an upstream endpoint awaiting their response headers now",
                MetricType::Gauge,
                |s| s.active,
            ),
            (
                "upstream_endpoint_healthy",
                "1 while an upstream endpoint passes its active health checks (or has none)",
                MetricType::Gauge,
                |s| u64::from(s.healthy),
            ),
            (
                "upstream_endpoint_ejected",
                "1 while outlier detection keeps traffic away from an upstream endpoint",
                MetricType::Gauge,
                |s| u64::from(s.ejected),
            ),
        ];
        for (name, help, kind, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for sample in &samples {
                let labels = [
                    ("service", &*sample.service.0),
                    ("endpoint", &*sample.endpoint),
                ];
                let labels = labels.as_slice();
                let mut series = family.encode_family(&labels)?;
                let value = read(sample);
                match kind {
                    MetricType::Counter => {
                        series.encode_counter::<NoLabelSet, _, u64>(&value, None)?
                    }
                    _ => series.encode_gauge(&(value as i64))?,
                }
            }
        }
        Ok(())
    }
}

/// Every metric the gateway keeps, and the registry that names them.
pub struct Metrics {
    registry: Registry,
    /// Requests, their durations, filter phase and upstream try durations are counted
    /// (`[metrics] enabled`).
    pub per_request: bool,
    /// Requests and the durations counted for each, per thread.
    per_thread: Arc<PerThread>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub upstream_retries: Family<ServiceLabels, Counter>,
    pub open_connections: Gauge,
    pub access_log_dropped: Counter,
    pub filter_failures: Family<FilterFailureLabels, Counter>,
    pub filter_loads: Family<LoadLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    breaker_open: Family<BindingLabels, Gauge>,
    instances_started: Family<BindingLabels, Gauge>,
    instances_idle: Family<BindingLabels, Gauge>,
    resident_memory: Gauge,
    open_fds: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    /// CPU seconds already added to `cpu_seconds`, in microseconds.
    cpu_counted_us: AtomicU64,
    /// The metrics filters defined, as the last scrape found them.
    filters: Arc<FilterCollector>,
    /// Upstream endpoints, as the last scrape found them.
    endpoints: Arc<EndpointCollector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The metrics filters define (`wasmgate_filter_<filter>_<name>`, the route first among the
/// labels), and how many recordings each dropped at its cardinality cap
/// (`wasmgate_filter_metric_overflow_total`).
#[derive(Debug, Default)]
struct FilterCollector {
    current: std::sync::Mutex<Vec<(Name, Arc<FilterMetrics>)>>,
}

impl Collector for FilterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let filters = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut overflow = Vec::new();
        for (filter, metrics) in &filters {
            let prefix = format!("filter_{}_", filter.0.replace('-', "_"));
            for metric in metrics.all() {
                let name = format!("{prefix}{}", metric.name);
                let kind = match metric.kind {
                    MetricKind::Counter => MetricType::Counter,
                    MetricKind::Gauge => MetricType::Gauge,
                    MetricKind::Histogram => MetricType::Histogram,
                };
                let mut family = encoder.encode_descriptor(&name, &metric.help, None, kind)?;
                let names =
                    std::iter::once("route").chain(metric.labels.iter().map(String::as_str));
                for (values, value) in metric.series() {
                    let labels: Vec<(&str, &str)> = names
                        .clone()
                        .zip(values.iter().map(String::as_str))
                        .collect();
                    let mut series = family.encode_family(&labels)?;
                    match (metric.kind, value) {
                        (MetricKind::Counter, Value::Number(n)) => {
                            series.encode_counter::<NoLabelSet, _, u64>(&n, None)?
                        }
                        (MetricKind::Gauge, Value::Number(n)) => series.encode_gauge(&n)?,
                        (
                            _,
                            Value::Histogram {
                                buckets,
                                sum,
                                count,
                            },
                        ) => {
                            // Per bucket, not cumulative: the encoder adds them up.
                            let bounds: Vec<(f64, u64)> = metric
                                .buckets
                                .iter()
                                .copied()
                                .chain([PLUS_INF])
                                .zip(buckets)
                                .collect();
                            series.encode_histogram::<NoLabelSet>(sum, count, &bounds, None)?
                        }
                        _ => {}
                    }
                }
                overflow.push((filter.0.clone(), metric.name.clone(), metric.overflow()));
            }
        }
        if !overflow.is_empty() {
            let mut family = encoder.encode_descriptor(
                "filter_metric_overflow",
                "Recordings of a filter's metric dropped because it had its most label sets",
                None,
                MetricType::Counter,
            )?;
            for (filter, metric, dropped) in &overflow {
                let labels = [("filter", &**filter), ("metric", metric.as_str())];
                family
                    .encode_family(&labels.as_slice())?
                    .encode_counter::<NoLabelSet, _, u64>(dropped, None)?;
            }
        }
        Ok(())
    }
}

/// Histogram buckets that start at `start_ns` and double `len - 1` times (`len` below
/// [`MAX_BUCKETS`]); a duration's bucket is found by integer comparisons from the bottom (most
/// calls land in the first few).
struct Doubling {
    start_ns: u64,
    len: usize,
    bounds: LazyLock<Vec<f64>>,
}

/// Filter call buckets: 10 µs to about 160 ms, doubling (deadlines are 100 ms by default).
static FILTER_LATENCY: Doubling = Doubling {
    start_ns: 10_000,
    len: 15,
    bounds: LazyLock::new(|| exponential_buckets(0.000_01, 2.0, 15).collect()),
};

/// Latency buckets: 250 µs to about 16 s, doubling.
static LATENCY: Doubling = Doubling {
    start_ns: 250_000,
    len: 17,
    bounds: LazyLock::new(|| exponential_buckets(0.000_25, 2.0, 17).collect()),
};

impl Doubling {
    /// The bucket `d` falls in (`le` semantics: a value on a bound is in that bound's bucket);
    /// `len` is `+Inf`.
    fn index(&self, ns: u64) -> usize {
        // The smallest i with ns <= start * 2^i.
        let (mut i, mut bound) = (0, self.start_ns);
        while i < self.len && ns > bound {
            i += 1;
            bound <<= 1;
        }
        i
    }
}

/// The route label of requests no route matched.
static UNMATCHED: LazyLock<Name> = LazyLock::new(|| Name::new(""));

/// Shards of the per-request metrics: a thread counts into its own, so two workers never
/// contend for a lock or a cache line; a scrape adds the shards up.
const SHARDS: usize = 8;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// The per-request metrics, in per-thread shards.
#[derive(Debug, Default)]
struct PerThread {
    shards: [Shard; SHARDS],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(std::sync::Mutex<ShardData>);

#[derive(Debug, Default)]
struct ShardData {
    /// By route: requests by (method, status), and their durations.
    routes: Slots<RouteCounts>,
    /// By service: upstream try durations.
    services: Slots<Buckets>,
    /// By filter: phase call durations, request then response.
    filters: Slots<[Buckets; 2]>,
}

/// Counts by [`Name`], at the name's slot.
#[derive(Debug)]
struct Slots<T>(Vec<Option<(Name, T)>>);

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots(Vec::new())
    }
}

impl<T: Default> Slots<T> {
    /// The counts of `name`, made on first use.
    fn at(&mut self, name: &Name) -> &mut T {
        let slot = name.slot();
        if slot >= self.0.len() {
            self.0.resize_with(slot + 1, || None);
        }
        &mut self.0[slot]
            .get_or_insert_with(|| (name.clone(), T::default()))
            .1
    }

    fn iter(&self) -> impl Iterator<Item = &(Name, T)> {
        self.0.iter().flatten()
    }
}

#[derive(Debug, Default)]
struct RouteCounts {
    /// Requests by method label and status: a handful per route, so a list searched from
    /// the front beats hashing on every request.
    requests: Vec<((Method, u16), u64)>,
    duration: Buckets,
}

impl RouteCounts {
    fn count(&mut self, key: (Method, u16), n: u64) {
        match self.requests.iter_mut().find(|(k, _)| *k == key) {
            Some((_, count)) => *count += n,
            None => self.requests.push((key, n)),
        }
    }
}

/// Buckets a histogram has at most, `+Inf` included.
const MAX_BUCKETS: usize = 18;

/// A histogram's counts: per bucket (not cumulative; the one after the last bound is `+Inf`),
/// sum (in nanoseconds) and count.
#[derive(Debug, Default, Clone)]
struct Buckets {
    counts: [u64; MAX_BUCKETS],
    sum_ns: u128,
    count: u64,
}

impl Buckets {
    fn observe(&mut self, buckets: &Doubling, d: Duration) {
        let ns = d
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()));
        self.counts[buckets.index(ns)] += 1;
        self.sum_ns += u128::from(ns);
        self.count += 1;
    }

    fn add(&mut self, other: &Buckets) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_ns += other.sum_ns;
        self.count += other.count;
    }

    /// Write this histogram as one series; `bounds` are the buckets it was observed with.
    fn encode(&self, mut series: MetricEncoder<'_>, bounds: &[f64]) -> std::fmt::Result {
        // Per bucket, not cumulative: the encoder adds them up.
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain([PLUS_INF])
            .zip(self.counts.iter().copied())
            .collect();
        let sum = self.sum_ns as f64 / 1e9;
        series.encode_histogram::<NoLabelSet>(sum, self.count, &buckets, None)
    }
}

impl PerThread {
    /// This thread's shard, locked (only a scrape ever waits for it).
    fn with<R>(&self, f: impl FnOnce(&mut ShardData) -> R) -> R {
        let shard = &self.shards[SHARD.with(|s| *s)];
        f(&mut shard.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every shard added up.
    fn merged(&self) -> ShardData {
        let mut all = ShardData::default();
        for shard in &self.shards {
            let data = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            for (route, counts) in data.routes.iter() {
                let mine = all.routes.at(route);
                for (key, n) in &counts.requests {
                    mine.count(*key, *n);
                }
                mine.duration.add(&counts.duration);
            }
            for (service, buckets) in data.services.iter() {
                all.services.at(service).add(buckets);
            }
            for (filter, phases) in data.filters.iter() {
                let mine = all.filters.at(filter);
                mine[0].add(&phases[0]);
                mine[1].add(&phases[1]);
            }
        }
        all
    }
}

impl Collector for PerThread {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let all = self.merged();
        let mut routes: Vec<_> = all.routes.iter().collect();
        routes.sort_by(|a, b| a.0.0.cmp(&b.0.0));
        let mut family = encoder.encode_descriptor(
            "requests",
            "Requests answered, by route, method and status",
            None,
            MetricType::Counter,
        )?;
        for (route, counts) in &routes {
            let mut keys: Vec<_> = counts.requests.iter().collect();
            keys.sort_by_key(|((method, status), _)| (method.label(), *status));
            for ((method, status), n) in keys {
                let labels = RequestLabels {
                    route: (*route).clone(),
                    method: method.label(),
                    status: *status,
                };
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        let seconds = prometheus_client::registry::Unit::Seconds;
        let mut family = encoder.encode_descriptor(
            "request_duration",
            "Time from a request's arrival to its response headers, by route",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for (route, counts) in &routes {
            let labels = RouteLabels {
                route: (*route).clone(),
            };
            counts
                .duration
                .encode(family.encode_family(&labels)?, &LATENCY.bounds)?;
        }
        let mut services: Vec<_> = all.services.iter().collect();
        services.sort_by(|a, b| a.0.0.cmp(&b.0.0));
        let mut family = encoder.encode_descriptor(
            "upstream_request_duration",
            "Time from sending a try upstream to its response headers, by service",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for (service, d) in services {
            let labels = ServiceLabels {
                service: service.clone(),
            };
            d.encode(family.encode_family(&labels)?, &LATENCY.bounds)?;
        }
        let mut filters: Vec<_> = all.filters.iter().collect();
        filters.sort_by(|a, b| a.0.0.cmp(&b.0.0));
        let mut family = encoder.encode_descriptor(
            "filter_phase_duration",
            "Time of one filter phase call, instance included, by filter and phase",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for (filter, phases) in filters {
            for (phase, d) in ["request", "response"].into_iter().zip(phases) {
                if d.count == 0 {
                    continue;
                }
                let labels = PhaseLabels {
                    filter: filter.clone(),
                    phase,
                };
                d.encode(family.encode_family(&labels)?, &FILTER_LATENCY.bounds)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    pub fn new(per_request: bool) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("wasmgate");
        let m = Metrics {
            per_thread: Arc::default(),
            upstream_errors: Family::default(),
            upstream_retries: Family::default(),
            open_connections: Gauge::default(),
            access_log_dropped: Counter::default(),
            filter_failures: Family::default(),
            filter_loads: Family::default(),
            config_reloads: Family::default(),
            breaker_open: Family::default(),
            instances_started: Family::default(),
            instances_idle: Family::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            cpu_seconds: Counter::default(),
            cpu_counted_us: AtomicU64::new(0),
            filters: Arc::default(),
            endpoints: Arc::default(),
            registry: Registry::default(),
            per_request,
        };
        registry.register_collector(Box::new(m.filters.clone()));
        registry.register_collector(Box::new(m.endpoints.clone()));
        registry.register_collector(Box::new(m.per_thread.clone()));
        registry.register(
            "upstream_errors",
            "Upstream tries that got no response, by service and kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries sent, by service",
            m.upstream_retries.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            m.open_connections.clone(),
        );
        registry.register(
            "filter_failures",
            "Filter phase calls that failed, by filter, phase and kind",
            m.filter_failures.clone(),
        );
        registry.register(
            "filter_loads",
            "Filter versions read from disk, by filter and result (loaded or rejected)",
            m.filter_loads.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads, by result (applied or rejected)",
            m.config_reloads.clone(),
        );
        registry.register(
            "filter_breaker_open",
            "1 while a route's filter is not run because it keeps failing",
            m.breaker_open.clone(),
        );
        registry.register(
            "filter_instances_started",
            "Instances a route's filter has configured since its route config was applied",
            m.instances_started.clone(),
        );
        registry.register(
            "filter_instances_idle",
            "Instances of a route's filter idle for reuse now",
            m.instances_idle.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log records dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        let process = registry.sub_registry_with_prefix("process");
        process.register_with_unit(
            "resident_memory",
            "Resident memory of the gateway process",
            prometheus_client::registry::Unit::Bytes,
            m.resident_memory.clone(),
        );
        process.register(
            "open_fds",
            "Open file descriptors of the gateway process",
            m.open_fds.clone(),
        );
        process.register_with_unit(
            "cpu",
            "CPU time (user and system) of the gateway process",
            prometheus_client::registry::Unit::Seconds,
            m.cpu_seconds.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The text exposition of every metric, process figures read now, and the serving
    /// bindings' state as `bindings` gives it.
    ///
    /// `filters` are the metrics of each filter the serving routes use, by filter name;
    /// `endpoints` the serving services' endpoints.
    pub fn render(
        &self,
        bindings: Vec<BindingState>,
        filters: Vec<(Name, Arc<FilterMetrics>)>,
        endpoints: Vec<EndpointSample>,
    ) -> String {
        self.read_process();
        *self
            .filters
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = filters;
        *self
            .endpoints
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = endpoints;
        for family in [
            &self.breaker_open,
            &self.instances_started,
            &self.instances_idle,
        ] {
            family.clear();
        }
        for b in bindings {
            let labels = BindingLabels {
                route: b.route,
                filter: b.filter,
            };
            self.breaker_open
                .get_or_create(&labels)
                .set(i64::from(b.breaker_open));
            self.instances_started
                .get_or_create(&labels)
                .set(b.instances_started as i64);
            self.instances_idle
                .get_or_create(&labels)
                .set(b.instances_idle as i64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }

    /// Count a filter file read: loaded or rejected.
    pub fn filter_load(&self, filter: &str, loaded: bool) {
        self.filter_loads
            .get_or_create(&LoadLabels {
                filter: filter.to_string(),
                result: if loaded { "loaded" } else { "rejected" },
            })
            .inc();
    }

    /// Count a config reload: applied or rejected.
    pub fn config_reload(&self, applied: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if applied { "applied" } else { "rejected" },
            })
            .inc();
    }

    /// Count one answered request.
    ///
    /// `route` is `None` when no route matched (the label is then `""`).
    pub fn request(
        &self,
        route: Option<&Name>,
        method: &http::Method,
        status: u16,
        took: Duration,
    ) {
        if !self.per_request {
            return;
        }
        let key = (Method::of(method), status);
        let route = route.unwrap_or_else(|| &UNMATCHED);
        self.per_thread.with(|data| {
            let counts = data.routes.at(route);
            counts.count(key, 1);
            counts.duration.observe(&LATENCY, took);
        });
    }

    /// Count one upstream try's time to its response headers.
    pub fn upstream_try(&self, service: &Name, took: Duration) {
        if !self.per_request {
            return;
        }
        self.per_thread
            .with(|data| data.services.at(service).observe(&LATENCY, took));
    }

    /// Count one filter phase call's time; `response` for the response phase.
    pub fn filter_call(&self, filter: &Name, response: bool, took: Duration) {
        if !self.per_request {
            return;
        }
        self.per_thread.with(|data| {
            data.filters.at(filter)[usize::from(response)].observe(&FILTER_LATENCY, took)
        });
    }

    fn read_process(&self) {
        let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
            return;
        };
        let page = 4096;
        if let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i64>().ok())
        {
            self.resident_memory.set(pages * page);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        // utime and stime, fields 14 and 15, in clock ticks (100 per second on Linux).
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest)
        {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
                .sum();
            let us = ticks * 10_000;
            let before = self.cpu_counted_us.swap(us, Ordering::Relaxed);
            if us > before {
                self.cpu_seconds.inc_by((us - before) as f64 / 1e6);
            }
        }
    }
}

/// The label for a method: RFC 9110's by name, any other as `OTHER`.
/// A request's method as a label: one of RFC 9110's or `OTHER` (bounded cardinality), kept
/// as a number so that finding a route's count compares integers, not strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Method(u8);

impl Method {
    const LABELS: [&'static str; 10] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
    ];

    fn of(method: &http::Method) -> Method {
        use http::Method as M;
        Method(match *method {
            M::GET => 0,
            M::HEAD => 1,
            M::POST => 2,
            M::PUT => 3,
            M::DELETE => 4,
            M::CONNECT => 5,
            M::OPTIONS => 6,
            M::TRACE => 7,
            M::PATCH => 8,
            _ => 9,
        })
    }

    fn label(self) -> &'static str {
        Self::LABELS[usize::from(self.0)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Methods outside RFC 9110's share one label; the rest keep their own.
    #[test]
    fn method_labels() {
        for (method, label) in [
            (http::Method::GET, "GET"),
            (http::Method::PATCH, "PATCH"),
            (http::Method::CONNECT, "CONNECT"),
            (http::Method::from_bytes(b"PURGE").unwrap(), "OTHER"),
        ] {
            assert_eq!(Method::of(&method).label(), label);
        }
    }

    /// A scraper gets 0.0.4 only when it prefers `text/plain`; OpenMetrics otherwise.
    #[test]
    fn accept_chooses_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, text) in [
            (vec![], false),
            (vec!["*/*"], false),
            (vec![prometheus], false),
            (vec!["text/plain"], true),
            (vec!["text/plain;version=0.0.4;q=0.9, */*;q=0.1"], true),
            (
                vec!["application/openmetrics-text; q=0.4", "text/plain; q=0.5"],
                true,
            ),
            (
                vec!["text/plain;q=0.5, application/openmetrics-text"],
                false,
            ),
            (vec!["text/plain;q=0"], false),
        ] {
            assert_eq!(prefers_text_004(accept.iter().copied()), text, "{accept:?}");
        }
    }

    /// Counters are named by their `_total` samples; units, exemplars and `# EOF` go.
    #[test]
    fn text_004_names_counters_by_their_samples() {
        let om = concat!(
            "# HELP app_requests Requests \\\"served\\\".\n",
            "# TYPE app_requests counter\n",
            "app_requests_total{route=\"a # b\"} 3 # {trace=\"x\"} 1.0\n",
            "# HELP app_cpu_seconds CPU.\n",
            "# TYPE app_cpu_seconds counter\n",
            "# UNIT app_cpu_seconds seconds\n",
            "app_cpu_seconds_total 0.5\n",
            "# HELP app_up Up.\n",
            "# TYPE app_up gauge\n",
            "app_up 1\n",
            "# TYPE app_build info\n",
            "app_build_info{version=\"1\"} 1\n",
            "# EOF\n",
        );
        assert_eq!(
            text_004(om),
            concat!(
                "# HELP app_requests_total Requests \"served\".\n",
                "# TYPE app_requests_total counter\n",
                "app_requests_total{route=\"a # b\"} 3\n",
                "# HELP app_cpu_seconds_total CPU.\n",
                "# TYPE app_cpu_seconds_total counter\n",
                "app_cpu_seconds_total 0.5\n",
                "# HELP app_up Up.\n",
                "# TYPE app_up gauge\n",
                "app_up 1\n",
                "# TYPE app_build_info gauge\n",
                "app_build_info{version=\"1\"} 1\n",
            )
        );
    }

    /// The integer bucket search agrees with Prometheus' `le` rule on the float bounds,
    /// including values exactly on a bound and past the last.
    #[test]
    fn doubling_buckets_match_the_bounds() {
        for buckets in [&LATENCY, &FILTER_LATENCY] {
            assert_eq!(buckets.len, buckets.bounds.len());
            let mut probes = vec![0, 1, u64::MAX / 2];
            for bound in buckets.bounds.iter() {
                let ns = (bound * 1e9).round() as u64;
                probes.extend([ns - 1, ns, ns + 1]);
            }
            for ns in probes {
                let by_bounds = buckets
                    .bounds
                    .partition_point(|b| (b * 1e9).round() < ns as f64);
                assert_eq!(buckets.index(ns), by_bounds, "{ns} ns");
            }
        }
    }
}
