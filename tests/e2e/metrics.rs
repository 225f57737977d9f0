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

/// Debian's `python3-prometheus-client` (`.ci/run` installs it): the reference parsers, the
/// strict OpenMetrics one and the Prometheus text 0.0.4 one. Prints the families and samples it
/// read, one `name labels` line per sample.
fn python_parse(parser: &str, text: &str) -> Result<Vec<String>, String> {
    use std::io::Write;
    let script = format!(
        "import sys\nfrom {parser} import text_string_to_metric_families as parse\n\
         for family in parse(sys.stdin.read()):\n\
         \x20   print('family', family.name, family.type)\n\
         \x20   for s in family.samples:\n\
         \x20       print('sample', s.name, sorted(s.labels.items()))\n"
    );
    // Debian's python, where the package is; not one a version manager put first in PATH.
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (apt-get install python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "apt-get install python3-prometheus-client: {stderr}"
    );
    if !out.status.success() {
        return Err(stderr.into_owned());
    }
    Ok(String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect())
}

/// Every family and every sample `/metrics` serves passes the strict OpenMetrics parser, with
/// a histogram of each kind (the gateway's, a filter's own) and counters with and without
/// units among them; a scraper that asks for `text/plain` gets the same samples as Prometheus
/// text 0.0.4, whose parser reads them too.
#[tokio::test]
async fn every_family_passes_a_strict_openmetrics_parser_and_text_004_is_served_on_request() {
    let up = Upstream::start("svc").await;
    let dead = dead_addr().await;
    let gw = TestGateway::start(&format!(
        r#"
[services.svc]
upstreams = ["{up}"]

[services.down]
upstreams = ["http://{dead}"]

[[routes]]
name = "metered"
prefix = "/metered"
service = "svc"
filters = [{{ name = "metered" }}]

[[routes]]
name = "keyed"
prefix = "/keyed"
service = "svc"
[[routes.filters]]
name = "auth-apikey"
config = {{ keys = [{{ hash = "sha256:{hash}", consumer = "ann" }}] }}

[[routes]]
name = "down"
prefix = "/down"
service = "down"

[[routes]]
name = "trap"
prefix = "/trap"
service = "svc"
filters = [{{ name = "fail", config = {{ mode = "panic" }} }}]
"#,
        up = up.url(),
        hash = sha256_hex("k1"),
    ))
    .await;
    for (method, path, headers, body, status) in [
        ("POST", "/metered", vec![("x-user", "ann")], "12345", 200),
        ("GET", "/keyed", vec![], "", 401),
        ("GET", "/keyed", vec![("x-api-key", "k1")], "", 200),
        ("GET", "/down", vec![], "", 502),
        ("GET", "/trap", vec![], "", 500),
        ("GET", "/nowhere", vec![], "", 404),
    ] {
        let r = gw.request(method, path, &headers, body).await;
        assert_eq!(r.status, status, "{method} {path}");
    }
    let admin = gw.running.admin_addr.unwrap();
    let get = |accept: Option<&'static str>| {
        let mut req = http::Request::get(format!("http://{admin}/metrics"));
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        gw.send(req.body(wasmgate_tests::full("")).unwrap())
    };

    // What Prometheus itself sends, and curl's default: OpenMetrics.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let om = get(Some(prometheus)).await;
    assert_eq!(
        om.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = om.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let parsed = python_parse("prometheus_client.openmetrics.parser", &text)
        .unwrap_or_else(|e| panic!("the OpenMetrics parser refused /metrics: {e}\n{text}"));
    let families = parsed.iter().filter(|l| l.starts_with("family ")).count();
    let samples = parsed.iter().filter(|l| l.starts_with("sample ")).count();
    assert_eq!(
        families,
        text.lines().filter(|l| l.starts_with("# TYPE ")).count(),
        "every family read"
    );
    assert_eq!(
        samples,
        text.lines().filter(|l| !l.starts_with('#')).count(),
        "every sample read"
    );
    for family in [
        "family wasmgate_requests counter",
        "family wasmgate_request_duration_seconds histogram",
        "family wasmgate_filter_phase_duration_seconds histogram",
        "family wasmgate_filter_metered_body_bytes histogram",
        "family wasmgate_filter_auth_apikey_refused counter",
        "family wasmgate_process_cpu_seconds counter",
        "family wasmgate_upstream_errors counter",
        "family wasmgate_filter_failures counter",
    ] {
        assert!(parsed.iter().any(|l| l == family), "{family} in\n{text}");
    }
    assert!(text.contains("le=\"+Inf\""), "{text}");
    assert!(!text.contains("le=\"inf\""), "{text}");

    // Prometheus text 0.0.4, for a scraper that prefers it.
    let plain = get(Some("text/plain;version=0.0.4;q=0.9,*/*;q=0.1")).await;
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text_004 = plain.text();
    assert!(!text_004.contains("# EOF") && !text_004.contains("# UNIT"));
    assert!(text_004.contains("# TYPE wasmgate_requests_total counter\n"));
    assert!(text_004.contains("# HELP wasmgate_process_cpu_seconds_total "));
    for line in text_004.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{line}");
            assert!(
                text_004.contains(&format!("\n{name}{{"))
                    || text_004.contains(&format!("\n{name} ")),
                "a counter's samples carry its name: {name}\n{text_004}"
            );
        }
    }
    let parsed_004 = python_parse("prometheus_client.parser", &text_004)
        .unwrap_or_else(|e| panic!("the 0.0.4 parser refused it: {e}\n{text_004}"));
    let sample_names = |lines: &[String]| {
        let mut names: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("sample "))
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(
        sample_names(&parsed_004),
        sample_names(&parsed),
        "the same series in both formats"
    );
    // The lenient parser the other tests use reads it too.
    Scrape::parse(text_004.lines().map(|l| Ok(l.to_string()))).expect("parses");
}
