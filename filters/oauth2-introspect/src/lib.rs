//! `oauth2-introspect`: RFC 7662 token introspection against a named service. Checks the
//! `active` flag and required scopes; caches active results for their remaining lifetime,
//! bounded by `cache_max_seconds`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmgate_sdk::services::{self, Call};
use wasmgate_sdk::{
    Action, Context, Error, Filter, Needs, Request, Response, cache, export_filter, host,
    percent_encode,
};

fn default_path() -> String {
    "/introspect".into()
}

fn default_cache_max() -> u64 {
    300
}

/// The filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The introspection service (granted to this filter on the route).
    pub service: String,
    /// Its introspection path (default `/introspect`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Client credentials sent with HTTP Basic authentication, if the endpoint wants them.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// Every one of these scopes must be granted.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Longest time an active result is reused (default 300 s).
    #[serde(default = "default_cache_max")]
    pub cache_max_seconds: u64,
    /// Introspection fields forwarded upstream as headers: `{ sub = "x-user-id" }`.
    #[serde(default)]
    pub forward: BTreeMap<String, String>,
    /// Timeout for the introspection call, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// What the introspection endpoint said (the fields we use; the rest is kept for forwarding).
#[derive(Debug, Serialize, Deserialize)]
struct Introspection {
    active: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

pub struct Introspect(Config);

fn challenge(status: u16, error: &str, description: &str, scope: Option<&str>) -> Action {
    Response::bearer_error(status, error, description, scope).into()
}

impl Introspect {
    fn introspect(&self, token: &str) -> Result<Introspection, String> {
        let c = &self.0;
        let key = format!("introspect:{:x}", Sha256::digest(token.as_bytes()));
        if let Some(hit) = cache::get(&key)
            && let Ok(found) = serde_json::from_slice::<Introspection>(&hit)
        {
            return Ok(found);
        }
        let form = format!(
            "token={}&token_type_hint=access_token",
            percent_encode(token)
        );
        let mut call = Call::post(&c.service, &c.path, form)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        if let Some(id) = &c.client_id {
            let secret = c.client_secret.as_deref().unwrap_or("");
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
            call = call.header("authorization", format!("Basic {basic}"));
        }
        if let Some(ms) = c.timeout_ms {
            call = call.timeout(Duration::from_millis(ms));
        }
        let resp = services::call(call).map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!("introspection answered {}", resp.status));
        }
        let found: Introspection = resp
            .json()
            .map_err(|e| format!("introspection answer: {e}"))?;
        if found.active {
            let now = host::now_ms() / 1000;
            let remaining = found
                .exp
                .map_or(c.cache_max_seconds, |exp| exp.saturating_sub(now));
            let ttl = remaining.min(c.cache_max_seconds);
            if ttl > 0
                && let Ok(bytes) = serde_json::to_vec(&found)
            {
                cache::set(&key, &bytes, Duration::from_secs(ttl));
            }
        }
        Ok(found)
    }
}

impl Filter for Introspect {
    type Config = Config;
    // Nothing is kept between requests: `self` is only the parsed config.

    fn new(config: Config) -> Result<Self, Error> {
        if !config.path.starts_with('/') {
            return Err(Error::msg("path must start with '/'"));
        }
        Ok(Self(config))
    }

    /// Works on requests only, keeps nothing between requests.
    fn needs(&self) -> Needs {
        Needs {
            response_phase: false,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, mut req: Request, _ctx: &Context) -> Result<Action, Error> {
        let token = req.bearer_token().map(str::to_string);
        let Some(token) = token else {
            return Ok(Response::bearer_missing().into());
        };
        let found = match self.introspect(&token) {
            Ok(found) => found,
            Err(reason) => {
                wasmgate_sdk::log::warn(&format!("introspection failed: {reason}"));
                return Ok(Response::json(
                    503,
                    &json!({ "error": "token introspection unavailable" }),
                )
                .into());
            }
        };
        if !found.active {
            return Ok(challenge(
                401,
                "invalid_token",
                "the token is not active",
                None,
            ));
        }
        if found.exp.is_some_and(|exp| exp <= host::now_ms() / 1000) {
            return Ok(challenge(
                401,
                "invalid_token",
                "the token has expired",
                None,
            ));
        }
        let granted: Vec<&str> = found
            .scope
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let missing: Vec<&str> = self
            .0
            .required_scopes
            .iter()
            .map(String::as_str)
            .filter(|s| !granted.contains(s))
            .collect();
        if !missing.is_empty() {
            let need = self.0.required_scopes.join(" ");
            return Ok(challenge(
                403,
                "insufficient_scope",
                "the token lacks a required scope",
                Some(&need),
            ));
        }
        for (field, header) in &self.0.forward {
            req.headers_mut().remove(header);
            let value = match field.as_str() {
                "scope" => found.scope.clone(),
                _ => found.rest.get(field).map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            };
            if let Some(v) = value {
                req.set_header(header, v.into_bytes());
            }
        }
        Ok(req.into())
    }
}

export_filter!(Introspect);
