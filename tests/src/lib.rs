//! Test harness: real upstream hyper servers on 127.0.0.1:0, the real gateway on 127.0.0.1:0
//! with real `.wasm` filters, and a plain HTTP/1.1 client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wasmgate::{Config, RunningGateway};

pub use wasmgate_artifacts::{FILTERS_DIR, filter};

mod config;
pub use config::{Filter, GatewayConfig, Route};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// How a programmable upstream answers: `(status, JSON text)` from the request and its body.
type RespondFn = dyn Fn(&Seen, &[u8]) -> (u16, String) + Send + Sync;
type Responder = Arc<RespondFn>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Send test logs to the test's captured output (`RUST_LOG=debug cargo test` to see them).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: u64,
}

/// A real HTTP upstream on 127.0.0.1:0.
///
/// - `GET /bytes/{n}` streams `n` bytes back in 64 KiB chunks.
/// - anything else answers JSON describing the request (`upstream`, `method`, `path`,
///   `headers`, `body` up to 64 KiB, `body_len`), after the configured delay.
///
/// Bodies are read frame by frame and never held whole, so huge uploads cost no memory here.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_with_delay(name, Duration::ZERO).await
    }

    pub async fn start_with_delay(name: &str, delay: Duration) -> Upstream {
        Self::start_inner(name, delay, None).await
    }

    /// An upstream that answers with `respond(request, body)`: `(status, JSON text)`.
    pub async fn start_fn(
        name: &str,
        delay: Duration,
        respond: impl Fn(&Seen, &[u8]) -> (u16, String) + Send + Sync + 'static,
    ) -> Upstream {
        Self::start_inner(name, delay, Some(Arc::new(respond))).await
    }

    async fn start_inner(name: &str, delay: Duration, responder: Option<Responder>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (name_owned, seen2, hits2) = (name.to_string(), seen.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (name, seen, hits) = (name_owned.clone(), seen2.clone(), hits2.clone());
                let responder = responder.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (name, seen, hits) = (name.clone(), seen.clone(), hits.clone());
                        let responder = responder.clone();
                        async move {
                            let respond = responder.as_deref();
                            Ok::<_, Infallible>(
                                upstream_handle(req, &name, delay, &seen, &hits, respond).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            seen,
            hits,
        }
    }

    /// Base URL for the gateway config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn upstream_handle(
    req: Request<Incoming>,
    name: &str,
    delay: Duration,
    seen: &Mutex<Vec<Seen>>,
    hits: &AtomicUsize,
    responder: Option<&RespondFn>,
) -> Response<TestBody> {
    hits.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let mut kept = Vec::new();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            body_len += data.len() as u64;
            if kept.len() < 64 << 10 {
                kept.extend_from_slice(&data);
            }
        }
    }
    let this = Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body_len,
    };
    seen.lock().unwrap().push(this.clone());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(respond) = responder {
        let (status, body) = respond(&this, &kept);
        return Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap();
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return Response::new(RepeatBody::new(n).boxed_unsync());
    }
    let mut headers = BTreeMap::<String, Vec<String>>::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let echo = json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&kept),
        "body_len": body_len,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(full(echo.to_string()))
        .unwrap()
}

/// A body of `n` bytes of `x`, produced 64 KiB at a time with an exact size hint.
pub struct RepeatBody {
    remaining: u64,
    chunk: Bytes,
}

impl RepeatBody {
    pub fn new(n: u64) -> Self {
        Self {
            remaining: n,
            chunk: Bytes::from(vec![b'x'; 64 << 10]),
        }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An address nothing listens on: connections are refused.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The gateway under test, started from config text (or a [`GatewayConfig`]). `listen`,
/// `filters_dir` and `admin` are filled in (127.0.0.1:0, the built filters, an admin endpoint
/// on 127.0.0.1:0) unless the config sets them.
pub struct TestGateway {
    pub running: RunningGateway,
    client: Client<HttpConnector, TestBody>,
}

impl TestGateway {
    pub async fn start(config_toml: &str) -> TestGateway {
        init_logs();
        // Top-level keys go before any table, so the defaults are written first.
        let given: toml::Table = config_toml
            .parse()
            .unwrap_or_else(|e| panic!("test config is not TOML: {e}\n---\n{config_toml}"));
        let mut text = String::new();
        if !given.contains_key("listen") {
            text.push_str("listen = \"127.0.0.1:0\"\n");
        }
        if !given.contains_key("filters_dir") {
            text.push_str(&format!("filters_dir = {FILTERS_DIR:?}\n"));
        }
        if !given.contains_key("admin") {
            text.push_str("admin = { listen = \"127.0.0.1:0\" }\n");
        }
        // The access log is on by default, to stdout; tests that look at it configure it.
        if !given.contains_key("access_log") {
            text.push_str("access_log = { enabled = false }\n");
        }
        text.push_str(config_toml);
        let config = Config::parse(&text).unwrap_or_else(|errors| {
            let lines: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
            panic!("test config is invalid:\n{}\n---\n{text}", lines.join("\n"))
        });
        let running = RunningGateway::start(config, None)
            .await
            .expect("gateway starts");
        Self::from_running(running)
    }

    /// Wrap an already started gateway.
    pub fn from_running(running: RunningGateway) -> TestGateway {
        TestGateway {
            running,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// GET a JSON document from the admin endpoint.
    pub async fn admin(&self, path: &str) -> Value {
        let addr = self.running.admin_addr.expect("admin endpoint enabled");
        let req = Request::get(format!("http://{addr}{path}"))
            .body(full(""))
            .unwrap();
        let r = self.send(req).await;
        assert!(
            r.status.is_success(),
            "admin {path}: {} {}",
            r.status,
            r.text()
        );
        r.json()
    }

    /// The admin endpoint's entry for filter `name`.
    pub async fn admin_filter(&self, name: &str) -> Value {
        let filters = self.admin("/filters").await;
        filters
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no filter {name} in {filters}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    /// Send a request and read the whole response.
    pub async fn send(&self, req: Request<TestBody>) -> TestResponse {
        let resp = self.client.request(req).await.expect("gateway answers");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request("GET", path, &[], "").await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> TestResponse {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(full(body.to_string())).unwrap()).await
    }

    /// Send a request and return the streaming response (for large downloads).
    pub async fn send_streaming(&self, req: Request<TestBody>) -> Response<Incoming> {
        self.client.request(req).await.expect("gateway answers")
    }
}

/// A whole response.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A gateway started from a config file in its own temp directory, with its own filters
/// directory (`<dir>/filters`) and compile cache (`<dir>/cache`), for reload tests.
pub struct FileGateway {
    pub gw: TestGateway,
    pub dir: std::path::PathBuf,
}

impl std::ops::Deref for FileGateway {
    type Target = TestGateway;
    fn deref(&self) -> &TestGateway {
        &self.gw
    }
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> std::path::PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("wasmgate-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("filters")).unwrap();
    dir
}

impl FileGateway {
    /// Install `filters` (`(name in the filters dir, built filter)`), write the config and start.
    pub async fn start(
        dir: std::path::PathBuf,
        config_body: &str,
        filters: &[(&str, &str)],
    ) -> FileGateway {
        init_logs();
        for (name, built) in filters {
            std::fs::copy(
                filter(built),
                dir.join("filters").join(format!("{name}.wasm")),
            )
            .unwrap();
        }
        let fg = Self::write_config_in(&dir, config_body);
        let config = Config::load(&fg).unwrap_or_else(|e| panic!("{e}"));
        let running = RunningGateway::start(config, Some(fg))
            .await
            .expect("gateway starts");
        FileGateway {
            gw: TestGateway::from_running(running),
            dir,
        }
    }

    fn write_config_in(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
        let path = dir.join("gateway.toml");
        let quiet = if body.contains("access_log") {
            ""
        } else {
            "access_log = { enabled = false }\n"
        };
        let admin = if body.contains("[admin]") {
            ""
        } else {
            "admin = { listen = \"127.0.0.1:0\" }\n"
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\nfilters_dir = \"filters\"\ncache_dir = \"cache\"\n{admin}{quiet}{body}"
        );
        // Atomic, as editors save: write aside, then rename over.
        let tmp = dir.join(".gateway.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// Replace the config file (listen, filters_dir, cache_dir and admin are kept; admin is
    /// the body's own when it has an `[admin]` table).
    pub fn write_config(&self, body: &str) {
        Self::write_config_in(&self.dir, body);
    }

    /// Path of filter `name` in the filters dir.
    pub fn filter_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join("filters").join(format!("{name}.wasm"))
    }

    /// Install built filter `built` as `name` by writing aside and renaming over.
    pub fn install_by_rename(&self, name: &str, built: &str) {
        let tmp = self.dir.join(format!(".{name}.wasm.tmp"));
        std::fs::copy(filter(built), &tmp).unwrap();
        std::fs::rename(&tmp, self.filter_path(name)).unwrap();
    }

    /// Install built filter `built` as `name` by copying over it in place (truncate, write),
    /// as a plain `cp` does.
    pub fn install_by_copy(&self, name: &str, built: &str) {
        std::fs::copy(filter(built), self.filter_path(name)).unwrap();
    }

    /// Write raw bytes over filter `name`, in place.
    pub fn write_filter_bytes(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.filter_path(name), bytes).unwrap();
    }

    /// Stop the gateway, keeping its directory (for restart tests).
    pub async fn stop(self) -> std::path::PathBuf {
        self.gw.running.stop().await;
        self.dir
    }
}

/// Poll `check` every 5 ms until it returns `Some`, or panic after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Send `req` over TLS to `addr` with SNI `server_name`, trusting only `roots`, offering
/// `alpn`: over HTTP/2 when the server picks `h2`, else HTTP/1.1. `Err` when the handshake
/// fails (an untrusted certificate, a name it does not cover).
pub async fn send_over_tls<B>(
    addr: SocketAddr,
    server_name: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
    req: Request<B>,
) -> Result<Response<Incoming>, String>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let resp = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await
    };
    resp.map_err(|e| e.to_string())
}

/// A real `redis-server` (Debian's package) on a free port of 127.0.0.1, without persistence;
/// killed when dropped.
pub struct Redis {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl Redis {
    /// Start one on a free port.
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Redis::start_on(port)
    }

    /// Start one on `port` (again, after [`Redis::stop`]), and wait until it answers PING.
    pub fn start_on(port: u16) -> Redis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs Debian's redis-server)");
        let redis = Redis {
            child: Some(child),
            port,
        };
        let started = std::time::Instant::now();
        while !redis.ping() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        conn.write_all(b"PING\r\n").is_ok()
            && conn.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// Stop it (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gateway in its own OS process (`gateway-process`), from config text; killed when dropped.
pub struct GatewayProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl GatewayProcess {
    /// Start `bin` (a test's `env!("CARGO_BIN_EXE_gateway-process")`) on this config, with
    /// `listen`, `filters_dir`, `admin` and `access_log` filled in (127.0.0.1:0, the built
    /// filters, off, off).
    pub fn start(bin: &str, config_toml: &str) -> GatewayProcess {
        use std::io::BufRead;
        let dir = temp_dir("process");
        let mut text = format!(
            "listen = \"127.0.0.1:0\"\nfilters_dir = {FILTERS_DIR:?}\nadmin = {{ enabled = false }}\naccess_log = {{ enabled = false }}\n"
        );
        text.push_str(config_toml);
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let mut child = std::process::Command::new(bin)
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting gateway-process");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("gateway-process did not start: {line:?}"));
        GatewayProcess {
            child,
            addr,
            _dir: dir,
        }
    }

    /// `http://ADDR/path`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
