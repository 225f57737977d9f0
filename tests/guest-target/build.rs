//! Add the guest target when the toolchain lacks it, or stop the build with one line.

use std::path::PathBuf;
use std::process::Command;

/// The target the guest filters build for.
const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    require_guest_target();
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
