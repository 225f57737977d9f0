//! The `rate-limit` filter and the `state` import behind it: on the in-process store, on a real
//! Redis, shared by two gateway processes, and with Redis stopped mid-test.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use wasmgate_tests::{
    Filter, GatewayConfig, GatewayProcess, Redis, Route, TestGateway, Upstream, full,
};

fn limited(limits: Value) -> Route {
    Route::prefix("api", "/api")
        .service("app")
        .filter(Filter::new("rate-limit").config(limits))
}

async fn gateway(upstream: &Upstream, filter_config: Value, state: Option<Value>) -> TestGateway {
    let mut config = GatewayConfig::new()
        .service("app", &[upstream.url()])
        .route(limited(filter_config))
        .route(
            Route::prefix("probe", "/probe")
                .service("app")
                .filter(Filter::new("state-probe")),
        );
    if let Some(state) = state {
        config = config.set("state", state);
    }
    config.start().await
}

/// Statuses of `n` concurrent GETs.
async fn burst(gw: &TestGateway, path: &str, n: usize) -> Vec<u16> {
    join_all((0..n).map(|_| gw.get(path)))
        .await
        .into_iter()
        .map(|r| r.status.as_u16())
        .collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn exactly_the_limit_passes_out_of_many_concurrent_requests() {
    let up = Upstream::start("app").await;
    let gw = gateway(
        &up,
        json!({ "limits": [{ "requests": 25, "per": "1h", "by": "route" }] }),
        None,
    )
    .await;
    let statuses = burst(&gw, "/api/items", 120).await;
    assert_eq!(count(&statuses, 200), 25, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 95, "{statuses:?}");
    assert_eq!(up.hits(), 25, "refused requests never reach the upstream");

    // A refusal: JSON, Retry-After in whole seconds (one more every 144 s), IETF headers.
    let r = gw.get("/api/items").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"], "rate limit exceeded");
    assert_eq!(body["limit"], "25-per-1h");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=144).contains(&retry), "retry-after {retry}");
    assert_eq!(body["retry_after"], retry);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"25-per-1h\";q=25;w=3600")
    );
    assert!(
        r.header("ratelimit")
            .is_some_and(|h| h.starts_with("\"25-per-1h\";r=0;t=")),
        "{:?}",
        r.header("ratelimit")
    );
}

#[tokio::test]
async fn a_served_response_carries_the_remaining_count() {
    let up = Upstream::start("app").await;
    let gw = gateway(
        &up,
        json!({
            "limits": [{ "requests": 5, "per": "1h", "by": "header:x-user" }],
            "headers": "x-ratelimit",
        }),
        None,
    )
    .await;
    for remaining in (0..5).rev() {
        let r = gw.request("GET", "/api/a", &[("x-user", "ann")], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!(reset > 0 && reset <= 3600, "reset {reset}");
        assert!(r.header("ratelimit").is_none(), "only the configured set");
    }
    let r = gw.request("GET", "/api/a", &[("x-user", "ann")], "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    // Another user has a limit of their own; a request without the header is not counted.
    let r = gw.request("GET", "/api/a", &[("x-user", "bob")], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
    let r = gw.get("/api/a").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), None);
}

/// GCRA: after a full burst, the next second lets through one per interval, not another whole
/// limit (a fixed window would allow twice the limit across its boundary).
#[tokio::test]
async fn the_window_refills_evenly_and_never_doubles_at_a_boundary() {
    let up = Upstream::start("app").await;
    let gw = gateway(
        &up,
        json!({ "limits": [{ "requests": 10, "per": "1s", "by": "client" }] }),
        None,
    )
    .await;
    let started = Instant::now();
    let first = burst(&gw, "/api/x", 10).await;
    assert_eq!(count(&first, 200), 10, "{first:?}");
    let refused = gw.get("/api/x").await;
    let emptied = Instant::now();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));

    // Half a second later, one request per 100 ms that passed has come back: about 5, never
    // the 10 a fixed window starting anew would allow. The bounds follow the time that really
    // passed, so a slow machine cannot fail it.
    tokio::time::sleep(Duration::from_millis(500).saturating_sub(started.elapsed())).await;
    let asked = Instant::now();
    let second = burst(&gw, "/api/x", 20).await;
    let done = Instant::now();
    let allowed = count(&second, 200) as u128;
    let at_least = (asked - emptied).as_millis() / 100;
    let at_most = (done - started).as_millis() / 100 + 1;
    assert!(
        (at_least..=at_most).contains(&allowed),
        "{allowed} allowed, expected {at_least} to {at_most}"
    );
    if (done - started) < Duration::from_millis(800) {
        assert!(allowed < 10, "a second burst of {allowed} within a second");
    }
    // A full window later the whole limit is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = burst(&gw, "/api/x", 10).await;
    assert_eq!(count(&third, 200), 10, "{third:?}");
}

#[tokio::test]
async fn several_limits_on_one_route_answer_with_the_first_that_refuses() {
    let up = Upstream::start("app").await;
    let gw = gateway(
        &up,
        json!({ "limits": [
            { "requests": 3, "per": "1h", "by": "header:x-user", "name": "per-user" },
            { "requests": 5, "per": "1d", "by": "route", "name": "per-route" },
        ] }),
        None,
    )
    .await;
    let ann = [("x-user", "ann")];
    for _ in 0..3 {
        assert_eq!(gw.request("GET", "/api/a", &ann, "").await.status, 200);
    }
    let r = gw.request("GET", "/api/a", &ann, "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["limit"], "per-user");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-user\";q=3;w=3600"),
        "only the limits checked so far"
    );
    // Ann's refused request did not count against the route: two more for Bob, then the
    // route's daily limit refuses.
    let bob = [("x-user", "bob")];
    for _ in 0..2 {
        let r = gw.request("GET", "/api/a", &bob, "").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"per-user\";q=3;w=3600, \"per-route\";q=5;w=86400")
        );
    }
    let r = gw.request("GET", "/api/a", &bob, "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["limit"], "per-route");
    assert_eq!(up.hits(), 5);
}

/// The probe's answer for one `state` call.
async fn probe(gw: &TestGateway, query: &str) -> Value {
    let r = gw.get(&format!("/probe/{query}")).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r.json()
}

/// Every `state` call, on a backend: the same answers from the in-process store and Redis.
async fn state_calls_behave(gw: &TestGateway) {
    assert_eq!(
        probe(gw, "incr?key=c&delta=2&window_ms=60000").await["value"],
        2
    );
    let c = probe(gw, "incr?key=c&delta=3&window_ms=60000").await;
    assert_eq!(c["value"], 5);
    let reset = c["reset_ms"].as_u64().unwrap();
    assert!(reset > 50_000 && reset <= 60_000, "reset {reset}");
    assert_eq!(probe(gw, "get?key=c").await["value"], "5");

    // A short window starts again.
    assert_eq!(
        probe(gw, "incr?key=w&delta=1&window_ms=150").await["value"],
        1
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        probe(gw, "incr?key=w&delta=1&window_ms=150").await["value"],
        1
    );

    let t = probe(gw, "throttle?key=t&limit=2&window_ms=60000&cost=1").await;
    assert_eq!(
        (t["allowed"].clone(), t["remaining"].clone()),
        (json!(true), json!(1))
    );
    probe(gw, "throttle?key=t&limit=2&window_ms=60000&cost=1").await;
    let t = probe(gw, "throttle?key=t&limit=2&window_ms=60000&cost=1").await;
    assert_eq!(t["allowed"], false);
    let retry = t["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 25_000 && retry <= 30_000, "retry after {retry}");

    assert_eq!(probe(gw, "get?key=v").await["value"], Value::Null);
    probe(gw, "set?key=v&value=one&ttl_ms=200").await;
    assert_eq!(probe(gw, "get?key=v").await["value"], "one");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        probe(gw, "get?key=v").await["value"],
        Value::Null,
        "expired"
    );

    assert_eq!(probe(gw, "cas?key=s&value=a").await["stored"], true);
    assert_eq!(
        probe(gw, "cas?key=s&value=b").await["stored"],
        false,
        "present"
    );
    assert_eq!(
        probe(gw, "cas?key=s&expected=x&value=b").await["stored"],
        false
    );
    assert_eq!(
        probe(gw, "cas?key=s&expected=a&value=b").await["stored"],
        true
    );
    assert_eq!(probe(gw, "get?key=s").await["value"], "b");
    assert_eq!(probe(gw, "delete?key=s").await["found"], true);
    assert_eq!(probe(gw, "delete?key=s").await["found"], false);

    let e = probe(gw, "throttle?key=s2&limit=1&cost=1").await;
    assert_eq!(e["error"], Value::Null, "a new key is a rate limit: {e}");
    probe(gw, "set?key=text&value=hello").await;
    let e = probe(gw, "incr?key=text&delta=1").await;
    assert_eq!(e["error"]["kind"], "invalid", "{e}");
    let big = probe(gw, "set-large?key=big&bytes=2000000").await;
    assert_eq!(big["error"]["kind"], "too-large", "{big}");
    let long_key = "k".repeat(600);
    let e = probe(gw, &format!("get?key={long_key}")).await;
    assert_eq!(e["error"]["kind"], "too-large", "{e}");
}

#[tokio::test]
async fn state_calls_on_the_in_process_store() {
    let up = Upstream::start("app").await;
    let gw = gateway(
        &up,
        json!({ "limits": [{ "requests": 1, "per": "1s" }] }),
        None,
    )
    .await;
    state_calls_behave(&gw).await;
}

fn redis_state(redis: &Redis) -> Value {
    json!({ "backend": "redis", "url": redis.url(), "timeout": "200ms", "retry_interval": "200ms" })
}

#[tokio::test]
async fn state_calls_on_redis() {
    let redis = Redis::start();
    let up = Upstream::start("app").await;
    let gw = gateway(
        &up,
        json!({ "limits": [{ "requests": 1, "per": "1s" }] }),
        Some(redis_state(&redis)),
    )
    .await;
    state_calls_behave(&gw).await;
}

/// Statuses of `n` concurrent GETs of `url`.
async fn burst_url(urls: &[String], n: usize) -> Vec<u16> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let calls = (0..n).map(|i| {
        let client = client.clone();
        let url = urls[i % urls.len()].clone();
        async move {
            let req = http::Request::get(url).body(full("")).unwrap();
            let resp = client.request(req).await.expect("the gateway answers");
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }
    });
    join_all(calls).await
}

#[tokio::test]
async fn two_gateway_processes_on_one_redis_enforce_one_limit() {
    let redis = Redis::start();
    let up = Upstream::start("app").await;
    let config = GatewayConfig::new()
        .service("app", &[up.url()])
        .route(limited(
            json!({ "limits": [{ "requests": 30, "per": "1h", "by": "route" }] }),
        ))
        .set("state", redis_state(&redis))
        .toml();
    let bin = env!("CARGO_BIN_EXE_gateway-process");
    let (a, b) = (
        GatewayProcess::start(bin, &config),
        GatewayProcess::start(bin, &config),
    );
    let urls = [a.url("/api/x"), b.url("/api/x")];
    let statuses = burst_url(&urls, 100).await;
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 70, "{statuses:?}");
    assert_eq!(up.hits(), 30);
    // Each alone is refused too: the count is shared.
    assert_eq!(burst_url(&urls[..1], 1).await, [429]);
    assert_eq!(burst_url(&urls[1..], 1).await, [429]);
}

#[tokio::test]
async fn redis_stopped_fails_open_then_the_limit_comes_back() {
    let mut redis = Redis::start();
    let port = redis.port;
    let up = Upstream::start("app").await;
    let gw = gateway(
        &up,
        json!({ "limits": [{ "requests": 3, "per": "1h", "by": "route" }] }),
        Some(redis_state(&redis)),
    )
    .await;
    assert_eq!(count(&burst(&gw, "/api/x", 5).await, 200), 3);

    redis.stop();
    // Fail open: every request goes through, promptly, and nothing else breaks.
    let started = Instant::now();
    let statuses = burst(&gw, "/api/x", 20).await;
    assert_eq!(count(&statuses, 200), 20, "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?} for 20 requests with redis down",
        started.elapsed()
    );

    // Redis back (empty: nothing was persisted): the gateway reconnects by itself and the
    // limit holds again, counted afresh. One request at a time: until the reconnect a request
    // still fails open, and only one Redis counted carries the `ratelimit` header.
    let _redis = Redis::start_on(port);
    let back = Instant::now();
    let mut counted = 0;
    loop {
        let r = gw.get("/api/x").await;
        match (r.status.as_u16(), r.header("ratelimit").is_some()) {
            (200, true) => counted += 1,
            (200, false) => {
                assert_eq!(counted, 0, "failed open after Redis counted a request");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (429, _) => {
                assert_eq!(counted, 3, "a fresh count lets exactly the limit through");
                break;
            }
            (status, _) => panic!("unexpected {status}"),
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the limit did not come back after redis did"
        );
    }
}

#[tokio::test]
async fn redis_stopped_fails_closed_when_configured() {
    let mut redis = Redis::start();
    let up = Upstream::start("app").await;
    let gw = gateway(
        &up,
        json!({
            "limits": [{ "requests": 100, "per": "1h" }],
            "on_store_error": "deny",
        }),
        Some(redis_state(&redis)),
    )
    .await;
    assert_eq!(gw.get("/api/x").await.status, 200);
    redis.stop();
    let r = gw.get("/api/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "rate limit unavailable");
    assert!(
        !r.text().contains("127.0.0.1"),
        "nothing internal: {}",
        r.text()
    );
}
