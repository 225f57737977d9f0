//! Test filter: reads and modifies both bodies. The request's JSON object gets a `"via"` field;
//! the response body gets a configured suffix.

use serde::Deserialize;
use serde_json::Value;
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, Response, export_filter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    via: String,
    #[serde(default)]
    response_suffix: String,
}

struct BodyRewrite(Config);

impl Filter for BodyRewrite {
    type Config = Config;
    fn new(config: Config) -> Result<Self, Error> {
        Ok(Self(config))
    }

    fn needs(&self) -> Needs {
        Needs {
            request_body: true,
            response_body: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, mut req: Request, _ctx: &Context) -> Result<Action, Error> {
        let mut body: Value = match req.json() {
            Ok(v) => v,
            Err(e) => return Ok(Response::text(400, format!("expected a JSON body: {e}\n")).into()),
        };
        let Some(obj) = body.as_object_mut() else {
            return Ok(Response::text(400, "expected a JSON object\n").into());
        };
        obj.insert("via".into(), Value::String(self.0.via.clone()));
        req.set_json(&body)?;
        Ok(req.into())
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        let mut body = resp.body().unwrap_or_default().to_vec();
        body.extend_from_slice(self.0.response_suffix.as_bytes());
        resp.set_body(body);
        Ok(resp)
    }
}

export_filter!(BodyRewrite);
