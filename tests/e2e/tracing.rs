//! Distributed tracing: an OTLP/HTTP receiver in the test process gets the gateway's spans
//! (protobuf, decoded with the collector's own message types) and the tests check their
//! parent-child links, the trace id a client sent, and the `traceparent` upstreams and services
//! were sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use wasmgate_tests::{TestGateway, Upstream, eventually};

/// A span as received, with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Received {
    span: Span,
    service_name: String,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn attribute(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP traces receiver on 127.0.0.1: keeps every span POSTed to `/v1/traces`.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await?.to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).expect("OTLP");
                            let mut kept = kept.lock().unwrap();
                            for resource in export.resource_spans {
                                let service_name = resource
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|kv| kv.key == "service.name")
                                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                        any_value::Value::StringValue(s) => Some(s.clone()),
                                        _ => None,
                                    })
                                    .unwrap_or_default();
                                for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                                    kept.push(Received {
                                        span,
                                        service_name: service_name.clone(),
                                    });
                                }
                            }
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// The spans of trace `trace_id`, once there are `n`.
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Received> {
        eventually(Duration::from_secs(10), &format!("{n} spans"), || async {
            let spans: Vec<Received> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id() == trace_id)
                .cloned()
                .collect();
            (spans.len() >= n).then_some(spans)
        })
        .await
    }
}

/// `traceparent`'s parts: (trace id, parent id, flags).
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

async fn gateway(receiver: &Receiver, up: &Upstream, idp: &Upstream, ratio: f64) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[tracing]
endpoint = "{endpoint}"
sample_ratio = {ratio:?}
service_name = "edge"
batch_delay = "100ms"

[services.app]
upstreams = ["{up}"]
[services.idp]
upstreams = ["{idp}"]

[[routes]]
name = "traced"
prefix = "/t"
service = "app"
[[routes.filters]]
name = "call-service"
services = ["idp"]
config = {{ service = "idp", path = "/check" }}
[[routes.filters]]
name = "metered"
"#,
        endpoint = receiver.endpoint(),
        up = up.url(),
        idp = idp.url(),
    ))
    .await
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_client_trace_is_continued_with_a_span_for_every_step() {
    let receiver = Receiver::start().await;
    let (up, idp) = (Upstream::start("app").await, Upstream::start("idp").await);
    let gw = gateway(&receiver, &up, &idp, 1.0).await;

    let sent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let r = gw
        .request(
            "GET",
            "/t/x",
            &[("traceparent", &sent), ("tracestate", "vendor=1")],
            "",
        )
        .await;
    assert_eq!(r.status, 200);

    // The request, two request phases, the service call, the upstream try, one response phase.
    let spans = receiver.trace(CLIENT_TRACE, 6).await;
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let by_name: HashMap<&str, &Received> =
        spans.iter().map(|s| (s.span.name.as_str(), s)).collect();
    let find = |name: &str| {
        *by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name}: {spans:#?}"))
    };
    let request = find("GET traced");
    let call_phase = find("filter call-service request");
    let call = find("GET idp");
    let metered_request = find("filter metered request");
    let metered_response = find("filter metered response");
    let upstream = find("GET app");

    assert!(spans.iter().all(|s| s.service_name == "edge"));
    assert_eq!(request.parent(), CLIENT_SPAN, "continues the client's span");
    assert_eq!(request.attribute("http.route").as_deref(), Some("traced"));
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    for child in [call_phase, metered_request, metered_response, upstream] {
        assert_eq!(child.parent(), request.id(), "{}", child.span.name);
    }
    assert_eq!(
        call.parent(),
        call_phase.id(),
        "the call belongs to its phase"
    );
    assert_eq!(
        upstream.attribute("url.full"),
        Some(format!("{}/", up.url()))
    );
    let ids: std::collections::HashSet<String> = spans.iter().map(Received::id).collect();
    assert_eq!(ids.len(), 6, "every span has its own id");

    // What the upstream and the service were told: their own span as the parent.
    let seen = &up.seen()[0];
    let (trace, parent, flags) = traceparent(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
    assert_eq!(parent, upstream.id());
    assert_eq!(seen.headers["tracestate"], "vendor=1");
    let (trace, parent, _) = traceparent(idp.seen()[0].headers["traceparent"].to_str().unwrap());
    assert_eq!(
        (trace.as_str(), parent.as_str()),
        (CLIENT_TRACE, call.id().as_str())
    );

    // Without a traceparent the gateway starts a trace: its request span has no parent.
    assert_eq!(gw.get("/t/y").await.status, 200);
    let (trace, _, flags) = traceparent(up.seen()[1].headers["traceparent"].to_str().unwrap());
    assert_ne!(trace, CLIENT_TRACE);
    assert_eq!(flags, "01");
    let spans = receiver.trace(&trace, 6).await;
    let root = spans.iter().find(|s| s.span.name == "GET traced").unwrap();
    assert_eq!(root.parent(), "", "a root span");
}

#[tokio::test]
async fn sampling_follows_the_client_and_unsampled_traces_still_propagate() {
    let receiver = Receiver::start().await;
    let (up, idp) = (Upstream::start("app").await, Upstream::start("idp").await);
    let gw = gateway(&receiver, &up, &idp, 0.0).await;

    // Started here with a ratio of 0: not recorded, but the context still goes upstream.
    assert_eq!(gw.get("/t/a").await.status, 200);
    let (unsampled, _, flags) = traceparent(up.seen()[0].headers["traceparent"].to_str().unwrap());
    assert_eq!(flags, "00");

    // The client sampled its trace: the gateway records it whatever its own ratio.
    let sent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let r = gw
        .request("GET", "/t/b", &[("traceparent", &sent)], "")
        .await;
    assert_eq!(r.status, 200);
    let spans = receiver.trace(CLIENT_TRACE, 6).await;
    assert_eq!(spans.len(), 6);
    let (_, _, flags) = traceparent(up.seen()[1].headers["traceparent"].to_str().unwrap());
    assert_eq!(flags, "01");

    // A few batch delays later, still nothing of the unsampled trace.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exported = receiver.spans.lock().unwrap().clone();
    assert!(
        exported.iter().all(|s| s.trace_id() != unsampled),
        "{exported:#?}"
    );
}

/// With `[tracing]` absent, a client's trace context passes through untouched and nothing
/// is added.
#[tokio::test]
async fn without_tracing_the_client_context_passes_untouched() {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&format!(
        "[services.app]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"plain\"\nprefix = \"/\"\nservice = \"app\"\n",
        up.url()
    ))
    .await;
    let sent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(
        gw.request("GET", "/", &[("traceparent", &sent)], "")
            .await
            .status,
        200
    );
    assert_eq!(gw.get("/").await.status, 200);
    let seen = up.seen();
    assert_eq!(seen[0].headers["traceparent"], sent.as_str());
    assert!(!seen[1].headers.contains_key("traceparent"));
}
