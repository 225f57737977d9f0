//! Service calls from filters (the WIT `outbound` import), carried by the one upstream client.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Limited};
use wasmgate_sandbox::wit::{CallError, OutboundRequest, OutboundResponse};
use wasmgate_sandbox::{Outbound, OutboundFuture};

use super::wit::{from_wit_headers, to_wit_headers};
use crate::config::Timeouts;
use crate::upstream::{self, BoxError, Outgoing, Services, UpstreamError};

/// What one filter may call on one request: the services its route grants it.
pub(super) struct ServiceCalls {
    pub services: Arc<Services>,
    pub granted: Arc<[String]>,
    /// `request` bounds every call's timeout (the route's request timeout).
    pub timeouts: Timeouts,
    /// Largest response body a call may return.
    pub max_body: usize,
    /// The span of the filter phase making the calls, when tracing is on.
    pub span: Option<super::PhaseSpan>,
}

impl Outbound for ServiceCalls {
    fn granted(&self, service: &str) -> bool {
        self.granted.iter().any(|g| g == service)
    }

    fn call(&self, req: OutboundRequest) -> OutboundFuture<'_> {
        Box::pin(self.send(req))
    }
}

impl ServiceCalls {
    async fn send(&self, req: OutboundRequest) -> Result<OutboundResponse, CallError> {
        let service = self
            .services
            .get(&req.service)
            // Config validation grants only known services; an unknown one is still a denial.
            .ok_or_else(|| CallError::Denied(format!("no service {:?}", req.service)))?;
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| CallError::Invalid(format!("method {:?}", req.method)))?;
        if !req.path_with_query.starts_with('/') {
            return Err(CallError::Invalid(format!(
                "path {:?} must start with '/'",
                req.path_with_query
            )));
        }
        let mut headers = from_wit_headers(req.headers).map_err(CallError::Invalid)?;
        let body = match req.body {
            Some(bytes) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                super::full(Bytes::from(bytes))
            }
            None => super::full(Bytes::new()),
        };
        let span = self.span.as_ref().and_then(|slot| {
            let phase = slot.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
            let span = phase.child(
                format!("{method} {}", req.service),
                opentelemetry::trace::SpanKind::Client,
                vec![
                    opentelemetry::KeyValue::new("http.request.method", method.to_string()),
                    opentelemetry::KeyValue::new("wasmgate.service", req.service.clone()),
                ],
            );
            span.inject(&mut headers);
            Some(span)
        });
        let timeout = req.timeout_ms.map_or(self.timeouts.request, |ms| {
            std::time::Duration::from_millis(u64::from(ms)).min(self.timeouts.request)
        });
        let outgoing = Outgoing {
            method,
            path_and_query: req.path_with_query,
            headers,
            body,
            upgrade: None,
        };
        let timeouts = Timeouts {
            request: timeout,
            ..self.timeouts
        };
        let exchange = async {
            let mut pick = upstream::Pick::default();
            let resp = upstream::send(service, outgoing, timeouts, &mut pick).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e: BoxError| CallError::Invalid(format!("response body: {e}")))?
                .to_bytes();
            Ok(OutboundResponse {
                status: parts.status.as_u16(),
                headers: to_wit_headers(&parts.headers),
                body: body.to_vec(),
            })
        };
        // The whole exchange, body included, within the call's timeout.
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout),
        };
        if let Some(span) = span {
            let (error, attributes) = match &result {
                Ok(resp) => (
                    (resp.status >= 500).then(|| resp.status.to_string()),
                    vec![opentelemetry::KeyValue::new(
                        "http.response.status_code",
                        i64::from(resp.status),
                    )],
                ),
                Err(e) => (Some(format!("{e:?}")), Vec::new()),
            };
            span.end(error, attributes);
        }
        result
    }
}

impl From<UpstreamError> for CallError {
    fn from(err: UpstreamError) -> Self {
        match err {
            UpstreamError::Timeout(_) | UpstreamError::ConnectTimeout(_) => CallError::Timeout,
            UpstreamError::Unavailable(detail)
            | UpstreamError::Refused(detail)
            | UpstreamError::ConnectFailed(detail)
            | UpstreamError::NoEndpoint(detail)
            | UpstreamError::Overloaded(detail) => CallError::Unavailable(detail),
            UpstreamError::BodyTooLarge(detail)
            | UpstreamError::Invalid(detail)
            | UpstreamError::ClientBody(detail) => CallError::Invalid(detail),
        }
    }
}
