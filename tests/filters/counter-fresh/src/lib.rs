//! The counter test filter, with the default: a fresh instance per request.

const REUSE: bool = false;

include!("../../counter.rs");
