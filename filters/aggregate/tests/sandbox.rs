//! The built `aggregate.wasm` in the gateway's sandbox (wasmgate-testkit), with its services
//! stubbed.

use serde_json::{Value, json};
use wasmgate_sdk::{Action, Context, Request, Response};
use wasmgate_testkit::{TestFilter, TestRoute};

fn route() -> TestRoute {
    TestFilter::load(wasmgate_artifacts::filter("aggregate"))
        .unwrap()
        .route(json!({
            "forward_headers": ["authorization"],
            "parts": [
                { "name": "user", "service": "users", "path": "/users/{id}", "at": "user" },
                { "name": "orders", "service": "orders", "path": "/orders/user/{id}",
                  "at": "orders", "required": false },
            ],
        }))
        .unwrap()
        .context(Context::new("profile", &[("id", "1")]))
}

fn users(req: &Request) -> Response {
    assert_eq!(req.header("authorization"), Some("Bearer t"));
    Response::json(200, &json!({ "id": "1", "name": "Ada" }))
}

fn answer(route: &TestRoute) -> Response {
    let req = Request::new("GET", "/profile/1").with_header("authorization", "Bearer t");
    match route.on_request(req).unwrap() {
        Action::Respond(resp) => resp,
        Action::Continue(_) => panic!("aggregate always answers"),
    }
}

#[test]
fn merges_every_part_into_one_answer() {
    let route = route()
        .service("users", users)
        .service("orders", |_| Response::json(200, &json!([{ "id": "o-1" }])));
    let resp = answer(&route);
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json_body().unwrap();
    assert_eq!(
        body,
        json!({ "user": { "id": "1", "name": "Ada" }, "orders": [{ "id": "o-1" }] })
    );
    let mut paths: Vec<_> = route
        .service_calls()
        .iter()
        .map(|c| format!("{} {}", c.service, c.request.path()))
        .collect();
    paths.sort();
    assert_eq!(paths, ["orders /orders/user/1", "users /users/1"]);
}

#[test]
fn an_optional_part_that_fails_is_left_out_and_a_required_one_fails_the_answer() {
    let partial = route().service("users", users).service_down("orders");
    let resp = answer(&partial);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.header("x-wasmgate-partial"), Some("true"));
    assert_eq!(resp.header("x-wasmgate-missing"), Some("orders"));

    let failed = route()
        .service_down("users")
        .service("orders", |_| Response::json(200, &json!([])));
    let resp = answer(&failed);
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json_body().unwrap();
    assert_eq!(body["part"], "user");
}
