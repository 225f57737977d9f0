use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "contract",
    with: {
        "draft:filter/types.request": HostRequest,
        "draft:filter/types.response": HostResponse,
    },
});

/// The same world with async exports, as the gateway calls filters (on a fiber); the imports
/// are the synchronous ones above.
mod calls_async {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "contract",
        with: { "draft:filter/types": super::draft::filter::types },
        exports: { default: async },
    });
}

use exports::draft::filter::filter::{RequestRecord, ResponseRecord, RouteContext};

pub struct HostRequest {
    method: http::Method,
    uri: String,
    headers: HeaderMap,
}

pub struct HostResponse {
    status: u16,
    headers: HeaderMap,
}

struct State {
    table: ResourceTable,
    wasi: wasmtime_wasi::WasiCtx,
}

impl wasmtime_wasi::WasiView for State {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn first(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

fn set(headers: &mut HeaderMap, name: &str, value: &[u8]) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value),
    ) {
        headers.insert(n, v);
    }
}

impl draft::filter::types::HostRequest for State {
    fn method(&mut self, r: Resource<HostRequest>) -> String {
        self.table.get(&r).unwrap().method.to_string()
    }
    fn path_with_query(&mut self, r: Resource<HostRequest>) -> String {
        self.table.get(&r).unwrap().uri.clone()
    }
    fn header(&mut self, r: Resource<HostRequest>, name: String) -> Option<Vec<u8>> {
        first(&self.table.get(&r).unwrap().headers, &name)
    }
    fn set_header(&mut self, r: Resource<HostRequest>, name: String, value: Vec<u8>) {
        set(&mut self.table.get_mut(&r).unwrap().headers, &name, &value)
    }
    fn remove_header(&mut self, r: Resource<HostRequest>, name: String) -> bool {
        self.table
            .get_mut(&r)
            .unwrap()
            .headers
            .remove(name.as_str())
            .is_some()
    }
    fn drop(&mut self, r: Resource<HostRequest>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        Ok(())
    }
}

impl draft::filter::types::HostResponse for State {
    fn status(&mut self, r: Resource<HostResponse>) -> u16 {
        self.table.get(&r).unwrap().status
    }
    fn header(&mut self, r: Resource<HostResponse>, name: String) -> Option<Vec<u8>> {
        first(&self.table.get(&r).unwrap().headers, &name)
    }
    fn set_header(&mut self, r: Resource<HostResponse>, name: String, value: Vec<u8>) {
        set(&mut self.table.get_mut(&r).unwrap().headers, &name, &value)
    }
    fn drop(&mut self, r: Resource<HostResponse>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        Ok(())
    }
}

impl draft::filter::types::Host for State {}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    h.insert(
        "user-agent",
        HeaderValue::from_static("h2load nghttp2/1.52.0"),
    );
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert(
        "authorization",
        HeaderValue::from_static("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.x"),
    );
    h
}

fn response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("content-length", HeaderValue::from_static("27"));
    h.insert(
        "date",
        HeaderValue::from_static("Fri, 04 Dec 2026 15:00:00 GMT"),
    );
    h
}

fn to_list(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn from_list(list: Vec<(String, Vec<u8>)>) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(list.len());
    for (n, v) in list {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_bytes(&v).unwrap(),
        );
    }
    h
}

fn main() -> anyhow::Result<()> {
    let wasm = std::env::args()
        .nth(1)
        .expect("usage: contract-host GUEST.wasm [N [handles|handles-async|records|maps]]");
    let n: u32 = std::env::args()
        .nth(2)
        .map_or(200_000, |n| n.parse().unwrap());
    // `handles` or `records` runs only that variant, once (for callgrind); both, three rounds,
    // by default.
    let only = std::env::args().nth(3);
    let rounds = if only.is_some() { 1 } else { 3 };
    let run = |variant: &str| only.as_deref().is_none_or(|o| o == variant);
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let component = Component::from_file(&engine, &wasm)?;
    let mut linker = Linker::<State>::new(&engine);
    draft::filter::types::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
        &mut linker,
        |s| s,
    )?;
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let mut store = Store::new(
        &engine,
        State {
            table: ResourceTable::new(),
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
        },
    );
    store.set_epoch_deadline(u64::MAX / 2);
    let bindings = Contract::instantiate(&mut store, &component, &linker)?;
    let f = bindings.draft_filter_filter();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let async_bindings = runtime.block_on(calls_async::Contract::instantiate_async(
        &mut store, &component, &linker,
    ))?;
    let fa = async_bindings.draft_filter_filter();

    let ctx = RouteContext {
        route: "headers".into(),
        params: vec![],
        client_addr: "127.0.0.1:50000".into(),
        request_id: "b845996400000abc".into(),
    };
    for round in 0..rounds {
        // 0.3: the request and response stay in the host; the guest gets borrowed handles.
        let started = Instant::now();
        for _ in 0..if run("handles") { n } else { 0 } {
            let req = store.data_mut().table.push(HostRequest {
                method: http::Method::GET,
                uri: "/headers/x".into(),
                headers: request_headers(),
            })?;
            let borrowed = Resource::<HostRequest>::new_borrow(req.rep());
            f.call_on_request(&mut store, borrowed)?.unwrap();
            let req = store.data_mut().table.delete(req)?;
            let resp = store.data_mut().table.push(HostResponse {
                status: 200,
                headers: response_headers(),
            })?;
            let borrowed = Resource::<HostResponse>::new_borrow(resp.rep());
            f.call_on_response(&mut store, borrowed)?.unwrap();
            let resp = store.data_mut().table.delete(resp)?;
            std::hint::black_box((req.headers.len(), resp.headers.len()));
        }
        let handles = started.elapsed().as_nanos() as f64 / f64::from(n);

        // 0.3 again, each phase an async call (a fiber), as the gateway makes it.
        let started = Instant::now();
        if run("handles-async") {
            runtime.block_on(async {
                for _ in 0..n {
                    let req = store.data_mut().table.push(HostRequest {
                        method: http::Method::GET,
                        uri: "/headers/x".into(),
                        headers: request_headers(),
                    })?;
                    let borrowed = Resource::<HostRequest>::new_borrow(req.rep());
                    fa.call_on_request(&mut store, borrowed).await?.unwrap();
                    let req = store.data_mut().table.delete(req)?;
                    let resp = store.data_mut().table.push(HostResponse {
                        status: 200,
                        headers: response_headers(),
                    })?;
                    let borrowed = Resource::<HostResponse>::new_borrow(resp.rep());
                    fa.call_on_response(&mut store, borrowed).await?.unwrap();
                    let resp = store.data_mut().table.delete(resp)?;
                    std::hint::black_box((req.headers.len(), resp.headers.len()));
                }
                anyhow::Ok(())
            })?;
        }
        let handles_async = started.elapsed().as_nanos() as f64 / f64::from(n);
        println!("round {round}: both phases, handles with async calls {handles_async:.0} ns");

        // 0.2: both phases by value, headers converted each way as the proxy does.
        let started = Instant::now();
        for _ in 0..if run("records") { n } else { 0 } {
            let headers = request_headers();
            let req = RequestRecord {
                method: "GET".into(),
                scheme: "http".into(),
                authority: "127.0.0.1:8080".into(),
                path_with_query: "/headers/x".into(),
                headers: to_list(&headers),
                body: None,
            };
            let out = f.call_on_request_record(&mut store, &ctx, &req)?.unwrap();
            let h1 = from_list(out.headers);
            let headers = response_headers();
            let resp = ResponseRecord {
                status: 200,
                headers: to_list(&headers),
                body: None,
            };
            let out = f.call_on_response_record(&mut store, &ctx, &resp)?.unwrap();
            let h2 = from_list(out.headers);
            std::hint::black_box((h1.len(), h2.len()));
        }
        let records = started.elapsed().as_nanos() as f64 / f64::from(n);
        // The maps alone, built and dropped as both loops do.
        let started = Instant::now();
        for _ in 0..if run("maps") { n } else { 0 } {
            std::hint::black_box((request_headers(), response_headers()));
        }
        let maps = started.elapsed().as_nanos() as f64 / f64::from(n);
        println!("round {round}: building the header maps alone {maps:.0} ns");
        println!(
            "round {round}: both phases, handles {handles:.0} ns, records {records:.0} ns ({:.1}x)",
            records / handles
        );
    }
    Ok(())
}
