//! The built `transform.wasm` in the gateway's sandbox (wasmgate-testkit).

use serde_json::{Value, json};
use wasmgate_sdk::{Action, Context, Request, Response};
use wasmgate_testkit::{Level, TestFilter, TestRoute};

fn route() -> TestRoute {
    TestFilter::load(wasmgate_artifacts::filter("transform"))
        .unwrap()
        .route(json!({
            "request": {
                "path": "/internal/users/{id}",
                "body": [{ "rename": { "from": "userId", "to": "id" } }],
            },
            "response": { "allow": ["id", "name"] },
        }))
        .unwrap()
        .context(Context::new("users", &[("id", "7")]))
}

#[test]
fn renames_request_fields_rewrites_the_path_and_filters_the_answer() {
    let route = route();
    assert!(route.needs().request_body && route.needs().response_body);
    let req = Request::new("POST", "/users/7?v=1").with_body(r#"{"userId":"7","name":"Ada"}"#);
    let Action::Continue(req) = route.on_request(req).unwrap() else {
        panic!("transform answered itself");
    };
    assert_eq!(req.path_with_query(), "/internal/users/7?v=1");
    let body: Value = req.json().unwrap();
    assert_eq!(body, json!({ "id": "7", "name": "Ada" }));

    let upstream = Response::json(200, &json!({ "id": "7", "name": "Ada", "password": "x" }));
    let resp = route.on_response(upstream).unwrap();
    let body: Value = resp.json_body().unwrap();
    assert_eq!(body, json!({ "id": "7", "name": "Ada" }));
}

#[test]
fn a_request_body_that_is_not_json_gets_400_and_a_bad_answer_passes_with_a_warning() {
    let route = route();
    let req = Request::new("POST", "/users/7").with_body("not json");
    let Action::Respond(resp) = route.on_request(req).unwrap() else {
        panic!("passed a body it could not transform");
    };
    assert_eq!(resp.status(), 400);

    let resp = route
        .on_response(Response::text(200, "plain text"))
        .unwrap();
    assert_eq!(resp.body(), Some(&b"plain text"[..]));
    let logs = route.logs();
    assert!(
        logs.iter()
            .any(|l| l.level == Level::WARN && l.message.contains("not JSON")),
        "{logs:?}"
    );
}

#[test]
fn a_body_edit_keeps_the_rest_of_the_body_as_sent_and_a_repeated_key_cannot_hide() {
    let route = TestFilter::load(wasmgate_artifacts::filter("transform"))
        .unwrap()
        .route(json!({ "request": { "body": [
            { "set": { "path": "role", "value": "user" } },
            { "remove": { "path": "debug" } },
        ] } }))
        .unwrap();
    // The upstream reads the last `role` (as serde_json and most parsers do): the set must reach
    // it. Untouched values keep their spelling: `1.50`, `2e3`, the escape and the spaces.
    let sent = r#"{"role": "admin", "items": [1.50, 2e3, {"k": "\u00e5"}], "debug": true, "role": "root"}"#;
    let Action::Continue(req) = route
        .on_request(Request::new("POST", "/").with_body(sent))
        .unwrap()
    else {
        panic!("transform answered itself");
    };
    assert_eq!(
        std::str::from_utf8(req.body().unwrap()).unwrap(),
        r#"{"role":"user","items":[1.50, 2e3, {"k": "\u00e5"}]}"#
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
}
