//! Test filter: answers at once with a configured status unless the request carries a header.

use serde::Deserialize;
use wasmgate_sdk::{Action, Context, Error, Filter, Request, Response, export_filter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    status: u16,
    #[serde(default = "default_message")]
    message: String,
    /// Requests carrying this header pass through.
    unless_header: Option<String>,
}

fn default_message() -> String {
    "denied".into()
}

struct Deny(Config);

impl Filter for Deny {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        if !(200..=599).contains(&config.status) {
            return Err(Error::msg(format!(
                "status {} is not a final HTTP status",
                config.status
            )));
        }
        Ok(Self(config))
    }

    fn on_request(&self, req: Request, ctx: &Context) -> Result<Action, Error> {
        if let Some(h) = &self.0.unless_header
            && req.headers().contains(h)
        {
            return Ok(req.into());
        }
        wasmgate_sdk::log::info(&format!("denying {} on route {}", req.path(), ctx.route()));
        Ok(Response::json(
            self.0.status,
            &serde_json::json!({ "denied": self.0.message }),
        )
        .into())
    }
}

export_filter!(Deny);
