//! # wasmgate-test
//!
//! Test a filter's built `.wasm` from `cargo test` in the gateway's real sandbox, with nothing
//! to compile but the SDK: the sandbox is the installed `wasmgate` binary's own, run as
//! `wasmgate filter test-server` (the same engine, limits and instance rules as a running
//! gateway). Requests, responses and contexts are the SDK's own types, so assertions read like
//! the filter's unit tests; the services a filter calls are stubbed by the test.
//!
//! ```no_run
//! use serde_json::json;
//! use wasmgate_sdk::{Action, Request};
//! use wasmgate_test::TestFilter;
//!
//! // Builds this crate for wasm32-wasip2 (release) and loads the component.
//! let filter = TestFilter::build(env!("CARGO_MANIFEST_DIR"));
//! let route = filter.route(json!({ "header": "x-api-key" })).unwrap();
//!
//! let Action::Respond(resp) = route.on_request(Request::new("GET", "/")).unwrap() else {
//!     panic!("expected a refusal");
//! };
//! assert_eq!(resp.status(), 401);
//! assert!(route.logs().iter().any(|l| l.message.contains("refused")));
//! ```
//!
//! The binary is `$WASMGATE` when set, else `wasmgate` on the `PATH`; a crate written by
//! `wasmgate filter new` sets `WASMGATE` to the binary that wrote it (in
//! `.cargo/config.toml`). It must speak the WIT version this kit was built for.
#![deny(missing_docs)]

mod build;
#[doc(hidden)]
pub mod protocol;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub use build::build_component;
pub use protocol::Metrics;
use protocol::{Answer, Command as Cmd, Ctx, Log, Outcome, Reply};
use wasmgate_sdk::{Action, Context, Needs, Request, Response};

/// The WIT version of the filters this kit runs (the SDK's).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A stubbed service's answer to each call.
type Stub = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Why a phase failed, as the gateway classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// `error` (the filter returned an error), `trap`, `deadline`, `memory` or `invalid`
    /// (invalid output).
    pub kind: String,
    /// What the gateway would log.
    pub message: String,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for FilterError {}

/// The level of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `log::trace`.
    Trace,
    /// `log::debug`.
    Debug,
    /// `log::info`.
    Info,
    /// `log::warn`.
    Warn,
    /// `log::error`.
    Error,
}

/// One record a filter logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: Level,
    /// The message.
    pub message: String,
    /// The request it was logged for.
    pub request_id: String,
}

impl From<Log> for LogRecord {
    fn from(log: Log) -> LogRecord {
        let level = match log.level.as_str() {
            "TRACE" => Level::Trace,
            "DEBUG" => Level::Debug,
            "WARN" => Level::Warn,
            "ERROR" => Level::Error,
            _ => Level::Info,
        };
        LogRecord {
            level,
            message: log.message,
            request_id: log.request_id,
        }
    }
}

/// The test server: one `wasmgate filter test-server` per test binary, shared by its tests.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What the server wrote to stderr, for the message when it dies.
    stderr: Arc<Mutex<String>>,
}

fn server() -> Result<MutexGuard<'static, Server>, String> {
    static SERVER: OnceLock<Result<Mutex<Server>, String>> = OnceLock::new();
    match SERVER.get_or_init(|| start().map(Mutex::new)) {
        Ok(server) => Ok(server.lock().unwrap_or_else(|e| e.into_inner())),
        Err(e) => Err(e.clone()),
    }
}

fn start() -> Result<Server, String> {
    let binary = std::env::var_os("WASMGATE").unwrap_or_else(|| "wasmgate".into());
    let mut child = Command::new(&binary)
        .args(["filter", "test-server"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "starting {} filter test-server: {e}\nhint: the sandbox tests run in the installed \
                 wasmgate binary: put it on the PATH or set WASMGATE to its path",
                binary.to_string_lossy()
            )
        })?;
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(mut err) = child.stderr.take() {
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&text);
        });
    }
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the test server's pipes are missing".into());
    };
    let mut server = Server {
        child,
        stdin,
        stdout: BufReader::new(stdout),
        stderr,
    };
    match server.exchange(
        &Cmd::Hello {
            version: VERSION.into(),
        },
        &HashMap::new(),
    )? {
        Reply::Hello { .. } => Ok(server),
        Reply::Error { message } => Err(message),
        other => Err(format!("unexpected reply to hello: {other:?}")),
    }
}

impl Server {
    /// Send `cmd` and read replies up to the final one, answering the filter's service calls
    /// with `stubs` on the way.
    fn exchange(&mut self, cmd: &Cmd, stubs: &HashMap<String, Stub>) -> Result<Reply, String> {
        self.send(cmd)?;
        loop {
            match self.read()? {
                Reply::Call { service, request } => {
                    let response = match stubs.get(&service) {
                        Some(stub) => stub(&request.into()),
                        None => Response::text(502, "no stub"),
                    };
                    self.send(&Answer {
                        response: response.into(),
                    })?;
                }
                reply => return Ok(reply),
            }
        }
    }

    fn send(&mut self, message: &impl serde::Serialize) -> Result<(), String> {
        let mut line = serde_json::to_vec(message).map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .and_then(|()| self.stdin.flush())
            .map_err(|e| self.died(&e.to_string()))
    }

    fn read(&mut self) -> Result<Reply, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(self.died("it closed its output")),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| format!("the test server said {line:?}: {e}")),
            Err(e) => Err(self.died(&e.to_string())),
        }
    }

    fn died(&mut self, what: &str) -> String {
        let status = self.child.try_wait().ok().flatten();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        format!("the wasmgate test server failed ({what}; exit {status:?}):\n{stderr}")
    }
}

/// A filter component loaded into the sandbox, as the gateway loads it: the same checks (a
/// component, built for this gateway's WIT version, implementing the filter interface).
#[derive(Debug, Clone)]
pub struct TestFilter {
    id: u32,
    name: String,
}

impl TestFilter {
    /// Build the filter crate at `manifest_dir` (pass `env!("CARGO_MANIFEST_DIR")`) for
    /// `wasm32-wasip2` in release mode, into its own target directory, and load it. Panics with
    /// cargo's output when the build fails, and with the reason when the gateway would refuse
    /// the component.
    pub fn build(manifest_dir: impl AsRef<Path>) -> TestFilter {
        let path = build_component(manifest_dir.as_ref())
            .unwrap_or_else(|e| panic!("building the filter failed: {e}"));
        TestFilter::load(&path)
            .unwrap_or_else(|e| panic!("the gateway would refuse {}: {e}", path.display()))
    }

    /// Load a built `.wasm`; the error is the reason the gateway would log for refusing it.
    pub fn load(path: impl AsRef<Path>) -> Result<TestFilter, String> {
        let path = path.as_ref();
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let cmd = Cmd::Load {
            path: path.to_string_lossy().into_owned(),
        };
        match server()?.exchange(&cmd, &HashMap::new())? {
            Reply::Loaded { filter, name } => Ok(TestFilter { id: filter, name }),
            Reply::Error { message } => Err(message),
            other => Err(format!("unexpected reply to load: {other:?}")),
        }
    }

    /// The filter's name (its file stem, as routes name it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Configure the filter for a route with `config` (the JSON form of the route's `config`
    /// table), as the gateway does on load. The error is the filter's own message for a
    /// config it rejects, which `wasmgate check` would print.
    pub fn route(&self, config: serde_json::Value) -> Result<TestRoute, String> {
        let mut route = TestRoute {
            filter: self.id,
            config,
            context: Context::new("test", &[]),
            stubs: HashMap::new(),
            down: Vec::new(),
            id: 0,
            needs: Needs::default(),
            logs: Mutex::default(),
        };
        route.configure()?;
        Ok(route)
    }
}

/// One route's configuration of a filter: drives its phases as the gateway would for requests
/// on that route.
pub struct TestRoute {
    filter: u32,
    config: serde_json::Value,
    context: Context,
    stubs: HashMap<String, Stub>,
    down: Vec<String>,
    /// The server's route.
    id: u32,
    needs: Needs,
    logs: Mutex<Vec<LogRecord>>,
}

impl TestRoute {
    /// (Re)create the server's route with this route's settings.
    fn configure(&mut self) -> Result<(), String> {
        let mut services: Vec<String> = self.stubs.keys().cloned().collect();
        services.sort();
        let cmd = Cmd::Route {
            filter: self.filter,
            config: self.config.clone(),
            context: Ctx::from(&self.context),
            services,
            down: self.down.clone(),
        };
        match server()?.exchange(&cmd, &HashMap::new())? {
            Reply::Route { route, needs } => {
                self.id = route;
                self.needs = needs.into();
                Ok(())
            }
            Reply::Error { message } => Err(message),
            other => Err(format!("unexpected reply to route: {other:?}")),
        }
    }

    fn reconfigured(mut self) -> TestRoute {
        self.configure()
            .unwrap_or_else(|e| panic!("configuring the route again: {e}"));
        self
    }

    /// What this configuration asked of the gateway (bodies, phases, instance reuse).
    pub fn needs(&self) -> Needs {
        self.needs
    }

    /// Stub the service `name`: the route grants it to the filter and `answer` handles each
    /// call (method, path and query, headers and body as the filter sent them). Services not
    /// stubbed are not granted: the filter's call is denied, as in a gateway whose route does
    /// not list them.
    pub fn service(
        mut self,
        name: &str,
        answer: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> TestRoute {
        self.stubs.insert(name.to_string(), Arc::new(answer));
        self.reconfigured()
    }

    /// Grant the service `name` but make every call to it fail as an unreachable upstream
    /// does.
    pub fn service_down(mut self, name: &str) -> TestRoute {
        self.down.push(name.to_string());
        self.reconfigured()
    }

    /// The context the next phases see (route name, path parameters, client address). Each
    /// request gets its own request id unless the context sets one.
    pub fn context(mut self, context: Context) -> TestRoute {
        self.context = context;
        self.reconfigured()
    }

    /// Run the request phase for a new request. As in the gateway, a request body reaches the
    /// filter only when its [`Needs::request_body`] asks for it, and a filter whose
    /// [`Needs::request_phase`] is `false` is not called (the request continues unchanged).
    pub fn on_request(&self, req: Request) -> Result<Action, FilterError> {
        let cmd = Cmd::Request {
            route: self.id,
            request: req.into(),
        };
        match self.phase(&cmd)? {
            Outcome::Continue { request } => Ok(Action::Continue(request.into())),
            Outcome::Respond { response } => Ok(Action::Respond(response.into())),
            other => Err(unexpected(other)),
        }
    }

    /// Run the response phase: for the request whose request phase ran last (on the same
    /// instance, as in the gateway), or for a new one when none ran. Headers that request
    /// phase set for the response are applied first; a filter whose
    /// [`Needs::response_phase`] is `false` is not called.
    pub fn on_response(&self, resp: Response) -> Result<Response, FilterError> {
        let cmd = Cmd::Response {
            route: self.id,
            response: resp.into(),
        };
        match self.phase(&cmd)? {
            Outcome::Response { response } => Ok(response.into()),
            other => Err(unexpected(other)),
        }
    }

    fn phase(&self, cmd: &Cmd) -> Result<Outcome, FilterError> {
        let reply = server()
            .and_then(|mut s| s.exchange(cmd, &self.stubs))
            .map_err(|message| FilterError {
                kind: "test-server".into(),
                message,
            })?;
        match reply {
            Reply::Done { outcome, logs } => {
                let mut kept = self.logs.lock().unwrap_or_else(|e| e.into_inner());
                for log in logs {
                    // Shown by `cargo test` for a failing test.
                    eprintln!("[{} {}] {}", log.level, log.request_id, log.message);
                    kept.push(log.into());
                }
                match outcome {
                    Outcome::Failed { kind, message } => Err(FilterError { kind, message }),
                    outcome => Ok(outcome),
                }
            }
            Reply::Error { message } => Err(FilterError {
                kind: "test-server".into(),
                message,
            }),
            other => Err(FilterError {
                kind: "test-server".into(),
                message: format!("unexpected reply: {other:?}"),
            }),
        }
    }

    /// Every record the filter logged so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The access log fields the filter added (through `wasmgate_sdk::log::field`) since the
    /// last call of this function.
    pub fn log_fields(&self) -> Vec<(String, String)> {
        match server().and_then(|mut s| s.exchange(&Cmd::LogFields { route: self.id }, &self.stubs))
        {
            Ok(Reply::LogFields { fields }) => fields,
            other => panic!("asking for the log fields: {other:?}"),
        }
    }

    /// Counts of what the filter did so far.
    pub fn metrics(&self) -> Metrics {
        match server().and_then(|mut s| s.exchange(&Cmd::Metrics { route: self.id }, &self.stubs)) {
            Ok(Reply::Metrics { metrics }) => metrics,
            other => panic!("asking for the metrics: {other:?}"),
        }
    }
}

fn unexpected(outcome: Outcome) -> FilterError {
    FilterError {
        kind: "test-server".into(),
        message: format!("unexpected outcome {outcome:?}"),
    }
}
