//! Declares the phases its config names (`request`, `response`; both by default) and marks
//! every phase it is called in, declared or not: `x-phase-request` goes upstream,
//! `x-phase-response` back to the client. A mark from an undeclared phase means the gateway
//! called a phase the filter said it does not use.

use serde::Deserialize;
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, Response, export_filter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "yes")]
    request: bool,
    #[serde(default = "yes")]
    response: bool,
    /// Answer each phase with a message built anew instead of the one it was given: the
    /// request phase continues with `POST /rebuilt` (one header, a body), the response phase
    /// returns a 203 of its own.
    #[serde(default)]
    rebuild: bool,
    /// The request phase answers `200 answered` itself.
    #[serde(default)]
    answer: bool,
    /// The request phase adds this value to the response's `x-early` (through the context);
    /// the response phase reports the `x-early` values it finds in `x-early-seen`.
    #[serde(default)]
    early: Option<String>,
}

fn yes() -> bool {
    true
}

struct Phases(Config);

impl Filter for Phases {
    type Config = Config;
    fn new(config: Config) -> Result<Self, Error> {
        Ok(Phases(config))
    }

    fn needs(&self) -> Needs {
        Needs {
            request_phase: self.0.request,
            response_phase: self.0.response,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, mut req: Request, ctx: &Context) -> Result<Action, Error> {
        if let Some(early) = &self.0.early {
            ctx.append_response_header("x-early", early);
        }
        if self.0.answer {
            return Ok(Response::text(200, "answered\n").into());
        }
        if self.0.rebuild {
            let rebuilt = Request::new("POST", "/rebuilt")
                .with_header(
                    "x-rebuilt",
                    format!("from {} on {}", req.path(), ctx.route()),
                )
                .with_body("rebuilt body");
            return Ok(rebuilt.into());
        }
        req.set_header("x-phase-request", "called");
        Ok(req.into())
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        if self.0.rebuild {
            return Ok(
                Response::text(203, format!("rebuilt from {}\n", resp.status()))
                    .with_header("x-rebuilt", "yes"),
            );
        }
        resp.set_header("x-phase-response", "called");
        if self.0.early.is_some() {
            let seen: Vec<_> = resp
                .headers()
                .get_all("x-early")
                .map(String::from_utf8_lossy)
                .collect();
            resp.set_header("x-early-seen", seen.join(","));
        }
        Ok(resp)
    }
}

export_filter!(Phases);
