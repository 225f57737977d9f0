//! The upstream hand-off for a proxied request: forwarding headers, body framing, the route's
//! service and timeout; the send itself is the one upstream client's.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::Ctx;
use super::accept::ReqBody;
use super::error::{ErrorKind, GatewayError};
use super::wit::CheckedRequest;
use crate::config::RetryOn;
use crate::config::Timeouts;
use crate::metrics::{ServiceLabels, UpstreamErrorLabels};
use crate::snapshot::{Route, Snapshot};
use crate::upstream::{self, Body, BoxError, Outgoing, Pick, ResponseBody};

pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Send the request to the route's service; the response's body streams.
pub(super) async fn to_upstream(
    route: &Route,
    req: CheckedRequest,
    body: ReqBody,
    cx: &mut Ctx<'_>,
    upgrade: Option<HeaderValue>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let service_name = route.config.service.as_deref().ok_or_else(|| {
        GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!(
                "route {:?} has no service and no filter answered",
                route.config.name
            ),
        )
    })?;
    let snapshot = cx.snapshot;
    let service = snapshot.services.get(service_name).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("service {service_name:?} missing from snapshot"),
        )
    })?;
    let mut timeouts = route_timeouts(route, snapshot);
    if let Some(deadline) =
        super::grpc::flavour(&req.headers).and(super::grpc::timeout(&req.headers))
    {
        timeouts.request = timeouts.request.min(deadline);
    }
    let mut headers = req.headers;
    let original_host = headers.remove(header::HOST);
    append_forwarded(&mut headers, cx.client, original_host, cx.tls);
    if let Ok(id) = HeaderValue::from_str(&cx.request_id) {
        headers.insert(X_REQUEST_ID, id);
    }
    let path = req.path_and_query.split('?').next().unwrap_or("");
    let mut pick = Pick {
        key: service.hash_key(&headers, cx.client, path),
        tried: Default::default(),
        endpoint: None,
    };
    let retry = route.config.retry.as_ref().filter(|_| upgrade.is_none());
    // Buffered bodies, and requests without one whose method is idempotent, can be sent again.
    let replay = match (&body, retry) {
        (ReqBody::Buffered(bytes), Some(retry)) => Some((retry, Some(bytes.clone()))),
        (ReqBody::Stream(stream), Some(retry))
            if stream.is_end_stream() && upstream::wire::idempotent(&req.method) =>
        {
            Some((retry, None))
        }
        _ => None,
    };
    let Some((retry, bytes)) = replay else {
        let body = match body {
            ReqBody::Stream(body) => body.boxed_unsync(),
            ReqBody::Buffered(bytes) => buffered(&mut headers, bytes),
        };
        let outgoing = Outgoing {
            method: req.method,
            path_and_query: req.path_and_query,
            headers,
            body,
            upgrade,
        };
        return Ok(timed_send(service, outgoing, timeouts, &mut pick, cx).await?);
    };

    let _requesting = service.requesting();
    let try_timeouts = Timeouts {
        request: retry
            .per_try_timeout
            .map_or(timeouts.request, |t| t.min(timeouts.request)),
        ..timeouts
    };
    let mut retrying = None;
    for attempt in 1.. {
        let mut headers = headers.clone();
        let body = match &bytes {
            Some(bytes) => buffered(&mut headers, bytes.clone()),
            None => super::full(Bytes::new()),
        };
        let outgoing = Outgoing {
            method: req.method.clone(),
            path_and_query: req.path_and_query.clone(),
            headers,
            body,
            upgrade: None,
        };
        let result = timed_send(service, outgoing, try_timeouts, &mut pick, cx).await;
        drop(retrying.take());
        let failed = match &result {
            Ok(resp) => retry.on.contains(&RetryOn::Status(resp.status().as_u16())),
            Err(e) => retry.on.iter().any(|on| e.is(*on)),
        };
        if !failed || attempt >= retry.attempts {
            return Ok(result?);
        }
        // The retry holds its place in the budget through its backoff and its try.
        retrying = service.try_retry(retry.budget_percent);
        if retrying.is_none() {
            tracing::debug!(request_id = %cx.request_id, service = %service.name, "retry budget spent: not retrying");
            return Ok(result?);
        }
        let why = match &result {
            Ok(resp) => format!("status {}", resp.status()),
            Err(e) => e.to_string(),
        };
        tracing::debug!(request_id = %cx.request_id, service = %service.name, attempt, %why, "retrying");
        cx.metrics
            .upstream_retries
            .get_or_create(&ServiceLabels {
                service: service.label.clone(),
            })
            .inc();
        // Drop the failed answer (and its connection) before waiting.
        drop(result);
        tokio::time::sleep(upstream::backoff(retry, attempt)).await;
    }
    unreachable!("the loop returns by its last attempt")
}

/// One try, its time or its failure counted in the metrics.
async fn timed_send(
    service: &upstream::Service,
    mut outgoing: Outgoing,
    timeouts: Timeouts,
    pick: &mut Pick,
    cx: &mut Ctx<'_>,
) -> Result<Response<ResponseBody>, upstream::UpstreamError> {
    use opentelemetry::KeyValue;
    let span = cx.trace.as_ref().map(|trace| {
        let span = trace.child(
            format!("{} {}", outgoing.method, service.name),
            opentelemetry::trace::SpanKind::Client,
            vec![
                KeyValue::new("http.request.method", outgoing.method.to_string()),
                KeyValue::new("wasmgate.service", service.name.clone()),
            ],
        );
        span.inject(&mut outgoing.headers);
        span
    });
    let started = std::time::Instant::now();
    let result = upstream::send(service, outgoing, timeouts, pick).await;
    if let Some(span) = span {
        let mut attributes = Vec::with_capacity(2);
        if let Some(endpoint) = &pick.endpoint {
            attributes.push(KeyValue::new("url.full", endpoint.to_string()));
        }
        let error = match &result {
            Ok(resp) => {
                let status = resp.status();
                attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                status
                    .is_server_error()
                    .then(|| status.as_u16().to_string())
            }
            Err(e) => Some(e.to_string()),
        };
        span.end(error, attributes);
    }
    let took = started.elapsed();
    if cx.logging {
        cx.upstream_time += took;
        if let Some(endpoint) = pick.endpoint.take() {
            cx.endpoint = Some(endpoint);
        }
    }
    let metrics = cx.metrics;
    match &result {
        Ok(_) => metrics.upstream_try(&service.label, took),
        Err(e) => {
            if let Some(kind) = e.metric_kind() {
                metrics
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        service: service.label.clone(),
                        kind,
                    })
                    .inc();
            }
        }
    }
    result
}

/// A buffered body, with the headers that frame it.
fn buffered(headers: &mut HeaderMap, bytes: Bytes) -> Body {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    super::full(bytes)
}

/// The upstream timeouts for `route`: its own request timeout, else the gateway's.
pub(super) fn route_timeouts(route: &Route, snapshot: &Snapshot) -> Timeouts {
    let timeouts = snapshot.timeouts;
    Timeouts {
        request: route.config.timeout.unwrap_or(timeouts.request),
        ..timeouts
    }
}

/// An upstream response going back as it came, streamed.
pub(super) fn stream_back(resp: Response<ResponseBody>) -> Response<Body> {
    resp.map(|body| body.map_err(BoxError::from).boxed_unsync())
}

fn append_forwarded(
    headers: &mut HeaderMap,
    client: SocketAddr,
    original_host: Option<HeaderValue>,
    tls: bool,
) {
    let ip = crate::text::AddrText::ip(client.ip());
    let ip = ip.as_str();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_str(&[prior, ", ", ip].concat()),
        None => HeaderValue::from_str(ip),
    };
    if let Ok(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match original_host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_to_an_existing_chain() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        append_forwarded(
            &mut h,
            "127.0.0.1:5000".parse().unwrap(),
            Some(HeaderValue::from_static("api.test")),
            false,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_HOST], "api.test");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }
}
