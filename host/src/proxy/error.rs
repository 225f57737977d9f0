//! The gateway's request-path error: where it came from decides the status, the client gets a
//! fixed message that leaks nothing, and the log gets the detail.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use crate::upstream::UpstreamError;

/// What went wrong, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches the request.
    NoRoute,
    /// The client sent something we will not forward.
    BadRequest,
    /// The request body exceeds the route's limit.
    BodyTooLarge,
    /// The request target exceeds `server.max_uri_bytes`.
    UriTooLong,
    /// A filter trapped, timed out, returned an error or an invalid result.
    FilterFailed,
    /// A filter the route needs is not loaded (never compiled, or its config was rejected).
    FilterUnavailable,
    /// The upstream refused the connection, reset it or sent a malformed response.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// No endpoint of the service takes traffic (all unhealthy or ejected).
    NoHealthyUpstream,
    /// The service is at one of its limits (connections, pending or active requests).
    UpstreamOverloaded,
    /// A bug or resource exhaustion inside the gateway.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorKind::FilterFailed | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::FilterUnavailable
            | ErrorKind::NoHealthyUpstream
            | ErrorKind::UpstreamOverloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The fixed text the client sees.
    pub(super) fn public_message(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no route matches this request",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::BodyTooLarge => "request body too large",
            ErrorKind::UriTooLong => "request target too long",
            ErrorKind::FilterFailed => "a filter failed to process the request",
            ErrorKind::FilterUnavailable => "a filter for this route is not available",
            ErrorKind::UpstreamUnavailable => "upstream unavailable",
            ErrorKind::UpstreamTimeout => "upstream timed out",
            ErrorKind::NoHealthyUpstream => "no healthy upstream",
            ErrorKind::UpstreamOverloaded => "upstream overloaded",
            ErrorKind::Internal => "internal error",
        }
    }
}

/// An error on the request path: its kind and, for the log only, the detail.
#[derive(Debug)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// The small JSON body sent to the client.
    pub fn body(&self, request_id: &str) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "status": self.kind.status().as_u16(),
                "message": self.kind.public_message(),
            },
            "request_id": request_id,
        });
        Bytes::from(body.to_string())
    }

    /// Response parts for this error.
    pub fn into_response(self, request_id: &str) -> http::Response<Bytes> {
        let mut resp = http::Response::new(self.body(request_id));
        *resp.status_mut() = self.kind.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for GatewayError {}

impl From<UpstreamError> for GatewayError {
    fn from(err: UpstreamError) -> Self {
        let kind = match &err {
            UpstreamError::Timeout(_) | UpstreamError::ConnectTimeout(_) => {
                ErrorKind::UpstreamTimeout
            }
            UpstreamError::Unavailable(_)
            | UpstreamError::Refused(_)
            | UpstreamError::ConnectFailed(_) => ErrorKind::UpstreamUnavailable,
            UpstreamError::NoEndpoint(_) => ErrorKind::NoHealthyUpstream,
            UpstreamError::Overloaded(_) => ErrorKind::UpstreamOverloaded,
            UpstreamError::BodyTooLarge(_) => ErrorKind::BodyTooLarge,
            UpstreamError::ClientBody(_) => ErrorKind::BadRequest,
            UpstreamError::Invalid(_) => ErrorKind::Internal,
        };
        GatewayError::new(kind, err.to_string())
    }
}
