//! Every host import of the WIT world, beside the store data they work on: `log`, `host`
//! (clock, randomness), `cache` (a small per-filter cache), `outbound` (service calls, which
//! the embedder implements through [`Outbound`]) and `telemetry` (kept in [`crate::telemetry`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::wasmgate::filter::{cache, host, log, outbound, state, telemetry, types};
use crate::messages::Held;
use crate::state::{Counter, MAX_KEY_BYTES, StateError, StateFuture, StateStore, ThrottleResult};
use crate::telemetry::{FilterMetrics, LogFields, MetricKind};
use crate::wit::{CallError, OutboundRequest, OutboundResponse};

/// Entries one filter's cache holds at most.
const CACHE_MAX_ENTRIES: usize = 10_000;
/// Bytes (keys and values) one filter's cache holds at most.
const CACHE_MAX_BYTES: usize = 8 << 20;
/// Largest value stored; larger ones are silently not cached.
const CACHE_MAX_VALUE: usize = 64 << 10;
/// Longest key stored.
const CACHE_MAX_KEY: usize = 1024;
/// Most bytes a request phase keeps for its response phase (`state.keep`).
const MAX_KEPT_BYTES: usize = 4096;
/// Most random bytes one call returns.
const MAX_RANDOM_BYTES: u32 = 4096;

/// The future an [`Outbound`] call returns.
pub type OutboundFuture<'a> =
    Pin<Box<dyn Future<Output = Result<OutboundResponse, CallError>> + Send + 'a>>;

/// Calls to services, as one request's filter may make them: the embedder says which services
/// are granted and carries the calls. A call to a service not granted never reaches
/// [`Outbound::call`]: the filter gets [`CallError::Denied`].
pub trait Outbound: Send + Sync {
    /// Whether the filter may call `service`.
    fn granted(&self, service: &str) -> bool;

    /// One call to a granted service. Never a trap: every failure is a [`CallError`] the
    /// filter handles.
    fn call(&self, req: OutboundRequest) -> OutboundFuture<'_>;
}

/// Store data for one filter instance.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) memory: crate::instance::MemoryCap,
    pub(crate) filter: Arc<str>,
    pub(crate) request_id: Arc<str>,
    /// When the current call's execution budget runs out; host calls that wait (outbound
    /// requests) push it back by the time they waited.
    pub(crate) deadline: Instant,
    /// From then on the running call is throttled (see [`crate::instance::throttle_from`]).
    pub(crate) throttle_from: Instant,
    pub(crate) cache: Arc<FilterCache>,
    pub(crate) outbound: Option<Arc<dyn Outbound>>,
    pub(crate) metrics: Arc<FilterMetrics>,
    pub(crate) route: Arc<str>,
    /// Fields the current call added to the access log record; `None` when the request is
    /// not logged.
    pub(crate) log_fields: Option<LogFields>,
    /// Where the `state` import keeps this filter's keys.
    pub(crate) state: Arc<dyn StateStore>,
    /// What the current call kept for the response phase (`state.keep`), or, in a response
    /// phase, what the request phase kept.
    pub(crate) kept: Option<Vec<u8>>,
    /// The context and message of the phase running now.
    pub(crate) held: Held,
}

impl HostState {
    /// The call waited `waited` on the host: its deadline, and its throttling, move back by
    /// as much.
    fn push_back(&mut self, waited: Duration) {
        self.deadline += waited;
        self.throttle_from += waited;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        use types::LogLevel as L;
        let (filter, request_id) = (&*self.filter, &*self.request_id);
        match level {
            L::Trace => {
                tracing::trace!(target: "wasmgate::filter", filter, request_id, "{message}")
            }
            L::Debug => {
                tracing::debug!(target: "wasmgate::filter", filter, request_id, "{message}")
            }
            L::Info => tracing::info!(target: "wasmgate::filter", filter, request_id, "{message}"),
            L::Warn => tracing::warn!(target: "wasmgate::filter", filter, request_id, "{message}"),
            L::Error => {
                tracing::error!(target: "wasmgate::filter", filter, request_id, "{message}")
            }
        }
    }
}

impl host::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut buf = vec![0u8; len.min(MAX_RANDOM_BYTES) as usize];
        if getrandom::fill(&mut buf).is_err() {
            // The OS generator is gone; nothing sane to return but an empty list.
            buf.clear();
        }
        buf
    }
}

impl cache::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.cache.get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u32) {
        self.cache
            .set(key, value, Duration::from_millis(u64::from(ttl_ms)));
    }
}

impl outbound::Host for HostState {
    async fn call(&mut self, req: OutboundRequest) -> Result<OutboundResponse, CallError> {
        let started = Instant::now();
        let result = match &self.outbound {
            Some(outbound) if outbound.granted(&req.service) => outbound.call(req).await,
            _ => Err(denied(&req.service)),
        };
        // Waiting is not executing: the filter's budget does not run while it waits.
        self.push_back(started.elapsed());
        result
    }

    async fn call_all(
        &mut self,
        reqs: Vec<OutboundRequest>,
    ) -> Vec<Result<OutboundResponse, CallError>> {
        let started = Instant::now();
        let outbound = &self.outbound;
        let calls = reqs.into_iter().map(|req| async move {
            match outbound {
                Some(outbound) if outbound.granted(&req.service) => outbound.call(req).await,
                _ => Err(denied(&req.service)),
            }
        });
        let results = futures_util::future::join_all(calls).await;
        self.push_back(started.elapsed());
        results
    }
}

impl telemetry::Host for HostState {
    fn define_metric(&mut self, metric: telemetry::Metric) -> Result<u32, String> {
        let kind = match metric.kind {
            telemetry::MetricKind::Counter => MetricKind::Counter,
            telemetry::MetricKind::Gauge => MetricKind::Gauge,
            telemetry::MetricKind::Histogram => MetricKind::Histogram,
        };
        self.metrics.define(
            metric.name,
            metric.help,
            kind,
            metric.labels,
            metric.buckets,
        )
    }

    fn add(&mut self, metric: u32, label_values: Vec<String>, value: f64) {
        if let Some(m) = self.metrics.get(metric) {
            m.add(&self.route, label_values, value);
        }
    }

    fn set(&mut self, metric: u32, label_values: Vec<String>, value: f64) {
        if let Some(m) = self.metrics.get(metric) {
            m.set(&self.route, label_values, value);
        }
    }

    fn observe(&mut self, metric: u32, label_values: Vec<String>, value: f64) {
        if let Some(m) = self.metrics.get(metric) {
            m.observe(&self.route, label_values, value);
        }
    }

    fn log_field(&mut self, name: String, value: String) {
        if let Some(fields) = &mut self.log_fields {
            fields.add(name, value);
        }
    }
}

impl HostState {
    /// `key` in this filter's namespace, when it is not too long.
    fn state_key(&self, key: &str) -> Result<String, StateError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(StateError::TooLarge(format!(
                "a key of {} bytes is over {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        Ok(format!("{}/{key}", self.filter))
    }

    /// Whether `value` fits the store.
    fn state_value(&self, value: &[u8]) -> Result<(), StateError> {
        let max = self.state.max_value_bytes();
        if value.len() > max {
            return Err(StateError::TooLarge(format!(
                "a value of {} bytes is over this store's {max}",
                value.len()
            )));
        }
        Ok(())
    }

    /// Wait for a state call; the wait does not count against the filter's deadline.
    async fn waited<T>(&mut self, call: StateFuture<'_, T>) -> Result<T, StateError> {
        let started = Instant::now();
        let result = call.await;
        self.push_back(started.elapsed());
        result
    }
}

fn ttl(ms: Option<u32>) -> Option<Duration> {
    ms.map(|ms| Duration::from_millis(u64::from(ms.max(1))))
}

impl state::Host for HostState {
    async fn incr(
        &mut self,
        key: String,
        delta: u64,
        window_ms: u32,
    ) -> Result<Counter, StateError> {
        let key = self.state_key(&key)?;
        let window = Duration::from_millis(u64::from(window_ms.max(1)));
        let store = self.state.clone();
        self.waited(store.incr(key, delta, window)).await
    }

    async fn throttle(
        &mut self,
        key: String,
        limit: u32,
        window_ms: u32,
        cost: u32,
    ) -> Result<ThrottleResult, StateError> {
        let key = self.state_key(&key)?;
        let window = Duration::from_millis(u64::from(window_ms.max(1)));
        let store = self.state.clone();
        self.waited(store.throttle(key, limit, window, cost)).await
    }

    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.state_key(&key)?;
        let store = self.state.clone();
        self.waited(store.get(key)).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u32>,
    ) -> Result<(), StateError> {
        let key = self.state_key(&key)?;
        self.state_value(&value)?;
        let store = self.state.clone();
        self.waited(store.set(key, value, ttl(ttl_ms))).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, StateError> {
        let key = self.state_key(&key)?;
        let store = self.state.clone();
        self.waited(store.delete(key)).await
    }

    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u32>,
    ) -> Result<bool, StateError> {
        let key = self.state_key(&key)?;
        self.state_value(&value)?;
        let store = self.state.clone();
        self.waited(store.compare_and_set(key, expected, value, ttl(ttl_ms)))
            .await
    }

    async fn keep(&mut self, mut data: Vec<u8>) {
        data.truncate(MAX_KEPT_BYTES);
        self.kept = Some(data);
    }

    async fn kept(&mut self) -> Option<Vec<u8>> {
        self.kept.clone()
    }
}

/// The error for a service the route does not grant.
fn denied(service: &str) -> CallError {
    CallError::Denied(format!(
        "this route does not grant this filter the service {service:?}"
    ))
}

/// A small in-memory cache shared by every instance of one filter.
#[derive(Default)]
pub struct FilterCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    entries: HashMap<String, CacheEntry>,
    bytes: usize,
}

struct CacheEntry {
    value: Vec<u8>,
    expires: Instant,
}

impl FilterCache {
    /// The value under `key`, unless it expired or was evicted.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .get(key)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.value.clone())
    }

    /// Keep `value` under `key` for `ttl`; values over 64 KiB and keys over 1 KiB are not kept.
    pub fn set(&self, key: String, value: Vec<u8>, ttl: Duration) {
        if value.len() > CACHE_MAX_VALUE || key.len() > CACHE_MAX_KEY || ttl.is_zero() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let size = key.len() + value.len();
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= key.len() + old.value.len();
        }
        inner.bytes += size;
        inner.entries.insert(
            key,
            CacheEntry {
                value,
                expires: Instant::now() + ttl,
            },
        );
        if inner.entries.len() > CACHE_MAX_ENTRIES || inner.bytes > CACHE_MAX_BYTES {
            inner.evict();
        }
    }
}

impl CacheInner {
    /// Drop expired entries, then those expiring soonest, until within bounds.
    fn evict(&mut self) {
        let now = Instant::now();
        let mut freed = 0;
        self.entries.retain(|k, e| {
            let keep = e.expires > now;
            if !keep {
                freed += k.len() + e.value.len();
            }
            keep
        });
        self.bytes -= freed;
        while self.entries.len() > CACHE_MAX_ENTRIES || self.bytes > CACHE_MAX_BYTES {
            let Some(key) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&key) {
                self.bytes -= key.len() + e.value.len();
            }
        }
    }
}
