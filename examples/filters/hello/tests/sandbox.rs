//! The built component in the gateway's real sandbox (same limits, same instance rules): the
//! wasmgate binary's, through wasmgate-test. The first run builds the crate for wasm32-wasip2.

use serde_json::json;
use wasmgate_sdk::{Action, Request, Response};
use wasmgate_test::TestFilter;

#[test]
fn the_component_greets_requests_and_tags_responses() {
    let filter = TestFilter::build(env!("CARGO_MANIFEST_DIR"));
    let route = filter.route(json!({ "greeting": "hi" })).unwrap();

    let Action::Continue(req) = route.on_request(Request::new("GET", "/users")).unwrap() else {
        panic!("expected the request to continue");
    };
    assert_eq!(req.header("x-greeting"), Some("hi"));
    let resp = route.on_response(Response::new(200)).unwrap();
    assert_eq!(resp.header("x-filtered-by"), Some("hello"));

    let Action::Respond(resp) = route.on_request(Request::new("GET", "/blocked")).unwrap() else {
        panic!("expected a refusal");
    };
    assert_eq!(resp.status(), 403);
    assert!(
        route
            .logs()
            .iter()
            .any(|l| l.message.contains("refused /blocked"))
    );
}

#[test]
fn an_empty_greeting_is_a_config_error() {
    let filter = TestFilter::build(env!("CARGO_MANIFEST_DIR"));
    let err = filter.route(json!({ "greeting": "" })).err().unwrap();
    assert!(err.contains("greeting must not be empty"), "{err}");
}
