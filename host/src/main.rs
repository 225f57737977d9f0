//! The `wasmgate` command.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use wasmgate::{Config, RunningGateway};

mod cli;
mod memory;

/// glibc's allocator cost 7% of the proxy's CPU under load (perf, bench/README.md); mimalloc's
/// thread-local free lists take most of that back.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `wasmgate --version`: the gateway's version and the filter contract it speaks.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (loads filters built for wasmgate:filter@0.3.0)"
);

#[derive(Parser)]
#[command(
    name = "wasmgate",
    version = VERSION,
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
        /// Also scaffold a filter crate of this name in DIR/NAME (as `wasmgate filter new`)
        /// and run it on the starter route.
        #[arg(long, value_name = "NAME")]
        filter: Option<String>,
        /// With --filter: depend on the SDK in this checkout's `sdk/` directory (see
        /// `wasmgate filter new --help`).
        #[arg(long, value_name = "DIR", requires = "filter")]
        sdk_path: Option<PathBuf>,
        /// The address the gateway listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// The admin endpoint's address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// The service the starter route proxies to.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        upstream: String,
    },
    /// Write and build filters.
    #[command(subcommand)]
    Filter(FilterCommand),
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

#[derive(Subcommand)]
enum FilterCommand {
    /// Create a standalone filter crate NAME (in ./NAME unless --dir says where) that builds,
    /// tests and runs as is: both phases, a config, unit tests, sandbox tests, a README.
    New {
        /// The filter's name: its crate name and the name routes give it.
        name: String,
        /// Where the crate goes (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on the SDK (and the test kit beside it) in this wasmgate checkout's `sdk/`
        /// directory instead of on the copies this binary carries.
        #[arg(long, value_name = "DIR", conflicts_with = "crates_io")]
        sdk_path: Option<PathBuf>,
        /// Depend on wasmgate-sdk and wasmgate-test as published on crates.io instead of on
        /// the copies this binary carries.
        #[arg(long)]
        crates_io: bool,
    },
    /// Build a filter crate for wasm32-wasip2 (release), check that the gateway would load the
    /// component, and with --install copy it into a filters directory as `<crate name>.wasm`.
    Build {
        /// The crate's Cargo.toml (default: the crate in the current directory).
        #[arg(long)]
        manifest_path: Option<PathBuf>,
        /// A gateway's filters directory; a gateway serving it loads the new version at once.
        #[arg(long, value_name = "DIR")]
        install: Option<PathBuf>,
    },
    /// Build a filter crate (as `build` does, or take a built component with --file) and push
    /// it to an OCI registry under a tag; prints the digest that pins it
    /// (`source = "oci://REGISTRY/REPOSITORY@sha256:..."` in a route's filter).
    Push {
        /// Where: `oci://REGISTRY/REPOSITORY:TAG`.
        target: String,
        /// The crate's Cargo.toml (default: the crate in the current directory).
        #[arg(long, conflicts_with = "file")]
        manifest_path: Option<PathBuf>,
        /// Push this built component instead of building a crate (it is checked first).
        #[arg(long, value_name = "WASM")]
        file: Option<PathBuf>,
        /// Speak plain HTTP to the registry (a registry on localhost for tests), not HTTPS.
        #[arg(long)]
        plain_http: bool,
        /// A Docker-style config.json with the registry's credentials (default:
        /// $DOCKER_CONFIG/config.json or ~/.docker/config.json; WASMGATE_REGISTRY_USERNAME and
        /// WASMGATE_REGISTRY_PASSWORD win).
        #[arg(long, value_name = "FILE")]
        auth_file: Option<PathBuf>,
    },
    /// The bundled filters (auth-jwt, rate-limit, cache, ...), which this binary carries
    /// built: without NAME, list them; with NAME, show its README (what it does, its config);
    /// with --install, copy it into a filters directory as `<NAME>.wasm`.
    Add {
        /// The bundled filter's name.
        name: Option<String>,
        /// A gateway's filters directory; a gateway serving it loads the filter at once.
        #[arg(long, value_name = "DIR", requires = "name")]
        install: Option<PathBuf>,
    },
    /// The sandbox a filter crate's `cargo test` runs its component in (`wasmgate-test`
    /// starts it): JSON commands on stdin, replies on stdout.
    #[command(hide = true)]
    TestServer,
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
    if let Command::Filter(FilterCommand::TestServer) = cli.command {
        // Blocking, on the test kit's own runtime.
        return match cli::test_server::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(memory::on_park)
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
            Command::Init {
                dir,
                filter,
                sdk_path,
                listen,
                admin,
                upstream,
            } => init(
                &dir,
                &Starter {
                    listen,
                    admin,
                    upstream,
                    filter,
                    sdk_path,
                },
            ),
            Command::Filter(FilterCommand::New {
                name,
                dir,
                sdk_path,
                crates_io,
            }) => filter_new(&name, dir, sdk(sdk_path.as_deref(), crates_io)),
            Command::Filter(FilterCommand::Build {
                manifest_path,
                install,
            }) => filter_build(manifest_path.as_deref(), install.as_deref()).await,
            Command::Filter(FilterCommand::Push {
                target,
                manifest_path,
                file,
                plain_http,
                auth_file,
            }) => {
                filter_push(
                    &target,
                    manifest_path.as_deref(),
                    file.as_deref(),
                    plain_http,
                    auth_file,
                )
                .await
            }
            Command::Filter(FilterCommand::Add { name, install }) => {
                filter_add(name.as_deref(), install.as_deref())
            }
            Command::Filter(FilterCommand::TestServer) => unreachable!("run before the runtime"),
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

/// What `wasmgate init` writes into the starter config.
struct Starter {
    listen: String,
    admin: String,
    upstream: String,
    filter: Option<String>,
    sdk_path: Option<PathBuf>,
}

fn init(dir: &Path, starter: &Starter) -> ExitCode {
    let config = dir.join("gateway.toml");
    if config.exists() {
        eprintln!(
            "error: {} exists; wasmgate init never overwrites a config",
            config.display()
        );
        return ExitCode::FAILURE;
    }
    let chain = match &starter.filter {
        Some(name) => format!(
            "# The filter chain, in order: filters/{name}.wasm, built from ./{name}/ with\n\
             # `wasmgate filter build --manifest-path {name}/Cargo.toml --install filters`.\n\
             [[routes.filters]]\nname = \"{name}\"\nconfig = {{ greeting = \"hello\" }}\n"
        ),
        None => "# The filter chain, in order. To limit each client to 10 requests a second, install the\n\
                 # bundled rate-limit filter (from this directory: `wasmgate filter add rate-limit\n\
                 # --install filters`; `wasmgate filter add` lists the others) and uncomment:\n\
                 # [[routes.filters]]\n# name = \"rate-limit\"\n\
                 # config = { limits = [{ requests = 10, per = \"1s\" }] }\n"
            .to_string(),
    };
    let text = STARTER_CONFIG
        .replace("{{listen}}", &starter.listen)
        .replace("{{admin}}", &starter.admin)
        .replace("{{upstream}}", &starter.upstream)
        .replace("{{chain}}", &chain);
    let written =
        std::fs::create_dir_all(dir.join("filters")).and_then(|()| std::fs::write(&config, text));
    if let Err(e) = written {
        eprintln!("error: writing {}: {e}", config.display());
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {} and {}/",
        config.display(),
        dir.join("filters").display()
    );
    if let Some(name) = &starter.filter {
        let crate_dir = dir.join(name);
        let sdk = sdk(starter.sdk_path.as_deref(), false);
        if let Err(e) = cli::scaffold::new_filter(name, &crate_dir, sdk) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "wrote the filter crate {}/; next: wasmgate filter build --manifest-path {} --install {}",
            crate_dir.display(),
            crate_dir.join("Cargo.toml").display(),
            dir.join("filters").display()
        );
    }
    println!("serve it: wasmgate serve --config {}", config.display());
    ExitCode::SUCCESS
}

/// Where a new filter crate takes the SDK from.
fn sdk(sdk_path: Option<&Path>, crates_io: bool) -> cli::scaffold::Sdk<'_> {
    match (sdk_path, crates_io) {
        (Some(path), _) => cli::scaffold::Sdk::Checkout(path),
        (None, true) => cli::scaffold::Sdk::CratesIo,
        (None, false) => cli::scaffold::Sdk::Embedded,
    }
}

fn filter_new(name: &str, dir: Option<PathBuf>, sdk: cli::scaffold::Sdk<'_>) -> ExitCode {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match cli::scaffold::new_filter(name, &dir, sdk) {
        Ok(files) => {
            for file in files {
                println!("wrote {}", file.display());
            }
            println!(
                "next: cd {} && cargo test && wasmgate filter build --install GATEWAY/filters",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn filter_build(manifest_path: Option<&Path>, install: Option<&Path>) -> ExitCode {
    let built = match cli::build::build(manifest_path).await {
        Ok(built) => built,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for component in &built {
        println!(
            "built {} ({} KiB), implements {}",
            component.path.display(),
            component.bytes.div_ceil(1024),
            cli::build::contract()
        );
        if let Some(dir) = install {
            match cli::build::install(component, dir) {
                Ok(dest) => println!("installed {}", dest.display()),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

async fn filter_push(
    target: &str,
    manifest_path: Option<&Path>,
    file: Option<&Path>,
    plain_http: bool,
    auth_file: Option<PathBuf>,
) -> ExitCode {
    let target = match wasmgate::FilterSource::parse(target) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bytes = match file {
        Some(file) => cli::build::check_file(file).await,
        None => cli::build::build(manifest_path)
            .await
            .and_then(|built| match built.as_slice() {
                [one] => {
                    std::fs::read(&one.path).map_err(|e| format!("{}: {e}", one.path.display()))
                }
                many => Err(format!(
                    "the crate built {} components; push one with --file",
                    many.len()
                )),
            }),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = wasmgate::RegistryConfig {
        plain_http: if plain_http {
            vec![target.registry.clone()]
        } else {
            Vec::new()
        },
        auth_file,
        ..wasmgate::RegistryConfig::default()
    };
    let size = bytes.len();
    match wasmgate::push_filter(&settings, &target, bytes).await {
        Ok(pushed) => {
            println!(
                "pushed {} ({} KiB, component {}), implements {}",
                target.text,
                size.div_ceil(1024),
                pushed.component,
                cli::build::contract()
            );
            println!(
                "pin it in a route's filter: source = \"oci://{}/{}@{}\"",
                target.registry, target.repository, pushed.manifest
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn filter_add(name: Option<&str>, install: Option<&Path>) -> ExitCode {
    let bundled = cli::embedded::BUNDLED;
    if bundled.is_empty() {
        eprintln!(
            "error: this wasmgate was built without its bundled filters (its build lacked the \
             wasm32-wasip2 target); rebuild it after `rustup target add wasm32-wasip2`"
        );
        return ExitCode::FAILURE;
    }
    let Some(name) = name else {
        for filter in bundled {
            println!("{:<18} {}", filter.name, filter.summary());
        }
        println!("\nwasmgate filter add NAME shows one's config; --install DIR installs it");
        return ExitCode::SUCCESS;
    };
    let Some(filter) = bundled.iter().find(|f| f.name == name) else {
        let names: Vec<_> = bundled.iter().map(|f| f.name).collect();
        eprintln!(
            "error: no bundled filter named {name:?}; there are: {}",
            names.join(", ")
        );
        return ExitCode::FAILURE;
    };
    let Some(dir) = install else {
        print!("{}", filter.readme);
        return ExitCode::SUCCESS;
    };
    match cli::build::install_bytes(filter.name, filter.wasm, dir) {
        Ok(dest) => {
            println!(
                "installed {} ({} KiB)",
                dest.display(),
                filter.wasm.len().div_ceil(1024)
            );
            if let Some(example) = filter.example() {
                println!("run it on a route, for example:\n\n{example}");
            }
            println!("every option: wasmgate filter add {}", filter.name);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
    memory::start_purger();
    wasmgate::set_worker_park_hook(memory::on_park);
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_contract_the_sandbox_speaks() {
        let contract = format!("wasmgate:filter@{})", wasmgate_sandbox::WIT_VERSION);
        assert!(super::VERSION.ends_with(&contract), "{}", super::VERSION);
    }
}
