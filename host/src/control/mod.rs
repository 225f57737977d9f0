//! The control plane: the registry of loaded filters, reloads (of the config and of filters),
//! the file watcher and the admin endpoint. It builds snapshots and publishes them; the request
//! path only reads them.

pub mod admin;
mod registry;
pub mod watch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use wasmgate_sandbox::Sandbox;

use self::registry::Registry;
use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::snapshot::{Current, FilterProblem, Snapshot};
use crate::upstream::EndpointRegistry;

/// Reloads and the state they work from.
pub struct Control {
    sandbox: Sandbox,
    /// Where snapshots are published for the request path.
    snapshots: Arc<Current>,
    /// Everything reloads change, behind one lock so reloads never interleave. Never taken on
    /// the request path.
    state: tokio::sync::Mutex<State>,
    metrics: Arc<Metrics>,
    /// Set when the gateway starts stopping: `/ready` says so, so that load balancers stop
    /// sending new requests while the in-flight ones finish.
    draining: AtomicBool,
}

/// What reloads work from.
struct State {
    /// The config serving now.
    config: Config,
    /// The file it came from, when it came from one.
    config_path: Option<PathBuf>,
    registry: Registry,
    /// Endpoint state and health checkers, kept across reloads.
    endpoints: EndpointRegistry,
    config_loaded_at: SystemTime,
    /// The last config reload that was rejected, if it came after the serving config.
    config_rejected: Option<(SystemTime, Vec<String>)>,
}

impl Control {
    /// Load `config`'s filters and publish the first snapshot. Filter problems are logged and
    /// leave the affected routes answering 503.
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Control> {
        let sandbox = Sandbox::new()?;
        let mut registry = Registry::load(&sandbox, &config, Some(metrics.clone())).await;
        let mut endpoints = EndpointRegistry::default();
        let (snapshot, problems) = Snapshot::build(&config, &mut registry, &mut endpoints).await;
        endpoints.sync(&snapshot.services, &config.dns);
        log_problems(&problems);
        warn_unnamed_files(&config, None);
        prune_cache(&sandbox, &config, &mut registry);
        Ok(Control {
            draining: AtomicBool::new(false),
            metrics,
            sandbox,
            snapshots: Arc::new(Current::from_pointee(snapshot)),
            state: tokio::sync::Mutex::new(State {
                config,
                config_path,
                registry,
                endpoints,
                config_loaded_at: SystemTime::now(),
                config_rejected: None,
            }),
        })
    }

    /// From now on `/ready` answers 503 (the gateway is stopping).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the gateway is stopping.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The certificate files of the serving config's `[tls]`, when it has one.
    pub async fn certificate_files(&self) -> Option<Vec<config::CertificateFiles>> {
        let state = self.state.lock().await;
        state.config.tls.as_ref().map(|t| t.certificates.clone())
    }

    /// Where the current snapshot is published.
    pub fn snapshots(&self) -> Arc<Current> {
        self.snapshots.clone()
    }

    /// The filters directory of the serving config.
    pub async fn filters_dir(&self) -> PathBuf {
        self.state.lock().await.config.filters_dir.clone()
    }

    /// Re-read the config file. An invalid config is rejected with every error and the current
    /// one keeps serving. Filters newly referenced are loaded.
    pub async fn reload_config(&self) -> Result<(), Vec<String>> {
        let mut state = self.state.lock().await;
        let Some(path) = state.config_path.clone() else {
            return Err(vec![
                "the gateway was not started from a config file".into(),
            ]);
        };
        let new = match Config::load(&path) {
            Ok(config) => config,
            Err(e) => {
                let errors: Vec<String> = e.to_string().lines().map(str::to_string).collect();
                for line in &errors {
                    tracing::error!("config rejected, previous config keeps serving: {line}");
                }
                state.config_rejected = Some((SystemTime::now(), errors.clone()));
                self.metrics.config_reload(false);
                return Err(errors);
            }
        };
        let old = &state.config;
        if let Err(errors) = check_new_certificates(old, &new) {
            for line in &errors {
                tracing::error!("config rejected, previous config keeps serving: {line}");
            }
            state.config_rejected = Some((SystemTime::now(), errors.clone()));
            self.metrics.config_reload(false);
            return Err(errors);
        }
        if new.listen != old.listen {
            tracing::warn!(old = %old.listen, new = %new.listen, "listen address changed: restart wasmgate to apply it");
        }
        if new.admin != old.admin {
            tracing::warn!("[admin] changed: restart wasmgate to apply it");
        }
        if new.server != old.server {
            tracing::warn!("[server] settings changed: restart wasmgate to apply them");
        }
        if new.metrics.listen != old.metrics.listen {
            tracing::warn!("[metrics] listen changed: restart wasmgate to apply it");
        }
        if new.access_log != old.access_log {
            tracing::warn!("[access_log] changed: restart wasmgate to apply it");
        }
        if new.tracing != old.tracing {
            tracing::warn!("[tracing] changed: restart wasmgate to apply it");
        }
        let dir_changed = new.filters_dir != old.filters_dir || new.cache_dir != old.cache_dir;
        let referenced = referenced_filters(&new);
        let state = &mut *state;
        for name in &referenced {
            if dir_changed || state.registry.source_changed(&new, name) {
                state.registry.refresh(&self.sandbox, &new, name).await;
            }
        }
        state.registry.retain(&referenced);
        self.publish(&new, &mut state.registry, &mut state.endpoints)
            .await;
        warn_unnamed_files(&new, None);
        tracing::info!(file = %path.display(), routes = new.routes.len(), "config reloaded");
        state.config = new;
        state.config_loaded_at = SystemTime::now();
        state.config_rejected = None;
        self.metrics.config_reload(true);
        Ok(())
    }

    /// Re-read the named filters (all referenced ones when `None`) and switch routes to any
    /// new version that loads. Returns the names whose serving version changed.
    pub async fn reload_filters(&self, names: Option<&[String]>) -> Vec<String> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        let referenced = referenced_filters(&state.config);
        if let Some(names) = names {
            warn_unnamed_files(&state.config, Some(names));
        }
        let wanted: Vec<String> = match names {
            Some(names) => names
                .iter()
                .filter(|n| referenced.contains(*n))
                .cloned()
                .collect(),
            None => referenced.into_iter().collect(),
        };
        // A file event or an admin reload names files; filters from registries are polled.
        let wanted: Vec<String> = wanted
            .into_iter()
            .filter(|n| names.is_none() || !state.config.sources.contains_key(n))
            .collect();
        let mut changed = Vec::new();
        for name in wanted {
            if state
                .registry
                .refresh(&self.sandbox, &state.config, &name)
                .await
            {
                changed.push(name);
            }
        }
        if !changed.is_empty() {
            self.publish(&state.config, &mut state.registry, &mut state.endpoints)
                .await;
        }
        changed
    }

    /// How often filters from registries are checked (`[registry] poll_interval`).
    pub async fn poll_interval(&self) -> std::time::Duration {
        self.state.lock().await.config.registry.poll_interval
    }

    /// Check every filter with an `oci://` source that may have changed: those following a
    /// tag, and pinned ones not loaded yet (the registry was down). Routes switch to any new
    /// version that loads; a registry that does not answer leaves the serving versions alone.
    /// Returns the names whose serving version changed.
    pub async fn poll_sources(&self) -> Vec<String> {
        // The registries are asked without the lock, all at once: a slow or silent registry
        // holds up neither config reloads nor the other filters' pulls.
        let plans: Vec<_> = {
            let mut state = self.state.lock().await;
            let state = &mut *state;
            let due: Vec<String> = referenced_filters(&state.config)
                .into_iter()
                .filter(|name| {
                    state.config.sources.get(name).is_some_and(|source| {
                        !source.is_pinned()
                            || state
                                .registry
                                .slots
                                .get(name)
                                .is_none_or(|s| s.current.is_none())
                    })
                })
                .collect();
            due.into_iter()
                .map(|name| {
                    let source = state.config.sources[&name].clone();
                    let (puller, serving) = state.registry.pull_plan(&state.config, &name, &source);
                    (name, source, puller, serving)
                })
                .collect()
        };
        if plans.is_empty() {
            return Vec::new();
        }
        let pulls = plans
            .iter()
            .map(|(_, source, puller, serving)| puller.pull(source, serving.as_deref()));
        let pulled = futures_util::future::join_all(pulls).await;

        let mut state = self.state.lock().await;
        let state = &mut *state;
        let referenced = referenced_filters(&state.config);
        let mut changed = Vec::new();
        for ((name, source, _, _), pulled) in plans.into_iter().zip(pulled) {
            // A reload while the registries were asked may have changed or dropped the source.
            if state.config.sources.get(&name) != Some(&source) || !referenced.contains(&name) {
                continue;
            }
            if state
                .registry
                .take_pull(&self.sandbox, &state.config, &name, &source, pulled)
                .await
            {
                changed.push(name);
            }
        }
        if !changed.is_empty() {
            self.publish(&state.config, &mut state.registry, &mut state.endpoints)
                .await;
        }
        changed
    }

    /// Build a snapshot of `config` over `registry`, log its filter problems, and serve it.
    async fn publish(
        &self,
        config: &Config,
        registry: &mut Registry,
        endpoints: &mut EndpointRegistry,
    ) {
        let (snapshot, problems) = Snapshot::build(config, registry, endpoints).await;
        endpoints.sync(&snapshot.services, &config.dns);
        log_problems(&problems);
        self.snapshots.store(Arc::new(snapshot));
        prune_cache(&self.sandbox, config, registry);
    }
}

/// A reload that changes `[tls]`: a new certificate list must be usable as a whole (its
/// problems reject the config, with their places); the listener and the redirect switch need a
/// restart, which is said.
fn check_new_certificates(old: &Config, new: &Config) -> Result<(), Vec<String>> {
    let paths = |c: &Config| {
        c.tls.as_ref().map(|t| {
            t.certificates
                .iter()
                .map(|f| (f.cert.clone(), f.key.clone()))
                .collect::<Vec<_>>()
        })
    };
    match (&old.tls, &new.tls) {
        (Some(old_tls), Some(new_tls)) => {
            if old_tls.listen != new_tls.listen || old_tls.redirect_http != new_tls.redirect_http {
                tracing::warn!(
                    "[tls] listen or redirect_http changed: restart wasmgate to apply it"
                );
            }
            if paths(old) != paths(new)
                && let Err(problems) = crate::tls::load(&new_tls.certificates)
            {
                return Err(problems
                    .into_iter()
                    .map(|p| format!("{}: tls: {}", p.place, p.reason))
                    .collect());
            }
        }
        (None, None) => {}
        _ => tracing::warn!("[tls] added or removed: restart wasmgate to apply it"),
    }
    Ok(())
}

/// Keep the compile cache bounded: the serving versions and a few recent ones.
fn prune_cache(sandbox: &Sandbox, config: &Config, registry: &mut Registry) {
    if let Some(dir) = &config.cache_dir {
        sandbox.prune_cache(dir, &registry.serving_hashes());
        if !config.sources.is_empty() {
            let puller = registry.puller(config);
            puller.prune(&registry.serving_blobs());
        }
    }
}

fn log_problems(problems: &[FilterProblem]) {
    for p in problems {
        tracing::error!("{p}");
    }
}

/// Names of every filter `config`'s routes use.
fn referenced_filters(config: &Config) -> BTreeSet<String> {
    config
        .routes
        .iter()
        .flat_map(|r| r.filters.iter().map(|f| f.name.clone()))
        .collect()
}

/// Warn about `.wasm` files in the filters directory that no route names (all of them, or
/// those among `only`): they are never loaded, and a name like cargo's `my_filter.wasm` for a
/// route's `my-filter` is an easy mistake to miss.
fn warn_unnamed_files(config: &Config, only: Option<&[String]>) {
    let referenced = referenced_filters(config);
    let stems: Vec<String> = match only {
        Some(names) => names.to_vec(),
        None => match std::fs::read_dir(&config.filters_dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
                .collect(),
            Err(_) => return,
        },
    };
    for stem in stems.iter().filter(|s| !referenced.contains(*s)) {
        let file = filter_path(&config.filters_dir, stem);
        let dashed = stem.replace('_', "-");
        if dashed != *stem && referenced.contains(&dashed) {
            tracing::warn!(
                file = %file.display(),
                "{stem}.wasm looks like cargo's output name for the filter {dashed:?}, which a \
                 route names: rename it to {dashed}.wasm"
            );
        } else {
            tracing::warn!(
                file = %file.display(),
                "no route names the filter {stem:?}; it is not loaded (routes name a filter by \
                 its file stem)"
            );
        }
    }
}

/// Where the filter called `name` lives.
fn filter_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.wasm"))
}

/// Validate the config at `path` and every filter it references, each with the config of every
/// route that uses it; the filters come from `filters_dir` when given, else from the config's.
pub async fn check(
    path: &Path,
    filters_dir: Option<&Path>,
) -> Result<CheckReport, config::ConfigError> {
    let (mut config, diagnostics) = Config::load_checked(path)?;
    if let Some(dir) = filters_dir {
        config.filters_dir = dir.to_path_buf();
    }
    let sandbox = Sandbox::new().map_err(|e| config::ConfigError {
        file: path.display().to_string(),
        diagnostics: vec![config::Diagnostic {
            line: 0,
            column: 0,
            message: format!("cannot start the wasm runtime: {e:#}"),
        }],
    })?;
    let mut registry = Registry::load(&sandbox, &config, None).await;
    let (_, filter_problems) =
        Snapshot::build(&config, &mut registry, &mut EndpointRegistry::default()).await;
    // One list in file order: the config's own problems and its filters'.
    let mut problems: Vec<(config::Place, String)> = diagnostics
        .iter()
        .map(|d| {
            (
                config::Place {
                    line: d.line,
                    column: d.column,
                },
                d.to_string(),
            )
        })
        .chain(filter_problems.iter().map(|p| (p.place, p.to_string())))
        .collect();
    if let Some(tls) = &config.tls
        && let Err(certificates) = crate::tls::load(&tls.certificates)
    {
        problems.extend(
            certificates
                .into_iter()
                .map(|p| (p.place, format!("{}: tls: {}", p.place, p.reason))),
        );
    }
    problems.sort_by_key(|(place, _)| (place.line, place.column));
    Ok(CheckReport {
        routes: config.routes.len(),
        filters: registry.len(),
        problems: problems
            .into_iter()
            .map(|(_, p)| format!("{}:{p}", path.display()))
            .collect(),
    })
}

/// What `wasmgate check` found in a config it could read.
#[derive(Debug)]
pub struct CheckReport {
    /// Routes in the config.
    pub routes: usize,
    /// Filters the routes reference.
    pub filters: usize,
    /// One line per problem, in file order: the config's (`file:line:col: reason`) and its
    /// filters' (`file:line:col: route ..: filter ..: reason`).
    pub problems: Vec<String>,
}
