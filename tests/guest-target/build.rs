//! Add the guest target when the toolchain lacks it, or stop the build with one line.

// guest_target_dir is for the build scripts that build filters.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

fn main() {
    if !add_guest_target() {
        println!(
            "cargo::error=this Rust toolchain lacks the {GUEST_TARGET} target the filters build for; add it with: rustup target add {GUEST_TARGET}"
        );
        std::process::exit(1);
    }
}

include!("guest_target.rs");
