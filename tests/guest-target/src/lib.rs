//! Nothing to use: this crate's build script makes sure the toolchain has the `wasm32-wasip2`
//! target the guest filters build for.
//!
//! `wasmgate-sandbox` depends on it when its `guest-target` feature is on, which
//! `wasmgate-artifacts` (the guest build) turns on. Whatever depends on the sandbox then depends
//! on this crate, so cargo runs its build script among the first units of a cold build, minutes
//! before the guest build itself, rather than after the two hundred crates before it; and a
//! `cargo install` of the gateway, which needs no guest target, never runs it.
