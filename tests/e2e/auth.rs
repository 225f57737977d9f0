//! auth-jwt, auth-apikey and oauth2-introspect against real upstreams, with tokens made here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmgate_tests::{TestGateway, Upstream};

fn key_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims, key).unwrap()
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iss": "https://idp.test", "aud": "api", "exp": now() + 600, "iat": now() })
}

async fn bearer(gw: &TestGateway, path: &str, token: &str) -> wasmgate_tests::TestResponse {
    let auth = format!("Bearer {token}");
    gw.request(
        "GET",
        path,
        &[("authorization", &auth), ("x-user-id", "spoofed")],
        "",
    )
    .await
}

fn jwt_route(name: &str, key_toml: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
prefix = "/{name}"
service = "svc"
[[routes.filters]]
name = "auth-jwt"
[routes.filters.config]
{key_toml}
issuer = "https://idp.test"
audience = ["api"]
required_claims = ["sub", "exp"]
forward_claims = {{ sub = "x-user-id" }}
"#
    )
}

fn pem_route(name: &str, file: &str, algs: &str) -> String {
    jwt_route(
        name,
        &format!(
            "public_key_pem = '''\n{}'''\nalgorithms = [{algs}]",
            key_file(file)
        ),
    )
}

#[tokio::test]
async fn jwt_accepts_every_algorithm_and_forwards_claims() {
    let up = Upstream::start("svc").await;
    let config = format!(
        "[services.svc]\nupstreams = [\"{}\"]\n{}{}{}{}{}",
        up.url(),
        jwt_route("hs", "secret = \"correct horse battery staple\""),
        pem_route(
            "rs",
            "rsa.pub",
            "\"RS256\", \"RS384\", \"RS512\", \"PS256\""
        ),
        pem_route("es256", "ec256.pub", "\"ES256\""),
        pem_route("es384", "ec384.pub", "\"ES384\""),
        pem_route("ed", "ed25519.pub", "\"EdDSA\""),
    );
    let gw = TestGateway::start(&config).await;

    let hs = EncodingKey::from_secret(b"correct horse battery staple");
    let rsa = EncodingKey::from_rsa_pem(key_file("rsa.key").as_bytes()).unwrap();
    let es256 = EncodingKey::from_ec_pem(key_file("ec256.key").as_bytes()).unwrap();
    let es384 = EncodingKey::from_ec_pem(key_file("ec384.key").as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(key_file("ed25519.key").as_bytes()).unwrap();
    let cases = [
        ("/hs", Algorithm::HS256, &hs),
        ("/hs", Algorithm::HS384, &hs),
        ("/hs", Algorithm::HS512, &hs),
        ("/rs", Algorithm::RS256, &rsa),
        ("/rs", Algorithm::RS384, &rsa),
        ("/rs", Algorithm::RS512, &rsa),
        ("/rs", Algorithm::PS256, &rsa),
        ("/es256", Algorithm::ES256, &es256),
        ("/es384", Algorithm::ES384, &es384),
        ("/ed", Algorithm::EdDSA, &ed),
    ];
    for (i, (path, alg, key)) in cases.into_iter().enumerate() {
        let sub = format!("user-{alg:?}");
        let r = bearer(&gw, path, &sign(alg, key, None, claims(&sub))).await;
        assert_eq!(r.status, 200, "{alg:?} on {path}: {}", r.text());
        let seen = &up.seen()[i];
        assert_eq!(
            seen.headers["x-user-id"],
            sub.as_str(),
            "the claim replaces the client's header"
        );
        assert_eq!(seen.headers.get_all("x-user-id").iter().count(), 1);
    }
}

#[tokio::test]
async fn jwt_rejects_bad_tokens_with_a_bearer_challenge() {
    let up = Upstream::start("svc").await;
    let config = format!(
        "[services.svc]\nupstreams = [\"{}\"]\n{}{}",
        up.url(),
        jwt_route("hs", "secret = \"s3cret\"\nleeway_seconds = 5"),
        pem_route("rs", "rsa.pub", "\"RS256\""),
    );
    let gw = TestGateway::start(&config).await;
    let hs = EncodingKey::from_secret(b"s3cret");
    let with = |patch: Value| {
        let mut c = claims("u");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(Algorithm::HS256, &hs, None, c)
    };
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims("u"))
    );
    // Algorithm confusion: an HS256 token whose "secret" is the RSA public key, sent to the
    // route that holds that public key.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(key_file("rsa.pub").as_bytes()),
        None,
        claims("u"),
    );

    let r = gw.get("/hs").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"wasmgate\"")
    );

    let cases = [
        (
            "/hs",
            with(json!({"exp": now() - 60})),
            "the token has expired",
        ),
        (
            "/hs",
            with(json!({"nbf": now() + 3600})),
            "the token is not valid yet",
        ),
        (
            "/hs",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"other"),
                None,
                claims("u"),
            ),
            "the signature is invalid",
        ),
        (
            "/hs",
            with(json!({"iss": "https://evil.test"})),
            "the token's issuer is not accepted",
        ),
        (
            "/hs",
            with(json!({"aud": ["other"]})),
            "the token's audience is not accepted",
        ),
        (
            "/hs",
            with(json!({"sub": null})),
            "the token lacks a required claim",
        ),
        (
            "/hs",
            alg_none.clone(),
            "the token is malformed or its algorithm is not supported",
        ),
        (
            "/rs",
            alg_none,
            "the token is malformed or its algorithm is not supported",
        ),
        ("/rs", confused, "the token's algorithm is not accepted"),
        (
            "/hs",
            "not.a.jwt".to_string(),
            "the token is malformed or its algorithm is not supported",
        ),
    ];
    for (path, token, why) in cases {
        let r = bearer(&gw, path, &token).await;
        assert_eq!(r.status, 401, "{why}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_token");
        assert_eq!(r.json()["error_description"], why);
        let challenge = r.header("www-authenticate").unwrap();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{challenge}"
        );
    }
    // Within the leeway is still fine.
    assert_eq!(
        bearer(&gw, "/hs", &with(json!({"exp": now() - 2})))
            .await
            .status,
        200
    );
    assert_eq!(up.hits(), 1, "no rejected token reached the upstream");
}

fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, file)| {
            let key = EncodingKey::from_rsa_pem(key_file(file).as_bytes()).unwrap();
            let mut jwk = serde_json::to_value(
                jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap(),
            )
            .unwrap();
            jwk["kid"] = json!(kid);
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

#[tokio::test]
async fn jwks_is_fetched_from_a_service_cached_and_rotated_after_refresh() {
    let current = Arc::new(Mutex::new(jwks(&[("k1", "rsa.key")])));
    let served = current.clone();
    let idp = Upstream::start_fn("idp", Duration::ZERO, move |_, _| {
        (200, served.lock().unwrap().clone())
    })
    .await;
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"
[services.svc]
upstreams = ["{}"]
[services.idp]
upstreams = ["{}"]

[[routes]]
name = "api"
prefix = "/"
service = "svc"
[[routes.filters]]
name = "auth-jwt"
services = ["idp"]
config = {{ jwks_service = "idp", jwks_refresh_seconds = 1, forward_claims = {{ sub = "x-user-id" }} }}
"#,
        up.url(),
        idp.url()
    ))
    .await;
    let k1 = EncodingKey::from_rsa_pem(key_file("rsa.key").as_bytes()).unwrap();
    let k2 = EncodingKey::from_rsa_pem(key_file("rsa2.key").as_bytes()).unwrap();
    let t1 = sign(Algorithm::RS256, &k1, Some("k1"), claims("one"));
    let t2 = sign(Algorithm::RS256, &k2, Some("k2"), claims("two"));

    assert_eq!(bearer(&gw, "/a", &t1).await.status, 200);
    assert_eq!(bearer(&gw, "/b", &t1).await.status, 200);
    assert_eq!(idp.hits(), 1, "the JWKS is cached between requests");
    assert_eq!(up.seen()[0].headers["x-user-id"], "one");

    // Rotate: the idp now publishes only k2.
    *current.lock().unwrap() = jwks(&[("k2", "rsa2.key")]);
    assert_eq!(
        bearer(&gw, "/c", &t2).await.status,
        401,
        "the cached set does not know k2 yet"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        bearer(&gw, "/d", &t2).await.status,
        200,
        "k2 is picked up after the refresh"
    );
    assert_eq!(bearer(&gw, "/e", &t1).await.status, 401, "k1 is gone");
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn api_keys_from_header_or_query_map_to_consumers() {
    let up = Upstream::start("svc").await;
    let hash = |k: &str| format!("sha256:{:x}", Sha256::digest(k.as_bytes()));
    let gw = TestGateway::start(&format!(
        r#"
[services.svc]
upstreams = ["{}"]
[[routes]]
name = "api"
prefix = "/"
service = "svc"
[[routes.filters]]
name = "auth-apikey"
[routes.filters.config]
query = "api_key"
keys = [
    {{ hash = "{}", consumer = "mobile-app" }},
    {{ hash = "{}", consumer = "reporting", methods = ["GET"] }},
]
"#,
        up.url(),
        hash("s3cret-mobile"),
        hash("s3cret-reports")
    ))
    .await;

    let r = gw
        .request(
            "GET",
            "/x",
            &[("x-api-key", "s3cret-mobile"), ("x-consumer", "spoofed")],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = &up.seen()[0];
    assert_eq!(seen.headers["x-consumer"], "mobile-app");
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "the key is not forwarded"
    );

    assert_eq!(
        gw.get("/x?api_key=s3cret-reports").await.status,
        200,
        "key in the query"
    );
    assert_eq!(up.seen()[1].headers["x-consumer"], "reporting");

    let r = gw.get("/x").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (401, json!("missing API key"))
    );
    let r = gw.request("GET", "/x", &[("x-api-key", "guess")], "").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (403, json!("unknown API key"))
    );
    let r = gw
        .request("POST", "/x", &[("x-api-key", "s3cret-reports")], "{}")
        .await;
    assert_eq!(r.status, 403, "this key is limited to GET");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn introspection_checks_active_and_scope_and_caches_results() {
    let idp = Upstream::start_fn("idp", Duration::ZERO, |seen, body| {
        let body = String::from_utf8_lossy(body);
        assert_eq!(seen.headers["content-type"], "application/x-www-form-urlencoded");
        assert_eq!(seen.headers["authorization"], "Basic Z2F0ZXdheTpzM2NyZXQ=", "client credentials");
        let exp = now() + 120;
        let answer = if body.contains("token=good") {
            json!({"active": true, "scope": "read write", "sub": "u-1", "client_id": "web", "exp": exp})
        } else if body.contains("token=readonly") {
            json!({"active": true, "scope": "read", "sub": "u-2", "exp": exp})
        } else {
            json!({"active": false})
        };
        (200, answer.to_string())
    })
    .await;
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"
[services.svc]
upstreams = ["{}"]
[services.idp]
upstreams = ["{}"]
[[routes]]
name = "api"
prefix = "/"
service = "svc"
[[routes.filters]]
name = "oauth2-introspect"
services = ["idp"]
config = {{ service = "idp", client_id = "gateway", client_secret = "s3cret", required_scopes = ["write"], forward = {{ sub = "x-user-id", scope = "x-scopes" }} }}
"#,
        up.url(),
        idp.url()
    ))
    .await;

    for _ in 0..3 {
        let r = bearer(&gw, "/x", "good").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.seen()[0].headers["x-user-id"], "u-1");
    assert_eq!(up.seen()[0].headers["x-scopes"], "read write");
    assert_eq!(
        idp.hits(),
        1,
        "repeated requests reuse the cached introspection"
    );

    let r = bearer(&gw, "/x", "revoked").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (401, json!("invalid_token"))
    );
    let r = bearer(&gw, "/x", "readonly").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (403, json!("insufficient_scope"))
    );
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("scope=\"write\"")
    );
    assert_eq!(gw.get("/x").await.status, 401);
    assert_eq!(up.hits(), 3);
}
