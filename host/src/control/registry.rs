//! The filters the config references, by name: the version serving now (the last one that
//! loaded), and the last rejection. A bad file never replaces a good version; a removed file
//! keeps its last good version serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use wasmgate_sandbox::{FilterCache, FilterMetrics, LoadedFilter, Sandbox, StateStore};

use crate::config::{Config, FilterSource, StateConfig};
use crate::oci::{Pulled, Puller};
use crate::snapshot::Filters;

/// Why the newest file for a filter was not taken into service.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Content hash of the rejected bytes, when they could be read.
    pub hash: Option<String>,
    pub reason: String,
    pub at: SystemTime,
}

/// One filter name.
#[derive(Default)]
pub struct Slot {
    /// The version serving requests: the last that loaded.
    pub current: Option<Arc<LoadedFilter>>,
    /// The last file that failed to load, if it came after `current`.
    pub rejected: Option<Rejection>,
    /// The file is gone; `current` keeps serving.
    pub file_removed: bool,
    /// The `oci://` source the filter was last refreshed from (`None`: the filters directory).
    pub source: Option<String>,
    /// For a filter from a registry, the manifest digest of `current`.
    pub manifest: Option<String>,
    /// The last pull failed while `current` kept serving (said once, not at every poll).
    pub pull_failing: bool,
}

impl Slot {
    /// Record why the newest version of filter `name` was not taken, and count it.
    fn reject(
        &mut self,
        metrics: Option<&crate::metrics::Metrics>,
        name: &str,
        hash: Option<String>,
        reason: String,
    ) {
        if let Some(m) = metrics {
            m.filter_load(name, false);
        }
        self.rejected = Some(Rejection {
            hash,
            reason,
            at: SystemTime::now(),
        });
    }
}

/// Filters by name.
#[derive(Default)]
pub struct Registry {
    pub slots: BTreeMap<String, Slot>,
    /// Where loads are counted, for a serving gateway.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Each filter's cache, kept across new versions of the filter.
    caches: BTreeMap<String, Arc<FilterCache>>,
    /// Each filter's metrics, kept across new versions of the filter.
    filter_metrics: BTreeMap<String, Arc<FilterMetrics>>,
    /// The state store, kept across reloads while `[state]` stays the same.
    state: Option<(StateConfig, Arc<dyn StateStore>)>,
    /// Pulls filters with an `oci://` source; made again when `[registry]` changes.
    puller: Option<Arc<Puller>>,
}

impl Registry {
    /// Load every filter `config` references.
    pub async fn load(
        sandbox: &Sandbox,
        config: &Config,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Registry {
        let mut registry = Registry {
            metrics,
            ..Registry::default()
        };
        for name in super::referenced_filters(config) {
            registry.refresh(sandbox, config, &name).await;
        }
        registry
    }

    /// Filters known by name.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Content hashes of the versions serving now.
    pub fn serving_hashes(&self) -> Vec<&str> {
        self.slots
            .values()
            .filter_map(|slot| slot.current.as_ref())
            .map(|f| f.hash.as_str())
            .collect()
    }

    /// Re-read filter `name` (`<filters_dir>/<name>.wasm`, or its `oci://` source) and take it
    /// into service if it is new and loads. Returns whether the serving version changed.
    pub async fn refresh(&mut self, sandbox: &Sandbox, config: &Config, name: &str) -> bool {
        match config.sources.get(name) {
            Some(source) => self.refresh_oci(sandbox, config, name, source).await,
            None => self.refresh_file(sandbox, config, name).await,
        }
    }

    /// Whether filter `name`'s source in `config` differs from the one it was loaded from.
    pub fn source_changed(&self, config: &Config, name: &str) -> bool {
        let wanted = config.sources.get(name).map(|s| s.text.as_str());
        self.slots
            .get(name)
            .is_none_or(|slot| slot.source.as_deref() != wanted)
    }

    /// The hex digests of what the versions from registries serving now were pulled as: each
    /// one's manifest, and its component (whose digest is the content hash that serves).
    pub fn serving_blobs(&self) -> Vec<&str> {
        self.slots
            .values()
            .filter_map(|slot| Some((slot.current.as_ref()?, slot.manifest.as_deref()?)))
            .flat_map(|(current, manifest)| {
                [
                    manifest.trim_start_matches("sha256:"),
                    current.hash.as_str(),
                ]
            })
            .collect()
    }

    /// The puller for `config`'s `[registry]` and cache directory.
    pub fn puller(&mut self, config: &Config) -> Arc<Puller> {
        let cache_dir = config.cache_dir.as_deref();
        match &self.puller {
            Some(p) if p.is_for(&config.registry, cache_dir) => p.clone(),
            _ => {
                let p = Arc::new(Puller::new(&config.registry, cache_dir));
                self.puller = Some(p.clone());
                p
            }
        }
    }

    /// Pull filter `name` from its registry unless the digest serving is still the one its
    /// source names; a failed pull leaves the serving version in place.
    async fn refresh_oci(
        &mut self,
        sandbox: &Sandbox,
        config: &Config,
        name: &str,
        source: &FilterSource,
    ) -> bool {
        let (puller, serving) = self.pull_plan(config, name, source);
        let pulled = puller.pull(source, serving.as_deref()).await;
        self.take_pull(sandbox, config, name, source, pulled).await
    }

    /// What pulling filter `name` from `source` takes: the puller, and the manifest digest
    /// serving now when it came from this same source (the pull is skipped if it is current).
    pub fn pull_plan(
        &mut self,
        config: &Config,
        name: &str,
        source: &FilterSource,
    ) -> (Arc<Puller>, Option<String>) {
        let serving = self
            .slots
            .get(name)
            .filter(|s| s.source.as_deref() == Some(source.text.as_str()) && s.current.is_some())
            .and_then(|s| s.manifest.clone());
        (self.puller(config), serving)
    }

    /// Take the outcome of a pull of filter `name` from `source` made with [`pull_plan`]'s
    /// inputs: a new component is loaded and serves if it loads; a failed pull leaves the
    /// serving version in place. Returns whether the serving version changed.
    ///
    /// [`pull_plan`]: Registry::pull_plan
    pub async fn take_pull(
        &mut self,
        sandbox: &Sandbox,
        config: &Config,
        name: &str,
        source: &FilterSource,
        pulled: Result<Option<Pulled>, String>,
    ) -> bool {
        let slot = self.slots.entry(name.to_string()).or_default();
        let same_source = slot.source.as_deref() == Some(source.text.as_str());
        slot.source = Some(source.text.clone());
        slot.file_removed = false;
        match pulled {
            Ok(None) => {
                if slot.pull_failing {
                    tracing::info!(filter = name, source = %source.text, "registry answers again; the serving version is current");
                }
                slot.pull_failing = false;
                false
            }
            Ok(Some(pulled)) => {
                slot.pull_failing = false;
                let hash = wasmgate_sandbox::content_hash(&pulled.bytes);
                let from = format!(
                    "oci://{}/{}@{}",
                    source.registry, source.repository, pulled.manifest
                );
                tracing::debug!(filter = name, from = %from, stored = pulled.from_store, "pulled");
                let changed = self
                    .install(sandbox, config, name, pulled.bytes, &from)
                    .await;
                let slot = self.slots.entry(name.to_string()).or_default();
                if slot.current.as_ref().is_some_and(|c| c.hash == hash) {
                    slot.manifest = Some(pulled.manifest);
                }
                changed
            }
            Err(reason) => {
                match &slot.current {
                    Some(current) if same_source => {
                        if !slot.pull_failing {
                            tracing::warn!(
                                filter = name,
                                "cannot pull: {reason}; version {} keeps serving (retried every {})",
                                current.short_hash(),
                                humantime::format_duration(config.registry.poll_interval)
                            );
                        }
                        slot.pull_failing = true;
                    }
                    _ => {
                        let keeps = match &slot.current {
                            Some(c) => format!("version {} keeps serving", c.short_hash()),
                            None => "no version is serving; its routes answer 503".to_string(),
                        };
                        tracing::error!(
                            filter = name,
                            "filter not loaded ({keeps}): {reason} (retried every {})",
                            humantime::format_duration(config.registry.poll_interval)
                        );
                        slot.reject(self.metrics.as_deref(), name, None, reason);
                    }
                }
                false
            }
        }
    }

    /// Re-read `<filters_dir>/<name>.wasm` and take it into service if it is new and loads.
    async fn refresh_file(&mut self, sandbox: &Sandbox, config: &Config, name: &str) -> bool {
        let path = super::filter_path(&config.filters_dir, name);
        let slot = self.slots.entry(name.to_string()).or_default();
        if slot.source.take().is_some() {
            // Was from a registry: the file is a new version whatever its bytes.
            slot.manifest = None;
            slot.pull_failing = false;
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && slot.current.is_some() => {
                if !slot.file_removed {
                    tracing::warn!(
                        filter = name,
                        file = %path.display(),
                        "filter file removed; its last good version keeps serving"
                    );
                }
                slot.file_removed = true;
                return false;
            }
            Err(e) => {
                let reason = format!("{}: cannot read: {e}", path.display());
                tracing::error!(filter = name, file = %path.display(), "filter rejected: {reason}");
                slot.reject(self.metrics.as_deref(), name, None, reason);
                return false;
            }
        };
        slot.file_removed = false;
        self.install(sandbox, config, name, bytes, &path.display().to_string())
            .await
    }

    /// Take `bytes` into service as filter `name` if they are new and load (`from` says where
    /// they came from, for logs and rejections). Returns whether the serving version changed.
    async fn install(
        &mut self,
        sandbox: &Sandbox,
        config: &Config,
        name: &str,
        bytes: Vec<u8>,
        from: &str,
    ) -> bool {
        let cache_dir = config.cache_dir.as_deref();
        let slot = self.slots.entry(name.to_string()).or_default();
        let hash = wasmgate_sandbox::content_hash(&bytes);
        if slot.current.as_ref().is_some_and(|c| c.hash == hash) {
            slot.rejected = None;
            return false;
        }
        if slot
            .rejected
            .as_ref()
            .is_some_and(|r| r.hash.as_ref() == Some(&hash))
        {
            return false;
        }
        match sandbox.load(name, bytes, cache_dir).await {
            Ok(filter) => {
                tracing::info!(
                    filter = name,
                    from = from,
                    version = %filter.short_hash(),
                    previous = %slot.current.as_ref().map_or("none", |c| c.short_hash()),
                    source = filter.source.as_str(),
                    load_ms = filter.load_time.as_secs_f64() * 1e3,
                    "filter loaded"
                );
                slot.current = Some(Arc::new(filter));
                slot.rejected = None;
                if let Some(m) = &self.metrics {
                    m.filter_load(name, true);
                }
                true
            }
            Err(e) => {
                let reason = one_line(&format!("{from}: {e:#}"));
                let keeps = match &slot.current {
                    Some(c) => format!("version {} keeps serving", c.short_hash()),
                    None => "no version is serving".to_string(),
                };
                tracing::error!(filter = name, from = from, version = %short(&hash), "filter rejected ({keeps}): {reason}");
                slot.reject(self.metrics.as_deref(), name, Some(hash), reason);
                false
            }
        }
    }

    /// Forget filters no route references any more.
    pub fn retain(&mut self, referenced: &BTreeSet<String>) {
        self.slots.retain(|name, _| referenced.contains(name));
        self.caches.retain(|name, _| referenced.contains(name));
        self.filter_metrics
            .retain(|name, _| referenced.contains(name));
    }
}

impl Filters for Registry {
    fn resolve(&self, name: &str) -> Result<Arc<LoadedFilter>, String> {
        match self.slots.get(name) {
            Some(Slot {
                current: Some(f), ..
            }) => Ok(f.clone()),
            Some(Slot {
                rejected: Some(r), ..
            }) => Err(r.reason.clone()),
            _ => Err("not loaded".into()),
        }
    }

    fn cache(&mut self, name: &str) -> Arc<FilterCache> {
        self.caches.entry(name.to_string()).or_default().clone()
    }

    fn metrics(&mut self, name: &str) -> Arc<FilterMetrics> {
        self.filter_metrics
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn state(&mut self, config: &StateConfig) -> Arc<dyn StateStore> {
        if let Some((kept, store)) = &self.state
            && kept == config
        {
            return store.clone();
        }
        let store = match crate::state::store(config) {
            Ok(store) => store,
            Err(e) => {
                // Validation accepted the config, so this is not expected; filters still get
                // a store, in memory.
                tracing::error!("state: {e:#}; using the in-process store");
                crate::state::store(&StateConfig::default()).expect("the memory store")
            }
        };
        if self.state.is_some() {
            tracing::info!(backend = %config.backend, "state: [state] changed; a new store serves from now on");
        }
        self.state = Some((config.clone(), store.clone()));
        store
    }
}

/// `text` on one line: line breaks and the indentation after them fold into single spaces
/// (wasmtime pretty-prints some parse errors over many lines).
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.lines().map(str::trim).enumerate() {
        if i > 0 && !line.is_empty() && !out.ends_with('[') && !line.starts_with(']') {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

/// The first 12 hex digits of a content hash, for logs.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn pretty_printed_errors_fold_onto_one_line() {
        let text = "bad magic number - expected=[\n    0x0,\n    0x61,\n] actual=[\n    0x67,\n] (at offset 0x0)";
        assert_eq!(
            super::one_line(text),
            "bad magic number - expected=[0x0, 0x61,] actual=[0x67,] (at offset 0x0)"
        );
    }
}
