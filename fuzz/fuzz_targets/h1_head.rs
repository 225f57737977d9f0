//! The request head parser on any input, whole and split in two: it never panics, takes
//! exactly the head off the buffer, and reaches the same verdict however the bytes arrive.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wasmgate_h1::{HeadLimits, parse_request};

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 4 << 10,
    max_headers: 16,
};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let mut whole = BytesMut::from(input);
    let verdict = parse_request(&mut whole, &LIMITS);
    if let Ok(Some(head)) = &verdict {
        // What is left is a suffix of the input, and the head was not empty.
        assert!(input.ends_with(&whole));
        assert!(whole.len() < input.len());
        assert!(head.uri.to_string().len() <= input.len());
    }

    // The same bytes in two reads. A first part that decides (a complete head, or a refusal)
    // decides as the whole does; one that does not, completed, gives the whole's verdict.
    let cut = (split as usize).min(input.len());
    let mut parts = BytesMut::from(&input[..cut]);
    let second = match parse_request(&mut parts, &LIMITS) {
        Ok(None) => {
            parts.extend_from_slice(&input[cut..]);
            let second = parse_request(&mut parts, &LIMITS);
            if second.as_ref().is_ok_and(Option::is_some) {
                assert_eq!(whole, parts);
            }
            second
        }
        decided => decided,
    };
    match (&verdict, &second) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!(a.method, b.method);
            assert_eq!(a.uri, b.uri);
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
