//! The filter boundary: HTTP messages to the WIT records filters see, and a filter's output
//! checked before the host uses it.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use wasmgate_sandbox::FilterError;
use wasmgate_sandbox::wit::{self, Headers};

pub(super) fn to_wit_headers(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

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

/// A filter's request, checked: what goes on to the next filter or upstream.
pub(super) struct CheckedRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
}

/// A filter's request output the host can use: method, path, headers.
pub(super) fn check_request(req: &wit::Request) -> Result<(), FilterError> {
    Method::from_bytes(req.method.as_bytes())
        .map_err(|_| FilterError::Invalid(format!("method {:?}", req.method)))?;
    if !req.path_with_query.starts_with('/')
        || req
            .path_with_query
            .parse::<http::uri::PathAndQuery>()
            .is_err()
    {
        return Err(FilterError::Invalid(format!(
            "path {:?}",
            req.path_with_query
        )));
    }
    check_headers(&req.headers)
}

/// Convert a filter's request that already passed [`check_request`].
pub(super) fn convert_request(req: wit::Request) -> Result<CheckedRequest, FilterError> {
    Ok(CheckedRequest {
        method: Method::from_bytes(req.method.as_bytes())
            .map_err(|_| FilterError::Invalid(format!("method {:?}", req.method)))?,
        path_and_query: req.path_with_query,
        headers: from_wit_headers(req.headers).map_err(FilterError::Invalid)?,
    })
}

/// A filter's response output the host can use: a final status, valid headers.
pub(super) fn check_response(resp: &wit::Response) -> Result<(), FilterError> {
    if !(200..=599).contains(&resp.status) {
        return Err(FilterError::Invalid(format!("status {}", resp.status)));
    }
    check_headers(&resp.headers)
}

/// The status of a response that passed [`check_response`].
pub(super) fn status(resp: &wit::Response) -> Option<StatusCode> {
    StatusCode::from_u16(resp.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
}

fn check_headers(headers: &[(String, Vec<u8>)]) -> Result<(), FilterError> {
    for (name, value) in headers {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FilterError::Invalid(format!("invalid header name {name:?}")))?;
        if !valid_header_value(value) {
            return Err(FilterError::Invalid(format!(
                "invalid value for header {name}"
            )));
        }
    }
    Ok(())
}

/// `HeaderValue::from_bytes`'s rule (visible ASCII, obs-text, space and tab), without its copy.
fn valid_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        prop::collection::vec(
            ("\\PC{0,12}", prop::collection::vec(any::<u8>(), 0..24)),
            0..8,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a filter returns, checking it never panics, and what passes the check
        /// always converts into the request sent upstream.
        #[test]
        fn filter_requests_are_checked_consistently(
            method in "\\PC{0,8}",
            path in "\\PC{0,24}",
            headers in header_strategy(),
        ) {
            let req = wit::Request {
                method,
                scheme: "http".into(),
                authority: String::new(),
                path_with_query: path,
                headers,
                body: None,
            };
            if check_request(&req).is_ok() {
                let path = req.path_with_query.clone();
                let out = convert_request(req);
                prop_assert!(out.is_ok());
                prop_assert!(path.parse::<http::uri::PathAndQuery>().is_ok());
            }
        }

        /// The host's copy-free header value check is `http`'s own rule.
        #[test]
        fn header_values_are_checked_by_http_rules(value in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..32),
            prop::collection::vec(prop_oneof![Just(b'\t'), 32u8..=255], 0..32),
        ]) {
            prop_assert_eq!(valid_header_value(&value), HeaderValue::from_bytes(&value).is_ok());
        }

        /// Likewise for responses: a checked response has a final status and valid headers.
        #[test]
        fn filter_responses_are_checked_consistently(status in any::<u16>(), headers in header_strategy()) {
            let resp = wit::Response { status, headers: headers.clone(), body: None };
            if check_response(&resp).is_ok() {
                prop_assert!(super::status(&resp).is_some());
                prop_assert!(from_wit_headers(headers).is_ok());
            }
        }
    }
}
