//! The request path's own HTTP/1.1 upstream client and connection pool, for the common
//! upstream: plain `http://` at a known IP address, no `max_connections`, no upgrade.
//! Everything else goes through hyper-util's client (TLS, HTTP/2, host names to resolve,
//! connection caps, WebSocket).
//!
//! In Pingora's manner, an exchange runs in the request's own task: the request head is written
//! from one reused buffer (with a small body, in the same write), the response head is parsed
//! once out of the connection's read buffer ([`wasmgate_h1::parse_response`], values sliced
//! from it), and the body is read from that buffer and the socket as the client side pulls it.
//! No connection task, no channel between the two.
//!
//! A connection is keyed by its socket address, taken from this thread's idle list (most
//! recently used first) and given back by the response body once read to its end and framed
//! to allow reuse (RFC 9112 §9.3); a body dropped before its end takes the connection down.
//! Idle connections are closed after `upstream_idle` by a reaper task per pool, which runs only
//! while the pool holds idle connections. A pooled connection the upstream closed meanwhile is
//! noticed before it is used; one that closes as the request is written gets an idempotent
//! request without a body sent once more on a new connection (RFC 9110 §9.2.2).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::time::Instant;
use wasmgate_h1::{Chunk, ChunkedDecoder, HeadLimits, ResponseBodyKind, ResponseHead};

use super::{Body, BoxError, wire};

/// How large an upstream's response head may be.
const RESPONSE_HEAD: HeadLimits = HeadLimits {
    max_head_bytes: 64 << 10,
    max_headers: 128,
};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 << 10;

/// Connections are pooled by where they go and how long they may idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub addr: SocketAddr,
    pub idle: Duration,
}

/// An open HTTP/1.1 connection to an upstream.
struct Conn {
    io: TcpStream,
    /// Read from the socket and not yet used.
    buf: BytesMut,
    /// The request head (and small bodies) on their way out.
    out: Vec<u8>,
}

impl Conn {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// The upstream has closed the connection or sent something unasked while it sat idle.
    fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: rustc_hash::FxHashMap<Key, Vec<Idle>>,
    /// A reaper task is running for this pool.
    reaping: bool,
}

type Shared = Arc<Mutex<Pool>>;

thread_local! {
    /// This thread's pool. Shared with its reaper and with the response bodies that give
    /// connections back, wherever those end up being read.
    static LOCAL: Shared = Shared::default();
}

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the exchange failed, before or after a connection was there.
pub(super) enum Failure {
    Connect(io::Error),
    Exchange(BoxError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Exchange(e.into())
    }
}

/// Send `req` (origin-form URI, `Host` set) on a pooled connection to `key.addr`, or a new one
/// made within `connect_timeout`; the response's body gives the connection back.
pub(super) async fn send(
    key: Key,
    connect_timeout: Duration,
    req: Request<Body>,
) -> Result<Response<ResponseBody>, Failure> {
    let pool = LOCAL.with(Arc::clone);
    let (parts, mut body) = req.into_parts();
    // Sent again on a new connection if a reused one turns out closed: nothing to replay, and
    // the method allows it.
    let resendable = body.is_end_stream() && wire::idempotent(&parts.method);
    let (mut conn, reused) = match checkout(&pool, &key) {
        Some(conn) => (conn, true),
        None => (connect(key.addr, connect_timeout).await?, false),
    };
    let head = match exchange(&mut conn, &parts, &mut body).await {
        Ok(head) => head,
        Err(Sent::Unanswered(_)) if reused && resendable => {
            conn = connect(key.addr, connect_timeout).await?;
            exchange(&mut conn, &parts, &mut body)
                .await
                .map_err(Sent::failure)?
        }
        Err(e) => return Err(e.failure()),
    };
    let back = head.keep_alive.then_some(Back { pool, key });
    let framing = match head.body {
        ResponseBodyKind::Empty => Framing::Length(0),
        ResponseBodyKind::Length(n) => Framing::Length(n),
        ResponseBodyKind::Chunked => Framing::Chunked(Box::new(ChunkedDecoder::new(
            RESPONSE_HEAD.max_head_bytes,
            RESPONSE_HEAD.max_headers,
        ))),
        ResponseBodyKind::UntilClose => Framing::UntilClose,
    };
    let mut own = OwnBody {
        conn: Some(conn),
        framing,
        back,
    };
    if matches!(own.framing, Framing::Length(0)) {
        own.finish();
    }
    let mut resp = Response::new(ResponseBody {
        inner: Inner::Own(own),
    });
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// How an exchange failed.
enum Sent {
    /// The connection closed before any of the response came: the request may not have
    /// reached the upstream.
    Unanswered(io::Error),
    Failed(Failure),
}

impl Sent {
    fn failure(self) -> Failure {
        match self {
            Sent::Unanswered(e) => e.into(),
            Sent::Failed(f) => f,
        }
    }
}

/// Write the request on `conn` and read the final response head.
async fn exchange(
    conn: &mut Conn,
    parts: &http::request::Parts,
    body: &mut Body,
) -> Result<ResponseHead, Sent> {
    write_request(conn, parts, body).await?;
    loop {
        match wasmgate_h1::parse_response(&mut conn.buf, &RESPONSE_HEAD, &parts.method) {
            // Interim answers (100 Continue, 103 Early Hints) are not relayed.
            Ok(Some(head)) if head.status.is_informational() => continue,
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(e) => {
                return Err(Sent::Failed(Failure::Exchange(
                    format!("invalid response head: {}", e.reason()).into(),
                )));
            }
        }
        let unanswered = conn.buf.is_empty();
        match conn.fill().await {
            Ok(0) if unanswered => {
                return Err(Sent::Unanswered(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before responding",
                )));
            }
            Ok(0) => {
                return Err(Sent::Failed(
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection mid-head",
                    )
                    .into(),
                ));
            }
            Ok(_) => {}
            Err(e) if unanswered => return Err(Sent::Unanswered(e)),
            Err(e) => return Err(Sent::Failed(e.into())),
        }
    }
}

/// Write the request head and body: `Content-Length` when the length is known, chunked when
/// not (RFC 9112 §6.1, §7.1).
async fn write_request(
    conn: &mut Conn,
    parts: &http::request::Parts,
    body: &mut Body,
) -> Result<(), Sent> {
    let out = &mut conn.out;
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    wire::fields(out, &parts.headers);
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(wire::content_length);
    let chunked = match (declared, body.size_hint().exact()) {
        (Some(_), _) => false,
        (None, Some(0)) => {
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            false
        }
        (None, Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            false
        }
        (None, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    out.extend_from_slice(b"\r\n");
    let framing = match chunked {
        true => wire::Framing::Chunked,
        false => wire::Framing::Length(declared.or(body.size_hint().exact()).unwrap_or(0)),
    };
    match wire::write_body(&mut conn.io, &mut conn.out, body, framing).await {
        Ok(()) => Ok(()),
        Err(wire::WriteError::Io(e)) => Err(Sent::Unanswered(e)),
        // The client's failure (or its body over the limit) keeps its type for the answer.
        Err(wire::WriteError::Body(e)) => Err(Sent::Failed(Failure::Exchange(e))),
        Err(wire::WriteError::Length) => Err(Sent::Failed(Failure::Exchange(
            "the request body does not match its content-length".into(),
        ))),
    }
}

/// The most recently returned idle connection to `key` that is still open.
fn checkout(pool: &Mutex<Pool>, key: &Key) -> Option<Conn> {
    let mut pool = lock(pool);
    let list = pool.idle.get_mut(key)?;
    while let Some(idle) = list.pop() {
        if idle.since.elapsed() < key.idle && !idle.conn.is_stale() {
            return Some(idle.conn);
        }
    }
    None
}

/// A new connection: TCP with `TCP_NODELAY`.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, Failure> {
    let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => return Err(Failure::Connect(e)),
        Err(_) => {
            return Err(Failure::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} took longer than {timeout:?}"),
            )));
        }
    };
    io.set_nodelay(true).map_err(Failure::Connect)?;
    Ok(Conn {
        io,
        buf: BytesMut::with_capacity(READ_SIZE),
        out: Vec::with_capacity(1024),
    })
}

/// Where a connection goes back to.
struct Back {
    pool: Shared,
    key: Key,
}

impl Back {
    fn give(self, conn: Conn) {
        let start_reaper = {
            let mut pool = lock(&self.pool);
            pool.idle.entry(self.key).or_default().push(Idle {
                conn,
                since: Instant::now(),
            });
            !std::mem::replace(&mut pool.reaping, true)
        };
        if start_reaper {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(reap(self.pool));
                }
                // No runtime to time them out on: keep nothing idle.
                Err(_) => {
                    let mut pool = lock(&self.pool);
                    pool.idle.clear();
                    pool.reaping = false;
                }
            }
        }
    }
}

/// Close the pool's connections idle past their key's `idle`; ends when none is left idle.
async fn reap(pool: Shared) {
    loop {
        let now = Instant::now();
        let next = {
            let mut pool = lock(&pool);
            let mut next: Option<Instant> = None;
            pool.idle.retain(|key, list| {
                list.retain(|idle| {
                    let due = idle.since + key.idle;
                    if due <= now {
                        return false;
                    }
                    next = Some(next.map_or(due, |next| next.min(due)));
                    true
                });
                !list.is_empty()
            });
            if next.is_none() {
                pool.reaping = false;
            }
            next
        };
        match next {
            Some(next) => tokio::time::sleep_until(next).await,
            None => return,
        }
    }
}

/// How a response body is framed on the upstream connection.
enum Framing {
    /// Bytes still to come.
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    UntilClose,
}

/// A response body read from a pooled connection as it is pulled.
struct OwnBody {
    /// `None` once the body has ended.
    conn: Option<Conn>,
    framing: Framing,
    /// Where the connection goes when the body ends, if it may be reused.
    back: Option<Back>,
}

impl OwnBody {
    /// The body ended: the connection goes back to its pool, unless the upstream sent more
    /// than it framed.
    fn finish(&mut self) {
        if let (Some(conn), Some(back)) = (self.conn.take(), self.back.take())
            && conn.buf.is_empty()
        {
            back.give(conn);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = usize::try_from(*left)
                        .map_or(conn.buf.len(), |left| left.min(conn.buf.len()));
                    let data = conn.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Some(Chunk::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Chunk::End(trailers))) => {
                        self.finish();
                        return Poll::Ready(
                            (!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers))),
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Framing::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Length(_) | Framing::UntilClose => {}
            }
            match std::task::ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.framing, Framing::UntilClose) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(
                        "the upstream closed the connection mid-body".into()
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

/// An upstream response's body: from the request path's own client (which gives the connection
/// back once the body is read to its end) or from hyper's.
pub struct ResponseBody {
    inner: Inner,
}

enum Inner {
    Hyper(Incoming),
    Own(OwnBody),
}

impl ResponseBody {
    pub(super) fn plain(inner: Incoming) -> ResponseBody {
        ResponseBody {
            inner: Inner::Hyper(inner),
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("own", &matches!(self.inner, Inner::Own(_)))
            .finish_non_exhaustive()
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            Inner::Own(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(body) => body.is_end_stream(),
            Inner::Own(body) => body.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(body) => body.size_hint(),
            Inner::Own(OwnBody { conn: None, .. }) => SizeHint::with_exact(0),
            Inner::Own(OwnBody {
                framing: Framing::Length(n),
                ..
            }) => SizeHint::with_exact(*n),
            Inner::Own(_) => SizeHint::default(),
        }
    }
}
