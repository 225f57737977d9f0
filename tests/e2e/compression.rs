//! `compress = true` routes: the coding follows the client's `Accept-Encoding`, the body
//! streams through the encoder, and responses that should not be compressed are not.

use std::convert::Infallible;
use std::time::Duration;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use wasmgate_tests::{TestGateway, TestResponse};

/// `n` bytes of JSON-like text.
fn text(n: usize) -> Vec<u8> {
    let unit = br#"{"id":"o-42","item":"Bombe","total":1939},"#;
    unit.iter().copied().cycle().take(n).collect()
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An upstream whose path says what it answers.
async fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(answer(req.uri().path()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn answer(path: &str) -> Response<UpBody> {
    let full = |body: Vec<u8>| http_body_util::Full::new(Bytes::from(body)).boxed();
    let ok = |content_type: &str| Response::builder().header("content-type", content_type);
    match path {
        "/small" => ok("application/json").body(full(text(100))),
        "/png" => ok("image/png").body(full(text(4096))),
        "/encoded" => ok("text/plain")
            .header("content-encoding", "gzip")
            .body(full(text(4096))),
        "/no-transform" => ok("text/plain")
            .header("cache-control", "public, no-transform")
            .body(full(text(4096))),
        "/etag" => ok("text/html; charset=utf-8")
            .header("etag", "\"v1\"")
            .body(full(text(4096))),
        "/stream" => {
            // Three pieces, no content-length: chunked.
            let pieces = futures_util::stream::unfold(0, |i| async move {
                if i == 3 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
                let frame = Frame::data(Bytes::from(text(20_000)));
                Some((Ok::<_, Infallible>(frame), i + 1))
            });
            ok("text/plain").body(StreamBody::new(pieces).boxed())
        }
        _ => ok("application/json").body(full(text(64 << 10))),
    }
    .unwrap()
}

async fn gateway() -> TestGateway {
    let up = upstream().await;
    TestGateway::start(&format!(
        r#"
[services.svc]
upstreams = ["{up}"]

[[routes]]
name = "plain"
prefix = "/plain"
strip_prefix = true
service = "svc"

[[routes]]
name = "compressed"
prefix = "/"
service = "svc"
compress = true
"#
    ))
    .await
}

async fn get(gw: &TestGateway, path: &str, accept: Option<&str>) -> TestResponse {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept-encoding", a)).into_iter().collect();
    gw.request("GET", path, &headers, "").await
}

async fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => GzipDecoder::new(body).read_to_end(&mut out).await,
        "br" => BrotliDecoder::new(body).read_to_end(&mut out).await,
        "zstd" => ZstdDecoder::new(body).read_to_end(&mut out).await,
        other => panic!("unexpected coding {other}"),
    }
    .unwrap();
    out
}

#[tokio::test]
async fn each_coding_round_trips_and_the_client_rating_decides() {
    let gw = gateway().await;
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("br;q=1.0, zstd;q=0.9, gzip", "br"),
        ("br;q=0.5, zstd;q=0, gzip;q=0.8", "gzip"),
    ] {
        let r = get(&gw, "/json", Some(accept)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(coding), "for {accept}");
        assert_eq!(r.header("vary"), Some("accept-encoding"));
        assert_eq!(r.header("content-length"), None);
        assert!(
            r.body.len() < 8 << 10,
            "64 KiB of repetitive JSON compressed to {}",
            r.body.len()
        );
        assert_eq!(
            decode(coding, &r.body).await,
            text(64 << 10),
            "for {accept}"
        );
    }
}

#[tokio::test]
async fn a_streamed_body_is_compressed_as_it_streams() {
    let gw = gateway().await;
    let r = get(&gw, "/stream", Some("gzip")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body).await, text(20_000).repeat(3));
}

#[tokio::test]
async fn what_should_not_be_compressed_is_sent_as_is() {
    let gw = gateway().await;
    // No acceptable coding: identity, but caches learn the answer varies.
    for accept in [None, Some("identity"), Some("gzip;q=0")] {
        let r = get(&gw, "/json", accept).await;
        assert_eq!(r.header("content-encoding"), None, "{accept:?}");
        assert_eq!(r.header("vary"), Some("accept-encoding"));
        assert_eq!(r.body.as_ref(), text(64 << 10));
    }
    for path in ["/small", "/png", "/no-transform", "/plain/json"] {
        let r = get(&gw, path, Some("gzip")).await;
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert_eq!(r.header("vary"), None, "{path}");
    }
    let encoded = get(&gw, "/encoded", Some("br")).await;
    assert_eq!(
        encoded.header("content-encoding"),
        Some("gzip"),
        "left as the upstream encoded it"
    );
    assert_eq!(encoded.body.as_ref(), text(4096));

    let head = gw
        .request("HEAD", "/json", &[("accept-encoding", "gzip")], "")
        .await;
    assert_eq!(head.header("content-encoding"), None);
}

#[tokio::test]
async fn a_strong_etag_becomes_weak_when_the_bytes_change() {
    let gw = gateway().await;
    let r = get(&gw, "/etag", Some("gzip")).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    let plain = get(&gw, "/etag", None).await;
    assert_eq!(plain.header("etag"), Some("\"v1\""));
}
