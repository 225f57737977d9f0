//! Upstream services and the one client every upstream request goes through: requests the
//! proxy forwards and service calls filters make. An instance is picked round-robin, the URI
//! joined, hop-by-hop headers dropped both ways, the response awaited under a timeout, and a
//! failure classified once ([`UpstreamError`]). Each serving thread has its own pooled
//! keep-alive clients, one per transport (protocol and TLS settings, [`Transport`]), shared by
//! every route and across config reloads.

mod transport;

pub use self::transport::{Protocol, TlsFiles, Transport};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, LengthLimitError};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{ServiceConfig, Timeouts};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used on both sides of the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Idle upstream connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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

/// A named service and its instances.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    upstreams: Vec<http::Uri>,
    transport: Transport,
    next: AtomicUsize,
}

impl Service {
    pub fn new(cfg: &ServiceConfig) -> Self {
        if cfg.transport.insecure {
            tracing::warn!(
                service = %cfg.name,
                "tls_verify = false: the certificates of this service's upstreams are not verified"
            );
        }
        Self {
            name: cfg.name.clone(),
            upstreams: cfg.upstreams.clone(),
            transport: cfg.transport.clone(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next instance, round-robin.
    fn pick(&self) -> &http::Uri {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.upstreams[i % self.upstreams.len()]
    }
}

/// The services of one config, by name.
pub type Services = HashMap<String, Service>;

/// Why an upstream exchange produced no response; each caller maps it to what its own caller
/// sees (a status for a client, a `call-error` for a filter).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection within the connect timeout, or no response headers within the request
    /// timeout.
    #[error("{0}")]
    Timeout(String),
    /// Connection refused or broken, or a malformed response.
    #[error("{0}")]
    Unavailable(String),
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

/// Send `req` to an instance of `service` and wait for its response headers, at most
/// `timeouts.request`; connections come from this thread's pool.
/// The response's hop-by-hop headers are dropped; its body streams.
pub async fn send(
    service: &Service,
    req: Outgoing,
    timeouts: Timeouts,
) -> Result<Response<Incoming>, UpstreamError> {
    let timeout = timeouts.request;
    let base = service.pick();
    let uri = join(base, &req.path_and_query)
        .map_err(|e| UpstreamError::Invalid(format!("path {:?}: {e}", req.path_and_query)))?;
    let mut headers = req.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
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
    let client = local_client(timeouts.connect, &service.transport);
    let resp = match tokio::time::timeout(timeout, client.request(outgoing)).await {
        Err(_) => {
            return Err(UpstreamError::Timeout(format!(
                "{} sent no response within {timeout:?}",
                where_()
            )));
        }
        Ok(Err(e)) => {
            if let Some(why) = client_failure.as_ref().and_then(|f| f.get()) {
                return Err(UpstreamError::ClientBody(format!("{}: {why}", where_())));
            }
            return Err(classify(e, &where_()));
        }
        Ok(Ok(resp)) => resp,
    };
    // A 101 keeps `Connection` and `Upgrade`: the client needs them to switch too.
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
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
            && (e.is::<ClientBodyError>() || find_source::<ClientBodyError>(&**e).is_some())
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

/// Classify a client error.
fn classify(e: hyper_util::client::legacy::Error, whom: &str) -> UpstreamError {
    if let Some(client) = find_source::<ClientBodyError>(&e) {
        return UpstreamError::ClientBody(format!("{whom}: {client}"));
    }
    if find_source::<LengthLimitError>(&e).is_some() {
        return UpstreamError::BodyTooLarge(format!(
            "{whom}: the streamed request body exceeded server.max_request_body_bytes"
        ));
    }
    // hyper-util reports a connect timeout as an io::Error of kind TimedOut nested under its
    // ConnectError.
    let timed_out = find_source::<std::io::Error>(&e)
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
    if e.is_connect() && timed_out {
        UpstreamError::Timeout(format!("{whom}: connect timed out: {}", causes(&e)))
    } else {
        UpstreamError::Unavailable(format!("{whom}: {}", causes(&e)))
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

/// The first error of type `T` among `err`'s sources.
fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// A thread's pools are keyed by connect timeout, transport settings and protocol.
type PoolKey = (Duration, u64, Protocol);

/// Pools kept per thread before the map is cleared (settings changed by many reloads).
const MAX_POOLS: usize = 64;

thread_local! {
    /// This thread's pools: a request and the upstream connection it uses stay on one thread.
    static LOCAL: std::cell::RefCell<HashMap<PoolKey, HttpClient>> =
        std::cell::RefCell::new(HashMap::new());
}

/// The calling thread's pooled client for `transport`.
fn local_client(connect_timeout: Duration, transport: &Transport) -> HttpClient {
    let key = (connect_timeout, transport.key, transport.protocol);
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        if let Some(client) = local.get(&key) {
            return client.clone();
        }
        if local.len() >= MAX_POOLS {
            local.clear();
        }
        let fresh = client(connect_timeout, transport);
        local.insert(key, fresh.clone());
        fresh
    })
}

/// Build a pooled client: HTTP/1.1 or HTTP/2 as the transport says, `https://` through rustls
/// with the transport's settings (SNI from the upstream's host).
fn client(connect_timeout: Duration, transport: &Transport) -> HttpClient {
    let mut connector = HttpConnector::new();
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
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(usize::MAX);
    if transport.protocol != Protocol::Http1 {
        builder.http2_only(true);
    }
    builder.build(https)
}

/// `base` joined with `path_and_query` (which starts with `/`).
fn join(base: &http::Uri, path_and_query: &str) -> Result<http::Uri, http::Error> {
    let base_path = base.path().trim_end_matches('/');
    let mut builder = http::Uri::builder();
    if let Some(scheme) = base.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = base.authority() {
        builder = builder.authority(authority.clone());
    }
    builder
        .path_and_query(format!("{base_path}{path_and_query}"))
        .build()
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
