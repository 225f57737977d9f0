//! A response head from an upstream, parsed once out of the upstream connection's read buffer.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version};

use crate::head::{Facts, HeadError, HeadLimits, Slots, head_len, header_map};

/// How a response body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBodyKind {
    /// No body: an answer to `HEAD`, a 1xx, 204 or 304 (§6.3 item 1), or `Content-Length: 0`.
    Empty,
    /// Exactly this many bytes (§6.3 item 6).
    Length(u64),
    /// Chunked transfer coding (§7.1).
    Chunked,
    /// Everything until the upstream closes the connection (§6.3 item 8).
    UntilClose,
}

/// A parsed response head. Header values are slices of the bytes the head arrived in.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status code.
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Every header line, in order, names lowercased.
    pub headers: HeaderMap,
    /// How the body is framed.
    pub body: ResponseBodyKind,
    /// Whether the connection may carry another request after this response (RFC 9112 §9.3).
    pub keep_alive: bool,
}

/// Parse a response head from the front of `buf`, the answer to a `method` request.
/// `Ok(None)`: not complete yet (read more). On success the head's bytes are taken out of
/// `buf`, which keeps the body's first bytes. An interim 1xx response is returned like any
/// other; the caller reads on for the final one.
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &HeadLimits,
    method: &Method,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut slots = Slots::new();
    let mut resp = httparse::Response::new(&mut []);
    // Obsolete line folding (RFC 9112 §5.2) is refused, as hyper's client does by default.
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        slots.get(limits.max_headers),
    );
    let Some(len) = head_len(parsed, buf.len(), limits, "malformed response head")? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or_default())
        .map_err(|_| HeadError::Malformed("invalid status code"))?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let mut facts = Facts::default();
    let fields = facts.fields(resp.headers, base)?;
    // §6.3 item 3 lets Transfer-Encoding win over Content-Length; a gateway refuses a response
    // another hop could frame differently, as it refuses such a request.
    facts.unambiguous()?;
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodiless {
        ResponseBodyKind::Empty
    } else if facts.encodings > 0 {
        // §6.3 item 4: a final coding other than chunked runs until the connection closes.
        if facts.chunked && version == Version::HTTP_11 {
            ResponseBodyKind::Chunked
        } else {
            ResponseBodyKind::UntilClose
        }
    } else {
        match facts.length {
            Some(0) => ResponseBodyKind::Empty,
            Some(n) => ResponseBodyKind::Length(n),
            None => ResponseBodyKind::UntilClose,
        }
    };

    let head: Bytes = buf.split_to(len).freeze();
    // A gateway adds `x-request-id`, and a filter a header or two.
    let headers = header_map(&head, fields, 4);
    let keep_alive = body != ResponseBodyKind::UntilClose
        && match version {
            Version::HTTP_10 => facts.keep_alive && !facts.close,
            _ => !facts.close,
        };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        body,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 8 << 10,
        max_headers: 32,
    };

    fn parse(input: &str, method: Method) -> Result<Option<ResponseHead>, HeadError> {
        parse_response(&mut BytesMut::from(input), &LIMITS, &method)
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_the_body_stays() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        let head = parse_response(&mut buf, &LIMITS, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.body, ResponseBodyKind::Length(5));
        assert_eq!(head.headers["x-a"], "b");
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let framing = |input: &str, method: Method| parse(input, method).unwrap().unwrap().body;
        use ResponseBodyKind::*;
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
                Empty,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Method::GET, Empty),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
                Empty,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", Method::POST, Empty),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET,
                UntilClose,
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                UntilClose,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Method::GET, UntilClose),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Method::GET,
                Empty,
            ),
        ];
        for (input, method, expected) in cases {
            assert_eq!(framing(input, method), expected, "{input:?}");
        }
    }

    #[test]
    fn connection_reuse_follows_the_version_and_connection_header() {
        let keep = |input: &str| parse(input, Method::GET).unwrap().unwrap().keep_alive;
        assert!(keep("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keep(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.1 200 OK\r\n\r\n"), "a body until close");
    }

    #[test]
    fn ambiguous_or_broken_heads_are_refused() {
        for input in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            // Obsolete line folding, with CRLF and with a bare LF (found by cargo fuzz).
            "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n",
            "HTTP/1.0 330 33\r\nT:T3T \n 3\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse(input, Method::GET).is_err(), "{input:?}");
        }
        assert!(
            parse("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
                .unwrap()
                .is_none()
        );
    }
}
