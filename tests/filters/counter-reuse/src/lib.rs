//! The counter test filter, declaring its instances reusable.

const REUSE: bool = true;

include!("../../counter.rs");
