//! The README's path from nothing to a custom filter in live traffic, run as a new user runs
//! it: `wasmgate init DIR --filter NAME`, `wasmgate filter build --install`, `wasmgate serve`,
//! then requests through the gateway to a real upstream. The generated crate's own tests run
//! as `examples/filters/hello`'s, whose sources this test holds to the generated ones.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wasmgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasmgate"))
}

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers every request with 200 and the `x-greeting` header it received
/// as its body.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_one(conn));
        }
    });
    port
}

fn serve_one(conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut greeting = String::from("none");
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("x-greeting")
            {
                greeting = value.trim().to_string();
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{greeting}",
            greeting.len()
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// GET `path` from the gateway on `port`: the status line, headers and body as one string.
fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Serve `config` and wait until the gateway says it serves.
fn serve(config: &Path) -> Child {
    let mut child = wasmgate()
        .args(["serve", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("wasmgate serving") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the gateway did not start");
    child
}

/// The commands the README gives for this path, in order.
const README_COMMANDS: [&str; 3] = [
    "wasmgate init my-gateway --filter hello --sdk-path sdk",
    "wasmgate filter build --manifest-path my-gateway/hello/Cargo.toml --install my-gateway/filters",
    "wasmgate serve --config my-gateway/gateway.toml",
];

#[test]
fn the_readme_gives_these_three_commands() {
    let readme = std::fs::read_to_string(checkout().join("README.md")).unwrap();
    let section = &readme[readme
        .find("### With your own filter: three commands")
        .expect("the README's section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let lines: Vec<&str> = block.lines().collect();
    assert_eq!(lines, README_COMMANDS);
}

/// Runs [`README_COMMANDS`], with free ports and the checkout's absolute `sdk/` path.
#[test]
fn init_build_serve_a_custom_filter_whose_crate_is_examples_hello() {
    let dir = std::env::temp_dir().join(format!("wasmgate-first-filter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, admin, upstream) = (free_port(), free_port(), upstream());
    let gw = dir.join("my-gateway");
    let started = Instant::now();

    // 1. A gateway directory with a config whose route runs the new filter `hello`, and the
    //    filter's crate.
    run(wasmgate()
        .current_dir(&dir)
        .args(["init", "my-gateway", "--filter", "hello", "--sdk-path"])
        .arg(checkout().join("sdk"))
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &format!("http://127.0.0.1:{upstream}")]));

    // 2. Build, check and install the component.
    let built = run(wasmgate()
        .current_dir(&dir)
        .args([
            "filter",
            "build",
            "--manifest-path",
            "my-gateway/hello/Cargo.toml",
        ])
        .args(["--install", "my-gateway/filters"]));
    assert!(built.contains("implements wasmgate:filter@"), "{built}");
    assert!(gw.join("filters/hello.wasm").is_file());

    // 3. Serve, and send requests through it.
    let mut gateway = serve(&gw.join("gateway.toml"));
    let ok = get(listen, "/users");
    let blocked = get(listen, "/blocked");
    let took = started.elapsed();
    let _ = gateway.kill();
    let _ = gateway.wait();
    eprintln!("init + filter build + serve + first request: {took:.1?}");

    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("x-filtered-by: hello"), "{ok}");
    assert!(
        ok.ends_with("\r\n\r\nhello"),
        "the upstream got the greeting: {ok}"
    );
    assert!(blocked.starts_with("HTTP/1.1 403"), "{blocked}");
    assert!(blocked.contains("blocked by hello"), "{blocked}");

    // The crate's own tests (unit tests natively, its .wasm in the binary's sandbox) are
    // examples/filters/hello's, which `cargo test --workspace` runs with the workspace's build;
    // host/tests/binary_only.rs runs a new crate's from scratch. That crate holds the same
    // sources as the one just written, and this one's manifest resolves with its test kit.
    let example = checkout().join("examples/filters/hello");
    for file in ["src/lib.rs", "tests/sandbox.rs"] {
        let written = std::fs::read_to_string(gw.join("hello").join(file)).unwrap();
        let committed = std::fs::read_to_string(example.join(file)).unwrap();
        assert!(
            written == committed,
            "examples/filters/hello/{file} is not what `wasmgate filter new hello` writes: \
             copy the new one there, and keep the starter rustfmt-clean (`cargo fmt` runs \
             over the copy)"
        );
    }
    let metadata = run(Command::new(env!("CARGO"))
        .current_dir(gw.join("hello"))
        .args(["metadata", "--format-version", "1"]));
    assert!(metadata.contains("\"wasmgate-test\""), "{metadata}");
    let _ = std::fs::remove_dir_all(&dir);
}
