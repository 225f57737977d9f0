//! The `wasmgate` binary: `check` exit codes and messages, `serve` start and stop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wasmgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasmgate"))
}

fn configs() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/configs"))
}

#[test]
fn check_lists_every_error_with_its_place_and_fails() {
    let file = configs().join("invalid/many-problems.toml");
    let out = wasmgate()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let expected = std::fs::read_to_string(configs().join("invalid/many-problems.err")).unwrap();
    for line in expected.lines() {
        assert!(
            stderr.contains(&format!("{}:{line}", file.display())),
            "missing {line:?} in:\n{stderr}"
        );
    }
}

#[test]
fn init_writes_a_starter_config_that_checks_and_never_overwrites_one() {
    let dir = tempdir("init").join("gw");
    let _ = std::fs::remove_dir_all(&dir);
    let out = wasmgate().arg("init").arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("filters").is_dir());
    let config = dir.join("gateway.toml");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.starts_with("# wasmgate config"), "{written}");

    assert_checks_ok(&config, "ok (1 routes, 0 filters)");

    std::fs::write(&config, "# mine\n").unwrap();
    let out = wasmgate().arg("init").arg(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
}

#[test]
fn check_accepts_a_valid_config_without_filters() {
    let dir = tempdir("check-ok");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "admin = { enabled = false }\n[services.a]\nupstreams = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nservice = \"a\"\n",
    )
    .unwrap();
    assert_checks_ok(&file, "ok (1 routes, 0 filters)");
}

/// `wasmgate check --config file` succeeds and says `summary`.
fn assert_checks_ok(file: &Path, summary: &str) {
    let out = wasmgate()
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(summary), "{stdout}");
}

#[test]
fn serve_answers_and_exits_cleanly_on_sigterm() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempdir("serve");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!("listen = \"127.0.0.1:{port}\"\nadmin = {{ listen = \"127.0.0.1:0\" }}\n"),
    )
    .unwrap();
    let mut child = wasmgate()
        .args(["serve", "--config"])
        .arg(&file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /nothing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            break buf;
        }
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn serve_refuses_an_invalid_config() {
    let out = wasmgate()
        .args(["serve", "--config"])
        .arg(configs().join("invalid/syntax.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("syntax.toml:3:10: unclosed array table")
    );
}

/// The log lines `wasmgate serve` (with `extra` arguments, stderr to a pipe) writes up to and
/// including the one saying it serves.
fn startup_log(name: &str, extra: &[&str]) -> Vec<String> {
    startup_log_with(name, extra, "")
}

/// As [`startup_log`], with `config` after the listen and admin lines; `filters_dir` is
/// `<dir>/filters`, created empty.
fn startup_log_with(name: &str, extra: &[&str], config: &str) -> Vec<String> {
    use std::io::BufRead;
    let dir = tempdir(name);
    std::fs::create_dir_all(dir.join("filters")).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!("listen = \"127.0.0.1:0\"\nadmin = {{ enabled = false }}\n{config}"),
    )
    .unwrap();
    let mut child = wasmgate()
        .args(extra)
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("wasmgate serving");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let lines = reader.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("wasmgate serving")),
        "no startup line in {lines:?}"
    );
    lines
}

#[test]
fn a_wasm_file_no_route_names_gets_a_warning_that_says_why() {
    let dir = tempdir("stray");
    std::fs::create_dir_all(dir.join("filters")).unwrap();
    for stray in ["my_filter.wasm", "leftover.wasm"] {
        std::fs::write(dir.join("filters").join(stray), b"not loaded anyway").unwrap();
    }
    let lines = startup_log_with(
        "stray",
        &[],
        "[[routes]]\nname = \"r\"\nprefix = \"/\"\nfilters = [{ name = \"my-filter\" }]\n",
    );
    let log = lines.join("\n");
    assert!(
        log.contains("my_filter.wasm looks like cargo's output name for the filter \"my-filter\"")
            && log.contains("rename it to my-filter.wasm"),
        "{log}"
    );
    assert!(
        log.contains("no route names the filter \"leftover\""),
        "{log}"
    );
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal() {
    for line in startup_log("plain-logs", &[]) {
        assert!(!line.contains('\x1b'), "colour codes in {line:?}");
    }
}

#[test]
fn logs_come_as_json_lines_on_request() {
    let lines = startup_log("json-logs", &["--log-format", "json"]);
    for line in &lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            record["level"].is_string() && record["fields"].is_object(),
            "{line}"
        );
    }
    let serving: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(serving["fields"]["message"], "wasmgate serving");
    assert_eq!(serving["level"], "INFO");
}

#[test]
fn filter_new_writes_a_crate_on_the_sdk_it_carries_and_never_into_a_used_directory() {
    let dir = tempdir("filter-new").join("rate-limit2");
    let _ = std::fs::remove_dir_all(&dir);
    let out = wasmgate()
        .env("XDG_DATA_HOME", dir.parent().unwrap().join("data"))
        .args(["filter", "new", "rate-limit2", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let version = wasmgate_sandbox::WIT_VERSION;
    // The copies this binary carries, written under the data directory.
    let data = dir.parent().unwrap().join("data");
    for krate in ["wasmgate-sdk", "wasmgate-test"] {
        let line = manifest
            .lines()
            .find(|l| l.starts_with(&format!("{krate} = ")))
            .unwrap_or_else(|| panic!("no {krate} in {manifest}"));
        assert!(line.contains(&format!("version = \"{version}\"")), "{line}");
        let path = line
            .split("path = \"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\" }");
        assert!(path.starts_with(data.to_str().unwrap()), "{line}");
        assert!(Path::new(path).join("Cargo.toml").is_file(), "{line}");
    }
    let config = std::fs::read_to_string(dir.join(".cargo/config.toml")).unwrap();
    assert!(
        config.contains(&format!("WASMGATE = {:?}", env!("CARGO_BIN_EXE_wasmgate"))),
        "{config}"
    );
    assert!(manifest.contains("crate-type = [\"cdylib\"]"), "{manifest}");
    assert!(
        dir.join("Cargo.lock").is_file(),
        "the lock the SDK was tested with"
    );

    // With --crates-io, the published crates by version, and no lock.
    let published = dir.parent().unwrap().join("published");
    let _ = std::fs::remove_dir_all(&published);
    let out = wasmgate()
        .args(["filter", "new", "published", "--crates-io", "--dir"])
        .arg(&published)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(published.join("Cargo.toml")).unwrap();
    for krate in ["wasmgate-sdk", "wasmgate-test"] {
        assert!(
            manifest.contains(&format!("{krate} = \"{version}\"")),
            "{manifest}"
        );
    }
    assert!(!published.join("Cargo.lock").exists());
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    assert!(lib.contains("export_filter!(RateLimit2);"), "{lib}");
    for file in [
        ".cargo/config.toml",
        "tests/sandbox.rs",
        "README.md",
        ".gitignore",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }

    let again = wasmgate()
        .args(["filter", "new", "rate-limit2", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists and is not empty"));

    let bad = wasmgate()
        .args(["filter", "new", "Bad Name"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a filter name"));
}

#[test]
fn filter_build_says_what_is_missing_from_a_crate_that_makes_no_component() {
    let dir = tempdir("filter-build-rlib");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"not-a-filter\"\nversion = \"0.1.0\"\nedition = \"2024\"\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), "pub fn f() {}\n").unwrap();
    let out = wasmgate()
        .args(["filter", "build", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("crate-type = [\"cdylib\"]"), "{stderr}");
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmgate-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `GET path` over a new connection to `addr`; the whole answer, head and body.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

/// `wasmgate serve --config <config>` run from `cwd`, its stdout (the access log) appended to
/// `log`; the process and its serving and admin addresses, read from its startup line.
fn serve_from(cwd: &Path, config: &str, log: &Path) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = wasmgate()
        .args(["serve", "--config", config])
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .stdout(log)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if line.contains("wasmgate serving") {
                let _ = tx.send(line);
                break;
            }
        }
        // Keep draining, so the gateway never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway's startup line");
    let field = |name: &str| {
        let start = line
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + name.len();
        line[start..].split([' ', ')']).next().unwrap().to_string()
    };
    (child, field("listen="), field("admin=Some("))
}

/// The issue's case, as a user runs it: the config named relative to the current directory (a
/// bare name, and a path with a directory), stdout (the access log) redirected into the
/// config's directory, clients keeping that log growing, and the config replaced over and over:
/// every edit is applied.
#[test]
fn serve_reloads_a_config_named_relatively_while_its_log_grows_beside_it() {
    let root = tempdir("relative");
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("gw");
    std::fs::create_dir_all(dir.join("filters")).unwrap();
    let config = |route: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = {{ listen = \"127.0.0.1:0\" }}\n\n[services.gone]\nupstreams = [\"http://127.0.0.1:9\"]\n\n[[routes]]\nname = \"{route}\"\nprefix = \"/\"\nservice = \"gone\"\n"
        )
    };
    let replace = |route: &str| {
        std::fs::write(dir.join("gateway.toml.new"), config(route)).unwrap();
        std::fs::rename(dir.join("gateway.toml.new"), dir.join("gateway.toml")).unwrap();
    };
    for (cwd, name) in [(&dir, "gateway.toml"), (&root, "gw/gateway.toml")] {
        replace("first");
        let log = dir.join("gateway.log");
        let (mut child, listen, admin) = serve_from(cwd, name, &log);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (stop, listen) = (stop.clone(), listen.clone());
            std::thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    http_get(&listen, "/load");
                    sent += 1;
                }
                sent
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..5 {
            let route = format!("edit{i}");
            replace(&route);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !http_get(&admin, "/routes").contains(&format!("\"name\":\"{route}\"")) {
                assert!(
                    Instant::now() < deadline,
                    "{name} from {}: edit {i} was not applied",
                    cwd.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = load.join().unwrap();
        child.kill().unwrap();
        let _ = child.wait();
        let logged = std::fs::read_to_string(&log).unwrap().lines().count();
        assert!(
            sent > 10 && logged > 10,
            "the log grew under load: {sent} requests, {logged} lines"
        );
    }
}

#[test]
fn serve_refuses_an_admin_endpoint_beyond_loopback_without_a_token() {
    let dir = tempdir("admin-open");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"0.0.0.0:0\"\n",
    )
    .unwrap();
    let out = wasmgate()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gateway.toml:3:10: admin.listen: 0.0.0.0:0 is reachable beyond this machine, so the admin endpoint needs a token: set admin.token_file"),
        "{stderr}"
    );
}

/// docs/operations.md's admin token example, as written there (addresses aside): the config
/// starts, the `curl` line with the token reloads and prints what the page shows, and without
/// the token it is refused.
#[test]
fn the_operations_pages_admin_token_example_works_as_shown() {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    let section = &page[page
        .find("#### Beyond loopback")
        .expect("the token section")..];
    let block = |fence: &str| {
        section
            .split(fence)
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_else(|| panic!("a {fence} block"))
            .to_string()
    };
    let (toml, console) = (block("```toml\n"), block("```console\n"));
    let dir = tempdir("docs-admin-token");
    std::fs::write(
        dir.join("admin.token"),
        "6a1f0c3e9b2d4f5a8c7e6d5b4a392817\n",
    )
    .unwrap();
    // Free ports instead of the page's fixed ones; the rest as written.
    let config = format!(
        "listen = \"127.0.0.1:0\"\n{}",
        toml.replace("0.0.0.0:9901", "0.0.0.0:0")
            .replace("0.0.0.0:9902", "127.0.0.1:0")
    );
    std::fs::write(dir.join("gateway.toml"), config).unwrap();
    let (mut child, _, admin) = serve_from(&dir, "gateway.toml", &dir.join("gateway.log"));
    let port = admin.rsplit(':').next().unwrap();

    let mut lines = console.lines();
    let command = lines.next().unwrap().strip_prefix("$ ").unwrap();
    let expected: String = lines.map(|l| format!("{l}\n")).collect();
    let run = |command: &str| {
        let out = Command::new("sh")
            .args([
                "-c",
                &command.replace("127.0.0.1:9901", &format!("127.0.0.1:{port}")),
            ])
            .current_dir(&dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = run(command);
    let refused = run(&command.replace("Bearer $(cat admin.token)", "Bearer guess"));
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(format!("{shown}\n"), expected);
    assert!(refused.contains("needs the admin token"), "{refused}");
}
