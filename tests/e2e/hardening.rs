//! The client side, byte by byte: request smuggling vectors and size limits are refused before
//! anything reaches the upstream; slow clients are cut off; shutdown drains in-flight requests.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmgate_tests::{GatewayConfig, Route, TestGateway, Upstream};

/// Send raw bytes, read until the gateway closes or 3 s pass; the response text.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status(response: &str) -> &str {
    response.get(9..12).unwrap_or("none")
}

/// One route, `/` to `up`.
fn all_to(up: &Upstream) -> GatewayConfig {
    GatewayConfig::new()
        .service("svc", &[up.url()])
        .route(Route::prefix("all", "/").service("svc"))
}

async fn gateway(up: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[server]
max_header_bytes = 16384
max_headers = 50
header_read_timeout = "500ms"
max_request_body_bytes = 1000

[services.svc]
upstreams = ["{}"]

[[routes]]
name = "buffered"
prefix = "/buffered"
service = "svc"
filters = [{{ name = "body-rewrite", config = {{ via = "gw" }} }}]

[[routes]]
name = "stream"
prefix = "/"
service = "svc"
"#,
        up.url()
    ))
    .await
}

#[tokio::test]
async fn smuggling_vectors_and_oversized_requests_are_refused_before_the_upstream() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let addr = gw.running.addr;
    let big_header = format!("x-big: {}\r\n", "a".repeat(20_000));
    let many_headers: String = (0..60).map(|i| format!("x-h{i}: v\r\n")).collect();
    let long_target = format!("/{}", "p".repeat(20_000));
    let cases: Vec<(&str, String, &str)> = vec![
        ("conflicting content-length", "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde".into(), "400"),
        ("invalid content-length", "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4x\r\n\r\nabcd".into(), "400"),
        ("transfer-encoding that is not chunked", "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nabcd".into(), "400"),
        ("malformed chunked body", "POST /buffered HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".into(), "400"),
        ("obsolete line folding", "GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n".into(), "400"),
        ("invalid header name", "GET / HTTP/1.1\r\nhost: x\r\nbad header: 1\r\n\r\n".into(), "400"),
        ("control character in a header value", "GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x01b\r\n\r\n".into(), "400"),
        ("header section too large", format!("GET / HTTP/1.1\r\nhost: x\r\n{big_header}\r\n"), "431"),
        ("too many headers", format!("GET / HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n"), "431"),
        ("request line too long", format!("GET {long_target} HTTP/1.1\r\nhost: x\r\n\r\n"), "431"),
        ("body over server.max_request_body_bytes", format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n{}", "b".repeat(2000)), "413"),
        ("an HTTP/1.1 request without Host", "GET / HTTP/1.1\r\n\r\n".into(), "400"),
        ("two Host headers", "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n".into(), "400"),
        ("two Host headers on HTTP/1.0", "GET / HTTP/1.0\r\nhost: a\r\nHost: b\r\n\r\n".into(), "400"),
        ("request target over server.max_uri_bytes", format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "p".repeat(9000)), "414"),
    ];
    for (what, request, expected) in cases {
        let response = raw(addr, request.as_bytes()).await;
        assert_eq!(status(&response), expected, "{what}: {response:.200}");
    }
    assert_eq!(up.hits(), 0, "no bad request reached the upstream");

    // A well-formed request on the same listener is served.
    let ok = raw(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&ok), "200", "{ok}");
}

/// A chunked body that turns out malformed while it streams to the upstream is the client's
/// fault: 400, not a 502 that blames the upstream. HTTP/1.0 needs no Host.
#[tokio::test]
async fn a_malformed_streamed_body_is_a_bad_request_and_http_1_0_needs_no_host() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let addr = gw.running.addr;
    let malformed = raw(
        addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status(&malformed), "400", "{malformed:.300}");
    assert!(malformed.contains("bad request"), "{malformed:.300}");

    let old = raw(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&old), "200", "{old:.300}");
}

/// RFC 9112 lets a server resolve these (transfer-encoding wins); a gateway refuses them, because
/// another hop may have read the other framing. Each is refused wherever it appears on a
/// keep-alive connection, and the connection is closed so nothing after it is read.
#[tokio::test]
async fn ambiguous_framing_is_refused_even_after_requests_on_the_same_connection() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let fine = "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\n\
                POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nwxyz";
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let ambiguous = [
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd",
    ];
    for (i, bad) in ambiguous.iter().enumerate() {
        let response = raw(gw.running.addr, format!("{fine}{bad}{smuggled}").as_bytes()).await;
        let statuses: Vec<&str> = response
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| &response[at + 9..at + 12])
            .collect();
        assert_eq!(statuses, ["200", "200", "400"], "case {i}: {response}");
        assert_eq!(
            up.hits(),
            2 * (i + 1),
            "case {i}: only the well-formed requests arrive"
        );
    }
    assert!(
        up.seen().iter().all(|r| r.path != "/smuggled"),
        "nothing after a refused request is read"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let up = Upstream::start("svc").await;
    let gw = all_to(&up)
        .set(
            "server",
            json!({"idle_timeout": "400ms", "header_read_timeout": "5s"}),
        )
        .start()
        .await;
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), "200");
    // A request within the idle timeout keeps the connection, and the idle time counts again
    // from its response, not from the connection's start.
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), "200");
    let idle = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection stayed open: {closed:?}"
    );
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(300) && after < Duration::from_millis(1500),
        "closed after {after:?}, not at the 400 ms idle timeout"
    );
}

#[tokio::test]
async fn connections_over_max_connections_wait_until_one_closes() {
    let up = Upstream::start("svc").await;
    let gw = all_to(&up)
        .set("server", json!({"max_connections": 2}))
        .start()
        .await;
    let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), "200");
        open.push(s);
    }
    // The third connection is accepted by the kernel but not served while two are open.
    let mut third = TcpStream::connect(gw.running.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(waited.is_err(), "a third connection was served: {waited:?}");
    assert_eq!(up.hits(), 2);

    drop(open.pop());
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), "200");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let mut slow = TcpStream::connect(gw.running.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let cut = tokio::spawn(async move {
        // One header byte every 100 ms: never a complete head.
        for _ in 0..50 {
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => assert!(
                    !String::from_utf8_lossy(&buf[..n]).contains(" 200 "),
                    "slowloris was served"
                ),
                Err(_) => {}
            }
        }
        started.elapsed()
    });
    for _ in 0..5 {
        assert_eq!(
            gw.get("/fine").await.status,
            200,
            "normal clients are served meanwhile"
        );
    }
    let took = cut.await.unwrap();
    assert!(
        took < Duration::from_secs(2),
        "the slow client was cut off after {took:?}, not at the 500 ms header timeout"
    );
    assert_eq!(up.hits(), 5);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(600)).await;
    let gw = all_to(&slow).start().await;
    let addr = gw.running.addr;
    let url = gw.url("/in-flight");
    let in_flight = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        client.get(url.parse().unwrap()).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let TestGateway { running, .. } = gw;
    let stopping = tokio::spawn(running.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are refused once stopping"
    );
    assert_eq!(
        in_flight
            .await
            .unwrap()
            .expect("in-flight request completes"),
        200
    );
    stopping.await.unwrap();
}

/// HTTP/2 (h2c with prior knowledge here) is served with the same header budget as HTTP/1: a
/// header list over `server.max_header_bytes` never reaches the upstream.
#[tokio::test]
async fn http2_requests_get_the_same_header_budget() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let tcp = TcpStream::connect(gw.running.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |big: Option<String>| {
        let mut req = http::Request::get("http://x/h2");
        if let Some(value) = big {
            req = req.header("x-big", value);
        }
        req.body(Empty::<bytes::Bytes>::new()).unwrap()
    };
    let ok = send.send_request(get(None)).await.unwrap();
    assert_eq!(
        (ok.version(), ok.status().as_u16()),
        (http::Version::HTTP_2, 200)
    );
    let big = send.send_request(get(Some("a".repeat(20_000)))).await;
    assert!(
        big.as_ref().map_or(true, |r| r.status() != 200),
        "a 20 KB header list passed: {:?}",
        big.map(|r| r.status())
    );
    assert_eq!(up.hits(), 1, "only the small request reached the upstream");
}

/// An answer to HEAD carries no body over HTTP/2 either, whoever made it (here the gateway's
/// own 404): a body there is a protocol error that fails the client's stream.
#[tokio::test]
async fn head_over_http2_gets_headers_only() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        "[services.svc]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"get\"\nprefix = \"/get\"\nmethods = [\"GET\"]\nservice = \"svc\"\n",
        up.url()
    ))
    .await;
    let tcp = TcpStream::connect(gw.running.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for path in ["/nowhere", "/get"] {
        let req = http::Request::head(format!("http://x{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let length: usize = resp.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(length > 0, "the length of the body a GET would get");
        let body = resp.into_body().collect().await.expect("a clean stream");
        assert!(body.to_bytes().is_empty());
    }
}

/// A request body refused unread leaves the next request's place on the connection unknown:
/// the answer says the connection closes, and nothing after the body is served.
#[tokio::test]
async fn a_refused_body_closes_the_connection_and_says_so() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let started = Instant::now();
    let request = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n{}GET /after HTTP/1.1\r\nhost: x\r\n\r\n",
        "b".repeat(2000)
    );
    let response = raw(gw.running.addr, request.as_bytes()).await;
    assert_eq!(status(&response), "413", "{response:.300}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response:.300}"
    );
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response:.500}");
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
    assert_eq!(up.hits(), 0);
}
