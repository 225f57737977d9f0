//! `GET /metrics` on the admin listener, read with a Prometheus text parser: request counts by
//! route, method and status match what was sent (a trapping filter, a 502, an unmatched path),
//! upstream errors and retries are counted by service, latency histograms and process figures
//! are there.

use std::collections::HashMap;

use prometheus_parse::{Scrape, Value};
use std::time::Duration;

use wasmgate_tests::{FileGateway, TestGateway, Upstream, dead_addr, eventually, temp_dir};

/// The samples of `name` as (labels, value).
fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<(HashMap<String, String>, &'a Value)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (labels, &s.value)
        })
        .collect()
}

/// The value of `name` whose labels include `want`.
fn value(scrape: &Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples(scrape, name)
        .into_iter()
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| match v {
            Value::Counter(c) | Value::Gauge(c) | Value::Untyped(c) => *c,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0]
}

/// Scrape `gw`'s metrics.
async fn scrape(gw: &TestGateway) -> Scrape {
    let r = gw
        .send(
            http::Request::get(format!("http://{}/metrics", gw.running.admin_addr.unwrap()))
                .body(wasmgate_tests::full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    Scrape::parse(r.text().lines().map(|l| Ok(l.to_string()))).expect("parses")
}

#[tokio::test]
async fn config_reloads_are_counted_by_result() {
    let up = Upstream::start("svc").await;
    let body = format!(
        "[services.svc]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nservice = \"svc\"\n",
        up.url()
    );
    let fg = FileGateway::start(temp_dir("metrics-reload"), &body, &[]).await;
    fg.write_config("[[routes]]\nname = 1\n");
    eventually(Duration::from_secs(10), "the rejection counted", || async {
        let s = scrape(&fg.gw).await;
        samples(&s, "wasmgate_config_reloads_total")
            .iter()
            .any(|(l, _)| l.get("result").map(String::as_str) == Some("rejected"))
            .then_some(())
    })
    .await;
    fg.write_config(&format!(
        "{body}\n[[routes]]\nname = \"two\"\nexact = \"/two\"\nservice = \"svc\"\n"
    ));
    eventually(Duration::from_secs(10), "the reload counted", || async {
        let s = scrape(&fg.gw).await;
        let applied = samples(&s, "wasmgate_config_reloads_total")
            .iter()
            .any(|(l, _)| l.get("result").map(String::as_str) == Some("applied"));
        applied.then_some(s)
    })
    .await;
    let s = scrape(&fg.gw).await;
    assert_eq!(
        value(
            &s,
            "wasmgate_config_reloads_total",
            &[("result", "rejected")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "wasmgate_config_reloads_total",
            &[("result", "applied")]
        ),
        1.0
    );
}

#[tokio::test]
async fn metrics_count_what_was_served() {
    let up = Upstream::start("ok").await;
    let dead = dead_addr().await;
    let gw = TestGateway::start(&format!(
        r#"
[services.ok]
upstreams = ["{ok}"]

[services.down]
upstreams = ["http://{dead}"]

[services.flaky]
upstreams = ["http://{dead}", "{ok}"]

[[routes]]
name = "ok"
prefix = "/ok"
service = "ok"

[[routes]]
name = "down"
prefix = "/down"
service = "down"

[[routes]]
name = "trap"
prefix = "/trap"
service = "ok"
filters = [{{ name = "fail", config = {{ mode = "panic" }} }}]

[[routes]]
name = "flaky"
prefix = "/flaky"
service = "flaky"
[routes.retry]
on = ["connect-failure"]
"#,
        ok = up.url()
    ))
    .await;
    for (path, n, status) in [
        ("/ok", 3, 200),
        ("/down", 2, 502),
        ("/trap", 1, 500),
        ("/nowhere", 1, 404),
        ("/flaky", 2, 200),
    ] {
        for _ in 0..n {
            assert_eq!(gw.get(path).await.status, status, "{path}");
        }
    }
    let r = gw
        .send(
            http::Request::get(format!("http://{}/metrics", gw.running.admin_addr.unwrap()))
                .body(wasmgate_tests::full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .contains("openmetrics-text")
    );
    let text = r.text();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");

    let requests = "wasmgate_requests_total";
    for (route, status, n) in [
        ("ok", "200", 3.0),
        ("down", "502", 2.0),
        ("trap", "500", 1.0),
        ("", "404", 1.0),
        ("flaky", "200", 2.0),
    ] {
        assert_eq!(
            value(
                &scrape,
                requests,
                &[("route", route), ("method", "GET"), ("status", status)]
            ),
            n,
            "{route} {status}\n{text}"
        );
    }
    assert_eq!(
        value(
            &scrape,
            "wasmgate_upstream_errors_total",
            &[("service", "down"), ("kind", "refused")]
        ),
        2.0
    );
    // Each /flaky request tried the dead endpoint first (round robin), then the other.
    assert_eq!(
        value(
            &scrape,
            "wasmgate_upstream_retries_total",
            &[("service", "flaky")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "wasmgate_upstream_errors_total",
            &[("service", "flaky"), ("kind", "refused")]
        ),
        2.0
    );
    // Histograms: every request observed once.
    assert_eq!(
        value(
            &scrape,
            "wasmgate_request_duration_seconds",
            &[("route", "ok")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &scrape,
            "wasmgate_upstream_request_duration_seconds",
            &[("service", "ok")]
        ),
        3.0,
        "the trapping filter's requests never reach the upstream"
    );
    // The trapping filter: one call, one failure of kind trap.
    assert_eq!(
        value(
            &scrape,
            "wasmgate_filter_failures_total",
            &[("filter", "fail"), ("phase", "request"), ("kind", "trap")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "wasmgate_filter_phase_duration_seconds",
            &[("filter", "fail"), ("phase", "request")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "wasmgate_filter_loads_total",
            &[("filter", "fail"), ("result", "loaded")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "wasmgate_filter_instances_started",
            &[("route", "trap"), ("filter", "fail")]
        ),
        1.0,
        "one instance, which trapped and was thrown away"
    );
    assert_eq!(
        value(
            &scrape,
            "wasmgate_filter_breaker_open",
            &[("route", "trap"), ("filter", "fail")]
        ),
        0.0
    );
    assert!(value(&scrape, "wasmgate_open_connections", &[]) >= 1.0);
    assert!(value(&scrape, "wasmgate_process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&scrape, "wasmgate_process_open_fds", &[]) > 3.0);
}
