//! Stubbed services: what a route grants its filter, answered by the test.

use std::collections::HashMap;
use std::sync::Mutex;

use wasmgate_sandbox::wit::{CallError, OutboundRequest, OutboundResponse};
use wasmgate_sandbox::{Outbound, OutboundFuture};
use wasmgate_sdk::__testkit as parts;
use wasmgate_sdk::{Request, Response};

/// How a stubbed service answers: a function of the call, or `Err` for a service that is down.
pub(crate) type Answer = Result<Box<dyn Fn(&Request) -> Response + Send + Sync>, ()>;

/// One call a filter made to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCall {
    /// The service's name.
    pub service: String,
    /// The request as the filter sent it (method, path and query, headers, body).
    pub request: Request,
    /// The timeout the filter asked for, in milliseconds.
    pub timeout_ms: Option<u32>,
}

#[derive(Default)]
pub(crate) struct Stubs {
    answers: Mutex<HashMap<String, Answer>>,
    calls: Mutex<Vec<ServiceCall>>,
}

impl Stubs {
    pub(crate) fn add(&self, service: &str, answer: Answer) {
        lock(&self.answers).insert(service.to_string(), answer);
    }

    pub(crate) fn calls(&self) -> Vec<ServiceCall> {
        lock(&self.calls).clone()
    }

    pub(crate) fn call_count(&self) -> usize {
        lock(&self.calls).len()
    }
}

impl Outbound for Stubs {
    fn granted(&self, service: &str) -> bool {
        lock(&self.answers).contains_key(service)
    }

    fn call(&self, req: OutboundRequest) -> OutboundFuture<'_> {
        let request = parts::request_from_parts(parts::RequestParts {
            method: req.method,
            scheme: "http".into(),
            authority: String::new(),
            path_with_query: req.path_with_query,
            headers: req.headers,
            body: req.body,
        });
        let answer = match lock(&self.answers).get(&req.service) {
            Some(Ok(answer)) => Ok(answer(&request)),
            Some(Err(())) => Err(CallError::Unavailable(format!(
                "service {:?} is down (stubbed)",
                req.service
            ))),
            None => Err(CallError::Denied(format!("service {:?}", req.service))),
        };
        lock(&self.calls).push(ServiceCall {
            service: req.service,
            request,
            timeout_ms: req.timeout_ms,
        });
        let result = answer.map(|resp| {
            let (status, headers, body) = parts::response_into_parts(resp);
            OutboundResponse {
                status,
                headers,
                body: body.unwrap_or_default(),
            }
        });
        Box::pin(async move { result })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
