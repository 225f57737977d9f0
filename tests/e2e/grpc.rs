//! gRPC through the gateway with real tonic clients and servers (the standard health service:
//! a unary call and a server stream): trailers pass intact, gateway-side failures answer as
//! gRPC statuses (HTTP 200, trailers-only), a filter refuses a call as UNAUTHENTICATED,
//! `grpc-timeout` caps the upstream wait, and gRPC-Web (binary through tonic-web's client,
//! text by hand) reaches the gRPC upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_layer::Layer;
use wasmgate_tests::{TestGateway, dead_addr};

/// A tonic health server on 127.0.0.1:0: `""` and `"svc"` serving; the reporter changes them.
async fn health_server() -> (SocketAddr, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("svc", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // tonic's service on hyper's HTTP/2 server (tonic's own router would pull in axum).
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, reporter)
}

/// An HTTP/2 upstream that never answers in time.
async fn slow_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

const KEY: &str = "grpc-s3cret";

/// Health calls go to the health server; `/guarded/` needs an API key (the bundled
/// auth-apikey filter); `/down.` and `/slow.` services are dead and late.
async fn gateway(health: SocketAddr) -> TestGateway {
    let hash = format!("sha256:{:x}", Sha256::digest(KEY.as_bytes()));
    TestGateway::start(&format!(
        r#"
[services.health]
upstreams = ["http://{health}"]
protocol = "h2c"

[services.down]
upstreams = ["http://{down}"]
protocol = "h2c"

[services.slow]
upstreams = ["http://{slow}"]
protocol = "h2c"

[[routes]]
name = "guarded"
prefix = "/guarded/"
strip_prefix = true
service = "health"
[[routes.filters]]
name = "auth-apikey"
[routes.filters.config]
keys = [{{ hash = "{hash}", consumer = "grpc-client" }}]

[[routes]]
name = "health"
prefix = "/grpc.health.v1.Health/"
service = "health"
grpc_web = true

[[routes]]
name = "down"
prefix = "/down.Health/"
service = "down"

[[routes]]
name = "slow"
prefix = "/slow.Health/"
service = "slow"
"#,
        down = dead_addr().await,
        slow = slow_server().await,
    ))
    .await
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A health check sent to `path`, with `metadata`.
async fn check_at(
    channel: Channel,
    path: &'static str,
    service: &str,
    metadata: &[(&'static str, &'static str)],
) -> Result<HealthCheckResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(|r| r.into_inner())
}

const CHECK: &str = "/grpc.health.v1.Health/Check";

#[tokio::test]
async fn unary_and_streaming_calls_pass_with_their_statuses() {
    let (health, reporter) = health_server().await;
    let gw = gateway(health).await;
    let mut client = HealthClient::new(channel(gw.running.addr).await);

    let ok = client
        .check(HealthCheckRequest {
            service: "svc".into(),
        })
        .await
        .unwrap();
    assert_eq!(ok.get_ref().status, WireStatus::Serving as i32);

    // The upstream's own error status and message arrive as the upstream sent them.
    let direct = HealthClient::new(channel(health).await)
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    let through = client
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(through.code(), Code::NotFound);
    assert_eq!(
        (through.code(), through.message()),
        (direct.code(), direct.message())
    );

    // A server stream: each update arrives as it is sent.
    let mut watch = client
        .watch(HealthCheckRequest {
            service: "svc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, WireStatus::Serving as i32);
    reporter
        .set_service_status("svc", ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the update streams through")
        .unwrap()
        .unwrap();
    assert_eq!(second.status, WireStatus::NotServing as i32);
}

#[tokio::test]
async fn successful_calls_keep_their_trailers() {
    let (health, _reporter) = health_server().await;
    let gw = gateway(health).await;
    let (status, headers, frames, trailers) = raw_call(gw.running.addr, CHECK, "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    // One message: SERVING (field 1, varint 1).
    assert_eq!(frames, vec![0, 0, 0, 0, 2, 0x08, 0x01]);
    let trailers = trailers.expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
}

/// One unary call over HTTP/2 with prior knowledge, by hand: the status, headers, body bytes
/// and trailers as the client receives them.
async fn raw_call(
    addr: SocketAddr,
    path: &str,
    timeout: &str,
) -> (u16, http::HeaderMap, Vec<u8>, Option<http::HeaderMap>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if !timeout.is_empty() {
        req = req.header("grpc-timeout", timeout);
    }
    // An empty HealthCheckRequest: one uncompressed message of length 0.
    let req = req
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (
        parts.status.as_u16(),
        parts.headers,
        collected.to_bytes().to_vec(),
        trailers,
    )
}

#[tokio::test]
async fn gateway_failures_answer_as_grpc_statuses() {
    let (health, _reporter) = health_server().await;
    let gw = gateway(health).await;
    let channel = channel(gw.running.addr).await;

    let no_route = check_at(channel.clone(), "/nope.Health/Check", "", &[])
        .await
        .unwrap_err();
    assert_eq!(no_route.code(), Code::Unimplemented);
    assert_eq!(no_route.message(), "no route matches this request");

    let down = check_at(channel.clone(), "/down.Health/Check", "", &[])
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    assert_eq!(down.message(), "upstream unavailable");

    // The client's deadline, not the route's 30 s, bounds the wait. By hand: tonic's client
    // would enforce the same deadline itself and answer CANCELLED first.
    let started = Instant::now();
    let (status, headers, _, _) = raw_call(gw.running.addr, "/slow.Health/Check", "300m").await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(headers["grpc-message"], "upstream timed out");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // On the wire: HTTP 200, the status in the headers, no JSON body.
    let (status, headers, body, _) = raw_call(gw.running.addr, "/down.Health/Check", "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "14");
    assert!(body.is_empty(), "{body:?}");
}

#[tokio::test]
async fn a_filter_refuses_a_call_as_unauthenticated() {
    let (health, _reporter) = health_server().await;
    let gw = gateway(health).await;
    let channel = channel(gw.running.addr).await;
    let path = "/guarded/grpc.health.v1.Health/Check";

    let refused = check_at(channel.clone(), path, "", &[]).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(refused.message(), "HTTP 401 Unauthorized");
    // The filter's own headers stay.
    assert_eq!(
        refused.metadata().get("www-authenticate").unwrap(),
        "ApiKey header=\"x-api-key\""
    );

    let allowed = check_at(channel, path, "", &[("x-api-key", KEY)])
        .await
        .unwrap();
    assert_eq!(allowed.status, WireStatus::Serving as i32);
}

#[tokio::test]
async fn grpc_web_clients_reach_the_grpc_upstream() {
    let (health, _reporter) = health_server().await;
    let gw = gateway(health).await;

    // Binary gRPC-Web over HTTP/1.1, through tonic-web's client.
    let http1 = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let web = tonic_web::GrpcWebClientLayer::new().layer(http1);
    let origin: http::Uri = format!("http://{}", gw.running.addr).parse().unwrap();
    let mut client = HealthClient::with_origin(web, origin);
    let ok = client
        .check(HealthCheckRequest {
            service: "svc".into(),
        })
        .await
        .unwrap();
    assert_eq!(ok.get_ref().status, WireStatus::Serving as i32);
    let missing = client
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Text: base64, sent as two separately padded chunks, as browsers may.
    let chunks = format!(
        "{}{}",
        STANDARD.encode([0u8, 0]),
        STANDARD.encode([0u8, 0, 0])
    );
    assert_eq!(chunks, "AAA=AAAA");
    let resp = gw
        .send(
            Request::post(gw.url(CHECK))
                .header("content-type", "application/grpc-web-text")
                .header("accept", "application/grpc-web-text")
                .body(wasmgate_tests::full(chunks))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    let bytes = STANDARD.decode(resp.text()).unwrap();
    // The message (SERVING), then the trailers frame.
    assert_eq!(&bytes[..7], &[0, 0, 0, 0, 2, 0x08, 0x01]);
    assert_eq!(bytes[7], 0x80);
    let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let block = std::str::from_utf8(&bytes[12..12 + len]).unwrap();
    assert!(block.contains("grpc-status:0\r\n"), "{block:?}");
    assert_eq!(bytes.len(), 12 + len);

    // Broken base64 is the client's fault.
    let bad = gw
        .send(
            Request::post(gw.url(CHECK))
                .header("content-type", "application/grpc-web-text")
                .body(wasmgate_tests::full("A!!A"))
                .unwrap(),
        )
        .await;
    assert_eq!(bad.header("grpc-status"), Some("13"), "{:?}", bad.status);
}
