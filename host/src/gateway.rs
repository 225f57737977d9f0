//! A running gateway, assembled: the control plane (filters, reloads), the proxy over its
//! snapshots, the serving threads, the admin endpoint and the file watcher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::config::CertificateFiles;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::control::{self, Control};
use crate::metrics::Metrics;
use crate::otel::Tracing;
use crate::proxy::Proxy;
use crate::server::Workers;
use crate::tls;

/// A running gateway: its listeners, the admin endpoint and the file watcher. Dropping it stops
/// the serving threads; [`RunningGateway::stop`] also waits for them to drain.
pub struct RunningGateway {
    /// The address the gateway serves on.
    pub addr: SocketAddr,
    /// The HTTPS address, when `[tls]` is configured.
    pub tls_addr: Option<SocketAddr>,
    /// The admin endpoint's address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The metrics-only listener's address, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    control: Arc<Control>,
    workers: Workers,
    background: Tasks,
    tracing: Option<Arc<Tracing>>,
}

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
        let admin_listener = bind(admin.listen, "the admin endpoint").await?;
        let metrics_listener = bind(config.metrics.listen, "the metrics listener").await?;
        // The admin and metrics listeners answer from here on: `/health` at once, `/ready` with
        // 503 until the config and its filters are loaded (compiling many filters can take a
        // while, and a probe that hangs counts as a failure).
        let metrics = Metrics::new(config.metrics.enabled);
        let started = Arc::new(OnceLock::new());
        let mut background = Tasks::default();
        let mut serve = |listener: Option<tokio::net::TcpListener>, serves| {
            let Some(listener) = listener else {
                return anyhow::Ok(None);
            };
            let addr = listener.local_addr()?;
            let (started, metrics) = (started.clone(), metrics.clone());
            background.push(control::admin::spawn(started, metrics, listener, serves));
            Ok(Some(addr))
        };
        let admin_addr = serve(
            admin_listener,
            control::admin::Serves::Admin {
                token: admin.token,
                protect_reads: admin.protect_reads,
            },
        )?;
        let metrics_addr = serve(metrics_listener, control::admin::Serves::MetricsOnly)?;
        let https = match &config.tls {
            Some(tls) => {
                let settings = tls::load(&tls.certificates).map_err(|problems| {
                    let lines: Vec<String> = problems
                        .iter()
                        .map(|p| format!("{}: {}", p.place, p.reason))
                        .collect();
                    anyhow::anyhow!("unusable TLS certificates:\n{}", lines.join("\n"))
                })?;
                let acceptor: tls::Acceptor = Arc::new(ArcSwap::new(settings));
                Some((tls.listen, tls.certificates.clone(), acceptor))
            }
            None => None,
        };
        let access_log = AccessLog::start(&config.access_log, metrics.clone())
            .with_context(|| format!("opening the access log {}", config.access_log.path))?;
        if let Some(log) = &access_log {
            // Caught from here on, before the gateway serves a request.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangups) => {
                    background.push(tokio::spawn(reopen_on_sighup(hangups, log.clone())))
                }
                Err(e) => tracing::warn!(
                    "SIGHUP cannot be caught, so it will not reopen the access log: {e}"
                ),
            }
        }
        let tracing = Tracing::start(&config.tracing).context("starting trace export")?;
        let control = Arc::new(Control::start(config, config_path.clone(), metrics.clone()).await?);
        let _ = started.set(control.clone());
        let proxy = Arc::new(Proxy::new(
            control.snapshots(),
            metrics.clone(),
            access_log,
            tracing.clone(),
        ));
        let https = https.map(|(listen, files, acceptor)| {
            background.push(tokio::spawn(reload_certificates(
                control.clone(),
                files,
                acceptor.clone(),
            )));
            (listen, acceptor)
        });
        let workers = Workers::start(listen, https, server, proxy)?;
        background.push(control::watch::spawn(
            control.clone(),
            filters_dir,
            config_path,
        )?);
        background.push(tokio::spawn(poll_registries(control.clone())));
        tracing::info!(listen = %workers.addr, https = ?workers.tls_addr, admin = ?admin_addr, metrics = ?metrics_addr, workers = workers.count, "wasmgate serving");
        Ok(RunningGateway {
            addr: workers.addr,
            tls_addr: workers.tls_addr,
            admin_addr,
            metrics_addr,
            control,
            workers,
            background,
            tracing,
        })
    }

    /// Say "draining" on `/ready`, stop accepting, wait for in-flight requests (up to 30 s),
    /// stop the admin endpoint and the watcher.
    pub async fn stop(self) {
        self.control.start_draining();
        self.workers.stop().await;
        drop(self.background);
        if let Some(tracing) = self.tracing {
            // Spans still queued are sent (the export blocks up to its timeout).
            let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
        }
    }
}

/// Bind `addr`, when there is one, naming `what` if it cannot be bound.
async fn bind(
    addr: Option<SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match addr {
        Some(addr) => Ok(Some(
            control::admin::bind(addr)
                .await
                .with_context(|| format!("binding {what} {addr}"))?,
        )),
        None => Ok(None),
    }
}

/// The gateway's background tasks (admin and metrics listeners, the watcher, reloads), aborted
/// when dropped: when the gateway stops, and when it fails to start after some were spawned.
#[derive(Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    fn push(&mut self, task: tokio::task::JoinHandle<()>) {
        self.0.push(task);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// SIGHUP reopens the access log file (after the file was rotated away).
async fn reopen_on_sighup(mut hangups: tokio::signal::unix::Signal, log: Arc<AccessLog>) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reopening the access log");
        log.reopen();
    }
}

/// Re-read the certificate files whenever one changes on disk or a config reload lists others
/// (checked every [`tls::POLL`]); new connections get the new certificates, and files that
/// cannot be used are logged while the previous certificates keep serving.
async fn reload_certificates(
    control: Arc<Control>,
    mut files: Vec<CertificateFiles>,
    acceptor: tls::Acceptor,
) {
    let mut seen = tls::stamp(&files);
    loop {
        tokio::time::sleep(tls::POLL).await;
        // `[tls]` removed by a reload keeps the listener, and its certificates, until a restart.
        if let Some(listed) = control.certificate_files().await
            && listed != files
        {
            files = listed;
            seen.clear();
        }
        let now = tls::stamp(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match tls::load(&files) {
            Ok(settings) => {
                acceptor.store(settings);
                tracing::info!("TLS certificates reloaded");
            }
            Err(problems) => {
                for p in problems {
                    tracing::warn!(
                        "new TLS certificate rejected, the previous one keeps serving: {}",
                        p.reason
                    );
                }
            }
        }
    }
}

/// Check filters from registries every `[registry] poll_interval` (read again each time, as a
/// reload may change it): a moved tag is taken into service like a dropped file.
async fn poll_registries(control: Arc<Control>) {
    loop {
        tokio::time::sleep(control.poll_interval().await).await;
        control.poll_sources().await;
    }
}
