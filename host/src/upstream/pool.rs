//! The request path's own HTTP/1.1 connection pool, for the common upstream: plain `http://` at
//! a known IP address, no `max_connections`, no upgrade. Everything else goes through
//! hyper-util's client (TLS, HTTP/2, host names to resolve, connection caps, WebSocket).
//!
//! Why a pool of our own: per request, hyper-util's client hashes its `(scheme, authority)` key
//! with SipHash, races its pool against a lazy connect future, and for HTTP/1 spawns a task that
//! waits for the connection to be ready again before returning it. Here a connection is keyed by
//! its socket address, taken from this thread's idle list (most recently used first), and given
//! back by the response body once the body has been read to its end ([`Back`]); a body dropped
//! before its end takes the connection down with it, as hyper requires.
//!
//! Idle connections are closed after `upstream_idle` by a reaper task per pool, which runs only
//! while the pool holds idle connections. A request that finds its pooled connection closed by
//! the upstream before the request was written is sent again on another connection (hyper gives
//! the request back: nothing reached the upstream).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::Body;

/// Connections are pooled by where they go and how long they may idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub addr: SocketAddr,
    pub idle: Duration,
}

struct Idle {
    sender: SendRequest<Body>,
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
    Connect(std::io::Error),
    Exchange(hyper::Error),
}

/// Send `req` (origin-form URI, `Host` set) on a pooled connection to `key.addr`, or a new one
/// made within `connect_timeout`; the response's body gives the connection back.
pub(super) async fn send(
    key: Key,
    connect_timeout: Duration,
    mut req: Request<Body>,
) -> Result<Response<ResponseBody>, Failure> {
    let pool = LOCAL.with(Arc::clone);
    loop {
        let (mut sender, reused) = match checkout(&pool, &key) {
            Some(sender) => (sender, true),
            None => (connect(key.addr, connect_timeout).await?, false),
        };
        // A new connection takes its first request before its task has run; a reused one
        // may still be finishing its last exchange, or have been closed since.
        if reused && sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => {
                let back = Back { pool, key, sender };
                return Ok(resp.map(|body| ResponseBody::pooled(body, back)));
            }
            Err(mut e) => match e.take_message() {
                // Never written: the pooled connection had closed. Another one.
                Some(unsent) if reused => req = unsent,
                _ => return Err(Failure::Exchange(e.into_error())),
            },
        }
    }
}

/// The most recently returned idle connection to `key` that is still open.
fn checkout(pool: &Mutex<Pool>, key: &Key) -> Option<SendRequest<Body>> {
    let mut pool = lock(pool);
    let list = pool.idle.get_mut(key)?;
    while let Some(idle) = list.pop() {
        if !idle.sender.is_closed() && idle.since.elapsed() < key.idle {
            return Some(idle.sender);
        }
    }
    None
}

/// A new connection: TCP with `TCP_NODELAY`, HTTP/1.1 served by a task of its own.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<SendRequest<Body>, Failure> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::Connect(e)),
        Err(_) => {
            return Err(Failure::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} took longer than {timeout:?}"),
            )));
        }
    };
    stream.set_nodelay(true).map_err(Failure::Connect)?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(Failure::Exchange)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}

/// A connection on its way back to the pool it came from.
pub(super) struct Back {
    pool: Shared,
    key: Key,
    sender: SendRequest<Body>,
}

impl Back {
    fn give(self) {
        if self.sender.is_closed() {
            return;
        }
        let start_reaper = {
            let mut pool = lock(&self.pool);
            pool.idle.entry(self.key).or_default().push(Idle {
                sender: self.sender,
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
            // Dropping an idle connection's sender closes the connection.
            pool.idle.retain(|key, list| {
                list.retain(|idle| {
                    let due = idle.since + key.idle;
                    if due <= now || idle.sender.is_closed() {
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

/// An upstream response's body. From the pool's connections it gives the connection back once
/// read to its end.
pub struct ResponseBody {
    inner: Incoming,
    back: Option<Back>,
}

impl ResponseBody {
    pub(super) fn plain(inner: Incoming) -> ResponseBody {
        ResponseBody { inner, back: None }
    }

    fn pooled(inner: Incoming, back: Back) -> ResponseBody {
        let mut body = ResponseBody {
            inner,
            back: Some(back),
        };
        body.given_back_if_done();
        body
    }

    /// An empty body may never be polled: give the connection back as soon as the end is known.
    fn given_back_if_done(&mut self) {
        if http_body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }

    /// The connection goes back to its pool (once).
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.give();
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("pooled", &self.back.is_some())
            .finish_non_exhaustive()
    }
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(_))) => this.given_back_if_done(),
            std::task::Poll::Ready(None) => this.give_back(),
            // An error: the connection is not reused (dropping it closes it).
            std::task::Poll::Ready(Some(Err(_))) => this.back = None,
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
