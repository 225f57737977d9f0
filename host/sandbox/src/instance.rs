//! Loaded filters, their instances, and the limits every call runs under.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use crate::bindings::exports::wasmgate::filter::filter::RequestAction;
use crate::bindings::{GatewayFilter, GatewayFilterPre};
use crate::compile::LoadSource;
use crate::engine::POOL_INSTANCES;
use crate::imports::{FilterCache, HostState, Outbound};
use crate::messages::{HELD, Held, HttpRequest, HttpResponse, ResponseHeaders, RouteInfo};
use crate::state::{MemoryStore, StateStore};
use crate::telemetry::{FilterMetrics, LogFields};
use crate::wit::Needs;

/// Idle instances kept per pool, and across all pools (a share of the engine's instance slots,
/// so idle instances never starve requests of slots).
const IDLE_PER_POOL: usize = 64;
const IDLE_TOTAL: usize = POOL_INSTANCES as usize / 2;
static IDLE_INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// What one filter call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Execution budget for one phase call (instantiation and configure included); time spent
    /// waiting on outbound calls is not counted.
    pub deadline: Duration,
    /// Cap on a filter instance's linear memory (at most [`crate::MAX_MEMORY_BYTES`]).
    pub memory_bytes: usize,
    /// Cap on what one phase writes (header names and values, method, path, body).
    pub max_output_bytes: usize,
    /// Requests one instance may serve when its filter allows reuse; 1 means a fresh instance
    /// for every request.
    pub requests_per_instance: u32,
}

impl Default for Limits {
    /// The gateway's defaults (`[filter_limits]` in its config, which a host test keeps equal
    /// to these): 100 ms per phase, 32 MiB of memory, 2 MiB of output, 1000 requests per
    /// reused instance.
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory_bytes: 32 << 20,
            max_output_bytes: 2 << 20,
            requests_per_instance: 1000,
        }
    }
}

/// Why a filter call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The filter returned an error value (it handled the situation itself).
    #[error("filter returned an error: {0}")]
    Returned(String),
    /// The instance trapped (panic, out-of-bounds, unreachable, stack overflow, out of memory)
    /// or was interrupted at its deadline. The instance is discarded.
    #[error("filter trapped: {reason}")]
    Trap {
        /// What stopped it, as the sandbox saw it.
        kind: TrapKind,
        /// wasmtime's account of the trap, for the log.
        reason: String,
    },
    /// The filter returned something the host will not use (an invalid header, status, or
    /// more output than its cap).
    #[error("filter returned an invalid result: {0}")]
    Invalid(String),
}

/// What stopped a call that trapped: told by the sandbox itself (the engine's interrupt, the
/// memory cap's own refusal), never read from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// Interrupted at its deadline.
    Deadline,
    /// Its memory cap refused to grow its linear memory.
    Memory,
    /// Anything else: a panic, an out-of-bounds access, a stack overflow, `unreachable`.
    Trap,
}

impl FilterError {
    /// The failure's kind, as metrics name it: `error` (returned), `invalid` (result),
    /// `deadline`, `memory` (the cap), or `trap` (anything else: a panic, a stack overflow).
    pub fn kind(&self) -> &'static str {
        match self {
            FilterError::Returned(_) => "error",
            FilterError::Invalid(_) => "invalid",
            FilterError::Trap { kind, .. } => match kind {
                TrapKind::Deadline => "deadline",
                TrapKind::Memory => "memory",
                TrapKind::Trap => "trap",
            },
        }
    }

    /// The error for `err`, a call on `store` that trapped.
    fn trapped(store: &Store<HostState>, err: &wasmtime::Error) -> FilterError {
        FilterError::Trap {
            kind: TrapKind::of(store, err),
            reason: trap_reason(err),
        }
    }
}

impl TrapKind {
    /// What stopped the call on `store` that failed with `err`.
    fn of(store: &Store<HostState>, err: &wasmtime::Error) -> TrapKind {
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => TrapKind::Deadline,
            _ if store.data().memory.refused => TrapKind::Memory,
            _ => TrapKind::Trap,
        }
    }
}

/// One instance's memory cap: growth past it traps (a filter never sees a failed
/// `memory.grow`), and the cap remembers that it refused, so that the failure is told as
/// [`TrapKind::Memory`].
pub(crate) struct MemoryCap {
    bytes: usize,
    /// A growth was refused: the call trapped on the cap.
    pub(crate) refused: bool,
}

impl MemoryCap {
    fn new(bytes: usize) -> MemoryCap {
        MemoryCap {
            bytes,
            refused: false,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.bytes || maximum.is_some_and(|max| desired > max) {
            self.refused = true;
            wasmtime::bail!(
                "memory cap: growing linear memory to {desired} bytes, over the {} allowed",
                self.bytes
            );
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused = true;
        Err(error.context("growing linear memory failed"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            wasmtime::bail!("growing a table to {desired} elements, over its maximum");
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("growing a table failed"))
    }
}

/// What one instance may reach besides its request, and the limits it runs under.
#[derive(Clone)]
pub struct Grants {
    /// Its filter's cache.
    pub cache: Arc<FilterCache>,
    /// Service calls, when its route grants any.
    pub outbound: Option<Arc<dyn Outbound>>,
    /// Limits for each call.
    pub limits: Limits,
    /// Its filter's metrics.
    pub metrics: Arc<FilterMetrics>,
    /// The route's name, the `route` label of what it records.
    pub route: Arc<str>,
    /// The request is access-logged: fields the filter adds are kept (see
    /// [`Lease::take_log_fields`]).
    pub logged: bool,
    /// Where its `state` import keeps its keys (namespaced by filter name).
    pub state: Arc<dyn StateStore>,
}

impl Grants {
    /// No services and a throwaway cache, under `limits` (load-time and config checks,
    /// benchmarks).
    pub fn none(limits: Limits) -> Grants {
        Grants {
            cache: Arc::default(),
            outbound: None,
            limits,
            metrics: Arc::default(),
            route: Arc::from(""),
            logged: false,
            state: Arc::new(MemoryStore::default()),
        }
    }
}

/// A compiled, pre-instantiated filter version.
pub struct LoadedFilter {
    /// The filter's name (its file stem).
    pub name: Arc<str>,
    pub(crate) engine: Engine,
    pub(crate) pre: GatewayFilterPre<HostState>,
    /// `sha256` of the `.wasm` bytes, hex.
    pub hash: String,
    /// Compiled now, or taken from the compile cache.
    pub source: LoadSource,
    /// Time to compile or deserialize, pre-instantiate and instantiate once.
    pub load_time: Duration,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl LoadedFilter {
    /// The first 12 hex digits of its content hash, for logs.
    pub fn short_hash(&self) -> &str {
        &self.hash[..self.hash.len().min(12)]
    }

    pub(crate) async fn instantiate(
        &self,
        request_id: &Arc<str>,
        grants: Grants,
    ) -> Result<(Store<HostState>, GatewayFilter), FilterError> {
        let state = HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory: MemoryCap::new(grants.limits.memory_bytes),
            filter: self.name.clone(),
            request_id: request_id.clone(),
            deadline: Instant::now() + grants.limits.deadline,
            throttle_from: throttle_from(Instant::now(), grants.limits.deadline),
            cache: grants.cache,
            outbound: grants.outbound,
            metrics: grants.metrics,
            route: grants.route,
            log_fields: grants.logged.then(LogFields::default),
            state: grants.state,
            kept: None,
            held: Held::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(2);
        store.epoch_deadline_callback(|ctx| {
            let now = Instant::now();
            if now >= ctx.data().deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            crate::engine::long_call();
            if now >= ctx.data().throttle_from {
                // A call this long is most likely a runaway: from here on it runs one tick,
                // then sleeps for about four, so that it takes a fifth of its worker's time
                // until its deadline, not all of it. The next tick is counted from the wake.
                return Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::time::sleep(THROTTLE_PAUSE)),
                ));
            }
            // Yield so that the worker's other requests run, through tokio's `yield_now`: it
            // wakes this task only after the runtime has polled for I/O. A plain `Yield` wakes
            // it at once, and a worker with only this task ready then looks for new I/O only
            // every 61 polls (tokio's event interval): 61 ticks of guest time (measured: a
            // healthy route's p99 at 76 ms beside a looping filter).
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(e) => {
                return Err(FilterError::Trap {
                    kind: TrapKind::of(&store, &e),
                    reason: format!("instantiation failed: {}", trap_reason(&e)),
                });
            }
        };
        Ok((store, instance))
    }

    /// A fresh instance configured with `config_json`, ready for one request's phases.
    async fn start(
        self: &Arc<Self>,
        config_json: &str,
        request_id: &Arc<str>,
        grants: Grants,
    ) -> Result<Box<FilterInstance>, FilterError> {
        let limits = grants.limits;
        let (mut store, bindings) = self.instantiate(request_id, grants).await?;
        let mut needs = bindings
            .wasmgate_filter_filter()
            .call_configure(&mut store, config_json)
            .await
            .map_err(|e| FilterError::trapped(&store, &e))?
            .map_err(|e| FilterError::Returned(format!("config rejected: {e}")))?;
        // A body is read only by a phase that runs.
        needs.request_body &= needs.request_phase;
        needs.response_body &= needs.response_phase;
        Ok(Box::new(FilterInstance {
            store,
            bindings,
            needs,
            limits,
            pool: None,
            served: 0,
            failed: false,
        }))
    }

    /// Check that the filter accepts `config_json` under `limits`, and what that config needs;
    /// the error is the filter's own message.
    pub async fn check_config(
        self: &Arc<Self>,
        config_json: &str,
        limits: Limits,
    ) -> Result<Needs, String> {
        match self
            .start(config_json, &Arc::from("check"), Grants::none(limits))
            .await
        {
            Ok(instance) => Ok(instance.needs),
            Err(FilterError::Returned(msg)) => Err(msg),
            Err(other) => Err(other.to_string()),
        }
    }
}

/// The instances of one configuration of a filter version.
pub struct InstancePool {
    filter: Arc<LoadedFilter>,
    config_json: String,
    /// What the configuration needs.
    needs: Needs,
    /// Zero when instances are not reused.
    requests_per_instance: u32,
    /// Boxed: an instance moves in and out of here, and through each call's future, on every
    /// call; a box moves as one pointer.
    #[allow(clippy::vec_box)]
    idle: std::sync::Mutex<Vec<Box<FilterInstance>>>,
    /// Instances configured so far.
    started: AtomicU64,
}

impl InstancePool {
    /// Instances of `filter` configured with `config_json`, which [`LoadedFilter::check_config`]
    /// said `needs`. They are reused when the configuration allows it
    /// ([`Needs::reuse_instance`]) and `requests_per_instance` is more than one.
    pub fn new(
        filter: Arc<LoadedFilter>,
        config_json: String,
        needs: Needs,
        requests_per_instance: u32,
    ) -> InstancePool {
        let reuse = needs.reuse_instance && requests_per_instance > 1;
        InstancePool {
            filter,
            config_json,
            needs,
            requests_per_instance: if reuse { requests_per_instance } else { 0 },
            idle: std::sync::Mutex::default(),
            started: AtomicU64::new(0),
        }
    }

    /// The filter version.
    pub fn filter(&self) -> &Arc<LoadedFilter> {
        &self.filter
    }

    /// What the configuration needs.
    pub fn needs(&self) -> Needs {
        self.needs
    }

    /// One request's use of this pool; `grants` carries what the request's calls may reach.
    pub fn lease(self: &Arc<Self>, request_id: &Arc<str>, grants: Grants) -> Lease {
        Lease {
            pool: self.clone(),
            request_id: request_id.clone(),
            grants,
            held: None,
            fields: LogFields::default(),
            kept: None,
            for_response: ResponseHeaders::default(),
        }
    }

    /// Instances this pool has configured (each ran `configure` once).
    pub fn instances_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Instances idle in this pool.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// An instance for one call: an idle one when the pool reuses instances, else a fresh one
    /// configured now.
    async fn take(
        self: &Arc<Self>,
        request_id: &Arc<str>,
        grants: Grants,
    ) -> Result<Box<FilterInstance>, FilterError> {
        let idle = match self.requests_per_instance {
            0 => None,
            _ => self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop(),
        };
        if let Some(mut instance) = idle {
            IDLE_INSTANCES.fetch_sub(1, Ordering::Relaxed);
            let data = instance.store.data_mut();
            data.request_id = request_id.clone();
            data.outbound = grants.outbound;
            data.cache = grants.cache;
            data.metrics = grants.metrics;
            data.route = grants.route;
            data.log_fields = grants.logged.then(LogFields::default);
            data.state = grants.state;
            instance.limits = grants.limits;
            // Epochs passed while it was idle; count from now.
            instance.store.set_epoch_deadline(2);
            instance.pool = Some(self.clone());
            return Ok(instance);
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        let mut instance = self
            .filter
            .start(&self.config_json, request_id, grants)
            .await?;
        if self.requests_per_instance > 0 {
            instance.pool = Some(self.clone());
        }
        Ok(instance)
    }

    fn put_back(&self, mut instance: Box<FilterInstance>) {
        // Nothing of the finished request stays reachable from the idle instance, and it does
        // not point back at its pool (a cycle that would keep both, and the engine, alive).
        instance.store.data_mut().outbound = None;
        instance.store.data_mut().log_fields = None;
        instance.pool = None;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= IDLE_PER_POOL {
            return;
        }
        if IDLE_INSTANCES.fetch_add(1, Ordering::Relaxed) >= IDLE_TOTAL {
            IDLE_INSTANCES.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        idle.push(instance);
    }
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map_or(0, |v| v.len());
        IDLE_INSTANCES.fetch_sub(idle, Ordering::Relaxed);
    }
}

/// One request's use of a pool: runs its phases on a held fresh instance, or on shared
/// instances taken per call when the pool reuses them.
pub struct Lease {
    pool: Arc<InstancePool>,
    request_id: Arc<str>,
    grants: Grants,
    /// The request's own instance, when instances are not shared.
    held: Option<Box<FilterInstance>>,
    /// Access log fields the calls so far added.
    fields: LogFields,
    /// What the request phase kept for the response phase (`state.keep`).
    kept: Option<Vec<u8>>,
    /// The headers the request phase set for the response.
    for_response: ResponseHeaders,
}

impl Lease {
    async fn instance(&mut self) -> Result<Box<FilterInstance>, FilterError> {
        match self.held.take() {
            Some(instance) => Ok(instance),
            None => self.pool.take(&self.request_id, self.grants.clone()).await,
        }
    }

    fn done(&mut self, mut instance: Box<FilterInstance>) {
        let data = instance.store.data_mut();
        if let Some(kept) = data.kept.take() {
            self.kept = Some(kept);
        }
        if let Some(fields) = data.log_fields.as_mut()
            && !fields.is_empty()
        {
            self.fields.extend(std::mem::take(fields));
        }
        if instance.pool.is_some() {
            instance.release();
        } else {
            self.held = Some(instance);
        }
    }

    /// The access log fields the filter added in the calls so far (none unless the grants
    /// said the request is logged).
    pub fn take_log_fields(&mut self) -> LogFields {
        std::mem::take(&mut self.fields)
    }

    /// The headers the request phase set for the response (see [`ResponseHeaders`]), taken.
    pub fn take_response_headers(&mut self) -> ResponseHeaders {
        std::mem::take(&mut self.for_response)
    }

    /// The request phase, on this lease's instance: the filter reads and changes `req` in
    /// place. `Some` is the response it answers with (the upstream is not called). On a
    /// failure `req` holds whatever writes the filter made before it failed. Headers it set
    /// for the response wait in [`Lease::take_response_headers`].
    pub async fn on_request(
        &mut self,
        ctx: &Arc<RouteInfo>,
        req: &mut HttpRequest,
    ) -> Result<Option<HttpResponse>, FilterError> {
        let mut instance = self.instance().await?;
        let answer = instance.on_request(ctx, req).await?;
        self.for_response = std::mem::take(&mut instance.store.data_mut().held.for_response);
        self.done(instance);
        Ok(answer)
    }

    /// The response phase, on this lease's instance: the filter changes `resp` in place, or
    /// replaces it.
    pub async fn on_response(
        &mut self,
        ctx: &Arc<RouteInfo>,
        resp: &mut HttpResponse,
    ) -> Result<(), FilterError> {
        let mut instance = self.instance().await?;
        instance.store.data_mut().kept = self.kept.take();
        instance.on_response(ctx, resp).await?;
        self.done(instance);
        Ok(())
    }
}

/// One filter instance: held by a request for both phases, or taken per call from its pool.
struct FilterInstance {
    store: Store<HostState>,
    bindings: GatewayFilter,
    /// What this instance's configuration needs.
    needs: Needs,
    limits: Limits,
    /// Where it goes back after a clean call, when its pool reuses instances.
    pool: Option<Arc<InstancePool>>,
    /// Calls it has completed.
    served: u32,
    /// A call failed or was left unfinished: never reused.
    failed: bool,
}

impl FilterInstance {
    /// A call succeeded: back to its pool when the pool reuses instances and it has uses left
    /// (two calls per request), dropped otherwise. An instance that is simply dropped
    /// (failure, abandoned request) is never reused.
    fn release(mut self: Box<Self>) {
        self.served += 1;
        if let Some(pool) = self.pool.clone()
            && !self.failed
            && self.served < pool.requests_per_instance.saturating_mul(2)
        {
            pool.put_back(self);
        }
    }

    /// Count the deadline from now, and the first epoch check from the next tick but one: a
    /// call shorter than a tick never stops to check (or to yield).
    fn arm_deadline(&mut self) {
        let now = Instant::now();
        let data = self.store.data_mut();
        data.deadline = now + self.limits.deadline;
        data.throttle_from = throttle_from(now, self.limits.deadline);
        self.store.set_epoch_deadline(2);
    }

    async fn on_request(
        &mut self,
        ctx: &Arc<RouteInfo>,
        req: &mut HttpRequest,
    ) -> Result<Option<HttpResponse>, FilterError> {
        self.arm_deadline();
        self.failed = true;
        let held = &mut self.store.data_mut().held;
        held.begin(ctx.clone(), self.limits.max_output_bytes);
        held.request = Some(std::mem::take(req));
        let result = self
            .bindings
            .wasmgate_filter_filter()
            .call_on_request(&mut self.store, Resource::new_borrow(HELD))
            .await;
        let held = &mut self.store.data_mut().held;
        if let Some(back) = held.request.take() {
            *req = back;
        }
        let answer = match &result {
            Ok(Ok(RequestAction::Respond(built))) => held.take_built(built.rep()),
            _ => None,
        };
        let invalid = held.end();
        let action = result
            .map_err(|e| FilterError::trapped(&self.store, &e))?
            .map_err(FilterError::Returned)?;
        if let Some(why) = invalid {
            return Err(FilterError::Invalid(why));
        }
        let answer = match action {
            RequestAction::Continue => None,
            RequestAction::Respond(_) => Some(answer.ok_or_else(|| {
                FilterError::Invalid("answered with a response it did not build".into())
            })?),
        };
        self.failed = false;
        Ok(answer)
    }

    async fn on_response(
        &mut self,
        ctx: &Arc<RouteInfo>,
        resp: &mut HttpResponse,
    ) -> Result<(), FilterError> {
        self.arm_deadline();
        self.failed = true;
        let held = &mut self.store.data_mut().held;
        held.begin(ctx.clone(), self.limits.max_output_bytes);
        held.response = Some(std::mem::take(resp));
        let result = self
            .bindings
            .wasmgate_filter_filter()
            .call_on_response(&mut self.store, Resource::new_borrow(HELD))
            .await;
        let held = &mut self.store.data_mut().held;
        if let Some(back) = held.response.take() {
            *resp = back;
        }
        let replaced = match &result {
            Ok(Ok(Some(built))) => Some(held.take_built(built.rep())),
            _ => None,
        };
        let invalid = held.end();
        result
            .map_err(|e| FilterError::trapped(&self.store, &e))?
            .map_err(FilterError::Returned)?;
        if let Some(why) = invalid {
            return Err(FilterError::Invalid(why));
        }
        if let Some(built) = replaced {
            *resp = built.ok_or_else(|| {
                FilterError::Invalid("replaced the response with one it did not build".into())
            })?;
        }
        self.failed = false;
        Ok(())
    }
}

/// A call still running this long after it started (or a tenth of its deadline, if that is
/// longer) is throttled: filter calls take microseconds, and one that has run for 10 ms is
/// most likely looping to its deadline.
pub const THROTTLE_AFTER: Duration = Duration::from_millis(10);
/// How long a throttled call sleeps after each tick it runs (tokio's timer rounds it up to
/// the next millisecond).
const THROTTLE_PAUSE: Duration = Duration::from_millis(1);

/// When a call that starts at `now` with `deadline` begins to be throttled.
pub(crate) fn throttle_from(now: Instant, deadline: Duration) -> Instant {
    now + THROTTLE_AFTER.max(deadline / 10)
}

/// A one-line reason for a wasm error, naming deadline and memory hits plainly.
fn trap_reason(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "deadline exceeded".into(),
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    }
}
