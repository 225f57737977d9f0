//! A guard between the client socket and hyper's HTTP/1 parser.
//!
//! hyper resolves two ambiguous framings itself, as RFC 9112 §6.1 allows a server to: when a
//! request carries both `Content-Length` and `Transfer-Encoding` it uses the chunked framing and
//! drops the length, and it collapses repeated equal `Content-Length` lines into one. A gateway
//! must refuse both instead: some other hop in front of or behind it may have read the other
//! framing, which is how requests are smuggled. Likewise a request with more than one `Host`,
//! or an HTTP/1.1 request with none (RFC 9112 §3.2). The headers hyper hands over no longer show the
//! ambiguity, so this guard reads the raw request heads, following each request's body framing
//! to find the next head on a keep-alive connection, and replaces a refused head with one hyper
//! answers with `400 Bad Request` before closing the connection.
//!
//! It also times each request head from its first byte (`server.header_read_timeout`, against
//! slowloris clients), leaving hyper's own timer to bound how long an idle keep-alive connection
//! may wait for its next request (`server.idle_timeout`).
//!
//! Anything the guard cannot follow (HTTP/2, upgrades, input hyper rejects anyway) is passed
//! through untouched for the rest of the connection; hyper stays the parser of record.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What hyper reads in place of a refused head: a request it answers with 400, then closes.
const REFUSED: &[u8] = b"GET / HTTP/1.1\r\ncontent-length: refused\r\n\r\n";

/// Longest chunk-size line or trailer section followed; longer is left to hyper.
const MAX_LINE: usize = 16 << 10;

/// Header lines parsed on the stack; a head with more is parsed with a heap buffer.
const STACK_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Bytes of a `Content-Length` body still to come.
    Body(u64),
    /// Waiting for a chunk-size line.
    ChunkSize,
    /// Bytes of the current chunk still to come, its closing CRLF included.
    ChunkData(u64),
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// No longer followed: everything goes to hyper as it arrives.
    Passthrough,
    /// A head was refused: [`REFUSED`] goes to hyper, then end of stream.
    Refused,
}

/// Limits the guard applies; see [`crate::config::Server`].
#[derive(Debug, Clone, Copy)]
pub struct Guarding {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub head_timeout: Duration,
}

/// Wraps a client connection; see the module documentation.
pub struct FramingGuard<T> {
    io: T,
    /// Read from the socket and not yet handed to hyper.
    rx: BytesMut,
    /// How many leading bytes of `rx` have been followed and may be handed over.
    ready: usize,
    state: State,
    limits: Guarding,
    /// Running while a request head is partly received.
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    client: SocketAddr,
}

impl<T> FramingGuard<T> {
    pub fn new(io: T, client: SocketAddr, limits: Guarding) -> Self {
        Self {
            io,
            rx: BytesMut::new(),
            ready: 0,
            state: State::Head,
            limits,
            head_deadline: None,
            client,
        }
    }

    /// Follow as much of `rx` as possible; true when `ready` or the state moved.
    fn follow(&mut self) -> bool {
        debug_assert_eq!(self.ready, 0);
        match self.state {
            State::Head => self.follow_head(),
            State::Body(left) => {
                let n = self.take(left);
                self.state = if n == left {
                    State::Head
                } else {
                    State::Body(left - n)
                };
                true
            }
            State::ChunkData(left) => {
                let n = self.take(left);
                self.state = if n == left {
                    State::ChunkSize
                } else {
                    State::ChunkData(left - n)
                };
                true
            }
            State::ChunkSize => match httparse::parse_chunk_size(&self.rx) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    self.ready = used;
                    self.state = State::Trailers;
                    true
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    self.ready = used;
                    self.state = State::ChunkData(size.saturating_add(2));
                    true
                }
                Ok(httparse::Status::Partial) if self.rx.len() <= MAX_LINE => false,
                _ => self.pass_through(),
            },
            State::Trailers => match self.rx.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line = &self.rx[..end];
                    if line.is_empty() || line == b"\r" {
                        self.state = State::Head;
                    }
                    self.ready = end + 1;
                    true
                }
                None if self.rx.len() <= MAX_LINE => false,
                None => self.pass_through(),
            },
            State::Passthrough => {
                self.ready = self.rx.len();
                true
            }
            State::Refused => false,
        }
    }

    /// Mark up to `left` buffered body bytes ready; how many.
    fn take(&mut self, left: u64) -> u64 {
        let n = left.min(self.rx.len() as u64);
        self.ready = n as usize;
        n
    }

    fn follow_head(&mut self) -> bool {
        if self.head_deadline.is_none() {
            self.head_deadline = Some(Box::pin(tokio::time::sleep(self.limits.head_timeout)));
        }
        let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
        let mut heap;
        let headers: &mut [httparse::Header<'_>] = if self.limits.max_headers <= STACK_HEADERS {
            &mut stack[..self.limits.max_headers]
        } else {
            heap = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
            &mut heap
        };
        let mut req = httparse::Request::new(headers);
        let len = match req.parse(&self.rx) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if self.rx.len() <= self.limits.max_head_bytes => {
                return false;
            }
            // Too large, too many headers, or malformed: hyper refuses those itself.
            _ => return self.pass_through(),
        };
        self.head_deadline = None;
        let (mut lengths, mut encodings, mut chunked, mut upgrade) = (0, 0, false, false);
        let (mut length, mut hosts) = (None, 0);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                encodings += 1;
                // Only the last coding decides whether the body is chunked.
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if lengths > 0 && encodings > 0 {
            return self.refuse("both Content-Length and Transfer-Encoding");
        }
        if lengths > 1 {
            return self.refuse("more than one Content-Length");
        }
        // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without a Host, and to
        // any request with more than one (hops may pick different ones to route by).
        if hosts > 1 {
            return self.refuse("more than one Host");
        }
        if hosts == 0 && req.version == Some(1) {
            return self.refuse("an HTTP/1.1 request without Host");
        }
        self.ready = len;
        self.state = match (req.method, encodings, length) {
            _ if upgrade => State::Passthrough,
            (Some("CONNECT"), _, _) => State::Passthrough,
            (_, 0, None) if lengths == 0 => State::Head,
            (_, 0, Some(0)) => State::Head,
            (_, 0, Some(n)) => State::Body(n),
            (_, _, _) if chunked && encodings > 0 => State::ChunkSize,
            // A non-chunked coding or an invalid length: hyper answers 400.
            _ => State::Passthrough,
        };
        true
    }

    fn pass_through(&mut self) -> bool {
        self.state = State::Passthrough;
        self.head_deadline = None;
        self.ready = self.rx.len();
        true
    }

    fn refuse(&mut self, why: &str) -> bool {
        tracing::warn!(client = %self.client, "refused a request: {why}");
        self.rx.clear();
        self.rx.extend_from_slice(REFUSED);
        self.ready = REFUSED.len();
        self.state = State::Refused;
        self.head_deadline = None;
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.rx[..n]);
                this.rx.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Refused {
                return Poll::Ready(Ok(()));
            }
            if !this.rx.is_empty() && this.follow() {
                continue;
            }
            if this.rx.is_empty() && out.remaining() > 0 {
                // Nothing buffered: body bytes and untracked streams go straight to hyper.
                match this.state {
                    State::Passthrough => return Pin::new(&mut this.io).poll_read(cx, out),
                    State::Body(left) | State::ChunkData(left) => {
                        let limit = usize::try_from(left)
                            .unwrap_or(usize::MAX)
                            .min(out.remaining());
                        let mut part = out.take(limit);
                        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
                        let n = part.filled().len();
                        // SAFETY: `part` was filled with `n` initialized bytes of `out`'s
                        // unfilled region.
                        unsafe { out.assume_init(n) };
                        out.advance(n);
                        if n > 0 {
                            this.state = match this.state {
                                State::Body(l) if l == n as u64 => State::Head,
                                State::Body(l) => State::Body(l - n as u64),
                                State::ChunkData(l) if l == n as u64 => State::ChunkSize,
                                State::ChunkData(l) => State::ChunkData(l - n as u64),
                                other => other,
                            };
                        }
                        return Poll::Ready(Ok(()));
                    }
                    _ => {}
                }
            }
            this.rx.reserve(8 << 10);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rx) {
                Poll::Ready(Ok(0)) => {
                    // End of stream: whatever is left is hyper's to judge.
                    if this.rx.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    this.pass_through();
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if let Some(deadline) = &mut this.head_deadline
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        tracing::debug!(client = %this.client, "request head not received in time");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not received in time",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Guarding = Guarding {
        max_head_bytes: 64 << 10,
        max_headers: 100,
        head_timeout: Duration::from_secs(5),
    };

    /// What hyper would read when a client sends `input` in pieces of `step` bytes.
    pub async fn through(input: &[u8], step: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // The guard stops reading after a refusal; later writes may fail.
            for piece in input.chunks(step) {
                if client.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = client.shutdown().await;
        });
        let mut guard = FramingGuard::new(server, "127.0.0.1:1".parse().unwrap(), LIMITS);
        let mut out = Vec::new();
        guard.read_to_end(&mut out).await.unwrap();
        drop(guard);
        writer.await.unwrap();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::through;
    use super::*;

    #[tokio::test]
    async fn well_formed_requests_pass_unchanged_whatever_the_pieces() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
            5;ext=1\r\nwor\r\n\r\n0\r\nx-trailer: 1\r\n\r\n\
            \r\nGET /c HTTP/1.1\r\nhost: x\r\n\r\n\
            PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        for step in [1, 3, 7, 64, stream.len()] {
            assert_eq!(through(stream, step).await, stream, "in pieces of {step}");
        }
    }

    #[tokio::test]
    async fn ambiguous_or_hostless_heads_are_replaced_wherever_they_appear() {
        let first = b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
            3\r\nabc\r\n0\r\n\r\n";
        for bad in [
            &b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
        ] {
            let input = [&first[..], bad, b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"].concat();
            for step in [1, 5, input.len()] {
                let out = through(&input, step).await;
                assert_eq!(out, [&first[..], REFUSED].concat(), "in pieces of {step}");
            }
        }
    }
}

#[cfg(test)]
mod properties {
    use super::tests_support::through;
    use proptest::prelude::*;

    /// A well-formed request: a content-length body or a chunked one, any bytes inside.
    fn request() -> impl Strategy<Value = Vec<u8>> {
        let body = proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            body.clone().prop_map(|b| {
                [
                    format!(
                        "POST /l HTTP/1.1\r\nhost: x\r\nContent-Length: {}\r\n\r\n",
                        b.len()
                    )
                    .into_bytes(),
                    b,
                ]
                .concat()
            }),
            proptest::collection::vec(body, 0..4).prop_map(|chunks| {
                let mut r =
                    b"PUT /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    r.extend(format!("{:x}\r\n", c.len()).into_bytes());
                    r.extend(c);
                    r.extend(b"\r\n");
                }
                r.extend(b"0\r\n\r\n");
                r
            }),
            Just(b"GET /g HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_sequence_of_well_formed_requests_passes_unchanged(
            requests in proptest::collection::vec(request(), 1..6),
            step in 1usize..200,
        ) {
            let input = requests.concat();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            prop_assert_eq!(rt.block_on(through(&input, step)), input);
        }

        /// Whatever came before on the connection, an HTTP/1.1 head without exactly one Host is
        /// replaced and nothing after it is read.
        #[test]
        fn a_head_without_exactly_one_host_ends_any_sequence(
            before in proptest::collection::vec(request(), 0..4),
            hosts in prop_oneof![Just(0usize), 2usize..4],
            step in 1usize..200,
        ) {
            let good = before.concat();
            let bad_head = format!(
                "GET /bad HTTP/1.1\r\n{}\r\n",
                "host: x\r\n".repeat(hosts)
            );
            let input = [&good[..], bad_head.as_bytes(), b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n"].concat();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let out = rt.block_on(through(&input, step));
            prop_assert_eq!(out, [&good[..], super::REFUSED].concat());
        }
    }
}
