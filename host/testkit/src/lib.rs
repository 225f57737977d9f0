//! # wasmgate-testkit
//!
//! Test a filter's built `.wasm` from `cargo test`, inside the gateway's real sandbox: the same
//! engine, limits (deadline, memory, output) and instance rules (a fresh instance per request,
//! or reused instances when the filter's [`Needs::reuse_instance`] says so) as a running
//! gateway, with the services the filter calls stubbed in the test. Requests, responses and
//! contexts are the SDK's own types, so assertions read like the filter's unit tests.
//!
//! ```no_run
//! use serde_json::json;
//! use wasmgate_sdk::{Action, Request};
//! use wasmgate_testkit::TestFilter;
//!
//! // Builds this crate for wasm32-wasip2 (release) and loads the component.
//! let filter = TestFilter::build(env!("CARGO_MANIFEST_DIR"));
//! let route = filter.route(json!({ "header": "x-api-key" })).unwrap();
//!
//! let Action::Respond(resp) = route.on_request(Request::new("GET", "/")).unwrap() else {
//!     panic!("expected a refusal");
//! };
//! assert_eq!(resp.status(), 401);
//! assert!(route.logs().iter().any(|l| l.message.contains("refused")));
//! ```
//!
//! A filter that calls services gets stubs with [`TestRoute::service`]; every call it made is in
//! [`TestRoute::service_calls`]. [`TestRoute::cache`] is the filter's cache, to seed or inspect.
//! [`TestRoute::metrics`] counts phase calls, failures and configured instances. The filter's
//! `state` lives in an in-process store of the route's own ([`TestRoute::shared_state`] shares
//! one between routes, [`TestRoute::state_down`] makes every call fail).
//!
//! The calls block (the sandbox runs on the kit's own runtime): use them from plain `#[test]`
//! functions, not from inside an async runtime such as `#[tokio::test]`.
#![deny(missing_docs)]

mod logs;
mod services;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use wasmgate_sandbox::{ClientAddr, HttpRequest, HttpResponse, ResponseHeaders, RouteInfo};
use wasmgate_sandbox::{
    Counter, FilterCache, FilterMetrics, Grants, InstancePool, Lease, LoadedFilter, LogFields,
    MemoryStore, Sandbox, StateError, StateFuture, StateStore, ThrottleResult, content_hash,
};
use wasmgate_sdk::__testkit as parts;
use wasmgate_sdk::{Action, Context, Request, Response};

pub use logs::LogRecord;
pub use services::ServiceCall;
pub use tracing::Level;
pub use wasmgate_sandbox::{
    FilterError, Limits, Metric, MetricKind, Needs, TrapKind, Value as MetricValue,
};
pub use wasmgate_test::build_component;

use logs::Capture;
use services::Stubs;

/// The process-wide sandbox and the runtime its async calls run on; one per test binary, as in
/// the gateway.
fn sandbox() -> &'static (Sandbox, tokio::runtime::Runtime) {
    static SANDBOX: OnceLock<(Sandbox, tokio::runtime::Runtime)> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("starting the testkit's runtime");
        let sandbox = runtime
            .block_on(async { Sandbox::new() })
            .expect("starting the wasmgate sandbox");
        (sandbox, runtime)
    })
}

/// A filter component loaded into the sandbox, as the gateway loads it: the same checks
/// (a component, built for this gateway's WIT version, implementing the filter interface).
#[derive(Clone)]
pub struct TestFilter {
    filter: Arc<LoadedFilter>,
    limits: Limits,
}

impl TestFilter {
    /// Build the filter crate at `manifest_dir` (pass `env!("CARGO_MANIFEST_DIR")`) for
    /// `wasm32-wasip2` in release mode, into its own target directory, and load it. Panics with
    /// cargo's output when the build fails, and with the reason when the gateway would refuse
    /// the component.
    pub fn build(manifest_dir: impl AsRef<Path>) -> TestFilter {
        let path = build_component(manifest_dir.as_ref())
            .unwrap_or_else(|e| panic!("building the filter failed: {e}"));
        TestFilter::load(&path)
            .unwrap_or_else(|e| panic!("the gateway would refuse {}: {e}", path.display()))
    }

    /// Load a built `.wasm`; the error is the reason the gateway would log for refusing it.
    pub fn load(path: impl AsRef<Path>) -> Result<TestFilter, String> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path
            .file_stem()
            .map_or_else(|| "filter".into(), |s| s.to_string_lossy().into_owned());
        // Each test loads its filter; one compilation per version serves them all.
        static LOADED: OnceLock<Mutex<HashMap<String, Arc<LoadedFilter>>>> = OnceLock::new();
        let key = format!("{name}/{}", content_hash(&bytes));
        let mut loaded = LOADED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let filter = match loaded.get(&key) {
            Some(filter) => filter.clone(),
            None => {
                let (sandbox, runtime) = sandbox();
                let filter = runtime
                    .block_on(sandbox.load(&name, bytes, None))
                    .map_err(|e| format!("{e:#}"))?;
                let filter = Arc::new(filter);
                loaded.insert(key, filter.clone());
                filter
            }
        };
        Ok(TestFilter {
            filter,
            limits: Limits::default(),
        })
    }

    /// The same filter under other limits (the defaults are the gateway's).
    pub fn with_limits(mut self, limits: Limits) -> TestFilter {
        self.limits = limits;
        self
    }

    /// The filter's name (its file stem, as routes name it).
    pub fn name(&self) -> &str {
        &self.filter.name
    }

    /// Configure the filter for a route with `config` (the JSON form of the route's
    /// `config` table), as the gateway does on load. The error is the filter's own message
    /// for a config it rejects, which `wasmgate check` would print.
    pub fn route(&self, config: serde_json::Value) -> Result<TestRoute, String> {
        let config = config.to_string();
        let (_, runtime) = sandbox();
        let logs = Capture::default();
        let needs =
            logs.during(|| runtime.block_on(self.filter.check_config(&config, self.limits)))?;
        let pool = InstancePool::new(
            self.filter.clone(),
            config,
            needs,
            self.limits.requests_per_instance,
        );
        Ok(TestRoute {
            pool: Arc::new(pool),
            limits: self.limits,
            cache: Arc::default(),
            stubs: Arc::default(),
            context: Context::new("test", &[]),
            lease: Mutex::new(None),
            logs,
            counters: Counters::default(),
            metrics: Arc::default(),
            log_fields: Mutex::default(),
            state: Arc::new(MemoryStore::default()),
        })
    }
}

/// One route's configuration of a filter: drives its phases as the gateway would for requests
/// on that route.
pub struct TestRoute {
    pool: Arc<InstancePool>,
    limits: Limits,
    cache: Arc<FilterCache>,
    stubs: Arc<Stubs>,
    context: Context,
    /// The lease of the request whose request phase ran last, which its response phase uses,
    /// and the headers that phase set for the response.
    lease: Mutex<Option<(Lease, Arc<str>, ResponseHeaders)>>,
    logs: Capture,
    counters: Counters,
    metrics: Arc<FilterMetrics>,
    log_fields: Mutex<LogFields>,
    state: Arc<dyn StateStore>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    request_calls: AtomicU64,
    response_calls: AtomicU64,
    failures: AtomicU64,
}

/// What a route's filter did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl TestRoute {
    /// What this configuration asked of the gateway (bodies, phases, instance reuse).
    pub fn needs(&self) -> Needs {
        self.pool.needs()
    }

    /// Stub the service `name`: the route grants it to the filter and `answer` handles each
    /// call (method, path and query, headers and body as the filter sent them). Services not
    /// stubbed are not granted: the filter's call gets `CallError::Denied`, as in a gateway
    /// whose route does not list them.
    pub fn service(
        self,
        name: &str,
        answer: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> TestRoute {
        self.stubs.add(name, Ok(Box::new(answer)));
        self
    }

    /// Grant the service `name` but make every call to it fail as an unreachable upstream
    /// does (`CallError::Unavailable`).
    pub fn service_down(self, name: &str) -> TestRoute {
        self.stubs.add(name, Err(()));
        self
    }

    /// The context the next phases see (route name, path parameters, client address). Each
    /// request gets its own request id unless the context sets one.
    pub fn context(mut self, context: Context) -> TestRoute {
        self.context = context;
        self
    }

    /// Make the filter's state store fail every call as an unreachable Redis does
    /// (`state-error::unavailable`), to test what the filter does then.
    pub fn state_down(mut self) -> TestRoute {
        self.state = Arc::new(DownStore);
        self
    }

    /// Share `other`'s state store (as two gateways on one Redis share theirs).
    pub fn shared_state(mut self, other: &TestRoute) -> TestRoute {
        self.state = other.state.clone();
        self
    }

    /// The filter's cache, shared by its instances: seed it before a call or read what the
    /// filter stored.
    pub fn cache(&self) -> &FilterCache {
        &self.cache
    }

    /// The metric `name` the filter defined (through `wasmgate_sdk::metrics`), with every
    /// series it recorded: label values (the route's name first, from [`TestRoute::context`])
    /// and value. `None` until an instance defined it.
    pub fn metric(&self, name: &str) -> Option<Arc<Metric>> {
        self.metrics.all().into_iter().find(|m| m.name == name)
    }

    /// The access log fields the filter added (through `wasmgate_sdk::log::field`) since the
    /// last call of this function.
    pub fn log_fields(&self) -> Vec<(String, String)> {
        self.log_fields
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn keep_log_fields(&self, lease: &mut Lease) {
        self.log_fields
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(lease.take_log_fields());
    }

    /// Run the request phase for a new request. As in the gateway, a request body reaches the
    /// filter only when its [`Needs::request_body`] asks for it, and a filter whose
    /// [`Needs::request_phase`] is `false` is not called (the request continues unchanged).
    pub fn on_request(&self, req: Request) -> Result<Action, FilterError> {
        let n = self.counters.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let (route, params, client_addr, id) = parts::context_into_parts(&self.context);
        let request_id: Arc<str> = if id == "test" {
            format!("test-{n}").into()
        } else {
            id.into()
        };
        let mut lease = self.pool.lease(&request_id, self.grants(&route));
        let ctx = Arc::new(RouteInfo {
            route: route.into(),
            params,
            client: ClientAddr::Text(client_addr),
            request_id: request_id.clone(),
        });
        if !self.needs().request_phase {
            // The gateway never calls it.
            return Ok(Action::Continue(req));
        }
        let req = parts::request_into_parts(req);
        let mut held = HttpRequest {
            method: http::Method::from_bytes(req.method.as_bytes())
                .map_err(|_| invalid_input(format!("method {:?}", req.method)))?,
            scheme: if req.scheme == "https" {
                "https"
            } else {
                "http"
            },
            authority: req.authority,
            path_and_query: req.path_with_query,
            headers: header_map(req.headers)?,
            body: req
                .body
                .filter(|_| self.needs().request_body)
                .map(Bytes::from),
        };
        self.counters.request_calls.fetch_add(1, Ordering::Relaxed);
        let (_, runtime) = sandbox();
        let result = self
            .logs
            .during(|| runtime.block_on(lease.on_request(&ctx, &mut held)));
        self.keep_log_fields(&mut lease);
        let for_response = lease.take_response_headers();
        let answer = result.inspect_err(|_| self.count_failure())?;
        // As in the gateway: the headers set for the response go on the filter's own answer,
        // or wait for the response phase.
        let answer = answer.map(|mut answer| {
            for_response.clone().apply(&mut answer.headers);
            answer
        });
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((lease, request_id, for_response));
        Ok(match answer {
            None => Action::Continue(parts::request_from_parts(parts::RequestParts {
                method: held.method.to_string(),
                scheme: held.scheme.to_owned(),
                authority: held.authority,
                path_with_query: held.path_and_query,
                headers: wire(&held.headers),
                body: held.body.map(Vec::from),
            })),
            Some(r) => Action::Respond(sdk_response(r)),
        })
    }

    /// Run the response phase: for the request whose request phase ran last (on the same
    /// instance, as in the gateway), or for a new one when none ran. Headers that request
    /// phase set for the response (`Context::set_response_header`) are applied first. A
    /// response body reaches the filter only when its [`Needs::response_body`] asks for it; a
    /// filter whose [`Needs::response_phase`] is `false` is not called.
    pub fn on_response(&self, resp: Response) -> Result<Response, FilterError> {
        let held = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (mut lease, request_id, for_response) = match held {
            Some(held) => held,
            None => {
                let n = self.counters.requests.fetch_add(1, Ordering::Relaxed) + 1;
                let id: Arc<str> = format!("test-{n}").into();
                let route = parts::context_into_parts(&self.context).0;
                let lease = self.pool.lease(&id, self.grants(&route));
                (lease, id, ResponseHeaders::default())
            }
        };
        let (route, params, client_addr, _) = parts::context_into_parts(&self.context);
        let ctx = Arc::new(RouteInfo {
            route: route.into(),
            params,
            client: ClientAddr::Text(client_addr),
            request_id: request_id.clone(),
        });
        let (status, headers, body) = parts::response_into_parts(resp);
        let mut held = HttpResponse {
            status: http::StatusCode::from_u16(status)
                .map_err(|_| invalid_input(format!("status {status}")))?,
            headers: header_map(headers)?,
            body: body.map(Bytes::from),
        };
        for_response.apply(&mut held.headers);
        if !self.needs().response_phase {
            // The gateway never calls it.
            return Ok(sdk_response(held));
        }
        held.body = held.body.filter(|_| self.needs().response_body);
        self.counters.response_calls.fetch_add(1, Ordering::Relaxed);
        let (_, runtime) = sandbox();
        let result = self
            .logs
            .during(|| runtime.block_on(lease.on_response(&ctx, &mut held)));
        self.keep_log_fields(&mut lease);
        result.inspect_err(|_| self.count_failure())?;
        Ok(sdk_response(held))
    }

    /// Every record the filter logged so far (also printed to stderr, which `cargo test` shows
    /// for a failing test).
    pub fn logs(&self) -> Vec<LogRecord> {
        self.logs.records()
    }

    /// Every service call the filter made so far, in order.
    pub fn service_calls(&self) -> Vec<ServiceCall> {
        self.stubs.calls()
    }

    /// Counts of what the filter did so far.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            request_calls: self.counters.request_calls.load(Ordering::Relaxed),
            response_calls: self.counters.response_calls.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            instances_started: self.pool.instances_started(),
            service_calls: self.stubs.call_count() as u64,
        }
    }

    fn count_failure(&self) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn grants(&self, route: &str) -> Grants {
        Grants {
            cache: self.cache.clone(),
            outbound: Some(self.stubs.clone()),
            limits: self.limits,
            metrics: self.metrics.clone(),
            route: Arc::from(route),
            logged: true,
            state: self.state.clone(),
        }
    }
}

/// A state store that is down: every call fails as an unreachable Redis does.
struct DownStore;

impl StateStore for DownStore {
    fn incr(&self, _: String, _: u64, _: Duration) -> StateFuture<'_, Counter> {
        down()
    }

    fn throttle(&self, _: String, _: u32, _: Duration, _: u32) -> StateFuture<'_, ThrottleResult> {
        down()
    }

    fn get(&self, _: String) -> StateFuture<'_, Option<Vec<u8>>> {
        down()
    }

    fn set(&self, _: String, _: Vec<u8>, _: Option<Duration>) -> StateFuture<'_, ()> {
        down()
    }

    fn delete(&self, _: String) -> StateFuture<'_, bool> {
        down()
    }

    fn compare_and_set(
        &self,
        _: String,
        _: Option<Vec<u8>>,
        _: Vec<u8>,
        _: Option<Duration>,
    ) -> StateFuture<'_, bool> {
        down()
    }

    fn max_value_bytes(&self) -> usize {
        1 << 20
    }
}

fn down<T: Send + 'static>() -> StateFuture<'static, T> {
    Box::pin(std::future::ready(Err(StateError::Unavailable(
        "the state store is down (TestRoute::state_down)".into(),
    ))))
}

/// What a test gave that the gateway would never hand a filter (an invalid header or status).
fn invalid_input(what: String) -> FilterError {
    FilterError::Invalid(format!("the test's own input is invalid: {what}"))
}

fn header_map(list: parts::Wire) -> Result<http::HeaderMap, FilterError> {
    let mut map = http::HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid_input(format!("header name {name:?}")))?;
        let value = http::HeaderValue::from_bytes(&value)
            .map_err(|_| invalid_input(format!("value of header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

fn wire(map: &http::HeaderMap) -> parts::Wire {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn sdk_response(resp: HttpResponse) -> Response {
    parts::response_from_parts(
        resp.status.as_u16(),
        wire(&resp.headers),
        resp.body.map(Vec::from),
    )
}
