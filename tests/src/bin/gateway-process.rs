//! A gateway in a process of its own, for tests that need two gateways that share nothing but
//! an external store: `gateway-process CONFIG` serves CONFIG and prints `listening ADDR` once
//! it does; it stops when killed.

use wasmgate::{Config, RunningGateway};

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: gateway-process CONFIG");
    let config = Config::load(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
    let running = RunningGateway::start(config, None)
        .await
        .expect("gateway starts");
    println!("listening {}", running.addr);
    std::future::pending::<()>().await;
}
