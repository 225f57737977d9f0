//! Compilation and the on-disk compile cache, keyed by content hash and engine.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::engine::context;

/// Where a loaded filter's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled from the `.wasm` now.
    Compiled,
    /// Deserialized from the on-disk compile cache (same content hash, same engine).
    Cache,
}

impl LoadSource {
    /// `compiled` or `cache`.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadSource::Compiled => "compiled",
            LoadSource::Cache => "cache",
        }
    }
}

/// `sha256` of a filter's bytes, hex: its version identity.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Deserialize from `cache_file` if present and valid, else compile and write it (best effort).
pub(crate) fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    cache_file: Option<PathBuf>,
) -> anyhow::Result<(Component, LoadSource)> {
    if let Some(file) = &cache_file
        && file.is_file()
    {
        // SAFETY: the cache directory holds only artifacts this gateway serialized with an
        // engine of the same compatibility tag (part of the file name); it must be writable by
        // the gateway's user alone (see the README). A corrupt file fails to deserialize and is
        // recompiled below.
        match unsafe { Component::deserialize_file(engine, file) } {
            Ok(component) => {
                // Recently used: pruning keeps it (see `Sandbox::prune_cache`).
                let _ = std::fs::File::options()
                    .append(true)
                    .open(file)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                return Ok((component, LoadSource::Cache));
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), "ignoring unusable compile cache entry: {e:#}")
            }
        }
    }
    if !bytes.starts_with(b"\0asm") {
        anyhow::bail!("not a loadable wasm component: not wasm at all (no \\0asm header)");
    }
    let component = Component::new(engine, bytes)
        .map_err(|e| anyhow::anyhow!("not a loadable wasm component: {e:#}"))?;
    if let Some(file) = cache_file
        && let Err(e) = write_cache(&component, &file)
    {
        tracing::warn!(file = %file.display(), "cannot write compile cache: {e:#}");
    }
    Ok((component, LoadSource::Compiled))
}

fn write_cache(component: &Component, file: &Path) -> anyhow::Result<()> {
    let serialized = component
        .serialize()
        .map_err(|e| context(e, "serializing"))?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serialized)?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}
