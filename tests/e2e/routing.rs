//! Routing: prefix, exact, pattern with captures, method, host, prefix strip, rewrite, 404.

use wasmgate_tests::{GatewayConfig, Route, TestGateway, Upstream};

#[tokio::test]
async fn routes_by_prefix_exact_and_pattern() {
    let users = Upstream::start("users").await;
    let health = Upstream::start("health").await;
    let gw = TestGateway::start(&format!(
        r#"
        [services.users]
        upstreams = ["{}"]
        [services.health]
        upstreams = ["{}"]

        [[routes]]
        name = "health"
        exact = "/healthz"
        service = "health"

        [[routes]]
        name = "user-by-id"
        pattern = "/users/{{id}}/orders/{{order}}"
        service = "users"
        filters = [{{ name = "echo-config", config = {{ kind = "pattern" }} }}]

        [[routes]]
        name = "users"
        prefix = "/users"
        service = "users"
        "#,
        users.url(),
        health.url()
    ))
    .await;

    let r = gw.get("/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "health");
    // Exact means exact.
    assert_eq!(gw.get("/healthz/more").await.status, 404);

    // The pattern captures both parameters and the filter sees them.
    let r = gw.get("/users/42/orders/7").await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["route"], "user-by-id");
    assert_eq!(echo["params"]["id"], "42");
    assert_eq!(echo["params"]["order"], "7");
    assert_eq!(echo["config"]["kind"], "pattern");

    // Prefix matches on segment boundaries, query kept.
    let r = gw.get("/users/42?full=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/users/42?full=1");
    assert_eq!(gw.get("/usersx").await.status, 404);
    assert_eq!(
        users.hits(),
        1,
        "only the prefix route reached the users upstream"
    );
}

#[tokio::test]
async fn routes_by_method_and_host() {
    let reads = Upstream::start("reads").await;
    let writes = Upstream::start("writes").await;
    let tenant = Upstream::start("tenant").await;
    let gw = TestGateway::start(&format!(
        r#"
        [services.reads]
        upstreams = ["{}"]
        [services.writes]
        upstreams = ["{}"]
        [services.tenant]
        upstreams = ["{}"]

        [[routes]]
        name = "tenant"
        prefix = "/"
        host = "*.tenants.test"
        service = "tenant"

        [[routes]]
        name = "writes"
        prefix = "/items"
        methods = ["post", "PUT"]
        service = "writes"

        [[routes]]
        name = "reads"
        prefix = "/items"
        methods = ["GET"]
        service = "reads"
        "#,
        reads.url(),
        writes.url(),
        tenant.url()
    ))
    .await;

    assert_eq!(
        gw.request("POST", "/items", &[], "{}").await.json()["upstream"],
        "writes"
    );
    assert_eq!(
        gw.request("PUT", "/items/1", &[], "{}").await.json()["upstream"],
        "writes"
    );
    assert_eq!(gw.get("/items").await.json()["upstream"], "reads");
    assert_eq!(gw.request("DELETE", "/items/1", &[], "").await.status, 404);

    let r = gw
        .request("GET", "/items", &[("host", "acme.tenants.test:8080")], "")
        .await;
    assert_eq!(r.json()["upstream"], "tenant");
    let r = gw
        .request("GET", "/items", &[("host", "tenants.test")], "")
        .await;
    assert_eq!(
        r.json()["upstream"],
        "reads",
        "the bare domain is not a subdomain"
    );
}

#[tokio::test]
async fn strips_prefixes_and_rewrites_paths() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"
        [services.svc]
        upstreams = ["{0}", "{0}/base/"]

        [[routes]]
        name = "stripped"
        prefix = "/api/v1"
        strip_prefix = true
        service = "svc"

        [[routes]]
        name = "rewritten"
        pattern = "/legacy/{{user}}/{{*rest}}"
        rewrite = "/v2/accounts/{{user}}/{{rest}}"
        service = "svc"

        [[routes]]
        name = "by-filter"
        pattern = "/p/{{id}}"
        service = "svc"
        filters = [{{ name = "rewrite-path", config = {{ to = "/internal/things/{{id}}" }} }}]
        "#,
        up.url()
    ))
    .await;

    // Round-robin over the two upstream base URLs: with and without a base path.
    let first = gw.get("/api/v1/users/7?x=1").await.json();
    let second = gw.get("/api/v1").await.json();
    let mut paths = [
        first["path"].as_str().unwrap().to_string(),
        second["path"].as_str().unwrap().to_string(),
    ];
    paths.sort();
    assert!(
        paths == ["/base/", "/users/7?x=1"] || paths == ["/", "/base/users/7?x=1"],
        "unexpected upstream paths {paths:?}"
    );

    let r = gw.get("/legacy/ann/photos/2024/a.jpg?size=s").await.json();
    assert!(
        r["path"]
            .as_str()
            .unwrap()
            .ends_with("/v2/accounts/ann/photos/2024/a.jpg?size=s"),
        "{r}"
    );

    let r = gw.get("/p/99?q=1").await.json();
    assert!(
        r["path"]
            .as_str()
            .unwrap()
            .ends_with("/internal/things/99?q=1"),
        "{r}"
    );
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let gw = TestGateway::start("").await;
    let r = gw.get("/nowhere").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"]["status"], 404);
    assert_eq!(body["error"]["message"], "no route matches this request");
    assert_eq!(body["request_id"].as_str(), r.header("x-request-id"));
}

#[tokio::test]
async fn forwards_standard_proxy_headers_and_drops_hop_by_hop_ones() {
    let up = Upstream::start("svc").await;
    let gw = GatewayConfig::new()
        .service("svc", &[up.url()])
        .route(Route::prefix("all", "/").service("svc"))
        .start()
        .await;
    let r = gw
        .request(
            "GET",
            "/x",
            &[
                ("host", "api.example.test"),
                ("connection", "x-secret-hop"),
                ("x-secret-hop", "must not pass"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-kept", "yes"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = &up.seen()[0];
    assert!(!seen.headers.contains_key("x-secret-hop"));
    assert!(!seen.headers.contains_key("proxy-authorization"));
    assert_eq!(seen.headers["x-kept"], "yes");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example.test");
    assert_eq!(seen.headers["host"], up.addr.to_string());
    assert_eq!(
        seen.headers["x-request-id"].to_str().unwrap(),
        r.header("x-request-id").unwrap(),
        "the upstream and the client see the same request id"
    );
}
