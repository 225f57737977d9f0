//! The wasmgate filter sandbox: everything that touches wasmtime, and nothing that knows about
//! HTTP routing, snapshots or the proxy.
//!
//! - [`Sandbox`]: one engine for the process (pooling allocator, epoch interruption ticked by a
//!   background thread every [`EPOCH_TICK`]) and the linker with every host import.
//! - [`Sandbox::load`] compiles a filter (or takes it from the on-disk compile cache), checks it
//!   speaks this gateway's contract version ([`WIT_VERSION`]) and pre-instantiates it:
//!   a [`LoadedFilter`].
//! - An [`InstancePool`] is one configuration of a loaded filter; a request uses it through a
//!   [`Lease`]. By default the lease holds one fresh instance for both phases and drops it
//!   afterwards, so no request sees another's data. A filter whose configuration says it keeps
//!   nothing between requests ([`Needs::reuse_instance`]) has its instances configured once and
//!   shared: each phase call takes an idle instance and gives it back when the call succeeds.
//!   An instance is recycled after about [`Limits::requests_per_instance`] requests; one whose
//!   call trapped, hit a limit, returned an error or was abandoned mid-call is never reused.
//! - A phase works on the request or response in place: the [`HttpRequest`] or
//!   [`HttpResponse`] moves into the store for the call and the filter reaches it through a
//!   borrowed handle (`wasmgate:filter@0.3.0`), reading only what it asks for; each write is
//!   checked as it is made, and an invalid one fails the phase as [`FilterError::Invalid`].
//! - Each call runs under a deadline (checked every epoch tick, yielding to the async runtime
//!   in between, so a looping filter cannot hold a thread) and a linear-memory cap.
//! - What a filter reaches besides its request is a [`Grants`] value: its [`FilterCache`], its
//!   [`FilterMetrics`], whether the request is logged (the [`LogFields`] it adds are taken from
//!   the [`Lease`]), the [`StateStore`] its `state` import reaches (this crate's
//!   [`MemoryStore`], or one the embedder implements), and, when its route grants services, an
//!   [`Outbound`] the embedder implements.
#![deny(missing_docs)]

mod compile;
mod engine;
mod imports;
mod instance;
mod messages;
mod state;
mod telemetry;
mod text;

pub use compile::{LoadSource, content_hash};
pub use engine::{EPOCH_TICK, MAX_MEMORY_BYTES, Sandbox, WIT_VERSION};
pub use imports::{FilterCache, Outbound, OutboundFuture};
pub use instance::{FilterError, Grants, InstancePool, Lease, Limits, LoadedFilter, TrapKind};
pub use messages::{ClientAddr, HttpRequest, HttpResponse, ResponseHeaders, RouteInfo};
pub use state::{
    Counter, MAX_KEY_BYTES, MemoryLimits, MemoryStore, StateError, StateFuture, StateStore,
    ThrottleResult, gcra, unix_micros,
};
pub use telemetry::{
    FilterMetrics, LogFields, MAX_FIELDS, MAX_METRICS, MAX_SERIES, Metric, MetricKind, Value,
};
pub use text::AddrText;

/// The types of the WIT contract (`wit/filter.wit`) as the host sees them.
pub mod wit {
    pub use crate::bindings::exports::wasmgate::filter::filter::Needs;
    pub use crate::bindings::wasmgate::filter::outbound::{
        CallError, OutboundRequest, OutboundResponse,
    };

    /// A header list in wire order: lower-case names, raw byte values.
    pub type Headers = Vec<(String, Vec<u8>)>;
}

pub use wit::Needs;

/// Host-side bindings generated from `wit/filter.wit` (documented there).
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "gateway-filter",
        // Only what waits on the network is async: the message handles, logs, clock, cache
        // and metrics answer at once.
        imports: {
            "wasmgate:filter/outbound": async,
            "wasmgate:filter/state": async,
        },
        exports: { default: async },
        with: {
            "wasmgate:filter/types.request": crate::messages::HttpRequest,
            "wasmgate:filter/types.response": crate::messages::HttpResponse,
        },
    });
}
