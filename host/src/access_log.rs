//! The access log: one record per request, formatted as the request goes by the worker thread
//! that serves it (an [`Entry`]: nothing of the request is kept but its line), finished into a
//! buffer of that thread's, and written out by a thread of its own, so that a slow disk never
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

use crate::config::AccessLogConfig;
use crate::metrics::Metrics;

/// A request's access log line, written as the request goes so that nothing of the request is
/// kept but text: what the request says as it arrives ([`AccessLog::begin`]), what the gateway
/// did once the response headers are known ([`Entry::respond`]), and the bytes sent and the
/// total time once the body is done ([`Pending::finish`]).
pub struct Entry {
    line: Vec<u8>,
    format: Format,
    /// The combined format: where the quoted referer and user agent start (they end the line,
    /// after the status and bytes, which are not known yet).
    split: usize,
    status: u16,
}

/// What the gateway did with a request, as its access log line records it.
pub struct Outcome<'a> {
    /// The route's name; `None` when none matched.
    pub route: Option<&'a str>,
    pub status: u16,
    pub bytes_in: u64,
    /// Time in upstream tries (to their response headers), and in filter phase calls.
    pub upstream: Duration,
    pub filters: Duration,
    /// The endpoint of the last upstream try.
    pub endpoint: Option<&'a str>,
    /// Fields the route's filters added (`fields` in JSON lines; not in the combined format).
    pub fields: &'a [(String, String)],
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
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    records: usize,
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
    /// This thread's clock for JSON lines.
    static CLOCK: std::cell::RefCell<Clock> = const {
        std::cell::RefCell::new(Clock {
            second: 0,
            prefix: String::new(),
        })
    };
    /// Lines of finished entries, kept for the next entries this thread starts (an allocation
    /// less per request).
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lines a thread keeps for reuse, and the capacity past which one is not kept.
const SPARE_LINES: usize = 64;
const SPARE_CAPACITY: usize = 4096;

impl Drop for Entry {
    fn drop(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if line.capacity() <= SPARE_CAPACITY {
            line.clear();
            let _ = SPARE.try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_LINES {
                    spare.push(line);
                }
            });
        }
    }
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

    /// Start the line of a request that has just arrived.
    pub fn begin<B>(&self, req: &http::Request<B>, request_id: &str, client: SocketAddr) -> Entry {
        Entry::start(self.format, req, request_id, client, SystemTime::now())
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

impl Entry {
    fn start<B>(
        format: Format,
        req: &http::Request<B>,
        request_id: &str,
        client: SocketAddr,
        time: SystemTime,
    ) -> Entry {
        let head = Head::of(req);
        let mut entry = Entry {
            line: SPARE
                .try_with(|spare| spare.borrow_mut().pop())
                .ok()
                .flatten()
                .unwrap_or_else(|| Vec::with_capacity(512)),
            format,
            split: 0,
            status: 0,
        };
        let out = &mut entry.line;
        match format {
            Format::Json => {
                out.extend_from_slice(b"{\"time\":\"");
                CLOCK.with(|clock| clock.borrow_mut().write(time, out));
                // The request id is the gateway's own hex and a method is an HTTP token: neither
                // needs escaping.
                out.extend_from_slice(b"\",\"request_id\":\"");
                out.extend_from_slice(request_id.as_bytes());
                out.extend_from_slice(b"\",\"client\":\"");
                out.extend_from_slice(crate::text::AddrText::ip(client.ip()).as_str().as_bytes());
                out.extend_from_slice(b"\",\"method\":\"");
                out.extend_from_slice(req.method().as_str().as_bytes());
                out.extend_from_slice(b"\",\"host\":");
                write_str(out, head.host);
                out.extend_from_slice(b",\"path\":");
                write_str(out, head.path.as_bytes());
                out.extend_from_slice(b",\"protocol\":\"");
                out.extend_from_slice(protocol(req.version()).as_bytes());
                out.extend_from_slice(b"\",\"user_agent\":");
                write_opt(out, head.user_agent);
                out.extend_from_slice(b",\"referer\":");
                write_opt(out, head.referer);
            }
            Format::Combined => {
                combined_head(out, time, client, req, head.path);
                entry.split = out.len();
                let quoted = |v: Option<&[u8]>| {
                    v.map_or("-".into(), String::from_utf8_lossy)
                        .replace('"', "\\\"")
                };
                let _ = write!(
                    out,
                    " \"{}\" \"{}\"",
                    quoted(head.referer),
                    quoted(head.user_agent)
                );
            }
        }
        entry
    }

    /// Add what the gateway did: route, status, body bytes received, upstream and filter
    /// time, the upstream endpoint and the fields filters added.
    pub fn respond(&mut self, o: &Outcome<'_>) {
        self.status = o.status;
        if let Format::Combined = self.format {
            return;
        }
        let out = &mut self.line;
        let mut n = itoa::Buffer::new();
        // Route names are letters, digits, '-' and '_', and an endpoint is a URL as
        // `http::Uri` prints it: neither needs escaping.
        out.extend_from_slice(b",\"route\":");
        write_plain_opt(out, o.route.map(str::as_bytes));
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(n.format(o.status).as_bytes());
        out.extend_from_slice(b",\"bytes_in\":");
        out.extend_from_slice(n.format(o.bytes_in).as_bytes());
        out.extend_from_slice(b",\"upstream_ms\":");
        write_ms(out, o.upstream);
        out.extend_from_slice(b",\"filters_ms\":");
        write_ms(out, o.filters);
        out.extend_from_slice(b",\"upstream\":");
        write_plain_opt(out, o.endpoint.map(str::as_bytes));
        if !o.fields.is_empty() {
            out.extend_from_slice(b",\"fields\":{");
            for (i, (name, value)) in o.fields.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",");
                }
                write_str(out, name.as_bytes());
                out.extend_from_slice(b":");
                write_str(out, value.as_bytes());
            }
            out.extend_from_slice(b"}");
        }
    }

    /// The whole line, with the bytes sent and the total time, and its newline, onto `out`.
    fn end(&self, bytes_out: u64, duration: Duration, out: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        match self.format {
            Format::Json => {
                out.extend_from_slice(&self.line);
                out.extend_from_slice(b",\"bytes_out\":");
                out.extend_from_slice(n.format(bytes_out).as_bytes());
                out.extend_from_slice(b",\"duration_ms\":");
                write_ms(out, duration);
                out.extend_from_slice(b"}\n");
            }
            Format::Combined => {
                let (head, tail) = self.line.split_at(self.split);
                out.extend_from_slice(head);
                out.extend_from_slice(b" ");
                out.extend_from_slice(n.format(self.status).as_bytes());
                out.extend_from_slice(b" ");
                out.extend_from_slice(n.format(bytes_out).as_bytes());
                out.extend_from_slice(tail);
                out.extend_from_slice(b"\n");
            }
        }
    }
}

impl Pending {
    /// Finish `entry` with the bytes sent and the total time, into this thread's buffer;
    /// dropped and counted when the buffer is full.
    pub fn finish(&self, entry: &Entry, bytes_out: u64, duration: Duration) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.records >= self.per_thread {
            drop(lines);
            self.metrics.access_log_dropped.inc();
            return;
        }
        let Lines { bytes, records } = &mut *lines;
        entry.end(bytes_out, duration, bytes);
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

/// What the log takes from a request's head besides its method and version.
struct Head<'a> {
    /// The request target's authority, else its `Host` header.
    host: &'a [u8],
    /// The target's path and query.
    path: &'a str,
    user_agent: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
}

impl<'a> Head<'a> {
    fn of<B>(req: &'a http::Request<B>) -> Head<'a> {
        use http::header::{HOST, REFERER, USER_AGENT};
        // One pass over the headers costs less than three hashed lookups for the usual
        // handful; the first value of each wins, as `get` would give.
        let (mut host, mut user_agent, mut referer) = (None, None, None);
        for (name, value) in req.headers() {
            let slot = if name == HOST {
                &mut host
            } else if name == USER_AGENT {
                &mut user_agent
            } else if name == REFERER {
                &mut referer
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(value.as_bytes());
            }
        }
        let uri = req.uri();
        Head {
            host: match uri.authority() {
                Some(a) => a.as_str().as_bytes(),
                None => host.unwrap_or_default(),
            },
            path: uri.path_and_query().map_or("/", |p| p.as_str()),
            user_agent,
            referer,
        }
    }
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
    fn write(&mut self, time: SystemTime, out: &mut Vec<u8>) {
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if since.as_secs() != self.second || self.prefix.is_empty() {
            self.second = since.as_secs();
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(self.second);
            self.prefix = humantime::format_rfc3339_seconds(whole).to_string();
            self.prefix.pop(); // the `Z`
        }
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(b".");
        write_3_digits(out, since.subsec_millis() as u16);
        out.extend_from_slice(b"Z");
    }
}

/// A duration in milliseconds with three decimals, as a JSON number: whole milliseconds, a
/// point, and the microseconds left as three digits.
fn write_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(n.format(us / 1000).as_bytes());
    out.extend_from_slice(b".");
    write_3_digits(out, (us % 1000) as u16);
}

/// `n` (below 1000) as three digits, zero-padded.
fn write_3_digits(out: &mut Vec<u8>, n: u16) {
    out.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
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

/// `bytes` as a JSON string (invalid UTF-8 replaced), quotes included; escaped only when
/// needed.
fn write_str(out: &mut Vec<u8>, bytes: &[u8]) {
    if is_plain(bytes) {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes));
    }
}

/// `value` as a JSON string, or `null`.
fn write_opt(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => write_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `value` as a JSON string, or `null`; it is known to need no escaping.
fn write_plain_opt(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            out.push(b'"');
            out.extend_from_slice(v);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// The combined format's line up to the request line:
/// `client - - [30/Nov/2026:04:02:03 +0000] "GET /path HTTP/1.1"`; the status, bytes, referer
/// and user agent follow.
fn combined_head<B>(
    line: &mut Vec<u8>,
    time: SystemTime,
    client: SocketAddr,
    req: &http::Request<B>,
    path: &str,
) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // From RFC 3339 (`2026-11-30T04:02:03Z`) to the combined format's clock.
    let stamp = humantime::format_rfc3339_seconds(time).to_string();
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
    let _ = write!(
        line,
        "{} - - [{day}/{}/{year}:{} +0000] \"{} {} {:?}\"",
        client.ip(),
        MONTHS[month.clamp(1, 12) - 1],
        clock.trim_end_matches('Z'),
        req.method(),
        path.replace('"', "%22"),
        req.version(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A request as the worst client might send it: a user agent with quotes, a backslash and
    /// a byte that is not UTF-8 (a target cannot hold a quote: the parser refuses it).
    fn request() -> http::Request<()> {
        http::Request::builder()
            .method("POST")
            .uri("/a%22b?q=1")
            .version(http::Version::HTTP_2)
            .header("host", "example.test")
            .header(
                "user-agent",
                HeaderValue::from_bytes(b"agent \"quoted\" \\ \xff").unwrap(),
            )
            .body(())
            .unwrap()
    }

    fn line(format: Format, req: &http::Request<()>, fields: &[(String, String)]) -> String {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_475_323_045);
        let client = "[::1]:5000".parse().unwrap();
        let mut entry = Entry::start(format, req, "abc", client, time);
        entry.respond(&Outcome {
            route: Some("api"),
            status: 201,
            bytes_in: 5,
            upstream: Duration::from_micros(999),
            filters: Duration::ZERO,
            endpoint: None,
            fields,
        });
        let mut out = Vec::new();
        entry.end(12, Duration::from_micros(1_234_567), &mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    /// The hand-written JSON parses, with every value as given (escapes included).
    #[test]
    fn json_lines_parse_back_to_the_request() {
        let req = request();
        let fields = [("user".to_string(), "ann\n".to_string())];
        let line = line(Format::Json, &req, &fields);
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["time"], "2025-11-30T04:02:03.045Z");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["client"], "::1");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["host"], "example.test");
        assert_eq!(v["path"], "/a%22b?q=1");
        assert_eq!(v["protocol"], "HTTP/2.0");
        assert_eq!(v["route"], "api");
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_in"], 5);
        assert_eq!(v["bytes_out"], 12);
        assert_eq!(v["duration_ms"], 1234.567);
        assert_eq!(v["upstream_ms"], 0.999);
        assert_eq!(v["filters_ms"], 0.0);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "agent \"quoted\" \\ \u{fffd}");
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["fields"]["user"], "ann\n");
        // A duration under a millisecond keeps its leading zero and three decimals.
        let mut out = Vec::new();
        write_ms(&mut out, Duration::from_micros(7));
        assert_eq!(out, b"0.007");
    }

    /// The combined format puts the status and bytes, known last, between the request line
    /// and the referer and user agent, known first.
    #[test]
    fn combined_lines_in_apache_order() {
        let line = line(Format::Combined, &request(), &[]);
        assert_eq!(
            line,
            "::1 - - [30/Nov/2025:04:02:03 +0000] \"POST /a%22b?q=1 HTTP/2.0\" 201 12 \
             \"-\" \"agent \\\"quoted\\\" \\ \u{fffd}\"\n"
        );
    }

    /// The eight-at-a-time check agrees with the byte table for every byte in every position
    /// (both in a whole chunk and in the remainder).
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
    }
}
