//! The demo binary's output redirected to a file: plain text, no terminal colour codes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_demo_log_redirected_to_a_file_has_no_colour_codes() {
    let dir = std::env::temp_dir().join(format!("wasmgate-demo-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("demo.log");
    let file = std::fs::File::create(&path).unwrap();
    // The demo listens on its fixed ports (3001, 3002, 8080, 8443); nothing else in the test
    // suite does.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_wasmgate-demo"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(file))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("wasmgate demo on") && text.contains("INFO") {
            break text;
        }
        if let Some(status) = demo.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(demo.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the demo exited ({status}) before serving:\n{text}\n{err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the demo did not start within 120 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    demo.kill().unwrap();
    demo.wait().unwrap();
    assert!(
        !text.contains('\x1b'),
        "colour codes in a redirected log:\n{text}"
    );
}
