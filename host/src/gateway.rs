//! A running gateway, assembled: the control plane (filters, reloads), the proxy over its
//! snapshots, the serving threads, the admin endpoint and the file watcher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::Config;
use crate::control::{self, Control};
use crate::proxy::Proxy;
use crate::server::Workers;

/// A running gateway: its listeners, the admin endpoint and the file watcher. Dropping it stops
/// the serving threads; [`RunningGateway::stop`] also waits for them to drain.
pub struct RunningGateway {
    /// The address the gateway serves on.
    pub addr: SocketAddr,
    /// The admin endpoint's address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    workers: Workers,
    background: Vec<tokio::task::JoinHandle<()>>,
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
        let admin_listener = match admin.listen {
            Some(addr) => Some(
                control::admin::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin endpoint {addr}"))?,
            ),
            None => None,
        };
        let control = Arc::new(Control::start(config, config_path.clone()).await?);
        let proxy = Arc::new(Proxy::new(control.snapshots()));
        let workers = Workers::start(listen, server, proxy)?;
        let mut background = Vec::new();
        let admin_addr = match admin_listener {
            Some(l) => {
                let addr = l.local_addr()?;
                background.push(control::admin::spawn(control.clone(), l));
                Some(addr)
            }
            None => None,
        };
        background.push(control::watch::spawn(
            control.clone(),
            filters_dir,
            config_path,
        )?);
        tracing::info!(listen = %workers.addr, admin = ?admin_addr, workers = workers.count, "wasmgate serving");
        Ok(RunningGateway {
            addr: workers.addr,
            admin_addr,
            workers,
            background,
        })
    }

    /// Stop accepting, wait for in-flight requests (up to 30 s), stop the admin endpoint and
    /// the watcher.
    pub async fn stop(self) {
        self.workers.stop().await;
        for task in &self.background {
            task.abort();
        }
    }
}
