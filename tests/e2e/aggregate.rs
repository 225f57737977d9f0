//! aggregate: the seed's profile example, concurrency, partial and failed parts, and a filter
//! calling a service its route does not grant.

use std::time::{Duration, Instant};

use serde_json::json;
use wasmgate_tests::{Filter, GatewayConfig, Route, TestGateway, Upstream, dead_addr};

async fn user_service(delay: Duration) -> Upstream {
    Upstream::start_fn("users", delay, |seen, _| match seen.path.as_str() {
        "/users/1" => (200, json!({"id": "1", "name": "Ada Lovelace"}).to_string()),
        _ => (404, json!({"error": "no such user"}).to_string()),
    })
    .await
}

async fn order_service(delay: Duration) -> Upstream {
    Upstream::start_fn("orders", delay, |seen, _| {
        assert_eq!(
            seen.headers["authorization"], "Bearer t",
            "forwarded header"
        );
        (200, json!([{"id": "o-17", "total": 1820}]).to_string())
    })
    .await
}

/// The seed's profile route: `aggregate` asks users and orders, granted `grants`.
async fn profile_gateway(
    users: &str,
    orders: &str,
    grants: &[&str],
    orders_required: bool,
) -> TestGateway {
    let parts = json!([
        {"name": "user", "service": "users", "path": "/users/{id}", "at": "user"},
        {"name": "orders", "service": "orders", "path": "/orders/user/{id}", "at": "orders",
         "required": orders_required, "timeout_ms": 1000},
    ]);
    GatewayConfig::new()
        .service("users", &[users.to_string()])
        .service("orders", &[orders.to_string()])
        .route(
            Route::pattern("profile", "/profile/{id}").filter(
                Filter::new("aggregate")
                    .services(grants)
                    .config(json!({"forward_headers": ["authorization"], "parts": parts})),
            ),
        )
        .start()
        .await
}

#[tokio::test]
async fn profile_merges_user_and_orders_concurrently() {
    let delay = Duration::from_millis(200);
    let (users, orders) = (user_service(delay).await, order_service(delay).await);
    let gw = profile_gateway(&users.url(), &orders.url(), &["users", "orders"], true).await;

    // Warm the connection pools so the measurement is about concurrency, not connects.
    gw.request("GET", "/profile/1", &[("authorization", "Bearer t")], "")
        .await;
    let started = Instant::now();
    let r = gw
        .request("GET", "/profile/1", &[("authorization", "Bearer t")], "")
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"user": {"id": "1", "name": "Ada Lovelace"}, "orders": [{"id": "o-17", "total": 1820}]})
    );
    assert_eq!(r.header("x-wasmgate-partial"), None);
    assert!(
        took < Duration::from_millis(350),
        "two 200 ms parts took {took:?}: not concurrent"
    );
    assert_eq!(users.seen()[1].path, "/users/1");
    assert_eq!(orders.seen()[1].path, "/orders/user/1");
}

#[tokio::test]
async fn an_optional_part_down_gives_a_partial_answer_and_a_required_one_gives_502() {
    let users = user_service(Duration::ZERO).await;
    let dead = format!("http://{}", dead_addr().await);
    let gw = profile_gateway(&users.url(), &dead, &["users", "orders"], false).await;
    let r = gw.get("/profile/1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-wasmgate-partial"), Some("true"));
    assert_eq!(r.header("x-wasmgate-missing"), Some("orders"));
    assert_eq!(
        r.json(),
        json!({"user": {"id": "1", "name": "Ada Lovelace"}})
    );

    // A required part that answers 404 fails the whole request.
    let r = gw.get("/profile/2").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json(),
        json!({"error": "a required part failed", "part": "user"})
    );
}

#[tokio::test]
async fn a_call_to_a_service_the_route_does_not_grant_is_an_error_value_not_a_trap() {
    let users = user_service(Duration::ZERO).await;
    let orders = order_service(Duration::ZERO).await;
    // The route grants only "users"; the orders part asks for "orders".
    let gw = profile_gateway(&users.url(), &orders.url(), &["users"], true).await;
    let r = gw
        .request("GET", "/profile/1", &[("authorization", "Bearer t")], "")
        .await;
    assert_eq!(
        r.status,
        502,
        "the filter handled the denial itself: {}",
        r.text()
    );
    assert_eq!(r.json()["part"], "orders");
    assert_eq!(orders.hits(), 0, "the denied service was never called");

    let gw = profile_gateway(&users.url(), &orders.url(), &["users"], false).await;
    let r = gw.get("/profile/1").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-wasmgate-partial")),
        (200, Some("true"))
    );
    assert_eq!(orders.hits(), 0);
}
