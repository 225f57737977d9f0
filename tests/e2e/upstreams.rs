//! Upstreams over HTTPS and HTTP/2: verification on by default against the bundled roots or a
//! service's `ca_file`, SNI from the upstream's host, a client certificate for mutual TLS,
//! `tls_verify = false`, and `protocol = "h2"` (TLS, ALPN) and `"h2c"` (prior knowledge).
//! The upstreams are real TLS and HTTP/2 servers made here; certificates are made with rcgen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use wasmgate_tests::{TestGateway, temp_dir};

use crate::tls::Ca;

/// What an upstream reports about each request: the HTTP version it came over, the SNI name
/// of its TLS connection and whether the gateway presented a client certificate.
fn describe(
    version: http::Version,
    sni: Option<String>,
    client_cert: bool,
) -> Response<Full<Bytes>> {
    let body = json!({
        "version": format!("{version:?}"),
        "sni": sni,
        "client_cert": client_cert,
    });
    Response::new(Full::new(Bytes::from(body.to_string())))
}

/// An HTTPS upstream for `localhost` signed by `ca`, offering `alpn`; when `clients` is given,
/// it requires a client certificate signed by it.
async fn tls_upstream(ca: &Ca, dir: &Path, alpn: &[&[u8]], clients: Option<&Ca>) -> SocketAddr {
    let (cert, key) = ca.leaf(dir, "upstream", &["localhost"], false);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(clients.der()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake (unknown CA, no client certificate) ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                let sni = conn.server_name().map(str::to_string);
                let client_cert = conn.peer_certificates().is_some();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let sni = sni.clone();
                    async move { Ok::<_, Infallible>(describe(req.version(), sni, client_cert)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A cleartext upstream that speaks HTTP/2 only (prior knowledge): HTTP/1.1 fails on it.
async fn h2c_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(describe(req.version(), None, false))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A gateway with one route per service, `/<service>/` going to service `<service>`.
async fn gateway(services: &[(&str, String)]) -> TestGateway {
    let mut text = String::new();
    for (name, table) in services {
        text.push_str(&format!(
            "[services.{name}]\n{table}\n\n[[routes]]\nname = \"{name}\"\nprefix = \"/{name}/\"\nservice = \"{name}\"\n\n"
        ));
    }
    TestGateway::start(&text).await
}

fn path_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn https_upstreams_are_verified_by_default_and_get_the_upstream_host_as_sni() {
    let dir = temp_dir("upstream-tls");
    let ca = Ca::new();
    let addr = tls_upstream(&ca, &dir, &[b"http/1.1"], None).await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let url = format!("https://localhost:{}", addr.port());
    let gw = gateway(&[
        (
            "trusted",
            format!("upstreams = [\"{url}\"]\nca_file = {}", path_str(&ca_file)),
        ),
        // The bundled web roots do not know the test CA.
        ("untrusted", format!("upstreams = [\"{url}\"]")),
        (
            "unverified",
            format!("upstreams = [\"{url}\"]\ntls_verify = false"),
        ),
    ])
    .await;

    let r = gw.get("/trusted/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["sni"], "localhost");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["client_cert"], false);

    let r = gw.get("/untrusted/x").await;
    assert_eq!(r.status, 502, "an unknown issuer is refused");
    assert_eq!(r.json()["error"]["message"], "upstream unavailable");
    assert!(
        !r.text().contains("certificate"),
        "no detail leaks: {}",
        r.text()
    );

    let r = gw.get("/unverified/x").await;
    assert_eq!(r.status, 200, "tls_verify = false accepts it: {}", r.text());
}

#[tokio::test]
async fn a_client_certificate_is_presented_for_mutual_tls() {
    let dir = temp_dir("upstream-mtls");
    let ca = Ca::new();
    let clients = Ca::new();
    let addr = tls_upstream(&ca, &dir, &[b"http/1.1"], Some(&clients)).await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = clients.leaf(&dir, "gateway", &["gateway.test"], false);
    let url = format!("https://localhost:{}", addr.port());
    let gw = gateway(&[
        (
            "mtls",
            format!(
                "upstreams = [\"{url}\"]\nca_file = {}\nclient_cert = {}\nclient_key = {}",
                path_str(&ca_file),
                path_str(&cert),
                path_str(&key)
            ),
        ),
        (
            "anonymous",
            format!("upstreams = [\"{url}\"]\nca_file = {}", path_str(&ca_file)),
        ),
    ])
    .await;

    let r = gw.get("/mtls/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["client_cert"], true);

    let r = gw.get("/anonymous/x").await;
    assert_eq!(r.status, 502, "the upstream requires a client certificate");
}

#[tokio::test]
async fn services_speak_http2_over_tls_and_in_cleartext() {
    let dir = temp_dir("upstream-h2");
    let ca = Ca::new();
    let h2 = tls_upstream(&ca, &dir, &[b"h2"], None).await;
    let h2c = h2c_upstream().await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let gw = gateway(&[
        (
            "h2",
            format!(
                "upstreams = [\"https://localhost:{}\"]\nprotocol = \"h2\"\nca_file = {}",
                h2.port(),
                path_str(&ca_file)
            ),
        ),
        (
            "h2c",
            format!("upstreams = [\"http://{h2c}\"]\nprotocol = \"h2c\""),
        ),
        // Without `protocol`, HTTP/1.1 is spoken, which an HTTP/2-only upstream refuses.
        ("plain", format!("upstreams = [\"http://{h2c}\"]")),
    ])
    .await;

    for name in ["h2", "h2c"] {
        // Several requests, so the second and later reuse the pooled HTTP/2 connection.
        for _ in 0..3 {
            let r = gw.get(&format!("/{name}/x")).await;
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            assert_eq!(r.json()["version"], "HTTP/2.0", "{name}");
        }
    }
    assert_eq!(gw.get("/plain/x").await.status, 502);
}

#[test]
fn transport_settings_are_checked_with_their_place() {
    let dir = temp_dir("upstream-config");
    let missing = dir.join("missing.pem");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases: [(String, &str); 6] = [
        (
            format!(
                "upstreams = [\"https://a.test\"]\nca_file = {}",
                path_str(&missing)
            ),
            "4:11: service \"s\": ",
        ),
        (
            format!(
                "upstreams = [\"https://a.test\"]\nca_file = {}",
                path_str(&not_pem)
            ),
            "no certificate in the file",
        ),
        (
            "upstreams = [\"http://a.test\"]\nprotocol = \"h2\"".into(),
            "4:12: service \"s\": protocol \"h2\" is HTTP/2 over TLS and needs https:// upstreams",
        ),
        (
            "upstreams = [\"https://a.test\"]\nprotocol = \"h3\"".into(),
            "expected \"http1\", \"h2\" or \"h2c\"",
        ),
        (
            "upstreams = [\"http://a.test\"]\ntls_verify = false".into(),
            "4:14: service \"s\": tls_verify applies to https:// upstreams only",
        ),
        (
            "upstreams = [\"https://a.test\"]\nclient_cert = \"c.pem\"".into(),
            "client_cert needs client_key",
        ),
    ];
    for (table, expected) in cases {
        let text = format!("\n[services.s]\n{table}\n");
        check_refused(&text, expected);
    }
    // gRPC-Web needs an HTTP/2 upstream.
    check_refused(
        "[services.s]\nupstreams = [\"http://a.test\"]\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nservice = \"s\"\ngrpc_web = true\n",
        "7:12: route \"r\": grpc_web needs a gRPC upstream: give service \"s\" protocol = \"h2\" or \"h2c\"",
    );
    // A missing file is named, with why.
    let text = format!(
        "[services.s]\nupstreams = [\"https://a.test\"]\nca_file = {}\n",
        path_str(&missing)
    );
    let errors = format!("{:?}", wasmgate::Config::parse(&text).err().unwrap());
    assert!(errors.contains("missing.pem: cannot read"), "{errors}");
}

/// `text` is refused with a problem containing `expected`.
fn check_refused(text: &str, expected: &str) {
    let errors = match wasmgate::Config::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => errors
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
}

/// An upstream that speaks only HTTP/1.0: it reads one request, answers it (with a
/// `Content-Length`, or without one and ended by closing) and closes the connection.
async fn http10_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer: &[u8] = if head.windows(6).any(|w| w == b"/sized") {
                    b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\nsized, 1.0\n"
                } else {
                    b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nread until close, 1.0\n"
                };
                let _ = conn.write_all(answer).await;
            });
        }
    });
    addr
}

/// An HTTP/1.0 upstream's answers reach an HTTP/1.1 client as HTTP/1.1, framed by the gateway,
/// on a connection that stays open for the next request.
#[tokio::test]
async fn an_http10_upstreams_answer_is_reframed_as_http11_and_keeps_the_connection() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let old = http10_upstream().await;
    let gw = gateway(&[("old", format!("upstreams = [\"http://{old}\"]"))]).await;
    let stream = tokio::net::TcpStream::connect(gw.running.addr)
        .await
        .unwrap();
    let mut conn = BufReader::new(stream);
    for (path, body) in [
        ("/old/sized", "sized, 1.0\n"),
        ("/old/unsized", "read until close, 1.0\n"),
        ("/old/sized", "sized, 1.0\n"),
    ] {
        conn.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut status = String::new();
        conn.read_line(&mut status).await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK\r\n", "{path}");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            headers.push(line.to_ascii_lowercase());
        }
        assert!(
            !headers.iter().any(|h| h.starts_with("connection: close")),
            "{path}: {headers:?}"
        );
        let received = if let Some(len) = headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
        {
            let mut body = vec![0; len.trim().parse().unwrap()];
            conn.read_exact(&mut body).await.unwrap();
            String::from_utf8(body).unwrap()
        } else {
            assert!(
                headers.contains(&"transfer-encoding: chunked\r\n".to_string()),
                "{path}: an unsized body is chunked: {headers:?}"
            );
            let mut body = String::new();
            loop {
                let mut size = String::new();
                conn.read_line(&mut size).await.unwrap();
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk).await.unwrap();
                if size == 0 {
                    break;
                }
                body.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
            }
            body
        };
        assert_eq!(received, body, "{path}");
    }
}

/// An HTTP/1.1 upstream scripted per path, for the request path's own client: an interim 100
/// before the answer, a chunked body with trailers, a response framed two ways at once, and a
/// keep-alive connection it closes while the gateway holds it idle. Counts its connections.
async fn scripted_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let answer: &[u8] = if head.contains("/interim") {
                        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ninterim"
                    } else if head.contains("/chunked") {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
                    } else if head.contains("/ambiguous") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nidle"
                    };
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                    if head.contains("/then-close") {
                        // Keep-alive as far as the gateway knows; closed while idle.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The request path's own HTTP/1.1 client follows RFC 9112's framing: interim answers are not
/// relayed, chunked bodies (extensions, trailers) arrive whole, a response framed both by
/// length and by chunks is refused (502), and a pooled connection the upstream closed while
/// idle is noticed and replaced, not answered with an error.
#[tokio::test]
async fn the_own_upstream_client_frames_responses_as_rfc_9112_says() {
    let (up, accepted) = scripted_upstream().await;
    let gw = gateway(&[("raw", format!("upstreams = [\"http://{up}\"]"))]).await;

    let interim = gw.get("/raw/interim").await;
    assert_eq!(
        (interim.status.as_u16(), &interim.body[..]),
        (200, &b"interim"[..])
    );
    let chunked = gw.get("/raw/chunked").await;
    assert_eq!(
        (chunked.status.as_u16(), &chunked.body[..]),
        (200, &b"hello world"[..])
    );
    let ambiguous = gw.get("/raw/ambiguous").await;
    assert_eq!(ambiguous.status.as_u16(), 502, "{:?}", ambiguous.body);

    let before = accepted.load(Ordering::SeqCst);
    assert_eq!(gw.get("/raw/then-close").await.status.as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let again = gw.get("/raw/plain").await;
        assert_eq!(
            (again.status.as_u16(), &again.body[..]),
            (200, &b"idle"[..])
        );
    }
    assert!(
        accepted.load(Ordering::SeqCst) > before,
        "the closed connection was replaced by a new one"
    );
}
