//! The HTTP/2 attacks a public endpoint meets, sent as raw frames over h2c (prior knowledge):
//! rapid reset (HEADERS then RST_STREAM, over and over), a CONTINUATION flood (a header block
//! that never ends) and an HPACK bomb (a small block that decodes to megabytes). Each ends with
//! the attacker's connection refused or closed, few or no requests reaching the upstream, and
//! other clients served meanwhile.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmgate_tests::{TestGateway, Upstream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits set to `flags`.
fn integer(flags: u8, n: u32, mut value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![flags | value as u8];
    }
    let mut out = vec![flags | max as u8];
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
    out
}

/// `GET /` for authority `x`, from the static table: `:method GET`, `:scheme http`, `:path /`,
/// and `:authority` as a literal that is not indexed.
fn get_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'x']
}

/// A literal header field without indexing, with a new name.
fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(integer(0, 7, name.len()));
    out.extend_from_slice(name.as_bytes());
    out.extend(integer(0, 7, value.len()));
    out.extend_from_slice(value);
    out
}

/// Connect and send the preface with empty settings.
async fn connect(gw: &TestGateway) -> TcpStream {
    let mut tcp = TcpStream::connect(gw.running.addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    tcp
}

/// Everything the server sends until it closes the connection or `limit` passes; `true` when
/// it closed.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return (seen, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The frames in `bytes`: kind and payload.
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// The error code of the server's GOAWAY, if it sent one.
fn goaway(bytes: &[u8]) -> Option<u32> {
    frames(bytes)
        .into_iter()
        .find(|(kind, _)| *kind == GOAWAY)
        .map(|(_, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

async fn gateway(up: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        "[services.svc]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nservice = \"svc\"\n",
        up.url()
    ))
    .await
}

/// A well-behaved client is answered.
async fn others_are_served(gw: &TestGateway) {
    assert_eq!(gw.get("/still-here").await.status, 200);
}

#[tokio::test]
async fn rapid_reset_is_cut_off() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let mut tcp = connect(&gw).await;
    let mut attack = Vec::new();
    let streams = 2_000u32;
    for i in 0..streams {
        let id = 2 * i + 1;
        attack.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &get_block()));
        attack.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    // The server may stop reading part-way: a failed write is part of being cut off.
    let _ = tcp.write_all(&attack).await;
    let (seen, closed) = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    // ENHANCE_YOUR_CALM (0xb).
    assert_eq!(
        goaway(&seen),
        Some(0xb),
        "frames: {:?}",
        frames(&seen).iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert!(closed, "the connection is closed");
    assert!(
        up.hits() < 100,
        "{} of {streams} reset streams reached the upstream",
        up.hits()
    );
    others_are_served(&gw).await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let mut tcp = connect(&gw).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block: 16 MB
    // offered in 1 KB pieces.
    let mut opening = get_block();
    opening.extend(literal("x-flood-0", &[b'a'; 100]));
    tcp.write_all(&frame(HEADERS, END_STREAM, 1, &opening))
        .await
        .unwrap();
    let piece = frame(CONTINUATION, 0, 1, &literal("x-flood", &[b'a'; 1000]));
    let (mut reader, mut writer) = tcp.into_split();
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        for _ in 0..16_000 {
            if writer.write_all(&piece).await.is_err() {
                break;
            }
            sent += piece.len();
        }
        sent
    });
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    };
    let sent = tokio::time::timeout(Duration::from_secs(10), flood)
        .await
        .expect("the flood ends once the connection is closed")
        .unwrap();
    assert!(closed, "the connection is closed");
    assert!(goaway(&seen).is_some(), "a GOAWAY says why");
    // About 0.9 MB when measured, most of it socket buffers.
    assert!(sent < 4 << 20, "{sent} bytes of the flood were accepted");
    assert_eq!(up.hits(), 0, "the request never reached the upstream");
    others_are_served(&gw).await;
}

#[tokio::test]
async fn an_hpack_bomb_is_refused() {
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    let mut tcp = connect(&gw).await;
    // One 4 KB header added to the dynamic table, then referenced by a one-byte index 2,000
    // times: a 4 KB block that decodes to 8 MB.
    let mut block = get_block();
    block.push(0x40);
    block.extend(integer(0, 7, "x-bomb".len()));
    block.extend_from_slice(b"x-bomb");
    block.extend(integer(0, 7, 4000));
    block.extend(std::iter::repeat_n(b'b', 4000));
    // Index 62: the newest entry in the dynamic table.
    block.extend(std::iter::repeat_n(0x80 | 62, 2_000));
    tcp.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .await
        .unwrap();
    let (seen, _) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    let kinds: Vec<u8> = frames(&seen).iter().map(|f| f.0).collect();
    // Refused: the connection closed with ENHANCE_YOUR_CALM, or at least the stream reset.
    let refused = goaway(&seen) == Some(0xb) || kinds.contains(&RST_STREAM);
    assert!(refused, "frames: {kinds:?}");
    assert_eq!(up.hits(), 0, "the request never reached the upstream");
    others_are_served(&gw).await;
}
