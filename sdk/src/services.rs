//! Calls to the gateway's services, by name. The route must grant the filter each service it
//! calls (`services = ["users"]` on the filter's entry in the route); a call to any other
//! returns [`CallError::Denied`]. Calls reuse the gateway's pooled connections.
//!
//! ```no_run
//! use wasmgate_sdk::services::{self, Call};
//! let user = services::call(Call::get("users", "/users/42"))?;
//! let both = services::call_all(vec![Call::get("users", "/users/42"), Call::get("orders", "/orders/user/42")]);
//! # Ok::<(), wasmgate_sdk::services::CallError>(())
//! ```
//!
//! Outside the gateway (native unit tests) every call fails with [`CallError::Unavailable`].

use std::time::Duration;

use crate::__bindings::wasmgate::filter::outbound as wit;
use crate::Headers;

/// A request to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    service: String,
    method: String,
    path_with_query: String,
    headers: Headers,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Call {
    /// A call with any method.
    pub fn new(method: &str, service: &str, path_with_query: &str) -> Self {
        Self {
            service: service.into(),
            method: method.to_ascii_uppercase(),
            path_with_query: path_with_query.into(),
            headers: Headers::new(),
            body: None,
            timeout: None,
        }
    }

    /// A `GET`.
    pub fn get(service: &str, path_with_query: &str) -> Self {
        Self::new("GET", service, path_with_query)
    }

    /// A `POST` with a body.
    pub fn post(service: &str, path_with_query: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", service, path_with_query).body(body)
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Give up after `timeout` (never later than the route's timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn into_wit(self) -> wit::OutboundRequest {
        wit::OutboundRequest {
            service: self.service,
            method: self.method,
            path_with_query: self.path_with_query,
            headers: self.headers.into_wire(),
            body: self.body,
            timeout_ms: self
                .timeout
                .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
        }
    }
}

/// A service's answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceResponse {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: Headers,
    /// The whole body.
    pub body: Vec<u8>,
}

impl ServiceResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Decode the body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::Error> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// Why a call produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The route does not grant this filter the service.
    Denied(String),
    /// No response within the timeout.
    Timeout,
    /// Connection refused or broken, or a malformed response.
    Unavailable(String),
    /// The request was invalid, or the response body too large.
    Invalid(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Denied(m) => write!(f, "denied: {m}"),
            CallError::Timeout => f.write_str("timed out"),
            CallError::Unavailable(m) => write!(f, "unavailable: {m}"),
            CallError::Invalid(m) => write!(f, "invalid: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

fn from_wit(
    result: Result<wit::OutboundResponse, wit::CallError>,
) -> Result<ServiceResponse, CallError> {
    match result {
        Ok(r) => Ok(ServiceResponse {
            status: r.status,
            headers: Headers::from_wire(r.headers),
            body: r.body,
        }),
        Err(wit::CallError::Denied(m)) => Err(CallError::Denied(m)),
        Err(wit::CallError::Timeout) => Err(CallError::Timeout),
        Err(wit::CallError::Unavailable(m)) => Err(CallError::Unavailable(m)),
        Err(wit::CallError::Invalid(m)) => Err(CallError::Invalid(m)),
    }
}

fn outside() -> CallError {
    CallError::Unavailable("not running inside the gateway".into())
}

/// Make one call and wait for its answer.
pub fn call(call: Call) -> Result<ServiceResponse, CallError> {
    if cfg!(target_family = "wasm") {
        from_wit(wit::call(&call.into_wit()))
    } else {
        Err(outside())
    }
}

/// Make several calls concurrently and wait for all; results in the order given.
pub fn call_all(calls: Vec<Call>) -> Vec<Result<ServiceResponse, CallError>> {
    if cfg!(target_family = "wasm") {
        let reqs: Vec<_> = calls.into_iter().map(Call::into_wit).collect();
        wit::call_all(&reqs).into_iter().map(from_wit).collect()
    } else {
        calls.iter().map(|_| Err(outside())).collect()
    }
}
