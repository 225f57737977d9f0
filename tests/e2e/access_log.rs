//! The access log: one JSON line per request, field by field; the combined format; a route
//! that turns it off; SIGHUP reopening a rotated file.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wasmgate_tests::{TestGateway, Upstream, eventually, temp_dir};

/// The log's lines once there are at least `n`.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(5),
        &format!("{n} log lines"),
        || async {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            (lines.len() >= n).then_some(lines)
        },
    )
    .await
}

async fn gateway(up: &Upstream, log: &Path, format: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[access_log]
path = {log:?}
format = "{format}"

[services.app]
upstreams = ["{url}"]

[[routes]]
name = "app"
prefix = "/app"
service = "app"

[[routes]]
name = "quiet"
prefix = "/health"
service = "app"
access_log = false

[[routes]]
name = "tagged"
prefix = "/tagged"
service = "app"
filters = [{{ name = "metered" }}]
"#,
        log = log.display().to_string(),
        url = up.url()
    ))
    .await
}

#[tokio::test]
async fn every_request_gets_a_json_record() {
    let up = Upstream::start("app").await;
    let log = temp_dir("access-json").join("access.log");
    let gw = gateway(&up, &log, "json").await;

    let r = gw
        .request(
            "POST",
            "/app/orders?x=1",
            &[
                ("user-agent", "test-client/1.0"),
                ("referer", "https://shop.test/"),
            ],
            "hello",
        )
        .await;
    assert_eq!(r.status, 200);
    let sent = r.body.len() as u64;
    assert_eq!(gw.get("/health").await.status, 200, "not logged");
    assert_eq!(gw.get("/nowhere").await.status, 404);

    let lines = lines(&log, 2).await;
    assert_eq!(lines.len(), 2, "the quiet route wrote nothing: {lines:#?}");
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["request_id"], r.header("x-request-id").unwrap());
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["host"], gw.running.addr.to_string());
    assert_eq!(first["path"], "/app/orders?x=1");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["route"], "app");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 5);
    assert_eq!(first["bytes_out"], sent);
    assert_eq!(first["upstream"], format!("{}/", up.url()));
    assert_eq!(first["user_agent"], "test-client/1.0");
    assert_eq!(first["referer"], "https://shop.test/");
    let (total, upstream) = (
        first["duration_ms"].as_f64().unwrap(),
        first["upstream_ms"].as_f64().unwrap(),
    );
    assert!(upstream > 0.0 && upstream <= total, "{first}");
    assert_eq!(first["filters_ms"], 0.0);
    assert_eq!(first.get("fields"), None, "no filter added any");
    humantime::parse_rfc3339(first["time"].as_str().unwrap()).expect("an RFC 3339 time");

    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["status"], 404);
    assert_eq!(second["route"], Value::Null);
    assert_eq!(second["upstream"], Value::Null);
}

/// A filter adds fields to its request's record (the `metered` test filter names the user).
#[tokio::test]
async fn filters_add_fields_to_the_record() {
    let up = Upstream::start("app").await;
    let log = temp_dir("access-fields").join("access.log");
    let gw = gateway(&up, &log, "json").await;
    for user in ["ann", "bob"] {
        let r = gw.request("GET", "/tagged", &[("x-user", user)], "").await;
        assert_eq!(r.status, 200);
    }
    let lines = lines(&log, 2).await;
    for (line, user) in lines.iter().zip(["ann", "bob"]) {
        let record: Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["route"], "tagged");
        assert_eq!(
            record["fields"],
            serde_json::json!({ "user": user }),
            "{line}"
        );
        assert!(record["filters_ms"].as_f64().unwrap() > 0.0, "{line}");
    }
}

#[tokio::test]
async fn the_combined_format_and_reopening_on_sighup() {
    let up = Upstream::start("app").await;
    let dir = temp_dir("access-combined");
    let log = dir.join("access.log");
    let gw = gateway(&up, &log, "combined").await;
    let r = gw
        .request("GET", "/app/x", &[("user-agent", "curl/8")], "")
        .await;
    let line = lines(&log, 1).await.remove(0);
    let expected_tail = format!(
        "\"GET /app/x HTTP/1.1\" 200 {} \"-\" \"curl/8\"",
        r.body.len()
    );
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.ends_with(&expected_tail), "{line}");

    // Rotation: the file moved away, SIGHUP, and the next record goes to a new file.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The signal is handled asynchronously: keep sending until a record lands in the new file.
    eventually(
        Duration::from_secs(5),
        "a record in the reopened file",
        || async {
            gw.get("/app/after").await;
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("/app/after"))
        },
    )
    .await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/app/x"));
}

/// A full buffer drops records rather than waiting, and counts each one: every request is
/// either a line in the file or one in `wasmgate_access_log_dropped_total`.
#[tokio::test]
async fn records_past_the_buffer_are_dropped_and_counted() {
    let up = Upstream::start("app").await;
    let log = temp_dir("access-drops").join("access.log");
    let gw = TestGateway::start(&format!(
        "[access_log]\npath = {:?}\nbuffer = 1\n\n[services.app]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"app\"\nprefix = \"/\"\nservice = \"app\"\n",
        log.display().to_string(),
        up.url()
    ))
    .await;
    let sent = 60;
    let answers = futures_util::future::join_all((0..sent).map(|_| gw.get("/"))).await;
    assert!(answers.iter().all(|r| r.status == 200));
    // Past the writer's next round, nothing more arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    let metrics = gw
        .send(
            http::Request::get(format!("http://{}/metrics", gw.running.admin_addr.unwrap()))
                .body(wasmgate_tests::full(""))
                .unwrap(),
        )
        .await
        .text();
    let dropped: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wasmgate_access_log_dropped_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the counter is exposed");
    assert!(dropped > 0, "60 concurrent requests overflow a buffer of 1");
    assert_eq!(
        written + dropped,
        sent,
        "{written} written, {dropped} dropped"
    );
}
