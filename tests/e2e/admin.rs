//! The admin endpoint made safe beyond loopback: a bearer token for every state change (and for
//! reads unless `protect_reads = false`), `/health` and `/ready` open to probes, a metrics-only
//! listener, and `/ready` that says whether every filter the config names is loaded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use wasmgate_tests::{
    FileGateway, TestGateway, TestResponse, Upstream, eventually, filter, full, temp_dir,
};

const TOKEN: &str = "0f8c2b9e61d54a7398c1e2f3a4b5c6d7";

/// Write the token file into `dir`, as `openssl rand -hex 16 > admin.token` would.
fn write_token(dir: &Path) {
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
}

/// `METHOD http://addr/path` with `Authorization: auth` when given, on a new connection.
async fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> TestResponse {
    use http_body_util::BodyExt;
    // A listener on 0.0.0.0 or [::] is reached over loopback.
    let addr = match addr.ip().is_unspecified() {
        true => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        false => addr,
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client
        .request(req.body(full("")).unwrap())
        .await
        .expect("the admin endpoint answers");
    let (parts, body) = resp.into_parts();
    TestResponse {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn one_route(up: &Upstream) -> String {
    format!(
        "[services.svc]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nservice = \"svc\"\n",
        up.url()
    )
}

#[tokio::test]
async fn state_changes_need_the_token_and_a_wrong_one_changes_nothing() {
    let up = Upstream::start("svc").await;
    let dir = temp_dir("admin-token");
    write_token(&dir);
    let fg = FileGateway::start(
        dir,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n{}",
            one_route(&up)
        ),
        &[],
    )
    .await;
    let admin = fg.running.admin_addr.unwrap();

    // Probes need no token.
    for path in ["/health", "/ready"] {
        let r = call(admin, "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    // Reads do, by default.
    for path in ["/routes", "/filters", "/config", "/services", "/metrics"] {
        let r = call(admin, "GET", path, None).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"wasmgate admin\"")
        );
    }
    let loaded_at = |c: TestResponse| c.json()["loaded_at"].as_str().unwrap().to_string();
    let before = loaded_at(call(admin, "GET", "/config", Some(&bearer())).await);

    let prefix = &TOKEN[..TOKEN.len() - 1];
    let last_changed = format!("{prefix}0");
    let wrong = [
        None,
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some(TOKEN.to_string()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer {prefix}")),
        Some(format!("Bearer {TOKEN}0")),
        Some(format!("Bearer {last_changed}")),
        Some(format!("Bearer {}", TOKEN.to_uppercase())),
    ];
    for auth in &wrong {
        let r = call(admin, "POST", "/reload", auth.as_deref()).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(
            !r.text().contains(TOKEN),
            "the answer never shows the token"
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let config = call(admin, "GET", "/config", Some(&bearer())).await;
    assert_eq!(
        loaded_at(config),
        before,
        "no wrong token reloaded anything"
    );
    let metrics = call(admin, "GET", "/metrics", Some(&bearer())).await;
    assert_eq!(metrics.status, 200);
    assert!(
        !metrics.text().contains("wasmgate_config_reloads_total{"),
        "no reload was counted:\n{}",
        metrics.text()
    );

    // The right token, with the scheme in any case, reloads.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = call(admin, "POST", "/reload", Some(&format!("bearer {TOKEN}"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["status"], "reloaded");
    let after = loaded_at(call(admin, "GET", "/config", Some(&bearer())).await);
    assert_ne!(after, before);
    let routes = call(admin, "GET", "/routes", Some(&bearer())).await;
    assert_eq!(routes.json()[0]["name"], "all");
}

#[tokio::test]
async fn with_protect_reads_off_only_state_changes_need_the_token() {
    let up = Upstream::start("svc").await;
    let dir = temp_dir("admin-reads");
    write_token(&dir);
    let fg = FileGateway::start(
        dir,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\nprotect_reads = false\n\n{}",
            one_route(&up)
        ),
        &[],
    )
    .await;
    let admin = fg.running.admin_addr.unwrap();
    for path in ["/routes", "/filters", "/config", "/services", "/metrics"] {
        assert_eq!(call(admin, "GET", path, None).await.status, 200, "{path}");
    }
    assert_eq!(call(admin, "POST", "/reload", None).await.status, 401);
    assert_eq!(
        call(admin, "POST", "/reload", Some("Bearer nope-nope-nope-nope"))
            .await
            .status,
        401
    );
    let r = call(admin, "POST", "/reload", Some(&bearer())).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// An admin endpoint on every address (with its token), beside a metrics listener that serves
/// metrics and probes only, with no token.
#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_probes_and_nothing_else() {
    let up = Upstream::start("svc").await;
    let dir = temp_dir("admin-metrics");
    write_token(&dir);
    let token_file = dir.join("admin.token");
    let gw = TestGateway::start(&format!(
        "[admin]\nlisten = \"0.0.0.0:0\"\ntoken_file = {:?}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}",
        token_file.display().to_string(),
        one_route(&up)
    ))
    .await;
    assert_eq!(gw.get("/x").await.status, 200);
    let admin = gw.running.admin_addr.unwrap();
    assert!(admin.ip().is_unspecified(), "{admin}");
    let metrics = gw.running.metrics_addr.expect("the metrics listener");

    let r = call(metrics, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .contains("openmetrics-text")
    );
    assert!(r.text().contains("wasmgate_requests_total{route=\"all\""));
    for path in ["/health", "/ready"] {
        assert_eq!(call(metrics, "GET", path, None).await.status, 200);
    }
    for (method, path) in [
        ("GET", "/routes"),
        ("GET", "/filters"),
        ("GET", "/config"),
        ("GET", "/services"),
        ("POST", "/reload"),
        ("POST", "/metrics"),
        ("GET", "/"),
    ] {
        let r = call(metrics, method, path, Some(&bearer())).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
    }
    // The admin endpoint itself, reached over loopback, wants its token.
    assert_eq!(call(admin, "GET", "/routes", None).await.status, 401);
    let r = call(admin, "GET", "/routes", Some(&bearer())).await;
    assert_eq!(r.status, 200);
}

/// `/ready` is 503 while a filter the config names is missing, 200 once it is loaded, and 503
/// again ("draining") once the gateway starts to stop, while requests in flight finish.
#[tokio::test]
async fn ready_waits_for_every_named_filter_and_ends_with_draining() {
    let up = Upstream::start_with_delay("slow", Duration::from_millis(600)).await;
    let fg = FileGateway::start(
        temp_dir("admin-ready"),
        &format!(
            "[services.svc]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"later\"\nprefix = \"/\"\nservice = \"svc\"\nfilters = [{{ name = \"later\" }}]\n",
            up.url()
        ),
        &[],
    )
    .await;
    let admin = fg.running.admin_addr.unwrap();
    let r = call(admin, "GET", "/ready", None).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "filters not loaded");
    assert_eq!(body["unavailable"][0]["route"], "later");
    assert_eq!(body["unavailable"][0]["filter"], "later");
    assert_eq!(call(admin, "GET", "/health", None).await.status, 200);

    std::fs::copy(filter("headers"), fg.filter_path("later")).unwrap();
    eventually(
        Duration::from_secs(10),
        "ready once the filter loads",
        || async { (call(admin, "GET", "/ready", None).await.status == 200).then_some(()) },
    )
    .await;

    // A slow request in flight keeps the stop draining for a while.
    let url = fg.url("/slow");
    let in_flight = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        client.get(url.parse().unwrap()).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let FileGateway { gw, dir: _ } = fg;
    let stopping = tokio::spawn(gw.running.stop());
    let r = eventually(Duration::from_secs(2), "draining on /ready", || async {
        let r = call(admin, "GET", "/ready", None).await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(r.json()["status"], "draining");
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the request in flight finished"
    );
    stopping.await.unwrap();
}

/// `GET path` on `addr`: the status and body, or `None` when nothing answers yet.
async fn probe(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client
        .request(
            http::Request::get(format!("http://{addr}{path}"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The admin endpoint answers while the gateway is still compiling its filters: alive
/// (`/health` 200), not ready (`/ready` 503 "starting"); ready once they are loaded. A probe
/// that hung until then would count as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_the_filters_compile() {
    let up = Upstream::start("svc").await;
    let dir = temp_dir("admin-starting");
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nfilters_dir = {:?}\ncache_dir = {:?}\naccess_log = {{ enabled = false }}\n[admin]\nlisten = \"{admin}\"\n\n[services.svc]\nupstreams = [\"{}\"]\n",
        dir.join("filters").display().to_string(),
        dir.join("cache").display().to_string(),
        up.url()
    );
    // Compiled afresh (an empty compile cache): the start takes a while.
    for name in [
        "headers",
        "phases",
        "tag-v1",
        "tag-v2",
        "metered",
        "echo-config",
    ] {
        std::fs::copy(
            filter(name),
            dir.join("filters").join(format!("{name}.wasm")),
        )
        .unwrap();
        text.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nservice = \"svc\"\nfilters = [{{ name = \"{name}\" }}]\n"
        ));
    }
    let config = wasmgate::Config::parse(&text).unwrap();
    let start = tokio::spawn(wasmgate::RunningGateway::start(config, None));
    let mut seen = Vec::new();
    while !start.is_finished() {
        if let (Some(health), Some(ready)) =
            (probe(admin, "/health").await, probe(admin, "/ready").await)
            && !start.is_finished()
        {
            seen.push((health, ready));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let running = start.await.unwrap().expect("the gateway starts");
    assert!(
        seen.iter()
            .any(|((health, _), (ready, body))| *health == 200
                && *ready == 503
                && body.contains("\"status\":\"starting\"")),
        "no probe answered during the start: {seen:?}"
    );
    let (status, body) = probe(admin, "/ready").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ready\"}"));
    running.stop().await;
}
