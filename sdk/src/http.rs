//! Typed requests, responses and headers, as a filter sees them.

use std::cell::{OnceCell, RefCell};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::__bindings::wasmgate::filter::context as wit_context;
use crate::__bindings::wasmgate::filter::types as wit;
use crate::Error;
use crate::json::{self, JsonError};

/// Percent-encode everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`): safe
/// for a path segment, a query component or a form value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Header list in wire order. Names are stored lower-case; a name may repeat.
///
/// In the gateway the headers stay in the host: a read asks the host for that one header (or,
/// for [`Headers::iter`], for all of them once), and a write changes the host's copy at once.
/// Built in a unit test or by a filter ([`Response::new`]), they are a plain list.
#[derive(Default)]
pub struct Headers {
    /// The host's message, when the headers are the host's.
    remote: Option<Remote>,
    /// Every header in order: always for a plain list; for the host's, once fetched (and
    /// until the next write).
    list: OnceCell<Vec<(String, Vec<u8>)>>,
    /// Values fetched one header at a time from the host, kept for the `&[u8]` handed out.
    fetched: Arena,
    /// Single headers fetched so far: from the second on, every header is fetched at once (one
    /// call into the gateway costs more than copying a few headers).
    asked: std::cell::Cell<u8>,
}

/// Single-header reads after which [`Headers`] fetches them all.
const FETCH_ALL_AFTER: u8 = 1;

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::from_wire(Vec::new())
    }

    /// The first value of `name` (case-insensitive) as text; `None` when absent or not UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `name` (case-insensitive) as raw bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        match (self.list.get(), &self.remote) {
            (None, Some(remote)) if self.ask() => Some(self.fetched.keep(remote.header(name)?)),
            _ => self
                .list()
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice()),
        }
    }

    /// Every value of `name` (case-insensitive), in order, as raw bytes.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let values: Vec<&'a [u8]> = match (self.list.get(), &self.remote) {
            (None, Some(remote)) if self.ask() => remote
                .header_all(name)
                .into_iter()
                .map(|v| self.fetched.keep(v))
                .collect(),
            _ => self
                .list()
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
                .collect(),
        };
        values.into_iter()
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// Replace every value of `name` with one value. An invalid name or value (the host
    /// checks) fails the filter's phase when it returns.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match &self.remote {
            Some(remote) => {
                remote.set_header(name, &value);
                self.list.take();
            }
            None => {
                self.remove(name);
                self.append(name, value);
            }
        }
    }

    /// Add a value for `name`, keeping existing ones.
    pub fn append(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match &self.remote {
            Some(remote) => {
                remote.append_header(name, &value);
                self.list.take();
            }
            None => self.local().push((name.to_ascii_lowercase(), value)),
        }
    }

    /// Remove every value of `name`; returns whether any was present.
    pub fn remove(&mut self, name: &str) -> bool {
        match &self.remote {
            Some(remote) => {
                self.list.take();
                remote.remove_header(name)
            }
            None => {
                let list = self.local();
                let before = list.len();
                list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                list.len() != before
            }
        }
    }

    /// All `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.list().iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }

    /// Count a single-header read: whether to make it (else fetch every header).
    fn ask(&self) -> bool {
        let asked = self.asked.get();
        self.asked.set(asked.saturating_add(1));
        asked < FETCH_ALL_AFTER
    }

    fn list(&self) -> &Vec<(String, Vec<u8>)> {
        self.list.get_or_init(|| match &self.remote {
            Some(remote) => remote.headers(),
            None => Vec::new(),
        })
    }

    /// The plain list (only called when there is no remote).
    fn local(&mut self) -> &mut Vec<(String, Vec<u8>)> {
        self.list.get_or_init(Vec::new);
        self.list.get_mut().expect("initialized above")
    }

    fn remote(remote: Remote) -> Self {
        Headers {
            remote: Some(remote),
            ..Headers::default()
        }
    }

    pub(crate) fn from_wire(list: Vec<(String, Vec<u8>)>) -> Self {
        Headers {
            remote: None,
            list: OnceCell::from(list),
            fetched: Arena::default(),
            asked: std::cell::Cell::new(0),
        }
    }

    pub(crate) fn into_wire(self) -> Vec<(String, Vec<u8>)> {
        self.list();
        self.list.into_inner().unwrap_or_default()
    }

    /// A plain copy.
    fn snapshot(&self) -> Headers {
        Headers::from_wire(self.list().clone())
    }
}

impl Clone for Headers {
    /// A plain copy: the clone of the host's headers is a list of their current values.
    fn clone(&self) -> Self {
        self.snapshot()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.list() == other.list()
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())),
            )
            .finish()
    }
}

/// An HTTP request on its way to the upstream.
///
/// In the gateway it is a handle to the host's request: each accessor asks the host for what
/// it returns, once, and each setter changes the host's request. Built with
/// [`Request::new`] (unit tests), it is a plain value.
pub struct Request {
    remote: Option<u32>,
    method: OnceCell<String>,
    scheme: OnceCell<String>,
    authority: OnceCell<String>,
    path_with_query: OnceCell<String>,
    pub(crate) headers: Headers,
    body: Body,
}

impl Request {
    /// A request with no headers and no body, e.g. for unit tests:
    /// `Request::new("GET", "/users/42?full=1")`.
    pub fn new(method: &str, path_with_query: &str) -> Self {
        Request {
            remote: None,
            method: OnceCell::from(method.to_ascii_uppercase()),
            scheme: OnceCell::from("http".to_owned()),
            authority: OnceCell::from(String::new()),
            path_with_query: OnceCell::from(path_with_query.to_owned()),
            headers: Headers::new(),
            body: Body::plain(None),
        }
    }

    /// The host's request behind handle `handle`.
    pub(crate) fn remote(handle: u32) -> Self {
        Request {
            remote: Some(handle),
            method: OnceCell::new(),
            scheme: OnceCell::new(),
            authority: OnceCell::new(),
            path_with_query: OnceCell::new(),
            headers: Headers::remote(Remote::Request(handle)),
            body: Body::remote(Remote::Request(handle)),
        }
    }

    /// The handle of the host's request, when this is one.
    pub(crate) fn handle(&self) -> Option<u32> {
        self.remote
    }

    fn host<T>(&self, call: impl FnOnce(&wit::Request) -> T) -> T {
        Remote::Request(self.remote.expect("a plain request has every field")).request(call)
    }

    /// Builder form of [`Headers::append`].
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Builder form of [`Request::set_body`].
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.set_body(body);
        self
    }

    /// The method, upper-case.
    pub fn method(&self) -> &str {
        self.method.get_or_init(|| self.host(|r| r.method()))
    }

    /// Change the method sent upstream.
    pub fn set_method(&mut self, method: &str) {
        let method = method.to_ascii_uppercase();
        if self.remote.is_some() {
            self.host(|r| r.set_method(&method));
        }
        self.method = OnceCell::from(method);
    }

    /// `http` or `https`: how the client reached the gateway.
    pub fn scheme(&self) -> &str {
        self.scheme.get_or_init(|| self.host(|r| r.scheme()))
    }

    /// The authority (`Host`) the client asked for.
    pub fn authority(&self) -> &str {
        self.authority.get_or_init(|| self.host(|r| r.authority()))
    }

    /// The path without the query, e.g. `/users/42`.
    pub fn path(&self) -> &str {
        let pq = self.path_with_query();
        pq.split_once('?').map_or(pq, |(p, _)| p)
    }

    /// The raw query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.path_with_query().split_once('?').map(|(_, q)| q)
    }

    /// The value of query parameter `name` (percent-decoding is not applied).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Path and query as they will be sent upstream.
    pub fn path_with_query(&self) -> &str {
        self.path_with_query
            .get_or_init(|| self.host(|r| r.path_with_query()))
    }

    /// Replace path and query sent upstream; must start with `/`.
    pub fn set_path_with_query(&mut self, path_with_query: impl Into<String>) {
        let pq = path_with_query.into();
        if self.remote.is_some() {
            self.host(|r| r.set_path_with_query(&pq));
        }
        self.path_with_query = OnceCell::from(pq);
    }

    /// Replace the path, keeping the query.
    pub fn set_path(&mut self, path: &str) {
        let pq = match self.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        self.set_path_with_query(pq);
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, to change them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Shorthand for `headers().get(name)`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Shorthand for `headers_mut().set(name, value)`.
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.headers.set(name, value);
    }

    /// The token of an `Authorization: Bearer <token>` header (scheme matched without regard to
    /// case), if there is a non-empty one.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// The body, when the filter declared [`crate::Needs::request_body`] (or set one). In the
    /// gateway the first call copies it from the host; [`Request::body_size`] and
    /// [`Request::json_at`] do not.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.get()
    }

    /// The body's size, without reading it.
    pub fn body_size(&self) -> Option<u64> {
        self.body.size()
    }

    /// Up to `len` bytes of the body from `offset` (empty past its end), `None` without a
    /// body. In the gateway only those bytes are copied in: read a large body piece by piece.
    pub fn body_chunk(&self, offset: u64, len: u32) -> Option<Vec<u8>> {
        self.body.chunk(offset, len)
    }

    /// Replace the body; the gateway fixes `content-length`.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body.set(body.into());
    }

    /// Decode the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_json(self.body())
    }

    /// Encode `value` as the JSON body and set `content-type: application/json`.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.set_body(serde_json::to_vec(value)?);
        self.headers.set("content-type", "application/json");
        Ok(())
    }

    /// The value at `path` of the JSON body (see [`crate::json`] for paths); `None` when
    /// absent. In the gateway the host reads it: the body is not copied into the filter.
    pub fn json_at(&self, path: &str) -> Result<Option<Value>, JsonError> {
        self.body.json_at(path)
    }

    /// Apply `edits` to the JSON body, in order. In the gateway the host does it (validating
    /// the body as it goes), so the body is never copied into the filter.
    pub fn edit_json(&mut self, edits: &[json::Edit]) -> Result<(), JsonError> {
        self.body.edit_json(edits)
    }

    /// A plain copy of every field (from the host, for the host's request).
    fn snapshot(&self) -> Request {
        Request {
            remote: None,
            method: OnceCell::from(self.method().to_owned()),
            scheme: OnceCell::from(self.scheme().to_owned()),
            authority: OnceCell::from(self.authority().to_owned()),
            path_with_query: OnceCell::from(self.path_with_query().to_owned()),
            headers: self.headers.snapshot(),
            body: Body::plain(self.body().map(<[u8]>::to_vec)),
        }
    }

    /// Its fields: method, scheme, authority, path and query, headers, body.
    pub(crate) fn into_parts(self) -> (String, String, String, String, Headers, Option<Vec<u8>>) {
        let plain = match self.remote {
            Some(_) => self.snapshot(),
            None => self,
        };
        (
            plain.method.into_inner().unwrap_or_default(),
            plain.scheme.into_inner().unwrap_or_default(),
            plain.authority.into_inner().unwrap_or_default(),
            plain.path_with_query.into_inner().unwrap_or_default(),
            plain.headers,
            plain.body.into_inner(),
        )
    }

    pub(crate) fn from_parts(
        method: String,
        scheme: String,
        authority: String,
        path_with_query: String,
        headers: Headers,
        body: Option<Vec<u8>>,
    ) -> Request {
        Request {
            remote: None,
            method: OnceCell::from(method),
            scheme: OnceCell::from(scheme),
            authority: OnceCell::from(authority),
            path_with_query: OnceCell::from(path_with_query),
            headers,
            body: Body::plain(body),
        }
    }
}

impl Clone for Request {
    /// A plain copy (of the host's request's current values).
    fn clone(&self) -> Self {
        self.snapshot()
    }
}

impl PartialEq for Request {
    fn eq(&self, other: &Self) -> bool {
        self.method() == other.method()
            && self.scheme() == other.scheme()
            && self.authority() == other.authority()
            && self.path_with_query() == other.path_with_query()
            && self.headers == other.headers
            && self.body() == other.body()
    }
}

impl Eq for Request {}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path_with_query", &self.path_with_query())
            .field("headers", &self.headers)
            .field("body", &self.body().map(String::from_utf8_lossy))
            .finish()
    }
}

/// An HTTP response: from the upstream, or built by a filter to answer at once.
///
/// In a response phase it is a handle to the host's response (as [`Request`] is); built with
/// [`Response::new`] and its shorthands, it is a plain value the gateway takes when the phase
/// returns it.
pub struct Response {
    remote: Option<u32>,
    status: OnceCell<u16>,
    pub(crate) headers: Headers,
    body: Body,
}

impl Response {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            remote: None,
            status: OnceCell::from(status),
            headers: Headers::new(),
            body: Body::plain(None),
        }
    }

    pub(crate) fn remote(handle: u32) -> Self {
        Response {
            remote: Some(handle),
            status: OnceCell::new(),
            headers: Headers::remote(Remote::Response(handle)),
            body: Body::remote(Remote::Response(handle)),
        }
    }

    pub(crate) fn handle(&self) -> Option<u32> {
        self.remote
    }

    fn host<T>(&self, call: impl FnOnce(&wit::Response) -> T) -> T {
        Remote::Response(self.remote.expect("a plain response has every field")).response(call)
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(text.into().into_bytes())
    }

    /// An `application/json` response. Serializing plain data does not fail; if `value`'s
    /// `Serialize` impl does, the body is `null`.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()))
    }

    /// RFC 6750's answer to a request without a bearer token: 401,
    /// `WWW-Authenticate: Bearer realm="wasmgate"`, body `{"error":"missing bearer token"}`.
    pub fn bearer_missing() -> Self {
        Self::json(401, &serde_json::json!({ "error": "missing bearer token" }))
            .with_header("www-authenticate", "Bearer realm=\"wasmgate\"")
    }

    /// RFC 6750's answer to a bad bearer token: `status` (401 for `invalid_token`, 403 for
    /// `insufficient_scope`), a `WWW-Authenticate: Bearer error=..., error_description=...`
    /// challenge (with `scope=...` when given) and the same error as a JSON body.
    pub fn bearer_error(status: u16, error: &str, description: &str, scope: Option<&str>) -> Self {
        let mut challenge =
            format!("Bearer error=\"{error}\", error_description=\"{description}\"");
        if let Some(scope) = scope {
            challenge.push_str(&format!(", scope=\"{scope}\""));
        }
        Self::json(
            status,
            &serde_json::json!({ "error": error, "error_description": description }),
        )
        .with_header("www-authenticate", challenge)
    }

    /// Builder form of [`Headers::append`].
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Builder form of [`Response::set_body`].
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.set_body(body);
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        *self.status.get_or_init(|| self.host(|r| r.status()))
    }

    /// Change the status code (200 to 599 in the gateway).
    pub fn set_status(&mut self, status: u16) {
        if self.remote.is_some() {
            self.host(|r| r.set_status(status));
        }
        self.status = OnceCell::from(status);
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, to change them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Shorthand for `headers().get(name)`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Shorthand for `headers_mut().set(name, value)`.
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.headers.set(name, value);
    }

    /// The body, when the filter declared [`crate::Needs::response_body`] (or set one).
    pub fn body(&self) -> Option<&[u8]> {
        self.body.get()
    }

    /// As [`Request::body_size`].
    pub fn body_size(&self) -> Option<u64> {
        self.body.size()
    }

    /// As [`Request::body_chunk`].
    pub fn body_chunk(&self, offset: u64, len: u32) -> Option<Vec<u8>> {
        self.body.chunk(offset, len)
    }

    /// Replace the body; the gateway fixes `content-length`.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body.set(body.into());
    }

    /// Decode the body as JSON.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_json(self.body())
    }

    /// Encode `value` as the JSON body and set `content-type: application/json`.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.set_body(serde_json::to_vec(value)?);
        self.headers.set("content-type", "application/json");
        Ok(())
    }

    /// As [`Request::json_at`].
    pub fn json_at(&self, path: &str) -> Result<Option<Value>, JsonError> {
        self.body.json_at(path)
    }

    /// As [`Request::edit_json`].
    pub fn edit_json(&mut self, edits: &[json::Edit]) -> Result<(), JsonError> {
        self.body.edit_json(edits)
    }

    fn snapshot(&self) -> Response {
        Response {
            remote: None,
            status: OnceCell::from(self.status()),
            headers: self.headers.snapshot(),
            body: Body::plain(self.body().map(<[u8]>::to_vec)),
        }
    }

    /// Status, headers, body.
    pub(crate) fn into_parts(self) -> (u16, Headers, Option<Vec<u8>>) {
        let plain = match self.remote {
            Some(_) => self.snapshot(),
            None => self,
        };
        (
            plain.status.into_inner().unwrap_or_default(),
            plain.headers,
            plain.body.into_inner(),
        )
    }

    pub(crate) fn from_parts(status: u16, headers: Headers, body: Option<Vec<u8>>) -> Response {
        Response {
            remote: None,
            status: OnceCell::from(status),
            headers,
            body: Body::plain(body),
        }
    }
}

impl Clone for Response {
    /// A plain copy (of the host's response's current values).
    fn clone(&self) -> Self {
        self.snapshot()
    }
}

impl PartialEq for Response {
    fn eq(&self, other: &Self) -> bool {
        self.status() == other.status()
            && self.headers == other.headers
            && self.body() == other.body()
    }
}

impl Eq for Response {}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status())
            .field("headers", &self.headers)
            .field("body", &self.body().map(String::from_utf8_lossy))
            .finish()
    }
}

fn decode_json<T: DeserializeOwned>(body: Option<&[u8]>) -> Result<T, Error> {
    let body = body.ok_or_else(|| {
        Error::msg("the body was not buffered: declare Needs::request_body / Needs::response_body")
    })?;
    Ok(serde_json::from_slice(body)?)
}

/// Where and for whom the request is handled.
///
/// In the gateway each value is asked for the first time the filter reads it; built with
/// [`Context::new`] (unit tests), it holds plain values.
pub struct Context {
    /// The gateway's context of the running phase (not values of our own).
    remote: bool,
    route: OnceCell<String>,
    params: OnceCell<Vec<(String, String)>>,
    client_addr: OnceCell<String>,
    request_id: OnceCell<String>,
    /// Plain contexts: the headers set for the response, in order (`true`: appended).
    for_response: RefCell<Vec<(String, Vec<u8>, bool)>>,
}

impl Default for Context {
    fn default() -> Self {
        Context::new("", &[])
    }
}

impl Context {
    /// A context for unit tests: route name and captured path parameters.
    pub fn new(route: &str, params: &[(&str, &str)]) -> Self {
        Context {
            remote: false,
            route: OnceCell::from(route.to_owned()),
            params: OnceCell::from(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            ),
            client_addr: OnceCell::from("127.0.0.1:0".to_owned()),
            request_id: OnceCell::from("test".to_owned()),
            for_response: RefCell::default(),
        }
    }

    /// The running phase's context, in the gateway.
    pub(crate) fn remote() -> Self {
        Context {
            remote: true,
            route: OnceCell::new(),
            params: OnceCell::new(),
            client_addr: OnceCell::new(),
            request_id: OnceCell::new(),
            for_response: RefCell::default(),
        }
    }

    fn host<T>(&self, call: impl FnOnce() -> T) -> T {
        assert!(self.remote, "a plain context has every field");
        call()
    }

    /// Builder: the client's address (`ip:port`; default `127.0.0.1:0`).
    pub fn with_client_addr(mut self, addr: &str) -> Self {
        self.client_addr = OnceCell::from(addr.to_owned());
        self
    }

    /// Builder: the request id (default `test`).
    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = OnceCell::from(id.to_owned());
        self
    }

    /// The route's name from the gateway config.
    pub fn route(&self) -> &str {
        self.route.get_or_init(|| self.host(wit_context::route))
    }

    /// A path parameter captured by the route pattern, e.g. `id` for `/users/{id}`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All captured path parameters, in pattern order.
    pub fn params(&self) -> &[(String, String)] {
        self.params.get_or_init(|| {
            pairs(&self.host(wit_context::params))
                .map(|(n, v)| {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    (text(n), text(v))
                })
                .collect()
        })
    }

    /// The client's address as `ip:port`.
    pub fn client_addr(&self) -> &str {
        self.client_addr
            .get_or_init(|| self.host(wit_context::client_addr))
    }

    /// The id the gateway gave this request (also sent upstream as `x-request-id`).
    pub fn request_id(&self) -> &str {
        self.request_id
            .get_or_init(|| self.host(wit_context::request_id))
    }

    /// From the request phase: set a header of the response to this request, replacing its
    /// values, without a response phase. The gateway applies it to whatever response goes back
    /// to the client (the upstream's, or one a filter answers with, this filter's own
    /// included) where this filter's response phase would run, before that phase. A filter
    /// that changes the response only this way declares `response_phase: false` in its
    /// [`crate::Needs`]: one call per request instead of two. An invalid name or value, or a
    /// call from the response phase, fails the phase when it returns.
    ///
    /// ```
    /// # use wasmgate_sdk::{Context, Request, Response};
    /// let ctx = Context::default();
    /// ctx.set_response_header("x-served-by", "wasmgate");
    /// let mut resp = Response::new(200);
    /// ctx.apply_response_headers(&mut resp);
    /// assert_eq!(resp.header("x-served-by"), Some("wasmgate"));
    /// ```
    pub fn set_response_header(&self, name: &str, value: impl AsRef<[u8]>) {
        self.for_response(name, value.as_ref(), false);
    }

    /// As [`Context::set_response_header`], but adds a value, keeping the response's others.
    pub fn append_response_header(&self, name: &str, value: impl AsRef<[u8]>) {
        self.for_response(name, value.as_ref(), true);
    }

    fn for_response(&self, name: &str, value: &[u8], append: bool) {
        match (self.remote, append) {
            (true, false) => wit_context::set_response_header(name, value),
            (true, true) => wit_context::append_response_header(name, value),
            (false, _) => {
                self.for_response
                    .borrow_mut()
                    .push((name.to_owned(), value.to_vec(), append));
            }
        }
    }

    /// Unit tests: apply the headers a request phase set with
    /// [`Context::set_response_header`] and [`Context::append_response_header`] to `resp`, in
    /// order, as the gateway does. Nothing happens for the gateway's own context.
    pub fn apply_response_headers(&self, resp: &mut Response) {
        for (name, value, append) in self.for_response.borrow().iter() {
            match append {
                false => resp.headers_mut().set(name, value.clone()),
                true => resp.headers_mut().append(name, value.clone()),
            }
        }
    }

    /// Route, params, client address, request id.
    pub(crate) fn parts(&self) -> (String, Vec<(String, String)>, String, String) {
        (
            self.route().to_owned(),
            self.params().to_vec(),
            self.client_addr().to_owned(),
            self.request_id().to_owned(),
        )
    }
}

impl Clone for Context {
    /// A plain copy (of the gateway's context's values).
    fn clone(&self) -> Self {
        let (route, params, client_addr, request_id) = self.parts();
        Context {
            remote: false,
            route: OnceCell::from(route),
            params: OnceCell::from(params),
            client_addr: OnceCell::from(client_addr),
            request_id: OnceCell::from(request_id),
            for_response: self.for_response.clone(),
        }
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Context {}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("route", &self.route())
            .field("params", &self.params())
            .finish()
    }
}

/// What the request phase decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Continue to the next filter and the upstream with this request.
    Continue(Request),
    /// Answer the client now with this response; the upstream is not called.
    Respond(Response),
}

impl From<Request> for Action {
    fn from(req: Request) -> Self {
        Action::Continue(req)
    }
}

impl From<Response> for Action {
    fn from(resp: Response) -> Self {
        Action::Respond(resp)
    }
}

macro_rules! on_message {
    ($remote:expr, |$m:ident| $body:expr) => {
        match $remote {
            Remote::Request(_) => $remote.request(|$m| $body),
            Remote::Response(_) => $remote.response(|$m| $body),
        }
    };
}

/// A message's body: the host's (fetched once, when first read) or a plain value.
struct Body {
    remote: Option<Remote>,
    bytes: OnceCell<Option<Vec<u8>>>,
}

impl Body {
    fn plain(bytes: Option<Vec<u8>>) -> Body {
        Body {
            remote: None,
            bytes: OnceCell::from(bytes),
        }
    }

    fn remote(remote: Remote) -> Body {
        Body {
            remote: Some(remote),
            bytes: OnceCell::new(),
        }
    }

    /// The host's message, while the body has not been copied in.
    fn unread(&self) -> Option<Remote> {
        self.remote.filter(|_| self.bytes.get().is_none())
    }

    fn get(&self) -> Option<&[u8]> {
        self.bytes
            .get_or_init(|| on_message!(self.remote.expect("a plain body is set"), |m| m.body()))
            .as_deref()
    }

    fn size(&self) -> Option<u64> {
        match self.unread() {
            Some(remote) => on_message!(remote, |m| m.body_size()),
            None => self.get().map(|b| b.len() as u64),
        }
    }

    fn chunk(&self, offset: u64, len: u32) -> Option<Vec<u8>> {
        if let Some(remote) = self.unread() {
            return on_message!(remote, |m| m.body_chunk(offset, len));
        }
        let body = self.get()?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(body.len());
        let end = start.saturating_add(len as usize).min(body.len());
        Some(body[start..end].to_vec())
    }

    fn set(&mut self, body: Vec<u8>) {
        if let Some(remote) = self.remote {
            on_message!(remote, |m| m.set_body(&body));
        }
        self.bytes = OnceCell::from(Some(body));
    }

    fn json_at(&self, path: &str) -> Result<Option<Value>, JsonError> {
        match self.unread() {
            Some(remote) => json_text(on_message!(remote, |m| m.json_get(path))),
            None => json::get_in(self.get(), path),
        }
    }

    fn edit_json(&mut self, edits: &[json::Edit]) -> Result<(), JsonError> {
        let edited = match self.remote {
            Some(remote) => {
                on_message!(remote, |m| m.edit_json(&json::to_wit(edits)))?;
                None
            }
            None => Some(json::edit_bytes(self.get(), edits)?),
        };
        self.bytes = edited.map_or_else(OnceCell::new, |b| OnceCell::from(Some(b)));
        Ok(())
    }

    fn into_inner(self) -> Option<Vec<u8>> {
        self.bytes.into_inner().flatten()
    }
}

/// A message held by the host, by the handle a phase was given.
#[derive(Clone, Copy)]
enum Remote {
    Request(u32),
    Response(u32),
}

impl Remote {
    fn request<T>(self, call: impl FnOnce(&wit::Request) -> T) -> T {
        let Remote::Request(handle) = self else {
            unreachable!("a response handle used as a request")
        };
        // SAFETY: `handle` is the borrowed handle of the phase's request; ManuallyDrop keeps
        // the guest from dropping what it does not own.
        let req = std::mem::ManuallyDrop::new(unsafe { wit::Request::from_handle(handle) });
        call(&req)
    }

    fn response<T>(self, call: impl FnOnce(&wit::Response) -> T) -> T {
        let Remote::Response(handle) = self else {
            unreachable!("a request handle used as a response")
        };
        // SAFETY: as for `request`.
        let resp = std::mem::ManuallyDrop::new(unsafe { wit::Response::from_handle(handle) });
        call(&resp)
    }

    fn header(self, name: &str) -> Option<Vec<u8>> {
        on_message!(self, |m| m.header(name))
    }

    fn header_all(self, name: &str) -> Vec<Vec<u8>> {
        let packed = on_message!(self, |m| m.header_all(name));
        unpack(&packed).map(<[u8]>::to_vec).collect()
    }

    fn headers(self) -> Vec<(String, Vec<u8>)> {
        pairs(&on_message!(self, |m| m.headers()))
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
            .collect()
    }

    fn set_header(self, name: &str, value: &[u8]) {
        on_message!(self, |m| m.set_header(name, value))
    }

    fn append_header(self, name: &str, value: &[u8]) {
        on_message!(self, |m| m.append_header(name, value))
    }

    fn remove_header(self, name: &str) -> bool {
        on_message!(self, |m| m.remove_header(name))
    }
}

/// The items of a list the contract packs as item, NUL, item, NUL, ...
fn unpack(packed: &[u8]) -> impl Iterator<Item = &[u8]> {
    packed
        .strip_suffix(&[0])
        .map(|items| items.split(|&b| b == 0))
        .into_iter()
        .flatten()
}

/// The pairs of a list packed as name, NUL, value, NUL, ...
fn pairs(packed: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut items = unpack(packed);
    std::iter::from_fn(move || Some((items.next()?, items.next()?)))
}

/// Byte strings kept for as long as their owner, so that `&[u8]` into them can be handed out
/// from `&self`; emptied only through `&mut self`, when nothing borrows them.
#[derive(Default)]
struct Arena(RefCell<Vec<*mut [u8]>>);

impl Arena {
    fn keep(&self, bytes: Vec<u8>) -> &[u8] {
        let raw = Box::into_raw(bytes.into_boxed_slice());
        self.0.borrow_mut().push(raw);
        // SAFETY: `raw` stays allocated, and is never written, until `self` drops: entries are
        // only freed in `Drop`, which no `&self` borrow outlives.
        unsafe { &*raw }
    }
}

// SAFETY: the entries are owned boxes (as a `Vec<Box<[u8]>>` would be), reachable only
// through the arena.
unsafe impl Send for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        for raw in self.0.get_mut().drain(..) {
            // SAFETY: each entry came from `Box::into_raw` in `keep`, and is freed once.
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

/// The value of a JSON body operation the host answered with JSON text.
fn json_text(answer: Result<Option<String>, wit::JsonError>) -> Result<Option<Value>, JsonError> {
    match answer? {
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| JsonError::NotJson(e.to_string())),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_lists_unpack_to_their_items() {
        assert_eq!(unpack(b"").count(), 0);
        assert_eq!(unpack(b"\0").collect::<Vec<_>>(), [b""]);
        assert_eq!(
            pairs(b"a\x001\0b\0\0").collect::<Vec<_>>(),
            [(&b"a"[..], &b"1"[..]), (&b"b"[..], &b""[..])]
        );
    }

    #[test]
    fn plain_values_work_behind_the_same_methods() {
        let mut req = Request::new("post", "/a?x=1")
            .with_header("X-One", "1")
            .with_body(r#"{"id": 7}"#);
        req.set_header("x-one", "2");
        req.set_path("/b");
        assert_eq!(req.method(), "POST");
        assert_eq!(req.path_with_query(), "/b?x=1");
        assert_eq!(req.header("x-one"), Some("2"));
        assert_eq!(req.headers().len(), 1);
        req.edit_json(&[json::Edit::Rename {
            from: "id".into(),
            to: "userId".into(),
        }])
        .unwrap();
        assert_eq!(req.json_at("userId").unwrap(), Some(serde_json::json!(7)));
        assert_eq!(req.body(), Some(&br#"{"userId":7}"#[..]));
        let copy = req.clone();
        assert_eq!(copy, req);
        assert_eq!(
            Request::new("GET", "/").json_at("a"),
            Err(json::JsonError::NoBody)
        );
    }
}
