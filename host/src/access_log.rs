//! The access log: one record per request, written by a thread of its own so that a slow disk
//! never slows a request. Records wait in a bounded queue; when it is full they are dropped and
//! counted (`wasmgate_access_log_dropped_total`). JSON lines by default, or the combined log
//! format; to stdout or a file, which SIGHUP reopens (for log rotation).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::config::AccessLogConfig;
use crate::metrics::Metrics;

/// What is logged of one request.
#[derive(Debug, Clone)]
pub struct Record {
    pub time: SystemTime,
    pub request_id: Arc<str>,
    pub client: SocketAddr,
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub protocol: http::Version,
    /// The route's name; `None` when none matched.
    pub route: Option<Arc<str>>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Arrival to the last byte of the response.
    pub duration: Duration,
    /// Time in upstream tries (to their response headers), and in filter phase calls.
    pub upstream: Duration,
    pub filters: Duration,
    /// The endpoint of the last upstream try.
    pub endpoint: Option<Arc<str>>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// Fields the route's filters added (`fields` in JSON lines; not in the combined format).
    pub fields: Vec<(String, String)>,
}

/// The log's writer thread and the queue to it.
pub struct AccessLog {
    queue: SyncSender<Record>,
    reopen: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

enum Format {
    Json,
    Combined,
}

impl AccessLog {
    /// Open the log's output and start its writer; `None` when the log is off.
    pub fn start(
        config: &AccessLogConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<Arc<AccessLog>>> {
        if !config.enabled {
            return Ok(None);
        }
        let path = (config.path != "-").then(|| PathBuf::from(&config.path));
        let out = open(path.as_ref())?;
        let format = match config.format.as_str() {
            "combined" => Format::Combined,
            _ => Format::Json,
        };
        let (queue, records) = std::sync::mpsc::sync_channel(config.buffer);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("wasmgate-access-log".into())
            .spawn(move || write_records(records, out, path, format, flag))?;
        Ok(Some(Arc::new(AccessLog {
            queue,
            reopen,
            metrics,
        })))
    }

    /// Queue `record`; dropped and counted when the queue is full.
    pub fn log(&self, record: Record) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc();
            }
        }
    }

    /// Reopen the file before the next record (after a rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

fn open(path: Option<&PathBuf>) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match path {
        None => Box::new(std::io::stdout()),
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    })
}

/// How long the writer sleeps when the queue is empty. Polling rather than blocking on the
/// queue means a request never pays for waking the writer.
const IDLE: Duration = Duration::from_millis(20);

/// The writer thread: drain the queue, format, write, flush; sleep when it is empty.
fn write_records(
    records: Receiver<Record>,
    out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
    format: Format,
    reopen: Arc<AtomicBool>,
) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut line = Vec::with_capacity(512);
    loop {
        let first = match records.try_recv() {
            Ok(record) => record,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                std::thread::sleep(IDLE);
                continue;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        };
        let mut next = Some(first);
        while let Some(record) = next {
            if reopen.swap(false, Ordering::Relaxed) {
                let _ = out.flush();
                match open(path.as_ref()) {
                    Ok(fresh) => out = std::io::BufWriter::with_capacity(64 << 10, fresh),
                    Err(e) => tracing::error!("access log: cannot reopen {path:?}: {e}"),
                }
            }
            line.clear();
            match format {
                Format::Json => json(&record, &mut line),
                Format::Combined => combined(&record, &mut line),
            }
            line.push(b'\n');
            if let Err(e) = out.write_all(&line) {
                tracing::error!("access log: write failed: {e}");
            }
            next = records.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One JSON line, serialized straight from the record (no intermediate map).
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: String,
    request_id: &'a str,
    client: std::net::IpAddr,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    protocol: String,
    route: Option<&'a str>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_ms: f64,
    filters_ms: f64,
    upstream: Option<&'a str>,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
    #[serde(skip_serializing_if = "Fields::is_empty")]
    fields: Fields<'a>,
}

/// Fields filters added, as a JSON object.
struct Fields<'a>(&'a [(String, String)]);

impl Fields<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl serde::Serialize for Fields<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

fn json(r: &Record, line: &mut Vec<u8>) {
    let value = JsonLine {
        time: humantime::format_rfc3339_millis(r.time).to_string(),
        request_id: &r.request_id,
        client: r.client.ip(),
        method: r.method.as_str(),
        host: &r.host,
        path: &r.path,
        protocol: format!("{:?}", r.protocol),
        route: r.route.as_deref(),
        status: r.status,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_ms: ms(r.duration),
        upstream_ms: ms(r.upstream),
        filters_ms: ms(r.filters),
        upstream: r.endpoint.as_deref(),
        user_agent: r.user_agent.as_deref(),
        referer: r.referer.as_deref(),
        fields: Fields(&r.fields),
    };
    let _ = serde_json::to_writer(line, &value);
}

/// `client - - [30/Nov/2026:04:02:03 +0000] "GET /path HTTP/1.1" 200 512 "referer" "agent"`
fn combined(r: &Record, line: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // From RFC 3339 (`2026-11-30T04:02:03Z`) to the combined format's clock.
    let stamp = humantime::format_rfc3339_seconds(r.time).to_string();
    let (date, clock) = stamp.split_once('T').unwrap_or((&stamp, ""));
    let mut parts = date.split('-');
    let (year, month, day) = (
        parts.next().unwrap_or(""),
        parts
            .next()
            .and_then(|m| m.parse::<usize>().ok())
            .unwrap_or(1),
        parts.next().unwrap_or(""),
    );
    let quoted = |v: &Option<String>| v.as_deref().unwrap_or("-").replace('"', "\\\"");
    let _ = write!(
        line,
        "{} - - [{day}/{}/{year}:{} +0000] \"{} {} {:?}\" {} {} \"{}\" \"{}\"",
        r.client.ip(),
        MONTHS[month.clamp(1, 12) - 1],
        clock.trim_end_matches('Z'),
        r.method,
        r.path.replace('"', "%22"),
        r.protocol,
        r.status,
        r.bytes_out,
        quoted(&r.referer),
        quoted(&r.user_agent),
    );
}
