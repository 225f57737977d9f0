//! wasmgate: an API gateway whose per-route policy runs as WebAssembly components.
//!
//! The library behind the `wasmgate` binary. Its public surface is what the binary, the tests
//! and the demo use: [`Config`] to load a config, [`RunningGateway`] to serve it, [`check`] to
//! validate one. Inside, layers import one way (each only those listed after it):
//!
//! - `gateway`: assembles a running gateway from the layers below.
//! - `server`: listeners, worker threads, connection limits, the framing guard, drain.
//! - `control`: the filter registry, reloads, the file watcher, the admin endpoint.
//! - `proxy`: the request pipeline (accept-side checks, the filter chain, the upstream
//!   hand-off, error mapping) and filters' service calls.
//! - `oci`: filters pulled from OCI registries (verified, stored by digest) and pushed to them.
//! - `access_log`: one record per request, written off the request path.
//! - `tls`: certificates and keys from PEM files, SNI, the TLS settings HTTPS starts from.
//! - `snapshot`: routes with their filter bindings resolved, and each binding's breaker.
//! - `state`: where filters' `state` lives (in process, or Redis).
//! - `route`: path, method and host matching; the path sent upstream.
//! - `upstream`: services and their endpoints (balancing, health, retries' budget, limits, DNS
//!   discovery), transports, the one upstream client.
//! - `config`: the TOML config, strict and validated with line/column diagnostics (a leaf).
//! - `otel`: distributed tracing (tracer, W3C trace context, OTLP/HTTP export).
//! - `metrics`: the Prometheus registry every layer counts into, and the metrics filters define.
//!
//! The filter sandbox (wasmtime, instance pools, limits, host imports) is its own crate,
//! `wasmgate-sandbox`, which knows nothing of HTTP routing; so is the HTTP/1.1 codec,
//! `wasmgate-h1` (small enough to fuzz alone).
#![deny(missing_docs)]

mod access_log;
mod config;
mod control;
mod gateway;
mod metrics;
mod oci;
mod otel;
mod proxy;
mod route;
mod server;
mod snapshot;
mod state;
mod text;
mod tls;
mod transcode;
mod upstream;

pub use config::{Config, ConfigError, Diagnostic, FilterSource, RegistryConfig};
pub use control::{CheckReport, check};
pub use gateway::RunningGateway;
pub use oci::{Pushed, push as push_filter};
pub use server::set_worker_park_hook;
