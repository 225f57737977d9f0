//! What the test kit and `wasmgate filter test-server` say to each other: one JSON object per
//! line, a [`Command`] from the kit, [`Reply`]s from the server. During a phase the server may
//! send [`Reply::Call`] (the filter called a stubbed service) and then reads one [`Answer`]
//! before it goes on. Not a stable interface: the kit and the server come from the same
//! wasmgate release, and [`Command::Hello`] checks that they do.

use serde::{Deserialize, Serialize};
use wasmgate_sdk::__testkit as parts;
use wasmgate_sdk::{Context, Needs, Request, Response};

/// A header list in wire order.
pub type Wire = Vec<(String, Vec<u8>)>;

/// A command from the kit.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// The first command: the WIT version the kit was built for.
    Hello { version: String },
    /// Load a built component.
    Load { path: String },
    /// Configure loaded filter `filter` for a route.
    Route {
        filter: u32,
        config: serde_json::Value,
        context: Ctx,
        /// Services granted and answered by the kit's stubs.
        services: Vec<String>,
        /// Services granted but down.
        down: Vec<String>,
    },
    /// Run a request phase on route `route`.
    Request { route: u32, request: Req },
    /// Run a response phase on route `route`.
    Response { route: u32, response: Resp },
    /// What route `route`'s filter did so far.
    Metrics { route: u32 },
    /// The access log fields the filter added since the last time they were asked for.
    LogFields { route: u32 },
}

/// A reply from the server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The server's WIT version.
    Hello {
        version: String,
    },
    /// A loaded filter and its name.
    Loaded {
        filter: u32,
        name: String,
    },
    /// A configured route and what its config needs.
    Route {
        route: u32,
        needs: NeedsWire,
    },
    /// Mid-phase: the filter called a stubbed service; answer with an [`Answer`].
    Call {
        service: String,
        request: Req,
    },
    /// The phase ran; with the records the filter logged during it.
    Done {
        outcome: Outcome,
        logs: Vec<Log>,
    },
    Metrics {
        metrics: Metrics,
    },
    LogFields {
        fields: Vec<(String, String)>,
    },
    /// The command could not be carried out (a component the gateway would refuse, a config
    /// the filter rejects, a bad command).
    Error {
        message: String,
    },
}

/// How a phase ended.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Continue { request: Req },
    Respond { response: Resp },
    Response { response: Resp },
    Failed { kind: String, message: String },
}

/// The kit's answer to a [`Reply::Call`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub response: Resp,
}

/// One log record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Log {
    /// `TRACE`, `DEBUG`, `INFO`, `WARN` or `ERROR`.
    pub level: String,
    pub message: String,
    pub request_id: String,
}

/// What a route's filter did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Request-phase calls made.
    pub request_calls: u64,
    /// Response-phase calls made.
    pub response_calls: u64,
    /// Calls that failed (error, trap, deadline, limit, invalid result).
    pub failures: u64,
    /// Instances configured: one per request unless the filter reuses instances.
    pub instances_started: u64,
    /// Calls to services.
    pub service_calls: u64,
}

/// [`Needs`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NeedsWire {
    pub request_body: bool,
    pub response_body: bool,
    pub request_phase: bool,
    pub response_phase: bool,
    pub reuse_instance: bool,
}

impl From<NeedsWire> for Needs {
    fn from(n: NeedsWire) -> Needs {
        Needs {
            request_body: n.request_body,
            response_body: n.response_body,
            request_phase: n.request_phase,
            response_phase: n.response_phase,
            reuse_instance: n.reuse_instance,
        }
    }
}

impl From<Needs> for NeedsWire {
    fn from(n: Needs) -> NeedsWire {
        NeedsWire {
            request_body: n.request_body,
            response_body: n.response_body,
            request_phase: n.request_phase,
            response_phase: n.response_phase,
            reuse_instance: n.reuse_instance,
        }
    }
}

/// A request on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Req {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path_with_query: String,
    pub headers: Wire,
    pub body: Option<Vec<u8>>,
}

impl From<Request> for Req {
    fn from(req: Request) -> Req {
        let p = parts::request_into_parts(req);
        Req {
            method: p.method,
            scheme: p.scheme,
            authority: p.authority,
            path_with_query: p.path_with_query,
            headers: p.headers,
            body: p.body,
        }
    }
}

impl From<Req> for Request {
    fn from(r: Req) -> Request {
        parts::request_from_parts(parts::RequestParts {
            method: r.method,
            scheme: r.scheme,
            authority: r.authority,
            path_with_query: r.path_with_query,
            headers: r.headers,
            body: r.body,
        })
    }
}

/// A response on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resp {
    pub status: u16,
    pub headers: Wire,
    pub body: Option<Vec<u8>>,
}

impl From<Response> for Resp {
    fn from(resp: Response) -> Resp {
        let (status, headers, body) = parts::response_into_parts(resp);
        Resp {
            status,
            headers,
            body,
        }
    }
}

impl From<Resp> for Response {
    fn from(r: Resp) -> Response {
        parts::response_from_parts(r.status, r.headers, r.body)
    }
}

/// A route context on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ctx {
    pub route: String,
    pub params: Vec<(String, String)>,
    pub client_addr: String,
    pub request_id: String,
}

impl From<&Context> for Ctx {
    fn from(ctx: &Context) -> Ctx {
        let (route, params, client_addr, request_id) = parts::context_into_parts(ctx);
        Ctx {
            route,
            params,
            client_addr,
            request_id,
        }
    }
}

impl From<Ctx> for Context {
    fn from(c: Ctx) -> Context {
        let params: Vec<(&str, &str)> = c
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Context::new(&c.route, &params)
            .with_client_addr(&c.client_addr)
            .with_request_id(&c.request_id)
    }
}
