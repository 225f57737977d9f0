//! The built `rate-limit.wasm` in the gateway's sandbox (wasmgate-testkit).

use serde_json::json;
use wasmgate_sdk::{Action, Context, Request, Response};
use wasmgate_testkit::{MetricValue, TestFilter, TestRoute};

fn route(config: serde_json::Value) -> TestRoute {
    TestFilter::load(wasmgate_artifacts::filter("rate-limit"))
        .unwrap()
        .route(config)
        .unwrap()
        .context(Context::new("api", &[("tenant", "acme")]).with_client_addr("10.1.2.3:5555"))
}

/// The value of `metric`'s series with these labels (the route's name first).
fn recorded(route: &TestRoute, metric: &str, labels: &[&str]) -> Option<f64> {
    let metric = route.metric(metric)?;
    metric.series().into_iter().find_map(|(l, v)| match v {
        MetricValue::Number(n) if l == labels => Some(n),
        _ => None,
    })
}

fn status(action: Action) -> u16 {
    match action {
        Action::Respond(resp) => resp.status(),
        Action::Continue(_) => 200,
    }
}

#[test]
fn a_client_gets_its_limit_and_the_headers_reach_the_response() {
    let route = route(json!({ "limits": [{ "requests": 2, "per": "1m" }] }));
    assert!(
        route.needs().reuse_instance,
        "counts live in the store, not the instance"
    );
    assert_eq!(
        status(route.on_request(Request::new("GET", "/")).unwrap()),
        200
    );
    let resp = route.on_response(Response::new(200)).unwrap();
    assert_eq!(
        resp.header("ratelimit-policy"),
        Some("\"2-per-1m\";q=2;w=60")
    );
    assert_eq!(
        resp.header("ratelimit")
            .map(|h| h.split(";t=").next().unwrap()),
        Some("\"2-per-1m\";r=1")
    );
    assert_eq!(
        status(route.on_request(Request::new("GET", "/")).unwrap()),
        200
    );
    let Action::Respond(refused) = route.on_request(Request::new("GET", "/")).unwrap() else {
        panic!("the third request in a minute passed");
    };
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.header("retry-after"), Some("30"));
    assert_eq!(recorded(&route, "refused", &["api", "2-per-1m"]), Some(1.0));
}

#[test]
fn limits_by_path_parameter_are_separate() {
    let route = route(json!({ "limits": [{ "requests": 1, "per": "1h", "by": "param:tenant" }] }));
    assert_eq!(
        status(route.on_request(Request::new("GET", "/")).unwrap()),
        200
    );
    assert_eq!(
        status(route.on_request(Request::new("GET", "/")).unwrap()),
        429
    );
    let other = route.context(Context::new("api", &[("tenant", "globex")]));
    assert_eq!(
        status(other.on_request(Request::new("GET", "/")).unwrap()),
        200
    );
}

#[test]
fn a_down_store_lets_requests_through_or_refuses_them_as_configured() {
    let open = route(json!({ "limits": [{ "requests": 1, "per": "1s" }] })).state_down();
    for _ in 0..3 {
        assert_eq!(
            status(open.on_request(Request::new("GET", "/")).unwrap()),
            200
        );
    }
    assert_eq!(recorded(&open, "store_errors", &["api"]), Some(3.0));
    assert!(
        open.logs()
            .iter()
            .any(|l| l.message.contains("state unavailable"))
    );

    let closed = route(json!({
        "limits": [{ "requests": 1, "per": "1s" }],
        "on_store_error": "deny",
    }))
    .state_down();
    assert_eq!(
        status(closed.on_request(Request::new("GET", "/")).unwrap()),
        503
    );
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let filter = TestFilter::load(wasmgate_artifacts::filter("rate-limit")).unwrap();
    let err = filter
        .route(json!({ "limits": [{ "requests": 1, "per": "1w" }] }))
        .err()
        .unwrap();
    assert!(err.contains("limits[0].per \"1w\""), "{err}");
    let err = filter
        .route(json!({ "limits": [{ "requests": 1, "per": "1s", "by": "cookie:x" }] }))
        .err()
        .unwrap();
    assert!(err.contains("limits[0].by"), "{err}");
    assert!(filter.route(json!({ "limits": [] })).is_err());
}
