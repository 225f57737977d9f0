//! The chunked decoder on any input: it never panics, never hands on more data than arrived,
//! and decodes the same body whether the bytes come at once or one by one.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wasmgate_h1::{Chunk, ChunkedDecoder};

/// The decoded body and what followed it, or the error; `None` while incomplete.
fn decode(input: &[u8], step: usize) -> Option<Result<(Vec<u8>, Vec<u8>), String>> {
    let mut decoder = ChunkedDecoder::new(1 << 10, 8);
    let (mut buf, mut body, mut rest) = (BytesMut::new(), Vec::new(), input);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(Chunk::Data(data))) => {
                assert!(!data.is_empty());
                body.extend_from_slice(&data);
            }
            Ok(Some(Chunk::End(_))) => return Some(Ok((body, [&buf[..], rest].concat()))),
            Err(e) => return Some(Err(e.to_string())),
            Ok(None) if rest.is_empty() => return None,
            Ok(None) => {
                let n = step.min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let at_once = decode(input, input.len().max(1));
    let by_byte = decode(input, 1);
    if let Some(Ok((body, _))) = &at_once {
        assert!(body.len() <= input.len());
    }
    assert_eq!(at_once, by_byte);
});
