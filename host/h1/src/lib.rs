//! wasmgate's own HTTP/1.1 codec, in Pingora's manner: a request or response head is parsed
//! once (httparse) out of the connection's reused read buffer, and the parsed head keeps that
//! buffer's bytes (header values are slices of it, not copies); bodies are framed by
//! Content-Length or decoded from chunked without copying their data.
//!
//! The rules a gateway must apply beyond what a single server may tolerate are applied here,
//! at the one parse, with the RFC 9112 section each comes from: a message whose framing another
//! hop could read differently is refused rather than repaired (both `Content-Length` and
//! `Transfer-Encoding`, repeated lengths, a transfer coding other than a final `chunked`), and so
//! is a request with no `Host` or more than one.
//!
//! The differential tests (`host/src/server/differential.rs`) hold this codec to the path it
//! replaces (the framing guard in front of hyper): on generated input both must reach the same
//! verdict and the same message. `fuzz/` fuzzes the head parser and the chunked decoder.
#![deny(missing_docs)]

mod chunked;
mod head;
mod response;

pub use chunked::{Chunk, ChunkError, ChunkedDecoder};
pub use head::{BodyKind, HeadError, HeadLimits, RequestHead, parse_request};
pub use response::{ResponseBodyKind, ResponseHead, parse_response};
