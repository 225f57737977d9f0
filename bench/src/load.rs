//! `bench-load`: an open-loop load generator for latency at a fixed rate.
//!
//! wrk measures the most a server can do; at that point every latency is queueing. This sends
//! requests on a fixed schedule instead (`--rate` per second, spread over `--connections`
//! keep-alive connections) and measures each from the moment it was *due*, not when it was
//! sent, so a stalled server is charged for the requests it delayed (no coordinated omission).
//! The schedule is kept by a clock thread sleeping with the kernel's high-resolution timers
//! (tokio's timers have 1 ms granularity, which would add up to a millisecond to every figure).
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
    let mut tasks = Vec::new();
    let mut schedules = Vec::new();
    for _ in 0..args.connections {
        let (due, schedule) = tokio::sync::mpsc::unbounded_channel();
        schedules.push(due);
        let (authority, uri, body, args) =
            (authority.clone(), uri.clone(), body.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            connection(&authority, &uri, body, &args.headers, schedule).await
        }));
    }
    // Request k is due at start + k / rate, on connection k mod connections.
    let total = u64::from(args.rate) * args.duration;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    std::thread::Builder::new()
        .name("bench-load-clock".into())
        .spawn(move || {
            // Wake within microseconds of each due time, not the default 50 us slack.
            // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000) };
            let start = Instant::now() + Duration::from_millis(100);
            for k in 0..total {
                let due = start + interval.mul_f64(k as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let _ = schedules[(k % schedules.len() as u64) as usize].send(due);
            }
        })?;
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

/// One keep-alive connection sending each request when the clock says it is due (or as soon
/// as the previous one is answered, when it is late); latencies in microseconds and the error
/// count.
async fn connection(
    authority: &str,
    uri: &http::Uri,
    body: Option<Bytes>,
    headers: &[String],
    mut schedule: tokio::sync::mpsc::UnboundedReceiver<Instant>,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut sender = None;
    while let Some(due) = schedule.recv().await {
        if sender.is_none() {
            sender = connect(authority).await.ok();
        }
        let Some(s) = sender.as_mut() else {
            errors += 1;
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
