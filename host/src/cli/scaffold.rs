//! `wasmgate filter new NAME`: a standalone filter crate that builds and tests as is.

use std::path::{Path, PathBuf};

/// The SDK and test kit version the scaffold depends on: the WIT version this gateway speaks.
const SDK_VERSION: &str = wasmgate_sandbox::WIT_VERSION;

const CARGO_TOML: &str = include_str!("../starter/filter/Cargo.toml.tmpl");
const CARGO_CONFIG: &str = include_str!("../starter/filter/cargo-config.toml");
const GITIGNORE: &str = include_str!("../starter/filter/gitignore");
const LIB_RS: &str = include_str!("../starter/filter/lib.rs.tmpl");
const SANDBOX_RS: &str = include_str!("../starter/filter/sandbox.rs.tmpl");
const README: &str = include_str!("../starter/filter/README.md.tmpl");

/// Where a new crate takes the SDK (wasmgate-sdk) and the test kit (wasmgate-test) from.
#[derive(Debug, Clone, Copy)]
pub enum Sdk<'a> {
    /// The copies this binary carries, written to a local directory (see
    /// [`super::embedded`]); the crate builds with nothing else of ours.
    Embedded,
    /// A wasmgate checkout's `sdk/` (and `sdk/test/`).
    Checkout(&'a Path),
    /// The crates published on crates.io, by version.
    CratesIo,
}

/// Write the crate for filter `name` into `dir` (which must not exist or be empty), depending
/// on the SDK and the test kit from `sdk`. With the embedded crates or a checkout's, the lock
/// file they were tested with seeds the crate's. The crate's `.cargo/config.toml` names this
/// binary as the one its sandbox tests run in.
pub fn new_filter(name: &str, dir: &Path, sdk: Sdk<'_>) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!("{} exists and is not empty", dir.display()));
    }
    let (sdk_dep, test_dep, lock) = dependencies(sdk)?;
    let binary = std::env::current_exe()
        .map_err(|e| format!("finding this binary (for the crate's sandbox tests): {e}"))?;
    let crate_file = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{type_name}}", &type_name(name))
            .replace("{{crate_file}}", &crate_file)
            .replace("{{sdk}}", &sdk_dep)
            .replace("{{test}}", &test_dep)
            .replace("{{wasmgate}}", &toml_string(&binary))
    };
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        (".cargo/config.toml", fill(CARGO_CONFIG)),
        (".gitignore", GITIGNORE.to_string()),
        ("src/lib.rs", fill(LIB_RS)),
        ("tests/sandbox.rs", fill(SANDBOX_RS)),
        ("README.md", fill(README)),
    ];
    let mut written = Vec::new();
    // The lock file the SDK was tested with seeds the crate's (cargo drops what the crate does
    // not use).
    if let Some(lock) = lock {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dest = dir.join("Cargo.lock");
        std::fs::write(&dest, lock).map_err(|e| format!("{}: {e}", dest.display()))?;
        written.push(dest);
    }
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A filter's name is its file name in the filters directory and its crate name.
fn check_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a filter name: use lower-case letters, digits, '-' and '_', starting with a letter"
        ))
    }
}

/// `my-filter` -> `MyFilter`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// The dependency lines for the SDK and the test kit, and the lock file to start from.
fn dependencies(sdk: Sdk<'_>) -> Result<(String, String, Option<String>), String> {
    let by_path = |path: &Path| {
        format!(
            "{{ version = \"{SDK_VERSION}\", path = {} }}",
            toml_string(path)
        )
    };
    match sdk {
        Sdk::CratesIo => {
            let by_version = format!("\"{SDK_VERSION}\"");
            Ok((by_version.clone(), by_version, None))
        }
        Sdk::Embedded => {
            let dir = super::embedded::install()?;
            Ok((
                by_path(&dir.join("wasmgate-sdk")),
                by_path(&dir.join("wasmgate-test")),
                Some(super::embedded::LOCK.to_string()),
            ))
        }
        Sdk::Checkout(sdk) => {
            let sdk = sdk
                .canonicalize()
                .map_err(|e| format!("--sdk-path {}: {e}", sdk.display()))?;
            if !sdk.join("Cargo.toml").is_file()
                || !sdk.join("wit").is_dir()
                || !sdk.join("test/Cargo.toml").is_file()
            {
                return Err(format!(
                    "--sdk-path {}: not the SDK crate (no Cargo.toml, wit/ and test/ there); give a wasmgate checkout's sdk/ directory",
                    sdk.display()
                ));
            }
            let lock = std::fs::read_to_string(sdk.join("../Cargo.lock")).ok();
            Ok((by_path(&sdk), by_path(&sdk.join("test")), lock))
        }
    }
}

fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_rust_types_and_bad_names_are_refused() {
        assert_eq!(type_name("my-filter"), "MyFilter");
        assert_eq!(type_name("rate_limit2"), "RateLimit2");
        assert!(check_name("My Filter").is_err());
        assert!(check_name("1st").is_err());
        assert!(check_name("ok-name_2").is_ok());
    }
}
