//! Test filter: fails its request phase in the configured way.

use serde::Deserialize;
use wasmgate_sdk::{Action, Context, Error, Filter, Request, export_filter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum Mode {
    /// Return an error value.
    Error,
    /// Panic (a trap).
    Panic,
    /// Loop forever (stopped by the deadline).
    Loop,
    /// Allocate without bound (stopped by the memory cap).
    Alloc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
}

struct Fail(Config);

impl Filter for Fail {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        Ok(Self(config))
    }

    fn on_request(&self, req: Request, _ctx: &Context) -> Result<Action, Error> {
        match self.0.mode {
            Mode::Error => Err(Error::msg("secret internal detail: db password is hunter2")),
            Mode::Panic => panic!("filter panicked on {}", req.path()),
            Mode::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Mode::Alloc => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
        }
    }
}

export_filter!(Fail);
