//! Upstream services and the one client every upstream request goes through: requests the
//! proxy forwards and service calls filters make. An instance is picked round-robin, the URI
//! joined, hop-by-hop headers dropped both ways, the response awaited under a timeout, and a
//! failure classified once ([`UpstreamError`]). Each serving thread keeps its own upstream
//! connections, shared by every route and across config reloads: plain HTTP/1.1 to a known
//! address in the request path's own pool (`pool`), everything else in hyper-util clients, one
//! per transport (protocol and TLS settings, [`Transport`]).

mod balance;
mod capped;
mod discovery;
mod endpoints;
mod pool;
pub(crate) mod wire;

pub use self::discovery::Resolver;
pub use self::endpoints::{EndpointRegistry, EndpointState};
pub use self::pool::ResponseBody;

use self::balance::Balancer;
use self::capped::{Capped, ConnectionCap, ConnectionLimit};
use self::endpoints::Outcome;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, LengthLimitError};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{
    AllUnhealthy, Balance, HealthCheck, OutlierDetection, Protocol, RetryOn, ServiceConfig,
    ServiceLimits, Timeouts, Transport,
};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used on both sides of the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type HttpClient = Client<Capped, Body>;

/// Headers that describe one connection and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// A named service: its endpoints, how it picks one, and what it is allowed to be sent.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    /// The name as a metric label.
    pub label: crate::metrics::Name,
    /// The endpoints and the balancer over them; swapped when DNS answers change.
    table: Arc<ArcSwap<Table>>,
    /// The upstreams as configured, with their weights.
    upstreams: Vec<(http::Uri, u32)>,
    balance: Balance,
    transport: Transport,
    all_unhealthy: AllUnhealthy,
    health_check: Option<HealthCheck>,
    outlier: Option<OutlierDetection>,
    shared: Arc<ServiceShared>,
}

/// A service's endpoints and how it picks among them.
#[derive(Debug)]
pub struct Table {
    endpoints: Vec<Endpoint>,
    balancer: Balancer,
}

impl Table {
    fn new(balance: &Balance, endpoints: Vec<Endpoint>) -> Table {
        Table {
            balancer: Balancer::new(balance.clone(), &endpoints),
            endpoints,
        }
    }
}

/// One upstream URL of a service, or one address its host name resolved to.
#[derive(Debug)]
pub struct Endpoint {
    /// The base URL requests are joined to (its host is sent as `Host` and SNI).
    pub base: http::Uri,
    /// The address connections go to, when DNS discovery resolved the host; otherwise the
    /// host is resolved when connecting.
    pub address: Option<std::net::IpAddr>,
    pub weight: u32,
    pub state: Arc<EndpointState>,
    /// [`Endpoint::id`], kept for the access log.
    pub label: Arc<str>,
    /// The `Host` an HTTP/1 request to it carries: the base URL's host, and its port unless it
    /// is the scheme's default (as hyper's client would write it, made once here).
    host: Option<HeaderValue>,
    /// The socket address of a plain `http://` endpoint whose address is known (an IP
    /// literal, or resolved): HTTP/1.1 to it can use the request path's own pool.
    direct: Option<std::net::SocketAddr>,
}

impl Endpoint {
    pub fn new(base: http::Uri, address: Option<std::net::IpAddr>, weight: u32) -> Endpoint {
        let label = Arc::from(Endpoint::id_of(&base, address));
        let host = base.host().and_then(|host| {
            let secure = matches!(base.scheme_str(), Some("https" | "wss"));
            let value = match base.port_u16() {
                Some(443) if secure => host.to_owned(),
                Some(80) if !secure => host.to_owned(),
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            HeaderValue::from_str(&value).ok()
        });
        let direct = (base.scheme_str() == Some("http"))
            .then(|| {
                let ip = address.or_else(|| {
                    let host = base.host()?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    host.parse().ok()
                })?;
                Some(std::net::SocketAddr::new(ip, base.port_u16().unwrap_or(80)))
            })
            .flatten();
        Endpoint {
            base,
            address,
            weight,
            state: Arc::default(),
            label,
            host,
            direct,
        }
    }

    /// The URL, and the address when there is one: what keeps its state across reloads.
    pub fn id(&self) -> String {
        Endpoint::id_of(&self.base, self.address)
    }

    fn id_of(base: &http::Uri, address: Option<std::net::IpAddr>) -> String {
        match address {
            Some(ip) => format!("{base}@{ip}"),
            None => base.to_string(),
        }
    }
}

/// What every snapshot of one service shares: its limits and their counters, and the retry
/// budget's.
#[derive(Debug)]
pub struct ServiceShared {
    pub(crate) limits: ServiceLimits,
    /// Requests in flight to the service, retries included.
    active: AtomicUsize,
    /// Requests (all their tries, and the waits between) in flight, for the retry budget.
    requests: AtomicUsize,
    /// Retries in flight (waiting their backoff or sent).
    retries: AtomicUsize,
    /// Open connections and requests waiting for one, when `max_connections` caps them.
    connections: Option<Arc<ConnectionCap>>,
    /// With `max_connections`, one pool for every serving thread, so that a request waiting
    /// for a connection gets the first one any request returns.
    pools: std::sync::Mutex<HashMap<PoolKey, HttpClient>>,
}

impl ServiceShared {
    fn new(limits: ServiceLimits) -> ServiceShared {
        ServiceShared {
            limits,
            active: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            connections: limits
                .max_connections
                .map(|n| Arc::new(ConnectionCap::new(n, limits.max_pending))),
            pools: std::sync::Mutex::default(),
        }
    }
}

impl Service {
    /// The service `cfg` describes, its endpoints' state taken from `registry` (kept from the
    /// previous config for endpoints that did not change).
    pub fn new(cfg: &ServiceConfig, registry: &mut EndpointRegistry) -> Self {
        if cfg.transport.insecure {
            tracing::warn!(
                service = %cfg.name,
                "tls_verify = false: the certificates of this service's upstreams are not verified"
            );
        }
        let upstreams: Vec<(http::Uri, u32)> = cfg
            .upstreams
            .iter()
            .cloned()
            .zip(cfg.weights.iter().copied().chain(std::iter::repeat(1)))
            .collect();
        let endpoints = discovery::endpoints(
            &cfg.name,
            &upstreams,
            registry.states(),
            registry.resolved(),
        );
        Self {
            name: cfg.name.clone(),
            label: crate::metrics::Name::new(&cfg.name),
            table: Arc::new(ArcSwap::from_pointee(Table::new(&cfg.balance, endpoints))),
            upstreams,
            balance: cfg.balance.clone(),
            transport: cfg.transport.clone(),
            all_unhealthy: cfg.all_unhealthy,
            health_check: cfg.health_check.clone(),
            outlier: cfg.outlier,
            shared: registry.shared(cfg),
        }
    }

    /// Upstreams whose host is a name, to be resolved by DNS.
    fn named_upstreams(&self) -> bool {
        self.upstreams.iter().any(|(u, _)| discovery::is_name(u))
    }

    /// The consistent-hashing key of a request, when the service hashes.
    pub fn hash_key(
        &self,
        headers: &HeaderMap,
        client: std::net::SocketAddr,
        path: &str,
    ) -> Option<u64> {
        match &self.balance {
            Balance::ConsistentHash(on) => balance::hash_key(on, headers, client, path),
            _ => None,
        }
    }

    /// A place for one more retry, held until the guard drops (the backoff and the try):
    /// `None` when retries in flight would exceed `budget_percent` of the requests in flight
    /// (counted by [`Service::requesting`]), or 3 if that is more.
    pub fn try_retry(&self, budget_percent: u32) -> Option<impl Drop + use<>> {
        let requests = self.shared.requests.load(Ordering::Relaxed);
        let allowed = (requests * budget_percent as usize / 100).max(3);
        let guard = Counted::new(self.shared.clone(), |s| &s.retries);
        (guard.count <= allowed).then_some(guard)
    }

    /// Count a request that may be retried until the guard drops.
    pub fn requesting(&self) -> impl Drop + use<> {
        Counted::new(self.shared.clone(), |s| &s.requests)
    }

    /// Each endpoint's state, for `/metrics`.
    pub fn endpoint_samples(&self) -> Vec<crate::metrics::EndpointSample> {
        let now = endpoints::now_ms();
        self.table
            .load()
            .endpoints
            .iter()
            .map(|e| crate::metrics::EndpointSample {
                service: self.label.clone(),
                endpoint: e.label.clone(),
                healthy: e.state.healthy(),
                ejected: e.state.ejected(now),
                active: e.state.active.load(Ordering::Relaxed) as u64,
                requests: e.state.requests.load(Ordering::Relaxed),
                failures: e.state.failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// For the admin endpoint: the policy and each endpoint's state.
    pub fn describe(&self) -> serde_json::Value {
        let now = endpoints::now_ms();
        let table = self.table.load();
        let endpoints: Vec<serde_json::Value> = table
            .endpoints
            .iter()
            .map(|e| {
                let s = &e.state;
                serde_json::json!({
                    "url": e.base.to_string(),
                    "address": e.address.map(|ip| ip.to_string()),
                    "weight": e.weight,
                    "healthy": s.healthy(),
                    "ejected": s.ejected(now),
                    "ejected_for_ms": s.ejected_for_ms(),
                    "ejections": s.ejections(),
                    "active_requests": s.active.load(Ordering::Relaxed),
                    "consecutive_failures": s.consecutive_failures(),
                    "requests": s.requests.load(Ordering::Relaxed),
                    "failures": s.failures.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "balance": self.balance.name(),
            "when_all_unhealthy": match self.all_unhealthy {
                AllUnhealthy::Fail => "fail",
                AllUnhealthy::Panic => "panic",
            },
            "health_check": self.health_check.as_ref().map(|h| h.path.clone()),
            "outlier_detection": self.outlier.is_some(),
            "active_requests": self.shared.active.load(Ordering::Relaxed),
            "limits": {
                "max_connections": self.shared.limits.max_connections,
                "max_pending": self.shared.limits.max_pending,
                "max_requests": self.shared.limits.max_requests,
            },
            "endpoints": endpoints,
        })
    }
}

/// A counter of `ServiceShared` held up while the guard lives.
struct Counted {
    shared: Arc<ServiceShared>,
    field: fn(&ServiceShared) -> &AtomicUsize,
    /// The count this guard made.
    count: usize,
}

impl Counted {
    fn new(shared: Arc<ServiceShared>, field: fn(&ServiceShared) -> &AtomicUsize) -> Counted {
        let count = field(&shared).fetch_add(1, Ordering::Relaxed) + 1;
        Counted {
            shared,
            field,
            count,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.field)(&self.shared).fetch_sub(1, Ordering::Relaxed);
    }
}

/// The services of one config, by name.
pub type Services = HashMap<String, Service>;

/// Why an upstream exchange produced no response; each caller maps it to what its own caller
/// sees (a status for a client, a `call-error` for a filter).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No response headers within the (try's) timeout.
    #[error("{0}")]
    Timeout(String),
    /// No connection within the connect timeout.
    #[error("{0}")]
    ConnectTimeout(String),
    /// The endpoint refused the connection.
    #[error("{0}")]
    Refused(String),
    /// No connection for another reason (unreachable, TLS handshake refused).
    #[error("{0}")]
    ConnectFailed(String),
    /// The connection broke before a response, or the response was malformed.
    #[error("{0}")]
    Unavailable(String),
    /// No endpoint takes traffic (all unhealthy or ejected).
    #[error("{0}")]
    NoEndpoint(String),
    /// The service is at one of its limits.
    #[error("{0}")]
    Overloaded(String),
    /// The streamed request body grew past its cap.
    #[error("{0}")]
    BodyTooLarge(String),
    /// The request could not be built (path and query).
    #[error("{0}")]
    Invalid(String),
    /// The client's streamed request body failed (malformed chunked framing, a reset).
    #[error("{0}")]
    ClientBody(String),
}

impl UpstreamError {
    /// The failure is one `on` names.
    pub fn is(&self, on: RetryOn) -> bool {
        match on {
            RetryOn::ConnectFailure => matches!(
                self,
                UpstreamError::ConnectTimeout(_)
                    | UpstreamError::Refused(_)
                    | UpstreamError::ConnectFailed(_)
            ),
            RetryOn::Refused => matches!(self, UpstreamError::Refused(_)),
            RetryOn::Reset => matches!(self, UpstreamError::Unavailable(_)),
            RetryOn::Timeout => matches!(
                self,
                UpstreamError::Timeout(_) | UpstreamError::ConnectTimeout(_)
            ),
            RetryOn::Status(_) => false,
        }
    }

    /// The `kind` label of `wasmgate_upstream_errors_total` for failures of the upstream.
    pub fn metric_kind(&self) -> Option<&'static str> {
        Some(match self {
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::ConnectTimeout(_) => "connect_timeout",
            UpstreamError::Refused(_) => "refused",
            UpstreamError::ConnectFailed(_) => "connect_failed",
            UpstreamError::Unavailable(_) => "reset",
            UpstreamError::NoEndpoint(_) => "no_endpoint",
            UpstreamError::Overloaded(_) => "overloaded",
            UpstreamError::BodyTooLarge(_)
            | UpstreamError::Invalid(_)
            | UpstreamError::ClientBody(_) => return None,
        })
    }

    /// Counts against the endpoint (outlier detection).
    fn outcome(&self) -> Outcome {
        match self {
            UpstreamError::Timeout(_)
            | UpstreamError::ConnectTimeout(_)
            | UpstreamError::Refused(_)
            | UpstreamError::ConnectFailed(_)
            | UpstreamError::Unavailable(_) => Outcome::Failure,
            _ => Outcome::Neither,
        }
    }
}

/// An error reading the client's request body while it streams upstream: marks the failure as
/// the client's, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// The request an upstream receives, before an instance is picked.
pub struct Outgoing {
    pub method: http::Method,
    /// Path and query, appended to the instance's base URL.
    pub path_and_query: String,
    /// Hop-by-hop headers and `Host` are dropped; the client sets `Host` to the instance's.
    pub headers: HeaderMap,
    pub body: Body,
    /// The protocol to upgrade the connection to (the client's `Upgrade` value, e.g.
    /// `websocket`); sent with `Connection: upgrade`.
    pub upgrade: Option<HeaderValue>,
}

/// The endpoints a request's earlier tries went to (the first 128 of a service; beyond them a
/// retry may land on one already tried). No allocation per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u128);

impl Tried {
    pub fn insert(&mut self, index: usize) {
        if index < 128 {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(&self, index: usize) -> bool {
        index < 128 && self.0 & (1 << index) != 0
    }
}

/// Which endpoint a try goes to: the request's consistent-hashing key, and the endpoints
/// earlier tries of the same request went to.
#[derive(Debug, Default, Clone)]
pub struct Pick {
    pub key: Option<u64>,
    pub tried: Tried,
    /// The endpoint the last try went to.
    pub endpoint: Option<Arc<str>>,
}

/// Send `req` to an endpoint of `service` and wait for its response headers, at most
/// `timeouts.request`; connections come from this thread's pool. The endpoint used is added
/// to `pick.tried`, and the outcome recorded for outlier detection.
/// The response's hop-by-hop headers are dropped; its body streams.
pub async fn send(
    service: &Service,
    req: Outgoing,
    timeouts: Timeouts,
    pick: &mut Pick,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let limits = service.shared.limits;
    let active = Counted::new(service.shared.clone(), |s| &s.active);
    if let Some(max) = limits.max_requests
        && active.count > max
    {
        return Err(UpstreamError::Overloaded(format!(
            "service {:?} has max_requests = {max} in flight",
            service.name
        )));
    }
    let table = service.table.load_full();
    let Some(index) = table.balancer.pick(
        &table.endpoints,
        pick.key,
        &pick.tried,
        service.all_unhealthy,
    ) else {
        return Err(UpstreamError::NoEndpoint(format!(
            "service {:?}: no endpoint is healthy",
            service.name
        )));
    };
    pick.tried.insert(index);
    let endpoint = &table.endpoints[index];
    pick.endpoint = Some(endpoint.label.clone());
    let state = endpoint.state.clone();
    state.active.fetch_add(1, Ordering::Relaxed);
    let result = send_to(service, endpoint, req, timeouts).await;
    state.active.fetch_sub(1, Ordering::Relaxed);
    let outcome = match &result {
        Ok(resp) if resp.status().is_server_error() => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(e) => e.outcome(),
    };
    endpoints::record(
        &service.name,
        &table.endpoints,
        index,
        outcome,
        service.outlier.as_ref(),
    );
    result
}

/// One exchange with one endpoint.
async fn send_to(
    service: &Service,
    endpoint: &Endpoint,
    req: Outgoing,
    timeouts: Timeouts,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let timeout = timeouts.request;
    let base = &endpoint.base;
    // Plain HTTP/1.1 to a known address, uncapped, no upgrade: the request path's own pool.
    let direct = endpoint.direct.filter(|_| {
        service.transport.protocol == Protocol::Http1
            && service.shared.connections.is_none()
            && req.upgrade.is_none()
    });
    let uri = match direct {
        Some(_) => origin(base, &req.path_and_query),
        None => join(base, &req.path_and_query),
    }
    .map_err(|e| UpstreamError::Invalid(format!("path {:?}: {e}", req.path_and_query)))?;
    let mut headers = req.headers;
    strip_hop_by_hop(&mut headers);
    match &endpoint.host {
        // What hyper's client would add to an HTTP/1 request without one, made once.
        Some(host) if service.transport.protocol == Protocol::Http1 => {
            headers.insert(header::HOST, host.clone());
        }
        _ => {
            headers.remove(header::HOST);
        }
    }
    if let Some(protocol) = req.upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    // Over HTTP/2 a failing request body resets the stream and the response fails with the
    // reset, not the body's error: the body reports it here.
    let client_failure = (service.transport.protocol != Protocol::Http1)
        .then(|| Arc::new(std::sync::OnceLock::new()));
    let body = match &client_failure {
        Some(failed) => Watched {
            inner: req.body,
            failed: failed.clone(),
        }
        .boxed_unsync(),
        None => req.body,
    };
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = req.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    let where_ = || format!("service {:?} ({base})", service.name);
    let timed_out =
        || UpstreamError::Timeout(format!("{} sent no response within {timeout:?}", where_()));
    let resp = if let Some(addr) = direct {
        let key = pool::Key {
            addr,
            idle: timeouts.upstream_idle,
        };
        match tokio::time::timeout(timeout, pool::send(key, timeouts.connect, outgoing)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(pool::Failure::Connect(e))) => return Err(classify(&e, true, &where_())),
            Ok(Err(pool::Failure::Exchange(e))) => return Err(classify(&*e, false, &where_())),
            Ok(Ok(resp)) => resp,
        }
    } else {
        let client = local_client(
            timeouts.connect,
            timeouts.upstream_idle,
            &service.transport,
            &service.shared,
            endpoint.address,
        );
        match tokio::time::timeout(timeout, client.request(outgoing)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => {
                if let Some(why) = client_failure.as_ref().and_then(|f| f.get()) {
                    return Err(UpstreamError::ClientBody(format!("{}: {why}", where_())));
                }
                return Err(classify(&e, e.is_connect(), &where_()));
            }
            Ok(Ok(resp)) => resp.map(ResponseBody::plain),
        }
    };
    // A 101 keeps `Connection` and `Upgrade`: the client needs them to switch too.
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The gateway frames its own answer to the client: an HTTP/1.0 upstream's response goes
    // out as HTTP/1.1 (chunked when it has no length), not as HTTP/1.0, which would close the
    // client's connection.
    parts.version = http::Version::HTTP_11;
    Ok(Response::from_parts(parts, body))
}

/// A request body that records the client's failure to send it ([`ClientBodyError`]).
struct Watched {
    inner: Body,
    failed: Arc<std::sync::OnceLock<String>>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled
            && find_source::<ClientBodyError>(&**e).is_some()
        {
            let _ = self.failed.set(causes(&**e));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Classify a failed exchange; `connecting` when no connection was made.
fn classify(e: &(dyn std::error::Error + 'static), connecting: bool, whom: &str) -> UpstreamError {
    if let Some(client) = find_source::<ClientBodyError>(e) {
        return UpstreamError::ClientBody(format!("{whom}: {client}"));
    }
    if find_source::<LengthLimitError>(e).is_some() {
        return UpstreamError::BodyTooLarge(format!(
            "{whom}: the streamed request body exceeded server.max_request_body_bytes"
        ));
    }
    if let Some(limit) = find_source::<ConnectionLimit>(e) {
        return UpstreamError::Overloaded(format!("{whom}: {limit}"));
    }
    if !connecting {
        return UpstreamError::Unavailable(format!("{whom}: {}", causes(e)));
    }
    // A connect failure is an io::Error: nested under a ConnectError from hyper-util's client,
    // given as is from the pool's (`pool::Failure::Connect`).
    match find_source::<std::io::Error>(e).map(std::io::Error::kind) {
        Some(std::io::ErrorKind::TimedOut) => {
            UpstreamError::ConnectTimeout(format!("{whom}: connect timed out: {}", causes(e)))
        }
        Some(std::io::ErrorKind::ConnectionRefused) => {
            UpstreamError::Refused(format!("{whom}: {}", causes(e)))
        }
        _ => UpstreamError::ConnectFailed(format!("{whom}: {}", causes(e))),
    }
}

/// An error and its sources, one line: `error: cause: cause`.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The first error of type `T` among `err` and its sources.
fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// Pools are keyed by connect and idle timeouts, transport settings, protocol, and the address
/// a resolved endpoint connects to.
type PoolKey = (Duration, Duration, u64, Protocol, Option<std::net::IpAddr>);

/// Pools kept per thread before the map is cleared (settings or addresses changed often).
const MAX_POOLS: usize = 1024;

thread_local! {
    /// This thread's pools: a request and the upstream connection it uses stay on one thread.
    static LOCAL: std::cell::RefCell<rustc_hash::FxHashMap<PoolKey, HttpClient>> =
        std::cell::RefCell::default();
}

/// The pooled client for `transport`: the calling thread's, or for a service with
/// `max_connections`, the service's own.
fn local_client(
    connect_timeout: Duration,
    idle: Duration,
    transport: &Transport,
    shared: &Arc<ServiceShared>,
    address: Option<std::net::IpAddr>,
) -> HttpClient {
    let key = (
        connect_timeout,
        idle,
        transport.key,
        transport.protocol,
        address,
    );
    if shared.connections.is_some() {
        let mut pools = shared.pools.lock().unwrap_or_else(|e| e.into_inner());
        return pools
            .entry(key)
            .or_insert_with(|| {
                client(
                    connect_timeout,
                    idle,
                    transport,
                    shared.connections.clone(),
                    address,
                )
            })
            .clone();
    }
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        if let Some(client) = local.get(&key) {
            return client.clone();
        }
        if local.len() >= MAX_POOLS {
            local.clear();
        }
        let fresh = client(connect_timeout, idle, transport, None, address);
        local.insert(key, fresh.clone());
        fresh
    })
}

/// Build a pooled client: HTTP/1.1 or HTTP/2 as the transport says, `https://` through rustls
/// with the transport's settings (SNI from the upstream's host).
fn client(
    connect_timeout: Duration,
    idle: Duration,
    transport: &Transport,
    cap: Option<Arc<ConnectionCap>>,
    address: Option<std::net::IpAddr>,
) -> HttpClient {
    let mut connector = HttpConnector::new_with_resolver(discovery::Pinned::new(address));
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*transport.tls).clone())
        .https_or_http();
    let https = match transport.protocol {
        Protocol::Http1 => https.enable_http1().wrap_connector(connector),
        Protocol::H2 | Protocol::H2c => https.enable_http2().wrap_connector(connector),
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle)
        .pool_max_idle_per_host(usize::MAX);
    if transport.protocol != Protocol::Http1 {
        builder.http2_only(true);
    }
    builder.build(Capped {
        inner: https,
        cap,
        wait: connect_timeout,
    })
}

/// The wait before retry number `attempt` (1 for the first): the backoff doubled per retry,
/// capped, and a random part of that (full jitter).
pub fn backoff(retry: &crate::config::Retry, attempt: u32) -> Duration {
    let doubled = retry
        .backoff
        .saturating_mul(1 << attempt.saturating_sub(1).min(16));
    balance::jitter(doubled.min(retry.max_backoff))
}

/// An empty body.
fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `base`'s path joined with `path_and_query`, origin-form (what HTTP/1.1 sends to a server).
fn origin(base: &http::Uri, path_and_query: &str) -> Result<http::Uri, http::Error> {
    let base_path = base.path().trim_end_matches('/');
    Ok(http::Uri::try_from([base_path, path_and_query].concat())?)
}

/// `base` joined with `path_and_query` (which starts with `/`).
fn join(base: &http::Uri, path_and_query: &str) -> Result<http::Uri, http::Error> {
    let mut parts = origin(base, path_and_query)?.into_parts();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    Ok(http::Uri::from_parts(parts)?)
}

/// Remove hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names instead of a lookup for each.
    if !headers
        .keys()
        .any(|name| *name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    // `TE: trailers` says the client accepts trailers; gRPC needs it end to end.
    let trailers = headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn join_keeps_the_base_path() {
        let base: http::Uri = "http://127.0.0.1:3000/api/".parse().unwrap();
        assert_eq!(
            join(&base, "/users?x=1").unwrap().to_string(),
            "http://127.0.0.1:3000/api/users?x=1"
        );
        let bare: http::Uri = "http://127.0.0.1:3000".parse().unwrap();
        assert_eq!(
            join(&bare, "/").unwrap().to_string(),
            "http://127.0.0.1:3000/"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
