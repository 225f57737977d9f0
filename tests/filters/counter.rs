// Shared by counter-reuse and counter-fresh. Deliberately keeps state across requests (what a
// filter must not do when it declares its instances reusable) so tests can see which instance
// served a request: `x-instance-requests` is how many requests this instance has seen.
// `?panic` makes the request phase trap.

use std::cell::Cell;

use wasmgate_sdk::{
    Action, Context, Error, Filter, Needs, NoConfig, Request, Response, export_filter,
};

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

struct Counter;

impl Filter for Counter {
    type Config = NoConfig;
    fn new(_: NoConfig) -> Result<Self, Error> {
        Ok(Counter)
    }

    fn needs(&self) -> Needs {
        Needs {
            reuse_instance: REUSE,
            ..Needs::default()
        }
    }

    fn on_request(&self, req: Request, _ctx: &Context) -> Result<Action, Error> {
        if req.query().is_some_and(|q| q.contains("panic")) {
            panic!("asked to panic");
        }
        SEEN.set(SEEN.get() + 1);
        Ok(Action::Continue(req))
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        resp.set_header("x-instance-requests", SEEN.get().to_string());
        Ok(resp)
    }
}

export_filter!(Counter);
