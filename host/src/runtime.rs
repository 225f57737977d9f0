//! The filter runtime: engine configuration, filter loading and the per-request cost, in one
//! place.
//!
//! - One [`wasmtime::Engine`] for the process: pooling instance allocator, epoch interruption
//!   (a background thread ticks every [`EPOCH_TICK`]).
//! - A filter is compiled once per version and pre-instantiated ([`LoadedFilter`]).
//! - A request uses each filter of its route through a [`FilterLease`]. By default the lease
//!   holds one fresh instance for both phases and drops it afterwards, so no request sees
//!   another's data. A filter whose author declares it keeps nothing in the instance between
//!   calls (`reuse-instance`) has its instances configured once and shared: each phase call
//!   takes an idle instance and gives it back when the call succeeds, so instances are held
//!   only while wasm runs (not while the upstream answers) and a few serve any number of
//!   connections. An instance is recycled after about [`Limits::requests_per_instance`]
//!   requests; one whose call trapped, hit a limit or returned an error, or whose request was
//!   abandoned mid-call, is never reused.
//! - Each call runs under a deadline (checked on every epoch tick, yielding to tokio in
//!   between, so a looping filter cannot hold a worker thread) and a linear-memory cap.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::{FilterCache, Outbound};

/// Host-side bindings for `wit/filter.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gateway-filter",
        imports: { default: async },
        exports: { default: async },
    });

    pub use self::wasmgate::filter::types::{LogLevel, Request, Response, RouteContext};
    pub use exports::wasmgate::filter::filter::{FilterInfo, RequestAction};
}

use bindings::{FilterInfo, GatewayFilter, GatewayFilterPre, RequestAction};

/// How often the epoch advances; deadlines are checked at this granularity.
/// A looping filter yields to other tasks at each tick, so the tick bounds how long it can
/// keep a worker thread from other requests.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Per-call limits for filter execution. Defaults: see [`Limits::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Execution budget for one phase call (instantiation and configure included); time spent
    /// waiting on outbound calls is not counted.
    pub deadline: Duration,
    /// Cap on a filter instance's linear memory.
    pub memory_bytes: usize,
    /// Cap on what one phase returns (header names and values plus body).
    pub max_output_bytes: usize,
    /// Requests one instance may serve when its filter allows reuse; 1 means a fresh instance
    /// for every request.
    pub requests_per_instance: u32,
}

impl Default for Limits {
    /// 100 ms: far above what header, auth or transform filters need (tens of microseconds to a
    /// few milliseconds for RSA), short enough that a loop is cut before clients time out.
    /// 32 MiB: a Rust filter with std starts near 1.2 MiB and may copy a buffered 1 MiB body
    /// several times. 2 MiB output: the default body limit plus headroom for headers.
    /// 1000 requests per instance: reuse pays for itself after a few requests, and recycling
    /// bounds what a slow leak or heap fragmentation inside a filter can grow to.
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(100),
            memory_bytes: 32 << 20,
            max_output_bytes: 2 << 20,
            requests_per_instance: 1000,
        }
    }
}

/// Most memory any filter may be granted; sizes the pooling allocator's slots.
pub const MAX_MEMORY_BYTES: usize = 256 << 20;
/// Linear memory per pooled slot kept mapped between instances (reset by memset, not madvise).
const KEEP_RESIDENT_BYTES: usize = 4 << 20;
/// Filter instances alive at once across all requests (each in-flight request holds one per
/// filter of its route).
const POOL_INSTANCES: u32 = 2048;

/// Idle instances kept per binding, and across all bindings (a share of [`POOL_INSTANCES`], so
/// idle instances never starve requests of slots).
const IDLE_PER_BINDING: usize = 64;
const IDLE_TOTAL: usize = POOL_INSTANCES as usize / 2;
static IDLE_INSTANCES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Why a filter call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The filter returned an error value (it handled the situation itself).
    #[error("filter returned an error: {0}")]
    Returned(String),
    /// The instance trapped (panic, out-of-bounds, unreachable, stack overflow, out of memory)
    /// or was interrupted at its deadline. The instance is discarded.
    #[error("filter trapped: {0}")]
    Trap(String),
    /// The filter returned something the host will not use (an invalid header, status...).
    #[error("filter returned an invalid result: {0}")]
    Invalid(String),
}

/// Store data for one filter instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    filter: Arc<str>,
    request_id: Arc<str>,
    /// When the current call's execution budget runs out; host calls that wait (outbound
    /// requests) push it back by the time they waited.
    pub(crate) deadline: Instant,
    pub(crate) cache: Arc<FilterCache>,
    pub(crate) outbound: Option<Arc<Outbound>>,
    /// The phases `configure` said it leaves out (request, response).
    pub(crate) skip_phases: (bool, bool),
}

/// What one configuration of a filter asks of the host: its `filter-info`, and the phases
/// it runs (those it did not skip with `host.skip-phases`).
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    pub info: FilterInfo,
    pub request_phase: bool,
    pub response_phase: bool,
}

impl Needs {
    /// The request phase runs and reads the request body.
    pub fn request_body(&self) -> bool {
        self.request_phase && self.info.needs_request_body
    }

    /// The response phase runs and reads the response body.
    pub fn response_body(&self) -> bool {
        self.response_phase && self.info.needs_response_body
    }
}

/// What one instance may reach besides its request: its filter's cache and, when its route
/// grants services, outbound calls.
#[derive(Clone)]
pub struct Grants {
    pub cache: Arc<FilterCache>,
    pub outbound: Option<Arc<Outbound>>,
    pub limits: Limits,
}

impl Grants {
    /// No services and a throwaway cache (load-time and config checks).
    pub fn none() -> Grants {
        Grants {
            cache: Arc::default(),
            outbound: None,
            limits: Limits::default(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::wasmgate::filter::types::Host for HostState {}

impl bindings::wasmgate::filter::log::Host for HostState {
    async fn log(&mut self, level: bindings::LogLevel, message: String) {
        use bindings::LogLevel as L;
        let (filter, request_id) = (&*self.filter, &*self.request_id);
        match level {
            L::Trace => {
                tracing::trace!(target: "wasmgate::filter", filter, request_id, "{message}")
            }
            L::Debug => {
                tracing::debug!(target: "wasmgate::filter", filter, request_id, "{message}")
            }
            L::Info => tracing::info!(target: "wasmgate::filter", filter, request_id, "{message}"),
            L::Warn => tracing::warn!(target: "wasmgate::filter", filter, request_id, "{message}"),
            L::Error => {
                tracing::error!(target: "wasmgate::filter", filter, request_id, "{message}")
            }
        }
    }
}

/// The process-wide filter runtime.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
}

impl Runtime {
    /// Build the engine and start the epoch ticker (it stops when the engine is dropped).
    pub fn new() -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size(MAX_MEMORY_BYTES)
            // Reusing a slot resets it either way; keeping the first pages resident (and
            // finding dirty pages with pagemap_scan where the kernel has it) replaces madvise
            // calls and their cross-CPU TLB shootdowns with memset on the hot path.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(512 << 10);
        let engine = Engine::new(&config).map_err(|e| context(e, "configuring the wasm engine"))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch thread")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| context(e, "linking WASI"))?;
        GatewayFilter::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| context(e, "linking the wasmgate host interfaces"))?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// Compile (or fetch from `cache_dir`) and pre-instantiate a filter from its bytes, and ask
    /// it what it needs.
    ///
    /// Fails, with a reason fit for a log line, when the bytes are not a component, do not
    /// implement `wasmgate:filter/filter@0.1.0`, import something the host does not provide, or
    /// `describe` traps. Compilation runs on a blocking thread, off the request path.
    pub async fn load(
        &self,
        name: &str,
        bytes: Vec<u8>,
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<LoadedFilter> {
        let started = Instant::now();
        let hash = content_hash(&bytes);
        let cache_file =
            cache_dir.map(|dir| dir.join(format!("{hash}-{}.cwasm", self.compat_tag())));
        let engine = self.engine.clone();
        let (component, source) =
            tokio::task::spawn_blocking(move || compile_cached(&engine, &bytes, cache_file))
                .await
                .context("compile task")??;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("imports something the gateway does not provide: {e:#}")
        })?;
        let pre = GatewayFilterPre::new(pre).map_err(|e| {
            anyhow::anyhow!("does not implement wasmgate:filter/filter@0.1.0: {e:#}")
        })?;
        let mut filter = LoadedFilter {
            name: name.into(),
            engine: self.engine.clone(),
            pre,
            info: FilterInfo {
                needs_request_body: false,
                needs_response_body: false,
                reuse_instance: false,
            },
            hash,
            source,
            load_time: Duration::ZERO,
            loaded_at: SystemTime::now(),
        };
        let (mut store, instance) = filter
            .instantiate(&Arc::from("load"), Grants::none())
            .await?;
        filter.info = instance
            .wasmgate_filter_filter()
            .call_describe(&mut store)
            .await
            .map_err(|e| anyhow::anyhow!("describe failed: {}", trap_reason(&e)))?;
        filter.load_time = started.elapsed();
        Ok(filter)
    }

    /// Identifies the engine build and settings a serialized component is valid for.
    fn compat_tag(&self) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}

/// Where a loaded filter's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled from the `.wasm` now.
    Compiled,
    /// Deserialized from the on-disk compile cache (same content hash, same engine).
    Cache,
}

impl LoadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadSource::Compiled => "compiled",
            LoadSource::Cache => "cache",
        }
    }
}

/// `sha256:<hex>` of a filter's bytes: its version identity.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Deserialize from `cache_file` if present and valid, else compile and write it (best effort).
fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    cache_file: Option<PathBuf>,
) -> anyhow::Result<(Component, LoadSource)> {
    if let Some(file) = &cache_file
        && file.is_file()
    {
        // SAFETY: the cache directory holds only artifacts this gateway serialized with an
        // engine of the same compatibility tag (part of the file name); it must be writable by
        // the gateway's user alone (see the README). A corrupt file fails to deserialize and is
        // recompiled below.
        match unsafe { Component::deserialize_file(engine, file) } {
            Ok(component) => return Ok((component, LoadSource::Cache)),
            Err(e) => {
                tracing::warn!(file = %file.display(), "ignoring unusable compile cache entry: {e:#}")
            }
        }
    }
    let component = Component::new(engine, bytes)
        .map_err(|e| anyhow::anyhow!("not a loadable wasm component: {e:#}"))?;
    if let Some(file) = cache_file
        && let Err(e) = write_cache(&component, &file)
    {
        tracing::warn!(file = %file.display(), "cannot write compile cache: {e:#}");
    }
    Ok((component, LoadSource::Compiled))
}

fn write_cache(component: &Component, file: &Path) -> anyhow::Result<()> {
    let serialized = component
        .serialize()
        .map_err(|e| context(e, "serializing"))?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serialized)?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

/// A compiled, pre-instantiated filter version.
pub struct LoadedFilter {
    pub name: Arc<str>,
    engine: Engine,
    pre: GatewayFilterPre<HostState>,
    pub info: FilterInfo,
    /// `sha256` of the `.wasm` bytes, hex.
    pub hash: String,
    pub source: LoadSource,
    /// Time to compile or deserialize, pre-instantiate and describe.
    pub load_time: Duration,
    pub loaded_at: SystemTime,
}

impl LoadedFilter {
    async fn instantiate(
        &self,
        request_id: &Arc<str>,
        grants: Grants,
    ) -> Result<(Store<HostState>, GatewayFilter), FilterError> {
        let state = HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(grants.limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            filter: self.name.clone(),
            request_id: request_id.clone(),
            deadline: Instant::now() + grants.limits.deadline,
            cache: grants.cache,
            outbound: grants.outbound,
            skip_phases: (false, false),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let instance =
            self.pre.instantiate_async(&mut store).await.map_err(|e| {
                FilterError::Trap(format!("instantiation failed: {}", trap_reason(&e)))
            })?;
        Ok((store, instance))
    }

    /// A fresh instance configured with `config_json`, ready for one request's phases.
    pub async fn start(
        self: &Arc<Self>,
        config_json: &str,
        request_id: &Arc<str>,
        grants: Grants,
    ) -> Result<Box<FilterInstance>, FilterError> {
        let limits = grants.limits;
        let (mut store, bindings) = self.instantiate(request_id, grants).await?;
        let info = bindings
            .wasmgate_filter_filter()
            .call_configure(&mut store, config_json)
            .await
            .map_err(|e| FilterError::Trap(trap_reason(&e)))?
            .map_err(|e| FilterError::Returned(format!("config rejected: {e}")))?;
        let (skip_request, skip_response) = store.data().skip_phases;
        let needs = Needs {
            info,
            request_phase: !skip_request,
            response_phase: !skip_response,
        };
        Ok(Box::new(FilterInstance {
            filter: self.clone(),
            store,
            bindings,
            needs,
            limits,
            pool: None,
            served: 0,
            failed: false,
        }))
    }

    /// Check that the filter accepts `config_json`, and what that config needs; the error is
    /// the filter's own message.
    pub async fn check_config(self: &Arc<Self>, config_json: &str) -> Result<Needs, String> {
        match self
            .start(config_json, &Arc::from("check"), Grants::none())
            .await
        {
            Ok(instance) => Ok(instance.needs),
            Err(FilterError::Returned(msg)) => Err(msg),
            Err(other) => Err(other.to_string()),
        }
    }
}

/// The instances of one binding (a filter version with one route's config and grants).
pub struct InstancePool {
    filter: Arc<LoadedFilter>,
    config_json: String,
    /// What the binding's config needs.
    needs: Needs,
    /// Zero when instances are not reused.
    requests_per_instance: u32,
    /// Boxed: an instance moves in and out of here, and through each call's future, on every
    /// call; a box moves as one pointer.
    #[allow(clippy::vec_box)]
    idle: std::sync::Mutex<Vec<Box<FilterInstance>>>,
}

impl InstancePool {
    /// Instances are reused when the filter declares it safe (`reuse-instance`, from its
    /// configure result) and the limits allow more than one request per instance.
    pub fn new(
        filter: Arc<LoadedFilter>,
        config_json: String,
        needs: &Needs,
        limits: &Limits,
    ) -> InstancePool {
        let reuse = needs.info.reuse_instance && limits.requests_per_instance > 1;
        InstancePool {
            filter,
            config_json,
            needs: *needs,
            requests_per_instance: if reuse {
                limits.requests_per_instance
            } else {
                0
            },
            idle: std::sync::Mutex::default(),
        }
    }

    pub fn filter(&self) -> &Arc<LoadedFilter> {
        &self.filter
    }

    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// One request's use of this binding; `grants` carries the request's outbound access.
    pub fn lease(self: &Arc<Self>, request_id: &str, grants: Grants) -> FilterLease {
        FilterLease {
            pool: self.clone(),
            request_id: request_id.into(),
            grants,
            held: None,
        }
    }

    /// An instance for one call: an idle one when the binding reuses instances, else a fresh
    /// one configured now.
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
            IDLE_INSTANCES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let data = instance.store.data_mut();
            data.request_id = request_id.clone();
            data.outbound = grants.outbound;
            data.cache = grants.cache;
            instance.limits = grants.limits;
            // Epochs passed while it was idle; count its deadline from now.
            instance.store.set_epoch_deadline(1);
            instance.pool = Some(self.clone());
            return Ok(instance);
        }
        let mut instance = self
            .filter
            .start(&self.config_json, request_id, grants)
            .await?;
        if self.requests_per_instance > 0 {
            instance.pool = Some(self.clone());
        }
        Ok(instance)
    }

    /// Instances idle in this pool.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn put_back(&self, mut instance: Box<FilterInstance>) {
        use std::sync::atomic::Ordering;
        // Nothing of the finished request stays reachable from the idle instance, and it does
        // not point back at its pool (a cycle that would keep both, and the engine, alive).
        instance.store.data_mut().outbound = None;
        instance.pool = None;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= IDLE_PER_BINDING {
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
        IDLE_INSTANCES.fetch_sub(idle, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One request's use of a binding: runs its phases on a held fresh instance, or on shared
/// instances taken per call when the binding reuses them.
pub struct FilterLease {
    pool: Arc<InstancePool>,
    request_id: Arc<str>,
    grants: Grants,
    /// The request's own instance, when instances are not shared.
    held: Option<Box<FilterInstance>>,
}

impl FilterLease {
    pub fn filter(&self) -> &Arc<LoadedFilter> {
        &self.pool.filter
    }

    /// What the binding's config needs.
    pub fn needs(&self) -> &Needs {
        &self.pool.needs
    }

    async fn instance(&mut self) -> Result<Box<FilterInstance>, FilterError> {
        match self.held.take() {
            Some(instance) => Ok(instance),
            None => self.pool.take(&self.request_id, self.grants.clone()).await,
        }
    }

    fn done(&mut self, instance: Box<FilterInstance>) {
        if instance.pool.is_some() {
            instance.release();
        } else {
            self.held = Some(instance);
        }
    }

    pub async fn on_request(
        &mut self,
        ctx: &bindings::RouteContext,
        req: &bindings::Request,
    ) -> Result<RequestAction, FilterError> {
        let mut instance = self.instance().await?;
        let action = instance.on_request(ctx, req).await?;
        self.done(instance);
        Ok(action)
    }

    pub async fn on_response(
        &mut self,
        ctx: &bindings::RouteContext,
        resp: &bindings::Response,
    ) -> Result<bindings::Response, FilterError> {
        let mut instance = self.instance().await?;
        let resp = instance.on_response(ctx, resp).await?;
        self.done(instance);
        Ok(resp)
    }
}

/// One filter instance: held by a request for both phases, or taken per call from its pool.
pub struct FilterInstance {
    filter: Arc<LoadedFilter>,
    store: Store<HostState>,
    bindings: GatewayFilter,
    /// What this instance's config needs.
    pub needs: Needs,
    pub limits: Limits,
    /// Where it goes back after a clean call, when its binding reuses instances.
    pool: Option<Arc<InstancePool>>,
    /// Calls it has completed.
    served: u32,
    /// A call failed or was left unfinished: never reused.
    failed: bool,
}

impl FilterInstance {
    /// A call succeeded: back to its pool when its binding reuses instances and it has uses
    /// left (two calls per request), dropped otherwise. An instance that is simply dropped
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

    pub fn filter(&self) -> &Arc<LoadedFilter> {
        &self.filter
    }

    fn arm_deadline(&mut self) {
        self.store.data_mut().deadline = Instant::now() + self.limits.deadline;
    }

    async fn on_request(
        &mut self,
        ctx: &bindings::RouteContext,
        req: &bindings::Request,
    ) -> Result<RequestAction, FilterError> {
        self.arm_deadline();
        self.failed = true;
        let action = self
            .bindings
            .wasmgate_filter_filter()
            .call_on_request(&mut self.store, ctx, req)
            .await
            .map_err(|e| FilterError::Trap(trap_reason(&e)))?
            .map_err(FilterError::Returned)?;
        let size = match &action {
            RequestAction::Continue(r) => {
                r.path_with_query.len() + output_size(&r.headers, r.body.as_deref())
            }
            RequestAction::Respond(r) => output_size(&r.headers, r.body.as_deref()),
        };
        self.check_output(size)?;
        self.failed = false;
        Ok(action)
    }

    fn check_output(&self, size: usize) -> Result<(), FilterError> {
        let cap = self.limits.max_output_bytes;
        if size > cap {
            return Err(FilterError::Invalid(format!(
                "returned {size} bytes, over its cap of {cap}"
            )));
        }
        Ok(())
    }

    async fn on_response(
        &mut self,
        ctx: &bindings::RouteContext,
        resp: &bindings::Response,
    ) -> Result<bindings::Response, FilterError> {
        self.arm_deadline();
        self.failed = true;
        let resp = self
            .bindings
            .wasmgate_filter_filter()
            .call_on_response(&mut self.store, ctx, resp)
            .await
            .map_err(|e| FilterError::Trap(trap_reason(&e)))?
            .map_err(FilterError::Returned)?;
        self.check_output(output_size(&resp.headers, resp.body.as_deref()))?;
        self.failed = false;
        Ok(resp)
    }
}

/// Bytes a filter returned: header names and values, and the body.
fn output_size(headers: &[(String, Vec<u8>)], body: Option<&[u8]>) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum::<usize>()
        + body.map_or(0, <[u8]>::len)
}

/// wasmtime 48 has its own error type; give it context as an `anyhow::Error`.
fn context(err: wasmtime::Error, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {err:#}")
}

/// A one-line reason for a wasm error, naming deadline and memory hits plainly.
fn trap_reason(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "deadline exceeded".into(),
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    }
}
