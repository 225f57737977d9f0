//! End-to-end tests: the real gateway in front of real upstreams, with real `.wasm` filters.

mod access_log;
mod admin;
mod aggregate;
mod auth;
mod cache;
mod compression;
mod config;
mod errors;
mod filters;
mod grpc;
mod hardening;
mod http2_attacks;
mod metrics;
mod rate_limit;
mod routing;
mod tls;
mod tracing;
mod transcode;
mod transform;
mod upstreams;
mod websocket;
