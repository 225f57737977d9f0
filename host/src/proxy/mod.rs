//! The request pipeline, one step per function: accept-side checks, route lookup, rewrite, body
//! policy, the filter chain, the upstream hand-off, the response phases, error mapping.
//!
//! Per-request state is one owned context ([`Ctx`]) lent by `&mut` to each step.
//!
//! - [`accept`]: framing and size checks, the request body policy.
//! - [`adapters`]: what the request's protocol asks (gRPC-Web, WebSocket, compression), chosen
//!   once when its route is known.
//! - [`chain`]: the chain runner (both phases, breaker, failure policy).
//! - [`forward`]: the upstream hand-off of a proxied request.
//! - [`service_calls`]: filters' calls to services, over the same upstream client.
//! - [`wit`]: HTTP to the WIT records filters see, and their output checked.
//! - [`error`]: the request-path error and its client-facing body.

mod accept;
mod adapters;
mod chain;
mod compress;
mod error;
mod forward;
mod grpc;
mod grpc_web;
mod service_calls;
mod transcode;
mod websocket;
mod wit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};

use self::accept::ClientBody;
pub use self::accept::Inbound;
use self::adapters::Adapters;
use self::chain::{Answer, Chain, Proceed};
use self::error::{ErrorKind, GatewayError};
use self::forward::X_REQUEST_ID;
use self::wit::CheckedRequest;
use crate::access_log::{AccessLog, Entry, Outcome, Pending};
use crate::metrics::{Metrics, Name};
use crate::otel::Tracing;
use crate::route::{self, MatchInput, Params};
use crate::snapshot::{Current, Route, Snapshot};
use crate::upstream::Body;
use wasmgate_sandbox::LogFields;

/// Serves client requests against the current snapshot.
pub struct Proxy {
    snapshots: Arc<Current>,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    tracing: Option<Arc<Tracing>>,
    id_prefix: u32,
    id_counter: AtomicU64,
}

/// One request's state: owned by [`Proxy::handle`] and lent by `&mut` to each step of the
/// pipeline (route, request phases, forward, response phases), which record what they did in
/// it for the metrics and the access log.
struct Ctx<'s> {
    request_id: Arc<str>,
    client: SocketAddr,
    /// The client came over TLS.
    tls: bool,
    /// The snapshot the request started with, kept for its whole life.
    snapshot: &'s Snapshot,
    metrics: &'s Arc<Metrics>,
    /// The access log is on: timings, the endpoint, body bytes and filters' fields are kept.
    logging: bool,
    /// The request's span, when tracing is on.
    trace: Option<Trace>,
    /// The route that matched, once one did.
    route: Option<RouteSeen>,
    /// Time in upstream tries and in filter calls (kept when logged).
    upstream_time: Duration,
    filters_time: Duration,
    /// The endpoint of the last upstream try (kept when logged).
    endpoint: Option<Arc<str>>,
    /// Request body bytes read, when logged and the request has a body; shared with the body.
    bytes_in: Option<Arc<AtomicU64>>,
    /// Fields filters added to the access log record.
    log_fields: LogFields,
}

/// A span of the request's trace and the tracer to make its children with.
#[derive(Clone)]
struct Trace {
    tracing: Arc<Tracing>,
    cx: opentelemetry::Context,
}

impl Trace {
    /// A child span.
    fn child(
        &self,
        name: String,
        kind: opentelemetry::trace::SpanKind,
        attributes: Vec<opentelemetry::KeyValue>,
    ) -> Trace {
        Trace {
            tracing: self.tracing.clone(),
            cx: self.tracing.child(&self.cx, name, kind, attributes),
        }
    }

    /// Send this span's context on in `headers` (`traceparent`, `tracestate`).
    fn inject(&self, headers: &mut http::HeaderMap) {
        self.tracing.inject(&self.cx, headers);
    }

    /// End the span, with an error status when `error` says what went wrong.
    fn end(&self, error: Option<String>, attributes: Vec<opentelemetry::KeyValue>) {
        crate::otel::end(&self.cx, error, attributes);
    }
}

/// Where a filter's service calls find the span of the phase making them (set around each
/// phase call), when tracing is on.
type PhaseSpan = Arc<std::sync::Mutex<Option<Trace>>>;

impl Ctx<'_> {
    /// Keep the access log fields a filter added.
    fn add_log_fields(&mut self, fields: LogFields) {
        if !fields.is_empty() {
            self.log_fields.extend(fields);
        }
    }

    /// The counter of request body bytes, when the request is logged and has a body.
    fn body_counter(&mut self, body: &Inbound) -> Option<Arc<AtomicU64>> {
        (self.logging && !http_body::Body::is_end_stream(body))
            .then(|| self.bytes_in.get_or_insert_with(Arc::default).clone())
    }
}

/// The route a request matched, as metrics and the access log need it.
struct RouteSeen {
    label: Name,
    /// The route's `access_log` switch.
    logged: bool,
}

/// A response body that finishes the request's access log line once it is sent (or given
/// up), with the bytes that went out.
struct LoggedBody {
    inner: Body,
    bytes: u64,
    entry: Entry,
    log: Arc<Pending>,
    started: Instant,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.log
            .finish(&self.entry, self.bytes, self.started.elapsed());
    }
}

impl Proxy {
    pub fn new(
        snapshots: Arc<Current>,
        metrics: Arc<Metrics>,
        access_log: Option<Arc<AccessLog>>,
        tracing: Option<Arc<Tracing>>,
    ) -> Proxy {
        Proxy {
            snapshots,
            metrics,
            access_log,
            tracing,
            id_prefix: random_u32(),
            id_counter: AtomicU64::new(0),
        }
    }

    /// Serve one client request. Never fails: errors become small JSON responses.
    pub async fn handle(
        &self,
        req: Request<Inbound>,
        client: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        let started = Instant::now();
        let request_id = self.next_request_id();
        let mut entry = self
            .access_log
            .as_ref()
            .map(|log| log.begin(&req, &request_id, client));
        let grpc = grpc::flavour(req.headers());
        let method = req.method().clone();
        let head = method == http::Method::HEAD;
        let trace = self.tracing.as_ref().map(|tracing| Trace {
            cx: tracing.request(&method, req.uri().path(), req.headers()),
            tracing: tracing.clone(),
        });
        let snapshot = self.snapshots.load_full();
        let mut cx = Ctx {
            request_id,
            client,
            tls,
            snapshot: &snapshot,
            metrics: &self.metrics,
            logging: entry.is_some(),
            trace,
            route: None,
            upstream_time: Duration::ZERO,
            filters_time: Duration::ZERO,
            endpoint: None,
            bytes_in: None,
            log_fields: LogFields::default(),
        };
        let outcome = match snapshot.https_redirect {
            Some(port) if !tls => redirect_to_https(&req, port),
            _ => serve(req, &mut cx).await,
        };
        let mut resp = match (outcome, grpc) {
            (Ok(resp), None) => resp,
            (Ok(resp), Some(flavour)) => grpc::translate(resp, flavour),
            (Err(err), grpc) => error_response(err, &cx, grpc),
        };
        if let Ok(id) = HeaderValue::from_str(&cx.request_id) {
            resp.headers_mut().insert(X_REQUEST_ID, id);
        }
        if head {
            // An answer to HEAD has no body, whoever made it (an error, a filter). HTTP/1 drops
            // one; over HTTP/2 it would be a protocol error for the client.
            let length = http_body::Body::size_hint(resp.body()).exact();
            if let Some(length) =
                length.filter(|_| !resp.headers().contains_key(http::header::CONTENT_LENGTH))
            {
                resp.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            resp = resp.map(|_| full(Bytes::new()));
        }
        let seen = cx.route.as_ref();
        if let Some(trace) = &cx.trace {
            end_request_span(trace, &method, seen.map(|r| &*r.label.0), resp.status());
        }
        self.metrics.request(
            seen.map(|r| &r.label),
            &method,
            resp.status().as_u16(),
            started.elapsed(),
        );
        if let (Some(log), Some(mut entry)) = (&self.access_log, entry.take())
            && seen.is_none_or(|r| r.logged)
        {
            entry.respond(&Outcome {
                route: seen.map(|r| &*r.label.0),
                status: resp.status().as_u16(),
                bytes_in: cx
                    .bytes_in
                    .as_ref()
                    .map_or(0, |b| b.load(Ordering::Relaxed)),
                upstream: cx.upstream_time,
                filters: cx.filters_time,
                endpoint: cx.endpoint.as_deref(),
                fields: &cx.log_fields.take(),
            });
            let log = log.pending();
            resp = resp.map(|inner| {
                LoggedBody {
                    inner,
                    bytes: 0,
                    entry,
                    log,
                    started,
                }
                .boxed_unsync()
            });
        }
        resp
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn next_request_id(&self) -> Arc<str> {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        crate::text::request_id(self.id_prefix, n).into()
    }
}

/// End the request's span: named by method and route, a server error marks it failed.
fn end_request_span(
    trace: &Trace,
    method: &http::Method,
    route: Option<&str>,
    status: http::StatusCode,
) {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::TraceContextExt;
    let span = trace.cx.span();
    if let Some(route) = route {
        span.update_name(format!("{method} {route}"));
    }
    let mut attributes = vec![KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    )];
    if let Some(route) = route {
        attributes.push(KeyValue::new("http.route", route.to_string()));
    }
    let error = status
        .is_server_error()
        .then(|| status.as_u16().to_string());
    trace.end(error, attributes);
}

/// The pipeline, top to bottom.
async fn serve(req: Request<Inbound>, cx: &mut Ctx<'_>) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    let snapshot = cx.snapshot;
    accept::check_request(&parts.uri, &parts.headers, snapshot)?;
    websocket::from_extended_connect(&mut parts);
    let authority = route::request_authority(&parts.uri, &parts.headers);
    let (route, params) = find_route(snapshot, &parts, &authority)?;
    cx.route = Some(RouteSeen {
        label: route.label.clone(),
        logged: route.config.access_log,
    });
    let mut adapters = Adapters::choose(route, &mut parts);
    let counted = cx.body_counter(&body);
    let body = adapters.request_body(body, counted);
    let resp = respond(route, params, parts, body, authority, &mut adapters, cx).await?;
    Ok(adapters.response(resp, cx))
}

/// The route's answer: through its filters and its upstream. A WebSocket handshake the
/// upstream accepts (101) becomes a relay between the two connections; its response phases
/// are not run.
async fn respond(
    route: &Route,
    params: Params,
    parts: Parts,
    body: ClientBody,
    authority: String,
    adapters: &mut Adapters,
    cx: &mut Ctx<'_>,
) -> Result<Response<Body>, GatewayError> {
    let upgrade = adapters.upgrade();
    // A JSON client on a transcoding route; gRPC clients on it pass through as they are.
    let transcoder = route
        .config
        .transcode
        .as_deref()
        .filter(|_| grpc::flavour(&parts.headers).is_none());
    let path_and_query = route::upstream_path(&route.config, &parts.uri, &params);
    let body = accept::request_body(body, &parts.headers, route, cx.snapshot).await?;
    let request = CheckedRequest {
        method: parts.method,
        path_and_query,
        headers: parts.headers,
    };
    if route.chain.is_empty() {
        if let Some(transcoder) = transcoder {
            let answer = transcode::call(transcoder, route, request, body, cx).await?;
            return chain::held_response(answer);
        }
        let resp = forward::to_upstream(route, request, body, cx, upgrade).await?;
        return Ok(adapters.pass_back(resp, cx));
    }

    let mut chain = Chain::new(route, cx, params);
    let (request, body) = match chain.request_phases(cx, request, authority, body).await? {
        Proceed::Upstream(request, body) => (request, body),
        Proceed::Respond(resp) => return chain.response_phases(cx, Answer::Filter(resp)).await,
    };
    if let Some(transcoder) = transcoder {
        let answer = transcode::call(transcoder, route, request, body, cx).await?;
        return chain.response_phases(cx, Answer::Filter(answer)).await;
    }
    let resp = forward::to_upstream(route, request, body, cx, upgrade).await?;
    if !chain.has_response_phases() || adapters.switched(&resp) {
        return Ok(adapters.pass_back(resp, cx));
    }
    chain.response_phases(cx, Answer::Upstream(resp)).await
}

/// `308` to the same host and path over HTTPS on `port`.
fn redirect_to_https(req: &Request<Inbound>, port: u16) -> Result<Response<Body>, GatewayError> {
    let authority = route::request_authority(req.uri(), req.headers());
    let host = route::host_without_port(&authority);
    if host.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "no host to redirect to",
        ));
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    let location = HeaderValue::from_str(&location)
        .map_err(|_| GatewayError::new(ErrorKind::BadRequest, "unusable host for a redirect"))?;
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(http::header::LOCATION, location);
    Ok(resp)
}

/// The first route that matches, and its captures; 404 when none does.
fn find_route<'s>(
    snapshot: &'s Snapshot,
    parts: &Parts,
    authority: &str,
) -> Result<(&'s Route, Params), GatewayError> {
    let host = route::host_without_port(authority);
    let input = MatchInput {
        method: &parts.method,
        host: &host,
        path: parts.uri.path(),
    };
    snapshot
        .routes
        .iter()
        .find_map(|r| route::matches(&r.config, &input).map(|params| (r, params)))
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NoRoute,
                format!("{} {}", parts.method, parts.uri.path()),
            )
        })
}

/// The client's answer for a failed request (a gRPC status for a gRPC call); the log gets the
/// detail.
fn error_response(err: GatewayError, cx: &Ctx<'_>, grpc: Option<grpc::Flavour>) -> Response<Body> {
    if err.kind.status().is_server_error() {
        tracing::warn!(request_id = %cx.request_id, kind = ?err.kind, detail = %err.detail, "request failed");
    } else {
        tracing::debug!(request_id = %cx.request_id, kind = ?err.kind, detail = %err.detail, "request refused");
    }
    match grpc {
        Some(flavour) => grpc::error(&err, flavour),
        None => err.into_response(&cx.request_id).map(full),
    }
}

fn full(bytes: Bytes) -> Body {
    if bytes.is_empty() {
        return Empty::new().map_err(|never| match never {}).boxed_unsync();
    }
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
