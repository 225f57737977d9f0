//! A filter that loops, allocates without bound, panics, overflows its stack or returns too
//! much fails only its own request: cleanly, within its deadline, with its failure policy; and
//! while many such requests run, a healthy route keeps answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use wasmgate_tests::{Filter, GatewayConfig, Route, TestGateway, Upstream};

/// Held by every test here for its whole run: some keep the machine's cores busy with runaway
/// filters, and others time requests or count this process's CPU, which must not include
/// another test's flood or filter compiles.
static BUSY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A route `/{name}` to `svc` through `filter`.
fn route(name: &str, filter: Filter) -> Route {
    Route::prefix(name, &format!("/{name}"))
        .service("svc")
        .filter(filter)
}

/// The `fail` filter misbehaving in `mode`, after marking the request (`x-marked`).
fn fail(mode: &str) -> Filter {
    Filter::new("fail").config(json!({ "mode": mode, "mark": true }))
}

/// Every way the `fail` filter misbehaves.
const MODES: [&str; 8] = [
    "loop",
    "alloc",
    "panic",
    "stack",
    "huge",
    "error",
    "invalid-header",
    "invalid-response-header",
];

async fn gateway(up: &Upstream) -> TestGateway {
    let mut config = GatewayConfig::new().service("svc", &[up.url()]);
    for mode in MODES {
        config = config
            .route(route(mode, fail(mode)))
            .route(route(&format!("{mode}-open"), fail(mode).fail_open()));
    }
    config
        .route(route(
            "tight",
            fail("loop").limits(json!({"deadline": "20ms"})),
        ))
        .route(route("ok", Filter::new("headers")))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misbehaviour_fails_its_request_cleanly_or_fails_open() {
    let _busy = BUSY.lock().await;
    let up = Upstream::start("svc").await;
    let gw = gateway(&up).await;
    for mode in MODES {
        let started = Instant::now();
        let r = gw.get(&format!("/{mode}")).await;
        let took = started.elapsed();
        assert_eq!(r.status, 500, "{mode}: {}", r.text());
        assert_eq!(
            r.json()["error"]["message"],
            "a filter failed to process the request",
            "{mode}"
        );
        assert!(took < Duration::from_millis(600), "{mode} took {took:?}");
    }
    assert_eq!(up.hits(), 0, "no failing request reached the upstream");

    for (n, mode) in MODES.into_iter().enumerate() {
        let r = gw.get(&format!("/{mode}-open")).await;
        assert_eq!(r.status, 200, "{mode} fail-open: {}", r.text());
        assert_eq!(r.header("x-broken"), None, "{mode} fail-open");
        assert_eq!(
            r.json()["upstream"],
            "svc",
            "fail-open continued to the upstream"
        );
        // As if the filter were absent: what it wrote before failing is not sent on.
        let seen = &up.seen()[n];
        assert!(
            !seen.headers.contains_key("x-marked") && !seen.headers.contains_key("x-broken"),
            "{mode} fail-open passed on the failed filter's writes: {:?}",
            seen.headers
        );
    }
    assert_eq!(up.hits(), MODES.len());

    // A per-route deadline override cuts the loop sooner.
    let started = Instant::now();
    assert_eq!(gw.get("/tight").await.status, 500);
    let tight = started.elapsed();
    assert!(
        tight < Duration::from_millis(90),
        "the 20 ms deadline took {tight:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_runaway_requests_do_not_stall_a_healthy_route() {
    let _busy = BUSY.lock().await;
    let up = Upstream::start("svc").await;
    let gw = Arc::new(gateway(&up).await);
    for _ in 0..5 {
        assert_eq!(gw.get("/ok").await.status, 200);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut runaways = Vec::new();
    for i in 0..20 {
        let (gw, stop) = (gw.clone(), stop.clone());
        let path = if i % 2 == 0 { "/loop" } else { "/alloc" };
        runaways.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // 500 while it runs; 503 at once once its breaker has opened.
                let status = gw.get(path).await.status;
                assert!(status == 500 || status == 503, "runaway got {status}");
                n += 1;
            }
            n
        }));
    }
    // Measured from the start, so the first burst (every runaway running, before any breaker
    // opens) is included.
    let mut latencies = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let r = gw.get("/ok").await;
        latencies.push(started.elapsed());
        assert_eq!(r.status, 200, "a healthy request failed");
    }
    stop.store(true, Ordering::Relaxed);
    let mut failed_runaways = 0;
    for r in runaways {
        failed_runaways += r.await.unwrap();
    }
    latencies.sort();
    let (p50, max) = (
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    eprintln!(
        "healthy route under 20 runaway clients ({failed_runaways} runaway requests): p50 {p50:?}, max {max:?}"
    );
    assert!(
        max < Duration::from_millis(500),
        "healthy latency went to {max:?}"
    );
}

/// While one call loops toward its deadline, the worker running it keeps serving its other
/// connections: the guest yields to them every few hundred microseconds, and only after the
/// worker has looked for new I/O. (With wasmtime's plain yield, a worker whose only ready task
/// was the loop looked for I/O every 61 polls: its connections waited 120 ms per step.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_call_does_not_hold_its_worker() {
    let _busy = BUSY.lock().await;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;

    let up = Upstream::start("svc").await;
    let gw = Arc::new(
        GatewayConfig::new()
            .service("svc", &[up.url()])
            .route(route(
                "loop",
                fail("loop").limits(json!({"deadline": "1s"})),
            ))
            .route(Route::prefix("ok", "/ok").service("svc"))
            .start()
            .await,
    );
    // Keep-alive connections opened together while both workers are idle, so both workers
    // hold some; the loop then ties up one of them.
    let mut conns = Vec::new();
    for _ in 0..8 {
        let addr = gw.running.addr;
        conns.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send
        }));
    }
    let mut senders = Vec::new();
    for c in conns {
        senders.push(c.await.unwrap());
    }
    let get = |send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        let req = http::Request::get("/ok")
            .header("host", "t")
            .body(Empty::new())
            .unwrap();
        let sent = send.send_request(req);
        async move {
            let started = Instant::now();
            let resp = sent.await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
            started.elapsed()
        }
    };
    for send in &mut senders {
        get(send).await;
    }

    let looping = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.get("/loop").await.status })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        for send in &mut senders {
            slowest = slowest.max(get(send).await);
        }
    }
    assert!(!looping.is_finished(), "the loop ran the whole time");
    assert!(
        slowest < Duration::from_millis(20),
        "a request beside the loop took {slowest:?}"
    );
    assert_eq!(
        looping.await.unwrap(),
        500,
        "the loop was cut at its deadline"
    );
}

/// User plus system CPU time of this process (the gateway runs in it) so far.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime (fields 14 and 15), in clock ticks of 10 ms.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A call still running after a tenth of its deadline is most likely a runaway: from then on
/// it gets about a fifth of its worker, so a loop with a 1 s deadline burns a quarter of a
/// CPU-second, not all of it, and is still cut at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_a_tenth_of_its_deadline_is_throttled() {
    let _busy = BUSY.lock().await;
    let up = Upstream::start("svc").await;
    let gw = GatewayConfig::new()
        .service("svc", &[up.url()])
        .route(route(
            "loop",
            fail("loop").limits(json!({"deadline": "1s"})),
        ))
        .start()
        .await;
    let (cpu, started) = (process_cpu(), Instant::now());
    assert_eq!(gw.get("/loop").await.status, 500);
    let (cpu, took) = (process_cpu() - cpu, started.elapsed());
    eprintln!("a 1 s loop used {cpu:?} of CPU in {took:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "cut at its deadline: {took:?}"
    );
    assert!(
        cpu < Duration::from_millis(600),
        "the loop used {cpu:?} of CPU in {took:?}"
    );
}

/// Which instance served each of `n` sequential requests to `path`: its request count.
async fn instance_counts(gw: &TestGateway, path: &str, n: usize) -> Vec<String> {
    let mut counts = Vec::new();
    for _ in 0..n {
        let r = gw.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        counts.push(
            r.header("x-instance-requests")
                .unwrap_or("none")
                .to_string(),
        );
    }
    counts
}

#[tokio::test]
async fn instances_are_reused_only_when_the_filter_opts_in_and_never_after_a_failure() {
    let _busy = BUSY.lock().await;
    let up = Upstream::start("svc").await;
    let counter_reuse =
        |n: u32| Filter::new("counter-reuse").limits(json!({ "requests_per_instance": n }));
    let gw = GatewayConfig::new()
        .service("svc", &[up.url()])
        .route(route("fresh", Filter::new("counter-fresh")))
        .route(route("reuse", counter_reuse(4)))
        .route(route("forced-fresh", counter_reuse(1)))
        .start()
        .await;

    // Not opted in: every request starts from a fresh instance and sees nothing of the last.
    assert_eq!(instance_counts(&gw, "/fresh", 3).await, ["1", "1", "1"]);
    // Opted in: one instance serves requests one after another, up to the reuse limit.
    assert_eq!(
        instance_counts(&gw, "/reuse", 6).await,
        ["1", "2", "3", "4", "1", "2"]
    );
    // A trap discards the instance it happened in: the next request gets a fresh one.
    assert_eq!(gw.get("/reuse?panic").await.status, 500);
    assert_eq!(instance_counts(&gw, "/reuse", 2).await, ["1", "2"]);
    // The operator can turn reuse off for a route.
    assert_eq!(instance_counts(&gw, "/forced-fresh", 2).await, ["1", "1"]);
}

/// An idle instance must not keep its pool (and with it the engine and every slot it reserved)
/// alive: dropping a snapshot's bindings frees them.
#[tokio::test]
async fn a_dropped_binding_frees_its_idle_instances() {
    let _busy = BUSY.lock().await;
    use wasmgate_sandbox::{Grants, HttpRequest, InstancePool, Limits, RouteInfo, Sandbox};
    let limits = Limits {
        deadline: Duration::from_millis(100),
        memory_bytes: 32 << 20,
        max_output_bytes: 2 << 20,
        requests_per_instance: 1000,
    };
    let sandbox = Sandbox::new().unwrap();
    let bytes = std::fs::read(wasmgate_artifacts::filter("counter-reuse")).unwrap();
    let filter = Arc::new(sandbox.load("counter-reuse", bytes, None).await.unwrap());
    let needs = filter.check_config("{}", limits).await.unwrap();
    assert!(needs.reuse_instance, "the filter opts in");
    let pool = Arc::new(InstancePool::new(filter.clone(), "{}".into(), needs, 1000));
    let ctx = Arc::new(RouteInfo {
        route: "r".into(),
        params: vec![],
        client: wasmgate_sandbox::ClientAddr::Text("127.0.0.1:1".into()),
        request_id: "r1".into(),
    });
    let mut req = HttpRequest {
        authority: "x".into(),
        path_and_query: "/".into(),
        scheme: "http",
        ..HttpRequest::default()
    };
    let mut lease = pool.lease(&"r1".into(), Grants::none(limits));
    lease.on_request(&ctx, &mut req).await.unwrap();
    drop(lease);
    assert_eq!(pool.idle(), 1, "given back to the pool after the call");
    let weak = Arc::downgrade(&pool);
    drop(pool);
    assert!(
        weak.upgrade().is_none(),
        "the idle instance kept its pool alive"
    );
}

/// The breaker counts a request's use of a filter whichever phase fails: a filter that traps
/// only in its response phase is paused after five failed requests like any other, and a probe
/// after the cool-down that fails again pauses it again.
#[tokio::test]
async fn a_filter_failing_only_in_its_response_phase_opens_its_breaker() {
    let _busy = BUSY.lock().await;
    let up = Upstream::start("svc").await;
    let gw = GatewayConfig::new()
        .service("svc", &[up.url()])
        .route(route(
            "late",
            Filter::new("fail").config(json!({"mode": "panic", "phase": "response"})),
        ))
        .start()
        .await;
    for i in 1..=5 {
        let r = gw.get("/late").await;
        assert_eq!(r.status, 500, "request {i}: {}", r.text());
    }
    assert_eq!(up.hits(), 5, "each failed only after the upstream answered");
    let r = gw.get("/late").await;
    assert_eq!(r.status, 503, "the breaker is open: {}", r.text());
    assert_eq!(up.hits(), 5, "an open breaker answers before the upstream");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gw.get("/late").await.status,
        500,
        "the probe runs and fails"
    );
    assert_eq!(
        gw.get("/late").await.status,
        503,
        "and the breaker opens again"
    );
    assert_eq!(up.hits(), 6);
}

/// Headers for the response are set from the request phase; a response phase that tries
/// (instead of setting them on the response it holds) fails as invalid output.
#[tokio::test]
async fn a_response_header_queued_from_the_response_phase_fails_it() {
    let _busy = BUSY.lock().await;
    let up = Upstream::start("svc").await;
    let gw = GatewayConfig::new()
        .service("svc", &[up.url()])
        .route(route(
            "late",
            Filter::new("fail")
                .config(json!({"mode": "invalid-response-header", "phase": "response"})),
        ))
        .start()
        .await;
    let r = gw.get("/late").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.header("x-early"), None);
    assert_eq!(up.hits(), 1);
}
