//! `bench-load`: an open-loop load generator for latency at a fixed rate.
//!
//! wrk measures the most a server can do; at that point every latency is queueing. This sends
//! requests on a fixed schedule instead (`--rate` per second, spread over `--connections`
//! keep-alive connections) and measures each from the moment it was *due*, not when it was
//! sent, so a stalled server is charged for the requests it delayed (no coordinated omission).
//! Prints one JSON line: requests, errors, achieved rate, p50/p90/p99/max in microseconds.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Target, `http://host:port/path`.
    url: String,
    /// Requests per second, in total.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// Keep-alive connections the rate is spread over.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Extra request header, `name: value`; repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// POST this file as the body (GET when absent).
    #[arg(long)]
    body_file: Option<std::path::PathBuf>,
}

// One thread is plenty for a moderate rate and leaves the cores to the servers measured.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri: http::Uri = args.url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("the url needs host:port"))?
        .to_string();
    let body = match &args.body_file {
        Some(path) => Some(Bytes::from(std::fs::read(path)?)),
        None => None,
    };
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(args.duration);
    // Each connection sends every `interval`, offset so the total is evenly spread.
    let interval = Duration::from_secs_f64(f64::from(args.connections) / f64::from(args.rate));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let offset = interval.mul_f64(f64::from(c) / f64::from(args.connections));
        let (authority, uri, body, args) =
            (authority.clone(), uri.clone(), body.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            connection(
                &authority,
                &uri,
                body,
                &args.headers,
                start + offset,
                interval,
                end,
            )
            .await
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    println!(
        "{{\"requests\":{},\"errors\":{},\"rate\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        latencies.len(),
        errors,
        latencies.len() as f64 / args.duration as f64,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies.last().copied().unwrap_or(0),
    );
    Ok(())
}

/// One keep-alive connection on its schedule; latencies in microseconds and the error count.
async fn connection(
    authority: &str,
    uri: &http::Uri,
    body: Option<Bytes>,
    headers: &[String],
    mut due: Instant,
    interval: Duration,
    end: Instant,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut sender = None;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        if sender.is_none() {
            sender = connect(authority).await.ok();
        }
        let Some(s) = sender.as_mut() else {
            errors += 1;
            due += interval;
            continue;
        };
        let mut req = http::Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", authority);
        for h in headers {
            if let Some((name, value)) = h.split_once(':') {
                req = req.header(name.trim(), value.trim());
            }
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(body.clone().unwrap_or_default()))
            .expect("valid request");
        let ok = match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => false,
        };
        if ok {
            latencies.push(due.elapsed().as_micros() as u64);
        } else {
            errors += 1;
            sender = None;
        }
        due += interval;
    }
    (latencies, errors)
}

async fn connect(
    authority: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}
