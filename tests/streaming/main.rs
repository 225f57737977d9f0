//! Bodies stream through routes whose filters do not read them: a 1 GiB upload and a 1 GiB
//! download through a header-only route, with the process's memory watched throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use wasmgate_tests::{RepeatBody, TestGateway, Upstream, rss_bytes};

const GIB: u64 = 1 << 30;
/// "Must not grow memory by more than a few MiB."
const MAX_GROWTH: u64 = 16 << 20;

/// Sample RSS every 20 ms until stopped; returns the peak.
fn watch_rss() -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || {
        let peak = AtomicU64::new(0);
        while !stop2.load(Ordering::Relaxed) {
            peak.fetch_max(rss_bytes(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak.into_inner()
    });
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_streams_both_ways_through_a_header_only_route_in_bounded_memory() {
    let up = Upstream::start("sink").await;
    let gw = TestGateway::start(&format!(
        r#"
        [limits]
        max_body_bytes = 1024

        [services.sink]
        upstreams = ["{}"]

        [[routes]]
        name = "stream"
        prefix = "/"
        service = "sink"
        filters = [{{ name = "headers", config = {{ request = {{ set = {{ "x-streamed" = "yes" }} }} }} }}]
        "#,
        up.url()
    ))
    .await;

    // Warm up: connections, filter instance pool, allocator arenas.
    for _ in 0..20 {
        assert_eq!(gw.get("/warm").await.status, 200);
    }
    let baseline = rss_bytes();
    let (stop, watcher) = watch_rss();

    // Upload: far over max_body_bytes, which only limits bodies a filter buffers.
    let req = Request::post(gw.url("/upload"))
        .body(RepeatBody::new(GIB).boxed_unsync())
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["body_len"],
        GIB,
        "the upstream received every byte"
    );
    let seen = up.seen().pop().unwrap();
    assert_eq!(
        seen.headers["x-streamed"], "yes",
        "the filter ran on the streamed request"
    );

    // Download.
    let resp = gw
        .send_streaming(
            Request::get(gw.url(&format!("/bytes/{GIB}")))
                .body(wasmgate_tests::full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, GIB);

    stop.store(true, Ordering::Relaxed);
    let peak = watcher.join().unwrap();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "streamed 2 GiB; RSS baseline {} MiB, peak {} MiB, growth {:.1} MiB",
        baseline >> 20,
        peak >> 20,
        growth as f64 / (1 << 20) as f64
    );
    assert!(
        growth < MAX_GROWTH,
        "RSS grew by {} MiB while streaming",
        growth >> 20
    );
}
