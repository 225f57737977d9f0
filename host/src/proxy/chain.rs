//! The chain runner: a route's filters, request phases in chain order and response phases in
//! reverse, with one way of handling every call's outcome (breaker, failure log, failure
//! policy) for both phases.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Limited};
use wasmgate_sandbox::{
    ClientAddr, FilterError, Grants, HttpRequest, HttpResponse, Lease, Outbound, ResponseHeaders,
    RouteInfo,
};

use super::accept::ReqBody;
use super::error::{ErrorKind, GatewayError};
use super::service_calls::ServiceCalls;
use super::wit::CheckedRequest;
use super::{Ctx, PhaseSpan};
use crate::config::FailurePolicy;
use crate::metrics::FilterFailureLabels;
use crate::route::Params;
use crate::snapshot::{Binding, ChainEntry, Outcome, Route, Snapshot, Ticket};
use crate::upstream::{Body, BoxError, ResponseBody, strip_hop_by_hop};

/// One request's run through its route's chain.
pub(super) struct Chain<'a> {
    route: &'a Route,
    ctx: Arc<RouteInfo>,
    /// Filters with something to do to the response, in chain order.
    entered: Vec<Entered<'a>>,
}

/// A filter the request went through that has something to do to the response: headers its
/// request phase set for it, its response phase, or both.
struct Entered<'a> {
    binding: &'a Binding,
    /// Applied before its response phase, where that phase runs in the chain.
    headers: ResponseHeaders,
    phase: Option<ResponsePhase<'a>>,
}

/// A response phase still to run.
struct ResponsePhase<'a> {
    lease: Lease,
    ticket: Ticket<'a>,
    span: Option<PhaseSpan>,
}

/// Where the request goes after its request phases.
pub(super) enum Proceed {
    /// On to the upstream, as the filters left it.
    Upstream(CheckedRequest, ReqBody),
    /// A filter answered; its response goes through the response phases.
    Respond(HttpResponse),
}

/// The response the response phases work on.
pub(super) enum Answer {
    Filter(HttpResponse),
    Upstream(Response<ResponseBody>),
}

enum RespBody {
    Stream(ResponseBody),
    Buffered(Bytes),
}

#[derive(Clone, Copy)]
enum Phase {
    Request,
    Response,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Response => "response",
        }
    }
}

impl<'a> Chain<'a> {
    pub(super) fn new(route: &'a Route, cx: &Ctx<'_>, params: Params) -> Chain<'a> {
        Chain {
            route,
            ctx: Arc::new(RouteInfo {
                route: route.label.0.clone(),
                params,
                client: ClientAddr::Socket(cx.client),
                request_id: cx.request_id.clone(),
            }),
            entered: Vec::with_capacity(route.chain.len()),
        }
    }

    /// Whether any filter the request went through has something to do to the response.
    pub(super) fn has_response_phases(&self) -> bool {
        !self.entered.is_empty()
    }

    /// Run the request phases in chain order.
    pub(super) async fn request_phases(
        &mut self,
        cx: &mut Ctx<'_>,
        mut req: CheckedRequest,
        authority: String,
        mut body: ReqBody,
    ) -> Result<Proceed, GatewayError> {
        // Filters never see connection-level headers (the upstream client drops them too).
        strip_hop_by_hop(&mut req.headers);
        let mut held = HttpRequest {
            method: req.method,
            scheme: if cx.tls { "https" } else { "http" },
            authority,
            path_and_query: req.path_and_query,
            headers: req.headers,
            body: None,
        };
        let route = self.route;
        for entry in &route.chain {
            let binding = match entry {
                ChainEntry::Ready(binding) => binding,
                ChainEntry::Unavailable { name, reason } => {
                    return Err(GatewayError::new(
                        ErrorKind::FilterUnavailable,
                        format!(
                            "route {:?}: filter {name:?} is not loaded: {reason}",
                            route.config.name
                        ),
                    ));
                }
            };
            let Some(ticket) = binding.breaker.admit() else {
                match binding.on_failure {
                    FailurePolicy::FailClosed => {
                        return Err(GatewayError::new(
                            ErrorKind::FilterUnavailable,
                            format!(
                                "filter {:?} is failing repeatedly; not run (breaker open)",
                                binding.filter().name
                            ),
                        ));
                    }
                    FailurePolicy::FailOpen => continue,
                }
            };
            let needs = binding.needs();
            let span = cx.trace.as_ref().map(|_| PhaseSpan::default());
            let mut lease = binding
                .instances
                .lease(&cx.request_id, self.grants(cx, binding, span.clone()));
            if !needs.request_phase {
                // Its config does nothing here; its response phase may.
                if needs.response_phase {
                    self.entered.push(Entered {
                        binding,
                        headers: ResponseHeaders::default(),
                        phase: Some(ResponsePhase {
                            lease,
                            ticket,
                            span,
                        }),
                    });
                }
                continue;
            }
            // The buffered body is held with the request for a filter that reads it, and comes
            // back after (replaced, if the filter set one). A fail-open filter works on a copy:
            // if it fails, the request goes on as it was.
            held.body = match (&mut body, needs.request_body) {
                (ReqBody::Buffered(b), true) => Some(std::mem::take(b)),
                _ => None,
            };
            let before =
                matches!(binding.on_failure, FailurePolicy::FailOpen).then(|| held.clone());
            let started = Instant::now();
            self.start_span(cx, binding, Phase::Request, span.as_ref());
            let outcome = lease.on_request(&self.ctx, &mut held).await;
            if let (Err(_), Some(before)) = (&outcome, before) {
                held = before;
            }
            if let Some(sent) = held.body.take() {
                body = ReqBody::Buffered(sent);
            }
            end_span(span.as_ref(), &outcome);
            cx.add_log_fields(lease.take_log_fields());
            self.observe(cx, binding, Phase::Request, started);
            // Fail-open: as if the filter were absent, the request goes on unchanged.
            let Some((action, ticket)) =
                self.settle(cx, binding, Phase::Request, ticket, outcome)?
            else {
                continue;
            };
            // A filter that answers built that response itself: its own response phase does
            // not run on it (the filters before it still do). Headers it set for the response
            // go on whichever response it is.
            let headers = lease.take_response_headers();
            if needs.response_phase && action.is_none() {
                self.entered.push(Entered {
                    binding,
                    headers,
                    phase: Some(ResponsePhase {
                        lease,
                        ticket,
                        span,
                    }),
                });
            } else {
                ticket.report(Outcome::Passed);
                if !headers.is_empty() {
                    self.entered.push(Entered {
                        binding,
                        headers,
                        phase: None,
                    });
                }
            }
            if let Some(answer) = action {
                return Ok(Proceed::Respond(answer));
            }
        }
        let req = CheckedRequest {
            method: held.method,
            path_and_query: held.path_and_query,
            headers: held.headers,
        };
        Ok(Proceed::Upstream(req, body))
    }

    /// Run the response phases, in reverse chain order, of every filter the request went
    /// through; build the client's response.
    pub(super) async fn response_phases(
        mut self,
        cx: &mut Ctx<'_>,
        answer: Answer,
    ) -> Result<Response<Body>, GatewayError> {
        // What the response phases see, and the body that goes back if none replaces it.
        let (mut held, mut body) = match answer {
            Answer::Filter(mut resp) => {
                let bytes = resp.body.take().unwrap_or_default();
                (resp, RespBody::Buffered(bytes))
            }
            Answer::Upstream(resp) => upstream_response(self.route, cx.snapshot, resp).await?,
        };
        while let Some(Entered {
            binding,
            headers,
            phase,
        }) = self.entered.pop()
        {
            headers.apply(&mut held.headers);
            let Some(ResponsePhase {
                mut lease,
                ticket,
                span,
            }) = phase
            else {
                continue;
            };
            // As in the request phases: held for a filter that reads it, and back after.
            held.body = match (&mut body, binding.needs().response_body) {
                (RespBody::Buffered(b), true) => Some(std::mem::take(b)),
                _ => None,
            };
            let before =
                matches!(binding.on_failure, FailurePolicy::FailOpen).then(|| held.clone());
            let started = Instant::now();
            self.start_span(cx, binding, Phase::Response, span.as_ref());
            let outcome = lease.on_response(&self.ctx, &mut held).await;
            if let (Err(_), Some(before)) = (&outcome, before) {
                held = before;
            }
            if let Some(sent) = held.body.take() {
                body = RespBody::Buffered(sent);
            }
            end_span(span.as_ref(), &outcome);
            cx.add_log_fields(lease.take_log_fields());
            self.observe(cx, binding, Phase::Response, started);
            // Fail-open (`None`): the response goes on as the filter found it.
            if let Some(((), ticket)) =
                self.settle(cx, binding, Phase::Response, ticket, outcome)?
            {
                ticket.report(Outcome::Passed);
            }
        }
        client_response(held, body)
    }

    /// The one place a phase call's outcome is handled, for both phases. A failure is reported
    /// to the binding's breaker (traps and invalid output count; an error value the filter
    /// returned does not), logged, and resolved by the binding's failure policy: an error for
    /// fail-closed, `None` for fail-open. A success comes back with its ticket, which the
    /// caller reports once the request is done with the binding.
    fn settle<'b, T>(
        &self,
        cx: &Ctx<'_>,
        binding: &'b Binding,
        phase: Phase,
        ticket: Ticket<'b>,
        outcome: Result<T, FilterError>,
    ) -> Result<Option<(T, Ticket<'b>)>, GatewayError> {
        let err = match outcome {
            Ok(value) => return Ok(Some((value, ticket))),
            Err(err) => err,
        };
        let counts = match err.kind() {
            "deadline" | "memory" => Outcome::FailedCostly,
            "trap" | "invalid" => Outcome::Failed,
            _ => Outcome::Passed,
        };
        let filter = binding.filter();
        cx.metrics
            .filter_failures
            .get_or_create(&FilterFailureLabels {
                filter: binding.label.clone(),
                phase: phase.as_str(),
                kind: err.kind(),
            })
            .inc();
        if let Some(cool_down) = ticket.report(counts) {
            tracing::error!(
                filter = %filter.name,
                version = %filter.short_hash(),
                route = %self.route.config.name,
                "filter keeps failing; not running it for {cool_down:?}"
            );
        }
        tracing::warn!(
            filter = %filter.name,
            version = %filter.short_hash(),
            request_id = %cx.request_id,
            phase = phase.as_str(),
            policy = ?binding.on_failure,
            "filter failed: {err}"
        );
        match binding.on_failure {
            FailurePolicy::FailClosed => Err(GatewayError::new(
                ErrorKind::FilterFailed,
                format!("filter {:?}: {err}", filter.name),
            )),
            FailurePolicy::FailOpen => Ok(None),
        }
    }

    /// Count a phase call's time.
    fn observe(&self, cx: &mut Ctx<'_>, binding: &Binding, phase: Phase, started: Instant) {
        let took = started.elapsed();
        if cx.logging {
            cx.filters_time += took;
        }
        cx.metrics
            .filter_call(&binding.label, matches!(phase, Phase::Response), took);
    }

    /// Start the span of `binding`'s `phase` call, where its service calls find it.
    fn start_span(&self, cx: &Ctx<'_>, binding: &Binding, phase: Phase, slot: Option<&PhaseSpan>) {
        if let (Some(trace), Some(slot)) = (&cx.trace, slot) {
            let span = trace.child(
                format!("filter {} {}", binding.label.0, phase.as_str()),
                opentelemetry::trace::SpanKind::Internal,
                vec![
                    opentelemetry::KeyValue::new("wasmgate.filter", binding.label.0.to_string()),
                    opentelemetry::KeyValue::new("wasmgate.phase", phase.as_str()),
                ],
            );
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(span);
        }
    }

    /// What `binding`'s instance may reach on this request.
    fn grants(&self, cx: &Ctx<'_>, binding: &Binding, span: Option<PhaseSpan>) -> Grants {
        let outbound = (!binding.services.is_empty()).then(|| {
            let snapshot = cx.snapshot;
            let body_limit = snapshot.request_body_limit(self.route);
            Arc::new(ServiceCalls {
                services: snapshot.services.clone(),
                granted: binding.services.clone(),
                timeouts: super::forward::route_timeouts(self.route, snapshot),
                max_body: usize::try_from(body_limit).unwrap_or(usize::MAX),
                span,
            }) as Arc<dyn Outbound>
        });
        Grants {
            cache: binding.cache.clone(),
            outbound,
            limits: binding.limits,
            metrics: binding.metrics.clone(),
            route: self.route.label.0.clone(),
            logged: cx.logging,
            state: binding.state.clone(),
        }
    }
}

/// End the span a phase call ran in, failed when the call did.
fn end_span<T>(slot: Option<&PhaseSpan>, outcome: &Result<T, FilterError>) {
    let span = slot.and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take());
    if let Some(span) = span {
        let error = outcome
            .as_ref()
            .err()
            .map(|e| format!("{} failure", e.kind()));
        span.end(error, Vec::new());
    }
}

/// The upstream's response as the response phases see it, and its body, buffered when a
/// filter reads it.
async fn upstream_response(
    route: &Route,
    snapshot: &Snapshot,
    resp: Response<ResponseBody>,
) -> Result<(HttpResponse, RespBody), GatewayError> {
    let (mut parts, incoming) = resp.into_parts();
    let body = if route.needs_response_body {
        let limit = route.body_limit(&snapshot.body_limits);
        let bytes = Limited::new(incoming, usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
            .await
            .map_err(|e| {
                GatewayError::new(
                    ErrorKind::UpstreamUnavailable,
                    format!("reading upstream response body (limit {limit} bytes): {e}"),
                )
            })?
            .to_bytes();
        parts.headers.remove(header::CONTENT_LENGTH);
        RespBody::Buffered(bytes)
    } else {
        RespBody::Stream(incoming)
    };
    let held = HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body: None,
    };
    Ok((held, body))
}

/// An answer held whole (a transcoded call's), as the client gets it when no response phase
/// runs.
pub(super) fn held_response(mut resp: HttpResponse) -> Result<Response<Body>, GatewayError> {
    let bytes = resp.body.take().unwrap_or_default();
    client_response(resp, RespBody::Buffered(bytes))
}

/// The client's response from what the response phases left.
fn client_response(resp: HttpResponse, body: RespBody) -> Result<Response<Body>, GatewayError> {
    let mut headers = resp.headers;
    strip_hop_by_hop(&mut headers);
    let body = match body {
        RespBody::Stream(incoming) => incoming.map_err(BoxError::from).boxed_unsync(),
        RespBody::Buffered(bytes) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            super::full(bytes)
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = resp.status;
    *out.headers_mut() = headers;
    Ok(out)
}
