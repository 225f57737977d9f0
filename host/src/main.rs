//! The `wasmgate` command.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use wasmgate::{Config, RunningGateway};

/// glibc's allocator cost 7% of the proxy's CPU under load (perf, bench/README.md); mimalloc's
/// thread-local free lists take most of that back.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "An API gateway whose policy runs as WebAssembly filters"
)]
struct Cli {
    /// Log lines as text (coloured only on a terminal) or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The gateway config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Use this filters directory instead of the config's `filters_dir`.
        #[arg(long)]
        filters_dir: Option<PathBuf>,
    },
    /// Write a starter `gateway.toml` (with comments) and an empty `filters` directory into
    /// DIR (created if missing); an existing config is never overwritten.
    Init {
        /// Where the gateway's files go.
        dir: PathBuf,
    },
    /// Validate a config and every filter it references, then exit.
    Check {
        /// The gateway config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Check the filters in this directory instead of the config's `filters_dir` (a new
        /// filter, before it is copied in).
        #[arg(long)]
        filters_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Init { dir } => init(&dir),
            Command::Check {
                config,
                filters_dir,
            } => check(config, filters_dir).await,
            Command::Serve {
                config,
                filters_dir,
            } => match serve(config, filters_dir).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

/// The config `wasmgate init` writes.
const STARTER_CONFIG: &str = include_str!("starter/gateway.toml");

fn init(dir: &std::path::Path) -> ExitCode {
    let config = dir.join("gateway.toml");
    if config.exists() {
        eprintln!(
            "error: {} exists; wasmgate init never overwrites a config",
            config.display()
        );
        return ExitCode::FAILURE;
    }
    let written = std::fs::create_dir_all(dir.join("filters"))
        .and_then(|()| std::fs::write(&config, STARTER_CONFIG));
    if let Err(e) = written {
        eprintln!("error: writing {}: {e}", config.display());
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {} and {}/; next: wasmgate serve --config {}",
        config.display(),
        dir.join("filters").display(),
        config.display()
    );
    ExitCode::SUCCESS
}

async fn check(path: PathBuf, filters_dir: Option<PathBuf>) -> ExitCode {
    match wasmgate::check(&path, filters_dir.as_deref()).await {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Ok(report) if !report.problems.is_empty() => {
            for line in &report.problems {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
        Ok(report) => {
            println!(
                "{}: ok ({} routes, {} filters)",
                path.display(),
                report.routes,
                report.filters
            );
            ExitCode::SUCCESS
        }
    }
}

async fn serve(path: PathBuf, filters_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::load(&path).map_err(|e| anyhow::anyhow!("invalid config\n{e}"))?;
    if let Some(dir) = filters_dir {
        config.filters_dir = dir;
    }
    let running = RunningGateway::start(config, Some(path)).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
