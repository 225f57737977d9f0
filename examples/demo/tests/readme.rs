//! Every `$ curl` line in the README, run against the demo config (demo services and gateway on
//! 127.0.0.1:0), must answer what the README shows under it.

use std::path::Path;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmgate_demo::{DemoService, catalog_descriptors, demo_certificate, start, start_catalog};
use wasmgate_tests::{FILTERS_DIR, TestGateway, temp_dir};

/// Where the README tells curl to find the demo's CA.
const README_CA: &str = "examples/demo/certs/ca.pem";

/// What an HTTPS request through the demo answered: status, headers and body.
struct Answer {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: String,
}

/// `curl --cacert ... https://localhost:8443/...`: TLS to the gateway's HTTPS listener with SNI
/// `localhost`, trusting only the demo's CA, over HTTP/2 (`--http2`) or HTTP/1.1.
async fn https_request(
    addr: SocketAddr,
    ca: &Path,
    http2: bool,
    req: http::Request<Full<Bytes>>,
) -> Answer {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let alpn: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
    let resp = wasmgate_tests::send_over_tls(addr, "localhost", roots, &[alpn], req)
        .await
        .expect("the demo's certificate is valid for localhost");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A `$ curl ...` line and the output shown under it.
struct Example {
    command: String,
    expected: Vec<String>,
}

fn readme_examples() -> Vec<Example> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let mut examples: Vec<Example> = Vec::new();
    let mut current: Option<Example> = None;
    for line in readme.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            examples.extend(current.take());
            current = Some(Example {
                command: cmd.to_string(),
                expected: Vec::new(),
            });
        } else if line.starts_with("```") {
            examples.extend(current.take());
        } else if let Some(ex) = current.as_mut() {
            ex.expected.push(line.to_string());
        }
    }
    for ex in &mut examples {
        while ex.expected.last().is_some_and(|l| l.is_empty()) {
            ex.expected.pop();
        }
    }
    examples
}

/// Split like a shell does for the simple quoting the README uses.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in command.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[tokio::test]
async fn readme_curl_lines_answer_as_shown() {
    let users = start(DemoService::Users, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let orders = start(DemoService::Orders, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let catalog = start_catalog("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let descriptors = temp_dir("demo-catalog").join("catalog.pb");
    catalog_descriptors(&descriptors).unwrap();
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml"))
            .unwrap()
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
            .replace(
                "filters_dir = \"filters\"",
                &format!("filters_dir = {FILTERS_DIR:?}"),
            )
            .replace("127.0.0.1:3001", &users.to_string())
            .replace("127.0.0.1:3002", &orders.to_string())
            .replace("127.0.0.1:3003", &catalog.to_string())
            .replace(
                "\"proto/catalog.pb\"",
                &format!("{:?}", descriptors.display().to_string()),
            )
            .replace("listen = \"127.0.0.1:8443\"", "listen = \"127.0.0.1:0\"");
    // The certificate the demo makes at startup, made here in a directory of the test's own.
    let certs = temp_dir("demo-certs");
    demo_certificate(&certs).unwrap();
    let config = config.replace("\"certs/", &format!("\"{}/", certs.display()));
    let gw = TestGateway::start(&config).await;
    let https = gw.running.tls_addr.expect("the demo serves HTTPS");

    let examples = readme_examples();
    assert!(examples.len() >= 4, "the README lost its curl examples");
    for ex in examples {
        let args = words(&ex.command);
        assert_eq!(args[0], "curl", "{}", ex.command);
        let (mut include, mut method, mut headers, mut url) =
            (false, "GET".to_string(), Vec::new(), None);
        let (mut cacert, mut http2) = (None, false);
        let mut body = String::new();
        let mut i = 1;
        while i < args.len() {
            match args[i].as_str() {
                "-s" => {}
                "-si" | "-is" | "-i" => include = true,
                "-H" => {
                    i += 1;
                    let (k, v) = args[i].split_once(':').unwrap();
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                "--cacert" => {
                    i += 1;
                    cacert = Some(args[i].clone());
                }
                "--http2" => http2 = true,
                "-X" => {
                    i += 1;
                    method = args[i].clone();
                }
                "-d" => {
                    i += 1;
                    body = args[i].clone();
                    if method == "GET" {
                        method = "POST".into();
                    }
                }
                other if !other.starts_with('-') => url = Some(other.to_string()),
                other => panic!("the README test does not know curl flag {other}"),
            }
            i += 1;
        }
        let url = url.unwrap();
        let r = if let Some(path) = url.strip_prefix("https://localhost:8443") {
            assert_eq!(cacert.as_deref(), Some(README_CA), "{}", ex.command);
            let mut req = http::Request::builder()
                .method(method.as_str())
                .uri(format!("https://localhost{path}"));
            if !http2 {
                req = req.header("host", "localhost:8443");
            }
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            let req = req.body(Full::new(Bytes::from(body.clone()))).unwrap();
            https_request(https, &certs.join("ca.pem"), http2, req).await
        } else {
            let path = url.trim_start_matches("localhost:8080").to_string();
            let header_refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = gw.request(&method, &path, &header_refs, &body).await;
            Answer {
                status: r.status,
                body: r.text(),
                headers: r.headers,
            }
        };

        let mut expected = ex.expected.iter();
        if include {
            let status_line = expected.next().unwrap();
            let reason = r.status.canonical_reason().unwrap_or("");
            assert_eq!(
                status_line,
                &format!("HTTP/1.1 {} {reason}", r.status.as_u16()),
                "{}",
                ex.command
            );
            for line in expected.by_ref() {
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(": ").unwrap();
                let got = r.headers.get(k).and_then(|v| v.to_str().ok());
                assert_eq!(got, Some(v), "{}: header {k}", ex.command);
            }
        }
        let body: Vec<&str> = expected.map(String::as_str).collect();
        if !body.is_empty() || !include {
            assert_eq!(r.body.trim_end(), body.join("\n"), "{}", ex.command);
        }
    }
}
