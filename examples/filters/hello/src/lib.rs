//! `hello`: a wasmgate filter.
//!
//! Adds `x-greeting` (from the route's config) to every request the upstream receives, refuses
//! `/blocked` with a 403, and tags every response with `x-filtered-by: hello`. Replace the
//! bodies of `on_request` and `on_response` with your own policy.

use serde::Deserialize;
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, Response, export_filter};

/// This filter's config: the table under `config` on its entry in a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The value of the `x-greeting` header sent upstream.
    #[serde(default = "default_greeting")]
    pub greeting: String,
}

fn default_greeting() -> String {
    "hello from hello".into()
}

/// The filter, configured for one route.
pub struct Hello {
    config: Config,
}

impl Filter for Hello {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        // An error here rejects the route's config: `wasmgate check` reports it.
        if config.greeting.is_empty() {
            return Err(Error::msg("greeting must not be empty"));
        }
        Ok(Self { config })
    }

    fn needs(&self) -> Needs {
        // Nothing is kept between requests, so one instance may serve many (much cheaper).
        Needs {
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, mut req: Request, ctx: &Context) -> Result<Action, Error> {
        if req.path() == "/blocked" {
            wasmgate_sdk::log::info(&format!("refused {} on route {}", req.path(), ctx.route()));
            let body = serde_json::json!({ "error": "blocked by hello" });
            return Ok(Response::json(403, &body).into());
        }
        req.set_header("x-greeting", self.config.greeting.as_str());
        Ok(req.into())
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        resp.set_header("x-filtered-by", "hello");
        Ok(resp)
    }
}

export_filter!(Hello);

/// Unit tests: the phases called natively, no gateway.
#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Hello {
        Hello::new(Config {
            greeting: "hi".into(),
        })
        .unwrap()
    }

    #[test]
    fn greets_requests() {
        let ctx = Context::new("test", &[]);
        let Action::Continue(req) = filter().on_request(Request::new("GET", "/"), &ctx).unwrap()
        else {
            panic!("expected the request to continue");
        };
        assert_eq!(req.header("x-greeting"), Some("hi"));
    }

    #[test]
    fn refuses_blocked() {
        let ctx = Context::new("test", &[]);
        let action = filter()
            .on_request(Request::new("GET", "/blocked"), &ctx)
            .unwrap();
        assert!(matches!(action, Action::Respond(resp) if resp.status() == 403));
    }

    #[test]
    fn rejects_an_empty_greeting() {
        assert!(
            Hello::new(Config {
                greeting: String::new()
            })
            .is_err()
        );
    }
}
