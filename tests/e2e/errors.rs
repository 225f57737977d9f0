//! Failures get the right status and a small JSON body that leaks nothing.

use std::time::{Duration, Instant};

use serde_json::json;
use wasmgate_tests::{Filter, GatewayConfig, Route, Upstream, dead_addr};

fn assert_clean_error(r: &wasmgate_tests::TestResponse, status: u16) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"]["status"], status);
    assert_eq!(body["request_id"].as_str(), r.header("x-request-id"));
    let text = r.text();
    for leak in [
        "127.0.0.1",
        "hunter2",
        "wasm",
        "panicked",
        "Connection refused",
        "os error",
    ] {
        assert!(!text.contains(leak), "error body leaks {leak:?}: {text}");
    }
}

/// A route `/{name}` to the service `svc`.
fn route(name: &str) -> Route {
    Route::prefix(name, &format!("/{name}")).service("svc")
}

#[tokio::test]
async fn a_dead_upstream_gives_502() {
    let dead = dead_addr().await;
    let gw = GatewayConfig::new()
        .service("dead", &[format!("http://{dead}")])
        .route(Route::prefix("dead", "/").service("dead"))
        .start()
        .await;
    assert_clean_error(&gw.get("/x").await, 502);
}

#[tokio::test]
async fn a_slow_upstream_gives_504_after_the_route_timeout() {
    let slow = Upstream::start_with_delay("slow", Duration::from_secs(3)).await;
    let gw = GatewayConfig::new()
        .service("slow", &[slow.url()])
        .route(
            Route::prefix("slow", "/")
                .service("slow")
                .set("timeout", json!("300ms")),
        )
        .start()
        .await;
    let started = Instant::now();
    let r = gw.get("/x").await;
    let took = started.elapsed();
    assert_clean_error(&r, 504);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "took {took:?}"
    );
}

#[tokio::test]
async fn failing_filters_give_500_without_leaking_and_other_requests_carry_on() {
    let up = Upstream::start("svc").await;
    let mut config = GatewayConfig::new().service("svc", &[up.url()]);
    for mode in ["error", "panic", "loop", "alloc"] {
        config =
            config.route(route(mode).filter(Filter::new("fail").config(json!({ "mode": mode }))));
    }
    let gw = config
        .route(
            route("bad-path")
                .filter(Filter::new("rewrite-path").config(json!({"to": "/has a space"}))),
        )
        .route(route("ok").filter(Filter::new("headers")))
        .start()
        .await;

    for path in ["/error", "/panic", "/alloc", "/bad-path"] {
        assert_clean_error(&gw.get(path).await, 500);
    }
    let started = Instant::now();
    assert_clean_error(&gw.get("/loop").await, 500);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the deadline stopped the loop"
    );
    assert_eq!(up.hits(), 0, "no failing request reached the upstream");

    // The same filter keeps serving other requests; the trapped instances were thrown away.
    assert_eq!(gw.get("/ok").await.status, 200);
    assert_clean_error(&gw.get("/panic").await, 500);
    assert_eq!(gw.get("/ok").await.status, 200);
}

#[tokio::test]
async fn a_route_whose_filter_is_missing_or_rejects_its_config_answers_503() {
    let up = Upstream::start("svc").await;
    let gw = GatewayConfig::new()
        .service("svc", &[up.url()])
        .route(route("missing").filter(Filter::new("no-such-filter")))
        .route(route("misconfigured").filter(Filter::new("deny").config(json!({"status": 42}))))
        .route(route("fine"))
        .start()
        .await;
    assert_clean_error(&gw.get("/missing").await, 503);
    assert_clean_error(&gw.get("/misconfigured").await, 503);
    assert_eq!(
        gw.get("/fine").await.status,
        200,
        "other routes are unaffected"
    );
    assert_eq!(up.hits(), 1);
}
