//! The testkit runs a filter under the gateway's rules: its limits, its instance reuse, and a
//! failed call that fails only itself.

use std::time::{Duration, Instant};

use serde_json::json;
use wasmgate_sdk::{Action, Request, Response};
use wasmgate_testkit::{FilterError, Limits, TestFilter, TrapKind};

fn load(name: &str) -> TestFilter {
    TestFilter::load(wasmgate_artifacts::filter(name)).unwrap()
}

/// What `x-instance-requests` says after one request: how many requests its instance saw.
fn instance_requests(route: &wasmgate_testkit::TestRoute, query: &str) -> Option<String> {
    let out = route.on_request(Request::new("GET", &format!("/{query}")));
    out.ok()?;
    let resp = route.on_response(Response::new(200)).unwrap();
    resp.header("x-instance-requests").map(str::to_string)
}

#[test]
fn a_looping_filter_is_cut_at_its_deadline() {
    let limits = Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    };
    let route = load("fail")
        .with_limits(limits)
        .route(json!({ "mode": "loop" }))
        .unwrap();
    let started = Instant::now();
    let err = route.on_request(Request::new("GET", "/")).unwrap_err();
    assert!(
        matches!(
            err,
            FilterError::Trap {
                kind: TrapKind::Deadline,
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(route.metrics().failures, 1);
}

/// Each way of failing is told apart by the sandbox itself: an out-of-bounds read is a trap
/// even though its message speaks of memory, and only the memory cap's refusal is `memory`.
#[test]
fn every_failure_has_its_kind() {
    let filter = load("fail");
    for (mode, kind) in [
        ("error", "error"),
        ("panic", "trap"),
        ("stack", "trap"),
        ("out-of-bounds", "trap"),
        ("loop", "deadline"),
        ("alloc", "memory"),
    ] {
        let route = filter.route(json!({ "mode": mode })).unwrap();
        let err = route.on_request(Request::new("GET", "/")).unwrap_err();
        assert_eq!(err.kind(), kind, "{mode}: {err}");
    }
}

#[test]
fn instances_are_reused_only_when_the_filter_says_so_and_never_after_a_failure() {
    let reuse = load("counter-reuse").route(json!({})).unwrap();
    assert_eq!(instance_requests(&reuse, "").as_deref(), Some("1"));
    assert_eq!(instance_requests(&reuse, "").as_deref(), Some("2"));
    assert_eq!(instance_requests(&reuse, "?panic"), None);
    // The trapped instance is gone; the next request gets a fresh one.
    assert_eq!(instance_requests(&reuse, "").as_deref(), Some("1"));
    assert_eq!(reuse.metrics().failures, 1);

    let fresh = load("counter-fresh").route(json!({})).unwrap();
    for _ in 0..3 {
        assert_eq!(instance_requests(&fresh, "").as_deref(), Some("1"));
    }
    assert_eq!(fresh.metrics().instances_started, 3);
}

#[test]
fn a_component_the_gateway_refuses_is_refused_with_its_reason() {
    let err = TestFilter::load(wasmgate_artifacts::filter("legacy-v0-1"))
        .err()
        .expect("refused");
    assert!(err.contains("wasmgate:filter@0.1.0"), "{err}");
    let err = TestFilter::load(wasmgate_artifacts::filter("contract-v0-2-0"))
        .err()
        .expect("refused");
    assert!(
        err.contains("built for wasmgate:filter@0.2.0")
            && err.contains("rebuild it against wasmgate-sdk 0.3"),
        "{err}"
    );

    let err = load("fail").route(json!({ "mode": "nonsense" })).err();
    assert!(err.is_some(), "an unknown mode is a config error");
}

#[test]
fn a_filter_that_answers_is_an_answer_not_a_failure() {
    let route = load("deny").route(json!({ "status": 403 })).unwrap();
    let Action::Respond(resp) = route.on_request(Request::new("GET", "/")).unwrap() else {
        panic!("deny let a request through");
    };
    assert_eq!(resp.status(), 403);
}
