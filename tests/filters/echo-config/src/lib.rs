//! Test filter: answers with its own config and the route context, as JSON.

use serde_json::{Value, json};
use wasmgate_sdk::{Action, Context, Error, Filter, Request, Response, export_filter};

struct EchoConfig(Value);

impl Filter for EchoConfig {
    type Config = Value;

    fn new(config: Value) -> Result<Self, Error> {
        Ok(Self(config))
    }

    fn on_request(&self, req: Request, ctx: &Context) -> Result<Action, Error> {
        let params: serde_json::Map<String, Value> = ctx
            .params()
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        Ok(Response::json(
            200,
            &json!({
                "config": self.0,
                "route": ctx.route(),
                "params": params,
                "path": req.path_with_query(),
                "request_id": ctx.request_id(),
            }),
        )
        .into())
    }
}

export_filter!(EchoConfig);
