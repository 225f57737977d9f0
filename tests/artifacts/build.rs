//! Build every guest filter crate to a wasm component, as wasmtime's test-programs do.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the guest filters build for.
const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    require_guest_target();
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

    // A target dir of its own: the outer cargo holds the lock on the workspace's.
    let target_dir = out_dir.join("guest-target");
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

/// The toolchain must have the guest target. rustup does not add a `rust-toolchain.toml`
/// target to a toolchain that is already installed, so when it is missing it is added here (as
/// `rust-toolchain.toml` asks), with one line that says so; without rustup, the build stops
/// with one line that says what to do.
fn require_guest_target() {
    if guest_target_installed() {
        return;
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    println!(
        "cargo::warning=this Rust toolchain lacks the {GUEST_TARGET} target the filters build for; adding it: rustup target add {GUEST_TARGET}"
    );
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", GUEST_TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    let added = rustup.status().is_ok_and(|s| s.success());
    // Cargo replays a fresh build script's warnings on every build; a path that never exists
    // makes it run once more, and then (the target present) it says nothing.
    let out_dir = std::env::var("OUT_DIR").unwrap_or_default();
    println!("cargo::rerun-if-changed={out_dir}/the-target-was-added");
    if !added || !guest_target_installed() {
        println!(
            "cargo::error=this Rust toolchain lacks the {GUEST_TARGET} target the filters build for; add it with: rustup target add {GUEST_TARGET}"
        );
        std::process::exit(1);
    }
}

fn guest_target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .is_some_and(|dir| dir.is_dir())
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(new.as_slice()) {
        std::fs::write(to, new).unwrap();
    }
}
