//! The codec against the path it replaces: the framing guard in front of hyper's HTTP/1
//! server, with the same limits. Generated requests, well formed and not, go to both, which
//! must refuse the same ones with the same status and hand on the same message otherwise.
//!
//! One difference is deliberate: a `Content-Length` holding a list (`5, 5`) is refused here
//! (RFC 9110 §8.6 allows either), where hyper folds equal values into one.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use wasmgate_h1::{BodyKind, Chunk, ChunkedDecoder, HeadLimits, parse_request};

use super::framing::{FramingGuard, Guarding};

const MAX_HEAD_BYTES: usize = 8 << 10;
const MAX_HEADERS: usize = 24;

/// What a server made of one request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Answered with this status without handing the request on.
    Refused(u16),
    /// Handed on; the body, or `None` when it broke off or was malformed.
    Request {
        method: String,
        uri: String,
        version: http::Version,
        headers: Vec<(String, Vec<u8>)>,
        body: Option<Vec<u8>>,
    },
    /// Neither: the input ended inside the head.
    Nothing,
}

fn fields(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// The codec's verdict on `input`, given all at once.
fn ours(input: &[u8]) -> Verdict {
    let limits = HeadLimits {
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: MAX_HEADERS,
    };
    let mut buf = BytesMut::from(input);
    let head = match parse_request(&mut buf, &limits) {
        Ok(Some(head)) => head,
        Ok(None) => return Verdict::Nothing,
        Err(e) => return Verdict::Refused(e.status().as_u16()),
    };
    let body = match head.body {
        BodyKind::Empty => Some(Vec::new()),
        BodyKind::Length(n) => usize::try_from(n)
            .ok()
            .filter(|&n| n <= buf.len())
            .map(|n| buf[..n].to_vec()),
        BodyKind::Chunked => {
            let mut decoder = ChunkedDecoder::new(16 << 10, MAX_HEADERS);
            let mut body = Vec::new();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Chunk::Data(data))) => body.extend_from_slice(&data),
                    Ok(Some(Chunk::End(_))) => break Some(body),
                    Ok(None) | Err(_) => break None,
                }
            }
        }
    };
    Verdict::Request {
        method: head.method.to_string(),
        uri: head.uri.to_string(),
        version: head.version,
        headers: fields(&head.headers),
        body,
    }
}

/// The guard-and-hyper verdict on `input`, sent in one piece and then closed.
fn reference(input: &[u8]) -> Verdict {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let guard = FramingGuard::new(
            server,
            "127.0.0.1:1".parse().unwrap(),
            Guarding {
                max_head_bytes: MAX_HEAD_BYTES,
                max_headers: MAX_HEADERS,
                head_timeout: Duration::from_secs(5),
            },
        );
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let seen = seen_tx.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.ok().map(|b| b.to_bytes().to_vec());
                let _ = seen.send(Verdict::Request {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    version: parts.version,
                    headers: fields(&parts.headers),
                    body,
                });
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
            }
        });
        // The client half-closes after its request: let hyper answer it still.
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .serve_connection(hyper_util::rt::TokioIo::new(guard), service);
        let served = tokio::spawn(conn);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        let _ = served.await;
        if let Ok(seen) = seen_rx.try_recv() {
            return seen;
        }
        match out.get(9..12).and_then(|s| std::str::from_utf8(s).ok()) {
            Some(status) => Verdict::Refused(status.parse().unwrap()),
            None => Verdict::Nothing,
        }
    })
}

fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just("\r\n"), 1 => Just("\n")]
}

fn request_line() -> impl Strategy<Value = String> {
    let method = prop_oneof![
        6 => Just("GET"),
        4 => Just("POST"),
        1 => Just("PUT"),
        1 => Just("M-SEARCH"),
        1 => Just("get"),
        1 => Just("G(T"),
    ];
    let target = prop_oneof![
        4 => Just("/"),
        4 => Just("/a/b?c=d&e"),
        1 => Just("/%zz"),
        1 => Just("*"),
        1 => Just("http://example.com:80/x?y"),
        1 => Just("/a\x7fb"),
        1 => Just("/\u{e9}"),
        1 => Just("//x"),
        1 => Just(""),
    ];
    let version = prop_oneof![
        8 => Just("HTTP/1.1"),
        3 => Just("HTTP/1.0"),
        1 => Just("HTTP/1.2"),
        1 => Just("HTTP/2.0"),
        1 => Just("http/1.1"),
    ];
    (method, target, version).prop_map(|(m, t, v)| format!("{m} {t} {v}"))
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("Host: example.com".to_string()),
        2 => prop_oneof![
            Just("0"), Just("3"), Just("5"), Just("05"), Just("+5"), Just("-1"), Just("5, 5"),
            Just("99999999999999999999"), Just("5 "), Just("x"),
        ]
        .prop_map(|v| format!("Content-Length: {v}")),
        2 => prop_oneof![
            Just("chunked"), Just("Chunked"), Just("gzip, chunked"), Just("chunked, gzip"),
            Just("identity"), Just("chunked,"),
        ]
        .prop_map(|v| format!("Transfer-Encoding: {v}")),
        1 => prop_oneof![Just("close"), Just("keep-alive"), Just("Keep-Alive, x")]
            .prop_map(|v| format!("Connection: {v}")),
        4 => ("[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}", "[ -~\t\u{80}-\u{ff}]{0,24}")
            .prop_map(|(n, v)| format!("{n}: {v}")),
        1 => prop_oneof![
            Just("Bad Name: x"), Just("X-Sp : y"), Just(": empty"), Just("X-Ctl: a\x01b"),
            Just("X-Del: a\x7fb"), Just("X-Fold: a\r\n b"), Just("X-Empty:"), Just("NoColon"),
        ]
        .prop_map(str::to_string),
    ]
}

fn chunked_body() -> impl Strategy<Value = String> {
    let chunk = prop_oneof![
        6 => "[a-z]{1,20}".prop_map(|d| format!("{:x}\r\n{d}\r\n", d.len())),
        1 => "[a-z]{1,20}".prop_map(|d| format!("{:X};name=v\r\n{d}\r\n", d.len())),
        1 => "[a-z]{1,20}".prop_map(|d| format!("{:x} \r\n{d}\r\n", d.len())),
        1 => "[a-z]{2,20}".prop_map(|d| format!("{:x}\r\n{d}\r\n", d.len() - 1)),
        1 => "[a-z]{1,20}".prop_map(|d| format!("{:x}\n{d}\n", d.len())),
        1 => "[a-z]{1,20}".prop_map(|d| format!("{:x}\r\n{d}\n", d.len())),
        1 => "[a-z]{1,20}".prop_map(|d| format!("{:x}\r\n{d}\rx", d.len())),
        1 => Just("zz\r\nab\r\n".to_string()),
        1 => Just("10000000000000000\r\n".to_string()),
    ];
    let end = prop_oneof![
        4 => Just("0\r\n\r\n"),
        1 => Just("0\r\nX-Trailer: 1\r\n\r\n"),
        1 => Just("0\r\n"),
        1 => Just("0\r\n\n"),
        1 => Just(""),
    ];
    (proptest::collection::vec(chunk, 0..4), end)
        .prop_map(|(chunks, end)| format!("{}{end}", chunks.concat()))
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        request_line(),
        proptest::collection::vec(header(), 0..8),
        line_end(),
        chunked_body(),
        "[a-z]{0,8}",
    )
        .prop_map(|(line, headers, eol, chunked, plain)| {
            let mut out = format!("{line}{eol}");
            for h in &headers {
                out.push_str(h);
                out.push_str(eol);
            }
            out.push_str(eol);
            let is_chunked = headers.iter().any(|h| h.starts_with("Transfer-Encoding"));
            out.push_str(if is_chunked { &chunked } else { &plain });
            out.into_bytes()
        })
}

/// Whether `input` holds the one deliberate difference (see the module documentation).
fn content_length_list(input: &[u8]) -> bool {
    String::from_utf8_lossy(input)
        .lines()
        .any(|l| l.starts_with("Content-Length:") && l.contains(','))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_codec_reaches_the_verdict_of_the_guard_and_hyper(input in request()) {
        let ours = ours(&input);
        if content_length_list(&input) && ours == Verdict::Refused(400) {
            return Ok(());
        }
        prop_assert_eq!(
            ours,
            reference(&input),
            "input: {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

#[test]
fn oversized_heads_get_the_same_status() {
    for input in [
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(20 << 10)
        ),
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS + 1)
        ),
    ] {
        assert_eq!(ours(input.as_bytes()), Verdict::Refused(431));
        assert_eq!(reference(input.as_bytes()), Verdict::Refused(431));
    }
}
