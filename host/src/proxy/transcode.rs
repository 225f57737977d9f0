//! The transcoding step (a route's `transcode`): in place of the plain forward, after the
//! request phases and before the response phases, so filters see JSON on both sides. The JSON
//! request becomes one gRPC message sent over the route's h2/h2c service; the call's messages
//! and status come back as JSON (see [`crate::transcode`]).

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use wasmgate_sandbox::HttpResponse;

use super::Ctx;
use super::accept::ReqBody;
use super::error::{ErrorKind, GatewayError};
use super::forward;
use super::wit::CheckedRequest;
use crate::snapshot::Route;
use crate::transcode::{self, Transcoder};

/// Call the route's gRPC service for a JSON request; the answer as the response phases see it.
pub(super) async fn call(
    transcoder: &Transcoder,
    route: &Route,
    request: CheckedRequest,
    body: ReqBody,
    cx: &mut Ctx<'_>,
) -> Result<HttpResponse, GatewayError> {
    let limit = usize::try_from(route.body_limit(&cx.snapshot.body_limits)).unwrap_or(usize::MAX);
    let body = match body {
        ReqBody::Buffered(bytes) => bytes,
        ReqBody::Stream(stream) => {
            gather(stream, limit)
                .await
                .map_err(|e| {
                    let kind = match e {
                        Gather::Over => ErrorKind::BodyTooLarge,
                        Gather::Body(_) => ErrorKind::BadRequest,
                    };
                    GatewayError::new(kind, format!("reading the JSON request: {e}"))
                })?
                .0
        }
    };
    let matched = match transcoder.request(&request.method, &request.path_and_query, &body) {
        Ok(Some(matched)) => matched,
        Ok(None) => {
            let message = format!(
                "no method for {} {}",
                request.method,
                request.path_and_query.split('?').next().unwrap_or("")
            );
            return Ok(json_error(StatusCode::NOT_FOUND, 5, &message));
        }
        Err(refusal) => return Ok(json_error(refusal.status, refusal.code, &refusal.message)),
    };

    let ndjson = accepts_ndjson(&request.headers);
    let mut headers = request.headers;
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let grpc = CheckedRequest {
        method: Method::POST,
        path_and_query: matched.call.path.clone(),
        headers,
    };
    let resp = forward::to_upstream(
        route,
        grpc,
        ReqBody::Buffered(matched.frame.clone()),
        cx,
        None,
    )
    .await?;
    let (parts, body) = resp.into_parts();
    if parts.status != StatusCode::OK {
        return Err(GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!("the gRPC upstream answered HTTP {}", parts.status),
        ));
    }
    let (frames, trailers) = gather(body, limit).await.map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!("reading the gRPC answer (limit {limit} bytes): {e}"),
        )
    })?;
    // Trailers-only answers carry the status in the headers.
    let status_from = trailers.as_ref().filter(|t| t.contains_key("grpc-status"));
    let code = grpc_status(status_from.unwrap_or(&parts.headers));
    let Some(code) = code else {
        return Err(GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            "the gRPC answer has no grpc-status",
        ));
    };
    if code != 0 {
        let message = status_from
            .unwrap_or(&parts.headers)
            .get("grpc-message")
            .map(|m| {
                percent_encoding::percent_decode(m.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        return Ok(json_error(transcode::http_status(code), code, &message));
    }
    let stream = match ndjson {
        true => transcode::StreamFormat::Ndjson,
        false => transcoder.stream,
    };
    let (json, content_type) = matched.response(&frames, stream).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!("transcoding the answer of {}: {e}", matched.call.path),
        )
    })?;
    // The upstream's own headers (metadata) go back, but not its gRPC framing.
    let mut out = HeaderMap::new();
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n.starts_with("grpc-") || name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(HttpResponse {
        status: StatusCode::OK,
        headers: out,
        body: Some(json),
    })
}

/// Why a body could not be gathered.
#[derive(Debug)]
enum Gather {
    /// Over the route's body limit.
    Over,
    /// The body failed (the client or upstream went away, bad framing).
    Body(String),
}

impl std::fmt::Display for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gather::Over => f.write_str("over the route's body limit"),
            Gather::Body(e) => f.write_str(e),
        }
    }
}

/// A body's bytes, up to `limit`, and its trailers.
async fn gather<B>(mut body: B, limit: usize) -> Result<(Bytes, Option<HeaderMap>), Gather>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Gather::Body(e.to_string()))?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > limit {
                    return Err(Gather::Over);
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok((data.freeze(), trailers))
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// `Accept: application/x-ndjson` asks for a stream as lines, whatever the route's default.
fn accepts_ndjson(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            t.split(|&b| b == b';').next().unwrap_or(t).trim_ascii() == b"application/x-ndjson"
        })
    })
}

fn json_error(status: StatusCode, code: u32, message: &str) -> HttpResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    HttpResponse {
        status,
        headers,
        body: Some(transcode::error_body(code, message)),
    }
}
