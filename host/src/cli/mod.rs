//! `wasmgate filter new`, `build` and `test-server`: from nothing to a tested component in a
//! filters directory.

pub mod build;
pub mod embedded;
pub mod scaffold;
pub mod test_server;
