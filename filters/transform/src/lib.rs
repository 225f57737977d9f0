//! `transform`: declarative request and response transformation: headers (add, set, remove,
//! rename), the upstream path (a template over route parameters), query parameters, and JSON
//! body fields (rename, move, remove, set), plus an allow-list of body fields.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmgate_sdk::header_edits::HeaderEdits;
use wasmgate_sdk::json::JsonError;
use wasmgate_sdk::{
    Action, Context, Error, Filter, Needs, Request, Response, export_filter, json, log,
    percent_encode,
};

/// Query parameter edits (request only), applied in the order remove, set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryEdits {
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

/// Edits for one direction.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Side {
    #[serde(default)]
    pub headers: HeaderEdits,
    /// Request only: the upstream path, with `{param}` filled from the route's captures; the
    /// query is kept.
    pub path: Option<String>,
    /// Request only.
    #[serde(default)]
    pub query: QueryEdits,
    /// Operations on a JSON body, in order (`rename`, `move`, `remove`, `set`; paths in the
    /// SDK's dot syntax, `a.b.0.c`).
    #[serde(default)]
    pub body: Vec<json::Edit>,
    /// Keep only these body fields (applied after `body`).
    pub allow: Option<Vec<String>>,
    /// `body` then `allow`, as the host runs them.
    #[serde(skip)]
    edits: Vec<json::Edit>,
}

impl Side {
    fn touches_body(&self) -> bool {
        !self.body.is_empty() || self.allow.is_some()
    }

    /// Nothing to do on this side.
    fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.path.is_none()
            && self.query.remove.is_empty()
            && self.query.set.is_empty()
            && !self.touches_body()
    }

    /// Apply the body operations and allow-list to a JSON body, in the host (the body is not
    /// copied into the filter); `Ok(false)` when it is not JSON.
    fn edit_body(
        &self,
        edit: impl FnOnce(&[json::Edit]) -> Result<(), JsonError>,
    ) -> Result<bool, Error> {
        match edit(&self.edits) {
            Ok(()) => Ok(true),
            Err(JsonError::NotJson(_)) => Ok(false),
            Err(other) => Err(other.into()),
        }
    }

    /// Check the side's config and put its body edits in the order they run.
    fn prepare(&mut self, side: &str) -> Result<(), Error> {
        self.headers.validate(&format!("{side}.headers"))?;
        if self
            .body
            .iter()
            .any(|e| matches!(e, json::Edit::Retain { .. }))
        {
            return Err(Error::msg(format!(
                "{side}.body: use `allow` to keep only some fields"
            )));
        }
        self.edits = self.body.clone();
        if let Some(paths) = &self.allow {
            self.edits.push(json::Edit::Retain {
                paths: paths.clone(),
            });
        }
        Ok(())
    }
}

/// The filter's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub request: Side,
    #[serde(default)]
    pub response: Side,
}

pub struct Transform(Config);

fn edit_query(req: &mut Request, edits: &QueryEdits) {
    if edits.remove.is_empty() && edits.set.is_empty() {
        return;
    }
    let mut pairs: Vec<(String, String)> = req
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    pairs.retain(|(k, _)| !edits.remove.contains(k) && !edits.set.contains_key(k));
    pairs.extend(
        edits
            .set
            .iter()
            .map(|(k, v)| (percent_encode(k), percent_encode(v))),
    );
    let query: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path = req.path().to_string();
    if query.is_empty() {
        req.set_path_with_query(path);
    } else {
        req.set_path_with_query(format!("{path}?{}", query.join("&")));
    }
}

impl Filter for Transform {
    type Config = Config;
    // Nothing is kept between requests: `self` is only the parsed config.
    fn new(mut config: Config) -> Result<Self, Error> {
        config.request.prepare("request")?;
        config.response.prepare("response")?;
        if let Some(path) = &config.request.path
            && !path.starts_with('/')
        {
            return Err(Error::msg("request.path must start with '/'"));
        }
        if config.response.path.is_some() {
            return Err(Error::msg("response.path: only the request has a path"));
        }
        if !config.response.query.set.is_empty() || !config.response.query.remove.is_empty() {
            return Err(Error::msg("response.query: only the request has a query"));
        }
        Ok(Self(config))
    }

    fn needs(&self) -> Needs {
        Needs {
            request_body: self.0.request.touches_body(),
            response_body: self.0.response.touches_body(),
            request_phase: !self.0.request.is_empty(),
            response_phase: !self.0.response.is_empty(),
            reuse_instance: true,
        }
    }

    fn on_request(&self, mut req: Request, ctx: &Context) -> Result<Action, Error> {
        let side = &self.0.request;
        side.headers.apply(req.headers_mut());
        if let Some(template) = &side.path {
            let mut path = template.clone();
            for (name, value) in ctx.params() {
                path = path.replace(&format!("{{{name}}}"), value);
            }
            req.set_path(&path);
        }
        edit_query(&mut req, &side.query);
        if side.touches_body() && req.body_size().is_some_and(|n| n > 0) {
            if !side.edit_body(|edits| req.edit_json(edits))? {
                let body = serde_json::json!({ "error": "the request body must be JSON" });
                return Ok(Response::json(400, &body).into());
            }
            req.headers_mut().set("content-type", "application/json");
        }
        Ok(req.into())
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        let side = &self.0.response;
        side.headers.apply(resp.headers_mut());
        if side.touches_body() && resp.body_size().is_some_and(|n| n > 0) {
            match side.edit_body(|edits| resp.edit_json(edits))? {
                true => resp.headers_mut().set("content-type", "application/json"),
                false => log::warn("response body is not JSON; left unchanged"),
            }
        }
        Ok(resp)
    }
}

export_filter!(Transform);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn transform(config: Value) -> Transform {
        Transform::new(serde_json::from_value(config).unwrap()).unwrap()
    }

    #[test]
    fn renames_the_seed_body_field_both_ways() {
        let t = transform(json!({
            "request": {"body": [{"rename": {"from": "userId", "to": "id"}}]},
            "response": {"body": [{"rename": {"from": "id", "to": "userId"}}]},
        }));
        let req = Request::new("POST", "/users").with_body(r#"{"userId":"123"}"#);
        let Action::Continue(req) = t.on_request(req, &Context::default()).unwrap() else {
            panic!()
        };
        assert_eq!(req.json::<Value>().unwrap(), json!({"id": "123"}));
        let resp = t
            .on_response(
                Response::new(200).with_body(r#"{"id":"123","name":"Ada"}"#),
                &Context::default(),
            )
            .unwrap();
        assert_eq!(
            resp.json_body::<Value>().unwrap(),
            json!({"userId": "123", "name": "Ada"})
        );
    }

    #[test]
    fn edits_path_query_and_headers() {
        let t = transform(json!({"request": {
            "path": "/v2/users/{id}",
            "query": {"remove": ["debug"], "set": {"source": "gateway x"}},
            "headers": {"rename": {"x-old": "x-new"}},
        }}));
        let req = Request::new("GET", "/users/7?debug=1&page=2").with_header("x-old", "v");
        let ctx = Context::new("r", &[("id", "7")]);
        let Action::Continue(req) = t.on_request(req, &ctx).unwrap() else {
            panic!()
        };
        assert_eq!(
            req.path_with_query(),
            "/v2/users/7?page=2&source=gateway%20x"
        );
        assert_eq!(req.header("x-new"), Some("v"));
        assert!(req.header("x-old").is_none());
        assert!(
            !t.needs().request_body,
            "no body work configured, so no buffering"
        );
    }
}
