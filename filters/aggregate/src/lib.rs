//! `aggregate`: one route, many services, one answer. Named sub-requests run concurrently; each
//! result goes into the merged JSON at its path. An optional part that fails is left out and the
//! answer says so (`x-wasmgate-partial: true`); a required part that fails gives 502 naming it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use wasmgate_sdk::services::{self, Call};
use wasmgate_sdk::{
    Action, Context, Error, Filter, Needs, Request, Response, export_filter, json as jpath,
    percent_encode,
};

fn get() -> String {
    "GET".into()
}

fn yes() -> bool {
    true
}

/// One sub-request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Names the part in errors.
    pub name: String,
    /// A service granted to this filter on the route.
    pub service: String,
    #[serde(default = "get")]
    pub method: String,
    /// Path template: `{param}` is a route parameter, `{header.NAME}` a request header.
    pub path: String,
    /// Where the part's JSON goes in the answer (dot path; empty merges at the top).
    pub at: String,
    /// A required part that fails fails the request (502); an optional one is left out.
    #[serde(default = "yes")]
    pub required: bool,
    /// Timeout for this part, in milliseconds (default: the route's timeout).
    pub timeout_ms: Option<u64>,
}

/// The filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub parts: Vec<Part>,
    /// Request headers copied to every sub-request (for example `authorization`).
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

pub struct Aggregate(Config);

/// Fill `{param}` and `{header.NAME}`; values are percent-encoded for a path segment.
fn render(template: &str, req: &Request, ctx: &Context) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        let name = &rest[open + 1..open + len];
        let value = match name.strip_prefix("header.") {
            Some(h) => req.header(h).unwrap_or(""),
            None => ctx.param(name).unwrap_or(""),
        };
        out.push_str(&percent_encode(value));
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
}

impl Filter for Aggregate {
    type Config = Config;
    // Nothing is kept between requests: `self` is only the parsed config.

    fn new(config: Config) -> Result<Self, Error> {
        if config.parts.is_empty() {
            return Err(Error::msg("parts: at least one part is needed"));
        }
        for p in &config.parts {
            if !p.path.starts_with('/') {
                return Err(Error::msg(format!(
                    "part {:?}: path must start with '/'",
                    p.name
                )));
            }
        }
        Ok(Self(config))
    }

    /// Works on requests only, keeps nothing between requests.
    fn needs(&self) -> Needs {
        Needs {
            response_phase: false,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, req: Request, ctx: &Context) -> Result<Action, Error> {
        let calls: Vec<Call> = self
            .0
            .parts
            .iter()
            .map(|p| {
                let mut call = Call::new(&p.method, &p.service, &render(&p.path, &req, ctx))
                    .header("accept", "application/json")
                    .header("x-request-id", ctx.request_id());
                for h in &self.0.forward_headers {
                    for v in req.headers().get_all(h) {
                        call = call.header(h, v);
                    }
                }
                if let Some(ms) = p.timeout_ms {
                    call = call.timeout(Duration::from_millis(ms));
                }
                call
            })
            .collect();

        let mut merged = Value::Object(Default::default());
        let mut partial = Vec::new();
        for (part, result) in self.0.parts.iter().zip(services::call_all(calls)) {
            let outcome = match result {
                Ok(resp) if resp.is_success() => resp
                    .json::<Value>()
                    .map_err(|_| "answered with a body that is not JSON".to_string()),
                Ok(resp) => Err(format!("answered {}", resp.status)),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(value) => jpath::set(&mut merged, &part.at, value)?,
                Err(reason) if part.required => {
                    wasmgate_sdk::log::warn(&format!(
                        "required part {:?} failed: {reason}",
                        part.name
                    ));
                    let body = json!({ "error": "a required part failed", "part": part.name });
                    return Ok(Response::json(502, &body).into());
                }
                Err(reason) => {
                    wasmgate_sdk::log::info(&format!(
                        "optional part {:?} left out: {reason}",
                        part.name
                    ));
                    partial.push(part.name.as_str());
                }
            }
        }
        let mut resp = Response::json(200, &merged);
        if !partial.is_empty() {
            resp.set_header("x-wasmgate-partial", "true");
            resp.set_header("x-wasmgate-missing", partial.join(","));
        }
        Ok(resp.into())
    }
}

export_filter!(Aggregate);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_params_and_headers_encoded() {
        let req = Request::new("GET", "/").with_header("x-tenant", "acme corp");
        let ctx = Context::new("profile", &[("id", "42")]);
        assert_eq!(
            render("/t/{header.x-tenant}/users/{id}", &req, &ctx),
            "/t/acme%20corp/users/42"
        );
    }

    #[test]
    fn outside_the_gateway_a_required_part_fails_with_502() {
        let config: Config = serde_json::from_value(json!({
            "parts": [{"name": "user", "service": "users", "path": "/users/{id}", "at": "user"}]
        }))
        .unwrap();
        let f = Aggregate::new(config).unwrap();
        let Action::Respond(resp) = f
            .on_request(Request::new("GET", "/"), &Context::new("p", &[("id", "1")]))
            .unwrap()
        else {
            panic!("aggregate always answers");
        };
        assert_eq!(resp.status(), 502);
    }
}
