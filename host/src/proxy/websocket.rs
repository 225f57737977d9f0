//! WebSocket (HTTP/1.1 `Upgrade`) pass-through: the handshake goes through the route's request
//! filters like any request; once the upstream answers 101, the gateway relays bytes both ways
//! until either side closes or neither sends anything for `server.websocket_idle_timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::upstream::Body;

/// A client's request to switch its connection to the WebSocket protocol.
pub(super) struct Handshake {
    /// Resolves to the client's connection once the gateway has answered 101.
    client: OnUpgrade,
    /// The `Upgrade` value to send upstream.
    pub protocol: HeaderValue,
}

/// The handshake in `parts`, when it is one: `GET` over HTTP/1.1 with `Connection: upgrade` and
/// `Upgrade: websocket`.
pub(super) fn take_handshake(parts: &mut Parts) -> Option<Handshake> {
    if parts.method != Method::GET || parts.version != Version::HTTP_11 {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?;
    if !protocol.as_bytes().eq_ignore_ascii_case(b"websocket")
        || !connection_upgrade(&parts.headers)
    {
        return None;
    }
    let protocol = protocol.clone();
    let client = parts.extensions.remove::<OnUpgrade>()?;
    Some(Handshake { client, protocol })
}

fn connection_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    })
}

/// The upstream accepted the switch (`resp` is its 101): answer the client with it, and relay
/// bytes between the two connections once both have switched.
pub(super) fn relay(
    mut resp: Response<Incoming>,
    handshake: Handshake,
    idle: Duration,
    request_id: Arc<str>,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(handshake.client, upstream) {
            (Ok(client), Ok(upstream)) => (TokioIo::new(client), TokioIo::new(upstream)),
            (client, upstream) => {
                let why = client.err().or(upstream.err()).map(|e| e.to_string());
                tracing::debug!(%request_id, "websocket switch failed: {why:?}");
                return;
            }
        };
        let (client_rx, client_tx) = tokio::io::split(client);
        let (upstream_rx, upstream_tx) = tokio::io::split(upstream);
        let activity = Activity::new();
        let (up, down) = tokio::join!(
            pump(client_rx, upstream_tx, &activity, idle),
            pump(upstream_rx, client_tx, &activity, idle),
        );
        tracing::debug!(%request_id, ?up, ?down, "websocket closed");
    });
    resp.map(|_| super::full(bytes::Bytes::new()))
}

/// When bytes last moved either way.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Copy `from` to `to` until `from` ends (then end `to`), either fails, or nothing moved either
/// way for `idle`.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    activity: &Activity,
    idle: Duration,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 16 << 10];
    let mut total = 0;
    let tick = idle.min(Duration::from_secs(1));
    loop {
        match tokio::time::timeout(tick, from.read(&mut buf)).await {
            Ok(Ok(0)) => {
                to.shutdown().await?;
                return Ok(total);
            }
            Ok(Ok(n)) => {
                to.write_all(&buf[..n]).await?;
                to.flush().await?;
                activity.touch();
                total += n as u64;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) if activity.idle_for() >= idle => {
                let _ = to.shutdown().await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "websocket idle timeout",
                ));
            }
            Err(_) => {}
        }
    }
}
