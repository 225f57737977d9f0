//! Test filter: metrics of its own, with labels from the request, and an access log field.
//!
//! - `seen{user}` counter: one per request, `user` from the `x-user` header (`anonymous`
//!   without one), so a test controls its cardinality;
//! - `in_flight` gauge, `body_bytes` histogram (buckets 10, 100, 1000) of `content-length`;
//! - the access log field `user`.
//!
//! Config `{ "bad_metric": true }` defines an invalid metric: configuring fails with its reason.

use serde::Deserialize;
use wasmgate_sdk::metrics::{Counter, Gauge, Histogram};
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, Response, export_filter};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    bad_metric: bool,
}

struct Metered {
    seen: Counter<1>,
    in_flight: Gauge<0>,
    body_bytes: Histogram<0>,
}

impl Filter for Metered {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        if config.bad_metric {
            Counter::define("Bad-Name", "", [])?;
        }
        Ok(Metered {
            seen: Counter::define("seen", "Requests seen, by user", ["user"])?,
            in_flight: Gauge::define("in_flight", "Requests between the two phases", [])?,
            body_bytes: Histogram::define(
                "body_bytes",
                "Request body sizes",
                [],
                &[10.0, 100.0, 1000.0],
            )?,
        })
    }

    fn needs(&self) -> Needs {
        Needs {
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, req: Request, _ctx: &Context) -> Result<Action, Error> {
        let user = req.header("x-user").unwrap_or("anonymous").to_string();
        self.seen.inc([&user]);
        self.in_flight.add([], 1.0);
        if let Some(len) = req
            .header("content-length")
            .and_then(|l| l.parse::<f64>().ok())
        {
            self.body_bytes.observe([], len);
        }
        wasmgate_sdk::log::field("user", &user);
        Ok(req.into())
    }

    fn on_response(&self, resp: Response, _ctx: &Context) -> Result<Response, Error> {
        self.in_flight.add([], -1.0);
        Ok(resp)
    }
}

export_filter!(Metered);
