//! The running gateway: the current snapshot of routes, services and loaded filters (swapped
//! atomically as a whole), the pooled upstream client, and the accept loop.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::breaker::Breaker;
use crate::capabilities::FilterCache;
use crate::config::{self, Config, FailurePolicy, RouteConfig};
use crate::framing::{FramingGuard, Guarding};
use crate::registry::Registry;
use crate::runtime::{InstancePool, Limits, LoadedFilter, Needs, Runtime};
use crate::upstream::Service;

/// One filter of a route's chain, resolved against the loaded filters.
pub enum ChainEntry {
    Ready {
        filter: Arc<LoadedFilter>,
        /// Instances of this binding.
        instances: Arc<InstancePool>,
        /// What this route's config of the filter needs.
        needs: Needs,
        /// Services the route grants this filter.
        services: Arc<[String]>,
        cache: Arc<FilterCache>,
        limits: Limits,
        on_failure: FailurePolicy,
        /// Trips when this binding keeps trapping; new per snapshot.
        breaker: Arc<Breaker>,
    },
    /// The filter is not loaded or rejected this route's config: requests get 503.
    Unavailable { name: String, reason: String },
}

/// A route with its filter chain resolved.
pub struct Route {
    pub config: RouteConfig,
    pub chain: Vec<ChainEntry>,
    pub needs_request_body: bool,
    pub needs_response_body: bool,
}

impl Route {
    /// Largest body buffered for this route's filters: its own `max_body_bytes`, else the
    /// gateway's.
    pub fn body_limit(&self, limits: &config::Limits) -> u64 {
        self.config.max_body_bytes.unwrap_or(limits.max_body_bytes)
    }
}

/// Everything a request needs, consistent for its whole life.
pub struct Snapshot {
    pub routes: Vec<Route>,
    pub services: HashMap<String, Service>,
    pub timeouts: config::Timeouts,
    pub limits: config::Limits,
    /// `server.max_request_body_bytes`.
    pub max_request_body: Option<u64>,
}

/// A filter that could not be used, and where the config references it.
#[derive(Debug, Clone)]
pub struct FilterProblem {
    pub route: String,
    pub filter: String,
    pub place: config::Place,
    pub reason: String,
}

impl std::fmt::Display for FilterProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: route {:?}: filter {:?}: {}",
            self.place, self.route, self.filter, self.reason
        )
    }
}

fn log_problems(problems: &[FilterProblem]) {
    for p in problems {
        tracing::error!("{p}");
    }
}

/// Names of every filter `config`'s routes use.
pub fn referenced_filters(config: &Config) -> BTreeSet<String> {
    config
        .routes
        .iter()
        .flat_map(|r| r.filters.iter().map(|f| f.name.clone()))
        .collect()
}

/// Where the filter called `name` lives.
pub fn filter_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.wasm"))
}

impl Snapshot {
    /// Resolve `config`'s routes against the serving filters, checking each route's filter
    /// config with the filter itself. Problems make the affected routes answer 503 and are
    /// returned.
    pub async fn build(config: &Config, registry: &mut Registry) -> (Snapshot, Vec<FilterProblem>) {
        let mut problems = Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            let mut chain = Vec::with_capacity(rc.filters.len());
            for f in &rc.filters {
                let outcome = match registry.resolve(&f.name) {
                    Ok(filter) => match filter.check_config(&f.config_json).await {
                        Ok(needs) => Ok((filter, needs)),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                chain.push(match outcome {
                    Ok((filter, needs)) => ChainEntry::Ready {
                        instances: Arc::new(InstancePool::new(
                            filter.clone(),
                            f.config_json.clone(),
                            &needs,
                            &f.limits,
                        )),
                        filter,
                        needs,
                        services: f.services.clone().into(),
                        cache: registry.cache(&f.name),
                        limits: f.limits,
                        on_failure: f.on_failure,
                        breaker: Arc::default(),
                    },
                    Err(reason) => {
                        problems.push(FilterProblem {
                            route: rc.name.clone(),
                            filter: f.name.clone(),
                            place: f.place,
                            reason: reason.clone(),
                        });
                        ChainEntry::Unavailable {
                            name: f.name.clone(),
                            reason,
                        }
                    }
                });
            }
            let needs = |pick: fn(&Needs) -> bool| {
                chain.iter().any(|e| match e {
                    ChainEntry::Ready { needs, .. } => pick(needs),
                    ChainEntry::Unavailable { .. } => false,
                })
            };
            let needs_request_body = needs(Needs::request_body);
            let needs_response_body = needs(Needs::response_body);
            routes.push(Route {
                config: rc.clone(),
                chain,
                needs_request_body,
                needs_response_body,
            });
        }
        let services = config
            .services
            .iter()
            .map(|s| (s.name.clone(), Service::new(s)))
            .collect();
        let snapshot = Snapshot {
            routes,
            services,
            timeouts: config.timeouts,
            limits: config.limits,
            max_request_body: config.server.max_request_body_bytes,
        };
        (snapshot, problems)
    }
}

/// The gateway's shared state.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    pub runtime: Runtime,
    /// Everything reloads change, behind one lock so reloads never interleave. Never taken on
    /// the request path.
    state: tokio::sync::Mutex<ReloadState>,
    id_prefix: u32,
    id_counter: AtomicU64,
}

/// What reloads work from.
pub struct ReloadState {
    /// The config serving now.
    pub config: Config,
    /// The file it came from, when it came from one.
    pub config_path: Option<PathBuf>,
    pub registry: Registry,
    pub config_loaded_at: SystemTime,
    /// The last config reload that was rejected, if it came after the serving config.
    pub config_rejected: Option<(SystemTime, Vec<String>)>,
}

impl Gateway {
    /// Load `config`'s filters and build the first snapshot. Filter problems are logged and
    /// leave the affected routes answering 503.
    pub async fn new(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Arc<Gateway>> {
        let runtime = Runtime::new()?;
        let mut registry = Registry::load(&runtime, &config).await;
        let (snapshot, problems) = Snapshot::build(&config, &mut registry).await;
        log_problems(&problems);
        Ok(Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            runtime,
            state: tokio::sync::Mutex::new(ReloadState {
                config,
                config_path,
                registry,
                config_loaded_at: SystemTime::now(),
                config_rejected: None,
            }),
            id_prefix: random_u32(),
            id_counter: AtomicU64::new(0),
        }))
    }

    /// Lock the reload state (for the admin endpoint and reloads).
    pub async fn state(&self) -> tokio::sync::MutexGuard<'_, ReloadState> {
        self.state.lock().await
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
                return Err(errors);
            }
        };
        let old = &state.config;
        if new.listen != old.listen {
            tracing::warn!(old = %old.listen, new = %new.listen, "listen address changed: restart wasmgate to apply it");
        }
        if new.admin != old.admin {
            tracing::warn!("admin listener changed: restart wasmgate to apply it");
        }
        if new.server != old.server {
            tracing::warn!("[server] settings changed: restart wasmgate to apply them");
        }
        let dir_changed = new.filters_dir != old.filters_dir || new.cache_dir != old.cache_dir;
        let referenced = referenced_filters(&new);
        let state = &mut *state;
        for name in &referenced {
            if dir_changed || !state.registry.slots.contains_key(name) {
                state.registry.refresh(&self.runtime, &new, name).await;
            }
        }
        state.registry.retain(&referenced);
        self.rebuild(&new, &mut state.registry).await;
        tracing::info!(file = %path.display(), routes = new.routes.len(), "config reloaded");
        state.config = new;
        state.config_loaded_at = SystemTime::now();
        state.config_rejected = None;
        Ok(())
    }

    /// Re-read the named filters (all referenced ones when `None`) and switch routes to any
    /// new version that loads. Returns the names whose serving version changed.
    pub async fn reload_filters(&self, names: Option<&[String]>) -> Vec<String> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        let referenced = referenced_filters(&state.config);
        let wanted: Vec<String> = match names {
            Some(names) => names
                .iter()
                .filter(|n| referenced.contains(*n))
                .cloned()
                .collect(),
            None => referenced.into_iter().collect(),
        };
        let mut changed = Vec::new();
        for name in wanted {
            if state
                .registry
                .refresh(&self.runtime, &state.config, &name)
                .await
            {
                changed.push(name);
            }
        }
        if !changed.is_empty() {
            self.rebuild(&state.config, &mut state.registry).await;
        }
        changed
    }

    /// Build a snapshot of `config` over `registry`, log its filter problems, and serve it.
    async fn rebuild(&self, config: &Config, registry: &mut Registry) {
        let (snapshot, problems) = Snapshot::build(config, registry).await;
        log_problems(&problems);
        self.install(snapshot);
    }

    /// The current snapshot; a request keeps the one it started with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Switch every new request to `snapshot`.
    pub fn install(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    pub(crate) fn next_request_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{n:08x}", self.id_prefix)
    }

    /// Accept connections on `listener` until `shutdown` resolves, then stop accepting and give
    /// in-flight requests up to `drain` to finish. `connections` is shared by every listener.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        server: config::Server,
        connections: Arc<tokio::sync::Semaphore>,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // hyper's timer runs from idle to a complete head; the guard times the head itself.
            .header_read_timeout(server.idle_timeout)
            .max_buf_size(server.max_header_bytes)
            .max_headers(server.max_headers);
        let guarding = Guarding {
            max_head_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            head_timeout: server.header_read_timeout,
        };
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            // Accept, then wait for a connection slot before serving: with one listener per
            // worker, a slot taken before accepting could sit on a listener the kernel sends no
            // connection to while another listener's connections wait.
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => permit.expect("never closed"),
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, client).await) }
            });
            let stream = FramingGuard::new(stream, client, guarding);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%client, "connection ended: {e}");
                }
                drop(permit);
            });
        }
        drop(listener);
        tracing::info!("stopped accepting; draining in-flight requests");
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    }
}

/// A running gateway: its listeners, the admin endpoint and the file watcher.
pub struct RunningGateway {
    pub addr: SocketAddr,
    /// The admin endpoint's address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    /// Tells the serving threads to stop; dropping it does too.
    stop: Option<tokio::sync::watch::Sender<bool>>,
    /// Resolves when every serving thread has drained and exited.
    task: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// One listening socket per serving thread on `addr`, all in one `SO_REUSEPORT` group so the
/// kernel spreads connections over them; port 0 picks one free port for all. Each is handed
/// over unregistered: its worker registers it with its own runtime.
fn bind_workers(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // SO_REUSEPORT would let a second gateway of the same user silently share the port;
        // a plain bind first makes "address in use" an error as usual.
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        addr = socket.local_addr()?;
        listeners.push(socket.listen(4096)?.into_std()?);
    }
    Ok(listeners)
}

/// How long in-flight requests get to finish after a stop.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl RunningGateway {
    /// Load `config`, bind its listeners (port 0 picks a free port), serve in the background,
    /// and watch the filters directory and, when given, the config file for changes.
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> anyhow::Result<RunningGateway> {
        let (listen, admin, server, filters_dir) = (
            config.listen,
            config.admin,
            config.server,
            config.filters_dir.clone(),
        );
        let workers = server.worker_count();
        let listeners =
            bind_workers(listen, workers).with_context(|| format!("binding {listen}"))?;
        let admin_listener = match admin.listen {
            Some(addr) => Some(
                crate::admin::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin endpoint {addr}"))?,
            ),
            None => None,
        };
        let gateway = Gateway::new(config, config_path.clone()).await?;
        let addr = listeners[0].local_addr()?;
        let mut background = Vec::new();
        let admin_addr = match admin_listener {
            Some(l) => {
                let addr = l.local_addr()?;
                background.push(crate::admin::spawn(gateway.clone(), l));
                Some(addr)
            }
            None => None,
        };
        background.push(crate::watch::spawn(
            gateway.clone(),
            filters_dir,
            config_path,
        )?);

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let connections = Arc::new(tokio::sync::Semaphore::new(server.max_connections));
        let mut exited = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (gateway, connections, mut stopped) =
                (gateway.clone(), connections.clone(), stopped.clone());
            let (done, exit) = tokio::sync::oneshot::channel::<()>();
            exited.push(exit);
            std::thread::Builder::new()
                .name(format!("wasmgate-worker-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a worker runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("a listener");
                        // Stop when told, or when the RunningGateway is dropped.
                        let shutdown = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        gateway
                            .serve(listener, server, connections, shutdown, DRAIN_TIMEOUT)
                            .await;
                    });
                    drop(done);
                })
                .context("starting a worker thread")?;
        }
        let task = tokio::spawn(async move {
            for exit in exited {
                let _ = exit.await;
            }
        });
        tracing::info!(listen = %addr, admin = ?admin_addr, workers, "wasmgate serving");
        Ok(RunningGateway {
            addr,
            admin_addr,
            gateway,
            stop: Some(stop),
            task,
            background,
        })
    }

    /// Stop accepting, wait for in-flight requests (up to [`DRAIN_TIMEOUT`]), stop the admin
    /// endpoint and the watcher.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        let _ = (&mut self.task).await;
        for task in &self.background {
            task.abort();
        }
    }
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
