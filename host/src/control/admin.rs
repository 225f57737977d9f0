//! The admin endpoint, on its own listener (loopback by default). JSON throughout.
//!
//! - `GET /health`: `{"status":"ok"}` while the process serves.
//! - `GET /ready`: 200 `{"status":"ready"}` once the config and every filter it names are
//!   loaded; 503 with what is missing (`"starting"` while the gateway loads them, `"draining"`
//!   while it stops). The listener answers from before the filters load.
//! - `GET /routes`: each route, its match, service and filter chain with each filter's state.
//! - `GET /filters`: each filter: version (content hash), loaded-at time, where its code came
//!   from (compiled or the cache), state (`serving`, `rejected`, `unavailable`), the last
//!   rejection and the routes using it; `origin` (`filters_dir` or the `oci://` source),
//!   `digest` (the manifest digest serving, for a filter from a registry) and `pull_failing`
//!   (the registry did not answer the last poll; the version shown keeps serving).
//! - `GET /services`: each service, its balancing policy and limits, and each endpoint with its
//!   weight, health, ejection, requests in flight and failures.
//! - `GET /metrics`: metrics in OpenMetrics text, or Prometheus text 0.0.4 for a scraper whose
//!   `Accept` prefers `text/plain` (see [`crate::metrics`]).
//! - `GET /config`: the config file, when it was loaded, and the last rejected reload.
//! - `POST /reload`: re-read the config and every filter now; answers what happened.
//!
//! With `[admin] token_file`, every request but `/health` and `/ready` must carry
//! `Authorization: Bearer TOKEN` (reads too, unless `protect_reads = false`); one without it, or
//! with another token, gets 401 and changes nothing. The metrics listener (`[metrics] listen`)
//! serves `/metrics`, `/health` and `/ready` only, without a token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::Control;
use crate::config::{AdminToken, PathMatch};
use crate::metrics::{self, BindingState, Metrics, Name};
use crate::snapshot::ChainEntry;
use wasmgate_sandbox::FilterMetrics;

/// What a listener serves.
#[derive(Debug, Clone, Copy)]
pub enum Serves {
    /// The whole admin API.
    Admin {
        /// Requests must carry this bearer token (`/health` and `/ready` excepted).
        token: Option<AdminToken>,
        /// Reads need the token too.
        protect_reads: bool,
    },
    /// `/metrics`, `/health` and `/ready`, open to all.
    MetricsOnly,
}

/// Serve `serves` on `listener` until the task is aborted. Until `started` holds the control
/// plane (the config and its filters are loaded), `/health` answers, `/ready` says `starting`,
/// and the rest 503.
pub fn spawn(
    started: Arc<OnceLock<Arc<Control>>>,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    serves: Serves,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (started, metrics) = (started.clone(), metrics.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (started, metrics) = (started.clone(), metrics.clone());
                    async move {
                        let control = started.get().map(|c| &**c);
                        Ok::<_, Infallible>(route(control, &metrics, serves, req).await)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// One admin request: probes first (open to all, and answered while the gateway starts;
/// `control` is `None` until then), then the token, then the API.
async fn route(
    control: Option<&Control>,
    metrics: &Metrics,
    serves: Serves,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (method, path) = (req.method(), req.uri().path());
    match (method, path) {
        (&Method::GET, "/health") => {
            return json_response(StatusCode::OK, json!({ "status": "ok" }));
        }
        (&Method::GET, "/ready") => {
            let (status, body) = ready(control);
            return json_response(status, body);
        }
        _ => {}
    }
    let Some(control) = control else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "the gateway is starting" }),
        );
    };
    match serves {
        Serves::MetricsOnly => {
            if method == Method::GET && path == "/metrics" {
                return prometheus(control, metrics, req.headers());
            }
            json_response(StatusCode::NOT_FOUND, json!({ "error": "not found" }))
        }
        Serves::Admin {
            token,
            protect_reads,
        } => {
            let read = method == Method::GET || method == Method::HEAD;
            if let Some(token) = token
                && (!read || protect_reads)
                && !carries(req.headers(), &token)
            {
                let mut resp = json_response(
                    StatusCode::UNAUTHORIZED,
                    json!({ "error": "this admin request needs the admin token: Authorization: Bearer TOKEN" }),
                );
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"wasmgate admin\""),
                );
                return resp;
            }
            if method == Method::GET && path == "/metrics" {
                return prometheus(control, metrics, req.headers());
            }
            handle(control, req).await
        }
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>` (the scheme in any case).
fn carries(headers: &HeaderMap, token: &AdminToken) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some((scheme, given)) = value.as_bytes().split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && token.matches(given.trim_ascii())
}

/// `GET /ready`: ready once every route's filters are loaded (`control` is `None` before),
/// and until the gateway stops.
fn ready(control: Option<&Control>) -> (StatusCode, Value) {
    let Some(control) = control else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "starting" }),
        );
    };
    if control.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "draining" }),
        );
    }
    let snapshot = control.snapshots.load();
    let missing: Vec<Value> = snapshot
        .routes
        .iter()
        .flat_map(|route| {
            route.chain.iter().filter_map(|entry| match entry {
                ChainEntry::Ready(_) => None,
                ChainEntry::Unavailable { name, reason } => Some(json!({
                    "route": &*route.label.0,
                    "filter": name,
                    "reason": reason,
                })),
            })
        })
        .collect();
    if missing.is_empty() {
        (StatusCode::OK, json!({ "status": "ready" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "filters not loaded", "unavailable": missing }),
        )
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `GET /metrics`: OpenMetrics text, or Prometheus text 0.0.4 when `Accept` prefers it.
fn prometheus(control: &Control, metrics: &Metrics, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let snapshot = control.snapshots.load();
    let bindings = snapshot
        .routes
        .iter()
        .flat_map(|route| {
            route.chain.iter().filter_map(|entry| match entry {
                ChainEntry::Ready(b) => Some(BindingState {
                    route: route.label.clone(),
                    filter: b.label.clone(),
                    breaker_open: b.breaker.is_open(),
                    instances_started: b.instances.instances_started(),
                    instances_idle: b.instances.idle(),
                }),
                ChainEntry::Unavailable { .. } => None,
            })
        })
        .collect();
    let mut filters: Vec<(Name, Arc<FilterMetrics>)> = Vec::new();
    for entry in snapshot.routes.iter().flat_map(|route| &route.chain) {
        if let ChainEntry::Ready(b) = entry
            && !filters.iter().any(|(name, _)| *name == b.label)
        {
            filters.push((b.label.clone(), b.metrics.clone()));
        }
    }
    let endpoints = snapshot
        .services
        .values()
        .flat_map(|service| service.endpoint_samples())
        .collect();
    let text = metrics.render(bindings, filters, endpoints);
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (text, content_type) = if metrics::prefers_text_004(accept) {
        (metrics::text_004(&text), metrics::TEXT_004)
    } else {
        (text, metrics::OPENMETRICS)
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

async fn handle(control: &Control, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/routes") => (StatusCode::OK, routes(control)),
        (&Method::GET, "/filters") => (StatusCode::OK, filters(control).await),
        (&Method::GET, "/config") => (StatusCode::OK, config(control).await),
        (&Method::GET, "/services") => (StatusCode::OK, services(control)),
        (&Method::POST, "/reload") => reload(control).await,
        (
            _,
            "/health" | "/ready" | "/metrics" | "/routes" | "/filters" | "/config" | "/services"
            | "/reload",
        ) => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "error": "method not allowed" }),
        ),
        _ => (StatusCode::NOT_FOUND, json!({ "error": "not found" })),
    };
    json_response(status, body)
}

fn routes(control: &Control) -> Value {
    let snapshot = control.snapshots.load();
    let routes: Vec<Value> = snapshot
        .routes
        .iter()
        .map(|r| {
            let c = &r.config;
            let (kind, path) = match &c.path {
                PathMatch::Prefix(p) => (
                    "prefix",
                    if p.is_empty() {
                        "/".to_string()
                    } else {
                        p.clone()
                    },
                ),
                PathMatch::Exact(p) => ("exact", p.clone()),
                PathMatch::Pattern(p) => ("pattern", p.to_string()),
            };
            let chain: Vec<Value> = r
                .chain
                .iter()
                .map(|e| match e {
                    ChainEntry::Ready(b) => {
                        let needs = b.needs();
                        json!({
                            "name": &*b.filter().name,
                            "state": "ready",
                            "version": b.filter().hash,
                            "services": &*b.services,
                            "request_phase": needs.request_phase,
                            "response_phase": needs.response_phase,
                            "needs_request_body": needs.request_body,
                            "needs_response_body": needs.response_body,
                            "reuse_instance": needs.reuse_instance,
                        })
                    }
                    ChainEntry::Unavailable { name, reason } => json!({
                        "name": name,
                        "state": "unavailable",
                        "reason": reason,
                    }),
                })
                .collect();
            json!({
                "name": c.name,
                "match": { kind: path },
                "methods": c.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "host": c.host,
                "service": c.service,
                "filters": chain,
            })
        })
        .collect();
    Value::Array(routes)
}

async fn filters(control: &Control) -> Value {
    let state = control.state.lock().await;
    let list: Vec<Value> = state
        .registry
        .slots
        .iter()
        .map(|(name, slot)| {
            let used_by: Vec<&str> = state
                .config
                .routes
                .iter()
                .filter(|r| r.filters.iter().any(|f| &f.name == name))
                .map(|r| r.name.as_str())
                .collect();
            let rejected = slot
                .rejected
                .as_ref()
                .map(|r| json!({ "version": r.hash, "reason": r.reason, "at": time(r.at) }));
            let mut entry = json!({
                "name": name,
                "state": match (&slot.current, &slot.rejected) {
                    (Some(_), None) => "serving",
                    (Some(_), Some(_)) => "serving (newest file rejected)",
                    (None, _) => "unavailable",
                },
                "file_removed": slot.file_removed,
                "origin": slot.source.as_deref().unwrap_or("filters_dir"),
                "digest": slot.manifest,
                "pull_failing": slot.pull_failing,
                "rejected": rejected,
                "routes": used_by,
            });
            if let Some(f) = &slot.current {
                entry["version"] = json!(f.hash);
                entry["loaded_at"] = json!(time(f.loaded_at));
                entry["source"] = json!(f.source.as_str());
                entry["load_ms"] = json!(f.load_time.as_secs_f64() * 1e3);
            }
            entry
        })
        .collect();
    Value::Array(list)
}

fn services(control: &Control) -> Value {
    let snapshot = control.snapshots.load();
    let mut services: Vec<&crate::upstream::Service> = snapshot.services.values().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Value::Array(services.iter().map(|s| s.describe()).collect())
}

async fn config(control: &Control) -> Value {
    let state = control.state.lock().await;
    json!({
        "file": state.config_path.as_ref().map(|p| p.display().to_string()),
        "loaded_at": time(state.config_loaded_at),
        "routes": state.config.routes.len(),
        "rejected": state.config_rejected.as_ref().map(|(at, errors)| json!({ "at": time(*at), "errors": errors })),
    })
}

async fn reload(control: &Control) -> (StatusCode, Value) {
    let has_file = control.state.lock().await.config_path.is_some();
    let config = if has_file {
        match control.reload_config().await {
            Ok(()) => json!({ "status": "reloaded" }),
            Err(errors) => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({ "config": { "status": "rejected", "errors": errors } }),
                );
            }
        }
    } else {
        json!({ "status": "no config file" })
    };
    let changed = control.reload_filters(None).await;
    (
        StatusCode::OK,
        json!({ "config": config, "filters_changed": changed }),
    )
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Bind the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
