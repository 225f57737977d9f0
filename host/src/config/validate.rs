//! The file as written (serde types that mirror it) and its validation into [`Config`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::traffic::{
    AllUnhealthy, Balance, HashOn, HealthCheck, OutlierDetection, Retry, RetryOn, ServiceLimits,
};
use super::transport::{Protocol, TlsFiles, Transport};
use super::*;
use crate::transcode::{StreamFormat, Transcoder};

/// Parse and validate config text; on failure, every problem found, in file order.
pub(super) fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
    match parse_checked(text, Path::new(""))? {
        (config, diagnostics) if diagnostics.is_empty() => Ok(config),
        (_, diagnostics) => Err(diagnostics),
    }
}

/// Parse and validate config text: what it describes (routes with problems included when
/// their path match could be read, for `check` to look at their filters) and every problem,
/// in file order. Fails only when the TOML cannot be read into the config's shape (syntax, a
/// wrong type, a missing key), with that problem and the unknown keys read before it.
pub(super) fn parse_checked(
    text: &str,
    base: &Path,
) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut src = Source {
        text,
        base,
        diagnostics: Vec::new(),
    };
    let mut unknown = Vec::new();
    let read = toml::Deserializer::parse(text).and_then(|de| {
        serde_ignored::deserialize(de, |path| unknown.push(unknown_key::segments(&path)))
    });
    // Unknown keys met before a failure are reported with it: a misspelt key (`upstream`)
    // is most often why a required one (`upstreams`) is missing.
    if !unknown.is_empty() {
        let doc = toml::de::DeTable::parse(text).ok();
        for path in &unknown {
            let offset = doc.as_ref().map_or(0, |d| unknown_key::offset(d, path));
            src.error(offset, unknown_key::message(path));
        }
    }
    let raw: RawConfig = match read {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            src.error(offset, e.message().trim_end().to_string());
            src.diagnostics.sort_by_key(|d| (d.line, d.column));
            return Err(src.diagnostics);
        }
    };
    let config = validate(raw, &mut src);
    src.diagnostics.sort_by_key(|d| (d.line, d.column));
    Ok((config, src.diagnostics))
}

/// Unknown keys: where they are and what their table accepts.
mod unknown_key {
    use serde::Deserialize;
    use serde::de::{self, Deserializer, Visitor};
    use toml::Spanned;
    use toml::de::{DeTable, DeValue};

    use super::*;

    /// `serde_ignored`'s path as keys and indexes, without serde's wrappers.
    pub(super) fn segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
        use serde_ignored::Path as P;
        let mut out = match path {
            P::Root => return Vec::new(),
            P::Seq { parent, .. }
            | P::Map { parent, .. }
            | P::Some { parent }
            | P::NewtypeStruct { parent }
            | P::NewtypeVariant { parent } => segments(parent),
        };
        match path {
            P::Seq { index, .. } => out.push(index.to_string()),
            // `Spanned` reads its value through a private key.
            P::Map { key, .. } if !key.starts_with("$__serde_spanned") => out.push(key.clone()),
            _ => {}
        }
        out
    }

    /// The byte offset of the key at `path` in the document (of its nearest ancestor found).
    pub(super) fn offset(doc: &Spanned<DeTable<'_>>, path: &[String]) -> usize {
        let mut at = doc.span().start;
        let mut value: Option<&DeValue<'_>> = None;
        let mut table = Some(doc.get_ref());
        for segment in path {
            let next = match (table, value) {
                (Some(t), _) => t
                    .iter()
                    .find(|(k, _)| k.get_ref().as_ref() == segment.as_str())
                    .map(|(k, v)| (k.span().start, v)),
                (None, Some(DeValue::Array(items))) => segment
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get(i))
                    .map(|v| (v.span().start, v)),
                _ => None,
            };
            let Some((start, v)) = next else { break };
            at = start;
            value = Some(v.get_ref());
            table = match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        at
    }

    /// "unknown field `x`, expected one of ...", as serde says it, naming the keys accepted
    /// where `x` was written.
    pub(super) fn message(path: &[String]) -> String {
        let key = path.last().map_or("", String::as_str);
        let parents: Vec<&str> = path[..path.len().saturating_sub(1)]
            .iter()
            .map(String::as_str)
            .collect();
        let accepted = match parents.as_slice() {
            [] => fields::<RawConfig>(),
            ["admin"] => fields::<RawAdmin>(),
            ["server"] => fields::<Server>(),
            ["filter_limits"] | ["routes", _, "filters", _, "limits"] => {
                fields::<RawFilterLimits>()
            }
            ["timeouts"] => fields::<Timeouts>(),
            ["limits"] => fields::<BodyLimits>(),
            ["compression"] => fields::<Compression>(),
            ["tls"] => fields::<RawTls>(),
            ["dns"] => fields::<Dns>(),
            ["access_log"] => fields::<AccessLogConfig>(),
            ["tracing"] => fields::<TracingConfig>(),
            ["metrics"] => fields::<MetricsConfig>(),
            ["state"] => fields::<StateConfig>(),
            ["registry"] => fields::<RegistryConfig>(),
            ["tls", "certificates", _] => fields::<RawCertificate>(),
            ["services", _] => fields::<RawService>(),
            ["services", _, "health_check"] => fields::<HealthCheck>(),
            ["services", _, "outlier_detection"] => fields::<OutlierDetection>(),
            ["routes", _, "retry"] => fields::<RawRetry>(),
            ["routes", _] => fields::<RawRoute>(),
            ["routes", _, "filters", _] => fields::<RawFilterRef>(),
            _ => &[],
        };
        let listed: Vec<String> = accepted.iter().map(|f| format!("`{f}`")).collect();
        match listed.as_slice() {
            [] => format!("unknown field `{key}`"),
            [one] => format!("unknown field `{key}`, expected {one}"),
            [init @ .., last] if init.len() == 1 => {
                format!("unknown field `{key}`, expected {} or {last}", init[0])
            }
            _ => format!(
                "unknown field `{key}`, expected one of {}",
                listed.join(", ")
            ),
        }
    }

    /// The keys a config struct accepts, as its `Deserialize` impl declares them.
    fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Probe(&mut fields));
        fields
    }

    /// A deserializer that only records the field list a struct asks for.
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
}

#[derive(Deserialize)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    #[serde(default = "yes")]
    enabled: bool,
    token_file: Option<Spanned<String>>,
    #[serde(default = "yes")]
    protect_reads: bool,
}

/// No `[admin]` table: enabled, on the default address, without a token.
impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: None,
            enabled: true,
            token_file: None,
            protect_reads: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// Limits for filter execution, as written (every field optional).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct RawFilterLimits {
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
    memory_bytes: Option<usize>,
    max_output_bytes: Option<usize>,
    requests_per_instance: Option<u32>,
}

impl RawFilterLimits {
    fn over(self, base: FilterLimits) -> FilterLimits {
        FilterLimits {
            deadline: self.deadline.unwrap_or(base.deadline),
            memory_bytes: self.memory_bytes.unwrap_or(base.memory_bytes),
            max_output_bytes: self.max_output_bytes.unwrap_or(base.max_output_bytes),
            requests_per_instance: self
                .requests_per_instance
                .unwrap_or(base.requests_per_instance),
        }
    }

    fn check(&self, what: &str) -> Option<String> {
        let max_mem = MAX_FILTER_MEMORY_BYTES;
        if self
            .deadline
            .is_some_and(|d| d.is_zero() || d > Duration::from_secs(60))
        {
            return Some(format!("{what}: deadline must be between 1ms and 60s"));
        }
        if self
            .memory_bytes
            .is_some_and(|m| !((1 << 20)..=max_mem).contains(&m))
        {
            return Some(format!(
                "{what}: memory_bytes must be between 1 MiB and {} MiB",
                max_mem >> 20
            ));
        }
        if self.requests_per_instance == Some(0) {
            return Some(format!(
                "{what}: requests_per_instance must be at least 1 (1: a fresh instance per request)"
            ));
        }
        if self.max_output_bytes == Some(0) {
            return Some(format!(
                "{what}: max_output_bytes must be greater than zero"
            ));
        }
        None
    }
}

#[derive(Deserialize)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    filters_dir: Option<Spanned<String>>,
    cache_dir: Option<Spanned<String>>,
    admin: Option<RawAdmin>,
    server: Option<Spanned<Server>>,
    filter_limits: Option<Spanned<RawFilterLimits>>,
    timeouts: Option<Spanned<Timeouts>>,
    limits: Option<Spanned<BodyLimits>>,
    compression: Option<Spanned<Compression>>,
    tls: Option<Spanned<RawTls>>,
    dns: Option<Spanned<Dns>>,
    access_log: Option<Spanned<AccessLogConfig>>,
    tracing: Option<Spanned<TracingConfig>>,
    metrics: Option<Spanned<MetricsConfig>>,
    state: Option<Spanned<StateConfig>>,
    registry: Option<Spanned<RegistryConfig>>,
    #[serde(default)]
    services: BTreeMap<String, Spanned<RawService>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
struct RawTls {
    listen: Spanned<String>,
    #[serde(default)]
    certificates: Vec<Spanned<RawCertificate>>,
    #[serde(default)]
    redirect_http: bool,
}

#[derive(Deserialize)]
struct RawCertificate {
    cert: String,
    key: String,
}

#[derive(Deserialize)]
struct RawService {
    upstreams: Vec<Spanned<String>>,
    weights: Option<Spanned<Vec<u32>>>,
    protocol: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    tls_verify: Option<Spanned<bool>>,
    balance: Option<Spanned<String>>,
    hash_on: Option<Spanned<String>>,
    when_all_unhealthy: Option<Spanned<String>>,
    health_check: Option<Spanned<HealthCheck>>,
    outlier_detection: Option<Spanned<OutlierDetection>>,
    max_connections: Option<Spanned<usize>>,
    max_pending: Option<Spanned<usize>>,
    max_requests: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
struct RawRetry {
    attempts: Option<Spanned<u32>>,
    on: Option<Vec<Spanned<String>>>,
    #[serde(default, with = "humantime_serde")]
    per_try_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
    budget_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
struct RawRoute {
    name: Spanned<String>,
    prefix: Option<Spanned<String>>,
    exact: Option<Spanned<String>>,
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    methods: Vec<Spanned<String>>,
    host: Option<Spanned<String>>,
    strip_prefix: Option<Spanned<bool>>,
    rewrite: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    compress: bool,
    grpc_web: Option<Spanned<bool>>,
    transcode: Option<Spanned<RawTranscode>>,
    retry: Option<Spanned<RawRetry>>,
    access_log: Option<bool>,
    #[serde(default)]
    filters: Vec<Spanned<RawFilterRef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTranscode {
    descriptors: Spanned<String>,
    services: Spanned<Vec<String>>,
    stream: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawFilterRef {
    name: Spanned<String>,
    source: Option<Spanned<String>>,
    #[serde(default)]
    services: Vec<Spanned<String>>,
    limits: Option<Spanned<RawFilterLimits>>,
    #[serde(default)]
    on_failure: FailurePolicy,
    config: Option<toml::Table>,
}

/// Maps byte offsets in the source to lines and columns.
struct Source<'a> {
    text: &'a str,
    /// The config file's directory: relative paths in it are resolved against this.
    base: &'a Path,
    diagnostics: Vec<Diagnostic>,
}

impl Source<'_> {
    fn place(&self, offset: usize) -> Place {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Place { line, column }
    }

    fn error(&mut self, offset: usize, message: impl Into<String>) {
        let Place { line, column } = self.place(offset);
        self.diagnostics.push(Diagnostic {
            line,
            column,
            message: message.into(),
        });
    }

    fn at<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.error(spanned.span().start, message);
    }

    /// A path as written, relative to the config file's directory.
    fn resolve(&self, path: &str) -> PathBuf {
        self.base.join(path)
    }
}

fn validate(raw: RawConfig, src: &mut Source<'_>) -> Config {
    let listen = match &raw.listen {
        None => DEFAULT_LISTEN
            .parse()
            .expect("default listen address parses"),
        Some(s) => s.get_ref().parse().unwrap_or_else(|_| {
            src.at(
                s,
                format!(
                    "listen: {:?} is not an address like \"127.0.0.1:8080\"",
                    s.get_ref()
                ),
            );
            DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses")
        }),
    };
    let admin = match &raw.admin {
        Some(a) => validate_admin(a, src),
        None => validate_admin(&RawAdmin::default(), src),
    };
    if let Some(t) = &raw.timeouts
        && (t.get_ref().connect.is_zero()
            || t.get_ref().request.is_zero()
            || t.get_ref().upstream_idle.is_zero())
    {
        src.at(t, "timeouts: a timeout must be greater than zero");
    }
    if let Some(c) = &raw.compression {
        for t in &c.get_ref().content_types {
            let (kind, sub) = t.split_once('/').unwrap_or((t, ""));
            if kind.is_empty() || sub.is_empty() || kind == "*" || t.contains([';', ' ']) {
                src.at(
                    c,
                    format!("compression.content_types: {t:?} is not a media type like \"text/*\" or \"application/json\""),
                );
            }
        }
    }
    if let Some(l) = &raw.limits
        && l.get_ref().max_body_bytes == 0
    {
        src.at(l, "limits.max_body_bytes must be greater than zero");
    }

    let services = raw
        .services
        .iter()
        .map(|(name, svc)| validate_service(name, svc, src))
        .collect::<Vec<_>>();
    let service_names: HashMap<&str, Protocol> = services
        .iter()
        .map(|s| (s.name.as_str(), s.transport.protocol))
        .collect();

    if let Some(srv) = &raw.server {
        let v = srv.get_ref();
        if v.max_header_bytes < 8192 {
            src.at(srv, "server.max_header_bytes must be at least 8192");
        }
        if v.max_uri_bytes < 256 {
            src.at(srv, "server.max_uri_bytes must be at least 256");
        }
        if v.max_headers == 0
            || v.max_connections == 0
            || v.header_read_timeout.is_zero()
            || v.idle_timeout.is_zero()
            || v.websocket_idle_timeout.is_zero()
            || v.http2_max_concurrent_streams == 0
            || v.workers == Some(0)
        {
            src.at(srv, "server: max_headers, max_connections, workers, header_read_timeout, idle_timeout, websocket_idle_timeout and http2_max_concurrent_streams must be greater than zero");
        }
    }
    let tls = raw.tls.as_ref().and_then(|t| validate_tls(t, src));
    let mut filter_limits = FilterLimits::default();
    if let Some(l) = &raw.filter_limits {
        match l.get_ref().check("filter_limits") {
            Some(why) => src.at(l, why),
            None => filter_limits = l.get_ref().over(filter_limits),
        }
    }
    let mut route_names = HashSet::new();
    let routes = raw
        .routes
        .iter()
        .map(|route| validate_route(route, &service_names, &mut route_names, filter_limits, src))
        .collect();
    let sources = filter_sources(&raw.routes, src);
    let registry = match &raw.registry {
        None => RegistryConfig::default(),
        Some(r) => {
            let registry = r.get_ref();
            if registry.poll_interval.is_zero()
                || registry.timeout.is_zero()
                || registry.max_component_bytes == 0
            {
                src.at(
                    r,
                    "registry: poll_interval, timeout and max_component_bytes must be greater than zero",
                );
            }
            registry.clone()
        }
    };

    Config {
        listen,
        sources,
        registry,
        filters_dir: raw.filters_dir.map_or_else(
            || PathBuf::from("filters"),
            |d| PathBuf::from(d.into_inner()),
        ),
        cache_dir: match raw.cache_dir {
            Some(dir) => Some(PathBuf::from(dir.into_inner())),
            None => default_cache_dir(),
        },
        admin,
        server: raw.server.map(Spanned::into_inner).unwrap_or_default(),
        timeouts: raw.timeouts.map(Spanned::into_inner).unwrap_or_default(),
        limits: raw.limits.map(Spanned::into_inner).unwrap_or_default(),
        compression: raw.compression.map(Spanned::into_inner).unwrap_or_default(),
        access_log: match &raw.access_log {
            None => AccessLogConfig::default(),
            Some(a) => {
                let log = a.get_ref();
                if log.format != "json" && log.format != "combined" {
                    src.at(
                        a,
                        format!(
                            "access_log.format {:?}: expected \"json\" or \"combined\"",
                            log.format
                        ),
                    );
                }
                if log.buffer == 0 || log.path.is_empty() {
                    src.at(a, "access_log: buffer must be greater than zero and path not empty (\"-\" is stdout)");
                }
                log.clone()
            }
        },
        metrics: raw.metrics.map(Spanned::into_inner).unwrap_or_default(),
        state: match &raw.state {
            None => StateConfig::default(),
            Some(st) => {
                let state = st.get_ref();
                match state.backend.as_str() {
                    "memory" => {}
                    "redis" => {
                        let url =
                            redis::IntoConnectionInfo::into_connection_info(state.url.as_str());
                        if !state.url.starts_with("redis://") || url.is_err() {
                            src.at(
                                st,
                                format!(
                                    "state.url {:?}: expected a redis:// URL (e.g. \"redis://127.0.0.1:6379\")",
                                    state.url
                                ),
                            );
                        }
                    }
                    other => src.at(
                        st,
                        format!("state.backend {other:?}: expected \"memory\" or \"redis\""),
                    ),
                }
                if state.max_entries == 0
                    || state.max_bytes == 0
                    || state.max_value_bytes == 0
                    || state.pool_size == 0
                    || state.timeout.is_zero()
                    || state.connect_timeout.is_zero()
                {
                    src.at(
                        st,
                        "state: max_entries, max_bytes, max_value_bytes, pool_size, timeout and connect_timeout must be greater than zero",
                    );
                }
                state.clone()
            }
        },
        tracing: match &raw.tracing {
            None => TracingConfig::default(),
            Some(t) => {
                let tracing = t.get_ref();
                let endpoint = tracing.endpoint.parse::<http::Uri>().ok().filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                });
                if endpoint.is_none() {
                    src.at(
                        t,
                        format!(
                            "tracing.endpoint {:?}: expected an http:// or https:// URL of an OTLP/HTTP receiver (e.g. \"http://127.0.0.1:4318/v1/traces\")",
                            tracing.endpoint
                        ),
                    );
                }
                if !(0.0..=1.0).contains(&tracing.sample_ratio) {
                    src.at(
                        t,
                        format!(
                            "tracing.sample_ratio {}: expected a number from 0.0 to 1.0",
                            tracing.sample_ratio
                        ),
                    );
                }
                if tracing.max_queue == 0 || tracing.timeout.is_zero() {
                    src.at(
                        t,
                        "tracing: max_queue and timeout must be greater than zero",
                    );
                }
                tracing.clone()
            }
        },
        dns: match &raw.dns {
            None => Dns::default(),
            Some(d) => {
                let dns = d.get_ref();
                if !DNS_LOOKUPS.contains(&dns.lookup.as_str()) {
                    src.at(
                        d,
                        format!(
                            "dns.lookup {:?}: expected one of {DNS_LOOKUPS:?}",
                            dns.lookup
                        ),
                    );
                }
                if dns.min_ttl > dns.max_ttl || dns.max_ttl.is_zero() {
                    src.at(
                        d,
                        "dns: max_ttl must be greater than zero and at least min_ttl",
                    );
                }
                dns.clone()
            }
        },
        tls,
        services,
        routes,
    }
}

fn validate_admin(raw: &RawAdmin, src: &mut Source<'_>) -> Admin {
    let token = raw.token_file.as_ref().and_then(|file| {
        let path = src.resolve(file.get_ref());
        let problem = match std::fs::read_to_string(&path) {
            Err(e) => format!("admin.token_file: cannot read {}: {e}", path.display()),
            Ok(text) if text.trim().len() < MIN_ADMIN_TOKEN_BYTES => format!(
                "admin.token_file: the token in {} is {} bytes; use at least {MIN_ADMIN_TOKEN_BYTES} (e.g. `openssl rand -hex 32 > admin.token`)",
                path.display(),
                text.trim().len()
            ),
            Ok(text) => return Some(AdminToken::new(&text)),
        };
        src.at(file, problem);
        None
    });
    if !raw.enabled {
        return Admin {
            listen: None,
            token,
            protect_reads: raw.protect_reads,
        };
    }
    let listen = match &raw.listen {
        None => Some(
            DEFAULT_ADMIN_LISTEN
                .parse()
                .expect("default admin address parses"),
        ),
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() && raw.token_file.is_none() {
                    src.at(
                        l,
                        format!(
                            "admin.listen: {addr} is reachable beyond this machine, so the admin endpoint needs a token: set admin.token_file (or listen on 127.0.0.1; [metrics] listen serves only metrics and health)"
                        ),
                    );
                }
                Some(addr)
            }
            Err(_) => {
                src.at(
                    l,
                    format!(
                        "admin.listen: {:?} is not an address like \"127.0.0.1:9901\"",
                        l.get_ref()
                    ),
                );
                None
            }
        },
    };
    Admin {
        listen,
        token,
        protect_reads: raw.protect_reads,
    }
}

fn validate_tls(spanned: &Spanned<RawTls>, src: &mut Source<'_>) -> Option<Tls> {
    let tls = spanned.get_ref();
    let listen = match tls.listen.get_ref().parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            src.at(
                &tls.listen,
                format!(
                    "tls.listen: {:?} is not an address like \"127.0.0.1:8443\"",
                    tls.listen.get_ref()
                ),
            );
            None
        }
    };
    if tls.certificates.is_empty() {
        src.at(
            spanned,
            "tls: needs at least one certificate: certificates = [{ cert = \"cert.pem\", key = \"key.pem\" }]",
        );
    }
    let certificates = tls
        .certificates
        .iter()
        .map(|c| CertificateFiles {
            cert: PathBuf::from(&c.get_ref().cert),
            key: PathBuf::from(&c.get_ref().key),
            place: src.place(c.span().start),
        })
        .collect();
    Some(Tls {
        listen: listen?,
        certificates,
        redirect_http: tls.redirect_http,
    })
}

fn validate_service(name: &str, svc: &Spanned<RawService>, src: &mut Source<'_>) -> ServiceConfig {
    let raw = svc.get_ref();
    if !valid_name(name) {
        src.at(
            svc,
            format!("service {name:?}: names use letters, digits, '-' and '_'"),
        );
    }
    if raw.upstreams.is_empty() {
        src.at(
            svc,
            format!("service {name:?}: needs at least one upstream"),
        );
    }
    let upstreams: Vec<http::Uri> = raw
        .upstreams
        .iter()
        .filter_map(|url| match parse_upstream(url.get_ref()) {
            Ok(uri) => Some(uri),
            Err(why) => {
                src.at(
                    url,
                    format!("service {name:?}: upstream {:?}: {why}", url.get_ref()),
                );
                None
            }
        })
        .collect();
    let transport = validate_transport(name, raw, &upstreams, src);
    let weights = match &raw.weights {
        None => vec![1; upstreams.len()],
        Some(w) if w.get_ref().len() != raw.upstreams.len() => {
            src.at(w, format!("service {name:?}: weights: {} given for {} upstreams; give one per upstream, in the same order", w.get_ref().len(), raw.upstreams.len()));
            vec![1; upstreams.len()]
        }
        Some(w) if w.get_ref().iter().any(|w| !(1..=1000).contains(w)) => {
            src.at(
                w,
                format!("service {name:?}: weights are whole numbers from 1 to 1000"),
            );
            vec![1; upstreams.len()]
        }
        // Upstreams that did not parse were dropped above; so are their weights.
        Some(w) => raw
            .upstreams
            .iter()
            .zip(w.get_ref())
            .filter(|(url, _)| parse_upstream(url.get_ref()).is_ok())
            .map(|(_, w)| *w)
            .collect(),
    };
    ServiceConfig {
        name: name.to_string(),
        upstreams,
        weights,
        transport,
        balance: validate_balance(name, raw, src),
        all_unhealthy: match &raw.when_all_unhealthy {
            None => AllUnhealthy::Fail,
            Some(w) => match w.get_ref().as_str() {
                "fail" => AllUnhealthy::Fail,
                "panic" => AllUnhealthy::Panic,
                other => {
                    src.at(w, format!("service {name:?}: when_all_unhealthy {other:?}: expected \"fail\" (answer 503) or \"panic\" (use every endpoint)"));
                    AllUnhealthy::Fail
                }
            },
        },
        health_check: raw.health_check.as_ref().map(|h| {
            let check = h.get_ref();
            if !check.path.starts_with('/') {
                src.at(h, format!("service {name:?}: health_check.path must start with '/'"));
            }
            if check.interval.is_zero() || check.timeout.is_zero() || check.healthy_threshold == 0 || check.unhealthy_threshold == 0 {
                src.at(h, format!("service {name:?}: health_check: interval, timeout and thresholds must be greater than zero"));
            }
            if check.expected_statuses.iter().any(|s| !(100..600).contains(s)) {
                src.at(h, format!("service {name:?}: health_check.expected_statuses are HTTP statuses (100 to 599)"));
            }
            check.clone()
        }),
        outlier: raw.outlier_detection.as_ref().map(|o| {
            let outlier = *o.get_ref();
            if outlier.consecutive_failures == 0 || outlier.base_ejection.is_zero() || outlier.max_ejection < outlier.base_ejection || outlier.max_ejected_percent > 100 {
                src.at(o, format!("service {name:?}: outlier_detection: consecutive_failures and base_ejection must be greater than zero, max_ejection at least base_ejection, max_ejected_percent at most 100"));
            }
            outlier
        }),
        limits: ServiceLimits {
            max_connections: positive(name, "max_connections", &raw.max_connections, src),
            max_pending: positive(name, "max_pending", &raw.max_pending, src),
            max_requests: positive(name, "max_requests", &raw.max_requests, src),
        },
    }
}

fn positive(
    name: &str,
    key: &str,
    value: &Option<Spanned<usize>>,
    src: &mut Source<'_>,
) -> Option<usize> {
    let value = value.as_ref()?;
    if *value.get_ref() == 0 {
        src.at(
            value,
            format!("service {name:?}: {key} must be greater than zero"),
        );
    }
    Some(*value.get_ref())
}

fn validate_balance(name: &str, raw: &RawService, src: &mut Source<'_>) -> Balance {
    let hash_on = raw.hash_on.as_ref().and_then(|h| {
        let parsed = HashOn::parse(h.get_ref());
        if parsed.is_none() {
            src.at(h, format!("service {name:?}: hash_on {:?}: expected \"header:<name>\", \"cookie:<name>\", \"client\" or \"path\"", h.get_ref()));
        }
        parsed
    });
    let Some(balance) = &raw.balance else {
        if let Some(h) = &raw.hash_on {
            src.at(
                h,
                format!("service {name:?}: hash_on needs balance = \"consistent_hash\""),
            );
        }
        return Balance::RoundRobin;
    };
    match balance.get_ref().as_str() {
        "round_robin" => Balance::RoundRobin,
        "least_request" => Balance::LeastRequest,
        "random" => Balance::Random,
        "consistent_hash" => match hash_on {
            Some(on) => Balance::ConsistentHash(on),
            None => {
                if raw.hash_on.is_none() {
                    src.at(balance, format!("service {name:?}: consistent_hash needs hash_on (\"header:<name>\", \"cookie:<name>\", \"client\" or \"path\")"));
                }
                Balance::RoundRobin
            }
        },
        other => {
            src.at(balance, format!("service {name:?}: balance {other:?}: expected \"round_robin\", \"least_request\", \"random\" or \"consistent_hash\""));
            Balance::RoundRobin
        }
    }
}

fn validate_retry(label: &str, spanned: &Spanned<RawRetry>, src: &mut Source<'_>) -> Retry {
    let raw = spanned.get_ref();
    let mut retry = Retry::default();
    if let Some(a) = &raw.attempts {
        if !(1..=10).contains(a.get_ref()) {
            src.at(
                a,
                format!("{label}: retry.attempts counts every try, the first included: 1 to 10"),
            );
        }
        retry.attempts = *a.get_ref();
    }
    if let Some(on) = &raw.on {
        retry.on = on
            .iter()
            .filter_map(|o| {
                let parsed = RetryOn::parse(o.get_ref());
                if parsed.is_none() {
                    src.at(o, format!("{label}: retry.on {:?}: expected \"connect-failure\", \"refused\", \"reset\", \"timeout\" or a 5xx status like \"503\"", o.get_ref()));
                }
                parsed
            })
            .collect();
    }
    if let Some(t) = raw.per_try_timeout {
        if t.is_zero() {
            src.at(
                spanned,
                format!("{label}: retry.per_try_timeout must be greater than zero"),
            );
        }
        retry.per_try_timeout = Some(t);
    }
    retry.backoff = raw.backoff.unwrap_or(retry.backoff);
    retry.max_backoff = raw
        .max_backoff
        .unwrap_or(retry.max_backoff.max(retry.backoff));
    if retry.max_backoff < retry.backoff {
        src.at(
            spanned,
            format!("{label}: retry.max_backoff must be at least retry.backoff"),
        );
    }
    if let Some(b) = &raw.budget_percent {
        if *b.get_ref() > 100 {
            src.at(b, format!("{label}: retry.budget_percent is at most 100"));
        }
        retry.budget_percent = *b.get_ref();
    }
    retry
}

/// A service's protocol and TLS settings, their files read; the plain transport when they
/// have problems (reported).
fn validate_transport(
    name: &str,
    raw: &RawService,
    upstreams: &[http::Uri],
    src: &mut Source<'_>,
) -> Transport {
    let https = upstreams.iter().any(|u| u.scheme_str() == Some("https"));
    let http = upstreams.iter().any(|u| u.scheme_str() == Some("http"));
    let protocol = match &raw.protocol {
        None => Protocol::Http1,
        Some(p) => {
            match Protocol::parse(p.get_ref()) {
                Some(Protocol::H2) if http => {
                    src.at(p, format!("service {name:?}: protocol \"h2\" is HTTP/2 over TLS and needs https:// upstreams; use \"h2c\" for cleartext HTTP/2"));
                    Protocol::H2
                }
                Some(Protocol::H2c) if https => {
                    src.at(p, format!("service {name:?}: protocol \"h2c\" is cleartext HTTP/2 and needs http:// upstreams; use \"h2\" over TLS"));
                    Protocol::H2c
                }
                Some(protocol) => protocol,
                None => {
                    src.at(p, format!("service {name:?}: protocol {:?}: expected \"http1\", \"h2\" or \"h2c\"", p.get_ref()));
                    Protocol::Http1
                }
            }
        }
    };
    let tls_keys = [
        raw.ca_file.as_ref().map(|s| (s.span().start, "ca_file")),
        raw.client_cert
            .as_ref()
            .map(|s| (s.span().start, "client_cert")),
        raw.client_key
            .as_ref()
            .map(|s| (s.span().start, "client_key")),
        raw.tls_verify
            .as_ref()
            .map(|s| (s.span().start, "tls_verify")),
    ];
    if !https {
        for (at, key) in tls_keys.into_iter().flatten() {
            src.error(
                at,
                format!("service {name:?}: {key} applies to https:// upstreams only"),
            );
        }
        return Transport::plain(protocol);
    }
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => Some((src.resolve(cert.get_ref()), src.resolve(key.get_ref()))),
        (None, None) => None,
        (Some(cert), None) => {
            src.at(
                cert,
                format!("service {name:?}: client_cert needs client_key"),
            );
            return Transport::plain(protocol);
        }
        (None, Some(key)) => {
            src.at(
                key,
                format!("service {name:?}: client_key needs client_cert"),
            );
            return Transport::plain(protocol);
        }
    };
    let ca_file = raw.ca_file.as_ref().map(|ca| src.resolve(ca.get_ref()));
    let files = TlsFiles {
        ca_file: ca_file.as_deref(),
        client_cert: client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path())),
        verify: raw.tls_verify.as_ref().is_none_or(|v| *v.get_ref()),
    };
    match Transport::new(protocol, &files) {
        Ok(transport) => transport,
        Err(why) => {
            let at = raw
                .ca_file
                .as_ref()
                .or(raw.client_cert.as_ref())
                .map_or(0, |s| s.span().start);
            src.error(at, format!("service {name:?}: {why}"));
            Transport::plain(protocol)
        }
    }
}

fn parse_upstream(url: &str) -> Result<http::Uri, &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(
                "expected a URL like \"http://127.0.0.1:3000\" or \"https://api.internal\"",
            );
        }
    }
    if uri.authority().is_none() {
        return Err("missing host");
    }
    if uri.query().is_some() {
        return Err("a base URL cannot have a query");
    }
    Ok(uri)
}

fn validate_route(
    spanned: &Spanned<RawRoute>,
    services: &HashMap<&str, Protocol>,
    seen: &mut HashSet<String>,
    filter_limits: FilterLimits,
    src: &mut Source<'_>,
) -> RouteConfig {
    let route = spanned.get_ref();
    let name = route.name.get_ref().clone();
    let label = format!("route {name:?}");

    if !valid_name(&name) {
        src.at(
            &route.name,
            format!("{label}: names use letters, digits, '-' and '_'"),
        );
    } else if !seen.insert(name.clone()) {
        src.at(&route.name, format!("{label}: defined twice"));
    }

    let given: Vec<_> = [
        route.prefix.as_ref().map(|p| ("prefix", p)),
        route.exact.as_ref().map(|p| ("exact", p)),
        route.pattern.as_ref().map(|p| ("pattern", p)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let path = match given.as_slice() {
        [] => {
            src.at(
                &route.name,
                format!("{label}: needs one of `prefix`, `exact` or `pattern`"),
            );
            None
        }
        [(kind, p)] => {
            let text = p.get_ref();
            if !text.starts_with('/') {
                src.at(p, format!("{label}: {kind} must start with '/'"));
                None
            } else {
                match *kind {
                    "prefix" => Some(PathMatch::Prefix(text.trim_end_matches('/').to_string())),
                    "exact" => Some(PathMatch::Exact(text.clone())),
                    _ => match Pattern::parse(text) {
                        Ok(pattern) => Some(PathMatch::Pattern(pattern)),
                        Err(why) => {
                            src.at(p, format!("{label}: pattern {text:?}: {why}"));
                            None
                        }
                    },
                }
            }
        }
        [_, (kind, p), ..] => {
            src.at(p, format!("{label}: `{kind}` given with another path match; use only one of `prefix`, `exact` or `pattern`"));
            None
        }
    };

    let methods = route
        .methods
        .iter()
        .filter_map(|m| {
            let upper = m.get_ref().to_ascii_uppercase();
            match http::Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() => Some(method),
                _ => {
                    src.at(
                        m,
                        format!("{label}: {:?} is not an HTTP method", m.get_ref()),
                    );
                    None
                }
            }
        })
        .collect();

    let host = route.host.as_ref().and_then(|h| {
        let text = h.get_ref().to_ascii_lowercase();
        let bare = text.strip_prefix("*.").unwrap_or(&text);
        if bare.is_empty() || bare.contains(['/', ':', '*', ' ']) {
            src.at(
                h,
                format!(
                    "{label}: host {:?} must be a host name, optionally starting with \"*.\"",
                    h.get_ref()
                ),
            );
            None
        } else {
            Some(text)
        }
    });

    let strip_prefix = route.strip_prefix.as_ref().is_some_and(|s| *s.get_ref());
    if let Some(s) = &route.strip_prefix
        && *s.get_ref()
        && route.prefix.is_none()
    {
        src.at(s, format!("{label}: strip_prefix needs a `prefix` match"));
    }
    let rewrite = route.rewrite.as_ref().and_then(|r| {
        if strip_prefix {
            src.at(
                r,
                format!("{label}: use either strip_prefix or rewrite, not both"),
            );
            return None;
        }
        let captured = match &path {
            Some(PathMatch::Pattern(p)) => p.param_names(),
            _ => Vec::new(),
        };
        match Template::parse(r.get_ref(), &captured) {
            Ok(t) => Some(t),
            Err(why) => {
                src.at(r, format!("{label}: rewrite {:?}: {why}", r.get_ref()));
                None
            }
        }
    });

    if let Some(svc) = &route.service
        && !services.contains_key(svc.get_ref().as_str())
    {
        src.at(svc, format!("{label}: unknown service {:?}", svc.get_ref()));
    }
    if let Some(web) = &route.grpc_web
        && *web.get_ref()
        && let Some(svc) = &route.service
        && services.get(svc.get_ref().as_str()) == Some(&Protocol::Http1)
    {
        src.at(
            web,
            format!(
                "{label}: grpc_web needs a gRPC upstream: give service {:?} protocol = \"h2\" or \"h2c\"",
                svc.get_ref()
            ),
        );
    }
    let transcode = route
        .transcode
        .as_ref()
        .and_then(|t| validate_transcode(&label, route, t, services, src));
    if route.timeout.is_some_and(|t| t.is_zero()) {
        src.at(
            &route.name,
            format!("{label}: timeout must be greater than zero"),
        );
    }
    if let Some(max) = &route.max_body_bytes
        && *max.get_ref() == 0
    {
        src.at(
            max,
            format!("{label}: max_body_bytes must be greater than zero"),
        );
    }

    let filters = route
        .filters
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let fname = f.get_ref().name.get_ref();
            if !valid_name(fname) {
                src.at(
                    &f.get_ref().name,
                    format!("{label}: filter #{}: {fname:?} is not a filter name (the .wasm file stem: letters, digits, '-' and '_')", i + 1),
                );
            }
            for svc in &f.get_ref().services {
                if !services.contains_key(svc.get_ref().as_str()) {
                    src.at(svc, format!("{label}: filter {fname:?} is granted unknown service {:?}", svc.get_ref()));
                }
            }
            let limits = match &f.get_ref().limits {
                Some(l) => {
                    if let Some(why) = l.get_ref().check(&format!("{label}: filter {fname:?}: limits")) {
                        src.at(l, why);
                    }
                    l.get_ref().over(filter_limits)
                }
                None => filter_limits,
            };
            let config = f.get_ref().config.clone().unwrap_or_default();
            FilterRef {
                limits,
                on_failure: f.get_ref().on_failure,
                name: fname.clone(),
                services: f.get_ref().services.iter().map(|s| s.get_ref().clone()).collect(),
                config_json: serde_json::to_string(&config).expect("a TOML table is valid JSON"),
                place: src.place(f.span().start),
            }
        })
        .collect();

    // A route with problems is kept only for `check`, which looks at its filters too; a
    // config with any problem is never served.
    RouteConfig {
        name,
        path: path.unwrap_or_else(|| PathMatch::Prefix(String::new())),
        methods,
        host,
        strip_prefix,
        rewrite,
        service: route.service.as_ref().map(|s| s.get_ref().clone()),
        timeout: route.timeout,
        max_body_bytes: route.max_body_bytes.as_ref().map(|m| *m.get_ref()),
        compress: route.compress,
        grpc_web: route.grpc_web.as_ref().is_some_and(|g| *g.get_ref()),
        transcode,
        retry: route.retry.as_ref().map(|r| validate_retry(&label, r, src)),
        access_log: route.access_log.unwrap_or(true),
        filters,
        place: src.place(spanned.span().start),
    }
}

/// Every route filter's `source`, by filter name. A name has one source: a route may repeat
/// it, or leave it out and use the one given elsewhere, but not give another.
fn filter_sources(
    routes: &[Spanned<RawRoute>],
    src: &mut Source<'_>,
) -> BTreeMap<String, FilterSource> {
    let mut sources: BTreeMap<String, (FilterSource, Place)> = BTreeMap::new();
    for filter in routes.iter().flat_map(|r| &r.get_ref().filters) {
        let filter = filter.get_ref();
        let Some(text) = &filter.source else { continue };
        let name = filter.name.get_ref();
        let place = src.place(text.span().start);
        match FilterSource::parse(text.get_ref()) {
            Err(why) => src.at(text, format!("filter {name:?}: {why}")),
            Ok(source) => match sources.get(name) {
                Some((first, at)) if first.text != source.text => src.at(
                    text,
                    format!(
                        "filter {name:?}: source {:?} differs from {:?} given at line {}; a filter name has one source (give the other a name of its own)",
                        source.text, first.text, at.line
                    ),
                ),
                Some(_) => {}
                None => {
                    sources.insert(name.clone(), (source, place));
                }
            },
        }
    }
    sources
        .into_iter()
        .map(|(name, (source, _))| (name, source))
        .collect()
}

/// A route's `transcode`: its descriptors read and its services' rules checked now, so that a
/// bad file or rule rejects the config (and a reload keeps the previous one).
fn validate_transcode(
    label: &str,
    route: &RawRoute,
    raw: &Spanned<RawTranscode>,
    services: &HashMap<&str, Protocol>,
    src: &mut Source<'_>,
) -> Option<Arc<Transcoder>> {
    let t = raw.get_ref();
    match &route.service {
        None => {
            src.at(
                raw,
                format!("{label}: transcode needs the route's service (a gRPC upstream)"),
            );
            return None;
        }
        Some(svc) if services.get(svc.get_ref().as_str()) == Some(&Protocol::Http1) => {
            src.at(
                raw,
                format!(
                    "{label}: transcode needs a gRPC upstream: give service {:?} protocol = \"h2\" or \"h2c\"",
                    svc.get_ref()
                ),
            );
            return None;
        }
        Some(_) => {}
    }
    let stream = match t.stream.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("array") => StreamFormat::Array,
        Some("ndjson") => StreamFormat::Ndjson,
        Some(other) => {
            let at = t.stream.as_ref().expect("matched Some");
            src.at(
                at,
                format!("{label}: transcode.stream {other:?}: expected \"array\" or \"ndjson\""),
            );
            return None;
        }
    };
    let path = src.resolve(t.descriptors.get_ref());
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            src.at(
                &t.descriptors,
                format!("{label}: transcode.descriptors {}: {e}", path.display()),
            );
            return None;
        }
    };
    match Transcoder::from_descriptors(&bytes, t.services.get_ref(), stream) {
        Ok(transcoder) => Some(Arc::new(transcoder)),
        Err(e) => {
            let at = if e.starts_with("no service") || e.starts_with("no services") {
                t.services.span().start
            } else {
                t.descriptors.span().start
            };
            src.error(at, format!("{label}: transcode ({}): {e}", path.display()));
            None
        }
    }
}

/// `$XDG_CACHE_HOME/wasmgate`, else `$HOME/.cache/wasmgate`, else no cache.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wasmgate"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
