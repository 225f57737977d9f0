//! `wasmgate filter build`: build a filter crate's component, check it as the gateway would,
//! and optionally install it into a filters directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use wasmgate_sandbox::{Sandbox, WIT_VERSION};

/// The target filters build for.
pub const TARGET: &str = "wasm32-wasip2";

/// A built and checked component.
pub struct Built {
    /// The filter's name: the crate's package name, which routes use.
    pub name: String,
    /// Where cargo wrote it.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
}

/// Build the crate at `manifest_path` (or the one in the current directory), then load every
/// component it produced into the sandbox, which refuses what the gateway would refuse.
pub async fn build(manifest_path: Option<&Path>) -> Result<Vec<Built>, String> {
    require_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(path) = manifest_path {
        cmd.arg("--manifest-path").arg(path);
    }
    let out = cmd.output().map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err("cargo build failed (its errors are above)".into());
    }
    let mut built = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let wasm = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        let (Some(wasm), Some(manifest)) = (wasm, msg["manifest_path"].as_str()) else {
            continue;
        };
        built.push(Built {
            name: package_name(Path::new(manifest))?,
            path: PathBuf::from(wasm),
            bytes: 0,
        });
    }
    if built.is_empty() {
        return Err(
            "cargo built no .wasm: a filter crate needs `crate-type = [\"cdylib\"]` under [lib]"
                .into(),
        );
    }
    let sandbox = Sandbox::new().map_err(|e| format!("{e:#}"))?;
    for component in &mut built {
        let bytes = std::fs::read(&component.path)
            .map_err(|e| format!("{}: {e}", component.path.display()))?;
        component.bytes = bytes.len();
        sandbox
            .load(&component.name, bytes, None)
            .await
            .map_err(|e| {
                format!(
                    "{}: the gateway would refuse it: {e:#}",
                    component.path.display()
                )
            })?;
    }
    Ok(built)
}

/// Read a built component and check that the gateway would load it.
pub async fn check_file(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let sandbox = Sandbox::new().map_err(|e| format!("{e:#}"))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("filter");
    sandbox
        .load(name, bytes.clone(), None)
        .await
        .map_err(|e| format!("{}: the gateway would refuse it: {e:#}", path.display()))?;
    Ok(bytes)
}

/// Copy a checked component into `dir` as `<name>.wasm`, by rename, so that a gateway watching
/// `dir` never reads a half-written file.
pub fn install(component: &Built, dir: &Path) -> Result<PathBuf, String> {
    let bytes =
        std::fs::read(&component.path).map_err(|e| format!("{}: {e}", component.path.display()))?;
    install_bytes(&component.name, &bytes, dir)
}

/// Write `bytes` into `dir` as `<name>.wasm`: aside, then renamed into place.
pub fn install_bytes(name: &str, bytes: &[u8], dir: &Path) -> Result<PathBuf, String> {
    if !dir.is_dir() {
        return Err(format!("--install {}: not a directory", dir.display()));
    }
    let dest = dir.join(format!("{name}.wasm"));
    let partial = dir.join(format!(".{name}.wasm.partial"));
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, &dest))
        .map_err(|e| format!("installing {}: {e}", dest.display()))?;
    Ok(dest)
}

/// The package name in a crate's manifest.
fn package_name(manifest: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
    doc.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no package name", manifest.display()))
}

/// Fail at once, with the command that fixes it, when the toolchain cannot build for the
/// filter target (rather than after cargo has compiled the dependencies).
fn require_target() -> Result<(), String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if libdir.is_some_and(|dir| dir.is_dir()) {
        return Ok(());
    }
    Err(format!(
        "this Rust toolchain lacks the {TARGET} target filters build for; add it with: rustup target add {TARGET}"
    ))
}

/// What the gateway speaks, for messages.
pub fn contract() -> String {
    format!("wasmgate:filter@{WIT_VERSION}")
}
