//! Test filter: fails its request phase (or, with `phase = "response"`, only its response phase)
//! in the configured way.

use serde::Deserialize;
use wasmgate_sdk::{Action, Context, Error, Filter, Request, Response, export_filter};

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
    /// Recurse without bound (stack overflow).
    Stack,
    /// Answer with an 8 MiB body (over the output cap).
    Huge,
    /// Read past the end of linear memory (a trap whose message mentions memory, though no
    /// memory cap was reached).
    OutOfBounds,
    /// Set a header value with a line break (invalid output), then continue.
    InvalidHeader,
    /// From the request phase, set such a header for the response, then continue.
    InvalidResponseHeader,
}

#[allow(unconditional_recursion)] // the point: overflow the stack
fn recurse(depth: u64) -> u64 {
    let pad = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + pad[0]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    /// The phase that fails; the other passes everything through.
    #[serde(default)]
    phase: Phase,
    /// Before failing, set `x-marked: before-failing` on the message (a fail-open route must
    /// not pass it on).
    #[serde(default)]
    mark: bool,
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum Phase {
    #[default]
    Request,
    Response,
}

struct Fail(Config);

/// The header `mark` sets.
const MARK: &str = "x-marked";

impl Filter for Fail {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        Ok(Self(config))
    }

    fn on_request(&self, mut req: Request, ctx: &Context) -> Result<Action, Error> {
        if self.0.phase == Phase::Response {
            return Ok(req.into());
        }
        if self.0.mark {
            req.set_header(MARK, "before-failing");
        }
        match self.0.mode {
            Mode::InvalidHeader => {
                req.set_header("x-broken", "line\r\nbreak");
                return Ok(req.into());
            }
            Mode::InvalidResponseHeader => {
                ctx.set_response_header("x-broken", "line\r\nbreak");
                return Ok(req.into());
            }
            _ => {}
        }
        let path = req.path().to_owned();
        self.fail(&path)
    }

    fn on_response(&self, mut resp: Response, ctx: &Context) -> Result<Response, Error> {
        if self.0.phase == Phase::Request {
            return Ok(resp);
        }
        if self.0.mark {
            resp.set_header(MARK, "before-failing");
        }
        match self.0.mode {
            Mode::InvalidHeader => {
                resp.set_header("x-broken", "line\r\nbreak");
                return Ok(resp);
            }
            Mode::InvalidResponseHeader => {
                // Valid, but a response phase may not queue headers for the response.
                ctx.set_response_header("x-early", "from-the-response-phase");
                return Ok(resp);
            }
            _ => {}
        }
        match self.fail("the response")? {
            Action::Respond(resp) => Ok(resp),
            Action::Continue(_) => Ok(resp),
        }
    }
}

impl Fail {
    /// Misbehave as configured; returns only for `stack` and `huge`.
    fn fail(&self, what: &str) -> Result<Action, Error> {
        match self.0.mode {
            Mode::Error => Err(Error::msg("secret internal detail: db password is hunter2")),
            Mode::Panic => panic!("filter panicked on {what}"),
            Mode::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Mode::Stack => Ok(Request::new("GET", &format!("/{}", recurse(0))).into()),
            Mode::Huge => Ok(Response::new(200).with_body(vec![b'x'; 8 << 20]).into()),
            Mode::OutOfBounds => {
                // Past anything a 32-bit linear memory of this filter's cap can hold.
                let past_the_end = std::hint::black_box(0xFFFF_FFF0usize) as *const u8;
                // SAFETY: none; the point is the trap the read raises.
                let byte = unsafe { std::ptr::read_volatile(past_the_end) };
                Err(Error::msg(format!("read {byte} past the end of memory")))
            }
            Mode::InvalidHeader | Mode::InvalidResponseHeader => {
                unreachable!("handled by the phases")
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
