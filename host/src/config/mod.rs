//! Gateway configuration: strict TOML, validated as it is parsed.
//!
//! [`Config::parse`] reports every problem it finds, each with its line and column, instead of
//! stopping at the first: every unknown key (found while the file is read, each with the keys
//! its table accepts), and every invalid value. The raw serde types mirror the file; the
//! validated [`Config`] is what the rest of the gateway uses.
//!
//! A leaf: it imports nothing else of the gateway.

mod path;
mod source;
mod traffic;
mod transport;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use path::{PathMatch, Pattern, Segment, Template, TemplatePart};
pub use source::{FilterSource, RegistryConfig};
pub use traffic::{
    AccessLogConfig, AllUnhealthy, Balance, DNS_LOOKUPS, Dns, HashOn, HealthCheck, MetricsConfig,
    OutlierDetection, Retry, RetryOn, ServiceLimits, StateConfig, TracingConfig,
};
pub(crate) use transport::pem_error;
pub use transport::{Protocol, Transport};

/// Default listener when the file names none.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default largest body buffered for a filter that reads it: 1 MiB.
const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

/// A problem in a config file, with its 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line; 0 when the problem is not in the text (the file cannot be read).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, naming the route, service or key.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file, as given (for messages).
    pub file: String,
    /// Every problem found, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{d}", self.file)?;
        }
        Ok(())
    }
}

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gateway serves.
    pub listen: SocketAddr,
    /// Absolute, or relative to the config file's directory as written; resolved on load.
    pub filters_dir: PathBuf,
    /// Where compiled filters are cached, keyed by content hash; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Filters that come from an OCI registry rather than `filters_dir`, by name (a route's
    /// `source`; every route naming the filter uses it).
    pub sources: std::collections::BTreeMap<String, FilterSource>,
    /// How registries are reached (`[registry]`).
    pub registry: RegistryConfig,
    /// The admin endpoint (`[admin]`).
    pub admin: Admin,
    /// Client-side protections (`[server]`).
    pub server: Server,
    /// Upstream timeouts (`[timeouts]`).
    pub timeouts: Timeouts,
    /// Body limits (`[limits]`).
    pub limits: BodyLimits,
    /// How `compress = true` routes compress.
    pub compression: Compression,
    /// The HTTPS listener, when configured.
    pub tls: Option<Tls>,
    /// How upstream host names are resolved (`[dns]`).
    pub dns: Dns,
    /// The access log (`[access_log]`).
    pub access_log: AccessLogConfig,
    /// Distributed tracing (`[tracing]`).
    pub tracing: TracingConfig,
    /// Per-request metrics (`[metrics]`).
    pub metrics: MetricsConfig,
    /// Where filters' state lives (`[state]`).
    pub state: StateConfig,
    /// The services routes and filters reach (`[services.NAME]`).
    pub services: Vec<ServiceConfig>,
    /// The routes, in file order (`[[routes]]`).
    pub routes: Vec<RouteConfig>,
}

/// Timeouts towards upstreams.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Timeouts {
    /// Time to establish a TCP connection to an upstream (default 2 s).
    #[serde(default = "default_connect", with = "humantime_serde")]
    pub connect: Duration,
    /// Time from sending the request until the upstream's response headers arrive (default 30 s).
    #[serde(default = "default_request", with = "humantime_serde")]
    pub request: Duration,
    /// An upstream connection idle this long is closed (default 15 s).
    #[serde(default = "default_upstream_idle", with = "humantime_serde")]
    pub upstream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            request: default_request(),
            upstream_idle: default_upstream_idle(),
        }
    }
}

fn default_connect() -> Duration {
    Duration::from_secs(2)
}

/// Long enough that steady traffic reuses its connections, short enough that a burst's extra
/// connections (about 25 KiB each, and the memory they pin) are gone soon after it.
fn default_upstream_idle() -> Duration {
    Duration::from_secs(15)
}

fn default_request() -> Duration {
    Duration::from_secs(30)
}

/// The HTTPS listener (`[tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Certificates with their keys; each serves the names it is valid for (SNI), the first
    /// also clients that send no name or one no certificate covers.
    pub certificates: Vec<CertificateFiles>,
    /// The plaintext `listen` answers every request with a redirect to HTTPS.
    pub redirect_http: bool,
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The chain, leaf first; relative paths are resolved against the config file's directory.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Where the entry is written.
    pub place: Place,
}

/// Response compression for routes with `compress = true` (`[compression]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Compression {
    /// Responses that declare a smaller `content-length` are sent as they are: below about a
    /// kilobyte the encoding's framing eats most of the gain.
    #[serde(default = "default_min_compress_bytes")]
    pub min_bytes: u64,
    /// Media types that are compressed; `text/*` covers every subtype. Images, video, archives
    /// and fonts are compressed already.
    #[serde(default = "default_compress_types")]
    pub content_types: Vec<String>,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            min_bytes: default_min_compress_bytes(),
            content_types: default_compress_types(),
        }
    }
}

fn default_min_compress_bytes() -> u64 {
    1024
}

fn default_compress_types() -> Vec<String> {
    [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/xhtml+xml",
        "application/problem+json",
        "application/x-ndjson",
        "application/wasm",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}

/// Body size limits (`[limits]`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct BodyLimits {
    /// Largest request or response body buffered for a filter that reads bodies; a larger
    /// request body is answered with 413. Bodies no filter reads stream through unbuffered.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// Client-side protections of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Server {
    /// Largest request head (request line and headers) in bytes; larger gets 431. Min 8192.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header lines in a request; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time a client has from the first byte of a request head to its end (slowloris).
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection may wait for its next request to arrive in full, counted from
    /// when it opened or from the end of the previous response (idle keep-alive).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open client connections at most; beyond, new connections wait, unserved, until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Serving threads, each with its own listener socket and upstream connection pool.
    /// Default: one per CPU.
    pub workers: Option<usize>,
    /// Largest request body on any route, streamed or not (413 beyond). Unlimited when absent.
    pub max_request_body_bytes: Option<u64>,
    /// How long an upgraded connection (WebSocket) may pass no bytes either way before the
    /// gateway closes it.
    #[serde(default = "default_websocket_idle_timeout", with = "humantime_serde")]
    pub websocket_idle_timeout: Duration,
    /// Requests one HTTP/2 connection may have in flight at once.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Longest request target (path and query, or the absolute URI); longer gets 414.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
}

impl Server {
    /// Serving threads to run.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

impl Default for Server {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            workers: None,
            max_request_body_bytes: None,
            max_uri_bytes: default_max_uri_bytes(),
            websocket_idle_timeout: default_websocket_idle_timeout(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
        }
    }
}

/// 5 minutes: chat and live-update sockets often sit quiet for a minute or two between
/// messages or pings; a socket silent for longer is most likely abandoned.
fn default_websocket_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

/// 128, as nginx: browsers open far fewer; a client cannot make one connection cost more than
/// that many requests' worth of filters and upstream calls.
fn default_http2_max_concurrent_streams() -> u32 {
    128
}

/// 8 KiB, as nginx's default request line buffer: far beyond real paths and queries, and it
/// keeps oversized targets out of logs, filters and upstreams.
fn default_max_uri_bytes() -> usize {
    8 << 10
}

fn default_max_header_bytes() -> usize {
    64 << 10
}

fn default_max_headers() -> usize {
    100
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_connections() -> usize {
    10_000
}

/// The admin endpoint: a separate listener, loopback by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin {
    /// `None` when disabled.
    pub listen: Option<SocketAddr>,
    /// The bearer token requests must carry (`token_file`); required when `listen` is not a
    /// loopback address.
    pub token: Option<AdminToken>,
    /// Reads (`GET`) need the token too (`protect_reads`, default true); `/health` and
    /// `/ready` never do.
    pub protect_reads: bool,
}

/// The admin token, kept only as its SHA-256 digest: it is compared as a digest, in constant
/// time, and never shown (its `Debug` prints nothing of it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AdminToken {
    digest: [u8; 32],
}

/// Shortest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

impl AdminToken {
    /// The token `text` (surrounding white space, such as a file's last newline, is not part
    /// of it).
    pub fn new(text: &str) -> AdminToken {
        use sha2::Digest;
        AdminToken {
            digest: sha2::Sha256::digest(text.trim().as_bytes()).into(),
        }
    }

    /// Whether `given` is the token. The time it takes depends on neither the token nor on
    /// how much of `given` matches it: both are hashed, and the digests compared in constant
    /// time.
    pub fn matches(&self, given: &[u8]) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let given: [u8; 32] = sha2::Sha256::digest(given).into();
        self.digest.ct_eq(&given).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// An upstream service: a name, the base URLs of its instances and how to talk to them.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub upstreams: Vec<http::Uri>,
    /// One per upstream, in the same order (1 unless `weights` says otherwise).
    pub weights: Vec<u32>,
    /// Protocol and TLS settings (files already read).
    pub transport: Transport,
    pub balance: Balance,
    pub all_unhealthy: AllUnhealthy,
    pub health_check: Option<HealthCheck>,
    pub outlier: Option<OutlierDetection>,
    pub limits: ServiceLimits,
}

/// A route, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub path: PathMatch,
    /// Upper-case methods; empty means any.
    pub methods: Vec<http::Method>,
    /// Lower-case host to match (without port); `*.example.com` matches subdomains.
    pub host: Option<String>,
    pub strip_prefix: bool,
    pub rewrite: Option<Template>,
    /// Target service; `None` when the route's filters always answer themselves.
    pub service: Option<String>,
    pub timeout: Option<Duration>,
    pub max_body_bytes: Option<u64>,
    /// Compress responses for clients that accept it (see [`Compression`]).
    pub compress: bool,
    /// Translate gRPC-Web calls (binary and text) to gRPC for the upstream.
    pub grpc_web: bool,
    /// JSON/HTTP clients call the gRPC upstream through these services' descriptors.
    pub transcode: Option<std::sync::Arc<crate::transcode::Transcoder>>,
    /// Retries of failed upstream tries.
    pub retry: Option<Retry>,
    /// Requests to this route are written to the access log (when it is on).
    pub access_log: bool,
    pub filters: Vec<FilterRef>,
    pub place: Place,
}

/// One filter in a route's chain.
#[derive(Debug, Clone)]
pub struct FilterRef {
    /// The filter's name: the file stem of its `.wasm` in the filters directory.
    pub name: String,
    /// The route's config table for this filter, as JSON (`{}` when absent).
    pub config_json: String,
    /// Services this filter may call on this route (deny by default).
    pub services: Vec<String>,
    /// Execution limits for this filter on this route.
    pub limits: FilterLimits,
    pub on_failure: FailurePolicy,
    pub place: Place,
}

/// What happens to a request when a filter fails (traps, errs, exceeds a limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The client gets a plain 500 (the default).
    #[default]
    FailClosed,
    /// The request goes on as if the filter were absent.
    FailOpen,
}

/// Most memory a filter may be granted (`memory_bytes`).
pub const MAX_FILTER_MEMORY_BYTES: usize = 256 << 20;

/// Limits for filter execution (`[filter_limits]`, and `limits` on a filter entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Execution budget for one phase call; time spent waiting on service calls is not counted.
    pub deadline: Duration,
    /// Cap on a filter instance's linear memory.
    pub memory_bytes: usize,
    /// Cap on what one phase returns (header names and values plus body).
    pub max_output_bytes: usize,
    /// Requests one instance may serve when its filter allows reuse; 1 means a fresh instance
    /// for every request.
    pub requests_per_instance: u32,
}

impl Default for FilterLimits {
    /// 100 ms: far above what header, auth or transform filters need (tens of microseconds to a
    /// few milliseconds for RSA), short enough that a loop is cut before clients time out.
    /// 32 MiB: a Rust filter with std starts near 1.2 MiB and may copy a buffered 1 MiB body
    /// several times. 2 MiB output: the default body limit plus headroom for headers.
    /// 1000 requests per instance: reuse pays for itself after a few requests, and recycling
    /// bounds what a slow leak or heap fragmentation inside a filter can grow to.
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(100),
            memory_bytes: 32 << 20,
            max_output_bytes: 2 << 20,
            requests_per_instance: 1000,
        }
    }
}

/// Where something was written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl Config {
    /// Read and validate the config file at `path`. A relative `filters_dir` is resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (config, diagnostics) = Config::load_checked(path)?;
        if diagnostics.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: path.display().to_string(),
                diagnostics,
            })
        }
    }

    /// For `wasmgate check`: read the config file at `path` and return what it describes
    /// together with every problem found in it, so that the routes' filters can be checked
    /// too. Routes with problems are kept when their path match could be read (or matched as
    /// `/`); such a config is never served. Fails only when the file cannot be read or parsed.
    pub fn load_checked(path: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            diagnostics: vec![Diagnostic {
                line: 0,
                column: 0,
                message: format!("cannot read config file: {e}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (mut config, diagnostics) = validate::parse_checked(&text, base)
            .map_err(|diagnostics| ConfigError { file, diagnostics })?;
        if config.filters_dir.is_relative() {
            config.filters_dir = base.join(&config.filters_dir);
        }
        if let Some(cache) = &config.cache_dir
            && cache.is_relative()
        {
            config.cache_dir = Some(base.join(cache));
        }
        if let Some(file) = &mut config.registry.auth_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        if config.access_log.path != "-" && Path::new(&config.access_log.path).is_relative() {
            config.access_log.path = base.join(&config.access_log.path).display().to_string();
        }
        if let Some(tls) = &mut config.tls {
            for files in &mut tls.certificates {
                files.cert = base.join(&files.cert);
                files.key = base.join(&files.key);
            }
        }
        Ok((config, diagnostics))
    }

    /// Parse and validate config text; on failure, every problem found, in file order.
    pub fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
        validate::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"
listen = "127.0.0.1:8080"
[services.users]
upstreams = ["http://127.0.0.1:3001"]
[[routes]]
name = "users"
pattern = "/users/{id}"
rewrite = "/v1/users/{id}"
service = "users"
filters = [{ name = "headers", services = ["users"], config = { request = { set = { "x-a" = "1" } } } }]
"#;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any text: parsing never panics, and every error has a place inside the text.
        #[test]
        fn arbitrary_text_never_panics_and_errors_have_places(text in "\\PC{0,400}") {
            if let Err(diags) = Config::parse(&text) {
                prop_assert!(!diags.is_empty());
                let lines = text.lines().count().max(1);
                for d in diags {
                    prop_assert!(d.line >= 1 && d.line <= lines + 1, "{d} outside {lines} lines");
                    prop_assert!(d.column >= 1);
                }
            }
        }

        /// A valid config with one character replaced: never panics; errors have places.
        #[test]
        fn mutated_valid_config_never_panics(at in 0usize..VALID.len(), c in any::<char>()) {
            let mut text: Vec<char> = VALID.chars().collect();
            let at = at.min(text.len() - 1);
            text[at] = c;
            let text: String = text.into_iter().collect();
            if let Err(diags) = Config::parse(&text) {
                prop_assert!(diags.iter().all(|d| d.line >= 1 && d.column >= 1));
            }
        }
    }

    /// The token matches only itself (its file's last newline aside); a prefix, a longer
    /// text or another token of the same length do not, and `Debug` shows none of it.
    #[test]
    fn the_admin_token_matches_only_itself() {
        let token = AdminToken::new("0123456789abcdef0123456789abcdef\n");
        assert!(token.matches(b"0123456789abcdef0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0123456789abcdef",
            b"0123456789abcdef0123456789abcdeF",
            b"1123456789abcdef0123456789abcdef",
            b"0123456789abcdef0123456789abcdef0",
        ] {
            assert!(!token.matches(wrong), "{}", String::from_utf8_lossy(wrong));
        }
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
    }

    /// A token file is read relative to the config; a short token is refused with its place.
    #[test]
    fn the_admin_token_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("wasmgate-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = \"admin.token\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("admin.token"), "short\n").unwrap();
        let err = Config::load(&config).unwrap_err().to_string();
        assert!(
            err.contains("gateway.toml:3:14: admin.token_file: the token in "),
            "{err}"
        );
        assert!(err.contains("is 5 bytes; use at least 16"), "{err}");

        std::fs::write(dir.join("admin.token"), "0123456789abcdef0123\n").unwrap();
        let admin = Config::load(&config).unwrap().admin;
        assert!(admin.token.unwrap().matches(b"0123456789abcdef0123"));
        assert!(admin.protect_reads);
        assert_eq!(admin.listen, Some("0.0.0.0:9901".parse().unwrap()));
    }

    #[test]
    fn the_valid_config_parses() {
        let config = Config::parse(VALID).unwrap();
        assert_eq!(config.routes[0].filters[0].services, ["users"]);
    }
}
