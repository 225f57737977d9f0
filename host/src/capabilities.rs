//! What the host offers filters beyond the request itself: a clock, randomness, a per-filter
//! cache, and calls to services the route grants. Each is an import of the WIT world.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty, Full, Limited};

use crate::gateway::Snapshot;
use crate::proxy::{from_wit_headers, strip_hop_by_hop, to_wit_headers};
use crate::runtime::HostState;
use crate::runtime::bindings::wasmgate::filter::{cache, host, outbound};
use crate::upstream::{self, BoxError};

use outbound::{CallError, OutboundRequest, OutboundResponse};

/// Entries one filter's cache holds at most.
const CACHE_MAX_ENTRIES: usize = 10_000;
/// Bytes (keys and values) one filter's cache holds at most.
const CACHE_MAX_BYTES: usize = 8 << 20;
/// Largest value stored; larger ones are silently not cached.
const CACHE_MAX_VALUE: usize = 64 << 10;
/// Longest key stored.
const CACHE_MAX_KEY: usize = 1024;
/// Most random bytes one call returns.
const MAX_RANDOM_BYTES: u32 = 4096;

/// A small in-memory cache shared by every instance of one filter.
#[derive(Default)]
pub struct FilterCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    entries: HashMap<String, CacheEntry>,
    bytes: usize,
}

struct CacheEntry {
    value: Vec<u8>,
    expires: Instant,
}

impl FilterCache {
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .get(key)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.value.clone())
    }

    pub fn set(&self, key: String, value: Vec<u8>, ttl: Duration) {
        if value.len() > CACHE_MAX_VALUE || key.len() > CACHE_MAX_KEY || ttl.is_zero() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let size = key.len() + value.len();
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= key.len() + old.value.len();
        }
        inner.bytes += size;
        inner.entries.insert(
            key,
            CacheEntry {
                value,
                expires: Instant::now() + ttl,
            },
        );
        if inner.entries.len() > CACHE_MAX_ENTRIES || inner.bytes > CACHE_MAX_BYTES {
            inner.evict();
        }
    }
}

impl CacheInner {
    /// Drop expired entries, then those expiring soonest, until within bounds.
    fn evict(&mut self) {
        let now = Instant::now();
        let mut freed = 0;
        self.entries.retain(|k, e| {
            let keep = e.expires > now;
            if !keep {
                freed += k.len() + e.value.len();
            }
            keep
        });
        self.bytes -= freed;
        while self.entries.len() > CACHE_MAX_ENTRIES || self.bytes > CACHE_MAX_BYTES {
            let Some(key) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&key) {
                self.bytes -= key.len() + e.value.len();
            }
        }
    }
}

/// What one filter instance may call: the services its route grants it.
pub struct Outbound {
    pub snapshot: Arc<Snapshot>,
    pub granted: Arc<[String]>,
    /// Upper bound for every call's timeout (the route's request timeout).
    pub timeout: Duration,
    /// Largest response body a call may return.
    pub max_body: usize,
}

impl host::Host for HostState {
    async fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    async fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut buf = vec![0u8; len.min(MAX_RANDOM_BYTES) as usize];
        if getrandom::fill(&mut buf).is_err() {
            // The OS generator is gone; nothing sane to return but an empty list.
            buf.clear();
        }
        buf
    }

    async fn skip_phases(&mut self, request: bool, response: bool) {
        self.skip_phases = (request, response);
    }
}

impl cache::Host for HostState {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.cache.get(&key)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u32) {
        self.cache
            .set(key, value, Duration::from_millis(u64::from(ttl_ms)));
    }
}

impl outbound::Host for HostState {
    async fn call(&mut self, req: OutboundRequest) -> Result<OutboundResponse, CallError> {
        let started = Instant::now();
        let result = match &self.outbound {
            Some(ctx) => call(ctx, req).await,
            None => Err(denied(&req.service)),
        };
        self.deadline += started.elapsed();
        result
    }

    async fn call_all(
        &mut self,
        reqs: Vec<OutboundRequest>,
    ) -> Vec<Result<OutboundResponse, CallError>> {
        let started = Instant::now();
        let results = match &self.outbound {
            Some(ctx) => {
                futures_util::future::join_all(reqs.into_iter().map(|r| call(ctx, r))).await
            }
            None => reqs.iter().map(|r| Err(denied(&r.service))).collect(),
        };
        self.deadline += started.elapsed();
        results
    }
}

fn denied(service: &str) -> CallError {
    CallError::Denied(format!(
        "this route does not grant this filter the service {service:?}"
    ))
}

/// One call to a granted service through the gateway's pooled client.
async fn call(ctx: &Outbound, req: OutboundRequest) -> Result<OutboundResponse, CallError> {
    if !ctx.granted.contains(&req.service) {
        return Err(denied(&req.service));
    }
    let service = ctx
        .snapshot
        .services
        .get(&req.service)
        .ok_or_else(|| denied(&req.service))?;
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| CallError::Invalid(format!("method {:?}", req.method)))?;
    if !req.path_with_query.starts_with('/') {
        return Err(CallError::Invalid(format!(
            "path {:?} must start with '/'",
            req.path_with_query
        )));
    }
    let uri = upstream::join(service.pick(), &req.path_with_query)
        .map_err(|e| CallError::Invalid(format!("path {:?}: {e}", req.path_with_query)))?;
    let mut headers = from_wit_headers(req.headers).map_err(CallError::Invalid)?;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    let body = match req.body {
        Some(bytes) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed_unsync()
        }
        None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
    };
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;

    let timeout = req.timeout_ms.map_or(ctx.timeout, |ms| {
        Duration::from_millis(u64::from(ms)).min(ctx.timeout)
    });
    let exchange = async {
        let resp = crate::upstream::local_client(ctx.snapshot.timeouts.connect)
            .request(outgoing)
            .await
            .map_err(|e| CallError::Unavailable(format!("service {:?}: {e}", req.service)))?;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Limited::new(body, ctx.max_body)
            .collect()
            .await
            .map_err(|e: BoxError| CallError::Invalid(format!("response body: {e}")))?
            .to_bytes();
        Ok(OutboundResponse {
            status: parts.status.as_u16(),
            headers: to_wit_headers(&parts.headers),
            body: body.to_vec(),
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Timeout),
    }
}
