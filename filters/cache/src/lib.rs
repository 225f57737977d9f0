//! `cache`: caches GET and HEAD responses in the gateway's state store (in process, or Redis
//! shared by several gateways), keyed by method, host, path, query and configured headers,
//! honouring `Vary`, with the time to live from `Cache-Control` or a configured default.

use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use wasmgate_sdk::metrics::Counter;
use wasmgate_sdk::{
    Action, Context, Error, Filter, Headers, Needs, Request, Response, export_filter, host, state,
};

/// The filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Time to live for responses whose `Cache-Control` gives none (default `"60s"`); `"0s"`
    /// caches only responses that say how long.
    #[serde(default = "default_ttl")]
    pub default_ttl: String,
    /// Longest time to live, whatever the response says (default `"1d"`).
    #[serde(default = "max_ttl")]
    pub max_ttl: String,
    /// Largest response body stored, in bytes (default 1 MiB, also capped by the state
    /// store's `max_value_bytes`).
    #[serde(default = "max_object_bytes")]
    pub max_object_bytes: usize,
    /// Request headers that are part of the key besides method, host, path and query.
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Also cache requests that carry `Authorization` (default false: they always go to the
    /// upstream and are never stored).
    #[serde(default)]
    pub cache_authorized: bool,
}

fn default_ttl() -> String {
    "60s".into()
}

fn max_ttl() -> String {
    "1d".into()
}

fn max_object_bytes() -> usize {
    1 << 20
}

pub struct Cache {
    default_ttl: Duration,
    max_ttl: Duration,
    max_object_bytes: usize,
    key_headers: Vec<String>,
    cache_authorized: bool,
    /// `wasmgate_filter_cache_lookups_total{route, result}`: `hit`, `miss`, `bypass`.
    lookups: Counter<1>,
    /// `wasmgate_filter_cache_store_errors_total{route}`.
    store_errors: Counter<0>,
}

/// Statuses stored (RFC 9111's heuristically cacheable ones the gateway sees most).
const CACHEABLE: [u16; 7] = [200, 203, 204, 300, 301, 404, 410];
/// Response headers never stored: per connection, or rewritten on every answer.
const NOT_STORED: [&str; 11] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "content-length",
    "age",
    "x-cache",
    "set-cookie",
];
/// Most request header bytes kept for the response phase's `Vary` (with the key, within the
/// 4 KiB `state::keep` carries).
const KEPT_HEADER_BYTES: usize = 3900;

/// `Cache-Control` directives as (lower-case name, value).
fn directives(headers: &Headers) -> Vec<(String, Option<String>)> {
    headers
        .get_all("cache-control")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let d = d.trim();
            match d.split_once('=') {
                Some((name, value)) => (
                    name.trim().to_ascii_lowercase(),
                    Some(value.trim().trim_matches('"').to_string()),
                ),
                None => (d.to_ascii_lowercase(), None),
            }
        })
        .collect()
}

fn has(directives: &[(String, Option<String>)], name: &str) -> bool {
    directives.iter().any(|(n, _)| n == name)
}

fn seconds(directives: &[(String, Option<String>)], name: &str) -> Option<Duration> {
    directives
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref()?.parse().ok())
        .map(Duration::from_secs)
}

fn hex(digest: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// What the request phase keeps for the response phase of a miss: the key, and the request
/// headers a `Vary` may name.
struct Miss {
    key: String,
    headers: Vec<(String, Vec<u8>)>,
    /// Some request headers did not fit: a `Vary` on a header not kept is not cached.
    truncated: bool,
}

impl Miss {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        out.push(if self.truncated { b'T' } else { b'M' });
        out.extend_from_slice(self.key.as_bytes());
        out.push(b'\n');
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value);
            out.push(b'\n');
        }
        out
    }

    fn decode(data: &[u8]) -> Option<Miss> {
        let (&kind, rest) = data.split_first()?;
        let truncated = match kind {
            b'M' => false,
            b'T' => true,
            _ => return None,
        };
        let mut lines = rest.split(|&b| b == b'\n');
        let key = String::from_utf8(lines.next()?.to_vec()).ok()?;
        let headers = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let colon = l.iter().position(|&b| b == b':')?;
                let name = String::from_utf8(l[..colon].to_vec()).ok()?;
                Some((name, l[colon + 1..].to_vec()))
            })
            .collect();
        Some(Miss {
            key,
            headers,
            truncated,
        })
    }

    /// The request's value of `name`, or `None` when it had none; `Err` when it may have had
    /// one that was not kept.
    fn header(&self, name: &str) -> Result<Option<&[u8]>, ()> {
        match self.headers.iter().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(Some(v)),
            None if self.truncated => Err(()),
            None => Ok(None),
        }
    }
}

/// The key of one variant of `key`: the values of the `Vary` headers.
fn variant_key(key: &str, names: &[String], value: impl Fn(&str) -> Option<Vec<u8>>) -> String {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    for name in names {
        h.update(b"\n");
        h.update(name.as_bytes());
        h.update(b":");
        if let Some(v) = value(name) {
            h.update(&v);
        }
    }
    format!("v:{}", hex(&h.finalize()))
}

/// A stored entry: a response, or the `Vary` header names its variants are keyed by.
enum Entry {
    Vary(Vec<String>),
    Response {
        status: u16,
        stored_at_ms: u64,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        match self {
            Entry::Vary(names) => {
                let mut out = b"V".to_vec();
                out.extend_from_slice(names.join("\n").as_bytes());
                out
            }
            Entry::Response {
                status,
                stored_at_ms,
                headers,
                body,
            } => {
                let mut out = Vec::with_capacity(body.len() + 256);
                out.push(b'R');
                out.extend_from_slice(&status.to_be_bytes());
                out.extend_from_slice(&stored_at_ms.to_be_bytes());
                out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
                for (name, value) in headers {
                    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    out.extend_from_slice(value);
                }
                out.extend_from_slice(body);
                out
            }
        }
    }

    fn decode(data: &[u8]) -> Option<Entry> {
        let (&kind, mut rest) = data.split_first()?;
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            *rest = tail;
            Some(head)
        }
        match kind {
            b'V' => {
                let names = std::str::from_utf8(rest).ok()?;
                Some(Entry::Vary(names.split('\n').map(str::to_string).collect()))
            }
            b'R' => {
                let status = u16::from_be_bytes(take(&mut rest, 2)?.try_into().ok()?);
                let stored_at_ms = u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
                let count = u16::from_be_bytes(take(&mut rest, 2)?.try_into().ok()?);
                let mut headers = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let n = u16::from_be_bytes(take(&mut rest, 2)?.try_into().ok()?);
                    let name = std::str::from_utf8(take(&mut rest, usize::from(n))?).ok()?;
                    let n = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?);
                    let value = take(&mut rest, n as usize)?.to_vec();
                    headers.push((name.to_string(), value));
                }
                Some(Entry::Response {
                    status,
                    stored_at_ms,
                    headers,
                    body: rest.to_vec(),
                })
            }
            _ => None,
        }
    }
}

impl Cache {
    /// The key of this request: method, host, path and query, and the configured headers.
    fn key(&self, req: &Request) -> String {
        let mut h = Sha256::new();
        for part in [req.method(), req.authority(), req.path_with_query()] {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
        for name in &self.key_headers {
            h.update(name.as_bytes());
            h.update(b":");
            if let Some(v) = req.headers().get_bytes(name) {
                h.update(v);
            }
            h.update(b"\n");
        }
        let mut key = String::from("r:");
        key.push_str(&hex(&h.finalize()));
        key
    }

    fn get(&self, key: &str) -> Option<Entry> {
        match state::get(key) {
            Ok(value) => value.as_deref().and_then(Entry::decode),
            Err(e) => {
                self.store_errors.inc([]);
                wasmgate_sdk::log::warn(&format!("cache lookup: {e}"));
                None
            }
        }
    }

    fn set(&self, key: &str, entry: &Entry, ttl: Duration) {
        if let Err(e) = state::set(key, &entry.encode(), Some(ttl)) {
            self.store_errors.inc([]);
            wasmgate_sdk::log::warn(&format!("cache store: {e}"));
        }
    }

    /// The time to live the response allows, or `None` when it must not be stored.
    fn ttl(&self, resp: &Response) -> Option<Duration> {
        let cc = directives(resp.headers());
        if !CACHEABLE.contains(&resp.status())
            || has(&cc, "no-store")
            || has(&cc, "private")
            || has(&cc, "no-cache")
            || resp.headers().contains("set-cookie")
        {
            return None;
        }
        let ttl = seconds(&cc, "s-maxage")
            .or_else(|| seconds(&cc, "max-age"))
            .unwrap_or(self.default_ttl)
            .min(self.max_ttl);
        (!ttl.is_zero()).then_some(ttl)
    }

    fn hit(
        &self,
        status: u16,
        stored_at_ms: u64,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        head: bool,
    ) -> Action {
        self.lookups.inc(["hit"]);
        state::keep(b"H");
        let mut resp = Response::new(status);
        for (name, value) in headers {
            resp.headers_mut().append(&name, value);
        }
        let age = host::now_ms().saturating_sub(stored_at_ms) / 1000;
        resp.set_header("age", age.to_string());
        resp.set_header("x-cache", "HIT");
        if !head {
            resp.set_body(body);
        }
        resp.into()
    }
}

impl Filter for Cache {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        let duration = |what: &str, text: &str| {
            if text == "0s" {
                return Ok(Duration::ZERO);
            }
            wasmgate_sdk::parse_duration(text).ok_or_else(|| {
                Error::msg(format!(
                    "{what} {text:?}: expected a number and ms, s, m, h or d (e.g. \"60s\")"
                ))
            })
        };
        Ok(Cache {
            default_ttl: duration("default_ttl", &config.default_ttl)?,
            max_ttl: duration("max_ttl", &config.max_ttl)?,
            max_object_bytes: config.max_object_bytes,
            key_headers: config
                .key_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            cache_authorized: config.cache_authorized,
            lookups: Counter::define("lookups", "Cache lookups, by result", ["result"])?,
            store_errors: Counter::define(
                "store_errors",
                "State store failures (the request went to the upstream)",
                [],
            )?,
        })
    }

    /// The response body is stored, so it is buffered; nothing is kept in the instance.
    fn needs(&self) -> Needs {
        Needs {
            response_body: true,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, req: Request, _ctx: &Context) -> Result<Action, Error> {
        let head = req.method() == "HEAD";
        if !(head || req.method() == "GET")
            || (!self.cache_authorized && req.headers().contains("authorization"))
        {
            self.lookups.inc(["bypass"]);
            return Ok(req.into());
        }
        let key = self.key(&req);
        let cc = directives(req.headers());
        let revalidate = has(&cc, "no-cache")
            || seconds(&cc, "max-age") == Some(Duration::ZERO)
            || req.headers().get("pragma") == Some("no-cache");
        if !revalidate {
            let found = match self.get(&key) {
                Some(Entry::Vary(names)) => {
                    let variant = variant_key(&key, &names, |n| {
                        req.headers().get_bytes(n).map(<[u8]>::to_vec)
                    });
                    self.get(&variant)
                }
                other => other,
            };
            if let Some(Entry::Response {
                status,
                stored_at_ms,
                headers,
                body,
            }) = found
            {
                return Ok(self.hit(status, stored_at_ms, headers, body, head));
            }
        }
        self.lookups.inc(["miss"]);
        if has(&cc, "no-store") {
            return Ok(req.into());
        }
        let mut miss = Miss {
            key,
            headers: Vec::new(),
            truncated: false,
        };
        let mut room = KEPT_HEADER_BYTES.saturating_sub(miss.key.len());
        for (name, value) in req.headers().iter() {
            let size = name.len() + value.len() + 2;
            if size > room {
                miss.truncated = true;
                continue;
            }
            room -= size;
            miss.headers.push((name.to_string(), value.to_vec()));
        }
        state::keep(&miss.encode());
        Ok(req.into())
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        let kept = state::kept();
        let Some(miss) = kept.as_deref().and_then(Miss::decode) else {
            // A hit (already marked), a bypass or a `no-store` request.
            return Ok(resp);
        };
        resp.set_header("x-cache", "MISS");
        let Some(ttl) = self.ttl(&resp) else {
            return Ok(resp);
        };
        let body = resp.body().unwrap_or_default();
        if body.len() > self.max_object_bytes {
            return Ok(resp);
        }
        let vary: Vec<String> = resp
            .headers()
            .get_all("vary")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        if vary.iter().any(|n| n == "*" || miss.header(n).is_err()) {
            return Ok(resp);
        }
        let entry = Entry::Response {
            status: resp.status(),
            stored_at_ms: host::now_ms(),
            headers: resp
                .headers()
                .iter()
                .filter(|(n, _)| !NOT_STORED.contains(n))
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            body: body.to_vec(),
        };
        if vary.is_empty() {
            self.set(&miss.key, &entry, ttl);
        } else {
            let variant = variant_key(&miss.key, &vary, |n| {
                miss.header(n).ok().flatten().map(<[u8]>::to_vec)
            });
            self.set(&miss.key, &Entry::Vary(vary), ttl);
            self.set(&variant, &entry, ttl);
        }
        Ok(resp)
    }
}

export_filter!(Cache);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_no_entry() {
        let entry = Entry::Response {
            status: 203,
            stored_at_ms: 1_764_000_000_123,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"hello\n\0bytes".to_vec(),
        };
        let Some(Entry::Response {
            status,
            stored_at_ms,
            headers,
            body,
        }) = Entry::decode(&entry.encode())
        else {
            panic!("did not decode");
        };
        assert_eq!((status, stored_at_ms), (203, 1_764_000_000_123));
        assert_eq!(
            headers,
            [("content-type".to_string(), b"text/plain".to_vec())]
        );
        assert_eq!(body, b"hello\n\0bytes");
        let vary = Entry::Vary(vec!["accept".into(), "origin".into()]).encode();
        assert!(matches!(Entry::decode(&vary), Some(Entry::Vary(n)) if n == ["accept", "origin"]));
        assert!(Entry::decode(b"R\x00").is_none());
        assert!(Entry::decode(b"").is_none());
        assert!(Entry::decode(b"X").is_none());
    }

    #[test]
    fn a_miss_remembers_whether_a_vary_header_may_be_missing() {
        let miss = Miss {
            key: "r:abc".into(),
            headers: vec![("accept".into(), b"text/html".to_vec())],
            truncated: true,
        };
        let back = Miss::decode(&miss.encode()).unwrap();
        assert_eq!(back.key, "r:abc");
        assert_eq!(back.header("accept"), Ok(Some(&b"text/html"[..])));
        assert_eq!(back.header("origin"), Err(()), "may have been cut");
        let whole = Miss {
            truncated: false,
            ..back
        };
        assert_eq!(
            Miss::decode(&whole.encode()).unwrap().header("origin"),
            Ok(None)
        );
    }
}
