//! A filter built against the retired `wasmgate:filter@0.1.0` contract (a copy of it is in
//! `wit/` beside this crate), without the SDK: the gateway must refuse it with a message naming
//! the version it was built for and the version the gateway speaks.

wit_bindgen::generate!({
    path: "wit",
    world: "gateway-filter",
});

use exports::wasmgate::filter::filter::{FilterInfo, Guest, RequestAction};
use wasmgate::filter::types::{Request, Response, RouteContext};

struct Legacy;

const INFO: FilterInfo = FilterInfo {
    needs_request_body: false,
    needs_response_body: false,
    reuse_instance: false,
};

impl Guest for Legacy {
    fn describe() -> FilterInfo {
        INFO
    }

    fn configure(_config: String) -> Result<FilterInfo, String> {
        Ok(INFO)
    }

    fn on_request(_ctx: RouteContext, req: Request) -> Result<RequestAction, String> {
        Ok(RequestAction::Continue(req))
    }

    fn on_response(_ctx: RouteContext, resp: Response) -> Result<Response, String> {
        Ok(resp)
    }
}

export!(Legacy);
