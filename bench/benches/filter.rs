//! One filter invocation through the host, per phase, for a trivial filter (`headers`, one
//! request and one response header) and a JSON-body filter (`transform` setting a field in a
//! 1 KiB and a 16 KiB JSON body); each with the instance strategies the gateway has (`reused`: the default
//! for filters that opt in; `fresh`: a new instance per request), and chains of 1, 3 and 10
//! filters. `cargo bench -p wasmgate-bench --bench filter`; see bench/README.md.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, header};
use wasmgate_sandbox::{
    Grants, HttpRequest, HttpResponse, InstancePool, Lease, Limits, RouteInfo, Sandbox,
};

/// The gateway's default filter limits (`[filter_limits]`).
const LIMITS: Limits = Limits {
    deadline: std::time::Duration::from_millis(100),
    memory_bytes: 32 << 20,
    max_output_bytes: 2 << 20,
    requests_per_instance: 1000,
};

const HEADERS_CONFIG: &str =
    r#"{"request":{"set":{"x-tenant":"bench"}},"response":{"set":{"x-served-by":"wasmgate"}}}"#;
const JSON_CONFIG: &str = r#"{"request":{"body":[{"set":{"path":"meta.via","value":"gw"}}]}}"#;

fn request(body: Option<Vec<u8>>) -> HttpRequest {
    let mut headers = HeaderMap::new();
    headers.insert(header::USER_AGENT, HeaderValue::from_static("wrk"));
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    HttpRequest {
        method: Method::POST,
        scheme: "http",
        authority: "api.example.com".into(),
        path_and_query: "/users/42?view=full".into(),
        headers,
        body: body.map(Bytes::from),
    }
}

fn response() -> HttpResponse {
    let mut resp = HttpResponse::default();
    resp.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn context() -> Arc<RouteInfo> {
    Arc::new(RouteInfo {
        route: "bench".into(),
        params: vec![],
        client: wasmgate_sandbox::ClientAddr::Text("127.0.0.1:40000".into()),
        request_id: "0000000100000001".into(),
    })
}

/// About 16 KiB of JSON, the body `bench/run.py` POSTs (Python's `json.dumps`, so with a space
/// after each `,` and `:`).
fn json_body_16k() -> Vec<u8> {
    let mut items = Vec::new();
    let mut len = 0;
    while len < 16 << 10 {
        let i = items.len();
        let item =
            format!(r#"{{"id": {i}, "name": "item-{i}", "tags": ["a", "b"], "price": 12.5}}"#);
        len += item.len() + 1;
        items.push(item);
    }
    format!(r#"{{"user": "bench", "items": [{}]}}"#, items.join(", ")).into_bytes()
}

/// About 1 KiB of JSON.
fn json_body() -> Vec<u8> {
    let items: Vec<String> = (0..16)
        .map(|i| format!(r#"{{"id":{i},"name":"item-{i}","price":12.5}}"#))
        .collect();
    format!(r#"{{"user":"bench","items":[{}]}}"#, items.join(",")).into_bytes()
}

struct Setup {
    rt: tokio::runtime::Runtime,
    sandbox: Sandbox,
}

impl Setup {
    fn new() -> Setup {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sandbox = rt.block_on(async { Sandbox::new() }).unwrap();
        Setup { rt, sandbox }
    }

    /// A binding of filter `name` with `config`; `reuse` false forces a fresh instance per
    /// request.
    fn pool(&self, name: &str, config: &str, reuse: bool) -> Arc<InstancePool> {
        self.rt.block_on(async {
            let bytes = std::fs::read(wasmgate_artifacts::filter(name)).unwrap();
            let filter = Arc::new(self.sandbox.load(name, bytes, None).await.unwrap());
            let needs = filter.check_config(config, LIMITS).await.unwrap();
            let requests_per_instance = if reuse { 1000 } else { 1 };
            Arc::new(InstancePool::new(
                filter,
                config.into(),
                needs,
                requests_per_instance,
            ))
        })
    }
}

/// One request through `chain`: request phases in order, response phases in reverse, as the
/// proxy runs them.
async fn through(chain: &[Arc<InstancePool>], req: &mut HttpRequest, ctx: &Arc<RouteInfo>) {
    let request_id = ctx.request_id.clone();
    let mut ran: Vec<Lease> = Vec::with_capacity(chain.len());
    for pool in chain {
        let mut lease = pool.lease(&request_id, Grants::none(LIMITS));
        lease.on_request(ctx, req).await.unwrap();
        ran.push(lease);
    }
    let mut resp = response();
    while let Some(mut lease) = ran.pop() {
        lease.on_response(ctx, &mut resp).await.unwrap();
    }
}

fn phases(c: &mut Criterion) {
    let setup = Setup::new();
    let ctx = context();
    let mut group = c.benchmark_group("phase");
    for (filter, config, body) in [
        ("headers", HEADERS_CONFIG, None),
        ("transform-json", JSON_CONFIG, Some(json_body())),
        ("transform-json16k", JSON_CONFIG, Some(json_body_16k())),
    ] {
        let name = filter.split('-').next().unwrap();
        let req = request(body);
        let pool = setup.pool(name, config, true);
        // One phase call on a reused instance: the cost the filter adds per phase.
        let mut lease = pool.lease(&ctx.request_id, Grants::none(LIMITS));
        group.bench_function(BenchmarkId::new("on-request", filter), |b| {
            b.iter_batched_ref(
                || req.clone(),
                |req| setup.rt.block_on(lease.on_request(&ctx, req)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("on-response", filter), |b| {
            b.iter_batched_ref(
                response,
                |resp| setup.rt.block_on(lease.on_response(&ctx, resp)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        // A whole request through one filter: both phases, as the proxy runs them.
        for reuse in [true, false] {
            let pool = setup.pool(name, config, reuse);
            let label = format!("{filter}/{}", if reuse { "reused" } else { "fresh" });
            group.bench_function(BenchmarkId::new("request", label), |b| {
                b.iter_batched_ref(
                    || req.clone(),
                    |req| {
                        setup
                            .rt
                            .block_on(through(std::slice::from_ref(&pool), req, &ctx))
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn chains(c: &mut Criterion) {
    let setup = Setup::new();
    let ctx = context();
    let req = request(None);
    let mut group = c.benchmark_group("chain");
    for len in [1, 3, 10] {
        let chain: Vec<_> = (0..len)
            .map(|_| setup.pool("headers", HEADERS_CONFIG, true))
            .collect();
        group.bench_function(BenchmarkId::new("headers-reused", len), |b| {
            b.iter_batched_ref(
                || req.clone(),
                |req| setup.rt.block_on(through(&chain, req, &ctx)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, phases, chains);
criterion_main!(benches);
