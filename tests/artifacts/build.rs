//! Build every guest filter crate to a wasm component, as wasmtime's test-programs do.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // wasmgate-guest-target, built before this, adds the target; a toolchain changed since
    // (say, by rust-toolchain.toml) may still lack it.
    if !add_guest_target() {
        println!(
            "cargo::error=this Rust toolchain lacks the {GUEST_TARGET} target the filters build for; add it with: rustup target add {GUEST_TARGET}"
        );
        std::process::exit(1);
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    for watched in [
        "sdk",
        "wit",
        "filters",
        "tests/filters",
        "examples/filters",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let mut crates = Vec::new();
    for group in ["filters", "tests/filters", "examples/filters"] {
        let Ok(entries) = std::fs::read_dir(root.join(group)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().join("Cargo.toml").is_file() {
                crates.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    crates.sort();

    // A target dir beside the workspace's (whose lock the outer cargo holds), shared with the
    // gateway's build of the bundled filters.
    let target_dir = guest_target_dir(&out_dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", GUEST_TARGET, "--profile", "filter"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if std::env::var_os("CARGO_NET_OFFLINE").is_some() {
        cmd.arg("--offline");
    }
    for name in &crates {
        cmd.args(["-p", name]);
    }
    let status = cmd.status().expect("running cargo for the guest filters");
    assert!(status.success(), "building the guest filters failed");

    let filters_dir = out_dir.join("filters");
    std::fs::create_dir_all(&filters_dir).unwrap();
    let mut src = String::new();
    src.push_str(&format!(
        "/// Directory holding every built filter as `<name>.wasm`.\npub const FILTERS_DIR: &str = {:?};\n",
        filters_dir.display().to_string()
    ));
    src.push_str(
        "/// `(name, path)` of every built filter.\npub const ALL: &[(&str, &str)] = &[\n",
    );
    for name in &crates {
        let built = target_dir
            .join(GUEST_TARGET)
            .join("filter")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let dest = filters_dir.join(format!("{name}.wasm"));
        copy_if_changed(&built, &dest);
        src.push_str(&format!(
            "    ({name:?}, {:?}),\n",
            dest.display().to_string()
        ));
    }
    src.push_str("];\n");
    std::fs::write(out_dir.join("artifacts.rs"), src).unwrap();
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(new.as_slice()) {
        std::fs::write(to, new).unwrap();
    }
}

include!("../guest-target/guest_target.rs");
