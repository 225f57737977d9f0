//! The documentation pages: every relative link reaches a file, and the config reference's
//! example is a config the gateway accepts.

use std::path::{Path, PathBuf};

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The pages: the README, docs/, and the READMEs of the SDK and the bundled filters.
fn pages() -> Vec<PathBuf> {
    let root = checkout();
    let mut pages = vec![root.join("README.md"), root.join("sdk/README.md")];
    for dir in ["docs", "filters"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            } else if path.join("README.md").is_file() {
                pages.push(path.join("README.md"));
            }
        }
    }
    pages
}

#[test]
fn every_relative_link_reaches_a_file() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") {
                continue;
            }
            if !page.parent().unwrap().join(target).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

#[test]
fn the_config_reference_example_is_a_valid_config() {
    let page = std::fs::read_to_string(checkout().join("docs/config.md")).unwrap();
    let example = page
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml example in docs/config.md");
    let config = wasmgate::Config::parse(example)
        .unwrap_or_else(|errors| panic!("docs/config.md's example is refused: {errors:?}"));
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].filters[0].name, "headers");
    assert!(config.access_log.enabled && config.tracing.enabled);
    assert_eq!(config.tracing.sample_ratio, 0.25);
    assert_eq!(config.state.backend, "redis");
    assert_eq!(config.state.url, "redis://127.0.0.1:6379");
}

#[test]
fn the_traffic_management_example_is_a_valid_config() {
    let page = std::fs::read_to_string(checkout().join("docs/config.md")).unwrap();
    let example = page
        .split("```toml\n")
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("[services.users.health_check]"))
        .expect("the traffic management example in docs/config.md");
    let config = wasmgate::Config::parse(example)
        .unwrap_or_else(|errors| panic!("the traffic example is refused: {errors:?}"));
    let users = &config.services[0];
    assert_eq!(users.weights, [2, 1, 1]);
    assert!(users.health_check.is_some() && users.outlier.is_some());
    assert!(config.routes[0].retry.is_some());
}

#[test]
fn the_transcoding_example_is_a_valid_config() {
    let page = std::fs::read_to_string(checkout().join("docs/config.md")).unwrap();
    let example = page
        .split("```toml\n")
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("\ntranscode = {"))
        .expect("the transcoding example in docs/config.md");
    // The descriptor set it names, beside it, from the transcoding tests' proto.
    let dir = std::env::temp_dir().join(format!("wasmgate-docs-transcode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let set = protox::Compiler::new([checkout().join("tests/protos")])
        .unwrap()
        .include_imports(true)
        .open_files(["bookstore.proto"])
        .unwrap()
        .encode_file_descriptor_set();
    std::fs::write(dir.join("books.pb"), set).unwrap();
    std::fs::write(dir.join("gateway.toml"), example).unwrap();
    let config = wasmgate::Config::load(&dir.join("gateway.toml"))
        .unwrap_or_else(|e| panic!("the transcoding example is refused: {e}"));
    assert!(config.routes[0].transcode.is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_registry_example_is_a_valid_config() {
    let page = std::fs::read_to_string(checkout().join("docs/config.md")).unwrap();
    let example = page
        .split("```toml\n")
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.starts_with("[registry]"))
        .expect("the registry example in docs/config.md");
    let config = wasmgate::Config::parse(example)
        .unwrap_or_else(|errors| panic!("the registry example is refused: {errors:?}"));
    assert_eq!(
        config.registry.poll_interval,
        std::time::Duration::from_secs(30)
    );
    let sources: Vec<(&str, bool)> = config
        .sources
        .iter()
        .map(|(name, s)| (name.as_str(), s.is_pinned()))
        .collect();
    assert_eq!(sources, [("auth-jwt", false), ("rate-limit", true)]);
}
