//! Filter chains: request and response phases, short-circuits, per-route config, bodies.

use wasmgate_tests::{TestGateway, Upstream};

fn service(up: &Upstream) -> String {
    format!("[services.svc]\nupstreams = [\"{}\"]\n", up.url())
}

#[tokio::test]
async fn a_filter_changes_headers_the_upstream_and_client_see() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"{}
        [[routes]]
        name = "decorated"
        prefix = "/"
        service = "svc"

        [[routes.filters]]
        name = "headers"
        [routes.filters.config.request]
        set = {{ "x-tenant" = "acme" }}
        remove = ["x-internal-debug"]
        [routes.filters.config.response]
        set = {{ "x-powered-by" = "wasmgate" }}
        remove = ["x-upstream"]
        "#,
        service(&up)
    ))
    .await;

    let r = gw
        .request(
            "GET",
            "/a",
            &[("x-tenant", "spoofed"), ("x-internal-debug", "1")],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-powered-by"), Some("wasmgate"));
    assert_eq!(
        r.header("x-upstream"),
        None,
        "the response phase removed it"
    );
    let seen = &up.seen()[0];
    assert_eq!(
        seen.headers["x-tenant"], "acme",
        "set replaces the client's value"
    );
    assert!(!seen.headers.contains_key("x-internal-debug"));
}

#[tokio::test]
async fn a_filter_short_circuits_with_403_and_the_upstream_is_never_called() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"{}
        [[routes]]
        name = "guarded"
        prefix = "/"
        service = "svc"
        filters = [
            {{ name = "deny", config = {{ status = 403, message = "no entry", unless_header = "x-pass" }} }},
            {{ name = "headers", config = {{ request = {{ set = {{ "x-after-deny" = "1" }} }} }} }},
        ]
        "#,
        service(&up)
    ))
    .await;

    let r = gw.get("/secret").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["denied"], "no entry");
    assert_eq!(up.hits(), 0, "the upstream must not be called");

    let r = gw.request("GET", "/secret", &[("x-pass", "1")], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
    assert_eq!(
        up.seen()[0].headers["x-after-deny"],
        "1",
        "later request phases ran"
    );
}

#[tokio::test]
async fn two_routes_share_one_wasm_with_different_config() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"{}
        [[routes]]
        name = "teapot"
        prefix = "/teapot"
        service = "svc"
        filters = [{{ name = "deny", config = {{ status = 418, message = "short and stout" }} }}]

        [[routes]]
        name = "gone"
        prefix = "/gone"
        service = "svc"
        filters = [{{ name = "deny", config = {{ status = 410, message = "moved on" }} }}]
        "#,
        service(&up)
    ))
    .await;

    let r = gw.get("/teapot").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["denied"].clone()),
        (418, "short and stout".into())
    );
    let r = gw.get("/gone").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["denied"].clone()),
        (410, "moved on".into())
    );
}

#[tokio::test]
async fn request_phases_run_in_order_and_response_phases_in_reverse() {
    let up = Upstream::start("svc").await;
    let chain = |tag: &str| {
        format!(
            r#"{{ name = "headers", config = {{ request = {{ add = {{ "x-order" = "{tag}" }} }}, response = {{ add = {{ "x-order" = "{tag}" }} }} }} }}"#
        )
    };
    let gw = TestGateway::start(&format!(
        r#"{}
        [[routes]]
        name = "chain"
        prefix = "/"
        service = "svc"
        filters = [{}, {}, {}]
        "#,
        service(&up),
        chain("a"),
        chain("b"),
        chain("c")
    ))
    .await;

    let r = gw.get("/").await;
    assert_eq!(r.status, 200);
    let upstream_saw: Vec<_> = up.seen()[0]
        .headers
        .get_all("x-order")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        upstream_saw,
        ["a", "b", "c"],
        "request phases in chain order"
    );
    assert_eq!(
        r.header_all("x-order"),
        ["c", "b", "a"],
        "response phases in reverse order"
    );
}

#[tokio::test]
async fn response_phases_run_for_filters_before_an_early_answer() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"{}
        [[routes]]
        name = "early"
        prefix = "/"
        service = "svc"
        filters = [
            {{ name = "headers", config = {{ response = {{ set = {{ "x-cors" = "*" }} }} }} }},
            {{ name = "deny", config = {{ status = 401 }} }},
            {{ name = "headers", config = {{ response = {{ set = {{ "x-never" = "1" }} }} }} }},
        ]
        "#,
        service(&up)
    ))
    .await;
    let r = gw.get("/").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("x-cors"),
        Some("*"),
        "a filter before the answer decorates it"
    );
    assert_eq!(
        r.header("x-never"),
        None,
        "a filter after the answer never ran"
    );
}

#[tokio::test]
async fn a_body_filter_reads_and_rewrites_both_bodies() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"{}
        [[routes]]
        name = "bodies"
        prefix = "/"
        service = "svc"
        max_body_bytes = 1024
        filters = [{{ name = "body-rewrite", config = {{ via = "wasmgate", response_suffix = "\n-- checked" }} }}]
        "#,
        service(&up)
    ))
    .await;

    let r = gw
        .request(
            "POST",
            "/orders",
            &[("content-type", "application/json")],
            r#"{"item":"book"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let (echo, suffix) = text.rsplit_once('\n').unwrap();
    assert_eq!(
        suffix, "-- checked",
        "the response phase appended to the body"
    );
    let echo: serde_json::Value = serde_json::from_str(echo).unwrap();
    let sent: serde_json::Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, serde_json::json!({"item": "book", "via": "wasmgate"}));
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        text.len(),
        "content-length matches the rewritten body"
    );

    // A non-JSON body is answered by the filter itself.
    let r = gw.request("POST", "/orders", &[], "not json").await;
    assert_eq!(r.status, 400);

    // Over the route's body limit: 413, and the upstream never sees it.
    let before = up.hits();
    let big = format!(r#"{{"blob":"{}"}}"#, "z".repeat(2048));
    let r = gw.request("POST", "/orders", &[], &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["status"], 413);
    assert_eq!(up.hits(), before);
}

#[tokio::test]
async fn a_phase_the_filter_declares_unused_is_never_called() {
    let up = Upstream::start("svc").await;
    let route = |name: &str, config: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nservice = \"svc\"\n\
             filters = [{{ name = \"phases\", config = {config} }}]\n"
        )
    };
    let gw = TestGateway::start(&format!(
        "{}{}{}{}",
        service(&up),
        route("both", "{}"),
        route("request-only", "{ response = false }"),
        route("response-only", "{ request = false }"),
    ))
    .await;

    // (path, request phase called, response phase called)
    for (path, request, response) in [
        ("/both", true, true),
        ("/request-only", true, false),
        ("/response-only", false, true),
    ] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("x-phase-response").is_some(), response, "{path}");
        let seen = up.seen().pop().unwrap();
        assert_eq!(seen.path, path);
        assert_eq!(
            seen.headers.contains_key("x-phase-request"),
            request,
            "{path}"
        );
    }

    // The admin view shows what each route's config uses.
    let routes = gw.admin("/routes").await;
    let phases: Vec<(bool, bool)> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let f = &r["filters"][0];
            (
                f["request_phase"].as_bool().unwrap(),
                f["response_phase"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(phases, [(true, true), (true, false), (false, true)]);
}
