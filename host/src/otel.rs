//! Distributed tracing: W3C trace context (`traceparent`, `tracestate`) continued from the
//! client or started here, spans for the request, each filter phase, each upstream try and each
//! service call a filter makes, exported over OTLP/HTTP (protobuf) in batches by the
//! opentelemetry SDK. Off unless `[tracing]` configures an endpoint.
//!
//! Spans are kept in [`opentelemetry::Context`] values passed down explicitly (never the
//! thread-local current context: one worker thread interleaves many requests).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol as OtlpProtocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

use crate::config::{Protocol, TracingConfig, Transport};

/// The gateway's tracer and the export pipeline behind it.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// The pipeline `config` describes, or `None` when tracing is off.
    pub fn start(config: &TracingConfig) -> anyhow::Result<Option<Arc<Tracing>>> {
        if !config.enabled {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Exporter::new(config.timeout))
            .with_endpoint(config.endpoint.clone())
            .with_protocol(OtlpProtocol::HttpBinary)
            .with_timeout(config.timeout)
            .build()?;
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(config.batch_delay)
                    .with_max_queue_size(config.max_queue)
                    .with_max_export_batch_size(config.max_queue.min(512))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("wasmgate");
        tracing::info!(endpoint = %config.endpoint, sample_ratio = config.sample_ratio, "exporting traces over OTLP/HTTP");
        Ok(Some(Arc::new(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })))
    }

    /// The span of a request that arrived with `headers`: a child of the client's
    /// `traceparent` when it sent a valid one, else the root of a new trace.
    pub fn request(&self, method: &http::Method, path: &str, headers: &HeaderMap) -> Context {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(method.as_str().to_string())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_string()),
                KeyValue::new("url.path", path.split('?').next().unwrap_or("").to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }

    /// A child span of `parent`.
    pub fn child(
        &self,
        parent: &Context,
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// Write `cx`'s span as `traceparent` (and its `tracestate`) into `headers`, replacing
    /// what the client sent.
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        self.propagator
            .inject_context(cx, &mut HeaderInjector(headers));
    }

    /// Send what is queued and stop exporting (blocks up to the export timeout).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("flushing traces: {e}");
        }
    }
}

/// End `cx`'s span, with an error status when `error` says what went wrong.
pub fn end(cx: &Context, error: Option<String>, attributes: Vec<KeyValue>) {
    let span = cx.span();
    span.set_attributes(attributes);
    if let Some(description) = error {
        span.set_status(Status::error(description));
    }
    span.end();
}

/// The runtime export requests run on: the SDK exports from a thread of its own, outside the
/// gateway's runtimes. One per process, never dropped (a runtime may not be dropped from
/// async code, where a failed start would drop it).
static EXPORT_RUNTIME: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wasmgate-otlp")
        .enable_all()
        .build()
        .inspect_err(|e| tracing::error!("starting the trace export thread: {e}"))
        .ok()
});

/// The OTLP exporter's HTTP client: hyper, on [`EXPORT_RUNTIME`].
#[derive(Debug)]
struct Exporter {
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    timeout: Duration,
}

impl Exporter {
    fn new(timeout: Duration) -> Exporter {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        let transport = Transport::plain(Protocol::Http1);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*transport.tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Exporter { client, timeout }
    }
}

#[async_trait::async_trait]
impl HttpClient for Exporter {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let runtime = EXPORT_RUNTIME
            .as_ref()
            .ok_or("the trace export thread did not start")?;
        let client = self.client.clone();
        let request = request.map(Full::new);
        let exchange = async move {
            let resp = client.request(request).await?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, 4 << 20)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        };
        let timeout = self.timeout;
        let sent = runtime.spawn(async move {
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| HttpError::from(format!("no answer within {timeout:?}")))?
        });
        sent.await?
    }
}
