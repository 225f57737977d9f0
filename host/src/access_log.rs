//! The access log: one record per request, formatted by the worker thread that served it into
//! a buffer of that thread's, and written out by a thread of its own, so that a slow disk never
//! slows a request. A thread's buffer holds at most `buffer` records; past it they are dropped
//! and counted (`wasmgate_access_log_dropped_total`). JSON lines by default, or the combined
//! log format; to stdout or a file, which SIGHUP reopens (for log rotation). Lines of one
//! thread are in order; lines of different threads interleave by batch (every 20 ms).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::config::AccessLogConfig;
use crate::metrics::Metrics;

/// What is logged of one request. Taken from the request without copying (the URI and header
/// values share the request's buffers); formatted by the worker thread that served it.
#[derive(Debug, Clone)]
pub struct Record {
    pub time: SystemTime,
    pub request_id: Arc<str>,
    pub client: SocketAddr,
    pub method: http::Method,
    /// The request target; its authority, else `host_header`, is the host.
    pub uri: http::Uri,
    pub host_header: Option<HeaderValue>,
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
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    /// Fields the route's filters added (`fields` in JSON lines; not in the combined format).
    pub fields: Vec<(String, String)>,
}

/// The access log: each worker thread formats its records into a buffer of its own, which the
/// log's writer thread takes every [`IDLE`] and writes out.
pub struct AccessLog {
    shared: Arc<Shared>,
    /// Records one thread's buffer holds at most.
    per_thread: usize,
    format: Format,
    metrics: Arc<Metrics>,
}

/// What the writer thread and the workers share.
#[derive(Default)]
struct Shared {
    /// Every thread's buffer.
    buffers: Mutex<Vec<Arc<Pending>>>,
    reopen: AtomicBool,
    /// The log was dropped: the writer writes what is left and stops.
    closed: AtomicBool,
}

/// One thread's records waiting to be written.
pub struct Pending {
    lines: Mutex<Lines>,
    per_thread: usize,
    format: Format,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    records: usize,
    clock: Clock,
    /// Where a JSON line is put together before it is copied to `bytes` (see [`Scratch`]).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Combined,
}

thread_local! {
    /// This thread's buffer in each access log it wrote to (one per gateway in a process).
    static MINE: std::cell::RefCell<Vec<(usize, Arc<Pending>)>> = const {
        std::cell::RefCell::new(Vec::new())
    };
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
        let shared = Arc::new(Shared::default());
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("wasmgate-access-log".into())
            .spawn(move || write_records(&writer, out, path))?;
        Ok(Some(Arc::new(AccessLog {
            shared,
            per_thread: config.buffer,
            format,
            metrics,
        })))
    }

    /// This thread's buffer, made on first use. Records are written through it; holding it
    /// costs no shared reference count per request.
    pub fn pending(&self) -> Arc<Pending> {
        let id = Arc::as_ptr(&self.shared) as usize;
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            if let Some((_, pending)) = mine.iter().find(|(i, _)| *i == id) {
                return pending.clone();
            }
            let pending = Arc::new(Pending {
                lines: Mutex::default(),
                per_thread: self.per_thread,
                format: self.format,
                metrics: self.metrics.clone(),
            });
            self.shared
                .buffers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(pending.clone());
            // Buffers of logs that are gone (earlier gateways in this process) are let go.
            mine.retain(|(_, p)| Arc::strong_count(p) > 1);
            mine.push((id, pending.clone()));
            pending
        })
    }

    /// Reopen the file before the next write (after a rotation).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
    }
}

impl Pending {
    /// Format `record` into this thread's buffer; dropped and counted when the buffer is full.
    pub fn log(&self, record: &Record) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.records >= self.per_thread {
            drop(lines);
            self.metrics.access_log_dropped.inc();
            return;
        }
        let Lines {
            bytes,
            records,
            clock,
            scratch,
        } = &mut *lines;
        match self.format {
            Format::Json => json_line(record, clock, scratch, bytes),
            Format::Combined => combined(record, bytes),
        }
        bytes.push(b'\n');
        *records += 1;
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

/// How often the writer takes the threads' buffers. A request never wakes it.
const IDLE: Duration = Duration::from_millis(20);

/// The writer thread: every [`IDLE`], take each thread's buffer and write it out.
fn write_records(shared: &Shared, mut out: Box<dyn Write + Send>, path: Option<PathBuf>) {
    let mut spare = Vec::with_capacity(64 << 10);
    loop {
        let last = shared.closed.load(Ordering::Relaxed);
        if shared.reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match open(path.as_ref()) {
                Ok(fresh) => out = fresh,
                Err(e) => tracing::error!("access log: cannot reopen {path:?}: {e}"),
            }
        }
        let buffers = shared
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for pending in &buffers {
            {
                let mut lines = pending.lines.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut lines.bytes, &mut spare);
                lines.records = 0;
            }
            if !spare.is_empty() {
                if let Err(e) = out.write_all(&spare) {
                    tracing::error!("access log: write failed: {e}");
                }
                spare.clear();
            }
        }
        let _ = out.flush();
        if last {
            return;
        }
        std::thread::sleep(IDLE);
    }
}

/// The record's host: the request target's authority, else its `Host` header.
fn host(r: &Record) -> &[u8] {
    match (r.uri.authority(), &r.host_header) {
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => b"",
    }
}

fn path(r: &Record) -> &str {
    r.uri.path_and_query().map_or("/", |p| p.as_str())
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// RFC 3339 times to the millisecond, the date and clock formatted once per second.
#[derive(Default)]
struct Clock {
    second: u64,
    /// `2026-11-30T04:02:03`
    prefix: String,
}

impl Clock {
    fn write(&mut self, time: SystemTime, out: &mut impl Sink) {
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if since.as_secs() != self.second || self.prefix.is_empty() {
            self.second = since.as_secs();
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(self.second);
            self.prefix = humantime::format_rfc3339_seconds(whole).to_string();
            self.prefix.pop(); // the `Z`
        }
        out.put(self.prefix.as_bytes());
        out.put(b".");
        write_3_digits(out, since.subsec_millis() as u16);
        out.put(b"Z");
    }
}

/// A duration in milliseconds with three decimals, as a JSON number: whole milliseconds, a
/// point, and the microseconds left as three digits.
fn write_ms(out: &mut impl Sink, d: Duration) {
    let us = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    let mut n = itoa::Buffer::new();
    out.put(n.format(us / 1000).as_bytes());
    out.put(b".");
    write_3_digits(out, (us % 1000) as u16);
}

/// `n` (below 1000) as three digits, zero-padded.
fn write_3_digits(out: &mut impl Sink, n: u16) {
    out.put(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// The client's address as text: IPv4 digit by digit (the common case, without the
/// formatting machinery), IPv6 by its `Display`.
fn write_ip(out: &mut impl Sink, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.put(b".");
                }
                out.put(n.format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            let mut text = [0u8; 48];
            let mut at = &mut text[..];
            let _ = write!(at, "{v6}");
            let left = at.len();
            out.put(&text[..text.len() - left]);
        }
    }
}

/// Bytes a JSON string cannot hold as they are: control characters, `"`, `\`, and
/// everything outside ASCII (kept as is only after a UTF-8 check, in the slow path).
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b < 0x20 || b >= 0x7f || b == b'"' as usize || b == b'\\' as usize;
        b += 1;
    }
    table
};

/// No byte of `bytes` needs escaping in a JSON string: eight bytes at a time, then the rest.
fn is_plain(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // A byte of `v` is below `n` (for n <= 0x80): the classic "has less" bit trick.
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v;
    let plain = |chunk: &[u8]| {
        let v = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
        let found = below(v, 0x20)
            | below(v ^ (ONES * u64::from(b'"')), 1)
            | below(v ^ (ONES * u64::from(b'\\')), 1)
            | below(v ^ (ONES * 0x7f), 1)
            | v;
        found & HIGH == 0
    };
    if bytes.len() < 8 {
        return !bytes.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)]);
    }
    // Whole chunks, then the last eight bytes (overlapping the last chunk) for the rest.
    let mut chunks = bytes.chunks_exact(8);
    chunks.all(plain) && (chunks.remainder().is_empty() || plain(&bytes[bytes.len() - 8..]))
}

/// Where a JSON line is written: the thread's buffer (escaping as needed), or a [`Scratch`]
/// line on the fast path.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    /// `bytes` as a JSON string, quotes included.
    fn string(&mut self, bytes: &[u8]);

    fn opt(&mut self, value: Option<&[u8]>) {
        match value {
            Some(v) => self.string(v),
            None => self.put(b"null"),
        }
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    /// Escaped as needed; invalid UTF-8 replaced.
    fn string(&mut self, bytes: &[u8]) {
        if is_plain(bytes) {
            self.push(b'"');
            self.extend_from_slice(bytes);
            self.push(b'"');
        } else {
            let _ = serde_json::to_writer(&mut *self, &String::from_utf8_lossy(bytes));
        }
    }
}

/// Longest line the fast path writes.
const LINE: usize = 1024;

/// A line put together in a fixed buffer, its length in a local (no capacity checks against a
/// vector in memory on every write). A write that does not fit or a string that would need
/// escaping spoils it: the caller then writes the line again into a [`Vec`].
struct Scratch<'a> {
    buf: &'a mut [u8],
    at: usize,
    spoiled: bool,
}

impl Sink for Scratch<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.at + bytes.len();
        match self.buf.get_mut(self.at..end) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.at = end;
            }
            None => self.spoiled = true,
        }
    }

    #[inline(always)]
    fn string(&mut self, bytes: &[u8]) {
        if is_plain(bytes) {
            self.put(b"\"");
            self.put(bytes);
            self.put(b"\"");
        } else {
            self.spoiled = true;
        }
    }
}

/// Append `r` as a JSON line to `out`: the fast way first (every string plain and the line
/// within [`LINE`] bytes, which is every request in practice), else again, escaping.
fn json_line(r: &Record, clock: &mut Clock, scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
    if scratch.len() < LINE {
        scratch.resize(LINE, 0);
    }
    let mut line = Scratch {
        buf: &mut scratch[..LINE],
        at: 0,
        spoiled: false,
    };
    json(r, clock, &mut line);
    match line.spoiled {
        false => out.extend_from_slice(&line.buf[..line.at]),
        true => json(r, clock, out),
    }
}

/// One JSON object, written field by field: it runs on the worker for every logged request.
fn json(r: &Record, clock: &mut Clock, out: &mut impl Sink) {
    let mut n = itoa::Buffer::new();
    out.put(b"{\"time\":\"");
    clock.write(r.time, out);
    // The request id is the gateway's own hex and a method is an HTTP token: neither needs
    // escaping.
    out.put(b"\",\"request_id\":\"");
    out.put(r.request_id.as_bytes());
    out.put(b"\",\"client\":\"");
    write_ip(out, r.client.ip());
    out.put(b"\",\"method\":\"");
    out.put(r.method.as_str().as_bytes());
    out.put(b"\",\"host\":");
    out.string(host(r));
    out.put(b",\"path\":");
    out.string(path(r).as_bytes());
    out.put(b",\"protocol\":\"");
    out.put(protocol(r.protocol).as_bytes());
    out.put(b"\",\"route\":");
    out.opt(r.route.as_deref().map(str::as_bytes));
    out.put(b",\"status\":");
    out.put(n.format(r.status).as_bytes());
    out.put(b",\"bytes_in\":");
    out.put(n.format(r.bytes_in).as_bytes());
    out.put(b",\"bytes_out\":");
    out.put(n.format(r.bytes_out).as_bytes());
    out.put(b",\"duration_ms\":");
    write_ms(out, r.duration);
    out.put(b",\"upstream_ms\":");
    write_ms(out, r.upstream);
    out.put(b",\"filters_ms\":");
    write_ms(out, r.filters);
    out.put(b",\"upstream\":");
    out.opt(r.endpoint.as_deref().map(str::as_bytes));
    out.put(b",\"user_agent\":");
    out.opt(r.user_agent.as_ref().map(HeaderValue::as_bytes));
    out.put(b",\"referer\":");
    out.opt(r.referer.as_ref().map(HeaderValue::as_bytes));
    if !r.fields.is_empty() {
        out.put(b",\"fields\":{");
        for (i, (name, value)) in r.fields.iter().enumerate() {
            if i > 0 {
                out.put(b",");
            }
            out.string(name.as_bytes());
            out.put(b":");
            out.string(value.as_bytes());
        }
        out.put(b"}");
    }
    out.put(b"}");
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
    let quoted = |v: &Option<HeaderValue>| {
        v.as_ref()
            .map_or("-".into(), |v| String::from_utf8_lossy(v.as_bytes()))
            .replace('"', "\\\"")
    };
    let _ = write!(
        line,
        "{} - - [{day}/{}/{year}:{} +0000] \"{} {} {:?}\" {} {} \"{}\" \"{}\"",
        r.client.ip(),
        MONTHS[month.clamp(1, 12) - 1],
        clock.trim_end_matches('Z'),
        r.method,
        path(r).replace('"', "%22"),
        r.protocol,
        r.status,
        r.bytes_out,
        quoted(&r.referer),
        quoted(&r.user_agent),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_475_323_045),
            request_id: Arc::from("abc"),
            client: "[::1]:5000".parse().unwrap(),
            method: http::Method::POST,
            uri: "/a%22b?q=\"x\""
                .parse()
                .unwrap_or_else(|_| "/a".parse().unwrap()),
            host_header: Some(HeaderValue::from_static("example.test")),
            protocol: http::Version::HTTP_2,
            route: Some(Arc::from("api")),
            status: 201,
            bytes_in: 5,
            bytes_out: 12,
            duration: Duration::from_micros(1_234_567),
            upstream: Duration::from_micros(999),
            filters: Duration::ZERO,
            endpoint: None,
            user_agent: Some(HeaderValue::from_bytes(b"agent \"quoted\" \\ \xff").unwrap()),
            referer: None,
            fields: vec![("user".into(), "ann\n".into())],
        }
    }

    /// The hand-written JSON parses, with every value as given (escapes included).
    #[test]
    fn json_lines_parse_back_to_the_record() {
        let r = record();
        let mut line = Vec::new();
        json_line(&r, &mut Clock::default(), &mut Vec::new(), &mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(v["time"], "2025-11-30T04:02:03.045Z");
        assert_eq!(v["client"], "::1");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["host"], "example.test");
        assert_eq!(v["path"], r.uri.path_and_query().unwrap().as_str());
        assert_eq!(v["protocol"], "HTTP/2.0");
        assert_eq!(v["route"], "api");
        assert_eq!(v["status"], 201);
        assert_eq!(v["duration_ms"], 1234.567);
        assert_eq!(v["upstream_ms"], 0.999);
        assert_eq!(v["filters_ms"], 0.0);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "agent \"quoted\" \\ \u{fffd}");
        assert_eq!(v["fields"]["user"], "ann\n");
    }

    /// The fast way (a fixed line, no escapes) writes exactly what the escaping way does, and
    /// gives way to it for a string that needs escaping or a line that does not fit.
    #[test]
    fn fast_and_escaping_lines_agree() {
        let plain = Record {
            uri: "/plain/path?q=1".parse().unwrap(),
            client: "192.168.10.200:40000".parse().unwrap(),
            user_agent: Some(HeaderValue::from_static("curl/8.5.0")),
            endpoint: Some(Arc::from("http://127.0.0.1:8080/")),
            fields: vec![("user".into(), "ann".into())],
            duration: Duration::from_micros(7),
            ..record()
        };
        let long = Record {
            uri: format!("/{}", "a".repeat(2 * LINE)).parse().unwrap(),
            ..plain.clone()
        };
        for r in [plain, long, record()] {
            let mut fast = Vec::new();
            json_line(&r, &mut Clock::default(), &mut Vec::new(), &mut fast);
            let mut slow = Vec::new();
            json(&r, &mut Clock::default(), &mut slow);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&slow)
            );
            let v: serde_json::Value = serde_json::from_slice(&fast).expect("valid JSON");
            assert_eq!(v["path"], r.uri.path_and_query().unwrap().as_str());
        }
        let mut line = Vec::new();
        let r = Record {
            duration: Duration::from_micros(7),
            ..record()
        };
        json_line(&r, &mut Clock::default(), &mut Vec::new(), &mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["duration_ms"], 0.007);
    }

    /// The eight-at-a-time check agrees with the byte table for every byte in every position
    /// (both in a whole chunk and in the remainder), and an IPv4 client is written as usual.
    #[test]
    fn plain_check_agrees_with_the_table() {
        for b in 0..=255u8 {
            for len in [5, 8, 13, 16] {
                for at in 0..len {
                    let mut bytes = *b"abcdefghijklmnop";
                    bytes[at] = b;
                    assert_eq!(
                        is_plain(&bytes[..len]),
                        !NEEDS_ESCAPE[usize::from(b)],
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        let mut out = Vec::new();
        write_ip(&mut out, "10.0.255.7".parse().unwrap());
        assert_eq!(out, b"10.0.255.7");
    }
}
