// Included by the build scripts that build guest filters (host/build.rs,
// tests/artifacts/build.rs): one target directory for both, so each filter is built once.

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
