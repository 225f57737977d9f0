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
    into_header_map(list, HeaderMap::new())
}

/// `list` as a header map, built on `base` when `list` starts with `base`'s entries in
/// `base`'s own order (the list [`to_wit_headers`] made of it, which a filter that leaves the
/// headers alone or only adds some returns): then only the entries after them are parsed.
/// Otherwise the map is built from `list` alone.
pub(super) fn into_header_map(list: Headers, base: HeaderMap) -> Result<HeaderMap, String> {
    let kept = base.len() <= list.len()
        && base
            .iter()
            .zip(&list)
            .all(|((n, v), (name, value))| n.as_str() == name && v.as_bytes() == &value[..]);
    let skip = if kept { base.len() } else { 0 };
    let mut headers = if kept { base } else { HeaderMap::new() };
    headers.reserve(list.len() - skip);
    for (name, value) in list.into_iter().skip(skip) {
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

/// A filter's request output the host can use: method, path, headers. `sent` is what the
/// filter was given, all valid: a header where the output still has the one sent is not
/// checked again.
pub(super) fn check_request(req: &wit::Request, sent: &wit::Request) -> Result<(), FilterError> {
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
    check_headers(&req.headers, &sent.headers)
}

/// Convert a filter's request that already passed [`check_request`]; its headers are built on
/// `base`, the headers the chain started from (see [`into_header_map`]).
pub(super) fn convert_request(
    req: wit::Request,
    base: HeaderMap,
) -> Result<CheckedRequest, FilterError> {
    Ok(CheckedRequest {
        method: Method::from_bytes(req.method.as_bytes())
            .map_err(|_| FilterError::Invalid(format!("method {:?}", req.method)))?,
        path_and_query: req.path_with_query,
        headers: into_header_map(req.headers, base).map_err(FilterError::Invalid)?,
    })
}

/// A filter's response output the host can use: a final status, valid headers. As for
/// [`check_request`], a header still as `sent` is not checked again: `sent` came from the
/// upstream, from a checked response phase, or from a filter's answer, whose headers
/// [`into_header_map`] checks before the client sees them.
pub(super) fn check_response(
    resp: &wit::Response,
    sent: &wit::Response,
) -> Result<(), FilterError> {
    if !(200..=599).contains(&resp.status) {
        return Err(FilterError::Invalid(format!("status {}", resp.status)));
    }
    check_headers(&resp.headers, &sent.headers)
}

/// The status of a response that passed [`check_response`].
pub(super) fn status(resp: &wit::Response) -> Option<StatusCode> {
    StatusCode::from_u16(resp.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
}

/// Check the headers of `list` that differ from `sent`'s at the same place.
fn check_headers(
    list: &[(String, Vec<u8>)],
    sent: &[(String, Vec<u8>)],
) -> Result<(), FilterError> {
    for (i, (name, value)) in list.iter().enumerate() {
        if sent.get(i).is_some_and(|(n, v)| n == name && v == value) {
            continue;
        }
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
        // Valid names and values half the time, anything the WIT types allow otherwise.
        let name = prop_oneof!["[a-z-]{1,8}", "\\PC{0,12}"];
        let value = prop_oneof![
            "[ -~]{0,12}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..24),
        ];
        prop::collection::vec((name, value), 0..4)
    }

    /// Headers as the host sends them: valid, from a header map.
    fn valid_headers() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec(("[a-d]{1,2}|x-[a-z-]{1,8}", "[ -~]{0,16}"), 0..8).prop_map(|list| {
            let mut map = HeaderMap::new();
            for (name, value) in list {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            map
        })
    }

    /// What a filter returns for `sent`: each header kept where `keep` says so, replaced by one
    /// of `other` (valid or not) elsewhere, at odd places only its value, then `more` added.
    fn filter_output(sent: &Headers, keep: &[bool], other: &Headers, more: Headers) -> Headers {
        let mut out: Headers = sent
            .iter()
            .zip(keep.iter().chain(std::iter::repeat(&true)))
            .enumerate()
            .map(|(i, (entry, keep))| match (keep, other.get(i)) {
                (false, Some(o)) if i % 2 == 1 => (entry.0.clone(), o.1.clone()),
                (false, Some(o)) => o.clone(),
                _ => entry.clone(),
            })
            .collect();
        out.extend(more);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a filter returns, checking it never panics; it passes exactly when every
        /// header in it is valid (those kept as sent are not looked at again, but were valid);
        /// and what passes always converts into the request sent upstream, with the same
        /// headers whether built on the map the chain started from or from nothing.
        #[test]
        fn filter_requests_are_checked_consistently(
            method in prop_oneof!["GET|POST|DELETE", "\\PC{0,8}"],
            path in prop_oneof!["/[a-z/?=&]{0,16}", "\\PC{0,24}"],
            base in valid_headers(),
            keep in prop::collection::vec(any::<bool>(), 0..8),
            other in header_strategy(),
            more in header_strategy(),
        ) {
            let sent = wit::Request {
                method: "GET".into(),
                scheme: "http".into(),
                authority: String::new(),
                path_with_query: "/".into(),
                headers: to_wit_headers(&base),
                body: None,
            };
            let headers = filter_output(&sent.headers, &keep, &other, more);
            let all_valid = check_headers(&headers, &[]).is_ok();
            let req = wit::Request { method, path_with_query: path, headers, ..sent.clone() };
            prop_assert_eq!(check_headers(&req.headers, &sent.headers).is_ok(), all_valid);
            let checked = check_request(&req, &sent);
            if checked.is_ok() {
                let path = req.path_with_query.clone();
                let scratch = from_wit_headers(req.headers.clone());
                let out = convert_request(req, base);
                prop_assert!(out.is_ok());
                prop_assert_eq!(out.unwrap().headers, scratch.unwrap());
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

        /// Likewise for responses: a checked response has a final status and valid headers,
        /// and the client's headers are the same built on the upstream's map or from nothing.
        #[test]
        fn filter_responses_are_checked_consistently(
            status in prop_oneof![200u16..600, any::<u16>()],
            base in valid_headers(),
            keep in prop::collection::vec(any::<bool>(), 0..8),
            other in header_strategy(),
            more in header_strategy(),
        ) {
            let sent = wit::Response { status: 200, headers: to_wit_headers(&base), body: None };
            let headers = filter_output(&sent.headers, &keep, &other, more);
            let all_valid = check_headers(&headers, &[]).is_ok();
            let resp = wit::Response { status, headers: headers.clone(), body: None };
            prop_assert_eq!(check_headers(&resp.headers, &sent.headers).is_ok(), all_valid);
            let checked = check_response(&resp, &sent);
            if checked.is_ok() {
                prop_assert!(super::status(&resp).is_some());
                let scratch = from_wit_headers(headers.clone()).unwrap();
                prop_assert_eq!(into_header_map(headers, base).unwrap(), scratch);
            }
        }
    }
}
