use serde::Deserialize;
use wasmgate_sdk::{Action, Context, Error, Filter, Request, Response, export_filter};

#[derive(Deserialize)]
struct Config {
    header: String,
}

struct RequireHeader(Config);

impl Filter for RequireHeader {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        Ok(Self(config))
    }

    fn on_request(&self, req: Request, _ctx: &Context) -> Result<Action, Error> {
        if req.header(&self.0.header).is_some() {
            return Ok(req.into());
        }
        let body = serde_json::json!({ "error": format!("missing header {}", self.0.header) });
        Ok(Response::json(401, &body).into())
    }
}

export_filter!(RequireHeader);
