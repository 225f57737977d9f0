//! `wasmgate filter test-server`: the sandbox a filter crate's `cargo test` runs its component
//! in (through `wasmgate-test`), so that the crate compiles nothing of the gateway. One JSON
//! command a line on stdin, replies on stdout (`wasmgate_test::protocol`); it ends when stdin
//! does. The phases run in `wasmgate-testkit`, the in-process kit the repository's own filters
//! are tested with, so both kits run filters the same way.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

use wasmgate_sdk::{Action, Context, Request, Response};
use wasmgate_test::protocol::{Answer, Command, Log, Metrics, NeedsWire, Outcome, Reply};
use wasmgate_testkit::{TestFilter, TestRoute};

/// Serve the kit on stdin and stdout until stdin ends.
pub fn run() -> Result<(), String> {
    let io = Arc::new(Io {
        input: Mutex::new(Box::new(std::io::BufReader::new(std::io::stdin()))),
        output: Mutex::new(Box::new(std::io::stdout())),
    });
    let mut server = Server {
        io: io.clone(),
        filters: Vec::new(),
        routes: Vec::new(),
    };
    while let Some(line) = io.read_line()? {
        let reply = match serde_json::from_str::<Command>(&line) {
            Ok(cmd) => server.handle(cmd),
            Err(e) => Reply::Error {
                message: format!("not a test-server command: {e}"),
            },
        };
        io.write(&reply)?;
    }
    Ok(())
}

/// The pipes: the main loop and, during a phase, the service stubs use them in turn.
struct Io {
    input: Mutex<Box<dyn BufRead + Send>>,
    output: Mutex<Box<dyn Write + Send>>,
}

impl Io {
    fn read_line(&self) -> Result<Option<String>, String> {
        let mut line = String::new();
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        match input.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line)),
            Err(e) => Err(format!("reading stdin: {e}")),
        }
    }

    fn write(&self, message: &impl serde::Serialize) -> Result<(), String> {
        let mut line = serde_json::to_vec(message).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        output
            .write_all(&line)
            .and_then(|()| output.flush())
            .map_err(|e| format!("writing stdout: {e}"))
    }

    /// Ask the kit to answer a call to `service`.
    fn call(&self, service: &str, request: &Request) -> Response {
        let asked = self.write(&Reply::Call {
            service: service.to_string(),
            request: request.clone().into(),
        });
        let answer = asked
            .and_then(|()| self.read_line()?.ok_or_else(|| "stdin ended".to_string()))
            .and_then(|line| {
                serde_json::from_str::<Answer>(&line).map_err(|e| format!("not an answer: {e}"))
            });
        match answer {
            Ok(answer) => answer.response.into(),
            Err(e) => Response::text(502, format!("the test's stub did not answer: {e}")),
        }
    }
}

struct Server {
    io: Arc<Io>,
    filters: Vec<TestFilter>,
    routes: Vec<Slot>,
}

/// A configured route and how many of its log records the kit has seen.
struct Slot {
    route: TestRoute,
    logs_seen: usize,
}

impl Server {
    fn handle(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Hello { version } => {
                let ours = wasmgate_sandbox::WIT_VERSION;
                if major_minor(&version) == major_minor(ours) {
                    Reply::Hello {
                        version: ours.into(),
                    }
                } else {
                    Reply::Error {
                        message: format!(
                            "this wasmgate runs wasmgate:filter {ours} filters; the test kit is \
                             {version}: use wasmgate-sdk and wasmgate-test {ours}"
                        ),
                    }
                }
            }
            Command::Load { path } => match TestFilter::load(&path) {
                Ok(filter) => {
                    let name = filter.name().to_string();
                    self.filters.push(filter);
                    Reply::Loaded {
                        filter: self.filters.len() as u32 - 1,
                        name,
                    }
                }
                Err(message) => Reply::Error { message },
            },
            Command::Route {
                filter,
                config,
                context,
                services,
                down,
            } => {
                let Some(filter) = self.filters.get(filter as usize) else {
                    return no_such("filter");
                };
                let mut route = match filter.route(config) {
                    Ok(route) => route.context(Context::from(context)),
                    Err(message) => return Reply::Error { message },
                };
                for service in services {
                    let io = self.io.clone();
                    let name = service.clone();
                    route = route.service(&service, move |req| io.call(&name, req));
                }
                for service in down {
                    route = route.service_down(&service);
                }
                let n = route.needs();
                let needs = NeedsWire {
                    request_body: n.request_body,
                    response_body: n.response_body,
                    request_phase: n.request_phase,
                    response_phase: n.response_phase,
                    reuse_instance: n.reuse_instance,
                };
                self.routes.push(Slot {
                    route,
                    logs_seen: 0,
                });
                Reply::Route {
                    route: self.routes.len() as u32 - 1,
                    needs,
                }
            }
            Command::Request { route, request } => {
                self.phase(route, |r| match r.on_request(request.into()) {
                    Ok(Action::Continue(req)) => Outcome::Continue {
                        request: req.into(),
                    },
                    Ok(Action::Respond(resp)) => Outcome::Respond {
                        response: resp.into(),
                    },
                    Err(e) => failed(&e),
                })
            }
            Command::Response { route, response } => {
                self.phase(route, |r| match r.on_response(response.into()) {
                    Ok(resp) => Outcome::Response {
                        response: resp.into(),
                    },
                    Err(e) => failed(&e),
                })
            }
            Command::Metrics { route } => match self.routes.get(route as usize) {
                Some(slot) => {
                    let m = slot.route.metrics();
                    Reply::Metrics {
                        metrics: Metrics {
                            request_calls: m.request_calls,
                            response_calls: m.response_calls,
                            failures: m.failures,
                            instances_started: m.instances_started,
                            service_calls: m.service_calls,
                        },
                    }
                }
                None => no_such("route"),
            },
            Command::LogFields { route } => match self.routes.get(route as usize) {
                Some(slot) => Reply::LogFields {
                    fields: slot.route.log_fields(),
                },
                None => no_such("route"),
            },
        }
    }

    /// Run a phase on route `route`; the reply carries what the filter logged meanwhile.
    fn phase(&mut self, route: u32, run: impl FnOnce(&TestRoute) -> Outcome) -> Reply {
        let Some(slot) = self.routes.get_mut(route as usize) else {
            return no_such("route");
        };
        let outcome = run(&slot.route);
        let logs = slot.route.logs();
        let new: Vec<Log> = logs[slot.logs_seen.min(logs.len())..]
            .iter()
            .map(|l| Log {
                level: l.level.to_string(),
                message: l.message.clone(),
                request_id: l.request_id.clone(),
            })
            .collect();
        slot.logs_seen = logs.len();
        Reply::Done { outcome, logs: new }
    }
}

fn failed(e: &wasmgate_sandbox::FilterError) -> Outcome {
    Outcome::Failed {
        kind: e.kind().into(),
        message: e.to_string(),
    }
}

fn no_such(what: &str) -> Reply {
    Reply::Error {
        message: format!("no such {what}"),
    }
}

/// `0.3` of `0.3.1`.
fn major_minor(version: &str) -> &str {
    let mut dots = version.match_indices('.').map(|(i, _)| i);
    match (dots.next(), dots.next()) {
        (Some(_), Some(second)) => &version[..second],
        _ => version,
    }
}
