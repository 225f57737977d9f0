//! A request head, parsed once out of the connection's read buffer.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// Header lines parsed into stack space; a head with more is parsed with a heap buffer.
pub(crate) const STACK_HEADERS: usize = 128;

/// The longest request target the `http` crate represents (its `Uri` limit).
const MAX_URI: usize = (u16::MAX - 1) as usize;

/// How large a request head may be; see `[server]` in the config.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// The request line and every header line, with their line ends.
    pub max_head_bytes: usize,
    /// Header lines.
    pub max_headers: usize,
}

/// How the body after a head is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body: a request with neither `Content-Length` nor `Transfer-Encoding` (§6.3 item 7),
    /// or `Content-Length: 0`.
    Empty,
    /// Exactly this many bytes (§6.3 item 6).
    Length(u64),
    /// Chunked transfer coding (§7.1), ended by its last chunk (§6.3 item 4).
    Chunked,
}

/// A parsed request head. Header values are slices of the bytes the head arrived in.
#[derive(Debug)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The request target, as sent (origin form, or absolute form through a proxy).
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Every header line, in order, names lowercased.
    pub headers: HeaderMap,
    /// How the body is framed.
    pub body: BodyKind,
    /// Whether the connection may carry another request after this one's response (§9.3):
    /// HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// An `Upgrade` header or a `CONNECT`: the connection may stop being HTTP/1.
    pub upgrade: bool,
    /// The head's bytes as they arrived, for handing the connection on to another parser.
    pub raw: Bytes,
}

/// Why a head was refused; the connection closes after the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// The head is longer than `max_head_bytes` or has more than `max_headers` lines.
    TooLarge,
    /// The request target is longer than a `Uri` holds.
    UriTooLong,
    /// Not an HTTP/1.x request head.
    Malformed(&'static str),
    /// Framing other hops could read differently: refused, not repaired.
    Ambiguous(&'static str),
}

impl HeadError {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
            HeadError::Malformed(_) | HeadError::Ambiguous(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// What was wrong, for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::TooLarge => "request head too large",
            HeadError::UriTooLong => "request target too long",
            HeadError::Malformed(why) | HeadError::Ambiguous(why) => why,
        }
    }
}

/// Header slots for httparse: on the stack up to [`STACK_HEADERS`], else on the heap.
pub(crate) struct Slots<'b> {
    stack: [MaybeUninit<httparse::Header<'b>>; STACK_HEADERS],
    heap: Vec<MaybeUninit<httparse::Header<'b>>>,
}

impl<'b> Slots<'b> {
    pub(crate) fn new() -> Slots<'b> {
        Slots {
            stack: [const { MaybeUninit::uninit() }; STACK_HEADERS],
            heap: Vec::new(),
        }
    }

    pub(crate) fn get(&mut self, n: usize) -> &mut [MaybeUninit<httparse::Header<'b>>] {
        if n <= STACK_HEADERS {
            return &mut self.stack[..n];
        }
        self.heap.resize_with(n, MaybeUninit::uninit);
        &mut self.heap
    }
}

/// A head's length from httparse's verdict on `buffered` bytes, with `limits` applied;
/// `None` while incomplete.
pub(crate) fn head_len(
    parsed: httparse::Result<usize>,
    buffered: usize,
    limits: &HeadLimits,
    malformed: &'static str,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_head_bytes => Ok(Some(len)),
        Ok(httparse::Status::Complete(_)) => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buffered <= limits.max_head_bytes => Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            Err(HeadError::TooLarge)
        }
        Err(httparse::Error::Version) => Err(HeadError::Malformed("not HTTP/1.x")),
        Err(_) => Err(HeadError::Malformed(malformed)),
    }
}

/// A header's name and where its value lies in the head.
pub(crate) type Field = (HeaderName, std::ops::Range<usize>);

/// The header map, each value a slice of `head` (the bytes the fields were parsed from), with
/// room for `headroom` more (what a proxy adds on the way: forwarding headers, an id) before
/// the map has to grow.
pub(crate) fn header_map(head: &Bytes, fields: Vec<Field>, headroom: usize) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(fields.len() + headroom);
    for (name, value) in fields {
        // SAFETY: httparse admitted only HTAB, SP, VCHAR and obs-text in a field value, all of
        // which `HeaderValue` allows; the checked constructor would scan them again.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(value)) };
        headers.append(name, value);
    }
    headers
}

/// What a head's header lines say about framing and the connection, gathered in one pass.
#[derive(Default)]
pub(crate) struct Facts {
    pub(crate) lengths: u32,
    pub(crate) length: Option<u64>,
    pub(crate) encodings: u32,
    pub(crate) chunked: bool,
    hosts: u32,
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

impl Facts {
    /// Each header's name and where its value lies from `base` (the buffer's start), noting
    /// what each says.
    pub(crate) fn fields(
        &mut self,
        headers: &[httparse::Header<'_>],
        base: usize,
    ) -> Result<Vec<Field>, HeadError> {
        let mut fields = Vec::with_capacity(headers.len());
        for h in headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| HeadError::Malformed("invalid header name"))?;
            self.see(&name, h.value)?;
            let start = h.value.as_ptr() as usize - base;
            fields.push((name, start..start + h.value.len()));
        }
        Ok(fields)
    }

    /// RFC 9112 §6.1: a sender must not send both `Content-Length` and `Transfer-Encoding`; a
    /// recipient may let Transfer-Encoding win, but a gateway that did would forward a message
    /// another hop frames by its length. RFC 9110 §8.6 allows folding repeated equal lengths
    /// into one; a gateway refuses instead.
    pub(crate) fn unambiguous(&self) -> Result<(), HeadError> {
        if self.lengths > 0 && self.encodings > 0 {
            return Err(HeadError::Ambiguous(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if self.lengths > 1 {
            return Err(HeadError::Ambiguous("more than one Content-Length"));
        }
        Ok(())
    }

    pub(crate) fn see(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), HeadError> {
        use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
        if name == HOST {
            self.hosts += 1;
        } else if name == CONTENT_LENGTH {
            self.lengths += 1;
            self.length = Some(content_length(value)?);
        } else if name == TRANSFER_ENCODING {
            self.encodings += 1;
            // §6.3 item 4: only the final coding decides; with several lines, the last one's.
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
        } else if name == EXPECT {
            self.expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name == UPGRADE {
            self.upgrade = true;
        }
        Ok(())
    }
}

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT`. No sign, no list, no whitespace inside (the
/// parser has trimmed the field's ends).
fn content_length(value: &[u8]) -> Result<u64, HeadError> {
    const INVALID: HeadError = HeadError::Malformed("invalid Content-Length");
    if value.is_empty() {
        return Err(INVALID);
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(INVALID);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(INVALID)
    })
}

/// Parse a request head from the front of `buf`. `Ok(None)`: the head is not complete yet
/// (read more). On success the head's bytes are taken out of `buf`, which keeps what follows
/// (the body's first bytes, or a pipelined request).
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = Slots::new();
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, slots.get(limits.max_headers));
    let Some(len) = head_len(parsed, buf.len(), limits, "malformed request head")? else {
        return Ok(None);
    };

    // Everything but the header values, while `req` borrows `buf`.
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let path = req.path.unwrap_or_default().as_bytes();
    if path.len() > MAX_URI {
        return Err(HeadError::UriTooLong);
    }
    let path = offset(path)..offset(path) + path.len();
    let mut facts = Facts::default();
    let fields = facts.fields(req.headers, base)?;
    facts.unambiguous()?;
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any with more than one.
    if facts.hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    if facts.hosts == 0 && version == Version::HTTP_11 {
        return Err(HeadError::Malformed("an HTTP/1.1 request without Host"));
    }
    let body = if facts.encodings > 0 {
        // §6.1: Transfer-Encoding arrived with HTTP/1.1; in a 1.0 message framing is unsure.
        if version == Version::HTTP_10 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        // §6.3 item 4: a request whose final coding is not chunked has no reliable length.
        if !facts.chunked {
            return Err(HeadError::Malformed(
                "a final transfer coding other than chunked",
            ));
        }
        BodyKind::Chunked
    } else {
        match facts.length {
            None | Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
        }
    };

    let head: Bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    // A gateway adds `x-forwarded-for`, `-proto`, `-host`, `x-request-id`, trace context.
    let headers = header_map(&head, fields, 6);
    let keep_alive = match version {
        Version::HTTP_10 => facts.keep_alive && !facts.close,
        _ => !facts.close,
    };
    Ok(Some(RequestHead {
        upgrade: facts.upgrade || method == Method::CONNECT,
        method,
        uri,
        version,
        headers,
        body,
        keep_alive,
        expect_continue: facts.expect_continue,
        raw: head,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 8 << 10,
        max_headers: 32,
    };

    fn parse(input: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(input), &LIMITS)
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_its_values_share_its_bytes() {
        let mut buf = BytesMut::from(
            "POST /a/b?c=d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Y: z z\r\n\r\nhello GET",
        );
        let head = parse_request(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/a/b");
        assert_eq!(head.uri.query(), Some("c=d"));
        assert_eq!(head.headers["x-y"], "z z");
        assert_eq!(head.body, BodyKind::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello GET");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(parse(&long).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(parse(&many).unwrap_err().status(), 431);
    }

    #[test]
    fn framing_other_hops_could_read_differently_is_refused() {
        for (input, why) in [
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                "more than one Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
                "invalid",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n",
                "invalid",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "other than chunked",
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HTTP/1.0",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "without Host"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "more than one Host",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nBad Name: b\r\n\r\n",
                "malformed",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
                "malformed",
            ),
        ] {
            let err = parse(input).unwrap_err();
            assert_eq!(err.status(), 400, "{input:?}");
            assert!(err.reason().contains(why), "{input:?}: {}", err.reason());
        }
    }

    #[test]
    fn connection_persistence_follows_the_version() {
        let keep = |s: &str| parse(s).unwrap().unwrap().keep_alive;
        assert!(keep("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n"
        ));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        let head = parse("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(head.unwrap().unwrap().body, BodyKind::Chunked);
    }
}
