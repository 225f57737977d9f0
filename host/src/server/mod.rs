//! Listeners and serving threads: one `SO_REUSEPORT` listener, event loop and upstream pool per
//! worker thread, a connection cap shared by all, HTTP/1.1 on the gateway's own path ([`h1`])
//! and the rest through hyper behind the framing guard, and a graceful drain on stop.

#[cfg(test)]
mod differential;
mod framing;
mod h1;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use self::framing::{FramingGuard, Guarding};
use crate::config;
use crate::proxy::Proxy;
use crate::tls;

/// Run by each serving thread just before it goes idle (see [`set_worker_park_hook`]).
static WORKER_PARK_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Have every serving thread started from now on call `hook` just before it goes idle (tokio's
/// `on_thread_park`). The binary returns its allocator's free memory there. Set once; later
/// calls are ignored.
pub fn set_worker_park_hook(hook: fn()) {
    let _ = WORKER_PARK_HOOK.set(hook);
}

/// How long in-flight requests get to finish after a stop.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The serving threads; they stop and drain when [`Workers::stop`] is called or this is
/// dropped.
pub struct Workers {
    /// The address every worker listens on.
    pub addr: SocketAddr,
    /// The HTTPS address, when there is one.
    pub tls_addr: Option<SocketAddr>,
    /// How many serving threads run.
    pub count: usize,
    stop: tokio::sync::watch::Sender<bool>,
    exited: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Workers {
    /// Bind `listen` once per worker (port 0 picks one free port for all) and serve `proxy`
    /// on each.
    pub fn start(
        listen: SocketAddr,
        https: Option<(SocketAddr, tls::Acceptor)>,
        server: config::Server,
        proxy: Arc<Proxy>,
    ) -> anyhow::Result<Workers> {
        let count = server.worker_count();
        let listeners = bind(listen, count).with_context(|| format!("binding {listen}"))?;
        let addr = listeners[0].local_addr()?;
        let (mut tls_listeners, acceptor) = match https {
            Some((tls_listen, acceptor)) => {
                let bound =
                    bind(tls_listen, count).with_context(|| format!("binding {tls_listen}"))?;
                (bound.into_iter().map(Some).collect(), Some(acceptor))
            }
            None => ((0..count).map(|_| None).collect::<Vec<_>>(), None),
        };
        let tls_addr = match tls_listeners.first() {
            Some(Some(l)) => Some(l.local_addr()?),
            _ => None,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let connections = Arc::new(tokio::sync::Semaphore::new(server.max_connections));
        let mut exited = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (proxy, connections, mut stopped) =
                (proxy.clone(), connections.clone(), stopped.clone());
            let tls_listener = tls_listeners[i].take();
            let (acceptor, mut tls_stopped) = (acceptor.clone(), stopped.clone());
            let (done, exit) = tokio::sync::oneshot::channel::<()>();
            exited.push(exit);
            std::thread::Builder::new()
                .name(format!("wasmgate-worker-{i}"))
                .spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    runtime.enable_all();
                    if let Some(&hook) = WORKER_PARK_HOOK.get() {
                        runtime.on_thread_park(hook);
                    }
                    let runtime = runtime.build().expect("a worker runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("a listener");
                        // Stop when told, or when the Workers are dropped.
                        let shutdown = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        let https = async {
                            let (Some(l), Some(acceptor)) = (tls_listener, acceptor) else {
                                return;
                            };
                            let l = TcpListener::from_std(l).expect("a listener");
                            let shutdown = async move {
                                let _ = tls_stopped.wait_for(|stop| *stop).await;
                            };
                            let (proxy, connections) = (proxy.clone(), connections.clone());
                            serve(
                                proxy,
                                l,
                                Some(acceptor),
                                server,
                                connections,
                                shutdown,
                                DRAIN_TIMEOUT,
                            )
                            .await;
                        };
                        let http = serve(
                            proxy.clone(),
                            listener,
                            None,
                            server,
                            connections.clone(),
                            shutdown,
                            DRAIN_TIMEOUT,
                        );
                        tokio::join!(http, https);
                    });
                    drop(done);
                })
                .context("starting a worker thread")?;
        }
        Ok(Workers {
            addr,
            tls_addr,
            count,
            stop,
            exited,
        })
    }

    /// Stop accepting and wait until every worker has drained (up to [`DRAIN_TIMEOUT`]).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for exit in self.exited {
            let _ = exit.await;
        }
    }
}

/// Accept connections on `listener` until `shutdown` resolves, then stop accepting and give
/// in-flight requests up to `drain` to finish. `connections` is shared by every listener.
async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Option<tls::Acceptor>,
    server: config::Server,
    connections: Arc<tokio::sync::Semaphore>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's timer runs from idle to a complete head; the guard times the head itself.
        .header_read_timeout(server.idle_timeout)
        .max_buf_size(server.max_header_bytes)
        .max_headers(server.max_headers);
    // HTTP/2 (h2c, or ALPN h2 over TLS): the same header budget as HTTP/1, a stream cap, and
    // the bounds against rapid reset (RST_STREAM right after HEADERS) and streams the server
    // itself has to reset; CONTINUATION floods end at the header list size.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(server.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        // WebSocket over HTTP/2 (RFC 8441).
        .enable_connect_protocol();
    let guarding = Guarding {
        max_head_bytes: server.max_header_bytes,
        max_headers: server.max_headers,
        head_timeout: server.header_read_timeout,
    };
    let settings = h1::Settings {
        head: wasmgate_h1::HeadLimits {
            max_head_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
        },
        head_timeout: server.header_read_timeout,
        idle_timeout: server.idle_timeout,
    };
    // Set when draining; every connection holds a receiver until it ends.
    let (drain, draining) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Accept, then wait for a connection slot before serving: with one listener per
        // worker, a slot taken before accepting could sit on a listener the kernel sends no
        // connection to while another listener's connections wait.
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(proxy.metrics().clone());
        let (builder, draining, proxy) = (builder.clone(), draining.clone(), proxy.clone());
        let conn = Conn {
            client,
            proxy,
            builder,
            guarding,
            draining,
        };
        match &tls {
            Some(tls) => {
                // The handshake runs in the connection's task, bounded like a request head.
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(guarding.head_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            conn.hand_to_hyper(stream, true).await;
                        }
                        Ok(Ok(stream)) => conn.serve(stream, true, settings).await,
                        Ok(Err(e)) => tracing::debug!(%client, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
                    }
                    drop((permit, open));
                });
            }
            None => {
                tokio::spawn(async move {
                    conn.serve(stream, false, settings).await;
                    drop((permit, open));
                });
            }
        }
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    drop(draining);
    let _ = drain.send(true);
    if tokio::time::timeout(drain_timeout, drain.closed())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// One client connection and what serving it needs.
struct Conn {
    client: SocketAddr,
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    guarding: Guarding,
    /// Set when the server drains.
    draining: tokio::sync::watch::Receiver<bool>,
}

impl Conn {
    /// HTTP/1.1 on the gateway's own path; the rest of the connection goes to hyper when a
    /// request needs it (see [`h1`]).
    async fn serve<IO>(self, io: IO, tls: bool, settings: h1::Settings)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let (client, proxy, draining) = (self.client, self.proxy.clone(), self.draining.clone());
        h1::serve(io, client, tls, proxy, settings, draining, |io| {
            self.hand_to_hyper(io, tls)
        })
        .await;
    }

    /// Serve the connection with hyper (HTTP/2, upgrades, `Expect: 100-continue`), behind the
    /// framing guard, finishing in-flight requests when the server drains.
    async fn hand_to_hyper<IO>(mut self, io: IO, tls: bool)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let client = self.client;
        let service = proxy_service(self.proxy, client, tls);
        let stream = FramingGuard::new(io, client, self.guarding);
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            () = h1::drained(&mut self.draining) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(%client, "connection ended: {e}");
        }
    }
}

/// Counts a client connection in `wasmgate_open_connections` while it lives.
struct OpenConnection(Arc<crate::metrics::Metrics>);

impl OpenConnection {
    fn new(metrics: Arc<crate::metrics::Metrics>) -> OpenConnection {
        metrics.open_connections.inc();
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// A connection's service: each request to the proxy, with the connection's peer and whether it
/// came over TLS.
fn proxy_service(
    proxy: Arc<Proxy>,
    client: SocketAddr,
    tls: bool,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::upstream::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<crate::upstream::Body>, Infallible>>
             + Send
             + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |req| {
        let proxy = proxy.clone();
        async move {
            let req = req.map(crate::proxy::Inbound::Hyper);
            Ok::<_, Infallible>(proxy.handle(req, client, tls).await)
        }
    })
}

/// One listening socket per serving thread on `addr`, all in one `SO_REUSEPORT` group so the
/// kernel spreads connections over them; port 0 picks one free port for all. Each is handed
/// over unregistered: its worker registers it with its own runtime.
fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // SO_REUSEPORT would let a second gateway of the same user silently share the port;
        // a plain bind first makes "address in use" an error as usual.
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        addr = socket.local_addr()?;
        listeners.push(socket.listen(4096)?.into_std()?);
    }
    Ok(listeners)
}
