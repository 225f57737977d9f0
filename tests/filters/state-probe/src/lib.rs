//! Test filter: runs one `state` call named by the request and answers with its result as
//! JSON, so tests can compare the two backends call by call.
//!
//! `GET .../<op>?key=K&...`: `incr` (`delta`, `window_ms`), `throttle` (`limit`, `window_ms`,
//! `cost`), `get`, `set` (`value`, optional `ttl_ms`), `delete`, `cas` (optional `expected`,
//! `value`, optional `ttl_ms`). Errors answer 200 with `{"error": {"kind", "message"}}`.

use std::time::Duration;

use serde_json::{Value, json};
use wasmgate_sdk::state::{self, Error as StateError};
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, Response, export_filter};

struct StateProbe;

fn param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query_param(name)
}

fn num(req: &Request, name: &str) -> u64 {
    param(req, name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn ms(req: &Request, name: &str) -> Option<Duration> {
    param(req, name)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

fn text(bytes: Option<Vec<u8>>) -> Value {
    bytes.map_or(Value::Null, |b| {
        Value::String(String::from_utf8_lossy(&b).into_owned())
    })
}

impl Filter for StateProbe {
    type Config = Value;

    fn new(_: Value) -> Result<Self, Error> {
        Ok(StateProbe)
    }

    fn needs(&self) -> Needs {
        Needs {
            response_phase: false,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, req: Request, _ctx: &Context) -> Result<Action, Error> {
        let key = param(&req, "key").unwrap_or("k").to_string();
        let window = ms(&req, "window_ms").unwrap_or(Duration::from_secs(60));
        let answer: Result<Value, StateError> =
            match req.path().rsplit('/').next().unwrap_or_default() {
                "incr" => state::incr(&key, num(&req, "delta"), window)
                    .map(|c| json!({ "value": c.value, "reset_ms": c.reset.as_millis() as u64 })),
                "throttle" => state::throttle(
                    &key,
                    num(&req, "limit") as u32,
                    window,
                    num(&req, "cost") as u32,
                )
                .map(|t| {
                    json!({
                        "allowed": t.allowed,
                        "limit": t.limit,
                        "remaining": t.remaining,
                        "retry_after_ms": t.retry_after.as_millis() as u64,
                        "reset_ms": t.reset.as_millis() as u64,
                    })
                }),
                "get" => state::get(&key).map(|v| json!({ "value": text(v) })),
                "set" => {
                    let value = param(&req, "value").unwrap_or_default();
                    state::set(&key, value.as_bytes(), ms(&req, "ttl_ms")).map(|()| json!({}))
                }
                "set-large" => {
                    let value = vec![b'x'; num(&req, "bytes") as usize];
                    state::set(&key, &value, None).map(|()| json!({}))
                }
                "delete" => state::delete(&key).map(|found| json!({ "found": found })),
                "cas" => state::compare_and_set(
                    &key,
                    param(&req, "expected").map(str::as_bytes),
                    param(&req, "value").unwrap_or_default().as_bytes(),
                    ms(&req, "ttl_ms"),
                )
                .map(|stored| json!({ "stored": stored })),
                other => return Ok(Response::text(404, format!("no op {other:?}\n")).into()),
            };
        let body = match answer {
            Ok(v) => v,
            Err(e) => {
                let kind = match &e {
                    StateError::Unavailable(_) => "unavailable",
                    StateError::TooLarge(_) => "too-large",
                    StateError::Invalid(_) => "invalid",
                };
                json!({ "error": { "kind": kind, "message": e.to_string() } })
            }
        };
        Ok(Response::json(200, &body).into())
    }
}

export_filter!(StateProbe);
