//! The HTTP messages a filter works on, held by the host (`wasmgate:filter@0.3.0`): the
//! request, the response and the route context stay in the store while a phase runs, and the
//! guest reaches them through borrowed handles. A read copies out only what the guest asks for;
//! a write is checked here, as it is made, and an invalid one is not applied but recorded: the
//! phase then fails as [`crate::FilterError::Invalid`].
//!
//! Handles are not kept in a resource table: the phase's request and response are each the
//! one value of their type in the store, so their handles carry a fixed rep ([`HELD`]);
//! responses a filter builds to answer early live in [`Held::built`], at rep `1 + index`. The
//! context is plain functions (the `context` import) over the phase's [`RouteInfo`].

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use wasmtime::component::Resource;

use crate::bindings::wasmgate::filter::context;
use crate::bindings::wasmgate::filter::types::{
    self, Headers, HostRequest, HostResponse, JsonEdit, JsonError,
};
use crate::imports::HostState;
use wasmgate_sdk::json;

/// The rep of the handles of the phase's own context, request and response.
pub(crate) const HELD: u32 = 0;

/// Bytes counted for each header a filter writes, besides its name and value (as HTTP/2
/// counts a header list's size): a filter cannot grow a header map without bound by writing
/// empty values.
const HEADER_OVERHEAD: usize = 32;

/// A request on its way upstream, as the filters of its route see and change it.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// `http` or `https`: how the client reached the gateway.
    pub scheme: &'static str,
    /// What the client asked for in `Host` or the URI's authority, possibly empty.
    pub authority: String,
    /// Path and query as sent upstream; starts with `/`.
    pub path_and_query: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, when held: a filter of the route reads it, or one replaced it. `None` while
    /// it streams through untouched.
    pub body: Option<Bytes>,
}

/// A response: the upstream's, or one a filter built.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status, 200 to 599 once a filter has had it.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, when held (see [`HttpRequest::body`]).
    pub body: Option<Bytes>,
}

impl Default for HttpResponse {
    fn default() -> Self {
        HttpResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: None,
        }
    }
}

/// Where and for whom a request is handled. Nothing here is formatted until a filter asks.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// The route's name.
    pub route: Arc<str>,
    /// Path parameters the route pattern captured, in pattern order.
    pub params: Vec<(String, String)>,
    /// The client's address.
    pub client: ClientAddr,
    /// The request's id.
    pub request_id: Arc<str>,
}

impl Default for RouteInfo {
    fn default() -> Self {
        RouteInfo {
            route: Arc::from(""),
            params: Vec::new(),
            client: ClientAddr::Text(String::new()),
            request_id: Arc::from(""),
        }
    }
}

/// A client's address, as the gateway knows it or as a test gives it.
#[derive(Debug, Clone)]
pub enum ClientAddr {
    /// The connection's peer.
    Socket(std::net::SocketAddr),
    /// `ip:port` as text.
    Text(String),
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::Socket(addr) => f.write_str(crate::AddrText::socket(*addr).as_str()),
            ClientAddr::Text(text) => f.write_str(text),
        }
    }
}

/// What the phase running in a store works on.
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) ctx: Option<Arc<RouteInfo>>,
    pub(crate) request: Option<HttpRequest>,
    pub(crate) response: Option<HttpResponse>,
    /// Responses the filter built in this call (rep `1 + index`); `None` once returned or
    /// dropped.
    pub(crate) built: Vec<Option<HttpResponse>>,
    /// Headers a request phase set for its response (`context.set-response-header`).
    pub(crate) for_response: ResponseHeaders,
    /// The first write that was refused, for the phase's failure.
    pub(crate) invalid: Option<String>,
    /// Bytes the filter wrote in this call (names, values, paths, bodies).
    written: usize,
    /// The most it may write.
    max_output: usize,
}

impl Held {
    /// Start a phase call.
    pub(crate) fn begin(&mut self, ctx: Arc<RouteInfo>, max_output: usize) {
        self.ctx = Some(ctx);
        self.max_output = max_output;
        self.written = 0;
        self.invalid = None;
        self.for_response.0.clear();
    }

    /// End a phase call: nothing of it stays in the store.
    pub(crate) fn end(&mut self) -> Option<String> {
        self.ctx = None;
        self.request = None;
        self.response = None;
        self.built.clear();
        self.invalid.take()
    }

    /// The response the filter built under `rep`, taken out.
    pub(crate) fn take_built(&mut self, rep: u32) -> Option<HttpResponse> {
        let slot = rep.checked_sub(1)?;
        self.built.get_mut(slot as usize)?.take()
    }

    fn refuse(&mut self, why: String) {
        if self.invalid.is_none() {
            self.invalid = Some(why);
        }
    }

    /// Count `bytes` written; false (and the phase fails) past the cap.
    fn write(&mut self, bytes: usize) -> bool {
        self.written = self.written.saturating_add(bytes);
        if self.written > self.max_output {
            let (written, cap) = (self.written, self.max_output);
            self.refuse(format!("wrote {written} bytes, over its cap of {cap}"));
            return false;
        }
        true
    }

    fn response(&mut self, handle: &Resource<HttpResponse>) -> Option<&mut HttpResponse> {
        self.response_at(handle.rep())
    }

    fn response_at(&mut self, rep: u32) -> Option<&mut HttpResponse> {
        match rep {
            HELD => self.response.as_mut(),
            rep => self.built.get_mut(rep as usize - 1)?.as_mut(),
        }
    }

    fn headers_mut(&mut self, target: Target) -> Option<&mut HeaderMap> {
        match target {
            Target::Request => self.request.as_mut().map(|r| &mut r.headers),
            Target::Response(rep) => self.response_at(rep).map(|r| &mut r.headers),
        }
    }

    fn body_mut(&mut self, target: Target) -> Option<&mut Option<Bytes>> {
        match target {
            Target::Request => self.request.as_mut().map(|r| &mut r.body),
            Target::Response(rep) => self.response_at(rep).map(|r| &mut r.body),
        }
    }
}

/// Headers a request phase set for the response to its request, in the order it set them
/// (`context.set-response-header`, `context.append-response-header`). The gateway applies them
/// where that filter's response phase would run, before it.
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders(Vec<(HeaderName, HeaderValue, Write)>);

impl ResponseHeaders {
    /// Whether the phase set none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Apply them to a response's headers, in order: a set replaces the values the response
    /// had, an append keeps them.
    pub fn apply(self, map: &mut HeaderMap) {
        for (name, value, how) in self.0 {
            // The filter's writes were counted against its output cap; the map's own limit
            // (32 768 entries) is far beyond what that lets through.
            let _ = match how {
                Write::Set => map.try_insert(name, value).map(drop),
                Write::Append => map.try_append(name, value).map(drop),
            };
        }
    }
}

/// The message a write goes to.
#[derive(Clone, Copy)]
enum Target {
    Request,
    /// The response at this rep.
    Response(u32),
}

/// A header name and value from the guest, checked.
fn header(name: &str, value: Vec<u8>) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    let value = HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

/// How a header write changes the map.
#[derive(Debug, Clone, Copy)]
enum Write {
    Set,
    Append,
}

/// Every header as the contract packs them in one list: name, NUL, value, NUL, for each.
fn headers_of(map: &HeaderMap) -> Vec<u8> {
    let size = map
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 2)
        .sum();
    let mut out = Vec::with_capacity(size);
    for (name, value) in map {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

fn first(map: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    map.get(name).map(|v| v.as_bytes().to_vec())
}

/// Every value of `name`, each followed by a NUL.
fn all(map: &HeaderMap, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for value in map.get_all(name) {
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

fn chunk(body: &Option<Bytes>, offset: u64, len: u32) -> Option<Vec<u8>> {
    let body = body.as_ref()?;
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(body.len());
    let end = start.saturating_add(len as usize).min(body.len());
    Some(body[start..end].to_vec())
}

/// A header write on `target` (reached through `held`), checked and counted.
fn write_header(held: &mut Held, target: Target, how: Write, name: String, value: Vec<u8>) {
    if !held.write(name.len() + value.len() + HEADER_OVERHEAD) {
        return;
    }
    let (name, value) = match header(&name, value) {
        Ok(pair) => pair,
        Err(why) => return held.refuse(why),
    };
    let Some(map) = held.headers_mut(target) else {
        return;
    };
    let done = match how {
        Write::Set => map.try_insert(name, value).map(drop),
        Write::Append => map.try_append(name, value).map(drop),
    };
    if done.is_err() {
        held.refuse("too many headers".into());
    }
}

fn replace_headers(held: &mut Held, target: Target, list: Headers) {
    let size: usize = list
        .iter()
        .map(|(n, v)| n.len() + v.len() + HEADER_OVERHEAD)
        .sum();
    if !held.write(size) {
        return;
    }
    let mut map = HeaderMap::new();
    for (name, value) in list {
        match header(&name, value) {
            Ok((name, value)) => {
                if map.try_append(name, value).is_err() {
                    return held.refuse("too many headers".into());
                }
            }
            Err(why) => return held.refuse(why),
        }
    }
    if let Some(target) = held.headers_mut(target) {
        *target = map;
    }
}

fn set_body(held: &mut Held, target: Target, body: Vec<u8>) {
    if held.write(body.len())
        && let Some(slot) = held.body_mut(target)
    {
        *slot = Some(Bytes::from(body));
    }
}

/// The value at `path` of a JSON body, as JSON text.
fn json_get(body: &Option<Bytes>, path: &str) -> Result<Option<String>, JsonError> {
    json::get_in(body.as_deref(), path)
        .map(|v| v.map(|v| v.to_string()))
        .map_err(wit_json_error)
}

/// `edits` applied to a JSON body, by the SDK's own code: the new body.
fn json_edit(body: &Option<Bytes>, edits: Vec<JsonEdit>) -> Result<Vec<u8>, JsonError> {
    let edits = edits
        .into_iter()
        .map(|edit| {
            Ok(match edit {
                JsonEdit::Rename((from, to)) => json::Edit::Rename { from, to },
                JsonEdit::Move((from, to)) => json::Edit::Move { from, to },
                JsonEdit::Remove(path) => json::Edit::Remove { path },
                JsonEdit::Set((path, value)) => json::Edit::Set {
                    value: serde_json::from_str(&value).map_err(|e| {
                        JsonError::Edit(format!("the value for {path:?} is not JSON: {e}"))
                    })?,
                    path,
                },
                JsonEdit::Retain(paths) => json::Edit::Retain { paths },
            })
        })
        .collect::<Result<Vec<_>, JsonError>>()?;
    json::edit_bytes(body.as_deref(), &edits).map_err(wit_json_error)
}

fn wit_json_error(err: json::JsonError) -> JsonError {
    match err {
        json::JsonError::NoBody => JsonError::NoBody,
        json::JsonError::NotJson(why) => JsonError::NotJson(why),
        json::JsonError::Edit(why) => JsonError::Edit(why),
    }
}

impl types::Host for HostState {}

impl HostState {
    fn req(&mut self) -> Option<&mut HttpRequest> {
        self.held.request.as_mut()
    }
}

impl HostRequest for HostState {
    fn method(&mut self, _: Resource<HttpRequest>) -> String {
        self.req().map(|r| r.method.to_string()).unwrap_or_default()
    }

    fn set_method(&mut self, _: Resource<HttpRequest>, method: String) {
        if !self.held.write(method.len()) {
            return;
        }
        match Method::from_bytes(method.as_bytes()) {
            Ok(m) => {
                if let Some(r) = self.req() {
                    r.method = m;
                }
            }
            Err(_) => self.held.refuse(format!("method {method:?}")),
        }
    }

    fn scheme(&mut self, _: Resource<HttpRequest>) -> String {
        self.req().map(|r| r.scheme.to_owned()).unwrap_or_default()
    }

    fn authority(&mut self, _: Resource<HttpRequest>) -> String {
        self.req().map(|r| r.authority.clone()).unwrap_or_default()
    }

    fn path_with_query(&mut self, _: Resource<HttpRequest>) -> String {
        self.req()
            .map(|r| r.path_and_query.clone())
            .unwrap_or_default()
    }

    fn set_path_with_query(&mut self, _: Resource<HttpRequest>, path: String) {
        if !self.held.write(path.len()) {
            return;
        }
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            return self.held.refuse(format!("path {path:?}"));
        }
        if let Some(r) = self.req() {
            r.path_and_query = path;
        }
    }

    fn header(&mut self, _: Resource<HttpRequest>, name: String) -> Option<Vec<u8>> {
        first(&self.req()?.headers, &name)
    }

    fn header_all(&mut self, _: Resource<HttpRequest>, name: String) -> Vec<u8> {
        self.req()
            .map(|r| all(&r.headers, &name))
            .unwrap_or_default()
    }

    fn headers(&mut self, _: Resource<HttpRequest>) -> Vec<u8> {
        self.req()
            .map(|r| headers_of(&r.headers))
            .unwrap_or_default()
    }

    fn set_header(&mut self, _: Resource<HttpRequest>, name: String, value: Vec<u8>) {
        write_header(&mut self.held, Target::Request, Write::Set, name, value);
    }

    fn append_header(&mut self, _: Resource<HttpRequest>, name: String, value: Vec<u8>) {
        write_header(&mut self.held, Target::Request, Write::Append, name, value);
    }

    fn remove_header(&mut self, _: Resource<HttpRequest>, name: String) -> bool {
        let Some(r) = self.req() else { return false };
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => r.headers.remove(name).is_some(),
            Err(_) => false,
        }
    }

    fn replace_headers(&mut self, _: Resource<HttpRequest>, headers: Headers) {
        replace_headers(&mut self.held, Target::Request, headers);
    }

    fn body_size(&mut self, _: Resource<HttpRequest>) -> Option<u64> {
        Some(self.req()?.body.as_ref()?.len() as u64)
    }

    fn body(&mut self, _: Resource<HttpRequest>) -> Option<Vec<u8>> {
        Some(self.req()?.body.as_ref()?.to_vec())
    }

    fn body_chunk(&mut self, _: Resource<HttpRequest>, offset: u64, len: u32) -> Option<Vec<u8>> {
        chunk(&self.req()?.body, offset, len)
    }

    fn set_body(&mut self, _: Resource<HttpRequest>, body: Vec<u8>) {
        set_body(&mut self.held, Target::Request, body);
    }

    fn json_get(
        &mut self,
        _: Resource<HttpRequest>,
        path: String,
    ) -> Result<Option<String>, JsonError> {
        json_get(&self.req().ok_or(JsonError::NoBody)?.body, &path)
    }

    fn edit_json(
        &mut self,
        _: Resource<HttpRequest>,
        edits: Vec<JsonEdit>,
    ) -> Result<(), JsonError> {
        let body = json_edit(&self.req().ok_or(JsonError::NoBody)?.body, edits)?;
        set_body(&mut self.held, Target::Request, body);
        Ok(())
    }

    fn drop(&mut self, _: Resource<HttpRequest>) -> wasmtime::Result<()> {
        // Only borrowed handles exist: the request is never the guest's to drop.
        Ok(())
    }
}

impl HostResponse for HostState {
    fn new(
        &mut self,
        status: u16,
        headers: Headers,
        body: Option<Vec<u8>>,
    ) -> Resource<HttpResponse> {
        let mut resp = HttpResponse::default();
        match StatusCode::from_u16(status) {
            Ok(s) if (200..=599).contains(&status) => resp.status = s,
            _ => self.held.refuse(format!("status {status}")),
        }
        self.held.built.push(None);
        let rep = self.held.built.len() as u32;
        let handle = Resource::new_own(rep);
        self.held.built[rep as usize - 1] = Some(resp);
        replace_headers(&mut self.held, Target::Response(rep), headers);
        if let Some(body) = body {
            set_body(&mut self.held, Target::Response(rep), body);
        }
        handle
    }

    fn status(&mut self, this: Resource<HttpResponse>) -> u16 {
        self.held.response(&this).map_or(0, |r| r.status.as_u16())
    }

    fn set_status(&mut self, this: Resource<HttpResponse>, status: u16) {
        match StatusCode::from_u16(status) {
            Ok(s) if (200..=599).contains(&status) => {
                if let Some(r) = self.held.response(&this) {
                    r.status = s;
                }
            }
            _ => self.held.refuse(format!("status {status}")),
        }
    }

    fn header(&mut self, this: Resource<HttpResponse>, name: String) -> Option<Vec<u8>> {
        first(&self.held.response(&this)?.headers, &name)
    }

    fn header_all(&mut self, this: Resource<HttpResponse>, name: String) -> Vec<u8> {
        self.held
            .response(&this)
            .map(|r| all(&r.headers, &name))
            .unwrap_or_default()
    }

    fn headers(&mut self, this: Resource<HttpResponse>) -> Vec<u8> {
        self.held
            .response(&this)
            .map(|r| headers_of(&r.headers))
            .unwrap_or_default()
    }

    fn set_header(&mut self, this: Resource<HttpResponse>, name: String, value: Vec<u8>) {
        write_header(
            &mut self.held,
            Target::Response(this.rep()),
            Write::Set,
            name,
            value,
        );
    }

    fn append_header(&mut self, this: Resource<HttpResponse>, name: String, value: Vec<u8>) {
        write_header(
            &mut self.held,
            Target::Response(this.rep()),
            Write::Append,
            name,
            value,
        );
    }

    fn remove_header(&mut self, this: Resource<HttpResponse>, name: String) -> bool {
        let Some(r) = self.held.response(&this) else {
            return false;
        };
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => r.headers.remove(name).is_some(),
            Err(_) => false,
        }
    }

    fn replace_headers(&mut self, this: Resource<HttpResponse>, headers: Headers) {
        replace_headers(&mut self.held, Target::Response(this.rep()), headers);
    }

    fn body_size(&mut self, this: Resource<HttpResponse>) -> Option<u64> {
        Some(self.held.response(&this)?.body.as_ref()?.len() as u64)
    }

    fn body(&mut self, this: Resource<HttpResponse>) -> Option<Vec<u8>> {
        Some(self.held.response(&this)?.body.as_ref()?.to_vec())
    }

    fn body_chunk(
        &mut self,
        this: Resource<HttpResponse>,
        offset: u64,
        len: u32,
    ) -> Option<Vec<u8>> {
        chunk(&self.held.response(&this)?.body, offset, len)
    }

    fn set_body(&mut self, this: Resource<HttpResponse>, body: Vec<u8>) {
        set_body(&mut self.held, Target::Response(this.rep()), body);
    }

    fn json_get(
        &mut self,
        this: Resource<HttpResponse>,
        path: String,
    ) -> Result<Option<String>, JsonError> {
        json_get(
            &self.held.response(&this).ok_or(JsonError::NoBody)?.body,
            &path,
        )
    }

    fn edit_json(
        &mut self,
        this: Resource<HttpResponse>,
        edits: Vec<JsonEdit>,
    ) -> Result<(), JsonError> {
        let body = json_edit(
            &self.held.response(&this).ok_or(JsonError::NoBody)?.body,
            edits,
        )?;
        set_body(&mut self.held, Target::Response(this.rep()), body);
        Ok(())
    }

    fn drop(&mut self, this: Resource<HttpResponse>) -> wasmtime::Result<()> {
        // Only a response the filter built is its to drop.
        if this.rep() != HELD {
            self.held.take_built(this.rep());
        }
        Ok(())
    }
}

impl HostState {
    fn ctx(&self) -> Option<&RouteInfo> {
        self.held.ctx.as_deref()
    }
}

impl context::Host for HostState {
    fn route(&mut self) -> String {
        self.ctx().map(|c| c.route.to_string()).unwrap_or_default()
    }

    fn param(&mut self, name: String) -> Option<String> {
        let ctx = self.ctx()?;
        ctx.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }

    fn params(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in self.ctx().map_or(&[][..], |c| &c.params) {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out
    }

    fn client_addr(&mut self) -> String {
        self.ctx().map(|c| c.client.to_string()).unwrap_or_default()
    }

    fn request_id(&mut self) -> String {
        self.ctx()
            .map(|c| c.request_id.to_string())
            .unwrap_or_default()
    }

    fn set_response_header(&mut self, name: String, value: Vec<u8>) {
        for_response(&mut self.held, Write::Set, name, value);
    }

    fn append_response_header(&mut self, name: String, value: Vec<u8>) {
        for_response(&mut self.held, Write::Append, name, value);
    }
}

/// A header a request phase sets for its response, checked and counted as a header write.
fn for_response(held: &mut Held, how: Write, name: String, value: Vec<u8>) {
    if held.request.is_none() {
        return held.refuse("set a response header outside a request phase".into());
    }
    if !held.write(name.len() + value.len() + HEADER_OVERHEAD) {
        return;
    }
    match header(&name, value) {
        Ok((name, value)) => held.for_response.0.push((name, value, how)),
        Err(why) => held.refuse(why),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn held(max_output: usize) -> Held {
        let mut held = Held::default();
        held.begin(Arc::default(), max_output);
        held.request = Some(HttpRequest::default());
        held
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a filter writes as a header, it is applied exactly when `http` takes the
        /// name and value, and otherwise refused (the phase fails as invalid) with the headers
        /// left as they were.
        #[test]
        fn a_header_write_is_applied_exactly_when_valid(
            name in prop_oneof!["[a-z-]{1,8}", "\\PC{0,12}"],
            value in prop_oneof![
                "[ -~]{0,12}".prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..24),
            ],
            append in any::<bool>(),
        ) {
            let valid = HeaderName::from_bytes(name.as_bytes()).is_ok()
                && HeaderValue::from_bytes(&value).is_ok();
            let mut held = held(1 << 20);
            let how = if append { Write::Append } else { Write::Set };
            write_header(&mut held, Target::Request, how, name.clone(), value.clone());
            let headers = &held.request.as_ref().unwrap().headers;
            prop_assert_eq!(held.invalid.is_none(), valid);
            prop_assert_eq!(headers.len(), usize::from(valid));
            if valid {
                prop_assert_eq!(headers.get(name.as_str()).unwrap().as_bytes(), &value[..]);
            }
        }
    }

    #[test]
    fn writes_past_the_output_cap_are_refused() {
        let mut held = held(100);
        write_header(
            &mut held,
            Target::Request,
            Write::Set,
            "a".into(),
            vec![b'x'; 40],
        );
        assert!(held.invalid.is_none(), "73 bytes of 100");
        write_header(
            &mut held,
            Target::Request,
            Write::Append,
            "b".into(),
            vec![b'x'; 40],
        );
        let why = held.end().expect("refused");
        assert!(why.contains("over its cap of 100"), "{why}");
    }

    #[test]
    fn headers_cross_packed_in_one_list() {
        let mut map = HeaderMap::new();
        map.append("a", HeaderValue::from_static("1"));
        map.append("a", HeaderValue::from_static(""));
        map.append("b", HeaderValue::from_static("x y"));
        assert_eq!(headers_of(&map), b"a\x001\0a\0\0b\0x y\0");
        assert_eq!(all(&map, "a"), b"1\0\0");
        assert!(all(&map, "c").is_empty());
    }

    #[test]
    fn json_edits_run_on_the_held_body() {
        let body = Some(Bytes::from_static(br#"{"a": {"b": 1}, "c": [1, 2]}"#));
        let edits = vec![
            JsonEdit::Set(("a.d".into(), "true".into())),
            JsonEdit::Remove("c".into()),
        ];
        assert_eq!(
            json_edit(&body, edits).unwrap(),
            br#"{"a":{"b":1,"d":true}}"#
        );
        assert_eq!(json_get(&body, "a.b").unwrap().as_deref(), Some("1"));
        assert!(matches!(json_get(&None, "a"), Err(JsonError::NoBody)));
        let bad = Some(Bytes::from_static(b"{nope"));
        assert!(matches!(
            json_edit(&bad, vec![]),
            Err(JsonError::NotJson(_))
        ));
        let not_json = vec![JsonEdit::Set(("a".into(), "{".into()))];
        assert!(matches!(
            json_edit(&body, not_json),
            Err(JsonError::Edit(_))
        ));
    }
}
