//! Accept-side checks on a client request (framing, declared size) and the body policy: buffer
//! the body when a filter reads it, else stream it, capped either way.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::error::{ErrorKind, GatewayError};
use super::grpc_web::TextDecoder;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::{BoxError, ClientBodyError};

/// A client request's body as a server hands it over: hyper's (HTTP/2, and connections handed
/// to hyper), none, or another server's stream (the own HTTP/1.1 path's).
pub enum Inbound {
    Hyper(Incoming),
    Empty,
    Stream(BoxBody<Bytes, BoxError>),
}

impl http_body::Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Inbound::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            Inbound::Empty => Poll::Ready(None),
            Inbound::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Hyper(body) => body.is_end_stream(),
            Inbound::Empty => true,
            Inbound::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Hyper(body) => body.size_hint(),
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Stream(body) => body.size_hint(),
        }
    }
}

/// The client's request body as the pipeline reads it: as it came, or decoded from gRPC-Web
/// text. A failure reading it is the client's ([`ClientBodyError`], a 400).
pub(super) struct ClientBody {
    kind: Kind,
    /// Bytes read so far, when the access log counts them.
    counted: Option<Arc<AtomicU64>>,
}

enum Kind {
    Plain(Inbound),
    Base64(TextDecoder),
}

impl ClientBody {
    pub(super) fn plain(body: Inbound, counted: Option<Arc<AtomicU64>>) -> ClientBody {
        ClientBody {
            kind: Kind::Plain(body),
            counted,
        }
    }

    pub(super) fn base64(body: TextDecoder, counted: Option<Arc<AtomicU64>>) -> ClientBody {
        ClientBody {
            kind: Kind::Base64(body),
            counted,
        }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Plain(body) => Pin::new(body).poll_frame(cx),
            Kind::Base64(body) => Pin::new(body).poll_frame(cx),
        };
        if let (Some(counted), Poll::Ready(Some(Ok(frame)))) = (&this.counted, &polled)
            && let Some(data) = frame.data_ref()
        {
            counted.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled.map(|frame| frame.map(|f| f.map_err(ClientBodyError)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain(body) => body.is_end_stream(),
            Kind::Base64(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain(body) => body.size_hint(),
            Kind::Base64(_) => SizeHint::default(),
        }
    }
}

/// A request body: still streaming from the client, or buffered (read or set by a filter).
pub(super) enum ReqBody {
    /// `Sync` (unlike [`crate::upstream::Body`]) because the handler holds it across awaits.
    Stream(BoxBody<Bytes, BoxError>),
    Buffered(Bytes),
}

/// Refuse requests whose target is over `server.max_uri_bytes` (414), whose framing is
/// ambiguous (both `content-length` and `transfer-encoding`, or more than one
/// `content-length`), or whose declared length is over `server.max_request_body_bytes`. The framing check is defence in depth: the server's framing
/// guard and hyper's parser already refuse these on HTTP/1 (see tests/e2e/hardening.rs); this
/// guards any other path a request may come in by.
pub(super) fn check_request(
    uri: &http::Uri,
    headers: &HeaderMap,
    snapshot: &Snapshot,
) -> Result<(), GatewayError> {
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > snapshot.max_uri {
        return Err(GatewayError::new(
            ErrorKind::UriTooLong,
            format!(
                "request target of {target} bytes exceeds server.max_uri_bytes {}",
                snapshot.max_uri
            ),
        ));
    }
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
    if let (Some(max), Some(len)) = (snapshot.max_request_body, content_length(headers))
        && len > max
    {
        return Err(GatewayError::new(
            ErrorKind::BodyTooLarge,
            format!("content-length {len} exceeds server.max_request_body_bytes {max}"),
        ));
    }
    Ok(())
}

/// The body as the route needs it: buffered up to the route's limit when a filter reads it,
/// otherwise streamed (cut off past `server.max_request_body_bytes`, so the upstream sees an
/// aborted request).
pub(super) async fn request_body(
    body: ClientBody,
    headers: &HeaderMap,
    route: &Route,
    snapshot: &Snapshot,
) -> Result<ReqBody, GatewayError> {
    if route.needs_request_body {
        let limit = snapshot.request_body_limit(route);
        return read_limited(body, headers, limit)
            .await
            .map(ReqBody::Buffered);
    }
    // A failure reading the client's body (a malformed chunk, a reset) is the client's: 400.
    Ok(ReqBody::Stream(match snapshot.max_request_body {
        Some(max) => Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
            .map_err(BoxError::from)
            .boxed(),
        None => body.map_err(BoxError::from).boxed(),
    }))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(crate::upstream::wire::content_length)
}

/// Read a body up to `limit` bytes; 413 beyond, refusing early when `content-length` says so.
async fn read_limited(
    body: ClientBody,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, GatewayError> {
    if let Some(declared) = content_length(headers).filter(|n| *n > limit) {
        return Err(GatewayError::new(
            ErrorKind::BodyTooLarge,
            format!("content-length {declared} exceeds the limit of {limit} bytes"),
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
