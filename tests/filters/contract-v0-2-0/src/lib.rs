//! A filter built against `wasmgate:filter@0.2.0` (a copy of it is in `wit/` beside this crate),
//! without the SDK: 0.3 changed the contract, so the gateway must refuse it, saying which SDK to
//! rebuild it against. Its request phase adds `x-contract: 0.2.0` to the request.

wit_bindgen::generate!({
    path: "wit",
    world: "gateway-filter",
});

use exports::wasmgate::filter::filter::{Guest, Needs, RequestAction};
use wasmgate::filter::types::{Request, Response, RouteContext};

struct Contract;

impl Guest for Contract {
    fn configure(_config: String) -> Result<Needs, String> {
        Ok(Needs {
            request_body: false,
            response_body: false,
            request_phase: true,
            response_phase: false,
            reuse_instance: true,
        })
    }

    fn on_request(_ctx: RouteContext, mut req: Request) -> Result<RequestAction, String> {
        req.headers.push(("x-contract".into(), b"0.2.0".to_vec()));
        Ok(RequestAction::Continue(req))
    }

    fn on_response(_ctx: RouteContext, resp: Response) -> Result<Response, String> {
        Ok(resp)
    }
}

export!(Contract);
