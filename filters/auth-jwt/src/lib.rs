//! `auth-jwt`: bearer JWT verification with HS256/384/512, RS256/384/512, PS256/384/512,
//! ES256/384 and EdDSA. Keys come from config (a secret, a PEM public key, an inline JWKS) or
//! from a JWKS document fetched from a named service and cached for a refresh interval.
//!
//! Only algorithms of the configured key's family are accepted, so `alg: none` and algorithm
//! confusion (an HS token checked against an RSA public key) are rejected. Time claims are
//! checked against the gateway's clock with a leeway.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};
use wasmgate_sdk::metrics::Counter;
use wasmgate_sdk::services::{self, Call};
use wasmgate_sdk::{
    Action, Context, Error, Filter, Needs, Request, Response, cache, export_filter, host,
};

fn default_jwks_path() -> String {
    "/.well-known/jwks.json".into()
}

fn default_refresh() -> u64 {
    300
}

fn default_leeway() -> u64 {
    30
}

/// The filter's config. Exactly one key source: `secret`, `secret_base64`, `public_key_pem`,
/// `jwks` or `jwks_service`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HMAC secret (HS256/384/512).
    pub secret: Option<String>,
    /// HMAC secret, base64.
    pub secret_base64: Option<String>,
    /// A PEM public key (RSA, EC or Ed25519); `algorithms` says which.
    pub public_key_pem: Option<String>,
    /// A JWKS document, inline, as JSON text.
    pub jwks: Option<String>,
    /// Fetch the JWKS from this service (granted to the filter on the route)...
    pub jwks_service: Option<String>,
    /// ...at this path (default `/.well-known/jwks.json`)...
    #[serde(default = "default_jwks_path")]
    pub jwks_path: String,
    /// ...and fetch it again after this many seconds (default 300).
    #[serde(default = "default_refresh")]
    pub jwks_refresh_seconds: u64,
    /// Accepted algorithms. Required with `public_key_pem`; otherwise every algorithm of the
    /// key's family.
    pub algorithms: Option<Vec<Algorithm>>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted audiences: `aud` must contain one of them.
    pub audience: Option<Vec<String>>,
    /// Allowed clock skew for `exp` and `nbf`, seconds (default 30).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Claims that must be present (for example `exp`, `sub`).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claims sent upstream as headers: `{ sub = "x-user-id" }`. Client-sent headers of those
    /// names are removed first.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

enum Keys {
    /// One key and the algorithms it may verify.
    Static(DecodingKey, Vec<Algorithm>),
    /// An HMAC secret, prepared, and the algorithms it may verify.
    Secret(Box<Secret>, Vec<Algorithm>),
    Jwks(JwkSet),
    Remote {
        service: String,
        path: String,
        refresh: Duration,
    },
}

pub struct AuthJwt {
    config: Config,
    keys: Keys,
    /// `wasmgate_filter_auth_jwt_refused_total{route, reason}`.
    refused: Counter<1>,
}

/// The `reason` label for a refusal's description (a short, bounded set).
fn reason(description: &str) -> &'static str {
    match description {
        "the token is malformed or its algorithm is not supported"
        | "the exp claim is not a number"
        | "the nbf claim is not a number" => "malformed",
        "the token's algorithm is not accepted"
        | "the token's algorithm does not match its key" => "algorithm",
        "the signing keys are unavailable" => "keys_unavailable",
        "no key matches the token" | "the matching key is unusable" => "unknown_key",
        "the signature is invalid" => "signature",
        "the token has expired" => "expired",
        "the token is not valid yet" => "not_yet_valid",
        "the token's issuer is not accepted" => "issuer",
        "the token's audience is not accepted" => "audience",
        "the token lacks a required claim" => "missing_claim",
        _ => "invalid",
    }
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// A 401 with the RFC 6750 `invalid_token` challenge.
fn invalid(description: &str) -> Action {
    Response::bearer_error(401, "invalid_token", description, None).into()
}

fn jwk_allows(jwk: &Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::AlgorithmFamily as F;
    let family_ok = matches!(
        (&jwk.algorithm, alg.family()),
        (AlgorithmParameters::RSA(_), F::Rsa)
            | (AlgorithmParameters::EllipticCurve(_), F::Ec)
            | (AlgorithmParameters::OctetKeyPair(_), F::Ed)
    );
    let declared_ok = jwk
        .common
        .key_algorithm
        .is_none_or(|declared| format!("{declared:?}") == format!("{alg:?}"));
    family_ok && declared_ok
}

/// An HMAC secret with its inner and outer pads hashed once, when the config is read: each
/// token then costs the hash of its own bytes only.
struct Secret {
    hs256: Hmac<Sha256>,
    hs384: Hmac<Sha384>,
    hs512: Hmac<Sha512>,
}

impl Secret {
    fn new(secret: &[u8]) -> Secret {
        // HMAC takes a key of any length.
        let expect = "HMAC takes keys of any length";
        Secret {
            hs256: Hmac::new_from_slice(secret).expect(expect),
            hs384: Hmac::new_from_slice(secret).expect(expect),
            hs512: Hmac::new_from_slice(secret).expect(expect),
        }
    }

    /// Whether `signature` is `alg`'s MAC of `input`, compared in constant time.
    fn verify(&self, alg: Algorithm, input: &[u8], signature: &[u8]) -> bool {
        fn check<M: Mac + Clone>(mac: &M, input: &[u8], signature: &[u8]) -> bool {
            mac.clone()
                .chain_update(input)
                .verify_slice(signature)
                .is_ok()
        }
        match alg {
            Algorithm::HS256 => check(&self.hs256, input, signature),
            Algorithm::HS384 => check(&self.hs384, input, signature),
            Algorithm::HS512 => check(&self.hs512, input, signature),
            _ => false,
        }
    }
}

/// The claims of an HS token checked with a prepared secret: one pass over the token, each
/// part decoded once (a general `jsonwebtoken::decode` decodes the header and the claims
/// twice and hashes the key's pads again for every token).
fn verify_secret(
    token: &str,
    secret: &Secret,
    algs: &[Algorithm],
) -> Result<Map<String, Value>, &'static str> {
    const MALFORMED: &str = "the token is malformed or its algorithm is not supported";
    // Split as `jsonwebtoken` does: the signature after the last dot, the claims after the
    // one before (a header holding a dot fails to decode).
    let (input, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
    let (_, claims) = input.rsplit_once('.').ok_or(MALFORMED)?;
    let alg = decode_header(token).map_err(|_| MALFORMED)?.alg;
    if !algs.contains(&alg) {
        return Err("the token's algorithm is not accepted");
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "the signature is invalid")?;
    if !secret.verify(alg, input.as_bytes(), &signature) {
        return Err("the signature is invalid");
    }
    let claims = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| "the signature is invalid")?;
    serde_json::from_slice(&claims).map_err(|_| "the signature is invalid")
}

impl AuthJwt {
    fn allowed(&self, alg: Algorithm) -> bool {
        match &self.config.algorithms {
            Some(list) => list.contains(&alg),
            None => {
                alg.family() != jsonwebtoken::AlgorithmFamily::Hmac
                    || matches!(self.keys, Keys::Static(..) | Keys::Secret(..))
            }
        }
    }

    fn remote_jwks(&self, service: &str, path: &str, refresh: Duration) -> Result<JwkSet, String> {
        let key = format!("jwks:{service}{path}");
        if let Some(hit) = cache::get(&key)
            && let Ok(set) = serde_json::from_slice::<JwkSet>(&hit)
        {
            return Ok(set);
        }
        let resp = services::call(Call::get(service, path).header("accept", "application/json"))
            .map_err(|e| format!("fetching the JWKS: {e}"))?;
        if !resp.is_success() {
            return Err(format!(
                "fetching the JWKS: service answered {}",
                resp.status
            ));
        }
        let set: JwkSet =
            serde_json::from_slice(&resp.body).map_err(|e| format!("the JWKS is invalid: {e}"))?;
        cache::set(&key, &resp.body, refresh);
        Ok(set)
    }

    fn verify(&self, token: &str) -> Result<Map<String, Value>, &'static str> {
        if let Keys::Secret(secret, algs) = &self.keys {
            let claims = verify_secret(token, secret, algs)?;
            self.check_claims(&claims)?;
            return Ok(claims);
        }
        let header = decode_header(token)
            .map_err(|_| "the token is malformed or its algorithm is not supported")?;
        let alg = header.alg;
        if !self.allowed(alg) {
            return Err("the token's algorithm is not accepted");
        }
        let remote;
        let key = match &self.keys {
            Keys::Static(key, algs) => {
                if !algs.contains(&alg) {
                    return Err("the token's algorithm is not accepted");
                }
                std::borrow::Cow::Borrowed(key)
            }
            Keys::Secret(..) => unreachable!("verified by verify_secret"),
            Keys::Jwks(_) | Keys::Remote { .. } => {
                let set = match &self.keys {
                    Keys::Remote {
                        service,
                        path,
                        refresh,
                    } => {
                        remote = self.remote_jwks(service, path, *refresh).map_err(|e| {
                            wasmgate_sdk::log::warn(&e);
                            "the signing keys are unavailable"
                        })?;
                        &remote
                    }
                    Keys::Jwks(set) => set,
                    Keys::Static(..) | Keys::Secret(..) => unreachable!("handled above"),
                };
                let jwk = match &header.kid {
                    Some(kid) => set.find(kid),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                }
                .ok_or("no key matches the token")?;
                if !jwk_allows(jwk, alg) {
                    return Err("the token's algorithm does not match its key");
                }
                std::borrow::Cow::Owned(
                    DecodingKey::from_jwk(jwk).map_err(|_| "the matching key is unusable")?,
                )
            }
        };
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|_| "the signature is invalid")?;
        self.check_claims(&data.claims)?;
        Ok(data.claims)
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), &'static str> {
        let c = &self.config;
        let now = host::now_ms() / 1000;
        let number = |name: &str| claims.get(name).and_then(Value::as_u64);
        if claims.contains_key("exp") {
            let exp = number("exp").ok_or("the exp claim is not a number")?;
            if exp + c.leeway_seconds <= now {
                return Err("the token has expired");
            }
        }
        if claims.contains_key("nbf") {
            let nbf = number("nbf").ok_or("the nbf claim is not a number")?;
            if nbf > now + c.leeway_seconds {
                return Err("the token is not valid yet");
            }
        }
        if let Some(issuer) = &c.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err("the token's issuer is not accepted");
        }
        if let Some(accepted) = &c.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => accepted.contains(a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| accepted.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err("the token's audience is not accepted");
            }
        }
        if c.required_claims
            .iter()
            .any(|name| !claims.contains_key(name))
        {
            return Err("the token lacks a required claim");
        }
        Ok(())
    }
}

impl Filter for AuthJwt {
    type Config = Config;
    // Nothing is kept between requests: `self` is only the parsed config.

    fn new(config: Config) -> Result<Self, Error> {
        let sources = [
            config.secret.is_some(),
            config.secret_base64.is_some(),
            config.public_key_pem.is_some(),
            config.jwks.is_some(),
            config.jwks_service.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(Error::msg(
                "give exactly one key source: secret, secret_base64, public_key_pem, jwks or jwks_service",
            ));
        }
        let algorithms = config.algorithms.clone();
        let keys = if let Some(secret) = &config.secret {
            Keys::Secret(
                Box::new(Secret::new(secret.as_bytes())),
                hmac_algs(algorithms)?,
            )
        } else if let Some(secret) = &config.secret_base64 {
            let secret = STANDARD
                .decode(secret)
                .map_err(|e| Error::msg(format!("secret_base64: {e}")))?;
            Keys::Secret(Box::new(Secret::new(&secret)), hmac_algs(algorithms)?)
        } else if let Some(pem) = &config.public_key_pem {
            use jsonwebtoken::AlgorithmFamily as F;
            let algs = algorithms
                .ok_or_else(|| Error::msg("public_key_pem needs `algorithms`, e.g. [\"RS256\"]"))?;
            let family = algs
                .first()
                .map(|a| a.family())
                .ok_or_else(|| Error::msg("algorithms is empty"))?;
            if algs.iter().any(|a| a.family() != family) {
                return Err(Error::msg("algorithms must all be of the key's family"));
            }
            let key = match family {
                F::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()),
                F::Ec => DecodingKey::from_ec_pem(pem.as_bytes()),
                F::Ed => DecodingKey::from_ed_pem(pem.as_bytes()),
                F::Hmac => return Err(Error::msg("HS algorithms take `secret`, not a public key")),
            }
            .map_err(|e| Error::msg(format!("public_key_pem: {e}")))?;
            Keys::Static(key, algs)
        } else if let Some(jwks) = &config.jwks {
            Keys::Jwks(serde_json::from_str(jwks).map_err(|e| Error::msg(format!("jwks: {e}")))?)
        } else {
            if config
                .algorithms
                .as_ref()
                .is_some_and(|a| a.iter().any(|a| HMAC.contains(a)))
            {
                return Err(Error::msg("HS algorithms cannot be used with a JWKS"));
            }
            Keys::Remote {
                service: config.jwks_service.clone().unwrap_or_default(),
                path: config.jwks_path.clone(),
                refresh: Duration::from_secs(config.jwks_refresh_seconds.max(1)),
            }
        };
        let refused = Counter::define(
            "refused",
            "Requests refused, by reason (missing, expired, signature, ...)",
            ["reason"],
        )?;
        Ok(Self {
            config,
            keys,
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

    fn on_request(&self, mut req: Request, _ctx: &Context) -> Result<Action, Error> {
        let token = req.bearer_token().map(str::to_string);
        let Some(token) = token else {
            self.refused.inc(["missing"]);
            return Ok(Response::bearer_missing().into());
        };
        let claims = match self.verify(&token) {
            Ok(claims) => claims,
            Err(why) => {
                self.refused.inc([reason(why)]);
                return Ok(invalid(why));
            }
        };
        if let Some(Value::String(subject)) = claims.get("sub") {
            wasmgate_sdk::log::field("subject", subject);
        }
        for (claim, header) in &self.config.forward_claims {
            req.headers_mut().remove(header);
            match claims.get(claim) {
                Some(Value::String(s)) => req.set_header(header, s.as_bytes()),
                Some(Value::Null) | None => {}
                Some(other) => req.set_header(header, other.to_string().into_bytes()),
            }
        }
        Ok(req.into())
    }
}

fn hmac_algs(configured: Option<Vec<Algorithm>>) -> Result<Vec<Algorithm>, Error> {
    let algs = configured.unwrap_or_else(|| HMAC.to_vec());
    if algs.iter().any(|a| !HMAC.contains(a)) {
        return Err(Error::msg("a secret verifies only HS256, HS384 and HS512"));
    }
    Ok(algs)
}

export_filter!(AuthJwt);
