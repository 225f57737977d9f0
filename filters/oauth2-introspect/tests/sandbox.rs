//! The built `oauth2-introspect.wasm` in the gateway's sandbox (wasmgate-testkit), with the
//! introspection endpoint stubbed.

use serde_json::json;
use wasmgate_sdk::{Action, Request, Response};
use wasmgate_testkit::{Level, TestFilter, TestRoute};

fn route() -> TestRoute {
    TestFilter::load(wasmgate_artifacts::filter("oauth2-introspect"))
        .unwrap()
        .route(json!({
            "service": "idp",
            "client_id": "gateway",
            "client_secret": "s3cret",
            "required_scopes": ["orders:write"],
            "forward": { "sub": "x-user-id" },
        }))
        .unwrap()
}

fn bearer(token: &str) -> Request {
    Request::new("POST", "/orders").with_header("authorization", format!("Bearer {token}"))
}

/// An introspection endpoint that knows one token, `good` (and `narrow`, without the scope).
fn idp(req: &Request) -> Response {
    let form = String::from_utf8_lossy(req.body().unwrap_or_default()).into_owned();
    let token = form.split('&').find_map(|kv| kv.strip_prefix("token="));
    let answer = match token.unwrap_or_default() {
        "good" => json!({ "active": true, "sub": "u-1", "scope": "orders:read orders:write" }),
        "narrow" => json!({ "active": true, "sub": "u-2", "scope": "orders:read" }),
        _ => json!({ "active": false }),
    };
    Response::json(200, &answer)
}

#[test]
fn an_active_token_passes_and_its_result_is_cached() {
    let route = route().service("idp", idp);
    for _ in 0..2 {
        let Action::Continue(req) = route.on_request(bearer("good")).unwrap() else {
            panic!("refused an active token");
        };
        assert_eq!(req.header("x-user-id"), Some("u-1"));
    }
    let calls = route.service_calls();
    assert_eq!(
        calls.len(),
        1,
        "the second request used the cache: {calls:?}"
    );
    let call = &calls[0].request;
    assert_eq!((call.method(), call.path()), ("POST", "/introspect"));
    assert!(call.header("authorization").unwrap().starts_with("Basic "));
}

#[test]
fn inactive_tokens_and_missing_scopes_are_refused() {
    let route = route().service("idp", idp);
    let Action::Respond(resp) = route.on_request(bearer("revoked")).unwrap() else {
        panic!("let an inactive token through");
    };
    assert_eq!(resp.status(), 401);
    let Action::Respond(resp) = route.on_request(bearer("narrow")).unwrap() else {
        panic!("let a token without the scope through");
    };
    assert_eq!(resp.status(), 403);
    assert!(
        resp.header("www-authenticate")
            .unwrap()
            .contains("orders:write")
    );
}

#[test]
fn an_unreachable_endpoint_answers_503_and_logs_why() {
    let route = route().service_down("idp");
    let Action::Respond(resp) = route.on_request(bearer("good")).unwrap() else {
        panic!("let a token through unchecked");
    };
    assert_eq!(resp.status(), 503);
    assert!(
        route
            .logs()
            .iter()
            .any(|l| l.level == Level::WARN && l.message.contains("introspection failed")),
        "{:?}",
        route.logs()
    );
}
