//! Test filter: rewrites the upstream path from a template using route parameters.

use serde::Deserialize;
use wasmgate_sdk::{Action, Context, Error, Filter, Request, export_filter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// e.g. `/internal/users/{id}`
    to: String,
}

struct RewritePath(Config);

impl Filter for RewritePath {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        if !config.to.starts_with('/') {
            return Err(Error::msg("`to` must start with '/'"));
        }
        Ok(Self(config))
    }

    fn on_request(&self, mut req: Request, ctx: &Context) -> Result<Action, Error> {
        let mut path = self.0.to.clone();
        for (name, value) in ctx.params() {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        req.set_path(&path);
        Ok(req.into())
    }
}

export_filter!(RewritePath);
