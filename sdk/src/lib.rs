//! # wasmgate-sdk
//!
//! Write wasmgate filters in plain Rust. A filter is a type
//! that implements [`Filter`]; one line, [`export_filter!`], turns it into a WebAssembly
//! component the gateway loads. You never see the WIT glue.
//!
//! ```
//! use serde::Deserialize;
//! use wasmgate_sdk::{export_filter, Action, Context, Error, Filter, Request, Response};
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     /// Requests without this header are refused.
//!     required_header: String,
//! }
//!
//! struct RequireHeader(Config);
//!
//! impl Filter for RequireHeader {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, Error> {
//!         Ok(Self(config))
//!     }
//!
//!     fn on_request(&self, req: Request, _ctx: &Context) -> Result<Action, Error> {
//!         if req.header(&self.0.required_header).is_none() {
//!             return Ok(Response::text(403, "forbidden\n").into());
//!         }
//!         Ok(req.into())
//!     }
//! }
//!
//! export_filter!(RequireHeader);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` (crate type `cdylib`), or
//! `wasmgate filter build --install DIR`, which also checks the component and copies it into a
//! gateway's filters directory as `<package-name>.wasm`. `wasmgate filter new NAME` scaffolds a
//! crate with all of this set up. The contract underneath is the WIT package in this crate's
//! `wit/filter.wit` ([`WIT_VERSION`]).
//!
//! ## What a phase costs
//! In the gateway, [`Request`], [`Response`] and [`Context`] are handles to what the gateway
//! holds (`wasmgate:filter@0.3.0`): a field is fetched the first time the filter reads it, a
//! write changes the gateway's copy at once, and a body the filter does not read is never
//! copied in. [`Request::edit_json`] and [`Request::json_at`] work on a JSON body in the gateway
//! without copying it at all.
//!
//! ## Unit tests without a gateway
//! Built with [`Request::new`], [`Response::new`] and [`Context::new`] they are plain Rust
//! values behind the same methods, so a filter's phases can be called directly in a native
//! `cargo test`; [`log`] prints to stderr there. To run the built
//! component under the gateway's real sandbox (limits, instance reuse, stubbed services), use
//! the `wasmgate-testkit` crate as a dev-dependency.
#![deny(missing_docs)]

pub mod header_edits;
pub mod host;
mod http;
pub mod json;
pub mod log;
pub mod metrics;
pub mod services;
pub mod state;

pub use host::cache;

pub use http::{Action, Context, Headers, Request, Response, percent_encode};

/// The version of the `wasmgate:filter` WIT package this SDK builds filters for. A gateway
/// loads only filters built for the version it speaks; this crate's `major.minor` version is
/// the WIT version's (see the crate README's compatibility rule).
pub const WIT_VERSION: &str = "0.3.0";
pub use serde;
pub use serde_json;

/// A filter: per-route policy run by the gateway for each request on the route.
///
/// Every phase has a no-op default, so implement only what you need. The gateway creates the
/// filter with [`Filter::new`] from the route's config before running a phase; state kept in
/// `self` lives as long as the instance and must not carry data between requests (see
/// [`Needs::reuse_instance`]).
pub trait Filter: Sized + 'static {
    /// The per-route config, decoded from the table written under this filter in the route's
    /// config. Use [`NoConfig`] when the filter takes none.
    type Config: serde::de::DeserializeOwned;

    /// What this configured filter needs from the gateway: which bodies it reads, which phases
    /// do something, and whether one instance may serve many requests. Asked once per
    /// instance, right after [`Filter::new`], so it may depend on the config (a route that only
    /// edits request headers need not buffer bodies, nor have its response phase called).
    ///
    /// Default: [`Needs::default()`]: no bodies, both phases, a fresh instance per request.
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// Build the filter from its route config. An error rejects the config: the gateway logs
    /// it and fails the route's requests instead of running a half-configured filter.
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// The request phase, run in chain order before the upstream is called.
    ///
    /// Return the (possibly modified) request to continue, or a [`Response`] to answer the
    /// client at once (the upstream and later request phases are skipped). An `Err` fails the
    /// request with a 500. Default: continue unchanged.
    fn on_request(&self, req: Request, ctx: &Context) -> Result<Action, Error> {
        let _ = ctx;
        Ok(Action::Continue(req))
    }

    /// The response phase, run in reverse chain order for every filter the request went
    /// through (also when a later filter answered early), unless its [`Needs::response_phase`]
    /// is `false`. A filter that answered in its request phase gets no response phase for that
    /// answer: it built the response itself. Return the (possibly modified) response; an `Err` fails the request with a
    /// 500. Default: unchanged.
    fn on_response(&self, resp: Response, ctx: &Context) -> Result<Response, Error> {
        let _ = ctx;
        Ok(resp)
    }
}

/// What a configured filter needs from the gateway; see [`Filter::needs`].
///
/// `Needs::default()` reads no body, uses both phases and gets a fresh instance per request.
/// Change only what differs:
///
/// ```
/// # use wasmgate_sdk::Needs;
/// let needs = Needs { reuse_instance: true, response_phase: false, ..Needs::default() };
/// # assert!(needs.request_phase);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// [`Filter::on_request`] reads the request body. When no filter on a route reads it, the
    /// body streams to the upstream untouched and [`Request::body`] is `None`.
    pub request_body: bool,
    /// [`Filter::on_response`] reads the response body (likewise).
    pub response_body: bool,
    /// [`Filter::on_request`] does something; when `false` the gateway does not call it (each
    /// call costs a few microseconds).
    pub request_phase: bool,
    /// [`Filter::on_response`] does something; when `false` the gateway does not call it
    /// (authentication and request-rewriting filters).
    pub response_phase: bool,
    /// One instance may serve many requests, one after another.
    ///
    /// Set it when nothing from one request can reach the next: the phases take `&self`, so
    /// this holds unless the filter writes request data into a `static`, a `thread_local!` or
    /// a field with interior mutability (`Cell`, `RefCell`, `Mutex`). The gateway then
    /// configures an instance once and reuses it (up to the route's `requests_per_instance`,
    /// default 1000), which removes most of the per-request cost; an instance whose call failed
    /// in any way is never reused. When `false` every request gets a fresh instance.
    pub reuse_instance: bool,
}

impl Default for Needs {
    fn default() -> Self {
        Needs {
            request_body: false,
            response_body: false,
            request_phase: true,
            response_phase: true,
            reuse_instance: false,
        }
    }
}

/// Config type for a filter that takes no config; any key given in the route is rejected.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// A filter's error: the gateway fails the request with a plain 500 and logs this message
/// (with the filter's name and the request id); the client never sees it.
///
/// Any `std::error::Error` converts with `?`; use [`Error::msg`] for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Error(message.to_string())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        Error(err.to_string())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Export a type implementing [`Filter`] as this component's filter. Write it once per crate.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __WASMGATE_FILTER: ::std::cell::RefCell<::std::option::Option<$filter>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct __WasmgateGlue;

            impl $crate::__rt::Guest for __WasmgateGlue {
                fn configure(config: ::std::string::String) -> ::std::result::Result<$crate::__rt::WitNeeds, ::std::string::String> {
                    $crate::__rt::configure::<$filter>(&__WASMGATE_FILTER, config)
                }
                fn on_request(
                    req: &$crate::__rt::WitRequest,
                ) -> ::std::result::Result<$crate::__rt::RequestAction, ::std::string::String> {
                    $crate::__rt::on_request::<$filter>(&__WASMGATE_FILTER, req)
                }
                fn on_response(
                    resp: &$crate::__rt::WitResponse,
                ) -> ::std::result::Result<::std::option::Option<$crate::__rt::WitResponse>, ::std::string::String> {
                    $crate::__rt::on_response::<$filter>(&__WASMGATE_FILTER, resp)
                }
            }

            // Keep the glue (and through it the filter type) alive on every target, so native
            // builds do not flag the author's filter as dead code.
            let _ = (
                <__WasmgateGlue as $crate::__rt::Guest>::configure,
                <__WasmgateGlue as $crate::__rt::Guest>::on_request,
                <__WasmgateGlue as $crate::__rt::Guest>::on_response,
            );

            // Component exports only exist on wasm; a native build (the filter's own unit
            // tests) type-checks the glue above but exports nothing.
            #[cfg(target_family = "wasm")]
            const _: () = {
                $crate::__bindings::__export_filter_glue!(__WasmgateGlue with_types_in $crate::__bindings);
            };
        };
    };
}

/// A duration as filter configs write it: a positive whole number and `ms`, `s`, `m`, `h` or
/// `d` (`"500ms"`, `"1s"`, `"10m"`, `"1d"`); `None` for anything else.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(wasmgate_sdk::parse_duration("10m"), Some(Duration::from_secs(600)));
/// assert_eq!(wasmgate_sdk::parse_duration("1w"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(digits);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

/// The bindings of `wit/` (world `gateway-filter`), as `wit_bindgen::generate!` makes them with
/// `pub_export_macro: true, export_macro_name: "__export_filter_glue",
/// default_bindings_module: "wasmgate_sdk::__bindings"`; generated ahead of time (see
/// `tests/bindings.rs`) so that filter crates do not build the generator.
#[doc(hidden)]
#[rustfmt::skip]
#[path = "bindings.rs"]
pub mod __bindings;

/// Conversions `wasmgate-testkit` uses to drive a built filter with the SDK's own types; not
/// part of the API.
#[doc(hidden)]
pub mod __testkit {
    use crate::{Context, Headers, Request, Response};

    /// Header list in wire order.
    pub type Wire = Vec<(String, Vec<u8>)>;

    /// A request's fields.
    pub struct RequestParts {
        pub method: String,
        pub scheme: String,
        pub authority: String,
        pub path_with_query: String,
        pub headers: Wire,
        pub body: Option<Vec<u8>>,
    }

    pub fn request_into_parts(req: Request) -> RequestParts {
        let (method, scheme, authority, path_with_query, headers, body) = req.into_parts();
        RequestParts {
            method,
            scheme,
            authority,
            path_with_query,
            headers: headers.into_wire(),
            body,
        }
    }

    pub fn request_from_parts(p: RequestParts) -> Request {
        Request::from_parts(
            p.method,
            p.scheme,
            p.authority,
            p.path_with_query,
            Headers::from_wire(p.headers),
            p.body,
        )
    }

    pub fn response_into_parts(resp: Response) -> (u16, Wire, Option<Vec<u8>>) {
        let (status, headers, body) = resp.into_parts();
        (status, headers.into_wire(), body)
    }

    pub fn response_from_parts(status: u16, headers: Wire, body: Option<Vec<u8>>) -> Response {
        Response::from_parts(status, Headers::from_wire(headers), body)
    }

    /// Route, params, client address, request id.
    pub fn context_into_parts(ctx: &Context) -> (String, Vec<(String, String)>, String, String) {
        ctx.parts()
    }
}

/// Glue used by [`export_filter!`]; not part of the API.
#[doc(hidden)]
pub mod __rt {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    pub use crate::__bindings::exports::wasmgate::filter::filter::Guest;
    pub use crate::__bindings::wasmgate::filter::types::{
        Needs as WitNeeds, Request as WitRequest, RequestAction, Response as WitResponse,
    };
    use crate::{Action, Context, Filter, Request, Response};

    type Slot<F> = LocalKey<RefCell<Option<F>>>;

    pub fn configure<F: Filter>(
        slot: &'static Slot<F>,
        config: String,
    ) -> Result<WitNeeds, String> {
        let config: F::Config = serde_json::from_str(&config).map_err(|e| strip_position(&e))?;
        let filter = F::new(config).map_err(|e| e.0)?;
        let needs = filter.needs();
        slot.with(|s| *s.borrow_mut() = Some(filter));
        Ok(WitNeeds {
            request_body: needs.request_body,
            response_body: needs.response_body,
            request_phase: needs.request_phase,
            response_phase: needs.response_phase,
            reuse_instance: needs.reuse_instance,
        })
    }

    pub fn on_request<F: Filter>(
        slot: &'static Slot<F>,
        req: &WitRequest,
    ) -> Result<RequestAction, String> {
        let ctx = Context::remote();
        let held = req.handle();
        let action = with_filter(slot, |f| f.on_request(Request::remote(held), &ctx))?;
        Ok(match action {
            Action::Continue(next) if next.handle() == Some(held) => RequestAction::Continue,
            Action::Continue(other) => {
                // A request the filter built (or a copy): it replaces the host's.
                let (method, _, _, path_with_query, headers, body) = other.into_parts();
                req.set_method(&method);
                req.set_path_with_query(&path_with_query);
                req.replace_headers(&headers.into_wire());
                if let Some(body) = body {
                    req.set_body(&body);
                }
                RequestAction::Continue
            }
            Action::Respond(resp) => RequestAction::Respond(built(resp)),
        })
    }

    pub fn on_response<F: Filter>(
        slot: &'static Slot<F>,
        resp: &WitResponse,
    ) -> Result<Option<WitResponse>, String> {
        let ctx = Context::remote();
        let held = resp.handle();
        let next = with_filter(slot, |f| f.on_response(Response::remote(held), &ctx))?;
        Ok(match next.handle() == Some(held) {
            true => None,
            false => Some(built(next)),
        })
    }

    /// A response for the host to take: one call with everything in it.
    fn built(resp: Response) -> WitResponse {
        let (status, headers, body) = resp.into_parts();
        WitResponse::new(status, &headers.into_wire(), body.as_deref())
    }

    fn with_filter<F: Filter, T>(
        slot: &'static Slot<F>,
        run: impl FnOnce(&F) -> Result<T, crate::Error>,
    ) -> Result<T, String> {
        slot.with(|s| match s.borrow().as_ref() {
            Some(filter) => run(filter).map_err(|e| e.0),
            None => Err("filter called before configure".into()),
        })
    }

    /// serde_json reports positions in the JSON the host made from the TOML config, which the
    /// user never saw; keep only the message.
    fn strip_position(err: &serde_json::Error) -> String {
        let msg = err.to_string();
        match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WIT_VERSION;

    #[test]
    fn the_bindings_are_generated_from_the_wit_version_this_sdk_names() {
        let wit = include_str!("../wit/filter.wit");
        assert!(wit.contains(&format!("package wasmgate:filter@{WIT_VERSION};")));
    }

    /// The compatibility rule: the crate's `major.minor` is the WIT package's.
    #[test]
    fn the_crate_version_follows_the_wit_version() {
        let minor = |v: &str| v.rsplit_once('.').map(|(mm, _)| mm.to_string());
        assert_eq!(minor(env!("CARGO_PKG_VERSION")), minor(WIT_VERSION));
    }
}
