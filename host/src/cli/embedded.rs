//! The crates a filter crate builds against (wasmgate-sdk, wasmgate-test), carried in the
//! binary (see `build.rs`) and written out, once per distinct content, to a local directory a
//! new crate's manifest points at: a filter author needs nothing but the binary.

use std::path::{Path, PathBuf};

/// One embedded crate.
pub struct EmbeddedCrate {
    /// Its package name, also its directory's.
    pub name: &'static str,
    /// Its standalone `Cargo.toml`.
    pub manifest: &'static str,
    /// Its files: path in the crate, content.
    pub files: &'static [(&'static str, &'static str)],
}

/// A bundled filter (`filters/*`), built.
pub struct Bundled {
    /// Its name: the file name it installs as and the name routes give it.
    pub name: &'static str,
    /// The component.
    pub wasm: &'static [u8],
    /// Its README: what it does and its config.
    pub readme: &'static str,
}

impl Bundled {
    /// The first sentence of the README's first paragraph: what the filter does.
    pub fn summary(&self) -> String {
        let body = self.readme.split_once("\n\n").map_or("", |(_, rest)| rest);
        let paragraph = body.split("\n\n").next().unwrap_or("");
        let text = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        match text.find(". ") {
            Some(end) => text[..=end].to_string(),
            None => text,
        }
    }

    /// The README's first TOML example: a route's filter entry.
    pub fn example(&self) -> Option<&'static str> {
        let start = self.readme.find("```toml\n")? + "```toml\n".len();
        let len = self.readme[start..].find("```")?;
        Some(&self.readme[start..start + len])
    }
}

include!(concat!(env!("OUT_DIR"), "/embedded_crates.rs"));

/// Where the embedded crates go: `$XDG_DATA_HOME/wasmgate/crates` or
/// `~/.local/share/wasmgate/crates`.
fn data_dir() -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .map(|home| PathBuf::from(home).join(".local/share"))
            .ok_or("neither XDG_DATA_HOME nor HOME is set: nowhere to put the SDK")?,
    };
    Ok(base.join("wasmgate/crates"))
}

/// A name for this binary's crates: their version and a digest of their content, so two
/// builds of one version with different sources never share a directory.
fn release() -> String {
    let mut all = Vec::new();
    for krate in CRATES {
        all.extend_from_slice(krate.manifest.as_bytes());
        for (path, text) in krate.files {
            all.extend_from_slice(path.as_bytes());
            all.push(0);
            all.extend_from_slice(text.as_bytes());
            all.push(0);
        }
    }
    let digest = wasmgate_sandbox::content_hash(&all);
    format!("{}-{}", wasmgate_sandbox::WIT_VERSION, &digest[..12])
}

/// Write the embedded crates out (unless a previous run did) and return the directory that
/// holds them, one subdirectory per crate.
pub fn install() -> Result<PathBuf, String> {
    let dir = data_dir()?.join(release());
    if CRATES
        .iter()
        .all(|k| dir.join(k.name).join("Cargo.toml").is_file())
    {
        return Ok(dir);
    }
    // Written aside and moved into place, so a crate never sees half of them.
    let parent = dir.parent().unwrap_or(&dir);
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let staging = parent.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for krate in CRATES {
        let root = staging.join(krate.name);
        write(&root.join("Cargo.toml"), krate.manifest)?;
        for (path, text) in krate.files {
            write(&root.join(path), text)?;
        }
    }
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another process put them there first.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
