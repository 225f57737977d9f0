//! `wasmgate-test` against this crate's `wasmgate filter test-server`: real components in the
//! sandbox of the binary, stubs answered across the pipe, failures typed, a kit of another WIT
//! version refused.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use wasmgate_sdk::{Action, Request, Response};
use wasmgate_test::{Level, TestFilter};

const BINARY: &str = env!("CARGO_BIN_EXE_wasmgate");

fn load(name: &str) -> TestFilter {
    static SET: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before the kit reads it; no other thread of this test binary reads or
    // writes the environment meanwhile (the kit starts its server under the same Once's
    // ordering, after this).
    SET.call_once(|| unsafe { std::env::set_var("WASMGATE", BINARY) });
    TestFilter::load(wasmgate_artifacts::filter(name)).unwrap()
}

#[test]
fn a_phase_runs_in_the_binary_and_its_service_calls_come_back_to_the_test() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let route = load("call-service")
        .route(json!({ "service": "users", "path": "/whoami" }))
        .unwrap()
        .service("users", move |req| {
            assert_eq!(req.path(), "/whoami");
            seen.fetch_add(1, Ordering::Relaxed);
            Response::text(203, "me")
        });
    assert!(!route.needs().response_phase);
    let Action::Continue(req) = route.on_request(Request::new("GET", "/x")).unwrap() else {
        panic!("call-service never answers");
    };
    assert_eq!(req.header("x-called"), Some("203"));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(route.metrics().service_calls, 1);

    let down = load("call-service")
        .route(json!({ "service": "users", "path": "/whoami" }))
        .unwrap()
        .service_down("users");
    let Action::Continue(req) = down.on_request(Request::new("GET", "/x")).unwrap() else {
        panic!("call-service never answers");
    };
    assert_eq!(req.header("x-called"), Some("failed"));
}

#[test]
fn response_headers_set_in_the_request_phase_reach_the_response_phase() {
    let route = load("headers")
        .route(json!({ "response": { "set": { "x-served-by": "kit" } } }))
        .unwrap();
    assert!(route.needs().request_phase && !route.needs().response_phase);
    route.on_request(Request::new("GET", "/")).unwrap();
    let resp = route.on_response(Response::new(200)).unwrap();
    assert_eq!(resp.header("x-served-by"), Some("kit"));
}

#[test]
fn failures_come_back_typed_and_logs_come_back_with_their_phase() {
    let route = load("fail").route(json!({ "mode": "panic" })).unwrap();
    let err = route.on_request(Request::new("GET", "/x")).unwrap_err();
    assert_eq!(err.kind, "trap", "{err}");

    let route = load("fail").route(json!({ "mode": "error" })).unwrap();
    let err = route.on_request(Request::new("GET", "/x")).unwrap_err();
    assert_eq!(err.kind, "error", "{err}");

    let route = load("auth-jwt")
        .route(json!({ "jwks_service": "idp" }))
        .unwrap()
        .service_down("idp");
    let token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1In0.c2ln";
    let Action::Respond(resp) = route
        .on_request(
            Request::new("GET", "/").with_header("authorization", format!("Bearer {token}")),
        )
        .unwrap()
    else {
        panic!("let a token through without keys");
    };
    assert_eq!(resp.status(), 401);
    let logs = route.logs();
    assert!(
        logs.iter()
            .any(|l| l.level == Level::Warn && l.message.contains("fetching the JWKS")),
        "{logs:?}"
    );
}

#[test]
fn bad_configs_and_bad_components_are_refused_with_the_gateways_reason() {
    let err = load("headers")
        .route(json!({ "request": { "set": { "bad name": "v" } } }))
        .err()
        .unwrap();
    assert!(err.contains("bad name"), "{err}");

    let refused = TestFilter::load(wasmgate_artifacts::filter("contract-v0-2-0"))
        .err()
        .unwrap();
    assert!(refused.contains("wasmgate-sdk 0.3"), "{refused}");
}

#[test]
fn a_kit_of_another_wit_version_is_told_which_to_use() {
    let mut server = Command::new(BINARY)
        .args(["filter", "test-server"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    writeln!(stdin, r#"{{"op":"hello","version":"0.2.0"}}"#).unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"error\""), "{line}");
    assert!(line.contains("wasmgate-test 0.3"), "{line}");
    drop(stdin);
    assert!(server.wait().unwrap().success(), "it ends when stdin does");
}
