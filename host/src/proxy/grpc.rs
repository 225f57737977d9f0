//! gRPC over the proxy: calls pass through with their trailers; what the gateway itself
//! answers to a gRPC call (no route, a filter's refusal, an upstream down or late) is a gRPC
//! status in a trailers-only response, HTTP 200, never a JSON or HTML body; `grpc-timeout`
//! caps the upstream timeout.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::error::{ErrorKind, GatewayError};
use crate::upstream::Body;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status codes the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Code {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// The call's flavour, from its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavour {
    /// `application/grpc[+proto|+json|...]`
    Grpc,
    /// `application/grpc-web[+proto]`: binary gRPC-Web.
    Web,
    /// `application/grpc-web-text[+proto]`: base64 gRPC-Web.
    WebText,
}

/// The call's flavour, or `None` for a request that is not gRPC.
pub(super) fn flavour(headers: &HeaderMap) -> Option<Flavour> {
    let ct = headers.get(header::CONTENT_TYPE)?.as_bytes();
    let ct = ct.split(|b| *b == b';').next().unwrap_or(ct);
    let subtype = |rest: &[u8]| rest.is_empty() || rest[0] == b'+';
    // Longest prefix first: "application/grpc" is a prefix of the others.
    for (prefix, flavour) in [
        (&b"application/grpc-web-text"[..], Flavour::WebText),
        (b"application/grpc-web", Flavour::Web),
        (b"application/grpc", Flavour::Grpc),
    ] {
        if ct.len() >= prefix.len()
            && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
            && subtype(&ct[prefix.len()..])
        {
            return Some(flavour);
        }
    }
    None
}

/// The deadline the client gave in `grpc-timeout` (`<digits><unit>`, at most 8 digits, unit
/// one of `H M S m u n`).
pub(super) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl ErrorKind {
    /// The gRPC status for a failure of this kind.
    fn grpc(self) -> Code {
        match self {
            ErrorKind::NoRoute => Code::Unimplemented,
            ErrorKind::BodyTooLarge | ErrorKind::UriTooLong => Code::ResourceExhausted,
            ErrorKind::FilterUnavailable
            | ErrorKind::UpstreamUnavailable
            | ErrorKind::NoHealthyUpstream
            | ErrorKind::UpstreamOverloaded => Code::Unavailable,
            ErrorKind::UpstreamTimeout => Code::DeadlineExceeded,
            ErrorKind::BadRequest | ErrorKind::FilterFailed | ErrorKind::Internal => Code::Internal,
        }
    }
}

/// The gRPC status for an HTTP status, as gRPC's HTTP-to-gRPC mapping gives it.
fn from_http(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A gateway failure as a gRPC trailers-only response.
pub(super) fn error(err: &GatewayError, flavour: Flavour) -> Response<Body> {
    trailers_only(err.kind.grpc(), err.kind.public_message(), flavour)
}

/// A non-gRPC answer to a gRPC call (a filter's 401, a 503 from an upstream that is not a gRPC
/// server) as the gRPC status the mapping gives; the answer's headers stay (e.g.
/// `www-authenticate`). Answers that carry a `grpc-status` pass unchanged.
pub(super) fn translate(resp: Response<Body>, flavour: Flavour) -> Response<Body> {
    if resp.headers().contains_key(GRPC_STATUS)
        || (resp.status() == StatusCode::OK && is_grpc_content(resp.headers()))
        || resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        return resp;
    }
    let status = resp.status();
    let message = status.canonical_reason().unwrap_or("HTTP error");
    let mut answer = trailers_only(
        from_http(status),
        &format!("HTTP {} {message}", status.as_u16()),
        flavour,
    );
    let (parts, _) = resp.into_parts();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}

fn is_grpc_content(headers: &HeaderMap) -> bool {
    flavour(headers).is_some()
}

/// HTTP 200 with the status in the headers and no body.
fn trailers_only(code: Code, message: &str, flavour: Flavour) -> Response<Body> {
    let mut resp = Response::new(super::full(bytes::Bytes::new()));
    let content_type = match flavour {
        Flavour::Grpc => "application/grpc",
        Flavour::Web => "application/grpc-web+proto",
        Flavour::WebText => "application/grpc-web-text+proto",
    };
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(GRPC_STATUS, HeaderValue::from(code as u16));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    resp
}

/// `grpc-message` encoding: printable ASCII except `%` as is, everything else `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn content_types_name_the_flavour() {
        let of = |ct| flavour(&headers(&[("content-type", ct)]));
        assert_eq!(of("application/grpc"), Some(Flavour::Grpc));
        assert_eq!(of("application/grpc+proto"), Some(Flavour::Grpc));
        assert_eq!(of("Application/GRPC; charset=x"), Some(Flavour::Grpc));
        assert_eq!(of("application/grpc-web+proto"), Some(Flavour::Web));
        assert_eq!(of("application/grpc-web-text"), Some(Flavour::WebText));
        assert_eq!(of("application/grpcx"), None);
        assert_eq!(of("application/json"), None);
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_reject_the_rest() {
        let of = |t| timeout(&headers(&[("grpc-timeout", t)]));
        assert_eq!(of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(of("1S"), Some(Duration::from_secs(1)));
        assert_eq!(of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(of("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("upstream timed out"), "upstream timed out");
        assert_eq!(percent_encode("100% ü"), "100%25 %C3%BC");
    }
}
