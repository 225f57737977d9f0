//! The engine, the linker and loading: compile, check the contract version, pre-instantiate.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{GatewayFilter, GatewayFilterPre};
use crate::compile::{compile_cached, content_hash};
use crate::imports::HostState;
use crate::instance::{Grants, Limits, LoadedFilter};

/// The version of the `wasmgate:filter` WIT package this sandbox speaks.
pub const WIT_VERSION: &str = "0.3.0";
/// Versions of the contract this sandbox also loads: each a subset of [`WIT_VERSION`] (a
/// later patch version only adds imports), linked by wasmtime to the host's definitions by
/// semver. None yet for 0.3.
const ALSO_SPEAKS: &[&str] = &[];

/// The pooling allocator, except in a build for valgrind (feature `on-demand-allocator`), which
/// cannot reserve the pool's address space.
fn allocation(pool: PoolingAllocationConfig) -> InstanceAllocationStrategy {
    if cfg!(feature = "on-demand-allocator") {
        return InstanceAllocationStrategy::OnDemand;
    }
    InstanceAllocationStrategy::Pooling(pool)
}

/// The SDK line that builds filters for [`WIT_VERSION`] (its `major.minor`).
fn sdk_line() -> &'static str {
    WIT_VERSION
        .rsplit_once('.')
        .map_or(WIT_VERSION, |(line, _)| line)
}

/// Whether a component built for contract version `version` loads here.
fn speaks(version: &str) -> bool {
    version == WIT_VERSION || ALSO_SPEAKS.contains(&version)
}

/// The WIT package's name, before its `@version`.
const WIT_PACKAGE: &str = "wasmgate:filter";

/// How often the epoch advances while no filter call runs long; deadlines are checked at this
/// granularity. A call shorter than a tick never stops to check.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// How often the epoch advances while some filter call has run past a tick (a runaway looping
/// to its deadline): such a call yields to its worker's other requests at every tick, so this
/// bounds how long it keeps them waiting. Only then: each tick wakes a thread, which costs
/// CPU.
pub const BUSY_EPOCH_TICK: Duration = Duration::from_micros(250);

/// Set by a filter call that reached an epoch check (it has run past a tick); the ticker then
/// ticks at [`BUSY_EPOCH_TICK`] until no call has for a few ticks.
static LONG_CALL: AtomicBool = AtomicBool::new(false);

/// A call has run past a tick: tick faster (see [`BUSY_EPOCH_TICK`]).
pub(crate) fn long_call() {
    if !LONG_CALL.load(Ordering::Relaxed) {
        LONG_CALL.store(true, Ordering::Relaxed);
    }
}

/// Most memory any filter may be granted; sizes the pooling allocator's slots.
pub const MAX_MEMORY_BYTES: usize = 256 << 20;
/// Linear memory per pooled slot kept mapped between instances (reset by memset, not madvise).
const KEEP_RESIDENT_BYTES: usize = 4 << 20;
/// Limits for the one instantiation that checks a filter loads (start functions run then);
/// each route's own limits apply to its config check and requests.
const LOAD_LIMITS: Limits = Limits {
    deadline: Duration::from_secs(1),
    memory_bytes: MAX_MEMORY_BYTES,
    max_output_bytes: 0,
    requests_per_instance: 1,
};

/// Compiled versions kept in the compile cache besides the serving ones.
pub const CACHE_KEEP: usize = 32;
/// Filter instances alive at once across all requests (each in-flight request holds one per
/// filter of its route).
pub(crate) const POOL_INSTANCES: u32 = 2048;

/// The process-wide filter sandbox: engine and linker.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
}

impl Sandbox {
    /// Build the engine and start the epoch ticker (it stops when the engine is dropped).
    pub fn new() -> anyhow::Result<Sandbox> {
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
            .allocation_strategy(allocation(pool))
            .max_wasm_stack(512 << 10);
        let engine = Engine::new(&config).map_err(|e| context(e, "configuring the wasm engine"))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                // Fast ticks since a long call was last seen.
                let mut quiet = u32::MAX;
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    quiet = match LONG_CALL.swap(false, Ordering::Relaxed) {
                        true => 0,
                        false => quiet.saturating_add(1),
                    };
                    std::thread::sleep(match quiet < 8 {
                        true => BUSY_EPOCH_TICK,
                        false => EPOCH_TICK,
                    });
                }
            })
            .context("starting the epoch thread")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| context(e, "linking WASI"))?;
        GatewayFilter::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| context(e, "linking the wasmgate host interfaces"))?;
        Ok(Sandbox {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// Compile (or fetch from `cache_dir`) and pre-instantiate a filter from its bytes.
    ///
    /// Fails, with a reason fit for a log line, when the bytes are not a component, were built
    /// for another version of the `wasmgate:filter` contract (the reason names both versions),
    /// do not implement `wasmgate:filter/filter`, import something the host does not provide,
    /// or cannot be instantiated. Compilation runs on a blocking thread.
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
        self.check_contract(&component)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("imports something the gateway does not provide: {e:#}")
        })?;
        let pre = GatewayFilterPre::new(pre).map_err(|e| {
            anyhow::anyhow!("does not implement {WIT_PACKAGE}/filter@{WIT_VERSION}: {e:#}")
        })?;
        let mut filter = LoadedFilter {
            name: name.into(),
            engine: self.engine.clone(),
            pre,
            hash,
            source,
            load_time: Duration::ZERO,
            loaded_at: SystemTime::now(),
        };
        // A start function that traps, or a component too large for a pool slot, is found
        // now rather than on the first request.
        filter
            .instantiate(&Arc::from("load"), Grants::none(LOAD_LIMITS))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        filter.load_time = started.elapsed();
        Ok(filter)
    }

    /// Refuse a component built for another version of the contract, naming both versions.
    fn check_contract(&self, component: &Component) -> anyhow::Result<()> {
        let ty = component.component_type();
        let prefix = format!("{WIT_PACKAGE}/");
        let versions: Vec<String> = ty
            .exports(&self.engine)
            .chain(ty.imports(&self.engine))
            .filter_map(|(name, _)| name.strip_prefix(&prefix)?.split_once('@'))
            .map(|(_, version)| version.to_string())
            .collect();
        match versions.iter().find(|v| !speaks(v)) {
            Some(built_for) => anyhow::bail!(
                "built for {WIT_PACKAGE}@{built_for}, but this gateway speaks \
                 {WIT_PACKAGE}@{WIT_VERSION}: rebuild it against wasmgate-sdk {sdk}",
                sdk = sdk_line()
            ),
            None => Ok(()),
        }
    }

    /// Bound the compile cache in `dir`: remove what this engine can never load (another
    /// engine build or settings), and of the rest keep the versions in `serving` plus the
    /// [`CACHE_KEEP`] used most recently (a rollback to one of them loads from the cache).
    /// Best effort: a file that cannot be read or removed is left.
    pub fn prune_cache(&self, dir: &Path, serving: &[&str]) {
        let tag = self.compat_tag();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut others = Vec::new();
        for path in entries.flatten().map(|e| e.path()) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((hash, file_tag)) = name
                .strip_suffix(".cwasm")
                .and_then(|stem| stem.split_once('-'))
            else {
                continue;
            };
            if file_tag != tag {
                remove_cached(&path);
            } else if !serving.contains(&hash) {
                let used = std::fs::metadata(&path).and_then(|m| m.modified());
                others.push((used.unwrap_or(SystemTime::UNIX_EPOCH), path));
            }
        }
        others.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        for (_, path) in others.into_iter().skip(CACHE_KEEP) {
            remove_cached(&path);
        }
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

fn remove_cached(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(file = %path.display(), "pruned from the compile cache"),
        Err(e) => tracing::debug!(file = %path.display(), "cannot prune: {e}"),
    }
}

/// wasmtime 48 has its own error type; give it context as an `anyhow::Error`.
pub(crate) fn context(err: wasmtime::Error, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {err:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compile_cache_keeps_serving_and_recent_versions_only() {
        let sandbox = Sandbox::new().unwrap();
        let dir = std::env::temp_dir().join(format!("wasmgate-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tag = sandbox.compat_tag();
        let file = |hash: &str, tag: &str| dir.join(format!("{hash}-{tag}.cwasm"));
        let old = SystemTime::now() - Duration::from_secs(3600);
        for i in 0..CACHE_KEEP + 5 {
            let f = std::fs::File::create(file(&format!("{i:064x}"), &tag)).unwrap();
            // Older files have smaller numbers.
            f.set_modified(old + Duration::from_secs(i as u64)).unwrap();
        }
        let serving = format!("{:064x}", 0);
        std::fs::write(file(&"f".repeat(64), "0123456789abcdef"), b"other engine").unwrap();
        std::fs::write(dir.join("unrelated.txt"), b"kept").unwrap();

        sandbox.prune_cache(&dir, &[&serving]);

        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left.len(), CACHE_KEEP + 2, "{left:?}");
        assert!(
            left.contains(&format!("{serving}-{tag}.cwasm")),
            "the serving one"
        );
        assert!(left.contains(&"unrelated.txt".to_string()));
        for i in 1..5 {
            assert!(
                !left.contains(&format!("{i:064x}-{tag}.cwasm")),
                "old {i} pruned"
            );
        }
        assert!(left.contains(&format!("{:064x}-{tag}.cwasm", CACHE_KEEP + 4)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_wit_package_declares_the_version_the_sandbox_speaks() {
        let wit = include_str!("../../../wit/filter.wit");
        assert!(wit.contains(&format!("package {WIT_PACKAGE}@{WIT_VERSION};")));
    }

    /// The SDK carries a copy of the contract so that it builds (and packages) alone; filters
    /// built with it must speak exactly what the sandbox does.
    #[test]
    fn the_sdk_builds_against_the_same_contract() {
        assert_eq!(
            include_str!("../../../sdk/wit/filter.wit"),
            include_str!("../../../wit/filter.wit"),
            "sdk/wit/filter.wit differs from wit/filter.wit: copy it over"
        );
    }
}
