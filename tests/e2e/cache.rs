//! The `cache` filter in front of a real upstream that says how its answers may be cached:
//! hits served without the upstream, expiry, `Vary`, what is never stored, and one cache shared
//! by two gateway processes through Redis.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wasmgate_tests::{Filter, GatewayConfig, GatewayProcess, Redis, Route, TestGateway, full};

/// An upstream whose answers carry caching headers chosen by path; each answer's body names
/// how many requests it has served so far (so a cached body is recognisable).
struct Origin {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        async move { Ok::<_, Infallible>(answer(&req, n)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, hits }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn answer(req: &http::Request<Incoming>, n: usize) -> http::Response<Full<bytes::Bytes>> {
    let path = req.uri().path();
    let lang = req
        .headers()
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let mut resp = http::Response::builder().header("content-type", "application/json");
    resp = match path.rsplit('/').next().unwrap_or_default() {
        "fresh" => resp.header("cache-control", "public, max-age=1"),
        "shared" => resp.header("cache-control", "max-age=1, s-maxage=600"),
        "vary" => resp
            .header("cache-control", "max-age=600")
            .header("vary", "Accept-Language"),
        "no-store" => resp.header("cache-control", "no-store"),
        "private" => resp.header("cache-control", "private, max-age=600"),
        "cookie" => resp
            .header("cache-control", "max-age=600")
            .header("set-cookie", "session=abc"),
        "missing" => resp.status(404).header("cache-control", "max-age=600"),
        "error" => resp.status(500).header("cache-control", "max-age=600"),
        _ => resp.header("x-origin", "yes"),
    };
    let body = json!({ "served": n, "lang": lang, "path": path }).to_string();
    resp.body(Full::new(body.into())).unwrap()
}

fn cached(origin: &Origin, config: Value) -> GatewayConfig {
    GatewayConfig::new()
        .service("origin", &[origin.url()])
        .route(
            Route::prefix("cached", "/c")
                .service("origin")
                .filter(Filter::new("cache").config(config)),
        )
}

/// `x-cache`, the JSON body and `age` of a GET.
async fn get(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Value, Option<String>) {
    let r = gw.request("GET", path, headers, "").await;
    let x_cache = r.header("x-cache").unwrap_or_default().to_string();
    (x_cache, r.json(), r.header("age").map(str::to_string))
}

#[tokio::test]
async fn a_hit_is_served_without_the_upstream_until_it_expires() {
    let origin = Origin::start().await;
    let gw = cached(&origin, json!({})).start().await;
    let (x, first, age) = get(&gw, "/c/fresh", &[]).await;
    assert_eq!((x.as_str(), age), ("MISS", None));
    let (x, second, age) = get(&gw, "/c/fresh", &[]).await;
    assert_eq!(x, "HIT");
    assert_eq!(age.as_deref(), Some("0"));
    assert_eq!(second, first, "the stored answer, body and all");
    assert_eq!(origin.hits(), 1);
    let r = gw.get("/c/fresh").await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=1"));

    // max-age=1: gone after a second, then stored afresh.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (x, third, _) = get(&gw, "/c/fresh", &[]).await;
    assert_eq!(x, "MISS");
    assert_eq!(third["served"], 2);
    assert_eq!(get(&gw, "/c/fresh", &[]).await.0, "HIT");
    assert_eq!(origin.hits(), 2);

    // A query is part of the key.
    assert_eq!(get(&gw, "/c/fresh?page=2", &[]).await.0, "MISS");
    assert_eq!(get(&gw, "/c/fresh?page=2", &[]).await.0, "HIT");
}

#[tokio::test]
async fn head_requests_are_cached_on_their_own() {
    let origin = Origin::start().await;
    let gw = cached(&origin, json!({})).start().await;
    let r = gw.request("HEAD", "/c/fresh", &[], "").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-cache")),
        (200, Some("MISS"))
    );
    let r = gw.request("HEAD", "/c/fresh", &[], "").await;
    assert_eq!((r.status.as_u16(), r.header("x-cache")), (200, Some("HIT")));
    assert!(r.body.is_empty());
    assert_eq!(r.header("cache-control"), Some("public, max-age=1"));
    // A GET is another entry: its body was never stored by a HEAD.
    let (x, body, _) = get(&gw, "/c/fresh", &[]).await;
    assert_eq!((x.as_str(), body["served"].as_u64()), ("MISS", Some(2)));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn age_counts_up_and_s_maxage_wins_over_max_age() {
    let origin = Origin::start().await;
    let gw = cached(&origin, json!({})).start().await;
    assert_eq!(get(&gw, "/c/shared", &[]).await.0, "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // max-age=1 alone would have expired it.
    let (x, _, age) = get(&gw, "/c/shared", &[]).await;
    assert_eq!(x, "HIT");
    let age: u64 = age.unwrap().parse().unwrap();
    assert!((2..=3).contains(&age), "age {age}");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn variants_by_vary_are_kept_apart() {
    let origin = Origin::start().await;
    let gw = cached(&origin, json!({})).start().await;
    let en = [("accept-language", "en")];
    let de = [("accept-language", "de")];
    assert_eq!(get(&gw, "/c/vary", &en).await.0, "MISS");
    assert_eq!(get(&gw, "/c/vary", &de).await.0, "MISS");
    let (x, body, _) = get(&gw, "/c/vary", &en).await;
    assert_eq!((x.as_str(), body["lang"].as_str()), ("HIT", Some("en")));
    let (x, body, _) = get(&gw, "/c/vary", &de).await;
    assert_eq!((x.as_str(), body["lang"].as_str()), ("HIT", Some("de")));
    let (x, body, _) = get(&gw, "/c/vary", &[]).await;
    assert_eq!((x.as_str(), body["lang"].as_str()), ("MISS", Some("-")));
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn what_must_not_be_stored_never_is() {
    let origin = Origin::start().await;
    let gw = cached(&origin, json!({ "default_ttl": "0s" }))
        .start()
        .await;
    for path in [
        "/c/no-store",
        "/c/private",
        "/c/cookie",
        "/c/error",
        "/c/plain",
    ] {
        assert_eq!(get(&gw, path, &[]).await.0, "MISS", "{path}");
        assert_eq!(get(&gw, path, &[]).await.0, "MISS", "{path} stored");
    }
    assert_eq!(origin.hits(), 10);
    // A 404 with a lifetime is stored.
    assert_eq!(get(&gw, "/c/missing", &[]).await.0, "MISS");
    assert_eq!(get(&gw, "/c/missing", &[]).await.0, "HIT");

    // Requests with credentials go to the upstream, untouched and unstored.
    let auth = [("authorization", "Bearer x")];
    let r = gw.request("GET", "/c/fresh", &auth, "").await;
    assert_eq!(r.header("x-cache"), None);
    let r = gw.request("GET", "/c/fresh", &auth, "").await;
    assert_eq!(r.header("x-cache"), None);
    assert_eq!(origin.hits(), 13);
    // Other methods pass through.
    let r = gw.request("POST", "/c/fresh", &[], "{}").await;
    assert_eq!(r.header("x-cache"), None);
    assert_eq!(origin.hits(), 14);
}

#[tokio::test]
async fn a_client_no_cache_goes_to_the_upstream_and_refreshes() {
    let origin = Origin::start().await;
    let gw = cached(&origin, json!({ "default_ttl": "10m" }))
        .start()
        .await;
    assert_eq!(get(&gw, "/c/plain", &[]).await.0, "MISS");
    assert_eq!(get(&gw, "/c/plain", &[]).await.1["served"], 1);
    let (x, body, _) = get(&gw, "/c/plain", &[("cache-control", "no-cache")]).await;
    assert_eq!((x.as_str(), body["served"].as_u64()), ("MISS", Some(2)));
    // The fresh answer replaced the stored one.
    let (x, body, _) = get(&gw, "/c/plain", &[]).await;
    assert_eq!((x.as_str(), body["served"].as_u64()), ("HIT", Some(2)));
}

#[tokio::test]
async fn two_gateway_processes_share_one_cache_through_redis() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    let config = cached(&origin, json!({}))
        .set("state", json!({ "backend": "redis", "url": redis.url() }))
        .toml();
    let bin = env!("CARGO_BIN_EXE_gateway-process");
    let (a, b) = (
        GatewayProcess::start(bin, &config),
        GatewayProcess::start(bin, &config),
    );
    let client = Client::builder(TokioExecutor::new()).build_http();
    let fetch = |url: String| {
        let client = client.clone();
        async move {
            let resp = client
                .request(
                    // Replicas behind one name: the host is part of the key.
                    http::Request::get(url)
                        .header("host", "api.test")
                        .body(full(""))
                        .unwrap(),
                )
                .await
                .unwrap();
            let x = resp
                .headers()
                .get("x-cache")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (x, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (x, first) = fetch(a.url("/c/vary")).await;
    assert_eq!(x, "MISS");
    let (x, second) = fetch(b.url("/c/vary")).await;
    assert_eq!(x, "HIT", "the other gateway stored it");
    assert_eq!(second, first);
    assert_eq!(origin.hits(), 1);
}
