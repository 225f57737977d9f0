//! wasmgate: an API gateway whose per-route policy runs as WebAssembly components.
//!
//! Modules, one concern each:
//! - [`config`]: the TOML config, strict and validated with line/column diagnostics.
//! - [`router`]: path, method and host matching.
//! - [`capabilities`]: clock, randomness, cache and service calls offered to filters.
//! - [`runtime`]: the wasm engine, filter loading, per-request instances and their limits.
//! - [`proxy`]: the request path (filter phases around the upstream call).
//! - [`upstream`]: services, round-robin, the pooled client.
//! - [`gateway`]: shared state, snapshots, reloads and the accept loop.
//! - [`registry`]: the serving version of each filter, and rejected files.
//! - [`watch`]: file watching for hot reload.
//! - [`admin`]: the admin endpoint.
//! - [`error`]: the request-path error and its client-facing body.

pub mod admin;
pub mod breaker;
pub mod capabilities;
pub mod config;
pub mod error;
pub mod framing;
pub mod gateway;
pub mod proxy;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod upstream;
pub mod watch;

pub use config::Config;
pub use gateway::{Gateway, RunningGateway};

/// Validate `path` and every filter it references; the lines to print, one per problem.
pub async fn check(path: &std::path::Path) -> Result<CheckReport, config::ConfigError> {
    let config = Config::load(path)?;
    let runtime = runtime::Runtime::new().map_err(|e| config::ConfigError {
        file: path.display().to_string(),
        diagnostics: vec![config::Diagnostic {
            line: 0,
            column: 0,
            message: format!("cannot start the wasm runtime: {e:#}"),
        }],
    })?;
    let mut registry = registry::Registry::load(&runtime, &config).await;
    let (_, problems) = gateway::Snapshot::build(&config, &mut registry).await;
    Ok(CheckReport {
        routes: config.routes.len(),
        filters: registry.slots.len(),
        problems: problems
            .iter()
            .map(|p| format!("{}:{p}", path.display()))
            .collect(),
    })
}

/// What `wasmgate check` found in a config whose syntax and structure are valid.
#[derive(Debug)]
pub struct CheckReport {
    pub routes: usize,
    pub filters: usize,
    /// One line per filter problem, `file:line:col: route ..: filter ..: reason`.
    pub problems: Vec<String>,
}
