//! Response compression for routes with `compress = true`: gzip, br or zstd, chosen from the
//! client's `Accept-Encoding` (q-values honoured), streamed through the encoder frame by frame.

use std::io;

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::config::Compression;
use crate::upstream::{Body, BoxError};

/// A content coding the gateway produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    Zstd,
    Brotli,
    Gzip,
}

impl Coding {
    /// Preferred first when the client rates several equally: zstd and brotli compress text
    /// better than gzip at the levels used here, zstd at less CPU.
    const PREFERENCE: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];

    fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// The coding for a client's `Accept-Encoding`: the one it rates highest among those the
/// gateway produces (`*` rates any not named), ties broken by [`Coding::PREFERENCE`]; `None`
/// when it accepts none (no header, or all rated `q=0`).
pub(super) fn negotiate(headers: &HeaderMap) -> Option<Coding> {
    let mut rated: [Option<u16>; 3] = [None; 3];
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let name = params.next().unwrap_or_default().trim();
            let q = params
                .find_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .map_or(Some(1000), parse_q);
            let Some(q) = q else { continue };
            let slot = match name.to_ascii_lowercase().as_str() {
                "zstd" => 0,
                "br" => 1,
                "gzip" | "x-gzip" => 2,
                "*" => {
                    any = Some(q);
                    continue;
                }
                _ => continue,
            };
            rated[slot] = Some(q);
        }
    }
    Coding::PREFERENCE
        .iter()
        .zip(rated)
        .filter_map(|(coding, q)| Some((*coding, q.or(any)?)))
        .filter(|(_, q)| *q > 0)
        // max_by_key keeps the last of equal maxima; the preference order is reversed for it.
        .rev()
        .max_by_key(|(_, q)| *q)
        .map(|(coding, _)| coding)
}

/// A q-value in thousandths (`0.5` -> 500); `None` when malformed.
fn parse_q(text: &str) -> Option<u16> {
    let q: f32 = text.trim().parse().ok()?;
    (0.0..=1.0)
        .contains(&q)
        .then(|| (q * 1000.0).round() as u16)
}

/// Compress `resp` with `coding` when it is worth it and allowed: a compressible media type,
/// not known to be smaller than `min_bytes`, not encoded already, no `Cache-Control:
/// no-transform`, and a status that carries a whole body. Every response that could be
/// compressed gets `Vary: Accept-Encoding`, whether this client accepted a coding or not.
pub(super) fn apply(
    mut resp: Response<Body>,
    coding: Option<Coding>,
    settings: &Compression,
) -> Response<Body> {
    if !eligible(&resp, settings) {
        return resp;
    }
    let headers = resp.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    let Some(coding) = coding else {
        return resp;
    };
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    // The encoded bytes differ from the representation a strong validator names.
    if let Some(etag) = headers.get(header::ETAG)
        && !etag.as_bytes().starts_with(b"W/")
        && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
    {
        headers.insert(header::ETAG, weak);
    }
    resp.map(|body| encode(body, coding))
}

fn eligible(resp: &Response<Body>, settings: &Compression) -> bool {
    let status = resp.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
    {
        return false;
    }
    let headers = resp.headers();
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let no_transform = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    });
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len < settings.min_bytes);
    !encoded && !no_transform && !small && compressible(headers, settings)
}

fn compressible(headers: &HeaderMap, settings: &Compression) -> bool {
    let Some(media) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    else {
        return false;
    };
    settings
        .content_types
        .iter()
        .any(|t| match t.strip_suffix("/*") {
            Some(kind) => media
                .split_once('/')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case(kind)),
            None => media.eq_ignore_ascii_case(t),
        })
}

/// The body through the encoder, streamed: each piece is encoded as it arrives.
fn encode(body: Body, coding: Coding) -> Body {
    let input = StreamReader::new(BodyDataStream::new(body).map_err(io::Error::other));
    // Levels for a proxy's CPU budget: gzip 6 and zstd 3 are their libraries' defaults;
    // brotli's default (11) is meant for static files and is far too slow here.
    match coding {
        Coding::Gzip => boxed(ReaderStream::new(GzipEncoder::with_quality(
            input,
            Level::Default,
        ))),
        Coding::Brotli => boxed(ReaderStream::new(BrotliEncoder::with_quality(
            input,
            Level::Precise(4),
        ))),
        Coding::Zstd => boxed(ReaderStream::new(ZstdEncoder::with_quality(
            input,
            Level::Default,
        ))),
    }
}

fn boxed<S>(stream: S) -> Body
where
    S: futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static,
{
    StreamBody::new(stream.map_ok(Frame::data).map_err(BoxError::from)).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Option<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        negotiate(&headers)
    }

    #[test]
    fn the_highest_rated_coding_wins_and_ties_go_to_the_preference() {
        assert_eq!(accept("gzip"), Some(Coding::Gzip));
        assert_eq!(accept("gzip, deflate, br, zstd"), Some(Coding::Zstd));
        assert_eq!(accept("gzip, br"), Some(Coding::Brotli));
        assert_eq!(
            accept("br;q=0.5, zstd;q=0.9, gzip;q=0.1"),
            Some(Coding::Zstd)
        );
        assert_eq!(accept("br;q=1.0, zstd;q=0.9"), Some(Coding::Brotli));
        assert_eq!(accept("GZIP;Q=0.3, deflate"), Some(Coding::Gzip));
        assert_eq!(accept("*"), Some(Coding::Zstd));
        assert_eq!(accept("zstd;q=0, *;q=0.5"), Some(Coding::Brotli));
    }

    #[test]
    fn nothing_acceptable_means_no_coding() {
        assert_eq!(negotiate(&HeaderMap::new()), None);
        assert_eq!(accept("identity"), None);
        assert_eq!(accept("deflate"), None);
        assert_eq!(accept("gzip;q=0, br;q=0, zstd;q=0"), None);
        assert_eq!(accept("*;q=0"), None);
        assert_eq!(accept("gzip;q=bad"), None);
    }
}
