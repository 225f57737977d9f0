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
fn check_accepts_a_valid_config_without_filters() {
    let dir = tempdir("check-ok");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "admin = { enabled = false }\n[services.a]\nupstreams = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nservice = \"a\"\n",
    )
    .unwrap();
    let out = wasmgate()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 routes, 0 filters)"));
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

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmgate-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
