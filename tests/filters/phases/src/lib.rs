//! Declares the phases its config names (`request`, `response`; both by default) and marks
//! every phase it is called in, declared or not: `x-phase-request` goes upstream,
//! `x-phase-response` back to the client. A mark from an undeclared phase means the gateway
//! called a phase the filter said it does not use.

use serde::Deserialize;
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, Response, export_filter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "yes")]
    request: bool,
    #[serde(default = "yes")]
    response: bool,
}

fn yes() -> bool {
    true
}

struct Phases(Config);

impl Filter for Phases {
    type Config = Config;
    fn new(config: Config) -> Result<Self, Error> {
        Ok(Phases(config))
    }

    fn needs(&self) -> Needs {
        Needs {
            request_phase: self.0.request,
            response_phase: self.0.response,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, mut req: Request, _ctx: &Context) -> Result<Action, Error> {
        req.set_header("x-phase-request", "called");
        Ok(req.into())
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        resp.set_header("x-phase-response", "called");
        Ok(resp)
    }
}

export_filter!(Phases);
