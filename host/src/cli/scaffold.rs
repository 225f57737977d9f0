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

/// Write the crate for filter `name` into `dir` (which must not exist or be empty). With
/// `sdk_path` (a checkout's `sdk/`), the SDK and the test kit beside it are path dependencies
/// and the checkout's `Cargo.lock` seeds the crate's; otherwise they are taken from crates.io by
/// version.
pub fn new_filter(name: &str, dir: &Path, sdk_path: Option<&Path>) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!("{} exists and is not empty", dir.display()));
    }
    let (sdk, testkit) = dependencies(sdk_path)?;
    let crate_file = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{type_name}}", &type_name(name))
            .replace("{{crate_file}}", &crate_file)
            .replace("{{sdk}}", &sdk)
            .replace("{{testkit}}", &testkit)
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
    // A checkout's lock file seeds the crate's: it builds with the versions the checkout was
    // tested with (cargo drops what the crate does not use).
    if let Some(lock) = sdk_path
        .map(|sdk| sdk.join("../Cargo.lock"))
        .filter(|l| l.is_file())
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dest = dir.join("Cargo.lock");
        std::fs::copy(&lock, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
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

/// The dependency lines for the SDK and the test kit.
fn dependencies(sdk_path: Option<&Path>) -> Result<(String, String), String> {
    let Some(sdk) = sdk_path else {
        let by_version = format!("\"{SDK_VERSION}\"");
        return Ok((by_version.clone(), by_version));
    };
    let sdk = sdk
        .canonicalize()
        .map_err(|e| format!("--sdk-path {}: {e}", sdk.display()))?;
    if !sdk.join("Cargo.toml").is_file() || !sdk.join("wit").is_dir() {
        return Err(format!(
            "--sdk-path {}: not the SDK crate (no Cargo.toml and wit/ there); give a wasmgate checkout's sdk/ directory",
            sdk.display()
        ));
    }
    let testkit = sdk.join("../host/testkit");
    let testkit = match testkit.canonicalize() {
        Ok(path) => format!(
            "{{ version = \"{SDK_VERSION}\", path = {} }}",
            toml_string(&path)
        ),
        Err(_) => format!("\"{SDK_VERSION}\""),
    };
    let sdk = format!(
        "{{ version = \"{SDK_VERSION}\", path = {} }}",
        toml_string(&sdk)
    );
    Ok((sdk, testkit))
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
