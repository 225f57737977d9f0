//! `wasmgate filter new` and `wasmgate filter build`: from nothing to a component in a filters
//! directory.

pub mod build;
pub mod scaffold;
