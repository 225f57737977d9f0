//! Embeds in the binary what a user of it alone needs:
//! - the crates a filter author builds against (`sdk/`: wasmgate-sdk, `sdk/test/`:
//!   wasmgate-test) and the workspace's `Cargo.lock`, for `wasmgate filter new`. Their
//!   manifests inherit from the workspace; written out here they become standalone: inherited
//!   fields and dependencies resolved, the two crates depending on each other by a path beside
//!   them;
//! - the bundled filters (`filters/*`), built for wasm32-wasip2, for `wasmgate filter add`.
//!   Without that target (added when rustup can) the binary is built without them, with a
//!   warning.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The embedded crates: directory in the workspace, and what of it a build needs.
const CRATES: [(&str, &[&str]); 2] = [
    ("sdk", &["src", "wit", "README.md"]),
    ("sdk/test", &["src", "README.md"]),
];

fn main() {
    let host = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = host.parent().unwrap().to_path_buf();
    let workspace: toml::Table = read_toml(&root.join("Cargo.toml"));
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    let mut out = String::from(
        "/// The crates a filter crate builds against.\npub const CRATES: &[EmbeddedCrate] = &[\n",
    );
    for (dir, parts) in CRATES {
        let dir = root.join(dir);
        let manifest_path = dir.join("Cargo.toml");
        println!("cargo:rerun-if-changed={}", manifest_path.display());
        let manifest = standalone(&read_toml(&manifest_path), &workspace);
        let name = manifest["package"]["name"].as_str().unwrap().to_string();
        let mut files = Vec::new();
        for part in parts {
            let path = dir.join(part);
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, &mut files);
        }
        files.sort();
        writeln!(out, "    EmbeddedCrate {{\n        name: {name:?},\n        manifest: {:?},\n        files: &[", toml::to_string(&manifest).unwrap()).unwrap();
        for file in files {
            let relative = file
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            writeln!(
                out,
                "            ({relative:?}, include_str!({:?})),",
                file.display().to_string()
            )
            .unwrap();
        }
        out.push_str("        ],\n    },\n");
    }
    out.push_str("];\n");
    writeln!(
        out,
        "/// The workspace's lock file: the versions the embedded crates were tested with.\npub const LOCK: &str = include_str!({:?});",
        root.join("Cargo.lock").display().to_string()
    )
    .unwrap();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    out.push_str(&bundled_filters(&root, &out_dir));
    std::fs::write(out_dir.join("embedded_crates.rs"), out).unwrap();
}

/// The workspace profile the bundled filters build with.
const GUEST_PROFILE: &str = "filter";

/// Build `filters/*` and return the source of `BUNDLED`: name, component and README of each.
fn bundled_filters(root: &Path, out_dir: &Path) -> String {
    let filters = root.join("filters");
    println!("cargo:rerun-if-changed={}", filters.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    let mut names: Vec<String> = std::fs::read_dir(&filters)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The guest target directory tests/artifacts builds into too (the same units, built
    // once): beside the outer build's, whose lock the outer cargo holds.
    let target_dir = guest_target_dir(out_dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--target",
            GUEST_TARGET,
            "--profile",
            GUEST_PROFILE,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if std::env::var_os("CARGO_NET_OFFLINE").is_some() {
        cmd.arg("--offline");
    }
    for name in &names {
        cmd.args(["-p", name]);
    }
    let built = if add_guest_target() {
        cmd.output()
    } else {
        Err(std::io::Error::other(format!(
            "this toolchain lacks the {GUEST_TARGET} target and rustup could not add it"
        )))
    };
    let mut src =
        String::from("/// The bundled filters, built.\npub const BUNDLED: &[Bundled] = &[\n");
    match built {
        Ok(out) if out.status.success() => {
            for name in &names {
                let wasm = target_dir
                    .join(GUEST_TARGET)
                    .join(GUEST_PROFILE)
                    .join(format!("{}.wasm", name.replace('-', "_")));
                let readme = filters.join(name).join("README.md");
                writeln!(
                    src,
                    "    Bundled {{ name: {name:?}, wasm: include_bytes!({:?}), readme: include_str!({:?}) }},",
                    wasm.display().to_string(),
                    readme.display().to_string()
                )
                .unwrap();
            }
        }
        Ok(out) => println!(
            "cargo:warning=the bundled filters were not built; `wasmgate filter add` will have none: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .find(|l| l.contains("error"))
                .unwrap_or("")
        ),
        Err(e) => println!(
            "cargo:warning=the bundled filters were not built; `wasmgate filter add` will have none: {e}"
        ),
    }
    src.push_str("];\n");
    src
}

include!("../tests/guest-target/guest_target.rs");

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `path` (or `path` itself).
fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            collect(&entry.unwrap().path(), files);
        }
    } else {
        files.push(path.to_path_buf());
    }
}

/// `member` with what it inherits from `workspace` written in, and without `[lints]` (the
/// workspace's lints are its own business) or `[dev-dependencies]` (its tests stay here).
fn standalone(member: &toml::Table, workspace: &toml::Table) -> toml::Table {
    let ws = &workspace["workspace"];
    let mut out = member.clone();
    out.remove("lints");
    out.remove("dev-dependencies");
    if let Some(toml::Value::Table(package)) = out.get_mut("package") {
        for (key, value) in package.iter_mut() {
            if is_inherited(value) {
                *value = ws["package"][key.as_str()].clone();
            }
        }
        package.insert("publish".into(), toml::Value::Boolean(false));
    }
    if let Some(toml::Value::Table(deps)) = out.get_mut("dependencies") {
        for (name, spec) in deps.iter_mut() {
            if !is_inherited(spec) {
                continue;
            }
            let mut resolved = match &ws["dependencies"][name.as_str()] {
                toml::Value::String(version) => {
                    let mut t = toml::Table::new();
                    t.insert("version".into(), toml::Value::String(version.clone()));
                    t
                }
                toml::Value::Table(t) => t.clone(),
                other => panic!("workspace dependency {name}: {other:?}"),
            };
            if resolved.contains_key("path") {
                // One of ours: it is written beside this one.
                resolved.insert("path".into(), toml::Value::String(format!("../{name}")));
                resolved.insert("version".into(), member["package"]["version"].clone());
            }
            if let toml::Value::Table(extra) = spec {
                for (key, value) in extra {
                    if key != "workspace" {
                        resolved.insert(key.clone(), value.clone());
                    }
                }
            }
            *spec = toml::Value::Table(resolved);
        }
    }
    out
}

fn is_inherited(value: &toml::Value) -> bool {
    value.get("workspace").and_then(toml::Value::as_bool) == Some(true)
}
