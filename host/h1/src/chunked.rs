//! The chunked transfer coding (RFC 9112 §7.1), decoded out of the connection's read buffer:
//! chunk data is handed on as slices of that buffer, never copied.
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! The grammar is applied byte by byte as hyper's decoder does (the differential tests hold
//! the two equal): hexadecimal sizes that overflow 64 bits are refused, whitespace may follow
//! the size (the `BWS` of chunk extensions, §7.1.1), extensions are skipped up to a bound and
//! may not hold a bare LF, and every line ends in CRLF.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The most extension bytes skipped over a whole body (hyper's bound).
const MAX_EXTENSION_BYTES: u64 = 16 << 10;

/// What [`ChunkedDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Chunk data, in the order it came.
    Data(Bytes),
    /// The last chunk and the trailer section: the body is complete.
    End(HeaderMap),
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid chunked body: {}", self.0)
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first digit of a chunk size.
    Start,
    /// More digits of a chunk size.
    Size,
    /// Whitespace after the size.
    SizeLws,
    /// A chunk extension, up to its CR.
    Extension,
    /// The LF ending a size line.
    SizeLf,
    /// Chunk data still to come.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    EndCr,
    /// The final LF.
    EndLf,
    /// Inside a trailer line.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The body is complete.
    Done,
}

/// Decodes one chunked body; see the module documentation.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The size being read, then the data left in the current chunk.
    size: u64,
    extension_bytes: u64,
    trailers: BytesMut,
    trailer_lines: usize,
    max_trailer_bytes: usize,
    max_trailers: usize,
}

impl ChunkedDecoder {
    /// A decoder whose trailer section may hold `max_trailers` lines of `max_trailer_bytes` in
    /// all (the server's header limits).
    pub fn new(max_trailer_bytes: usize, max_trailers: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Start,
            size: 0,
            extension_bytes: 0,
            trailers: BytesMut::new(),
            trailer_lines: 0,
            max_trailer_bytes,
            max_trailers,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from the front of `buf`, taking what it uses. `Ok(None)`: `buf` holds no more of
    /// the body yet (read more). After [`Chunk::End`], `buf` holds what followed the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        loop {
            if self.state == State::Data {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Some(Chunk::Data(buf.split_to(n).freeze())));
            }
            if self.state == State::Done {
                return Ok(Some(Chunk::End(self.take_trailers()?)));
            }
            let Some(&byte) = buf.first() else {
                return Ok(None);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
            if self.state == State::Done {
                return Ok(Some(Chunk::End(self.take_trailers()?)));
            }
        }
    }

    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        use State::*;
        Ok(match (self.state, byte) {
            (Start | Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let digit = (byte as char).to_digit(16).unwrap_or(0);
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(digit)))
                    .ok_or(ChunkError("chunk size overflows"))?;
                Size
            }
            (Start, _) => return Err(ChunkError("missing chunk size")),
            (Size | SizeLws, b'\t' | b' ') => SizeLws,
            (Size | SizeLws, b';') => Extension,
            (Size | SizeLws | Extension, b'\r') => SizeLf,
            (Size | SizeLws, _) => return Err(ChunkError("invalid chunk size line")),
            (Extension, b'\n') => return Err(ChunkError("a bare LF in a chunk extension")),
            (Extension, _) => {
                self.extension_bytes += 1;
                if self.extension_bytes >= MAX_EXTENSION_BYTES {
                    return Err(ChunkError("chunk extensions too long"));
                }
                Extension
            }
            (SizeLf, b'\n') if self.size == 0 => EndCr,
            (SizeLf, b'\n') => Data,
            (SizeLf, _) => return Err(ChunkError("a chunk size line not ended by CRLF")),
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err(ChunkError("chunk data longer than its size")),
            (DataLf, b'\n') => {
                self.size = 0;
                Start
            }
            (DataLf, _) => return Err(ChunkError("chunk data not ended by CRLF")),
            (EndCr, b'\r') => {
                if !self.trailers.is_empty() {
                    self.push_trailer(byte)?;
                }
                EndLf
            }
            (EndCr | Trailer, _) => {
                self.push_trailer(byte)?;
                if byte == b'\r' { TrailerLf } else { Trailer }
            }
            (EndLf, b'\n') => {
                if !self.trailers.is_empty() {
                    self.push_trailer(byte)?;
                }
                Done
            }
            (EndLf, _) => return Err(ChunkError("a chunked body not ended by CRLF")),
            (TrailerLf, b'\n') => {
                self.trailer_lines += 1;
                if self.trailer_lines > self.max_trailers {
                    return Err(ChunkError("too many trailer fields"));
                }
                self.push_trailer(byte)?;
                EndCr
            }
            (TrailerLf, _) => return Err(ChunkError("a trailer line not ended by CRLF")),
            (Data | Done, _) => unreachable!("handled before a byte is read"),
        })
    }

    fn push_trailer(&mut self, byte: u8) -> Result<(), ChunkError> {
        self.trailers.extend_from_slice(&[byte]);
        if self.trailers.len() >= self.max_trailer_bytes {
            return Err(ChunkError("trailer section too large"));
        }
        Ok(())
    }

    /// The trailer section, parsed as header fields.
    fn take_trailers(&mut self) -> Result<HeaderMap, ChunkError> {
        let mut map = HeaderMap::new();
        if self.trailers.is_empty() {
            return Ok(map);
        }
        let raw = std::mem::take(&mut self.trailers);
        let mut fields = vec![httparse::EMPTY_HEADER; self.trailer_lines];
        match httparse::parse_headers(&raw, &mut fields) {
            Ok(httparse::Status::Complete((_, fields))) => {
                for f in fields.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| ChunkError("an invalid trailer name"))?;
                    let value = HeaderValue::from_bytes(f.value)
                        .map_err(|_| ChunkError("an invalid trailer value"))?;
                    map.append(name, value);
                }
                Ok(map)
            }
            _ => Err(ChunkError("a malformed trailer section")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body decoded from `input` fed `step` bytes at a time, and what followed it.
    pub(crate) fn decode_all(
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, HeaderMap, Vec<u8>), ChunkError> {
        let mut decoder = ChunkedDecoder::new(16 << 10, 32);
        let (mut buf, mut body) = (BytesMut::new(), Vec::new());
        let mut rest = input;
        loop {
            match decoder.decode(&mut buf)? {
                Some(Chunk::Data(data)) => body.extend_from_slice(&data),
                Some(Chunk::End(trailers)) => {
                    return Ok((body, trailers, [&buf[..], rest].concat()));
                }
                None if rest.is_empty() => return Err(ChunkError("unexpected end of input")),
                None => {
                    let n = step.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn chunks_extensions_and_trailers_in_any_pieces() {
        let input = b"5;name=value\r\nhello\r\n1 ; x\r\n!\r\n0\r\nX-Sum: 6\r\n\r\nGET /";
        for step in [1, 2, 3, 7, input.len()] {
            let (body, trailers, rest) = decode_all(input, step).unwrap();
            assert_eq!(body, b"hello!");
            assert_eq!(trailers["x-sum"], "6");
            assert_eq!(rest, b"GET /");
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for input in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"1;a\nb\r\nx\r\n0\r\n\r\n",
            b"0\r\n\r\r",
            b"0\r\nBad Name: x\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(input, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
