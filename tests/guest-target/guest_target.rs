// Included by the build scripts that build guest filters (host/build.rs,
// tests/artifacts/build.rs) and by tests/guest-target/build.rs: the guest target, added when
// the toolchain lacks it, and one target directory for every guest build, so each filter is
// built once.

/// The target the guest filters build for.
const GUEST_TARGET: &str = "wasm32-wasip2";

/// Whether the toolchain has the guest target, after adding it when it lacked it. rustup does
/// not add a `rust-toolchain.toml` target to a toolchain that is already installed, so it is
/// added here (as `rust-toolchain.toml` asks), with one line that says so.
fn add_guest_target() -> bool {
    if guest_target_installed() {
        return true;
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    println!(
        "cargo::warning=this Rust toolchain lacks the {GUEST_TARGET} target the filters build for; adding it: rustup target add {GUEST_TARGET}"
    );
    let mut rustup = std::process::Command::new("rustup");
    rustup.args(["target", "add", GUEST_TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    let added = rustup.status().is_ok_and(|s| s.success());
    // Cargo replays a fresh build script's warnings on every build; a path that never exists
    // makes it run once more, and then (the target present) it says nothing.
    let out_dir = std::env::var("OUT_DIR").unwrap_or_default();
    println!("cargo::rerun-if-changed={out_dir}/the-target-was-added");
    added && guest_target_installed()
}

fn guest_target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    std::process::Command::new(rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .is_some_and(|dir| dir.is_dir())
}

/// `<target>/wasm-filters`, where `<target>` is the outer build's target directory
/// (`OUT_DIR` is `<target>/[<triple>/]<profile>/build/<package>-<hash>/out`).
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    let build = out_dir
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "build"))
        .unwrap_or(out_dir);
    let profile_dir = build.parent().unwrap_or(build);
    let target = profile_dir.parent().unwrap_or(profile_dir);
    // Under `<target>/<triple>/<profile>`, one more level.
    let target = if target.join("CACHEDIR.TAG").is_file() || target.parent().is_none() {
        target
    } else {
        target.parent().filter(|t| t.join("CACHEDIR.TAG").is_file()).unwrap_or(target)
    };
    target.join("wasm-filters")
}
