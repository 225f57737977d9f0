//! JSON/HTTP to gRPC (a route's `transcode`): the services' descriptors, read from a
//! `FileDescriptorSet` at config load, give each method its HTTP rules (`google.api.http`
//! annotations, google/api/http.proto) and its message types; a request that matches a rule, or
//! `POST /pkg.Service/Method`, becomes a gRPC call built by the proto3 JSON mapping, and the
//! call's answer becomes JSON again. The pipeline step that does so is `proxy/transcode.rs`.

mod template;

use std::fmt;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Method, StatusCode};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor,
    SerializeOptions, Value,
};
use serde_json::{Map, Value as Json};

pub use template::Template;

/// How a server-streaming method's messages go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamFormat {
    /// One JSON array.
    #[default]
    Array,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

/// What becomes of the HTTP request's body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyRule {
    /// No body: fields come from the path and the query.
    None,
    /// `body: "*"`: the whole request message.
    Whole,
    /// `body: "field"`: that field of the request message.
    Field(String),
}

/// One HTTP binding of a method.
struct Rule {
    method: Method,
    template: Template,
    body: BodyRule,
    /// `response_body`: the answer is this field of the response message.
    response_body: Option<String>,
    call: usize,
}

/// A method that may be called: its gRPC path and types.
pub struct Call {
    /// `/pkg.Service/Method`.
    pub path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
    pub server_streaming: bool,
    client_streaming: bool,
}

/// A route's transcoder: the rules and methods of its services.
pub struct Transcoder {
    rules: Vec<Rule>,
    calls: Vec<Call>,
    pub stream: StreamFormat,
}

impl fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transcoder")
            .field("rules", &self.rules.len())
            .field("calls", &self.calls.len())
            .field("stream", &self.stream)
            .finish()
    }
}

/// The request, matched to a call, as the gRPC message to send.
pub struct Matched<'t> {
    pub call: &'t Call,
    /// The gRPC message, length-prefixed (one frame, uncompressed).
    pub frame: Bytes,
    response_body: Option<&'t str>,
}

/// Why a request could not be transcoded: an HTTP status and a gRPC code for the JSON error.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: 3, // INVALID_ARGUMENT
            message: message.into(),
        }
    }
}

impl Transcoder {
    /// Read `path` (a `FileDescriptorSet`, as `protoc --include_imports --descriptor_set_out`
    /// writes it) and take `services`' methods; the error names what is wrong.
    pub fn load(path: &Path, services: &[String], stream: StreamFormat) -> Result<Self, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("reading descriptors {}: {e}", path.display()))?;
        Self::from_descriptors(&bytes, services, stream)
            .map_err(|e| format!("descriptors {}: {e}", path.display()))
    }

    /// As [`Transcoder::load`], from the file's bytes.
    pub fn from_descriptors(
        bytes: &[u8],
        services: &[String],
        stream: StreamFormat,
    ) -> Result<Self, String> {
        let pool = DescriptorPool::decode(bytes)
            .map_err(|e| format!("not a valid FileDescriptorSet: {e}"))?;
        if services.is_empty() {
            return Err("no services named".into());
        }
        let http = pool.get_extension_by_name("google.api.http");
        let mut transcoder = Transcoder {
            rules: Vec::new(),
            calls: Vec::new(),
            stream,
        };
        for name in services {
            let service = pool.get_service_by_name(name).ok_or_else(|| {
                let known: Vec<String> =
                    pool.services().map(|s| s.full_name().to_owned()).collect();
                format!("no service {name:?} (the file has {known:?})")
            })?;
            for method in service.methods() {
                let call = transcoder.calls.len();
                transcoder.calls.push(Call {
                    path: format!("/{}/{}", service.full_name(), method.name()),
                    input: method.input(),
                    output: method.output(),
                    server_streaming: method.is_server_streaming(),
                    client_streaming: method.is_client_streaming(),
                });
                if let Some(http) = &http {
                    let options = method.options();
                    if options.has_extension(http) {
                        let rule = options.get_extension(http);
                        if let Value::Message(rule) = rule.as_ref() {
                            transcoder
                                .add_rules(&method, rule, call, true)
                                .map_err(|e| format!("{}: {e}", method.full_name()))?;
                        }
                    }
                }
            }
        }
        // The most literal template first where several match.
        transcoder
            .rules
            .sort_by_key(|r| std::cmp::Reverse(r.template.literals()));
        Ok(transcoder)
    }

    fn add_rules(
        &mut self,
        method: &MethodDescriptor,
        rule: &DynamicMessage,
        call: usize,
        top: bool,
    ) -> Result<(), String> {
        let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let pattern = ["get", "put", "post", "delete", "patch"]
            .into_iter()
            .find_map(|m| text(m).map(|p| (Method::from_bytes(m.to_uppercase().as_bytes()), p)));
        let (http_method, path) = match pattern {
            Some((m, p)) => (m.expect("a known method"), p),
            None => match rule.get_field_by_name("custom").as_deref() {
                Some(Value::Message(custom)) => {
                    let kind = match custom.get_field_by_name("kind").as_deref() {
                        Some(Value::String(k)) => k.clone(),
                        _ => String::new(),
                    };
                    let path = match custom.get_field_by_name("path").as_deref() {
                        Some(Value::String(p)) => p.clone(),
                        _ => String::new(),
                    };
                    let m = Method::from_bytes(kind.as_bytes())
                        .map_err(|_| format!("custom method {kind:?} is not an HTTP method"))?;
                    (m, path)
                }
                _ => return Err("an http rule without a method and path".into()),
            },
        };
        let template = Template::parse(&path).map_err(|e| format!("path {path:?}: {e}"))?;
        let input = method.input();
        for v in &template.variables {
            field_path(&input, &v.field_path).map_err(|e| format!("path {path:?}: {e}"))?;
        }
        let body = match text("body").as_deref() {
            None => BodyRule::None,
            Some("*") => BodyRule::Whole,
            Some(field) => {
                if input.get_field_by_name(field).is_none() {
                    return Err(format!(
                        "body {field:?} is not a field of {}",
                        input.full_name()
                    ));
                }
                BodyRule::Field(field.to_owned())
            }
        };
        let response_body = text("response_body");
        if let Some(field) = &response_body
            && method.output().get_field_by_name(field).is_none()
        {
            return Err(format!(
                "response_body {field:?} is not a field of {}",
                method.output().full_name()
            ));
        }
        if method.is_client_streaming() {
            return Err(
                "client-streaming methods are not transcoded: leave them unannotated".into(),
            );
        }
        self.rules.push(Rule {
            method: http_method,
            template,
            body,
            response_body,
            call,
        });
        if top
            && let Some(Value::List(more)) =
                rule.get_field_by_name("additional_bindings").as_deref()
        {
            for more in more {
                if let Value::Message(more) = more {
                    self.add_rules(method, more, call, false)?;
                }
            }
        }
        Ok(())
    }

    /// Match a request and build its gRPC message; `Ok(None)` when no rule or method matches
    /// (the route then answers 404).
    pub fn request(
        &self,
        method: &Method,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Option<Matched<'_>>, Refusal> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        for rule in &self.rules {
            let matches_method =
                rule.method == *method || (rule.method == Method::GET && *method == Method::HEAD);
            if !matches_method {
                continue;
            }
            let Some(values) = rule.template.matches(path) else {
                continue;
            };
            let call = &self.calls[rule.call];
            let mut json = match &rule.body {
                BodyRule::None => Map::new(),
                BodyRule::Whole => object(body)?,
                BodyRule::Field(field) => {
                    let mut m = Map::new();
                    if !body.is_empty() {
                        let value: Json = serde_json::from_slice(body)
                            .map_err(|e| Refusal::bad(format!("the body is not JSON: {e}")))?;
                        m.insert(field.clone(), value);
                    }
                    m
                }
            };
            let mut bound: Vec<Vec<String>> = Vec::new();
            for (field, value) in values {
                set_field(&call.input, &mut json, field, vec![value])?;
                bound.push(field.to_vec());
            }
            if rule.body != BodyRule::Whole
                && let Some(query) = query
            {
                let mut params: Vec<(Vec<String>, Vec<String>)> = Vec::new();
                for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                    let field: Vec<String> = key.split('.').map(str::to_owned).collect();
                    if bound.contains(&field)
                        || matches!(&rule.body, BodyRule::Field(f) if field[0] == *f)
                    {
                        continue;
                    }
                    match params.iter_mut().find(|(f, _)| *f == field) {
                        Some((_, values)) => values.push(value.into_owned()),
                        None => params.push((field, vec![value.into_owned()])),
                    }
                }
                for (field, values) in params {
                    set_field(&call.input, &mut json, &field, values)?;
                }
            }
            let frame = encode(&call.input, Json::Object(json))?;
            return Ok(Some(Matched {
                call,
                frame,
                response_body: rule.response_body.as_deref(),
            }));
        }
        // Without a rule: `POST /pkg.Service/Method`, the body the whole message.
        if *method == Method::POST
            && let Some(call) = self.calls.iter().find(|c| c.path == path)
        {
            if call.client_streaming {
                return Err(Refusal {
                    status: StatusCode::NOT_IMPLEMENTED,
                    code: 12, // UNIMPLEMENTED
                    message: format!("{}: client streaming is not transcoded", call.path),
                });
            }
            let frame = encode(&call.input, Json::Object(object(body)?))?;
            return Ok(Some(Matched {
                call,
                frame,
                response_body: None,
            }));
        }
        Ok(None)
    }
}

impl Matched<'_> {
    /// The gRPC answer's messages (length-prefixed frames, as the body carried them) as JSON:
    /// one object for a unary method, every message for a server stream.
    pub fn response(
        &self,
        frames: &[u8],
        stream: StreamFormat,
    ) -> Result<(Bytes, &'static str), String> {
        let mut messages = Vec::new();
        let mut rest = frames;
        while !rest.is_empty() {
            let [flags, a, b, c, d, tail @ ..] = rest else {
                return Err("a gRPC frame cut short".into());
            };
            if *flags != 0 {
                return Err("a compressed gRPC message (the call asked for none)".into());
            }
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            if tail.len() < len {
                return Err("a gRPC frame cut short".into());
            }
            let message =
                DynamicMessage::decode(self.call.output.clone(), &tail[..len]).map_err(|e| {
                    format!("the answer is not a {}: {e}", self.call.output.full_name())
                })?;
            messages.push(self.json(&message)?);
            rest = &tail[len..];
        }
        if !self.call.server_streaming {
            let one = match messages.pop() {
                Some(one) if messages.is_empty() => one,
                Some(_) => return Err("a unary call answered with more than one message".into()),
                None => return Err("the call answered with no message".into()),
            };
            return Ok((to_bytes(&one), "application/json"));
        }
        Ok(match stream {
            StreamFormat::Array => (to_bytes(&Json::Array(messages)), "application/json"),
            StreamFormat::Ndjson => {
                let mut out = Vec::new();
                for m in &messages {
                    serde_json::to_writer(&mut out, m).expect("JSON values serialize");
                    out.push(b'\n');
                }
                (Bytes::from(out), "application/x-ndjson")
            }
        })
    }

    fn json(&self, message: &DynamicMessage) -> Result<Json, String> {
        let options = SerializeOptions::new();
        let json = message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| e.to_string())?;
        Ok(match self.response_body {
            Some(field) => {
                let name = self
                    .call
                    .output
                    .get_field_by_name(field)
                    .map(|f| f.json_name().to_owned())
                    .unwrap_or_else(|| field.to_owned());
                match json {
                    Json::Object(mut m) => m.remove(&name).unwrap_or(Json::Null),
                    other => other,
                }
            }
            None => json,
        })
    }
}

/// A gRPC status code's HTTP status (as grpc-gateway and Envoy map them).
pub fn http_status(code: u32) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).expect("499 is a status"),
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON error body: `{"code": <gRPC code>, "message": "..."}`.
pub fn error_body(code: u32, message: &str) -> Bytes {
    to_bytes(&serde_json::json!({ "code": code, "message": message }))
}

fn to_bytes(json: &Json) -> Bytes {
    Bytes::from(serde_json::to_vec(json).expect("JSON values serialize"))
}

/// The body as a JSON object; an empty body is `{}`.
fn object(body: &[u8]) -> Result<Map<String, Json>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err(Refusal::bad("the body is not a JSON object")),
        Err(e) => Err(Refusal::bad(format!("the body is not JSON: {e}"))),
    }
}

/// The message from its JSON, length-prefixed for gRPC.
fn encode(desc: &MessageDescriptor, json: Json) -> Result<Bytes, Refusal> {
    let options = DeserializeOptions::new();
    let message = DynamicMessage::deserialize_with_options(desc.clone(), json, &options)
        .map_err(|e| Refusal::bad(format!("not a valid {}: {e}", desc.full_name())))?;
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(len).map_err(|_| Refusal::bad("the message is too large"))?);
    message
        .encode(&mut frame)
        .expect("the frame has the message's room");
    Ok(frame.freeze())
}

/// Check that `path` names a field of `desc` that a path or query value can set (a scalar, an
/// enum, or a list of them); the leaf field's kind and whether it repeats.
fn field_path(desc: &MessageDescriptor, path: &[String]) -> Result<(Kind, bool), String> {
    let mut desc = desc.clone();
    for (i, name) in path.iter().enumerate() {
        let field = desc
            .get_field_by_name(name)
            .or_else(|| desc.get_field_by_json_name(name))
            .ok_or_else(|| format!("{name:?} is not a field of {}", desc.full_name()))?;
        let last = i + 1 == path.len();
        match (field.kind(), last) {
            (Kind::Message(m), false) if !field.is_list() && !field.is_map() => desc = m,
            (Kind::Message(m), true) => {
                return Err(format!(
                    "{name:?} is a message ({}), not a value",
                    m.full_name()
                ));
            }
            (_, false) => return Err(format!("{name:?} has no fields")),
            (kind, true) => return Ok((kind, field.is_list())),
        }
    }
    Err("an empty field path".into())
}

/// Set the field at `path` in the request's JSON from path or query text, typed by the field.
fn set_field(
    desc: &MessageDescriptor,
    json: &mut Map<String, Json>,
    path: &[String],
    values: Vec<String>,
) -> Result<(), Refusal> {
    let (kind, list) = field_path(desc, path).map_err(Refusal::bad)?;
    let mut typed = Vec::with_capacity(values.len());
    for v in values {
        typed.push(match kind {
            Kind::Bool => match v.as_str() {
                "true" => Json::Bool(true),
                "false" => Json::Bool(false),
                _ => {
                    return Err(Refusal::bad(format!(
                        "{}: {v:?} is not true or false",
                        path.join(".")
                    )));
                }
            },
            _ => Json::String(v),
        });
    }
    let value = match (list, typed.len()) {
        (true, _) => Json::Array(typed),
        (false, 1) => typed.pop().expect("one value"),
        (false, _) => {
            return Err(Refusal::bad(format!(
                "{} is given more than once",
                path.join(".")
            )));
        }
    };
    // Walk by proto names, dropping a JSON-name twin of each key so one field is not given twice.
    let mut desc = desc.clone();
    let mut at = json;
    for (i, name) in path.iter().enumerate() {
        let field = desc
            .get_field_by_name(name)
            .or_else(|| desc.get_field_by_json_name(name))
            .expect("checked by field_path");
        if field.json_name() != field.name()
            && let Some(twin) = at.remove(field.json_name())
            && !at.contains_key(field.name())
        {
            at.insert(field.name().to_owned(), twin);
        }
        if i + 1 == path.len() {
            at.insert(field.name().to_owned(), value);
            return Ok(());
        }
        if let Kind::Message(m) = field.kind() {
            desc = m;
        }
        let next = at
            .entry(field.name().to_owned())
            .or_insert_with(|| Json::Object(Map::new()));
        if !next.is_object() {
            *next = Json::Object(Map::new());
        }
        at = next.as_object_mut().expect("made an object");
    }
    Ok(())
}
