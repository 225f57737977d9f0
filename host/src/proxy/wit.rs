//! Header lists as the WIT contract carries them in service calls (`outbound`), and the
//! request the filters leave for the upstream. (The request and response a filter works on
//! stay in the host: `wasmgate_sandbox::HttpRequest`, checked write by write.)

use bytes::Bytes;
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use wasmgate_sandbox::wit::Headers;

pub(super) fn to_wit_headers(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// `list` as a header map; an invalid name or value is an error naming it.
pub(super) fn from_wit_headers(list: Headers) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_maybe_shared(Bytes::from(value))
            .map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A request the host can send upstream: method, path, headers, all valid.
pub(super) struct CheckedRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
}
