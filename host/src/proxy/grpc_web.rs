//! gRPC-Web to gRPC, for routes with `grpc_web = true`: a browser's call (binary
//! `application/grpc-web`, or base64 `application/grpc-web-text`) goes upstream as gRPC, and
//! the answer comes back with its trailers as the final gRPC-Web frame (flag `0x80`), base64
//! again for text calls. Messages stream both ways; nothing is buffered whole.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::Response;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::grpc::Flavour;
use crate::upstream::{Body, BoxError};

/// Rewrite a gRPC-Web request's headers into a gRPC call's; the body is decoded by
/// [`TextDecoder`] for text calls.
pub(super) fn translate_request(parts: &mut Parts) {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Keep the message format suffix (`+proto`, `+json`).
    let suffix = content_type
        .split(';')
        .next()
        .and_then(|ct| ct.find('+').map(|i| ct[i..].trim().to_string()))
        .unwrap_or_default();
    if let Ok(grpc) = HeaderValue::from_str(&format!("application/grpc{suffix}")) {
        parts.headers.insert(header::CONTENT_TYPE, grpc);
    }
    // Decoding text changes the length; the upstream connection is HTTP/2, which frames it.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::TE, HeaderValue::from_static("trailers"));
    parts.version = http::Version::HTTP_2;
}

/// The upstream's gRPC answer as gRPC-Web for the client.
pub(super) fn translate_response(resp: Response<Body>, flavour: Flavour) -> Response<Body> {
    let text = flavour == Flavour::WebText;
    let (mut parts, body) = resp.into_parts();
    let content_type = match (text, is_grpc(&parts.headers)) {
        (_, false) => None,
        (true, true) => Some("application/grpc-web-text+proto"),
        (false, true) => Some("application/grpc-web+proto"),
    };
    let Some(content_type) = content_type else {
        return Response::from_parts(parts, body);
    };
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = WebResponse {
        inner: body,
        text,
        carry: BytesMut::new(),
        done: false,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

fn is_grpc(headers: &HeaderMap) -> bool {
    super::grpc::flavour(headers) == Some(Flavour::Grpc)
}

/// A gRPC-Web text request body, decoded from base64 as it streams. Clients may pad each
/// chunk they send, so decoding goes group by group up to each padded group.
pub(super) struct TextDecoder {
    inner: super::accept::Inbound,
    /// Base64 not yet decoded: less than one group, or groups waiting for a padded one.
    pending: BytesMut,
}

impl TextDecoder {
    pub(super) fn new(inner: super::accept::Inbound) -> TextDecoder {
        TextDecoder {
            inner,
            pending: BytesMut::new(),
        }
    }

    /// Decode every complete 4-character group in `pending`.
    fn decode_complete(&mut self) -> Result<Bytes, BoxError> {
        let complete = self.pending.len() / 4 * 4;
        let groups = self.pending.split_to(complete);
        let mut out = Vec::with_capacity(complete / 4 * 3);
        let mut start = 0;
        for (i, group) in groups.chunks(4).enumerate() {
            // A padded group ends an independently encoded run.
            if group.contains(&b'=') {
                STANDARD.decode_vec(&groups[start..(i + 1) * 4], &mut out)?;
                start = (i + 1) * 4;
            }
        }
        STANDARD.decode_vec(&groups[start..], &mut out)?;
        Ok(Bytes::from(out))
    }
}

impl HttpBody for TextDecoder {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.pending
                            .extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
                        let decoded = this.decode_complete()?;
                        if !decoded.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(decoded))));
                        }
                    }
                    // gRPC-Web requests carry no trailers.
                    Err(_) => continue,
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None if this.pending.is_empty() => return Poll::Ready(None),
                None => {
                    return Poll::Ready(Some(Err(format!(
                        "gRPC-Web text body ends inside a base64 group ({} characters left)",
                        this.pending.len()
                    )
                    .into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.pending.is_empty()
    }
}

/// A gRPC response body as gRPC-Web: data as is (base64 for text), trailers as a final frame.
struct WebResponse {
    inner: Body,
    text: bool,
    /// Text calls: up to two bytes held back so that base64 is padded only at the end.
    carry: BytesMut,
    done: bool,
}

impl WebResponse {
    /// `bytes` as the client reads them; `last` pads the base64.
    fn out(&mut self, bytes: &[u8], last: bool) -> Bytes {
        if !self.text {
            return Bytes::copy_from_slice(bytes);
        }
        self.carry.extend_from_slice(bytes);
        let whole = if last {
            self.carry.len()
        } else {
            self.carry.len() / 3 * 3
        };
        let chunk = self.carry.split_to(whole);
        Bytes::from(STANDARD.encode(&chunk))
    }
}

/// The trailers frame: flag `0x80`, length, then `name:value\r\n` lines.
fn trailers_frame(trailers: &HeaderMap) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = Vec::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    frame.put_u32(block.len() as u32);
    frame.extend_from_slice(&block);
    frame
}

impl HttpBody for WebResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let out = this.out(&data, false);
                            if out.is_empty() {
                                continue;
                            }
                            out
                        }
                        Err(frame) => {
                            let trailers = frame.into_trailers().unwrap_or_default();
                            this.done = true;
                            this.out(&trailers_frame(&trailers), true)
                        }
                    };
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    let rest = this.out(&[], true);
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_become_the_final_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let frame = trailers_frame(&trailers);
        let block = b"grpc-status:0\r\ngrpc-message:ok\r\n";
        assert_eq!(frame[0], 0x80);
        assert_eq!(&frame[1..5], &(block.len() as u32).to_be_bytes());
        assert_eq!(&frame[5..], block);
    }
}
