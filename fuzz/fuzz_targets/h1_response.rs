//! The response head parser on any input, whole and split in two: it never panics, takes
//! exactly the head off the buffer, and reaches the same verdict however the bytes arrive.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use wasmgate_h1::{HeadLimits, parse_response};

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 4 << 10,
    max_headers: 16,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    // The request's method changes the framing (a HEAD answer has no body).
    let method = if control & 1 == 1 { Method::HEAD } else { Method::GET };
    let mut whole = BytesMut::from(input);
    let verdict = parse_response(&mut whole, &LIMITS, &method);
    if let Ok(Some(_)) = &verdict {
        assert!(input.ends_with(&whole));
        assert!(whole.len() < input.len());
    }

    let cut = usize::from(control >> 1).min(input.len());
    let mut parts = BytesMut::from(&input[..cut]);
    let second = match parse_response(&mut parts, &LIMITS, &method) {
        Ok(None) => {
            parts.extend_from_slice(&input[cut..]);
            let second = parse_response(&mut parts, &LIMITS, &method);
            if second.as_ref().is_ok_and(Option::is_some) {
                assert_eq!(whole, parts);
            }
            second
        }
        decided => decided,
    };
    match (&verdict, &second) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!(a.status, b.status);
            assert_eq!(a.version, b.version);
            assert_eq!(a.headers, b.headers);
            assert_eq!(a.body, b.body);
            assert_eq!(a.keep_alive, b.keep_alive);
        }
        (Ok(None), Ok(None)) => {}
        (Err(a), Err(b)) => assert_eq!(a.status(), b.status()),
        (a, b) => panic!("whole: {a:?}, in two reads: {b:?}"),
    }
});
