//! Upstream services: instances picked round-robin, and a pooled keep-alive HTTP client per
//! serving thread shared by every route (and by config reloads).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::ServiceConfig;

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used on both sides of the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// The pooled upstream client.
pub type HttpClient = Client<HttpConnector, Body>;

/// Idle upstream connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

thread_local! {
    /// This thread's pool: a request and the upstream connection it uses stay on one thread.
    static LOCAL: std::cell::RefCell<Option<(Duration, HttpClient)>> =
        const { std::cell::RefCell::new(None) };
}

/// The calling thread's pooled client; a new pool when the connect timeout changed.
pub fn local_client(connect_timeout: Duration) -> HttpClient {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        match &*local {
            Some((timeout, client)) if *timeout == connect_timeout => client.clone(),
            _ => {
                let fresh = client(connect_timeout);
                *local = Some((connect_timeout, fresh.clone()));
                fresh
            }
        }
    })
}

/// Build a pooled client.
fn client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// A named service and its instances.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    upstreams: Vec<http::Uri>,
    next: AtomicUsize,
}

impl Service {
    pub fn new(cfg: &ServiceConfig) -> Self {
        Self {
            name: cfg.name.clone(),
            upstreams: cfg.upstreams.clone(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next instance, round-robin.
    pub fn pick(&self) -> &http::Uri {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.upstreams[i % self.upstreams.len()]
    }
}

/// `base` joined with `path_and_query` (which starts with `/`).
pub fn join(base: &http::Uri, path_and_query: &str) -> Result<http::Uri, http::Error> {
    let base_path = base.path().trim_end_matches('/');
    let mut builder = http::Uri::builder();
    if let Some(scheme) = base.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = base.authority() {
        builder = builder.authority(authority.clone());
    }
    builder
        .path_and_query(format!("{base_path}{path_and_query}"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_the_base_path() {
        let base: http::Uri = "http://127.0.0.1:3000/api/".parse().unwrap();
        assert_eq!(
            join(&base, "/users?x=1").unwrap().to_string(),
            "http://127.0.0.1:3000/api/users?x=1"
        );
        let bare: http::Uri = "http://127.0.0.1:3000".parse().unwrap();
        assert_eq!(
            join(&bare, "/").unwrap().to_string(),
            "http://127.0.0.1:3000/"
        );
    }
}
