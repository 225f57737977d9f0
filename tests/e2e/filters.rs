//! Filter chains: request and response phases, short-circuits, per-route config, bodies.

use serde_json::json;
use wasmgate_tests::{Filter, GatewayConfig, Route, Upstream};

/// A config with the service `svc` at `up`.
fn with_service(up: &Upstream) -> GatewayConfig {
    GatewayConfig::new().service("svc", &[up.url()])
}

/// A prefix route to `svc`.
fn to_svc(name: &str, prefix: &str) -> Route {
    Route::prefix(name, prefix).service("svc")
}

#[tokio::test]
async fn a_filter_changes_headers_the_upstream_and_client_see() {
    let up = Upstream::start("svc").await;
    let gw = with_service(&up)
        .route(
            to_svc("decorated", "/").filter(Filter::new("headers").config(json!({
                "request": {"set": {"x-tenant": "acme"}, "remove": ["x-internal-debug"]},
                "response": {"set": {"x-powered-by": "wasmgate"}, "remove": ["x-upstream"]},
            }))),
        )
        .start()
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
    let gw = with_service(&up)
        .route(
            to_svc("guarded", "/")
                .filter(Filter::new("deny").config(
                    json!({"status": 403, "message": "no entry", "unless_header": "x-pass"}),
                ))
                .filter(
                    Filter::new("headers")
                        .config(json!({"request": {"set": {"x-after-deny": "1"}}})),
                ),
        )
        .start()
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
    let deny = |status: u16, message: &str| {
        Filter::new("deny").config(json!({"status": status, "message": message}))
    };
    let gw = with_service(&up)
        .route(to_svc("teapot", "/teapot").filter(deny(418, "short and stout")))
        .route(to_svc("gone", "/gone").filter(deny(410, "moved on")))
        .start()
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
    let tag = |tag: &str| {
        Filter::new("headers").config(json!({
            "request": {"add": {"x-order": tag}},
            "response": {"add": {"x-order": tag}},
        }))
    };
    let gw = with_service(&up)
        .route(
            to_svc("chain", "/")
                .filter(tag("a"))
                .filter(tag("b"))
                .filter(tag("c")),
        )
        .start()
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
    let set_response = |name: &str, value: &str| {
        Filter::new("headers").config(json!({"response": {"set": {name: value}}}))
    };
    let gw = with_service(&up)
        .route(
            to_svc("early", "/")
                .filter(set_response("x-cors", "*"))
                .filter(Filter::new("deny").config(json!({"status": 401})))
                .filter(set_response("x-never", "1")),
        )
        .start()
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
    let gw = with_service(&up)
        .route(
            to_svc("bodies", "/")
                .set("max_body_bytes", json!(1024))
                .filter(
                    Filter::new("body-rewrite")
                        .config(json!({"via": "wasmgate", "response_suffix": "\n-- checked"})),
                ),
        )
        .start()
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

/// A filter that answers built that response itself: its own response phase does not run on
/// it, the response phases of the filters before it do.
#[tokio::test]
async fn the_filter_that_answers_skips_its_own_response_phase() {
    let up = Upstream::start("svc").await;
    let answer = || Filter::new("phases").config(json!({"answer": true}));
    let gw = with_service(&up)
        .route(to_svc("alone", "/alone").filter(answer()))
        .route(
            to_svc("after", "/after")
                .filter(Filter::new("phases"))
                .filter(answer()),
        )
        .start()
        .await;

    let r = gw.get("/alone").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "answered\n");
    assert_eq!(
        r.header("x-phase-response"),
        None,
        "its own response phase ran"
    );
    let r = gw.get("/after").await;
    assert_eq!(r.text(), "answered\n");
    assert_eq!(
        r.header("x-phase-response"),
        Some("called"),
        "the filter before it"
    );
    assert_eq!(up.hits(), 0);
}

/// Headers a request phase sets for the response (`Context::set_response_header`) go on
/// whatever response goes back, the filter's own answer included, where that filter's response
/// phase would run: before its own response phase, after those of the filters behind it.
#[tokio::test]
async fn response_headers_set_from_the_request_phase_reach_the_client() {
    let up = Upstream::start("svc").await;
    let phases = |config| Filter::new("phases").config(config);
    let gw = with_service(&up)
        .route(
            to_svc("early", "/early")
                .filter(phases(json!({"early": "a"})))
                .filter(phases(json!({"early": "b", "response": false}))),
        )
        .route(
            to_svc("answered", "/answered")
                .filter(phases(json!({"early": "a", "response": false})))
                .filter(phases(json!({"early": "own", "answer": true}))),
        )
        .start()
        .await;

    let r = gw.get("/early").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], "svc");
    assert_eq!(r.header_all("x-early"), ["b", "a"]);
    assert_eq!(
        r.header("x-early-seen"),
        Some("b,a"),
        "the first filter's response phase runs after both were applied"
    );
    assert!(
        !up.seen()[0].headers.contains_key("x-early"),
        "sent upstream"
    );

    let r = gw.get("/answered").await;
    assert_eq!(r.text(), "answered\n");
    assert_eq!(r.header_all("x-early"), ["own", "a"]);
    assert_eq!(up.hits(), 1);
}

/// A phase may answer with a message it built anew rather than the one it was given: the
/// request it builds replaces the client's (method, path, headers, body), the response it
/// builds replaces the upstream's.
#[tokio::test]
async fn a_message_a_filter_builds_anew_replaces_the_one_it_was_given() {
    let up = Upstream::start("svc").await;
    let gw = with_service(&up)
        .route(
            to_svc("rebuild", "/rebuild")
                .filter(Filter::new("phases").config(json!({"rebuild": true}))),
        )
        .start()
        .await;

    let r = gw
        .request("GET", "/rebuild/x", &[("x-client", "1")], "")
        .await;
    assert_eq!(r.status, 203, "{}", r.text());
    assert_eq!(r.text(), "rebuilt from 200\n");
    assert_eq!(r.header("x-rebuilt"), Some("yes"));
    let seen = up.seen().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/rebuilt")
    );
    assert_eq!(seen.headers["x-rebuilt"], "from /rebuild/x on rebuild");
    assert!(!seen.headers.contains_key("x-client"), "{:?}", seen.headers);
    assert_eq!(seen.body_len, "rebuilt body".len() as u64);
}

#[tokio::test]
async fn a_phase_the_filter_declares_unused_is_never_called() {
    let up = Upstream::start("svc").await;
    let route = |name: &str, config| {
        to_svc(name, &format!("/{name}")).filter(Filter::new("phases").config(config))
    };
    let gw = with_service(&up)
        .route(route("both", json!({})))
        .route(route("request-only", json!({"response": false})))
        .route(route("response-only", json!({"request": false})))
        .start()
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
