//! WebSocket through the gateway with a real client and server (tungstenite): the handshake
//! runs the route's request filters, then messages flow both ways until a side closes or the
//! connection idles out.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wasmgate_tests::TestGateway;

/// A WebSocket server that answers each text message with `echo: <text>`, and `push` with three
/// messages of its own.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str() == "push" => {
                            for i in 0..3 {
                                let _ = ws.send(Message::text(format!("pushed {i}"))).await;
                            }
                        }
                        Message::Text(t) => {
                            let _ = ws.send(Message::text(format!("echo: {t}"))).await;
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

async fn gateway(idle: &str) -> TestGateway {
    let up = echo_server().await;
    TestGateway::start(&format!(
        r#"
[server]
websocket_idle_timeout = "{idle}"

[services.ws]
upstreams = ["{up}"]

[[routes]]
name = "guarded"
prefix = "/guarded"
service = "ws"
filters = [{{ name = "deny", config = {{ status = 403, unless_header = "x-pass" }} }}]

[[routes]]
name = "ws"
prefix = "/"
service = "ws"
"#
    ))
    .await
}

fn ws_url(gw: &TestGateway, path: &str) -> String {
    format!("ws://{}{path}", gw.running.addr)
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
        .expect("the socket is open")
        .expect("a valid frame");
    msg.into_text().unwrap().to_string()
}

#[tokio::test]
async fn messages_flow_both_ways_through_the_gateway() {
    let gw = gateway("30s").await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(ws_url(&gw, "/chat"))
        .await
        .expect("handshake through the gateway");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(next_text(&mut ws).await, format!("echo: hello {i}"));
    }
    ws.send(Message::text("push")).await.unwrap();
    for i in 0..3 {
        assert_eq!(next_text(&mut ws).await, format!("pushed {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_request_filter_may_refuse_the_handshake() {
    let gw = gateway("30s").await;
    let refused = tokio_tungstenite::connect_async(ws_url(&gw, "/guarded")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    let mut req = ws_url(&gw, "/guarded").into_client_request().unwrap();
    req.headers_mut().insert("x-pass", "1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("allowed");
    ws.send(Message::text("in")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "echo: in");
}

#[tokio::test]
async fn an_idle_socket_is_closed_after_the_idle_timeout() {
    let gw = gateway("1s").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&gw, "/idle"))
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "echo: ping");
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the gateway closes an idle socket");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "no message was due: {end:?}"
    );
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "closed after {idle:?}"
    );
}

/// RFC 8441: a WebSocket over an HTTP/2 stream (extended CONNECT), to the same HTTP/1.1
/// upstream; a filter refuses the handshake the same way.
#[tokio::test]
async fn websockets_ride_http2_streams_too() {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let gw = gateway("30s").await;
    let tcp = tokio::net::TcpStream::connect(gw.running.addr)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let connect = |path: &str, pass: bool| {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}{path}", gw.running.addr))
            .header("sec-websocket-version", "13");
        if pass {
            req = req.header("x-pass", "1");
        }
        let mut req = req.body(Empty::<Bytes>::new()).unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    // One plain request first, so the server's settings (extended CONNECT on) have arrived.
    let plain = http::Request::get(format!("http://{}/", gw.running.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    send.send_request(plain).await.unwrap();

    let refused = send.send_request(connect("/guarded", false)).await.unwrap();
    assert_eq!(refused.status(), 403);

    let mut resp = send.send_request(connect("/chat", false)).await.unwrap();
    assert_eq!(resp.status(), 200, "an HTTP/2 WebSocket opens with 200");
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let stream = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(stream),
        Role::Client,
        None,
    )
    .await;
    for i in 0..3 {
        ws.send(Message::text(format!("over h2 {i}")))
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .unwrap()
            .unwrap();
        assert_eq!(
            msg.into_text().unwrap().as_str(),
            format!("echo: over h2 {i}")
        );
    }
    ws.close(None).await.unwrap();

    // The same connection serves another stream meanwhile.
    let again = send.send_request(connect("/guarded", true)).await.unwrap();
    assert_eq!(again.status(), 200);
}
