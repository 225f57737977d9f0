//! Traffic management settings: how a service balances, checks and ejects its endpoints and
//! caps what it is sent, and how a route retries.

use std::time::Duration;

use serde::Deserialize;

/// How a service spreads requests over its endpoints (`balance`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn, in proportion to the weights (smooth weighted round robin). The default.
    #[default]
    RoundRobin,
    /// The less busy of two endpoints picked at random (power of two choices).
    LeastRequest,
    /// At random, in proportion to the weights.
    Random,
    /// The same key to the same endpoint while it is available (a hash ring: removing one of N
    /// endpoints moves about 1/N of the keys).
    ConsistentHash(HashOn),
}

impl Balance {
    /// The config spelling.
    pub fn name(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::Random => "random",
            Balance::ConsistentHash(_) => "consistent_hash",
        }
    }
}

/// What consistent hashing keys on (`hash_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// `header:<name>`
    Header(http::HeaderName),
    /// `cookie:<name>`
    Cookie(String),
    /// `client`: the client's IP address.
    Client,
    /// `path`: the request path.
    Path,
}

impl HashOn {
    pub fn parse(text: &str) -> Option<HashOn> {
        match text.split_once(':') {
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .ok()
                .map(HashOn::Header),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Some(HashOn::Cookie(name.trim().to_string()))
            }
            None if text == "client" => Some(HashOn::Client),
            None if text == "path" => Some(HashOn::Path),
            _ => None,
        }
    }
}

/// What a service does when no endpoint is available (`when_all_unhealthy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllUnhealthy {
    /// Answer 503 at once. The default.
    #[default]
    Fail,
    /// Use every endpoint, as if all were healthy (Envoy's panic mode).
    Panic,
}

/// Active health checks of a service's endpoints (`[services.x.health_check]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HealthCheck {
    /// Path (and query) requested with `GET` on each endpoint.
    pub path: String,
    /// Time between two checks of one endpoint (default 5s).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A check without a response in this time failed (default 1s).
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Statuses that pass; empty (the default) means any 2xx.
    #[serde(default)]
    pub expected_statuses: Vec<u16>,
    /// Passing checks in a row that bring an unhealthy endpoint back (default 2).
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failing checks in a row that take an endpoint out (default 3).
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    /// `status` passes the check.
    pub fn passes(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_healthy_threshold() -> u32 {
    2
}

fn default_unhealthy_threshold() -> u32 {
    3
}

/// Passive outlier detection (`[services.x.outlier_detection]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct OutlierDetection {
    /// 5xx answers or connection failures in a row that eject an endpoint (default 5).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long (default 30s).
    #[serde(default = "default_base_ejection", with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest an ejection lasts (default 5m).
    #[serde(default = "default_max_ejection", with = "humantime_serde")]
    pub max_ejection: Duration,
    /// At most this share of the service's endpoints is ejected at once (default 50).
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejected_percent: default_max_ejected_percent(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}

fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}

fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}

fn default_max_ejected_percent() -> u32 {
    50
}

/// Caps on what a service is sent (the Envoy sense of circuit breaking); past one, a fast 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceLimits {
    /// Connections open to the service's endpoints, over all serving threads.
    pub max_connections: Option<usize>,
    /// Requests waiting for a connection when `max_connections` are open.
    pub max_pending: Option<usize>,
    /// Requests in flight to the service.
    pub max_requests: Option<usize>,
}

/// A failure a route may retry (`retry.on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// No connection could be made (`connect-failure`): refused, unreachable, timed out.
    ConnectFailure,
    /// The connection was refused (`refused`).
    Refused,
    /// The connection broke before a response came (`reset`).
    Reset,
    /// No response within the try's timeout (`timeout`).
    Timeout,
    /// The upstream answered with this status (`"503"`).
    Status(u16),
}

impl RetryOn {
    pub fn parse(text: &str) -> Option<RetryOn> {
        match text {
            "connect-failure" => Some(RetryOn::ConnectFailure),
            "refused" => Some(RetryOn::Refused),
            "reset" => Some(RetryOn::Reset),
            "timeout" => Some(RetryOn::Timeout),
            status => status
                .parse::<u16>()
                .ok()
                .filter(|s| (500..600).contains(s))
                .map(RetryOn::Status),
        }
    }
}

/// A route's retries (`[routes.retry]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all, the first included (default 2).
    pub attempts: u32,
    /// Which failures are retried (default connect-failure, refused, reset).
    pub on: Vec<RetryOn>,
    /// Each try's timeout; the route's timeout when absent.
    pub per_try_timeout: Option<Duration>,
    /// The first wait before a retry; it doubles each time, up to `max_backoff`, and a random
    /// part of it is waited (full jitter). Default 25ms.
    pub backoff: Duration,
    /// Default 250ms.
    pub max_backoff: Duration,
    /// Retries in flight to a service (waiting their backoff or sent) are at most this share
    /// of its requests in flight, but at least 3 (default 20).
    pub budget_percent: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::Refused, RetryOn::Reset],
            per_try_timeout: None,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            budget_percent: 20,
        }
    }
}

/// How upstream host names are resolved (`[dns]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dns {
    /// Name servers (`"127.0.0.1:53"`); empty (the default) uses the system's
    /// (`/etc/resolv.conf`, and `/etc/hosts`).
    #[serde(default)]
    pub servers: Vec<std::net::SocketAddr>,
    /// Which addresses become endpoints: `"ipv4_then_ipv6"` (IPv4 ones, else IPv6; the
    /// default), `"ipv4"`, `"ipv6"` or `"both"`.
    #[serde(default = "default_lookup")]
    pub lookup: String,
    /// A name is resolved again when its answer's TTL runs out, but not sooner than this
    /// (default 1s)...
    #[serde(default = "default_min_ttl", with = "humantime_serde")]
    pub min_ttl: Duration,
    /// ...nor later than this (default 5m).
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: Vec::new(),
            lookup: default_lookup(),
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
        }
    }
}

/// The lookup spellings `[dns] lookup` accepts.
pub const DNS_LOOKUPS: [&str; 4] = ["ipv4_then_ipv6", "ipv4", "ipv6", "both"];

fn default_lookup() -> String {
    "ipv4_then_ipv6".into()
}

fn default_min_ttl() -> Duration {
    Duration::from_secs(1)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(300)
}

/// The access log (`[access_log]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessLogConfig {
    /// On by default (to stdout); `enabled = false` turns it off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `"-"` (stdout, the default) or a file, appended to and reopened on SIGHUP.
    #[serde(default = "stdout")]
    pub path: String,
    /// `"json"` (one object per line, the default) or `"combined"`.
    #[serde(default = "json")]
    pub format: String,
    /// Records waiting to be written, per worker thread; past it they are dropped and counted
    /// (default 10000).
    #[serde(default = "default_buffer")]
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: stdout(),
            format: json(),
            buffer: default_buffer(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Per-request metrics (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MetricsConfig {
    /// On by default. `false` stops counting requests, their durations, filter phase durations
    /// and upstream try durations (the per-request work); errors, retries, loads, reloads,
    /// filters' own metrics and process figures are still kept and `/metrics` still serves.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A listener of its own that serves `/metrics`, `/health` and `/ready` and nothing else,
    /// without a token (for scrapers and probes beyond loopback); none by default.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: None,
        }
    }
}

/// Distributed tracing (`[tracing]`): W3C trace context continued or started, spans exported
/// over OTLP/HTTP (protobuf) in batches. Off by default; a `[tracing]` table with an
/// `endpoint` turns it on unless it says `enabled = false`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TracingConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where spans are POSTed: an OTLP/HTTP traces URL, `http://` or `https://`
    /// (e.g. `http://127.0.0.1:4318/v1/traces`).
    pub endpoint: String,
    /// Share of the traces this gateway starts that are recorded (0.0 to 1.0, default 1.0);
    /// a request that arrives with a `traceparent` follows its caller's decision.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// `service.name` of the spans (default `wasmgate`).
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Longest a finished span waits before its batch is sent (default 5 s).
    #[serde(default = "default_batch_delay", with = "humantime_serde")]
    pub batch_delay: Duration,
    /// Finished spans waiting to be sent; past it they are dropped (default 2048).
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Time for one export request (default 10 s).
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            endpoint: String::new(),
            sample_ratio: one(),
            service_name: default_service_name(),
            batch_delay: default_batch_delay(),
            max_queue: default_max_queue(),
            timeout: default_export_timeout(),
        }
    }
}

fn one() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "wasmgate".into()
}

fn default_batch_delay() -> Duration {
    Duration::from_secs(5)
}

fn default_max_queue() -> usize {
    2048
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

fn stdout() -> String {
    "-".into()
}

fn json() -> String {
    "json".into()
}

fn default_buffer() -> usize {
    10_000
}

/// Where filters' `state` lives (`[state]`): in this process (`backend = "memory"`, the
/// default) or in Redis (`backend = "redis"`), shared by every gateway with the same `url`
/// and `key_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StateConfig {
    /// `"memory"` or `"redis"`.
    #[serde(default = "memory")]
    pub backend: String,
    /// Memory: keys kept at most (default 100000); past it, expired keys go first, then new
    /// keys are refused.
    #[serde(default = "default_state_entries")]
    pub max_entries: usize,
    /// Memory: bytes of keys and values kept at most (default 64 MiB).
    #[serde(default = "default_state_bytes")]
    pub max_bytes: usize,
    /// Largest value a filter may store (default 1 MiB).
    #[serde(default = "default_state_value_bytes")]
    pub max_value_bytes: usize,
    /// Redis: `redis://[user:password@]host:port[/db]` (`rediss://` is not supported).
    #[serde(default)]
    pub url: String,
    /// Redis: connections, each multiplexed (default 4).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Redis: what every key starts with (default `wasmgate:`), then the filter's name.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Redis: time for one call, after which the filter gets `unavailable` (default 100 ms).
    #[serde(default = "default_state_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Redis: time for one connection attempt (default 500 ms).
    #[serde(default = "default_state_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Redis: after a failed connection attempt, calls fail at once for this long before the
    /// next attempt (default 1 s).
    #[serde(default = "default_state_retry", with = "humantime_serde")]
    pub retry_interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: memory(),
            max_entries: default_state_entries(),
            max_bytes: default_state_bytes(),
            max_value_bytes: default_state_value_bytes(),
            url: String::new(),
            pool_size: default_pool_size(),
            key_prefix: default_key_prefix(),
            timeout: default_state_timeout(),
            connect_timeout: default_state_connect_timeout(),
            retry_interval: default_state_retry(),
        }
    }
}

fn memory() -> String {
    "memory".into()
}

fn default_state_entries() -> usize {
    100_000
}

fn default_state_bytes() -> usize {
    64 << 20
}

fn default_state_value_bytes() -> usize {
    1 << 20
}

fn default_pool_size() -> usize {
    4
}

fn default_key_prefix() -> String {
    "wasmgate:".into()
}

fn default_state_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_state_connect_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_state_retry() -> Duration {
    Duration::from_secs(1)
}
