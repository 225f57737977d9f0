//! The request path: route, run the request phases, call the upstream, run the response phases.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::capabilities::Outbound;
use crate::config::FailurePolicy;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::{ChainEntry, Gateway, Route, Snapshot};
use crate::router::{MatchInput, host_without_port, method_and_host_match};
use crate::runtime::bindings::{self, RequestAction, RouteContext};
use crate::runtime::{FilterError, FilterLease, Grants, LoadedFilter};
use crate::upstream::{self, Body, BoxError};

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
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A request body: still streaming from the client, or buffered (read or set by a filter).
enum ReqBody {
    /// `Sync` (unlike [`Body`]) because the handler holds it across awaits.
    Stream(BoxBody<Bytes, BoxError>),
    Buffered(Bytes),
}

/// Everything about one request that the handler carries between stages.
struct Exchange {
    request_id: String,
    client: SocketAddr,
    snapshot: Arc<Snapshot>,
}

impl Gateway {
    /// Serve one client request. Never fails: errors become small JSON responses.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<Body> {
        let started = Instant::now();
        let request_id = self.next_request_id();
        // Kept for the access log, when it is on.
        let logged = tracing::enabled!(target: "wasmgate::access", tracing::Level::INFO)
            .then(|| (req.method().clone(), req.uri().path().to_string()));
        let ex = Exchange {
            request_id,
            client,
            snapshot: self.snapshot(),
        };
        let mut resp = match self.route_request(req, &ex).await {
            Ok(resp) => resp,
            Err(err) => {
                if err.kind.status().is_server_error() {
                    tracing::warn!(request_id = %ex.request_id, kind = ?err.kind, detail = %err.detail, "request failed");
                } else {
                    tracing::debug!(request_id = %ex.request_id, kind = ?err.kind, detail = %err.detail, "request refused");
                }
                err.into_response(&ex.request_id).map(full)
            }
        };
        if let Ok(id) = HeaderValue::from_str(&ex.request_id) {
            resp.headers_mut().insert(X_REQUEST_ID, id);
        }
        if let Some((method, path)) = logged {
            tracing::info!(
                target: "wasmgate::access",
                request_id = %ex.request_id,
                client = %client,
                %method,
                path,
                status = resp.status().as_u16(),
                micros = started.elapsed().as_micros() as u64,
            );
        }
        resp
    }

    async fn route_request(
        &self,
        req: Request<Incoming>,
        ex: &Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = req.into_parts();
        check_framing(&parts.headers)?;
        let declared_length = content_length(&parts.headers);
        if let (Some(max), Some(len)) = (ex.snapshot.max_request_body, declared_length)
            && len > max
        {
            return Err(GatewayError::new(
                ErrorKind::BodyTooLarge,
                format!("content-length {len} exceeds server.max_request_body_bytes {max}"),
            ));
        }
        let authority = request_authority(&parts.uri, &parts.headers);
        let host = host_without_port(&authority);
        let path = parts.uri.path();
        let input = MatchInput {
            method: &parts.method,
            host: &host,
            path,
        };
        let (route, params) = ex
            .snapshot
            .routes
            .iter()
            .find_map(|r| {
                if !method_and_host_match(&r.config.methods, r.config.host.as_deref(), &input) {
                    return None;
                }
                r.config.path.matches(path).map(|params| (r, params))
            })
            .ok_or_else(|| {
                GatewayError::new(ErrorKind::NoRoute, format!("{} {path}", parts.method))
            })?;

        let upstream_path = upstream_path(route, &parts.uri, &params);
        strip_hop_by_hop(&mut parts.headers);

        let body_limit = route
            .body_limit(&ex.snapshot.limits)
            .min(ex.snapshot.max_request_body.unwrap_or(u64::MAX));
        let mut body = if route.needs_request_body {
            ReqBody::Buffered(read_limited(body, &parts.headers, body_limit).await?)
        } else {
            match ex.snapshot.max_request_body {
                // Streamed, but cut off past the cap: the upstream sees an aborted request.
                Some(max) => ReqBody::Stream(
                    Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
                        .map_err(BoxError::from)
                        .boxed(),
                ),
                None => ReqBody::Stream(body.map_err(BoxError::from).boxed()),
            }
        };

        let mut outgoing = Outgoing {
            method: parts.method,
            path_and_query: upstream_path,
            headers: parts.headers,
        };
        if route.chain.is_empty() {
            let resp = self.call_upstream(route, outgoing, body, ex).await?;
            return Ok(stream_back(resp));
        }
        let ctx = RouteContext {
            route: route.config.name.clone(),
            params,
            client_addr: ex.client.to_string(),
            request_id: ex.request_id.clone(),
        };

        // Request phases, in chain order.
        let mut ran: Vec<(FilterLease, FailurePolicy)> = Vec::with_capacity(route.chain.len());
        let mut early: Option<bindings::Response> = None;
        let mut wit_req = bindings::Request {
            method: outgoing.method.to_string(),
            scheme: "http".into(),
            authority: authority.clone(),
            path_with_query: std::mem::take(&mut outgoing.path_and_query),
            headers: to_wit_headers(&outgoing.headers),
            body: None,
        };
        for entry in &route.chain {
            let (filter, instances, needs, services, cache, limits, on_failure, breaker) =
                match entry {
                    ChainEntry::Ready {
                        filter,
                        instances,
                        needs,
                        services,
                        cache,
                        limits,
                        on_failure,
                        breaker,
                    } => (
                        filter,
                        instances,
                        needs,
                        services,
                        cache,
                        *limits,
                        *on_failure,
                        breaker,
                    ),
                    ChainEntry::Unavailable { name, reason } => {
                        return Err(GatewayError::new(
                            ErrorKind::FilterUnavailable,
                            format!(
                                "route {:?}: filter {name:?} is not loaded: {reason}",
                                route.config.name
                            ),
                        ));
                    }
                };
            let grants = Grants {
                cache: cache.clone(),
                outbound: (!services.is_empty()).then(|| {
                    Arc::new(Outbound {
                        snapshot: ex.snapshot.clone(),
                        granted: services.clone(),
                        timeout: route.config.timeout.unwrap_or(ex.snapshot.timeouts.request),
                        max_body: usize::try_from(body_limit).unwrap_or(usize::MAX),
                    })
                }),
                limits,
            };
            if !breaker.allow() {
                match on_failure {
                    FailurePolicy::FailClosed => {
                        return Err(GatewayError::new(
                            ErrorKind::FilterUnavailable,
                            format!(
                                "filter {:?} is failing repeatedly; not run (breaker open)",
                                filter.name
                            ),
                        ));
                    }
                    FailurePolicy::FailOpen => continue,
                }
            }
            if !needs.request_phase {
                // Its config does nothing here (`skip-phases`); its response phase may.
                if needs.response_phase {
                    ran.push((instances.lease(&ex.request_id, grants), on_failure));
                }
                continue;
            }
            let phase = async {
                let mut lease = instances.lease(&ex.request_id, grants);
                wit_req.body = match (&body, lease.needs().request_body()) {
                    (ReqBody::Buffered(b), true) => Some(b.to_vec()),
                    _ => None,
                };
                let action = lease.on_request(&ctx, &wit_req).await?;
                if let RequestAction::Continue(next) = &action {
                    check_wit_request(next)?;
                }
                Ok::<_, FilterError>((lease, action))
            };
            let outcome = phase.await;
            let tripped = breaker.report(matches!(
                outcome,
                Err(FilterError::Trap(_) | FilterError::Invalid(_))
            ));
            if tripped {
                tracing::error!(
                    filter = %filter.name,
                    version = %crate::registry::short(&filter.hash),
                    route = %route.config.name,
                    "filter keeps failing; not running it for {:?}",
                    crate::breaker::COOL_DOWN
                );
            }
            let (lease, action) = match outcome {
                Ok(done) => done,
                Err(e) => {
                    failure_log(filter, &ex.request_id, "request", on_failure, &e);
                    match on_failure {
                        FailurePolicy::FailClosed => {
                            return Err(filter_failed(&filter.name, e));
                        }
                        // As if the filter were absent: the request goes on unchanged.
                        FailurePolicy::FailOpen => continue,
                    }
                }
            };
            if needs.response_phase {
                ran.push((lease, on_failure));
            }
            match action {
                RequestAction::Continue(mut next) => {
                    if let Some(new_body) = next.body.take() {
                        body = ReqBody::Buffered(Bytes::from(new_body));
                    }
                    wit_req = next;
                }
                RequestAction::Respond(resp) => {
                    early = Some(resp);
                    break;
                }
            }
        }
        if early.is_none() {
            outgoing = Outgoing::from_wit(wit_req).map_err(|e| {
                GatewayError::new(
                    ErrorKind::Internal,
                    format!("checked filter output did not convert: {e}"),
                )
            })?;
        }

        let response = match early {
            Some(resp) => {
                let resp_body = resp.body.clone().map(Bytes::from).unwrap_or_default();
                ResponseState::Filter(resp, resp_body)
            }
            None => {
                let resp = self.call_upstream(route, outgoing, body, ex).await?;
                if ran.is_empty() {
                    return Ok(stream_back(resp));
                }
                ResponseState::Upstream(resp)
            }
        };
        self.response_phases(route, ran, response, &ctx, ex).await
    }

    async fn call_upstream(
        &self,
        route: &Route,
        outgoing: Outgoing,
        body: ReqBody,
        ex: &Exchange,
    ) -> Result<Response<Incoming>, GatewayError> {
        let service_name = route.config.service.as_deref().ok_or_else(|| {
            GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!(
                    "route {:?} has no service and no filter answered",
                    route.config.name
                ),
            )
        })?;
        let service = ex.snapshot.services.get(service_name).ok_or_else(|| {
            GatewayError::new(
                ErrorKind::Internal,
                format!("service {service_name:?} missing from snapshot"),
            )
        })?;
        let base = service.pick();
        let uri = upstream::join(base, &outgoing.path_and_query).map_err(|e| {
            GatewayError::new(ErrorKind::Internal, format!("building upstream URI: {e}"))
        })?;

        let mut headers = outgoing.headers;
        let original_host = headers.remove(header::HOST);
        let body = match body {
            ReqBody::Stream(body) => body.boxed_unsync(),
            ReqBody::Buffered(bytes) => {
                headers.remove(header::TRANSFER_ENCODING);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                full(bytes)
            }
        };
        append_forwarded(&mut headers, ex.client, original_host);
        if let Ok(id) = HeaderValue::from_str(&ex.request_id) {
            headers.insert(X_REQUEST_ID, id);
        }

        let mut req = Request::new(body);
        *req.method_mut() = outgoing.method;
        *req.uri_mut() = uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;

        let timeout = route.config.timeout.unwrap_or(ex.snapshot.timeouts.request);
        match tokio::time::timeout(
            timeout,
            upstream::local_client(ex.snapshot.timeouts.connect).request(req),
        )
        .await
        {
            Err(_) => Err(GatewayError::new(
                ErrorKind::UpstreamTimeout,
                format!("service {service_name:?} ({uri}) sent no response within {timeout:?}"),
            )),
            Ok(Err(e)) => {
                if find_source::<LengthLimitError>(&e).is_some() {
                    return Err(GatewayError::new(
                        ErrorKind::BodyTooLarge,
                        "streamed request body exceeded server.max_request_body_bytes",
                    ));
                }
                // hyper-util reports a connect timeout as an io::Error of kind TimedOut nested
                // under its ConnectError.
                let timed_out = find_source::<std::io::Error>(&e)
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                let kind = if e.is_connect() && timed_out {
                    ErrorKind::UpstreamTimeout
                } else {
                    ErrorKind::UpstreamUnavailable
                };
                Err(GatewayError::new(
                    kind,
                    format!("service {service_name:?} ({uri}): {e:?}"),
                ))
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    async fn response_phases(
        &self,
        route: &Route,
        mut ran: Vec<(FilterLease, FailurePolicy)>,
        response: ResponseState,
        ctx: &RouteContext,
        ex: &Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        // What the response phases see, and the body that goes back if none replaces it.
        let (mut wit_resp, mut body): (bindings::Response, RespBody) = match response {
            ResponseState::Filter(resp, bytes) => (resp, RespBody::Buffered(bytes)),
            ResponseState::Upstream(resp) => {
                let (mut parts, incoming) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = if route.needs_response_body {
                    let limit = route.body_limit(&ex.snapshot.limits);
                    let bytes =
                        Limited::new(incoming, usize::try_from(limit).unwrap_or(usize::MAX))
                            .collect()
                            .await
                            .map_err(|e| {
                                GatewayError::new(
                                    ErrorKind::UpstreamUnavailable,
                                    format!(
                                        "reading upstream response body (limit {limit} bytes): {e}"
                                    ),
                                )
                            })?
                            .to_bytes();
                    parts.headers.remove(header::CONTENT_LENGTH);
                    RespBody::Buffered(bytes)
                } else {
                    RespBody::Stream(incoming)
                };
                let wit = bindings::Response {
                    status: parts.status.as_u16(),
                    headers: to_wit_headers(&parts.headers),
                    body: None,
                };
                (wit, body)
            }
        };

        while let Some((mut lease, on_failure)) = ran.pop() {
            let filter = lease.filter().clone();
            wit_resp.body = match (&body, lease.needs().response_body()) {
                (RespBody::Buffered(b), true) => Some(b.to_vec()),
                _ => None,
            };
            let result = match lease.on_response(ctx, &wit_resp).await {
                Ok(next) => check_wit_response(&next).map(|()| next),
                Err(e) => Err(e),
            };
            match result {
                Ok(mut next) => {
                    if let Some(new_body) = next.body.take() {
                        body = RespBody::Buffered(Bytes::from(new_body));
                    }
                    wit_resp = next;
                }
                Err(e) => {
                    failure_log(&filter, &ex.request_id, "response", on_failure, &e);
                    match on_failure {
                        FailurePolicy::FailClosed => return Err(filter_failed(&filter.name, e)),
                        // The response goes on as the filter found it.
                        FailurePolicy::FailOpen => wit_resp.body = None,
                    }
                }
            }
        }

        let status = StatusCode::from_u16(wit_resp.status)
            .ok()
            .filter(|s| s.as_u16() >= 200)
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::FilterFailed,
                    format!("a filter returned status {}", wit_resp.status),
                )
            })?;
        let mut headers = from_wit_headers(wit_resp.headers)
            .map_err(|e| GatewayError::new(ErrorKind::FilterFailed, e))?;
        strip_hop_by_hop(&mut headers);
        let body = match body {
            RespBody::Stream(incoming) => incoming.map_err(BoxError::from).boxed_unsync(),
            RespBody::Buffered(bytes) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                full(bytes)
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

enum ResponseState {
    /// A filter answered early: its response and body.
    Filter(bindings::Response, Bytes),
    Upstream(Response<Incoming>),
}

enum RespBody {
    Stream(Incoming),
    Buffered(Bytes),
}

/// With no response phases to run, the upstream response goes straight back, streamed.
fn stream_back(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
}

/// The request as it will go upstream.
struct Outgoing {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
}

impl Outgoing {
    /// Convert a filter's request that already passed [`check_wit_request`].
    fn from_wit(req: bindings::Request) -> Result<Outgoing, FilterError> {
        Ok(Outgoing {
            method: Method::from_bytes(req.method.as_bytes())
                .map_err(|_| FilterError::Invalid(format!("method {:?}", req.method)))?,
            path_and_query: req.path_with_query,
            headers: from_wit_headers(req.headers).map_err(FilterError::Invalid)?,
        })
    }
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

/// A filter's request output the host can use: method, path, headers.
fn check_wit_request(req: &bindings::Request) -> Result<(), FilterError> {
    Method::from_bytes(req.method.as_bytes())
        .map_err(|_| FilterError::Invalid(format!("method {:?}", req.method)))?;
    if !req.path_with_query.starts_with('/')
        || req
            .path_with_query
            .parse::<http::uri::PathAndQuery>()
            .is_err()
    {
        return Err(FilterError::Invalid(format!(
            "path {:?}",
            req.path_with_query
        )));
    }
    check_wit_headers(&req.headers)
}

/// A filter's response output the host can use: a final status, valid headers.
fn check_wit_response(resp: &bindings::Response) -> Result<(), FilterError> {
    if !(200..=599).contains(&resp.status) {
        return Err(FilterError::Invalid(format!("status {}", resp.status)));
    }
    check_wit_headers(&resp.headers)
}

fn check_wit_headers(headers: &[(String, Vec<u8>)]) -> Result<(), FilterError> {
    for (name, value) in headers {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FilterError::Invalid(format!("invalid header name {name:?}")))?;
        if !valid_header_value(value) {
            return Err(FilterError::Invalid(format!(
                "invalid value for header {name}"
            )));
        }
    }
    Ok(())
}

/// `HeaderValue::from_bytes`'s rule (visible ASCII, obs-text, space and tab), without its copy.
fn valid_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t')
}

/// One log line per filter failure: filter, version, request id, phase, policy and reason.
fn failure_log(
    filter: &LoadedFilter,
    request_id: &str,
    phase: &str,
    policy: FailurePolicy,
    err: &FilterError,
) {
    tracing::warn!(
        filter = %filter.name,
        version = %crate::registry::short(&filter.hash),
        request_id,
        phase,
        policy = ?policy,
        "filter failed: {err}"
    );
}

fn filter_failed(name: &str, err: FilterError) -> GatewayError {
    let kind = ErrorKind::FilterFailed;
    GatewayError::new(kind, format!("filter {name:?}: {err}"))
}

fn full(bytes: Bytes) -> Body {
    if bytes.is_empty() {
        return Empty::new().map_err(|never| match never {}).boxed_unsync();
    }
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Refuse requests whose framing is ambiguous: both `content-length` and `transfer-encoding`,
/// or more than one `content-length`. Defence in depth: hyper's HTTP/1 parser already rejects
/// conflicting lengths and resolves the others before we see the headers (see
/// tests/e2e/hardening.rs); this guards any other path a request may come in by.
fn check_framing(headers: &HeaderMap) -> Result<(), GatewayError> {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "more than one content-length",
        ));
    }
    if lengths == 1 && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "both content-length and transfer-encoding",
        ));
    }
    Ok(())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Read a body up to `limit` bytes; 413 beyond, refusing early when `content-length` says so.
async fn read_limited(
    body: Incoming,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::new(
            ErrorKind::BodyTooLarge,
            format!(
                "content-length {} exceeds the limit of {limit} bytes",
                declared.unwrap_or_default()
            ),
        ));
    }
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(GatewayError::new(
            ErrorKind::BodyTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )),
        Err(e) => Err(GatewayError::new(
            ErrorKind::BadRequest,
            format!("reading request body: {e}"),
        )),
    }
}

/// The path and query the upstream receives, after prefix strip or rewrite.
fn upstream_path(route: &Route, uri: &Uri, params: &[(String, String)]) -> String {
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let new_path = if let Some(template) = &route.config.rewrite {
        template.render(params)
    } else if route.config.strip_prefix {
        let prefix = match &route.config.path {
            crate::router::PathMatch::Prefix(p) => p.as_str(),
            _ => "",
        };
        let rest = path.strip_prefix(prefix).unwrap_or(path);
        if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        }
    } else {
        path.to_string()
    };
    format!("{new_path}{query}")
}

/// The authority the client addressed: the URI's (HTTP/2, absolute-form) or the `Host` header.
fn request_authority(uri: &Uri, headers: &HeaderMap) -> String {
    uri.authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Remove hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names instead of a lookup for each.
    if !headers
        .keys()
        .any(|name| *name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
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
}

fn append_forwarded(
    headers: &mut HeaderMap,
    client: SocketAddr,
    original_host: Option<HeaderValue>,
) {
    let ip = client.ip().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match original_host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

pub(crate) fn to_wit_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

pub(crate) fn from_wit_headers(list: Vec<(String, Vec<u8>)>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_maybe_shared(Bytes::from(value))
            .map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        prop::collection::vec(
            ("\\PC{0,12}", prop::collection::vec(any::<u8>(), 0..24)),
            0..8,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a filter returns, checking it never panics, and what passes the check
        /// always converts into the request sent upstream.
        #[test]
        fn filter_requests_are_checked_consistently(
            method in "\\PC{0,8}",
            path in "\\PC{0,24}",
            headers in header_strategy(),
        ) {
            let req = bindings::Request {
                method,
                scheme: "http".into(),
                authority: String::new(),
                path_with_query: path,
                headers,
                body: None,
            };
            if check_wit_request(&req).is_ok() {
                let path = req.path_with_query.clone();
                let out = Outgoing::from_wit(req);
                prop_assert!(out.is_ok());
                prop_assert!(path.parse::<http::uri::PathAndQuery>().is_ok());
            }
        }

        /// The host's copy-free header value check is `http`'s own rule.
        #[test]
        fn header_values_are_checked_by_http_rules(value in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..32),
            prop::collection::vec(prop_oneof![Just(b'\t'), 32u8..=255], 0..32),
        ]) {
            prop_assert_eq!(valid_header_value(&value), HeaderValue::from_bytes(&value).is_ok());
        }

        /// Likewise for responses: a checked response has a final status and valid headers.
        #[test]
        fn filter_responses_are_checked_consistently(status in any::<u16>(), headers in header_strategy()) {
            let resp = bindings::Response { status, headers: headers.clone(), body: None };
            if check_wit_response(&resp).is_ok() {
                prop_assert!(StatusCode::from_u16(status).is_ok() && status >= 200);
                prop_assert!(from_wit_headers(headers).is_ok());
            }
        }
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

    #[test]
    fn forwarded_for_appends_to_an_existing_chain() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        append_forwarded(
            &mut h,
            "127.0.0.1:5000".parse().unwrap(),
            Some(HeaderValue::from_static("api.test")),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_HOST], "api.test");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }
}
