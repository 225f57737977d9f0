//! `src/bindings.rs` is what `wit_bindgen::generate!` would expand to for `wit/`, generated
//! ahead of time so that a filter crate compiles none of the bindings generator (wasmparser,
//! wit-parser, wit-component: most of a new crate's first build, twice over with its wasm
//! build). This test holds the committed file to the WIT: after a change to `wit/`, run it
//! with `UPDATE_BINDINGS=1` to write the file again.

use std::path::Path;

use wit_bindgen_core::WorldGenerator as _;
use wit_bindgen_core::wit_parser::Resolve;

/// The bindings, as the SDK's `generate!` call made them (see src/lib.rs, `__bindings`).
fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path(root.join("wit")).unwrap();
    let world = resolve
        .select_world(&[package], Some("gateway-filter"))
        .unwrap();
    let opts = wit_bindgen_rust::Opts {
        format: true,
        pub_export_macro: true,
        export_macro_name: Some("__export_filter_glue".into()),
        default_bindings_module: Some("wasmgate_sdk::__bindings".into()),
        ..Default::default()
    };
    let mut files = Default::default();
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .unwrap();
    let (_, source) = files.iter().next().unwrap();
    String::from_utf8(source.to_vec()).unwrap()
}

#[test]
fn the_committed_bindings_are_the_wits() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bindings.rs");
    let generated = generate();
    if std::env::var_os("UPDATE_BINDINGS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "sdk/src/bindings.rs is not what wit/ generates: run \
         `UPDATE_BINDINGS=1 cargo test -p wasmgate-sdk --test bindings` and commit it"
    );
}
