//! Writing an HTTP/1.1 message after its head (RFC 9112 §6): the body framed by its length or in
//! chunks, small pieces gathered into one write with the head. Used by both of the gateway's own
//! HTTP/1.1 paths: responses to clients (`server/h1.rs`) and requests to upstreams (`pool.rs`).

use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

/// A `Content-Length` value as a number; `None` when it is not one (RFC 9110 §8.6).
pub(crate) fn content_length(value: &HeaderValue) -> Option<u64> {
    value.to_str().ok()?.parse().ok()
}

/// Methods whose requests may be sent twice (RFC 9110 §9.2.2): a retry, or a resend after a
/// reused connection turned out closed.
pub(crate) fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Body bytes gathered before a write; larger pieces are written as they are.
const GATHER: usize = 16 << 10;

/// How a body is framed after its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// Chunked transfer coding (§7.1), trailers included.
    Chunked,
    /// Until the connection closes (a response to an HTTP/1.0 client without a length).
    UntilClose,
}

/// Why writing a message failed.
pub(crate) enum WriteError<E> {
    Io(io::Error),
    /// The body failed; its error as it came.
    Body(E),
    /// The body did not match its declared length.
    Length,
}

/// Append a header (or trailer) line.
pub(crate) fn field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Append header (or trailer) lines.
pub(crate) fn fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        field(out, name, value);
    }
}

/// Write `out` (the encoded head) and then `body` as `framing` says to `io`. What the body has
/// ready goes out with the head in one write; the socket is written and flushed before waiting
/// for more.
pub(crate) async fn write_body<W, B>(
    io: &mut W,
    out: &mut Vec<u8>,
    body: &mut B,
    framing: Framing,
) -> Result<(), WriteError<B::Error>>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let chunked = framing == Framing::Chunked;
    let (mut sent, mut trailers) = (0u64, None);
    while !body.is_end_stream() {
        let frame =
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
            {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    io.write_all(out).await.map_err(WriteError::Io)?;
                    out.clear();
                    io.flush().await.map_err(WriteError::Io)?;
                    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(WriteError::Body(e)),
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if matches!(framing, Framing::Length(n) if sent > n) {
            return Err(WriteError::Length);
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if data.len() >= GATHER {
            io.write_all(out).await.map_err(WriteError::Io)?;
            out.clear();
            io.write_all(&data).await.map_err(WriteError::Io)?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= GATHER {
            io.write_all(out).await.map_err(WriteError::Io)?;
            out.clear();
        }
    }
    if matches!(framing, Framing::Length(n) if sent < n) {
        // What came goes out; the peer sees the message cut short.
        io.write_all(out).await.map_err(WriteError::Io)?;
        return Err(WriteError::Length);
    }
    if chunked {
        out.extend_from_slice(b"0\r\n");
        if let Some(trailers) = &trailers {
            self::fields(out, trailers);
        }
        out.extend_from_slice(b"\r\n");
    }
    io.write_all(out).await.map_err(WriteError::Io)?;
    io.flush().await.map_err(WriteError::Io)
}
