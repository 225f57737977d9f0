//! The running gateway: the current snapshot of routes, services and loaded filters (swapped
//! atomically as a whole), the pooled upstream client, and the accept loop.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::{self, Config, RouteConfig};
use crate::runtime::{LoadedFilter, Runtime};
use crate::upstream::{self, HttpClient, Service};

/// Time a client has to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One filter of a route's chain, resolved against the loaded filters.
pub enum ChainEntry {
    Ready {
        filter: Arc<LoadedFilter>,
        config_json: String,
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

/// Everything a request needs, consistent for its whole life.
pub struct Snapshot {
    pub routes: Vec<Route>,
    pub services: HashMap<String, Service>,
    pub timeouts: config::Timeouts,
    pub limits: config::Limits,
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

/// Result of loading every filter a config references.
pub struct LoadedFilters {
    pub filters: BTreeMap<String, Result<Arc<LoadedFilter>, String>>,
}

impl LoadedFilters {
    /// Compile every filter `config` references from `config.filters_dir`.
    pub async fn load(runtime: &Runtime, config: &Config) -> LoadedFilters {
        let mut filters = BTreeMap::new();
        for route in &config.routes {
            for f in &route.filters {
                if filters.contains_key(&f.name) {
                    continue;
                }
                let path = filter_path(&config.filters_dir, &f.name);
                let loaded = match runtime.load(&f.name, &path).await {
                    Ok(loaded) => {
                        tracing::info!(
                            filter = %f.name,
                            path = %path.display(),
                            compile_ms = loaded.compile_time.as_millis() as u64,
                            needs_request_body = loaded.info.needs_request_body,
                            needs_response_body = loaded.info.needs_response_body,
                            "filter loaded"
                        );
                        Ok(Arc::new(loaded))
                    }
                    Err(e) => Err(format!("{e:#}")),
                };
                filters.insert(f.name.clone(), loaded);
            }
        }
        LoadedFilters { filters }
    }
}

/// Where the filter called `name` lives.
pub fn filter_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.wasm"))
}

impl Snapshot {
    /// Resolve `config`'s routes against `loaded`, checking each route's filter config with
    /// the filter itself. Problems make the affected routes answer 503 and are returned.
    pub async fn build(config: &Config, loaded: &LoadedFilters) -> (Snapshot, Vec<FilterProblem>) {
        let mut problems = Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            let mut chain = Vec::with_capacity(rc.filters.len());
            for f in &rc.filters {
                let outcome = match loaded.filters.get(&f.name) {
                    Some(Ok(filter)) => match filter.check_config(&f.config_json).await {
                        Ok(()) => Ok(filter.clone()),
                        Err(e) => Err(e),
                    },
                    Some(Err(e)) => Err(e.clone()),
                    None => Err("not loaded".to_string()),
                };
                chain.push(match outcome {
                    Ok(filter) => ChainEntry::Ready {
                        filter,
                        config_json: f.config_json.clone(),
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
            let needs = |pick: fn(&LoadedFilter) -> bool| {
                chain.iter().any(|e| match e {
                    ChainEntry::Ready { filter, .. } => pick(filter),
                    ChainEntry::Unavailable { .. } => false,
                })
            };
            let needs_request_body = needs(|f| f.info.needs_request_body);
            let needs_response_body = needs(|f| f.info.needs_response_body);
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
        };
        (snapshot, problems)
    }
}

/// The gateway's shared state.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    pub(crate) client: HttpClient,
    pub runtime: Runtime,
    id_prefix: u32,
    id_counter: AtomicU64,
}

impl Gateway {
    /// Load `config`'s filters and build the first snapshot. Filter problems are logged and
    /// leave the affected routes answering 503.
    pub async fn new(config: &Config) -> anyhow::Result<Arc<Gateway>> {
        let runtime = Runtime::new()?;
        let loaded = LoadedFilters::load(&runtime, config).await;
        let (snapshot, problems) = Snapshot::build(config, &loaded).await;
        for p in &problems {
            tracing::error!("{p}");
        }
        Ok(Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            client: upstream::client(config.timeouts.connect),
            runtime,
            id_prefix: random_u32(),
            id_counter: AtomicU64::new(0),
        }))
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
    /// in-flight requests up to `drain` to finish.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
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
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, client).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%client, "connection ended: {e}");
                }
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

/// A running gateway (for tests and embedding): its address and a way to stop it.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Bind `config.listen` (port 0 picks a free port) and serve in the background.
    pub async fn start(config: &Config) -> anyhow::Result<RunningGateway> {
        let gateway = Gateway::new(config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.clone().serve(
            listener,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        Ok(RunningGateway {
            addr,
            gateway,
            stop: Some(stop),
            task,
        })
    }

    /// Stop accepting and wait for in-flight requests (up to the drain timeout).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
