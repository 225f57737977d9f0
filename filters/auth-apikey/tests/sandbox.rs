//! The built `auth-apikey.wasm` in the gateway's sandbox (wasmgate-testkit).

use serde_json::json;
use wasmgate_sdk::{Action, Request};
use wasmgate_testkit::{TestFilter, TestRoute};

/// `printf %s test | sha256sum`
const TEST_KEY_HASH: &str =
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn route() -> TestRoute {
    TestFilter::load(wasmgate_artifacts::filter("auth-apikey"))
        .unwrap()
        .route(json!({
            "query": "api_key",
            "keys": [{ "hash": TEST_KEY_HASH, "consumer": "mobile-app" }],
        }))
        .unwrap()
}

fn refused(action: Action) -> (u16, String) {
    match action {
        Action::Respond(resp) => (
            resp.status(),
            String::from_utf8_lossy(resp.body().unwrap_or_default()).into_owned(),
        ),
        Action::Continue(req) => panic!("let through: {req:?}"),
    }
}

#[test]
fn a_known_key_passes_with_its_consumer_and_without_the_key() {
    let route = route();
    let req = Request::new("GET", "/orders")
        .with_header("x-api-key", "test")
        .with_header("x-consumer", "forged");
    let Action::Continue(req) = route.on_request(req).unwrap() else {
        panic!("refused a known key");
    };
    assert_eq!(req.header("x-consumer"), Some("mobile-app"));
    assert_eq!(req.header("x-api-key"), None, "the key is not forwarded");

    let Action::Continue(_) = route
        .on_request(Request::new("GET", "/orders?api_key=test"))
        .unwrap()
    else {
        panic!("refused the key in the query");
    };
}

#[test]
fn a_missing_or_unknown_key_is_refused() {
    let route = route();
    let (status, body) = refused(route.on_request(Request::new("GET", "/")).unwrap());
    assert_eq!(status, 401);
    assert!(body.contains("missing API key"), "{body}");
    let req = Request::new("GET", "/").with_header("x-api-key", "guess");
    let (status, body) = refused(route.on_request(req).unwrap());
    assert_eq!(status, 403);
    assert!(body.contains("unknown API key"), "{body}");
    assert_eq!(
        route.metrics().failures,
        0,
        "a refusal is an answer, not a failure"
    );
}
