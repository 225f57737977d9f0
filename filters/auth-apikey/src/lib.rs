//! `auth-apikey`: API keys from a header or a query parameter, stored in config as SHA-256
//! hashes, each mapped to a consumer name forwarded upstream.

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use wasmgate_sdk::metrics::Counter;
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, Response, export_filter};

fn default_header() -> String {
    "x-api-key".into()
}

fn default_forward() -> String {
    "x-consumer".into()
}

/// One accepted key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// `sha256:<64 hex digits>` of the key (`printf %s KEY | sha256sum`).
    pub hash: String,
    /// Who the key belongs to; sent upstream in `forward_header`.
    pub consumer: String,
    /// If given, the only methods this key may use.
    pub methods: Option<Vec<String>>,
    /// If given, the only routes (by name) this key may use.
    pub routes: Option<Vec<String>>,
}

/// The filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Header carrying the key (default `x-api-key`).
    #[serde(default = "default_header")]
    pub header: String,
    /// Query parameter also accepted as the key, if set.
    pub query: Option<String>,
    /// Header that tells the upstream who called (default `x-consumer`).
    #[serde(default = "default_forward")]
    pub forward_header: String,
    pub keys: Vec<Key>,
}

pub struct ApiKey {
    config: Config,
    hashes: Vec<[u8; 32]>,
    /// `wasmgate_filter_auth_apikey_refused_total{route, reason}`: `missing`, `unknown` or
    /// `not_allowed` (the key may not use this method or route).
    refused: Counter<1>,
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn refuse(status: u16, error: &str, header: &str) -> Action {
    Response::json(status, &json!({ "error": error }))
        .with_header("www-authenticate", format!("ApiKey header=\"{header}\""))
        .into()
}

impl Filter for ApiKey {
    type Config = Config;
    // Nothing is kept between requests: `self` is only the parsed config.

    fn new(config: Config) -> Result<Self, Error> {
        let hashes = config
            .keys
            .iter()
            .map(|k| {
                parse_hash(&k.hash).ok_or_else(|| {
                    Error::msg(format!(
                        "key for {:?}: hash must be \"sha256:\" and 64 hex digits",
                        k.consumer
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let refused = Counter::define("refused", "Requests refused, by reason", ["reason"])?;
        Ok(Self {
            config,
            hashes,
            refused,
        })
    }

    /// Works on requests only, keeps nothing between requests.
    fn needs(&self) -> Needs {
        Needs {
            response_phase: false,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, mut req: Request, ctx: &Context) -> Result<Action, Error> {
        let c = &self.config;
        let presented = req.header(&c.header).map(str::to_string).or_else(|| {
            c.query
                .as_ref()
                .and_then(|q| req.query_param(q))
                .map(str::to_string)
        });
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            self.refused.inc(["missing"]);
            return Ok(refuse(401, "missing API key", &c.header));
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare every stored hash without stopping early.
        let found = self.hashes.iter().enumerate().fold(None, |found, (i, h)| {
            let same = h.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same { Some(i) } else { found }
        });
        let Some(entry) = found.map(|i| &c.keys[i]) else {
            self.refused.inc(["unknown"]);
            return Ok(refuse(403, "unknown API key", &c.header));
        };
        let method_ok = entry
            .methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|m| m.eq_ignore_ascii_case(req.method())));
        let route_ok = entry
            .routes
            .as_ref()
            .is_none_or(|r| r.iter().any(|r| r == ctx.route()));
        if !method_ok || !route_ok {
            self.refused.inc(["not_allowed"]);
            return Ok(refuse(403, "this API key may not be used here", &c.header));
        }
        // The credential stays at the gateway; the upstream learns who called.
        req.headers_mut().remove(&c.header);
        req.set_header(&c.forward_header, entry.consumer.as_bytes());
        wasmgate_sdk::log::field("consumer", &entry.consumer);
        Ok(req.into())
    }
}

export_filter!(ApiKey);
