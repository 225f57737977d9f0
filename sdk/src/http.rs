//! Typed requests, responses and headers, as a filter sees them.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name` (case-insensitive) as text; `None` when absent or not UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `name` (case-insensitive) as raw bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `name` (case-insensitive), in order, as raw bytes.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// Replace every value of `name` with one value.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.remove(name);
        self.append(name, value);
    }

    /// Add a value for `name`, keeping existing ones.
    pub fn append(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Remove every value of `name`; returns whether any was present.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.0.len() != before
    }

    /// All `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn from_wire(list: Vec<(String, Vec<u8>)>) -> Self {
        Self(list)
    }

    pub(crate) fn into_wire(self) -> Vec<(String, Vec<u8>)> {
        self.0
    }
}

/// An HTTP request on its way to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub(crate) method: String,
    pub(crate) scheme: String,
    pub(crate) authority: String,
    pub(crate) path_with_query: String,
    pub(crate) headers: Headers,
    pub(crate) body: Option<Vec<u8>>,
}

impl Request {
    /// A request with no headers and no body, e.g. for unit tests:
    /// `Request::new("GET", "/users/42?full=1")`.
    pub fn new(method: &str, path_with_query: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            scheme: "http".into(),
            authority: String::new(),
            path_with_query: path_with_query.into(),
            headers: Headers::new(),
            body: None,
        }
    }

    /// Builder form of [`Headers::append`].
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Builder form of [`Request::set_body`].
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The method, upper-case.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Change the method sent upstream.
    pub fn set_method(&mut self, method: &str) {
        self.method = method.to_ascii_uppercase();
    }

    /// `http` or `https`: how the client reached the gateway.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority (`Host`) the client asked for.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path without the query, e.g. `/users/42`.
    pub fn path(&self) -> &str {
        self.path_with_query
            .split_once('?')
            .map_or(self.path_with_query.as_str(), |(p, _)| p)
    }

    /// The raw query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.path_with_query.split_once('?').map(|(_, q)| q)
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
        &self.path_with_query
    }

    /// Replace path and query sent upstream; must start with `/`.
    pub fn set_path_with_query(&mut self, path_with_query: impl Into<String>) {
        self.path_with_query = path_with_query.into();
    }

    /// Replace the path, keeping the query.
    pub fn set_path(&mut self, path: &str) {
        self.path_with_query = match self.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
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

    /// The body, when the filter declared [`crate::Needs::request_body`] (or set one).
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// Replace the body; the gateway fixes `content-length`.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body = Some(body.into());
    }

    /// Decode the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_json(self.body.as_deref())
    }

    /// Encode `value` as the JSON body and set `content-type: application/json`.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.body = Some(serde_json::to_vec(value)?);
        self.headers.set("content-type", "application/json");
        Ok(())
    }
}

/// An HTTP response: from the upstream, or built by a filter to answer at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Headers,
    pub(crate) body: Option<Vec<u8>>,
}

impl Response {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Headers::new(),
            body: None,
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        let mut resp = Self::new(status);
        resp.headers
            .set("content-type", "text/plain; charset=utf-8");
        resp.body = Some(text.into().into_bytes());
        resp
    }

    /// An `application/json` response. Serializing plain data does not fail; if `value`'s
    /// `Serialize` impl does, the body is `null`.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        let mut resp = Self::new(status);
        resp.headers.set("content-type", "application/json");
        resp.body = Some(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()));
        resp
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
        self.body = Some(body.into());
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Change the status code.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
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
        self.body.as_deref()
    }

    /// Replace the body; the gateway fixes `content-length`.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body = Some(body.into());
    }

    /// Decode the body as JSON.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_json(self.body.as_deref())
    }

    /// Encode `value` as the JSON body and set `content-type: application/json`.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.body = Some(serde_json::to_vec(value)?);
        self.headers.set("content-type", "application/json");
        Ok(())
    }
}

fn decode_json<T: DeserializeOwned>(body: Option<&[u8]>) -> Result<T, Error> {
    let body = body.ok_or_else(|| {
        Error::msg("the body was not buffered: declare Needs::request_body / Needs::response_body")
    })?;
    Ok(serde_json::from_slice(body)?)
}

/// Where and for whom the request is handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub(crate) route: String,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) client_addr: String,
    pub(crate) request_id: String,
}

impl Context {
    /// A context for unit tests: route name and captured path parameters.
    pub fn new(route: &str, params: &[(&str, &str)]) -> Self {
        Self {
            route: route.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client_addr: "127.0.0.1:0".into(),
            request_id: "test".into(),
        }
    }

    /// Builder: the client's address (`ip:port`; default `127.0.0.1:0`).
    pub fn with_client_addr(mut self, addr: &str) -> Self {
        self.client_addr = addr.into();
        self
    }

    /// Builder: the request id (default `test`).
    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = id.into();
        self
    }

    /// The route's name from the gateway config.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// A path parameter captured by the route pattern, e.g. `id` for `/users/{id}`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All captured path parameters, in pattern order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The client's address as `ip:port`.
    pub fn client_addr(&self) -> &str {
        &self.client_addr
    }

    /// The id the gateway gave this request (also sent upstream as `x-request-id`).
    pub fn request_id(&self) -> &str {
        &self.request_id
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
