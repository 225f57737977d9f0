//! The admin endpoint, on its own listener (loopback by default). JSON throughout.
//!
//! - `GET /health`: `{"status":"ok"}`.
//! - `GET /routes`: each route, its match, service and filter chain with each filter's state.
//! - `GET /filters`: each filter: version (content hash), loaded-at time, where its code came
//!   from (compiled or the cache), state (`serving`, `rejected`, `unavailable`), the last
//!   rejection and the routes using it.
//! - `GET /services`: each service, its balancing policy and limits, and each endpoint with its
//!   weight, health, ejection, requests in flight and failures.
//! - `GET /metrics`: Prometheus metrics (see [`crate::metrics`]).
//! - `GET /config`: the config file, when it was loaded, and the last rejected reload.
//! - `POST /reload`: re-read the config and every filter now; answers what happened.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::Control;
use crate::config::PathMatch;
use crate::metrics::{BindingState, Metrics, Name};
use crate::snapshot::ChainEntry;
use wasmgate_sandbox::FilterMetrics;

/// Serve the admin API on `listener` until the task is aborted.
pub fn spawn(
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    listener: TcpListener,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (control, metrics) = (control.clone(), metrics.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (control, metrics) = (control.clone(), metrics.clone());
                    async move {
                        if req.method() == Method::GET && req.uri().path() == "/metrics" {
                            return Ok::<_, Infallible>(prometheus(&control, &metrics));
                        }
                        Ok::<_, Infallible>(handle(&control, req).await)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// `GET /metrics`: the Prometheus text format.
fn prometheus(control: &Control, metrics: &Metrics) -> Response<Full<Bytes>> {
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
    let mut resp = Response::new(Full::new(Bytes::from(
        metrics.render(bindings, filters, endpoints),
    )));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}

async fn handle(control: &Control, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => (StatusCode::OK, json!({ "status": "ok" })),
        (&Method::GET, "/routes") => (StatusCode::OK, routes(control)),
        (&Method::GET, "/filters") => (StatusCode::OK, filters(control).await),
        (&Method::GET, "/config") => (StatusCode::OK, config(control).await),
        (&Method::GET, "/services") => (StatusCode::OK, services(control)),
        (&Method::POST, "/reload") => reload(control).await,
        (_, "/health" | "/routes" | "/filters" | "/config" | "/services" | "/reload") => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "error": "method not allowed" }),
        ),
        _ => (StatusCode::NOT_FOUND, json!({ "error": "not found" })),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
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
