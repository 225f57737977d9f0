//! `cargo run -p wasmgate-demo`: the demo services on 127.0.0.1:3001, :3002 and :3003 (gRPC), and wasmgate on
//! 127.0.0.1:8080 serving `examples/demo/gateway.toml` with the filters built from this repo.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context as _;
use wasmgate::{Config, RunningGateway};
use wasmgate_demo::{DemoService, start};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Log lines go to stdout with the banner, coloured only on a terminal (as `wasmgate serve`'s).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let demo_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    wasmgate_demo::demo_certificate(&demo_dir.join("certs"))
        .context("making the demo's HTTPS certificate")?;
    wasmgate_demo::catalog_descriptors(&demo_dir.join("proto/catalog.pb"))
        .context("compiling the demo's catalog descriptors")?;
    let config_path = demo_dir.join("gateway.toml");
    let mut config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.filters_dir = wasmgate_artifacts::FILTERS_DIR.into();

    start(DemoService::Users, "127.0.0.1:3001".parse()?)
        .await
        .context("starting the demo users service on 127.0.0.1:3001")?;
    start(DemoService::Orders, "127.0.0.1:3002".parse()?)
        .await
        .context("starting the demo orders service on 127.0.0.1:3002")?;
    wasmgate_demo::start_catalog("127.0.0.1:3003".parse()?)
        .await
        .context("starting the demo gRPC catalog service on 127.0.0.1:3003")?;

    let running = RunningGateway::start(config, None).await?;
    println!(
        "wasmgate demo on http://{} (config {})",
        running.addr,
        config_path.display()
    );
    if let Some(https) = running.tls_addr {
        println!("and on https://{https} (HTTP/1.1 and HTTP/2; CA in examples/demo/certs/ca.pem)");
    }
    if let Some(admin) = running.admin_addr {
        println!(
            "admin endpoint on http://{admin} (try /routes, /filters, /services, /metrics); access log on stdout"
        );
    }
    println!("try:");
    println!("  curl -s localhost:8080/api/users/1");
    println!("  curl -si localhost:8080/api/users/1/orders");
    println!("  curl -s --cacert examples/demo/certs/ca.pem https://localhost:8443/api/users/1");
    println!("  curl -s -H 'x-api-key: demo' localhost:8080/api/users/2/orders");
    println!(
        "  curl -s -H \"authorization: Bearer $TOKEN\" localhost:8080/api/profile/1   (TOKEN: see the README)"
    );
    println!(
        "  curl -s -X POST -d '{{\"userId\":\"3\",\"name\":\"Grace Hopper\"}}' localhost:8080/api/users"
    );
    println!("  curl -s localhost:8080/api/products/1   (a gRPC service, called with JSON)");
    println!("Ctrl-C to stop.");
    let _ = tokio::signal::ctrl_c().await;
    running.stop().await;
    Ok(())
}
