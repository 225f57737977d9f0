//! Building a filter crate to its component, from inside its own `cargo test`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The target filters build for.
const TARGET: &str = "wasm32-wasip2";

/// Build the filter crate at `manifest_dir` with `cargo build --release --target
/// wasm32-wasip2` and return the path of its `.wasm`. The build uses a target directory of its
/// own, `wasmgate-test/` in the crate's (its workspace's, if it is a member), so it does not
/// wait on the `cargo test` that runs it; it happens once per test binary and crate. The error
/// carries cargo's diagnostics.
pub fn build_component(manifest_dir: &Path) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Mutex<HashMap<PathBuf, Result<PathBuf, String>>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    built
        .entry(manifest_dir.to_path_buf())
        .or_insert_with(|| run_cargo(manifest_dir))
        .clone()
}

fn run_cargo(manifest_dir: &Path) -> Result<PathBuf, String> {
    let manifest = manifest_dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = target_dir(&cargo, &manifest)?.join("wasmgate-test");
    let out = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the native test build (coverage, sanitizers) break a wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let missing_target =
            stderr.contains("may not be installed") || stderr.contains("can't find crate for `");
        let hint = if missing_target {
            "\nhint: this toolchain lacks the target: rustup target add wasm32-wasip2"
        } else {
            ""
        };
        return Err(format!(
            "cargo build of {} failed:\n{stderr}{hint}",
            manifest.display()
        ));
    }
    let wanted = manifest.canonicalize().unwrap_or(manifest.clone());
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter(|msg| {
            msg["manifest_path"]
                .as_str()
                .is_some_and(|p| Path::new(p).canonicalize().ok().as_ref() == Some(&wanted))
        })
        .flat_map(|msg| {
            msg["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .ok_or_else(|| {
            format!(
                "cargo built {} but produced no .wasm: is its crate-type \"cdylib\"?",
                manifest.display()
            )
        })
}

/// The target directory cargo uses for the crate at `manifest`: `CARGO_TARGET_DIR`, the
/// workspace's, or the crate's own `target/`.
fn target_dir(cargo: &std::ffi::OsStr, manifest: &Path) -> Result<PathBuf, String> {
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(manifest)
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata for {} failed:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|meta| meta["target_directory"].as_str().map(PathBuf::from))
        .ok_or_else(|| {
            format!(
                "cargo metadata for {} named no target directory",
                manifest.display()
            )
        })
}
