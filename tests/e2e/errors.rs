//! Failures get the right status and a small JSON body that leaks nothing.

use std::time::{Duration, Instant};

use wasmgate_tests::{TestGateway, Upstream, dead_addr};

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

#[tokio::test]
async fn a_dead_upstream_gives_502() {
    let dead = dead_addr().await;
    let gw = TestGateway::start(&format!(
        r#"
        [services.dead]
        upstreams = ["http://{dead}"]
        [[routes]]
        name = "dead"
        prefix = "/"
        service = "dead"
        "#
    ))
    .await;
    assert_clean_error(&gw.get("/x").await, 502);
}

#[tokio::test]
async fn a_slow_upstream_gives_504_after_the_route_timeout() {
    let slow = Upstream::start_with_delay("slow", Duration::from_secs(3)).await;
    let gw = TestGateway::start(&format!(
        r#"
        [services.slow]
        upstreams = ["{}"]
        [[routes]]
        name = "slow"
        prefix = "/"
        service = "slow"
        timeout = "300ms"
        "#,
        slow.url()
    ))
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
    let gw = TestGateway::start(&format!(
        r#"
        [services.svc]
        upstreams = ["{}"]
        [[routes]]
        name = "error"
        prefix = "/error"
        service = "svc"
        filters = [{{ name = "fail", config = {{ mode = "error" }} }}]
        [[routes]]
        name = "panic"
        prefix = "/panic"
        service = "svc"
        filters = [{{ name = "fail", config = {{ mode = "panic" }} }}]
        [[routes]]
        name = "loop"
        prefix = "/loop"
        service = "svc"
        filters = [{{ name = "fail", config = {{ mode = "loop" }} }}]
        [[routes]]
        name = "alloc"
        prefix = "/alloc"
        service = "svc"
        filters = [{{ name = "fail", config = {{ mode = "alloc" }} }}]
        [[routes]]
        name = "bad-path"
        prefix = "/bad-path"
        service = "svc"
        filters = [{{ name = "rewrite-path", config = {{ to = "/has a space" }} }}]
        [[routes]]
        name = "ok"
        prefix = "/ok"
        service = "svc"
        filters = [{{ name = "headers" }}]
        "#,
        up.url()
    ))
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
    let gw = TestGateway::start(&format!(
        r#"
        [services.svc]
        upstreams = ["{}"]
        [[routes]]
        name = "missing"
        prefix = "/missing"
        service = "svc"
        filters = [{{ name = "no-such-filter" }}]
        [[routes]]
        name = "misconfigured"
        prefix = "/misconfigured"
        service = "svc"
        filters = [{{ name = "deny", config = {{ status = 42 }} }}]
        [[routes]]
        name = "fine"
        prefix = "/fine"
        service = "svc"
        "#,
        up.url()
    ))
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
