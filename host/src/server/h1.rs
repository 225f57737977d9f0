//! The gateway's own HTTP/1.1 connection loop (RFC 9112), in the manner of Pingora's: each
//! request head is parsed once out of one read buffer kept for the connection's life (header
//! values are slices of it), its body is read from that buffer and the socket as the pipeline
//! pulls it, and the response head is written from one reused write buffer.
//!
//! What this loop does not serve goes to hyper, for the rest of the connection, in one place
//! ([`serve`]'s hand-off): HTTP/2 with prior knowledge, upgrades (WebSocket, `CONNECT`) and
//! `Expect: 100-continue`. Hyper then reads the bytes already buffered first, behind the same
//! framing guard as a connection hyper serves from the start.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, watch};
use wasmgate_h1::{BodyKind, Chunk, ChunkedDecoder, HeadError, HeadLimits, RequestHead};

use crate::proxy::{Inbound, Proxy};
use crate::upstream::{Body, BoxError, wire};

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client speaking HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 << 10;

/// How the loop reads and times a connection; from [`crate::config::Server`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub head: HeadLimits,
    /// From a request head's first byte to its end.
    pub head_timeout: Duration,
    /// From the end of a response to the next request's first byte.
    pub idle_timeout: Duration,
}

/// The connection's reading side and what has been read from it but not yet used.
struct Reader<IO> {
    io: ReadHalf<IO>,
    buf: BytesMut,
}

impl<IO: AsyncRead> Reader<IO> {
    /// Read once more into the buffer; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// What waiting for a request head came to.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(RequestHead),
    /// The client closed, stayed idle past the timeout, or the server is draining.
    Closed,
    Refused(HeadError),
    /// The client sent the HTTP/2 preface.
    Http2,
}

/// Serve `io` until the client or the server ends the connection; what this loop does not
/// serve goes to `handoff`.
pub(super) async fn serve<IO, F, Fut>(
    io: IO,
    client: SocketAddr,
    tls: bool,
    proxy: Arc<Proxy>,
    settings: Settings,
    draining: watch::Receiver<bool>,
    handoff: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    F: FnOnce(Rewind<IO>) -> Fut,
    Fut: Future<Output = ()>,
{
    let (io, mut wr) = tokio::io::split(io);
    let mut reader = Reader {
        io,
        buf: BytesMut::with_capacity(READ_SIZE),
    };
    let mut out = Vec::with_capacity(1024);
    let mut first = true;
    // One idle timer and one drain watch for the connection's life, not one per request: the
    // timer stays in tokio's wheel and is moved on only when it fires early (see `next_head`).
    let mut waits = Waits {
        idle: Box::pin(tokio::time::sleep(settings.idle_timeout)),
        drained: {
            let mut draining = draining.clone();
            Box::pin(async move { drained(&mut draining).await })
        },
    };
    loop {
        let head = match next_head(&mut reader, &settings, first, &draining, &mut waits).await {
            Next::Head(head) => head,
            Next::Closed => return close(wr).await,
            Next::Refused(e) => {
                tracing::debug!(%client, "request head refused: {}", e.reason());
                out.clear();
                out.extend_from_slice(b"HTTP/1.1 ");
                status_line(&mut out, e.status());
                out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n\r\n");
                let _ = wr.write_all(&out).await;
                return close(wr).await;
            }
            Next::Http2 => return handoff(Rewind::new(reader, wr, Bytes::new())).await,
        };
        first = false;
        // The rare cases, chosen here: hyper sends the interim 100 (RFC 9110 §10.1.1) and
        // switches protocols (RFC 9110 §7.8, RFC 9112 §9.7 for CONNECT).
        if head.upgrade || head.expect_continue {
            return handoff(Rewind::new(reader, wr, head.raw)).await;
        }
        let head_only = head.method == http::Method::HEAD;
        let version = head.version;
        let framing = head.body;
        let mut req = Request::new(Inbound::Empty);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;

        let (resp, lent) = match framing {
            BodyKind::Empty => {
                // With no body to read, the socket is watched while the request is served: a
                // client that closes gives its request up, as with hyper.
                match answer_watching(&proxy, req, client, tls, &mut reader).await {
                    Some(resp) => (resp, Ok(reader)),
                    None => return,
                }
            }
            framing => {
                let (back, lent) = oneshot::channel();
                let framing = match framing {
                    BodyKind::Length(n) => Framing::Length(n),
                    _ => Framing::Chunked(Box::new(ChunkedDecoder::new(
                        settings.head.max_head_bytes,
                        settings.head.max_headers,
                    ))),
                };
                *req.body_mut() = Inbound::Stream(
                    RequestBody {
                        reader: Some(reader),
                        framing,
                        back: Some(back),
                    }
                    .boxed(),
                );
                (Box::pin(proxy.handle(req, client, tls)).await, Err(lent))
            }
        };
        // `Err(None)`: the body was given up before its end (refused, or not needed), which
        // leaves the next head's place unknown: the response says the connection closes.
        let lent = match lent {
            Ok(reader) => Ok(reader),
            Err(mut back) => match back.try_recv() {
                Ok(Returned {
                    reader,
                    complete: true,
                }) => Ok(reader),
                Ok(_) | Err(oneshot::error::TryRecvError::Closed) => Err(None),
                Err(oneshot::error::TryRecvError::Empty) => Err(Some(back)),
            },
        };
        let keep_alive = head.keep_alive && !is_draining(&draining) && !matches!(lent, Err(None));
        let keep_alive =
            match write_response(&mut wr, &mut out, resp, head_only, version, keep_alive).await {
                Ok(keep_alive) => keep_alive,
                Err(e) => {
                    tracing::debug!(%client, "writing a response failed: {e}");
                    return;
                }
            };
        reader = match lent {
            Ok(reader) => reader,
            Err(None) => return close(wr).await,
            // The body comes back once read to its end, or given up (then the next head's
            // place is unknown and the connection closes).
            Err(Some(lent)) => match tokio::time::timeout(settings.idle_timeout, lent).await {
                Ok(Ok(Returned {
                    reader,
                    complete: true,
                })) => reader,
                _ => return close(wr).await,
            },
        };
        if !keep_alive {
            return close(wr).await;
        }
    }
}

fn is_draining(draining: &watch::Receiver<bool>) -> bool {
    *draining.borrow()
}

/// Resolves once the server drains.
pub(super) async fn drained(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|draining| *draining).await;
}

/// End the connection cleanly (for TLS, with its close notification).
async fn close<W: AsyncWrite>(mut wr: WriteHalf<W>) {
    let _ = wr.shutdown().await;
}

/// What a connection waits on between requests, kept for its life.
struct Waits {
    /// Fires at or before the current idle deadline.
    idle: Pin<Box<tokio::time::Sleep>>,
    /// Resolves once the server drains.
    drained: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Wait for the next request head: idle up to `idle_timeout` for its first byte, then up to
/// `head_timeout` for the rest (slow clients are cut off).
async fn next_head<IO: AsyncRead>(
    reader: &mut Reader<IO>,
    settings: &Settings,
    first: bool,
    draining: &watch::Receiver<bool>,
    waits: &mut Waits,
) -> Next {
    if reader.buf.is_empty() {
        if is_draining(draining) {
            return Next::Closed;
        }
        // The timer was set for an earlier idle spell, so it fires at or before this one's end;
        // when early, it is moved to this spell's end and waited on again.
        let idle_until = tokio::time::Instant::now() + settings.idle_timeout;
        loop {
            tokio::select! {
                read = reader.fill() => match read {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => break,
                },
                () = waits.idle.as_mut() => {
                    if tokio::time::Instant::now() >= idle_until {
                        return Next::Closed;
                    }
                    waits.idle.as_mut().reset(idle_until);
                }
                () = waits.drained.as_mut() => return Next::Closed,
            }
        }
    }
    // Set at the first incomplete parse: most heads arrive whole in one read.
    let mut deadline = None;
    loop {
        let preface = first && {
            let n = reader.buf.len().min(H2_PREFACE.len());
            reader.buf[..n] == H2_PREFACE[..n]
        };
        if preface {
            if reader.buf.len() >= H2_PREFACE.len() {
                return Next::Http2;
            }
        } else {
            match wasmgate_h1::parse_request(&mut reader.buf, &settings.head) {
                Ok(Some(head)) => return Next::Head(head),
                Ok(None) => {}
                Err(e) => return Next::Refused(e),
            }
        }
        let deadline =
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + settings.head_timeout);
        match tokio::time::timeout_at(deadline, reader.fill()).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return Next::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// The proxy's answer to a request without a body, or `None` when the client closed first.
async fn answer_watching<IO: AsyncRead>(
    proxy: &Proxy,
    req: Request<Inbound>,
    client: SocketAddr,
    tls: bool,
    reader: &mut Reader<IO>,
) -> Option<Response<Body>> {
    // Boxed: the request's future is several KiB, and moving it into this one's state would
    // copy all of it on every request.
    let mut answer = Box::pin(proxy.handle(req, client, tls));
    // Pipelined requests are kept for later, up to a bound.
    let mut watching = reader.buf.len() < READ_SIZE;
    loop {
        tokio::select! {
            biased;
            resp = &mut answer => return Some(resp),
            read = reader.fill(), if watching => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => watching = reader.buf.len() < READ_SIZE,
            },
        }
    }
}

/// `200 OK\r\n`: the status line after the version.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Write `resp` to the client; whether the connection may carry another request.
async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    head_only: bool,
    version: Version,
    mut keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    status_line(out, status);
    let (mut declared, mut dated) = (None, false);
    for (name, value) in &parts.headers {
        // Framing and the connection are this hop's to decide (RFC 9110 §7.6.1).
        if name == header::CONNECTION {
            keep_alive &= !value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name == header::TRANSFER_ENCODING || name.as_str() == "keep-alive" {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            declared = wire::content_length(value);
            if declared.is_none() {
                continue;
            }
        }
        dated |= name == header::DATE;
        wire::field(out, name, value);
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // RFC 9112 §6.3: no body after a 1xx, 204 or 304, or for HEAD; else its length when
    // known, chunks for HTTP/1.1, the connection's end for HTTP/1.0.
    let framing = if bodiless {
        None
    } else if let Some(n) = declared {
        Some(wire::Framing::Length(n))
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Some(wire::Framing::Length(n))
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Some(wire::Framing::Chunked)
    } else {
        keep_alive = false;
        Some(wire::Framing::UntilClose)
    };
    match (version, keep_alive) {
        (Version::HTTP_11, false) => out.extend_from_slice(b"connection: close\r\n"),
        (Version::HTTP_10, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    let Some(framing) = framing else {
        wr.write_all(out).await?;
        wr.flush().await?;
        return Ok(keep_alive);
    };
    match wire::write_body(wr, out, &mut body, framing).await {
        Ok(()) => Ok(keep_alive),
        Err(wire::WriteError::Io(e)) => Err(e),
        // The client sees the body cut short, as with hyper.
        Err(wire::WriteError::Body(e)) => Err(io::Error::other(e)),
        Err(wire::WriteError::Length) => Err(io::Error::other(
            "response body does not match its content-length",
        )),
    }
}

/// The `Date` value (RFC 9110 §6.6.1), formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// How a request body is framed.
enum Framing {
    /// Bytes still to come.
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
}

/// The connection's reading side coming back from a request body.
struct Returned<IO> {
    reader: Reader<IO>,
    /// The body was read to its end: the next request head follows.
    complete: bool,
}

/// A request body read from the connection as the pipeline pulls it. It holds the reading
/// side meanwhile and hands it back when the body ends or is dropped.
struct RequestBody<IO> {
    reader: Option<Reader<IO>>,
    framing: Framing,
    back: Option<oneshot::Sender<Returned<IO>>>,
}

impl<IO> RequestBody<IO> {
    fn give_back(&mut self, complete: bool) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(Returned { reader, complete });
        }
    }
}

impl<IO> Drop for RequestBody<IO> {
    fn drop(&mut self) {
        self.give_back(false);
    }
}

impl<IO: AsyncRead> http_body::Body for RequestBody<IO> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Length(left) => {
                    if !reader.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .map_or(reader.buf.len(), |left| left.min(reader.buf.len()));
                        let data = reader.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.give_back(true);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut reader.buf) {
                    Ok(Some(Chunk::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Chunk::End(trailers))) => {
                        this.give_back(true);
                        return Poll::Ready(
                            (!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers))),
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        this.give_back(false);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
            }
            match std::task::ready!(reader.poll_fill(cx)) {
                Ok(0) => {
                    this.give_back(false);
                    return Poll::Ready(Some(Err("the client closed mid-body".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.give_back(false);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.reader, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Framing::Length(left)) => SizeHint::with_exact(*left),
            (Some(_), Framing::Chunked(_)) => SizeHint::default(),
        }
    }
}

/// A connection handed on: the bytes already read come first, then the socket's.
pub(super) struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: Unpin> Rewind<IO> {
    /// `raw` (a head already taken off the buffer) and the buffer, then `reader`'s socket.
    fn new(reader: Reader<IO>, wr: WriteHalf<IO>, raw: Bytes) -> Rewind<IO> {
        let prefix = if raw.is_empty() {
            reader.buf.freeze()
        } else {
            let mut prefix = BytesMut::with_capacity(raw.len() + reader.buf.len());
            prefix.extend_from_slice(&raw);
            prefix.extend_from_slice(&reader.buf);
            prefix.freeze()
        };
        Rewind {
            prefix,
            io: reader.io.unsplit(wr),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let taken = self.prefix.split_to(n);
            buf.put_slice(&taken);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
