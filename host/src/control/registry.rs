//! The filters the config references, by name: the version serving now (the last one that
//! loaded), and the last rejection. A bad file never replaces a good version; a removed file
//! keeps its last good version serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use wasmgate_sandbox::{FilterCache, FilterMetrics, LoadedFilter, Sandbox, StateStore};

use crate::config::{Config, StateConfig};
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

    /// Whether filter `name` is known (loaded or rejected).
    pub fn has(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    /// Re-read `<filters_dir>/<name>.wasm` and take it into service if it is new and loads.
    /// Returns whether the serving version changed.
    pub async fn refresh(&mut self, sandbox: &Sandbox, config: &Config, name: &str) -> bool {
        let path = super::filter_path(&config.filters_dir, name);
        let cache_dir = config.cache_dir.as_deref();
        let slot = self.slots.entry(name.to_string()).or_default();
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
                if let Some(m) = &self.metrics {
                    m.filter_load(name, false);
                }
                slot.rejected = Some(Rejection {
                    hash: None,
                    reason,
                    at: SystemTime::now(),
                });
                return false;
            }
        };
        slot.file_removed = false;
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
                    file = %path.display(),
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
                let reason = one_line(&format!("{}: {e:#}", path.display()));
                let keeps = match &slot.current {
                    Some(c) => format!("version {} keeps serving", c.short_hash()),
                    None => "no version is serving".to_string(),
                };
                tracing::error!(filter = name, file = %path.display(), version = %short(&hash), "filter rejected ({keeps}): {reason}");
                if let Some(m) = &self.metrics {
                    m.filter_load(name, false);
                }
                slot.rejected = Some(Rejection {
                    hash: Some(hash),
                    reason,
                    at: SystemTime::now(),
                });
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
