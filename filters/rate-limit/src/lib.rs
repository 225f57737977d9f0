//! `rate-limit`: limits per client, header, path parameter or route, several per route, on the
//! gateway's state store (in process, or Redis shared by several gateways). Each limit runs the
//! generic cell rate algorithm (GCRA) in the store: `requests` at once, then one more every
//! `per / requests`, so a window boundary never lets twice the limit through.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use wasmgate_sdk::metrics::Counter;
use wasmgate_sdk::{
    Action, Context, Error, Filter, Needs, Request, Response, export_filter, state,
};

/// One limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests allowed per `per`.
    pub requests: u32,
    /// The window: `"500ms"`, `"1s"`, `"10m"`, `"1h"`, `"1d"`.
    pub per: String,
    /// What the limit counts by: `"client"` (the client's IP address, the default), `"route"`
    /// (everyone together), `"header:NAME"` (e.g. a claim header an auth filter forwarded) or
    /// `"param:NAME"` (a path parameter of the route). A request without the header or
    /// parameter is not counted by this limit.
    #[serde(default = "client")]
    pub by: String,
    /// The limit's name in headers, logs and metrics (default `"<requests>-per-<per>"`).
    pub name: Option<String>,
}

fn client() -> String {
    "client".into()
}

/// Which headers tell clients about the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Headers {
    /// `RateLimit-Policy` and `RateLimit` (IETF draft-ietf-httpapi-ratelimit-headers).
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRatelimit,
    /// None (429 answers still carry `Retry-After`).
    None,
}

/// What happens when the state store fails (Redis down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStoreError {
    /// Let the request through, log it and count it (the default).
    Allow,
    /// Answer 503.
    Deny,
}

/// The filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub limits: Vec<Limit>,
    /// Default `ietf`.
    #[serde(default = "ietf")]
    pub headers: Headers,
    /// Default `allow`.
    #[serde(default = "allow")]
    pub on_store_error: OnStoreError,
}

fn ietf() -> Headers {
    Headers::Ietf
}

fn allow() -> OnStoreError {
    OnStoreError::Allow
}

/// What a limit counts by.
#[derive(Debug)]
enum By {
    Client,
    Route,
    Header(String),
    Param(String),
}

#[derive(Debug)]
struct Rule {
    name: String,
    requests: u32,
    window: Duration,
    by: By,
    /// This limit in `RateLimit-Policy`: `"name";q=requests;w=seconds`, made once.
    policy: String,
}

/// `n` in decimal, appended (no `core::fmt` on the request path: a `format!` costs the guest
/// more than the rest of the limit check).
fn push_num(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

fn num(n: u64) -> String {
    let mut out = String::new();
    push_num(&mut out, n);
    out
}

pub struct RateLimit {
    rules: Vec<Rule>,
    headers: Headers,
    on_store_error: OnStoreError,
    /// `wasmgate_filter_rate_limit_refused_total{route, limit}`.
    refused: Counter<1>,
    /// `wasmgate_filter_rate_limit_store_errors_total{route}`.
    store_errors: Counter<0>,
}

/// `"1s"`, `"500ms"`, `"10m"`, `"1h"`, `"1d"`, at most what the state interface's u32
/// milliseconds hold (about 49 days).
fn parse_window(text: &str) -> Option<Duration> {
    wasmgate_sdk::parse_duration(text).filter(|d| d.as_millis() <= u128::from(u32::MAX))
}

/// A limit's verdict for one request.
struct Verdict<'a> {
    rule: &'a Rule,
    result: state::Throttle,
}

/// Keys longer than this are hashed (state keys are at most 512 bytes).
const MAX_KEY_PART: usize = 200;

impl RateLimit {
    /// The state key of `rule` for this request, or `None` when the request lacks what the rule
    /// counts by.
    fn key(&self, index: usize, rule: &Rule, req: &Request, ctx: &Context) -> Option<String> {
        let value = match &rule.by {
            By::Client => ctx
                .client_addr()
                .rsplit_once(':')
                .map_or(ctx.client_addr(), |(ip, _)| ip),
            By::Route => "",
            By::Header(name) => req.header(name)?,
            By::Param(name) => ctx.param(name)?,
        };
        let hashed;
        let value = if value.len() > MAX_KEY_PART {
            let mut h = DefaultHasher::new();
            value.hash(&mut h);
            hashed = format!("#{:016x}", h.finish());
            hashed.as_str()
        } else {
            value
        };
        let route = ctx.route();
        let mut key = String::with_capacity(route.len() + value.len() + 8);
        key.push_str(route);
        key.push(':');
        push_num(&mut key, index as u64);
        key.push(':');
        key.push_str(value);
        Some(key)
    }

    /// The rate limit headers for `verdicts`, each given to `set`.
    fn headers(&self, verdicts: &[Verdict<'_>], mut set: impl FnMut(&str, String)) {
        // The most restrictive limit is the one a client must watch.
        let Some(tightest) = verdicts.iter().min_by_key(|v| v.result.remaining) else {
            return;
        };
        let reset = tightest.result.reset.as_secs_f64().ceil() as u64;
        match self.headers {
            Headers::None => {}
            Headers::Ietf => {
                let mut policies = String::new();
                for (i, v) in verdicts.iter().enumerate() {
                    if i > 0 {
                        policies.push_str(", ");
                    }
                    policies.push_str(&v.rule.policy);
                }
                set("ratelimit-policy", policies);
                let mut now = String::with_capacity(tightest.rule.name.len() + 24);
                now.push('"');
                now.push_str(&tightest.rule.name);
                now.push_str("\";r=");
                push_num(&mut now, u64::from(tightest.result.remaining));
                now.push_str(";t=");
                push_num(&mut now, reset);
                set("ratelimit", now);
            }
            Headers::XRatelimit => {
                set("x-ratelimit-limit", num(u64::from(tightest.rule.requests)));
                set(
                    "x-ratelimit-remaining",
                    num(u64::from(tightest.result.remaining)),
                );
                set("x-ratelimit-reset", num(reset));
            }
        }
    }
}

impl Filter for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        if config.limits.is_empty() {
            return Err(Error::msg("limits: give at least one limit"));
        }
        let mut rules = Vec::with_capacity(config.limits.len());
        for (i, limit) in config.limits.iter().enumerate() {
            let window = parse_window(&limit.per).ok_or_else(|| {
                Error::msg(format!(
                    "limits[{i}].per {:?}: expected a number and ms, s, m, h or d (e.g. \"1s\", \"1d\"), at most 49 days",
                    limit.per
                ))
            })?;
            if limit.requests == 0 {
                return Err(Error::msg(format!(
                    "limits[{i}].requests must be at least 1"
                )));
            }
            let by = match limit.by.split_once(':') {
                None if limit.by == "client" => By::Client,
                None if limit.by == "route" => By::Route,
                Some(("header", name)) if !name.is_empty() => By::Header(name.to_ascii_lowercase()),
                Some(("param", name)) if !name.is_empty() => By::Param(name.to_string()),
                _ => {
                    return Err(Error::msg(format!(
                        "limits[{i}].by {:?}: expected \"client\", \"route\", \"header:NAME\" or \"param:NAME\"",
                        limit.by
                    )));
                }
            };
            let name = limit
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-per-{}", limit.requests, limit.per));
            if name.is_empty() || name.contains(['"', '\\']) || !name.is_ascii() {
                return Err(Error::msg(format!(
                    "limits[{i}].name {name:?}: expected printable ASCII without quotes"
                )));
            }
            let policy = format!(
                "\"{name}\";q={};w={}",
                limit.requests,
                window.as_secs().max(1)
            );
            rules.push(Rule {
                name,
                requests: limit.requests,
                window,
                by,
                policy,
            });
        }
        Ok(Self {
            rules,
            headers: config.headers,
            on_store_error: config.on_store_error,
            refused: Counter::define("refused", "Requests refused, by limit", ["limit"])?,
            store_errors: Counter::define(
                "store_errors",
                "State store failures (the request went on as on_store_error says)",
                [],
            )?,
        })
    }

    /// Works on the request only: the rate limit headers are set for the response from the
    /// request phase. Nothing is kept between requests in the instance (the counts live in the
    /// state store).
    fn needs(&self) -> Needs {
        Needs {
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, req: Request, ctx: &Context) -> Result<Action, Error> {
        // In order; the first limit that refuses answers, and the limits after it do not count
        // the request.
        let mut verdicts = Vec::with_capacity(self.rules.len());
        for (index, rule) in self.rules.iter().enumerate() {
            let Some(key) = self.key(index, rule, &req, ctx) else {
                continue;
            };
            let result = match state::throttle(&key, rule.requests, rule.window, 1) {
                Ok(result) => result,
                Err(e) => {
                    self.store_errors.inc([]);
                    wasmgate_sdk::log::warn(&format!("limit {:?}: {e}", rule.name));
                    if self.on_store_error == OnStoreError::Deny {
                        let resp =
                            Response::json(503, &json!({ "error": "rate limit unavailable" }))
                                .with_header("retry-after", "1");
                        return Ok(resp.into());
                    }
                    continue;
                }
            };
            verdicts.push(Verdict { rule, result });
            if !result.allowed {
                self.refused.inc([rule.name.as_str()]);
                let retry_after = result.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut resp = Response::json(
                    429,
                    &json!({
                        "error": "rate limit exceeded",
                        "limit": rule.name,
                        "retry_after": retry_after,
                    }),
                )
                .with_header("retry-after", retry_after.to_string());
                self.headers(&verdicts, |name, value| resp.set_header(name, value));
                return Ok(resp.into());
            }
        }
        // The upstream's answer (or a later filter's) carries them.
        self.headers(&verdicts, |name, value| {
            ctx.set_response_header(name, value)
        });
        Ok(req.into())
    }
}

export_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_their_units() {
        assert_eq!(parse_window("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_window("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_window("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_window("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_window("0s"), None);
        assert_eq!(parse_window("1w"), None);
        assert_eq!(parse_window("s"), None);
        assert_eq!(parse_window("60d"), None);
    }
}
