wit_bindgen::generate!({ path: "../wit", world: "contract" });

use draft::filter::types::{Request, Response};
use exports::draft::filter::filter::{Guest, RequestRecord, ResponseRecord, RouteContext};

struct S;

impl Guest for S {
    fn on_request(req: &Request) -> Result<(), String> {
        req.set_header("x-gateway", b"wasmgate");
        Ok(())
    }
    fn on_response(resp: &Response) -> Result<(), String> {
        resp.set_header("x-powered-by", b"wasmgate");
        Ok(())
    }
    fn on_request_record(
        _ctx: RouteContext,
        mut req: RequestRecord,
    ) -> Result<RequestRecord, String> {
        req.headers.retain(|(n, _)| n != "x-gateway");
        req.headers.push(("x-gateway".into(), b"wasmgate".to_vec()));
        Ok(req)
    }
    fn on_response_record(
        _ctx: RouteContext,
        mut resp: ResponseRecord,
    ) -> Result<ResponseRecord, String> {
        resp.headers.retain(|(n, _)| n != "x-powered-by");
        resp.headers
            .push(("x-powered-by".into(), b"wasmgate".to_vec()));
        Ok(resp)
    }
}

export!(S);
