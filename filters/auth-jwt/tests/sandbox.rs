//! The built `auth-jwt.wasm` in the gateway's sandbox (wasmgate-testkit), with its JWKS service
//! stubbed.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use wasmgate_sdk::{Action, Request, Response};
use wasmgate_testkit::{Level, MetricValue, TestFilter, TestRoute};

/// HS256 with secret `wasmgate-demo-secret`, `sub: demo-user`, expires in 2100 (the README's
/// demo token).
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkZW1vLXVzZXIiLCJleHAiOjQxMDI0NDQ4MDB9.bVtlg4IDUbM_bsfVLWEWtfwWZQCPtafWRJTytHVyJ6k";

fn filter() -> TestFilter {
    TestFilter::load(wasmgate_artifacts::filter("auth-jwt")).unwrap()
}

fn with_token(token: &str) -> Request {
    Request::new("GET", "/profile").with_header("authorization", format!("Bearer {token}"))
}

/// A route whose keys come from the `idp` service.
fn jwks_route() -> TestRoute {
    filter()
        .route(json!({
            "jwks_service": "idp",
            "forward_claims": { "sub": "x-user-id" },
        }))
        .unwrap()
}

/// The repository's test RSA key.
const RSA_KEY: &str = include_str!("../../../tests/keys/rsa.key");

/// An RS256 token for `sub: jwks-user`, signed with [`RSA_KEY`], valid for ten minutes.
fn rsa_token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap();
    encode(&header, &json!({ "sub": "jwks-user", "exp": exp }), &key).unwrap()
}

/// The JWKS holding [`RSA_KEY`]'s public half as `k1`.
fn jwks() -> Response {
    let key = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap();
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!("k1");
    Response::json(200, &json!({ "keys": [jwk] }))
}

#[test]
fn a_valid_token_passes_with_its_claims_forwarded() {
    let route = filter()
        .route(json!({
            "secret": "wasmgate-demo-secret",
            "forward_claims": { "sub": "x-user-id" },
        }))
        .unwrap();
    let req = with_token(TOKEN).with_header("x-user-id", "forged");
    let Action::Continue(req) = route.on_request(req).unwrap() else {
        panic!("refused a valid token");
    };
    assert_eq!(req.header("x-user-id"), Some("demo-user"));

    let Action::Respond(resp) = route.on_request(with_token("not.a.token")).unwrap() else {
        panic!("let a malformed token through");
    };
    assert_eq!(resp.status(), 401);
    assert!(
        resp.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
}

#[test]
fn keys_from_the_jwks_service_are_fetched_once_and_cached() {
    let route = jwks_route().service("idp", |_| jwks());
    for _ in 0..3 {
        let Action::Continue(req) = route.on_request(with_token(&rsa_token())).unwrap() else {
            panic!("refused a valid token");
        };
        assert_eq!(req.header("x-user-id"), Some("jwks-user"));
    }
    let calls = route.service_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].request.path(), "/.well-known/jwks.json");
}

#[test]
fn an_unreachable_jwks_service_refuses_with_401_and_logs_why() {
    let route = jwks_route().service_down("idp");
    let Action::Respond(resp) = route.on_request(with_token(&rsa_token())).unwrap() else {
        panic!("let a token through without keys");
    };
    assert_eq!(resp.status(), 401);
    let body = String::from_utf8_lossy(resp.body().unwrap());
    assert!(body.contains("the signing keys are unavailable"), "{body}");
    let logs = route.logs();
    assert!(
        logs.iter()
            .any(|l| l.level == Level::WARN && l.message.contains("fetching the JWKS")),
        "{logs:?}"
    );
}

#[test]
fn a_service_the_route_does_not_grant_is_denied() {
    let route = jwks_route().service("other", |_| jwks());
    let Action::Respond(resp) = route.on_request(with_token(&rsa_token())).unwrap() else {
        panic!("let a token through without keys");
    };
    assert_eq!(resp.status(), 401);
    assert!(
        route.service_calls().is_empty(),
        "the call never left the filter's grant"
    );
}

#[test]
fn refusals_are_counted_by_reason_and_the_subject_is_logged() {
    let route = filter()
        .route(json!({ "secret": "wasmgate-demo-secret" }))
        .unwrap();
    let expired = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "old", "exp": 1_000_000 }),
        &EncodingKey::from_secret(b"wasmgate-demo-secret"),
    )
    .unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "eve" }),
        &EncodingKey::from_secret(b"another-secret"),
    )
    .unwrap();
    for req in [
        Request::new("GET", "/"),
        Request::new("GET", "/"),
        with_token(&expired),
        with_token(&forged),
    ] {
        match route.on_request(req).unwrap() {
            Action::Respond(resp) => assert_eq!(resp.status(), 401),
            Action::Continue(_) => panic!("let a bad request through"),
        }
    }
    assert!(route.log_fields().is_empty(), "nobody was named");
    assert!(matches!(
        route.on_request(with_token(TOKEN)).unwrap(),
        Action::Continue(_)
    ));
    assert_eq!(
        route.log_fields(),
        vec![("subject".to_string(), "demo-user".to_string())]
    );

    let refused = route.metric("refused").expect("defined when configured");
    let counts: Vec<(Vec<String>, MetricValue)> = refused.series();
    let count = |reason: &str| {
        counts
            .iter()
            .find(|(labels, _)| labels == &["test", reason])
            .map(|(_, v)| v.clone())
    };
    assert_eq!(count("missing"), Some(MetricValue::Number(2.0)));
    assert_eq!(count("expired"), Some(MetricValue::Number(1.0)));
    assert_eq!(count("signature"), Some(MetricValue::Number(1.0)));
    assert_eq!(counts.len(), 3, "{counts:?}");
}

/// `secret_base64` is the secret's bytes in base64: a token signed with those bytes passes, one
/// signed with the base64 text does not, nor one whose claims were changed after signing.
#[test]
fn a_base64_secret_is_decoded_once_and_checks_every_byte_of_the_token() {
    let secret = [0u8, 1, 2, 250, 251, 252, b'k', b'e', b'y'];
    let text = "AAEC+vv8a2V5";
    let route = filter()
        .route(json!({ "secret_base64": text, "algorithms": ["HS512"] }))
        .unwrap();
    let sign = |key: &[u8], claims| {
        encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let good = sign(&secret, json!({ "sub": "b64-user" }));
    let Action::Continue(_) = route.on_request(with_token(&good)).unwrap() else {
        panic!("a token signed with the decoded secret is refused");
    };
    let status = |token: &str| match route.on_request(with_token(token)).unwrap() {
        Action::Respond(resp) => resp.status(),
        Action::Continue(_) => 200,
    };
    assert_eq!(
        status(&sign(text.as_bytes(), json!({ "sub": "b64-user" }))),
        401
    );
    // The claims of another token, under the good token's signature.
    let other = sign(&secret, json!({ "sub": "admin" }));
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    assert_eq!(status(&parts.join(".")), 401);
    // HS256 is not among the configured algorithms.
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "b64-user" }),
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    assert_eq!(status(&hs256), 401);
}
