//! WebSocket pass-through: the handshake goes through the route's request filters like any
//! request; once the upstream answers 101, the gateway relays bytes both ways until either side
//! closes or neither sends anything for `server.websocket_idle_timeout`. Clients handshake with
//! HTTP/1.1 `Upgrade`, or over HTTP/2 with an extended CONNECT (RFC 8441), which reaches the
//! upstream as the HTTP/1.1 handshake it stands for and is answered 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::upstream::{Body, ResponseBody};

/// A client's request to switch its connection to the WebSocket protocol.
pub(super) struct Handshake {
    /// Resolves to the client's connection once the gateway has answered 101.
    client: OnUpgrade,
    /// The `Upgrade` value to send upstream.
    pub protocol: HeaderValue,
    /// The client asked over HTTP/2 (RFC 8441): it gets 200, not 101.
    http2: bool,
}

/// Marks a request that came as an HTTP/2 extended CONNECT for `websocket`.
#[derive(Clone, Copy)]
struct ExtendedConnect;

/// RFC 8441: an HTTP/2 `CONNECT` with `:protocol = websocket` becomes the `GET` handshake it
/// stands for (with a `Sec-WebSocket-Key` for the HTTP/1.1 upstream), so that routes and
/// filters see one kind of handshake.
pub(super) fn from_extended_connect(parts: &mut Parts) {
    if parts.method != Method::CONNECT || parts.version != Version::HTTP_2 {
        return;
    }
    let websocket = parts
        .extensions
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if !websocket {
        return;
    }
    parts.method = Method::GET;
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(key) = HeaderValue::from_str(&handshake_key()) {
        parts.headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    parts.extensions.insert(ExtendedConnect);
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn handshake_key() -> String {
    use base64::Engine;
    use std::hash::{BuildHasher, RandomState};
    let (a, b) = (RandomState::new(), RandomState::new());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.hash_one(Instant::now()).to_le_bytes());
    bytes[8..].copy_from_slice(&b.hash_one(Instant::now()).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The handshake in `parts`, when it is one: `GET` over HTTP/1.1 with `Connection: upgrade` and
/// `Upgrade: websocket`, or an extended CONNECT seen by [`from_extended_connect`].
pub(super) fn take_handshake(parts: &mut Parts) -> Option<Handshake> {
    let http2 = parts.extensions.remove::<ExtendedConnect>().is_some();
    if parts.method != Method::GET || (parts.version != Version::HTTP_11 && !http2) {
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
    Some(Handshake {
        client,
        protocol,
        http2,
    })
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
    mut resp: Response<ResponseBody>,
    handshake: Handshake,
    idle: Duration,
    request_id: Arc<str>,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut resp);
    let http2 = handshake.http2;
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
    if http2 {
        // RFC 8441: a 2xx opens the stream; the HTTP/1.1 handshake headers have no place.
        *resp.status_mut() = http::StatusCode::OK;
        for name in [
            header::CONNECTION,
            header::UPGRADE,
            header::SEC_WEBSOCKET_ACCEPT,
        ] {
            resp.headers_mut().remove(name);
        }
    }
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
