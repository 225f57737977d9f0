//! transform: the seed's body mapping both ways, headers, path and query, response allow-list.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use wasmgate_tests::{TestGateway, Upstream};

#[tokio::test]
async fn the_seed_body_mapping_works_both_ways_with_an_allow_list() {
    let received = Arc::new(Mutex::new(Value::Null));
    let store = received.clone();
    let users = Upstream::start_fn("users", Duration::ZERO, move |_, body| {
        let got: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        *store.lock().unwrap() = got.clone();
        let id = got["id"].clone();
        (201, json!({"id": id, "name": "Ada", "password_hash": "$2b$...", "profile": {"city": "London", "phone": "555"}}).to_string())
    })
    .await;
    let gw = TestGateway::start(&format!(
        r#"
[services.users]
upstreams = ["{}"]

[[routes]]
name = "create-user"
pattern = "/api/users"
methods = ["POST"]
service = "users"
[[routes.filters]]
name = "transform"
[routes.filters.config.request]
headers = {{ rename = {{ "x-client-version" = "x-app-version" }}, set = {{ "x-via" = "gateway" }} }}
path = "/internal/users"
query = {{ set = {{ "source" = "api" }}, remove = ["debug"] }}
body = [{{ rename = {{ from = "userId", to = "id" }} }}, {{ set = {{ path = "meta.channel", value = "web" }} }}]
[routes.filters.config.response]
headers = {{ set = {{ "x-transformed" = "yes" }} }}
body = [{{ rename = {{ from = "id", to = "userId" }} }}]
allow = ["userId", "name", "profile.city"]
"#,
        users.url()
    ))
    .await;

    let r = gw
        .request(
            "POST",
            "/api/users?debug=1",
            &[
                ("content-type", "application/json"),
                ("x-client-version", "3.1"),
            ],
            r#"{"userId": "123"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        *received.lock().unwrap(),
        json!({"id": "123", "meta": {"channel": "web"}}),
        "what the service received"
    );
    assert_eq!(
        r.json(),
        json!({"userId": "123", "name": "Ada", "profile": {"city": "London"}}),
        "what the client received"
    );
    assert_eq!(r.header("x-transformed"), Some("yes"));
    let seen = &users.seen()[0];
    assert_eq!(seen.path, "/internal/users?source=api");
    assert_eq!(seen.headers["x-app-version"], "3.1");
    assert!(!seen.headers.contains_key("x-client-version"));
    assert_eq!(seen.headers["x-via"], "gateway");

    let r = gw.request("POST", "/api/users", &[], "not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(users.hits(), 1);
}

#[tokio::test]
async fn a_header_only_transform_does_not_buffer_bodies() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"
limits = {{ max_body_bytes = 16 }}
[services.svc]
upstreams = ["{}"]
[[routes]]
name = "headers-only"
prefix = "/"
service = "svc"
filters = [{{ name = "transform", config = {{ request = {{ headers = {{ set = {{ "x-a" = "1" }} }} }} }} }}]
"#,
        up.url()
    ))
    .await;
    // Far over max_body_bytes: it streams, because this config reads no body.
    let r = gw.request("POST", "/x", &[], &"z".repeat(4096)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 4096);
    let routes = gw.admin("/routes").await;
    assert_eq!(routes[0]["filters"][0]["needs_request_body"], false);
}
