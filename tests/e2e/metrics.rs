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

/// Scrape `gw`'s metrics: parsed, and the text as served (in the exposition format).
async fn scrape_text(gw: &TestGateway) -> (Scrape, String) {
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
    (scrape, text)
}

/// Scrape `gw`'s metrics.
async fn scrape(gw: &TestGateway) -> Scrape {
    scrape_text(gw).await.0
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
    let (scrape, text) = scrape_text(&gw).await;

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
    // Per endpoint: flaky's dead endpoint took both first tries and failed them, the live one
    // answered both retries.
    let dead_endpoint = format!("http://{dead}/");
    let live_endpoint = format!("{}/", up.url());
    for (endpoint, requests, failures) in [(&dead_endpoint, 2.0, 2.0), (&live_endpoint, 2.0, 0.0)] {
        let labels = [("service", "flaky"), ("endpoint", endpoint.as_str())];
        assert_eq!(
            value(
                &scrape,
                "wasmgate_upstream_endpoint_requests_total",
                &labels
            ),
            requests,
            "{endpoint}\n{text}"
        );
        assert_eq!(
            value(
                &scrape,
                "wasmgate_upstream_endpoint_failures_total",
                &labels
            ),
            failures,
            "{endpoint}"
        );
        assert_eq!(
            value(&scrape, "wasmgate_upstream_endpoint_healthy", &labels),
            1.0
        );
    }
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

/// A filter's own metrics appear as `wasmgate_filter_<filter>_<name>` with the route first among
/// their labels; one metric keeps at most 256 label sets and counts what it drops; a bundled
/// filter (`auth-apikey`) counts its refusals by reason.
#[tokio::test]
async fn filters_define_metrics_of_their_own_with_a_cap_on_label_sets() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        r#"
[services.svc]
upstreams = ["{up}"]

[[routes]]
name = "a"
prefix = "/a"
service = "svc"
filters = [{{ name = "metered" }}]

[[routes]]
name = "b"
prefix = "/b"
service = "svc"
filters = [{{ name = "metered" }}]

[[routes]]
name = "keyed"
prefix = "/keyed"
service = "svc"
[[routes.filters]]
name = "auth-apikey"
config = {{ keys = [{{ hash = "sha256:{hash}", consumer = "ann" }}] }}
"#,
        up = up.url(),
        hash = sha256_hex("k1"),
    ))
    .await;

    for _ in 0..3 {
        assert_eq!(
            gw.request("GET", "/a", &[("x-user", "ann")], "")
                .await
                .status,
            200
        );
    }
    assert_eq!(
        gw.request("POST", "/b", &[("x-user", "bob")], "12345")
            .await
            .status,
        200
    );
    assert_eq!(
        gw.request("POST", "/b", &[], &"x".repeat(500)).await.status,
        200
    );
    assert_eq!(gw.get("/keyed").await.status, 401);
    assert_eq!(
        gw.request("GET", "/keyed", &[("x-api-key", "nope")], "")
            .await
            .status,
        403
    );
    assert_eq!(
        gw.request("GET", "/keyed", &[("x-api-key", "k1")], "")
            .await
            .status,
        200
    );

    let (s, text) = scrape_text(&gw).await;
    let seen = "wasmgate_filter_metered_seen_total";
    assert!(
        text.contains("# HELP wasmgate_filter_metered_seen Requests seen, by user"),
        "{text}"
    );
    assert_eq!(value(&s, seen, &[("route", "a"), ("user", "ann")]), 3.0);
    assert_eq!(value(&s, seen, &[("route", "b"), ("user", "bob")]), 1.0);
    assert_eq!(
        value(&s, seen, &[("route", "b"), ("user", "anonymous")]),
        1.0
    );
    assert_eq!(samples(&s, seen).len(), 3);
    for route in ["a", "b"] {
        assert_eq!(
            value(&s, "wasmgate_filter_metered_in_flight", &[("route", route)]),
            0.0,
            "every request phase had its response phase"
        );
    }
    // Two bodies on route b: 5 bytes (<= 10) and 500 bytes (<= 1000).
    let buckets = samples(&s, "wasmgate_filter_metered_body_bytes")
        .into_iter()
        .find(|(l, _)| l.get("route").map(String::as_str) == Some("b"))
        .map(|(_, v)| match v {
            Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        })
        .expect("route b's histogram");
    assert_eq!(
        buckets,
        vec![
            (10.0, 1.0),
            (100.0, 1.0),
            (1000.0, 2.0),
            (f64::INFINITY, 2.0)
        ]
    );
    let refused = "wasmgate_filter_auth_apikey_refused_total";
    assert_eq!(
        value(&s, refused, &[("route", "keyed"), ("reason", "missing")]),
        1.0
    );
    assert_eq!(
        value(&s, refused, &[("route", "keyed"), ("reason", "unknown")]),
        1.0
    );
    assert_eq!(samples(&s, refused).len(), 2);

    // 300 more users: the metric keeps 256 label sets in all, the rest is counted as overflow.
    for i in 0..300 {
        let user = format!("user-{i}");
        assert_eq!(
            gw.request("GET", "/a", &[("x-user", &user)], "")
                .await
                .status,
            200
        );
    }
    let s = scrape(&gw).await;
    assert_eq!(samples(&s, seen).len(), 256);
    assert_eq!(
        value(
            &s,
            "wasmgate_filter_metric_overflow_total",
            &[("filter", "metered"), ("metric", "seen")]
        ),
        (3 + 300 - 256) as f64
    );
    assert_eq!(
        value(&s, seen, &[("route", "a"), ("user", "ann")]),
        3.0,
        "kept"
    );
}

/// A filter whose metric definition is invalid fails its config check with the reason.
#[tokio::test]
async fn an_invalid_metric_definition_rejects_the_filter_config() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&format!(
        "[services.svc]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"bad\"\nprefix = \"/\"\nservice = \"svc\"\nfilters = [{{ name = \"metered\", config = {{ bad_metric = true }} }}]\n",
        up.url()
    ))
    .await;
    let r = gw.get("/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(up.seen().is_empty());
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}
