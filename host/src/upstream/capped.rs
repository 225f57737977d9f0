//! A connector that holds a service's `max_connections` cap: each connection takes a permit for
//! its whole life; when none is free, at most `max_pending` requests wait for one (up to the
//! connect timeout) and the rest fail at once. A request waiting here still takes an idle
//! pooled connection as soon as one is returned: the client races its pool against this.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::BoxError;

/// The connector of every upstream pool; `cap` is set for services with `max_connections`.
#[derive(Clone)]
pub(super) struct Capped {
    pub inner: HttpsConnector<HttpConnector<super::discovery::Pinned>>,
    pub cap: Option<Arc<ConnectionCap>>,
    pub wait: Duration,
}

/// A service's connection cap and the requests waiting under it.
#[derive(Debug)]
pub(super) struct ConnectionCap {
    permits: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
    max_pending: usize,
    pending: std::sync::atomic::AtomicUsize,
}

impl ConnectionCap {
    pub(super) fn new(max_connections: usize, max_pending: Option<usize>) -> ConnectionCap {
        ConnectionCap {
            permits: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            max_connections,
            max_pending: max_pending.unwrap_or(usize::MAX),
            pending: Default::default(),
        }
    }
}

/// The cap was reached and the request could not wait.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct ConnectionLimit(pub String);

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

impl tower_service::Service<http::Uri> for Capped {
    type Response = CappedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CappedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let (cap, wait) = (self.cap.clone(), self.wait);
        Box::pin(async move {
            let permit = match cap {
                Some(cap) => Some(permit(&cap, wait).await?),
                None => None,
            };
            Ok(CappedIo {
                io: connecting.await?,
                _permit: permit,
            })
        })
    }
}

/// A connection permit: at once, else after waiting as one of at most `max_pending`.
async fn permit(cap: &ConnectionCap, wait: Duration) -> Result<OwnedSemaphorePermit, BoxError> {
    if let Ok(permit) = cap.permits.clone().try_acquire_owned() {
        return Ok(permit);
    }
    let (max_connections, max_pending) = (cap.max_connections, cap.max_pending);
    let waiting = cap.pending.fetch_add(1, Ordering::Relaxed) + 1;
    let _left = Decrement(&cap.pending);
    if waiting > max_pending {
        return Err(Box::new(ConnectionLimit(format!(
            "max_connections = {max_connections} open and max_pending = {max_pending} waiting"
        ))));
    }
    match tokio::time::timeout(wait, cap.permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(Box::new(ConnectionLimit(format!(
            "max_connections = {max_connections} open; none freed within {wait:?}"
        )))),
    }
}

struct Decrement<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection and, for capped services, its permit.
pub(super) struct CappedIo {
    io: Stream,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Connection for CappedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for CappedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CappedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
