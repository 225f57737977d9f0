//! The built `headers.wasm` in the gateway's sandbox (wasmgate-testkit).

use serde_json::json;
use wasmgate_sdk::{Action, Request, Response};
use wasmgate_testkit::TestFilter;

fn headers() -> TestFilter {
    TestFilter::load(wasmgate_artifacts::filter("headers")).unwrap()
}

#[test]
fn edits_both_sides_and_serves_many_requests_with_one_instance() {
    let route = headers()
        .route(json!({
            "request": { "set": { "x-tenant": "acme" }, "remove": ["x-debug"] },
            "response": { "set": { "x-powered-by": "wasmgate" }, "remove": ["server"] },
        }))
        .unwrap();
    for _ in 0..3 {
        let req = Request::new("GET", "/users/1").with_header("x-debug", "1");
        let Action::Continue(req) = route.on_request(req).unwrap() else {
            panic!("headers never answers itself");
        };
        assert_eq!(req.header("x-tenant"), Some("acme"));
        assert_eq!(req.header("x-debug"), None);
        let resp = route
            .on_response(Response::new(200).with_header("server", "nginx"))
            .unwrap();
        assert_eq!(resp.header("x-powered-by"), Some("wasmgate"));
        assert_eq!(resp.header("server"), None);
    }
    let metrics = route.metrics();
    assert_eq!((metrics.request_calls, metrics.response_calls), (3, 3));
    assert_eq!(
        metrics.instances_started, 1,
        "the filter reuses its instance"
    );
}

#[test]
fn a_side_without_edits_is_never_called() {
    let route = headers()
        .route(json!({ "request": { "set": { "x-a": "1" } } }))
        .unwrap();
    assert!(!route.needs().response_phase);
    route.on_request(Request::new("GET", "/")).unwrap();
    let resp = route.on_response(Response::new(204)).unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(route.metrics().response_calls, 0);
}

#[test]
fn an_invalid_header_name_in_the_config_is_rejected() {
    let err = headers()
        .route(json!({ "request": { "set": { "bad name": "x" } } }))
        .err()
        .expect("config rejected");
    assert!(err.contains("bad name"), "{err}");
}
