//! The client side, byte by byte: request smuggling vectors and size limits are refused before
//! anything reaches the upstream; slow clients are cut off; shutdown drains in-flight requests.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmgate_tests::{TestGateway, Upstream};

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

/// hyper resolves these while parsing (RFC 9112 §6.1: transfer-encoding wins, content-length is
/// dropped), before the gateway sees the headers, so it cannot be refused yet; what matters is
/// that the upstream never receives both framings.
#[tokio::test]
async fn ambiguous_framing_is_never_forwarded_as_such() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let request = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
    let response = raw(gw.running.addr, request.as_bytes()).await;
    assert_eq!(status(&response), "200", "{response}");
    let seen = &up.seen()[0];
    assert!(
        !seen.headers.contains_key("content-length"),
        "both framings reached the upstream"
    );
    assert_eq!(seen.body_len, 4, "the chunked framing was used");

    // Repeated equal content-lengths are collapsed to one the same way.
    let request = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 4\r\nconnection: close\r\n\r\nabcd";
    let response = raw(gw.running.addr, request.as_bytes()).await;
    assert_eq!(status(&response), "200", "{response}");
    let seen = &up.seen()[1];
    assert_eq!(seen.headers.get_all("content-length").iter().count(), 1);
    assert_eq!(seen.body_len, 4);
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
    let gw = TestGateway::start(&format!(
        "[services.slow]\nupstreams = [\"{}\"]\n[[routes]]\nname = \"slow\"\nprefix = \"/\"\nservice = \"slow\"\n",
        slow.url()
    ))
    .await;
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
