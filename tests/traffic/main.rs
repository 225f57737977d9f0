//! Traffic management against several real upstreams: retries and health checks around an
//! upstream killed under load, least request against a slow upstream, consistent hashing
//! across a removal, outlier ejection, limits, and what happens when nothing is healthy. Its
//! own process, so that the timings it asserts are not skewed by the other suites.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use wasmgate_tests::{FileGateway, TestGateway, Upstream, eventually, temp_dir};

/// An upstream that can be killed (listener closed, every open connection dropped) and
/// started again on the same port. Answers `x-upstream: <name>`; `/health` answers 200.
struct Killable {
    addr: SocketAddr,
    name: String,
    hits: Arc<AtomicUsize>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Killable {
    async fn start(name: &str) -> Killable {
        let mut k = Killable {
            addr: "127.0.0.1:0".parse().unwrap(),
            name: name.to_string(),
            hits: Arc::default(),
            tasks: Arc::default(),
        };
        k.serve().await;
        k
    }

    async fn serve(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let (name, hits, tasks) = (self.name.clone(), self.hits.clone(), self.tasks.clone());
        self.tasks.lock().unwrap().spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (name, hits) = (name.clone(), hits.clone());
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if req.uri().path() != "/health" {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                    let name = name.clone();
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("x-upstream", name)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
                tasks.lock().unwrap().spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    }

    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `clients` concurrent clients sending GET `path` until `stop`; the statuses they got.
fn load(
    gw: &Arc<TestGateway>,
    path: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> JoinSet<Vec<u16>> {
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (gw, stop, path) = (gw.clone(), stop.clone(), path.to_string());
        set.spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                statuses.push(gw.get(&path).await.status.as_u16());
            }
            statuses
        });
    }
    set
}

/// The admin view of endpoint `url` of service `name`.
async fn endpoint(gw: &TestGateway, name: &str, url: &str) -> Value {
    let services = gw.admin("/services").await;
    let service = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name}: {services}"))
        .clone();
    service["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["url"]
                .as_str()
                .is_some_and(|u| u.trim_end_matches('/') == url)
        })
        .unwrap_or_else(|| panic!("no endpoint {url}: {service}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_under_load_costs_no_failed_requests() {
    let mut ups = Vec::new();
    for name in ["a", "b", "c"] {
        ups.push(Killable::start(name).await);
    }
    let urls: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.url())).collect();
    let gw = Arc::new(
        TestGateway::start(&format!(
            r#"
[services.app]
upstreams = [{}]
[services.app.health_check]
path = "/health"
interval = "200ms"
timeout = "100ms"
unhealthy_threshold = 2
healthy_threshold = 2

[[routes]]
name = "all"
prefix = "/"
service = "app"
# The default budget (20% of requests in flight, at least 3) would refuse a few of the
# retries a third of the load needs at once; this test lets every one through.
[routes.retry]
attempts = 3
on = ["connect-failure", "reset", "503"]
budget_percent = 100
"#,
            urls.join(", ")
        ))
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, "/work", 8, &stop);
    tokio::time::sleep(Duration::from_millis(700)).await;

    ups[1].kill();
    let killed = Instant::now();
    let b = ups[1].url();
    let noticed = eventually(Duration::from_secs(3), "b unhealthy", || async {
        (endpoint(&gw, "app", &b).await["healthy"] == false).then(|| killed.elapsed())
    })
    .await;
    // Tries already under way when it went out may still end; then nothing is sent to it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tried = endpoint(&gw, "app", &b).await["requests"].clone();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        endpoint(&gw, "app", &b).await["requests"],
        tried,
        "an unhealthy endpoint gets no traffic"
    );
    let hits_when_out = ups[1].hits.load(Ordering::SeqCst);

    // Back on the same port: back in after `healthy_threshold` passing checks.
    ups[1].serve().await;
    let restarted = Instant::now();
    let back = eventually(Duration::from_secs(3), "b healthy again", || async {
        (endpoint(&gw, "app", &b).await["healthy"] == true).then(|| restarted.elapsed())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = clients.join_all().await.into_iter().flatten().collect();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    let mut by_status = std::collections::BTreeMap::new();
    for s in &statuses {
        *by_status.entry(*s).or_insert(0) += 1;
    }
    eprintln!("statuses: {by_status:?}");
    eprintln!(
        "killed under load: {} requests, {failed} failed; out after {noticed:?}, back after {back:?}",
        statuses.len()
    );
    assert!(statuses.len() > 200, "the load ran: {}", statuses.len());
    assert_eq!(failed, 0, "statuses other than 200: {failed}");
    // interval x threshold, plus scheduling slack on a loaded 2-core machine.
    assert!(noticed <= Duration::from_millis(400 + 250), "{noticed:?}");
    assert!(back <= Duration::from_millis(400 + 250), "{back:?}");
    assert!(
        ups[1].hits.load(Ordering::SeqCst) > hits_when_out,
        "b serves again once healthy"
    );
}

/// Shares of `n` requests per upstream name (from `x-upstream`), sent by `concurrency` clients.
async fn spread(
    gw: &Arc<TestGateway>,
    path: &str,
    n: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let left = Arc::new(AtomicUsize::new(n));
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (gw, counts, left, path) = (gw.clone(), counts.clone(), left.clone(), path.to_string());
        set.spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                .is_ok()
            {
                let r = gw.get(&path).await;
                assert_eq!(r.status, 200);
                let name = r.header("x-upstream").unwrap().to_string();
                *counts.lock().unwrap().entry(name).or_insert(0) += 1;
            }
        });
    }
    set.join_all().await;
    Arc::try_unwrap(counts).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_fewer_requests_to_a_slow_upstream() {
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(40)).await;
    let fast = Upstream::start("fast").await;
    let gw = Arc::new(
        TestGateway::start(&format!(
            r#"
[services.rr]
upstreams = ["{slow}", "{fast}"]

[services.lr]
upstreams = ["{slow}", "{fast}"]
balance = "least_request"

[[routes]]
name = "rr"
prefix = "/rr"
service = "rr"

[[routes]]
name = "lr"
prefix = "/lr"
service = "lr"
"#,
            slow = slow.url(),
            fast = fast.url()
        ))
        .await,
    );
    let rr = spread(&gw, "/rr", 200, 8).await;
    let lr = spread(&gw, "/lr", 200, 8).await;
    let share = |c: &HashMap<String, usize>| {
        c.get("slow").copied().unwrap_or(0) as f64 / c.values().sum::<usize>() as f64
    };
    eprintln!(
        "slow upstream's share: round robin {:.2}, least request {:.2}",
        share(&rr),
        share(&lr)
    );
    assert!((0.45..=0.55).contains(&share(&rr)), "{rr:?}");
    assert!(share(&lr) < 0.25, "least request: {lr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_keys_and_moves_about_one_in_n() {
    let ups = [
        Upstream::start("u0").await,
        Upstream::start("u1").await,
        Upstream::start("u2").await,
        Upstream::start("u3").await,
    ];
    let config = |n: usize| {
        let urls: Vec<String> = ups[..n]
            .iter()
            .map(|u| format!("\"{}\"", u.url()))
            .collect();
        format!(
            "[services.app]\nupstreams = [{}]\nbalance = \"consistent_hash\"\nhash_on = \"header:x-user\"\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nservice = \"app\"\n",
            urls.join(", ")
        )
    };
    let fg = FileGateway::start(temp_dir("hash"), &config(4), &[]).await;
    let owner = |user: usize| {
        let gw = &fg.gw;
        async move {
            let r = gw
                .request("GET", "/", &[("x-user", &format!("user-{user}"))], "")
                .await;
            r.header("x-upstream").unwrap().to_string()
        }
    };
    let mut before = Vec::new();
    for user in 0..200 {
        let first = owner(user).await;
        assert_eq!(owner(user).await, first, "a key stays on its upstream");
        before.push(first);
    }
    let used: std::collections::HashSet<&String> = before.iter().collect();
    assert_eq!(used.len(), 4, "keys spread over every upstream");

    fg.write_config(&config(3));
    eventually(Duration::from_secs(10), "u3 removed", || async {
        let services = fg.gw.admin("/services").await;
        (services[0]["endpoints"].as_array().unwrap().len() == 3).then_some(())
    })
    .await;
    let mut moved = 0;
    for (user, was) in before.iter().enumerate() {
        let now = owner(user).await;
        if was == "u3" {
            assert_ne!(now, "u3");
            moved += 1;
        } else {
            assert_eq!(&now, was, "user-{user} moved off an upstream that stayed");
        }
    }
    let share = moved as f64 / before.len() as f64;
    eprintln!("consistent hashing: {moved} of 200 keys moved when 1 of 4 upstreams left");
    assert!((0.12..=0.40).contains(&share), "{share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_ejected_and_retries_hide_them() {
    let broken = Upstream::start_fn("broken", Duration::ZERO, |_, _| (503, "{}".into())).await;
    let good = Upstream::start("good").await;
    let gw = Arc::new(
        TestGateway::start(&format!(
            r#"
[services.app]
upstreams = ["{}", "{}"]
[services.app.outlier_detection]
consecutive_failures = 3
base_ejection = "30s"

[[routes]]
name = "all"
prefix = "/"
service = "app"
[routes.retry]
on = ["503"]
"#,
            broken.url(),
            good.url()
        ))
        .await,
    );
    for _ in 0..20 {
        assert_eq!(
            gw.get("/x").await.status,
            200,
            "the retry goes to the other endpoint"
        );
    }
    let state = endpoint(&gw, "app", &broken.url()).await;
    assert_eq!(state["ejected"], true, "{state}");
    assert_eq!(state["ejections"], 1);
    assert!(
        state["ejected_for_ms"].as_u64().unwrap() > 25_000,
        "{state}"
    );
    assert_eq!(
        broken.hits(),
        3,
        "ejected after 3 failures in a row, then no traffic"
    );
    // At most half the endpoints are ejected: the good one stays whatever it does.
    assert_eq!(endpoint(&gw, "app", &good.url()).await["ejected"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_at_its_limits_answers_503_at_once() {
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(600)).await;
    let gw = Arc::new(
        TestGateway::start(&format!(
            r#"
[services.requests]
upstreams = ["{url}"]
max_requests = 2

[services.connections]
upstreams = ["{url}"]
max_connections = 1
max_pending = 1

[[routes]]
name = "requests"
prefix = "/requests"
service = "requests"

[[routes]]
name = "connections"
prefix = "/connections"
service = "connections"
"#,
            url = slow.url()
        ))
        .await,
    );
    for (path, allowed) in [("/requests", 2), ("/connections", 2)] {
        let mut set = JoinSet::new();
        for _ in 0..5 {
            let (gw, path) = (gw.clone(), path.to_string());
            set.spawn(async move {
                let started = Instant::now();
                let r = gw.get(&path).await;
                (r.status.as_u16(), started.elapsed(), r.json())
            });
        }
        let results = set.join_all().await;
        let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
        let refused: Vec<_> = results.iter().filter(|(s, _, _)| *s == 503).collect();
        assert_eq!(ok, allowed, "{path}: {results:?}");
        assert_eq!(refused.len(), 5 - allowed, "{path}: {results:?}");
        for (_, took, body) in refused {
            assert!(
                *took < Duration::from_millis(300),
                "{path}: refused after {took:?}"
            );
            assert_eq!(body["error"]["message"], "upstream overloaded");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_unhealthy_a_service_fails_fast_or_panics() {
    let sick = Arc::new(AtomicBool::new(true));
    let flag = sick.clone();
    let up = Upstream::start_fn("up", Duration::ZERO, move |seen, _| {
        if seen.path == "/health" && flag.load(Ordering::SeqCst) {
            (500, "{}".into())
        } else {
            (200, "{}".into())
        }
    })
    .await;
    let body = |extra: &str| {
        format!(
            r#"
[services.fail]
upstreams = ["{url}"]
[services.fail.health_check]
path = "/health"
interval = "100ms"
unhealthy_threshold = 1

[services.panic]
upstreams = ["{url}"]
when_all_unhealthy = "panic"
[services.panic.health_check]
path = "/health"
interval = "100ms"
unhealthy_threshold = 1

[[routes]]
name = "fail"
prefix = "/fail"
service = "fail"

[[routes]]
name = "panic"
prefix = "/panic"
service = "panic"
{extra}"#,
            url = up.url()
        )
    };
    let fg = FileGateway::start(temp_dir("all-unhealthy"), &body(""), &[]).await;
    eventually(Duration::from_secs(5), "the endpoint unhealthy", || async {
        (endpoint(&fg.gw, "fail", &up.url()).await["healthy"] == false).then_some(())
    })
    .await;
    let r = fg.gw.get("/fail").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["message"], "no healthy upstream");
    assert_eq!(
        fg.gw.get("/panic").await.status,
        200,
        "panic mode uses it anyway"
    );

    // A reload that leaves the service alone keeps its endpoint's health: still unhealthy at
    // once, without waiting for a check.
    fg.write_config(&body(
        "\n[[routes]]\nname = \"extra\"\nexact = \"/extra\"\nservice = \"fail\"\n",
    ));
    eventually(Duration::from_secs(10), "the reload", || async {
        (fg.gw.admin("/routes").await.as_array().unwrap().len() == 3).then_some(())
    })
    .await;
    assert_eq!(endpoint(&fg.gw, "fail", &up.url()).await["healthy"], false);
    assert_eq!(fg.gw.get("/fail").await.status, 503);

    sick.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "healthy again", || async {
        (fg.gw.get("/fail").await.status == 200).then_some(())
    })
    .await;
}

/// During an outage the budget caps retries: 30 requests at once to a service that only
/// answers 503 (slowly), each allowed 5 tries, send far fewer than 150 tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_keeps_retries_from_multiplying_load() {
    let down = Upstream::start_fn("down", Duration::from_millis(100), |_, _| {
        (503, "{}".into())
    })
    .await;
    let gw = Arc::new(
        TestGateway::start(&format!(
            "[services.app]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nservice = \"app\"\n[routes.retry]\nattempts = 5\non = [\"503\"]\n",
            down.url()
        ))
        .await,
    );
    let mut set = JoinSet::new();
    for _ in 0..30 {
        let gw = gw.clone();
        set.spawn(async move { gw.get("/x").await.status.as_u16() });
    }
    let statuses = set.join_all().await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let tries = down.hits();
    eprintln!("retry budget: 30 requests x 5 tries allowed, {tries} tries sent");
    // 30 first tries; retries in flight at most 20% of 30 (6), each chain at most 4 long.
    assert!(tries > 30, "some retries were sent: {tries}");
    assert!(tries <= 30 + 6 * 4, "{tries} tries");
}

/// A DNS server on 127.0.0.1 answering every A and AAAA question with the addresses `answer`
/// holds at that moment (TTL 1 s).
async fn dns_server(answer: Arc<Mutex<Vec<std::net::IpAddr>>>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let query = &buf[..n];
            // The question: labels up to a zero byte, then type and class.
            let mut end = 12;
            while end < n && query[end] != 0 {
                end += 1 + query[end] as usize;
            }
            let question_end = end + 5;
            if question_end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
            let ips: Vec<std::net::IpAddr> = answer
                .lock()
                .unwrap()
                .iter()
                .copied()
                .filter(|ip| (qtype == 1 && ip.is_ipv4()) || (qtype == 28 && ip.is_ipv6()))
                .collect();
            let mut reply = query[..2].to_vec();
            reply.extend_from_slice(&[0x81, 0x80, 0, 1]);
            reply.extend_from_slice(&(ips.len() as u16).to_be_bytes());
            reply.extend_from_slice(&[0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..question_end]);
            for ip in ips {
                reply.extend_from_slice(&[0xc0, 0x0c]);
                reply.extend_from_slice(&qtype.to_be_bytes());
                reply.extend_from_slice(&[0, 1, 0, 0, 0, 1]);
                let rdata = match ip {
                    std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                    std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                reply.extend_from_slice(&rdata);
            }
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

/// An upstream on `addr` answering `x-upstream: <name>`.
async fn serve_at(addr: SocketAddr, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = service_fn(
                move |_req: http::Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("x-upstream", name)
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap(),
                    )
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    bound
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_dns_answer_moves_traffic_without_a_reload() {
    let v4 = serve_at("127.0.0.1:0".parse().unwrap(), "v4").await;
    serve_at(SocketAddr::new("::1".parse().unwrap(), v4.port()), "v6").await;
    let answer = Arc::new(Mutex::new(vec!["127.0.0.1".parse().unwrap()]));
    let dns = dns_server(answer.clone()).await;
    let gw = Arc::new(
        TestGateway::start(&format!(
            r#"
[dns]
servers = ["{dns}"]
lookup = "both"
min_ttl = "200ms"
max_ttl = "1s"

[services.app]
upstreams = ["http://app.test:{port}"]

[[routes]]
name = "all"
prefix = "/"
service = "app"
"#,
            port = v4.port()
        ))
        .await,
    );
    let addresses = || async {
        let services = gw.admin("/services").await;
        let mut list: Vec<String> = services[0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap_or("-").to_string())
            .collect();
        list.sort();
        list
    };
    let wait_for = |want: Vec<&'static str>| async move {
        eventually(
            Duration::from_secs(5),
            &format!("endpoints {want:?}"),
            || async { (addresses().await == want).then_some(()) },
        )
        .await
    };
    wait_for(vec!["127.0.0.1"]).await;
    let served = spread(&gw, "/", 20, 2).await;
    assert_eq!(served.get("v4"), Some(&20), "{served:?}");

    // Two addresses: two endpoints, both serving.
    answer.lock().unwrap().push("::1".parse().unwrap());
    let changed = Instant::now();
    wait_for(vec!["127.0.0.1", "::1"]).await;
    let served = spread(&gw, "/", 20, 2).await;
    assert_eq!(
        (served.get("v4"), served.get("v6")),
        (Some(&10), Some(&10)),
        "{served:?}"
    );

    // The old address gone: traffic moves to the new one, without a reload.
    *answer.lock().unwrap() = vec!["::1".parse().unwrap()];
    wait_for(vec!["::1"]).await;
    let followed = changed.elapsed();
    let served = spread(&gw, "/", 20, 2).await;
    assert_eq!(served.get("v6"), Some(&20), "{served:?}");
    eprintln!("DNS: two answer changes followed in {followed:?} (TTL 1 s)");
    assert!(followed < Duration::from_secs(4), "{followed:?}");
}

/// A try that does not answer within `per_try_timeout` is retried on another endpoint; a
/// request whose body streamed is never sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_retry_elsewhere_and_streamed_bodies_are_not_replayed() {
    let stuck = Upstream::start_with_delay("stuck", Duration::from_secs(5)).await;
    let fast = Upstream::start("fast").await;
    let failing = Upstream::start_fn("failing", Duration::ZERO, |_, _| (503, "{}".into())).await;
    let gw = Arc::new(
        TestGateway::start(&format!(
            r#"
[services.app]
upstreams = ["{stuck}", "{fast}"]

[services.failing]
upstreams = ["{failing}"]

[[routes]]
name = "app"
prefix = "/app"
service = "app"
[routes.retry]
on = ["timeout"]
per_try_timeout = "200ms"

[[routes]]
name = "failing"
prefix = "/failing"
service = "failing"
[routes.retry]
attempts = 3
on = ["503"]
"#,
            stuck = stuck.url(),
            fast = fast.url(),
            failing = failing.url()
        ))
        .await,
    );
    for _ in 0..4 {
        let started = Instant::now();
        let r = gw.get("/app").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("fast"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(
        stuck.hits() >= 1,
        "some tries went to the stuck endpoint first"
    );

    // A bodiless GET is retried; a POST whose body streamed (no filter buffered it) is not.
    assert_eq!(gw.get("/failing").await.status, 503);
    assert_eq!(failing.hits(), 3);
    let r = gw.request("POST", "/failing", &[], "payload").await;
    assert_eq!(r.status, 503);
    assert_eq!(failing.hits(), 4, "the streamed POST was sent once");
}

/// An upstream that counts the connections it accepted and those still open.
/// A client connection of its own to the gateway.
async fn one_connection(
    gw: &TestGateway,
) -> hyper::client::conn::http1::SendRequest<wasmgate_tests::TestBody> {
    let tcp = tokio::net::TcpStream::connect(gw.running.addr)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// The status of a request sent on `client`, its body read.
async fn status(
    client: &mut hyper::client::conn::http1::SendRequest<wasmgate_tests::TestBody>,
    method: &str,
    path: &str,
) -> u16 {
    use http_body_util::BodyExt;
    client.ready().await.unwrap();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test")
        .body(wasmgate_tests::full(""))
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, o) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                    if req.uri().path() == "/empty" {
                        *resp.status_mut() = http::StatusCode::NO_CONTENT;
                        *resp.body_mut() = Full::default();
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_reused_then_closed_after_upstream_idle() {
    let (addr, accepted, open) = counting_upstream().await;
    let config = format!(
        "[timeouts]\nupstream_idle = \"400ms\"\n{}",
        one_service(addr)
    );
    let gw = Arc::new(TestGateway::start(&config).await);
    // Requests one after another share one kept-alive connection (sent over one client
    // connection: each serving thread pools its own upstream connections).
    let mut client = one_connection(&gw).await;
    for _ in 0..5 {
        assert_eq!(status(&mut client, "GET", "/").await, 200);
    }
    // So do answers without a body to read: a HEAD, a 204.
    for _ in 0..3 {
        assert_eq!(status(&mut client, "HEAD", "/").await, 200);
        assert_eq!(status(&mut client, "GET", "/empty").await, 204);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for eleven requests"
    );
    // A burst opens more; once idle past `upstream_idle`, the gateway closes every one.
    let mut burst = JoinSet::new();
    for _ in 0..8 {
        let gw = gw.clone();
        burst.spawn(async move { gw.get("/").await.status.as_u16() });
    }
    assert_eq!(burst.join_all().await, vec![200; 8]);
    assert!(open.load(Ordering::SeqCst) >= 1);
    eventually(
        Duration::from_secs(5),
        "idle upstream connections closed",
        || {
            let open = open.load(Ordering::SeqCst);
            async move { (open == 0).then_some(()) }
        },
    )
    .await;
    // And the next request opens a fresh one.
    let before = accepted.load(Ordering::SeqCst);
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), before + 1);
}

/// An upstream written by hand, keep-alive: `/slow` sends one chunk, waits for `release`, then
/// the rest; `/close` answers, then closes the connection 100 ms later without having said so
/// (an upstream whose keep-alive timeout is shorter than the gateway's); anything else answers
/// `ok`. Counts the connections it accepts.
async fn scripted_upstream(release: Arc<tokio::sync::Notify>) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let release = release.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    let path = String::from_utf8_lossy(&head)
                        .split(' ')
                        .nth(1)
                        .unwrap_or("")
                        .to_owned();
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    match path.as_str() {
                        "/slow" => {
                            let start =
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n";
                            if tcp.write_all(start).await.is_err() {
                                return;
                            }
                            release.notified().await;
                            if tcp.write_all(b"1\r\nb\r\n0\r\n\r\n").await.is_err() {
                                return;
                            }
                        }
                        "/close" => {
                            let _ = tcp.write_all(ok).await;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            return;
                        }
                        _ => {
                            if tcp.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A gateway config routing everything to the one upstream at `addr`.
fn one_service(addr: SocketAddr) -> String {
    format!(
        r#"
[services.app]
upstreams = ["http://{addr}"]

[[routes]]
name = "app"
prefix = "/"
service = "app"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_keeps_its_upstream_connection_until_read_to_the_end() {
    use http_body_util::BodyExt;
    let release = Arc::new(tokio::sync::Notify::new());
    let (addr, accepted) = scripted_upstream(release.clone()).await;
    let gw = TestGateway::start(&one_service(addr)).await;

    let mut first_client = one_connection(&gw).await;
    let req = http::Request::get("/slow")
        .header("host", "gateway.test")
        .body(wasmgate_tests::full(""))
        .unwrap();
    let mut slow = first_client.send_request(req).await.unwrap().into_body();
    let first = slow.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"a");
    // The slow response's connection is still busy: this request gets one of its own instead
    // of waiting behind it.
    let mut second_client = one_connection(&gw).await;
    let fast = tokio::time::timeout(
        Duration::from_secs(5),
        status(&mut second_client, "GET", "/fast"),
    )
    .await
    .expect("a request while another response streams is not queued behind it");
    assert_eq!(fast, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    release.notify_one();
    let rest = slow.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"b");
    // Read to its end, the slow response's connection is back in its thread's pool.
    for _ in 0..4 {
        assert_eq!(status(&mut first_client, "GET", "/fast").await, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_idle_connections_first_fails_no_request() {
    let (addr, accepted) = scripted_upstream(Arc::default()).await;
    let gw = TestGateway::start(&one_service(addr)).await;
    // Each answer leaves a kept-alive connection in the pool, which the upstream closes while
    // it idles there: the next request finds it closed and opens another.
    for n in 1..=3 {
        let resp = gw.get("/close").await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "ok".to_owned()));
        assert_eq!(accepted.load(Ordering::SeqCst), n);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
