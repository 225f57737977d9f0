//! Paths of the filter components built from `filters/`, `tests/filters/` and
//! `examples/filters/`.
//!
//! `build.rs` runs `cargo build --target wasm32-wasip2 --profile filter` for every filter crate
//! and copies each `.wasm` to [`FILTERS_DIR`] under its package name, which is the name routes
//! use for it.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// Path of the built filter called `name`; panics if there is no such filter crate.
pub fn filter(name: &str) -> &'static str {
    ALL.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, path)| *path)
        .unwrap_or_else(|| panic!("no filter crate named {name:?}"))
}
