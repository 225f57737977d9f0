//! Test filter: its request phase calls `GET <path>` on the configured service and lets the
//! request on with `x-called: <status>` (or `x-called: failed`).

use serde::Deserialize;
use wasmgate_sdk::services::{self, Call};
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, export_filter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    service: String,
    path: String,
}

struct CallService(Config);

impl Filter for CallService {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        Ok(CallService(config))
    }

    fn needs(&self) -> Needs {
        Needs {
            response_phase: false,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, mut req: Request, _ctx: &Context) -> Result<Action, Error> {
        let called = match services::call(Call::get(&self.0.service, &self.0.path)) {
            Ok(resp) => resp.status.to_string(),
            Err(_) => "failed".to_string(),
        };
        req.set_header("x-called", called.into_bytes());
        Ok(req.into())
    }
}

export_filter!(CallService);
