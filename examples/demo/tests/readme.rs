//! Every `$ curl` line in the README, run against the demo config (demo services and gateway on
//! 127.0.0.1:0), must answer what the README shows under it.

use std::path::Path;

use wasmgate_demo::{DemoService, start};
use wasmgate_tests::{FILTERS_DIR, TestGateway};

/// A `$ curl ...` line and the output shown under it.
struct Example {
    command: String,
    expected: Vec<String>,
}

fn readme_examples() -> Vec<Example> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let mut examples: Vec<Example> = Vec::new();
    let mut current: Option<Example> = None;
    for line in readme.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            examples.extend(current.take());
            current = Some(Example {
                command: cmd.to_string(),
                expected: Vec::new(),
            });
        } else if line.starts_with("```") {
            examples.extend(current.take());
        } else if let Some(ex) = current.as_mut() {
            ex.expected.push(line.to_string());
        }
    }
    for ex in &mut examples {
        while ex.expected.last().is_some_and(|l| l.is_empty()) {
            ex.expected.pop();
        }
    }
    examples
}

/// Split like a shell does for the simple quoting the README uses.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in command.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[tokio::test]
async fn readme_curl_lines_answer_as_shown() {
    let users = start(DemoService::Users, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let orders = start(DemoService::Orders, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml"))
            .unwrap()
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
            .replace(
                "filters_dir = \"filters\"",
                &format!("filters_dir = {FILTERS_DIR:?}"),
            )
            .replace("127.0.0.1:3001", &users.to_string())
            .replace("127.0.0.1:3002", &orders.to_string());
    let gw = TestGateway::start(&config).await;

    let examples = readme_examples();
    assert!(examples.len() >= 4, "the README lost its curl examples");
    for ex in examples {
        let args = words(&ex.command);
        assert_eq!(args[0], "curl", "{}", ex.command);
        let (mut include, mut method, mut headers, mut url) =
            (false, "GET".to_string(), Vec::new(), None);
        let mut body = String::new();
        let mut i = 1;
        while i < args.len() {
            match args[i].as_str() {
                "-s" => {}
                "-si" | "-is" | "-i" => include = true,
                "-H" => {
                    i += 1;
                    let (k, v) = args[i].split_once(':').unwrap();
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                "-X" => {
                    i += 1;
                    method = args[i].clone();
                }
                "-d" => {
                    i += 1;
                    body = args[i].clone();
                    if method == "GET" {
                        method = "POST".into();
                    }
                }
                other if !other.starts_with('-') => url = Some(other.to_string()),
                other => panic!("the README test does not know curl flag {other}"),
            }
            i += 1;
        }
        let path = url
            .unwrap()
            .trim_start_matches("localhost:8080")
            .to_string();
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = gw.request(&method, &path, &header_refs, &body).await;

        let mut expected = ex.expected.iter();
        if include {
            let status_line = expected.next().unwrap();
            let reason = r.status.canonical_reason().unwrap_or("");
            assert_eq!(
                status_line,
                &format!("HTTP/1.1 {} {reason}", r.status.as_u16()),
                "{}",
                ex.command
            );
            for line in expected.by_ref() {
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(": ").unwrap();
                assert_eq!(r.header(k), Some(v), "{}: header {k}", ex.command);
            }
        }
        let body: Vec<&str> = expected.map(String::as_str).collect();
        if !body.is_empty() || !include {
            assert_eq!(r.text().trim_end(), body.join("\n"), "{}", ex.command);
        }
    }
}
