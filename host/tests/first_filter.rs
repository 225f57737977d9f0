//! The README's path from nothing to a custom filter in live traffic, run as a new user runs
//! it: `wasmgate init DIR --filter NAME`, `wasmgate filter build --install`, `wasmgate serve`,
//! then requests through the gateway to a real upstream. The generated crate's own tests run
//! as `examples/filters/hello`'s, whose sources this test holds to the generated ones.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod support;
use support::{Registry, free_port, get, run, serve, upstream};

fn wasmgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasmgate"))
}

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The commands the README gives for this path, in order.
const README_COMMANDS: [&str; 3] = [
    "wasmgate init my-gateway --filter hello",
    "wasmgate filter build --manifest-path my-gateway/hello/Cargo.toml --install my-gateway/filters",
    "wasmgate serve --config my-gateway/gateway.toml",
];

#[test]
fn the_readme_gives_these_three_commands() {
    let readme = std::fs::read_to_string(checkout().join("README.md")).unwrap();
    let section = &readme[readme
        .find("### With your own filter: three commands")
        .expect("the README's section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let lines: Vec<&str> = block.lines().collect();
    assert_eq!(lines, README_COMMANDS);
}

/// Runs [`README_COMMANDS`], with free ports, the SDK the binary carries written under a fresh
/// `XDG_DATA_HOME`.
#[test]
fn init_build_serve_a_custom_filter_whose_crate_is_examples_hello() {
    let dir = std::env::temp_dir().join(format!("wasmgate-first-filter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, admin, upstream) = (free_port(), free_port(), upstream());
    let gw = dir.join("my-gateway");
    let started = Instant::now();

    // 1. A gateway directory with a config whose route runs the new filter `hello`, and the
    //    filter's crate.
    run(wasmgate()
        .current_dir(&dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .args(["init", "my-gateway", "--filter", "hello"])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &format!("http://127.0.0.1:{upstream}")]));

    // 2. Build, check and install the component.
    let built = run(wasmgate()
        .current_dir(&dir)
        .args([
            "filter",
            "build",
            "--manifest-path",
            "my-gateway/hello/Cargo.toml",
        ])
        .args(["--install", "my-gateway/filters"]));
    assert!(built.contains("implements wasmgate:filter@"), "{built}");
    assert!(gw.join("filters/hello.wasm").is_file());

    // 3. Serve, and send requests through it.
    let mut gateway = serve(wasmgate(), &gw.join("gateway.toml"));
    let ok = get(listen, "/users");
    let blocked = get(listen, "/blocked");
    let took = started.elapsed();
    let _ = gateway.kill();
    let _ = gateway.wait();
    eprintln!("init + filter build + serve + first request: {took:.1?}");

    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("x-filtered-by: hello"), "{ok}");
    assert!(
        ok.ends_with("\r\n\r\nhello"),
        "the upstream got the greeting: {ok}"
    );
    assert!(blocked.starts_with("HTTP/1.1 403"), "{blocked}");
    assert!(blocked.contains("blocked by hello"), "{blocked}");

    // The crate's own tests (unit tests natively, its .wasm in the binary's sandbox) are
    // examples/filters/hello's, which `cargo test --workspace` runs with the workspace's build;
    // host/tests/binary_only.rs runs a new crate's from scratch. That crate holds the same
    // sources as the one just written, and this one's manifest resolves with its test kit.
    let example = checkout().join("examples/filters/hello");
    for file in ["src/lib.rs", "tests/sandbox.rs"] {
        let written = std::fs::read_to_string(gw.join("hello").join(file)).unwrap();
        let committed = std::fs::read_to_string(example.join(file)).unwrap();
        assert!(
            written == committed,
            "examples/filters/hello/{file} is not what `wasmgate filter new hello` writes: \
             copy the new one there, and keep the starter rustfmt-clean (`cargo fmt` runs \
             over the copy)"
        );
    }
    let metadata = run(Command::new(env!("CARGO"))
        .current_dir(gw.join("hello"))
        .args(["metadata", "--format-version", "1"]));
    assert!(metadata.contains("\"wasmgate-test\""), "{metadata}");

    // 4. For many gateways: the same crate built and published to an OCI registry in one
    //    command; what it pushed is the component just installed.
    let registry = Registry::start(&dir.join("registry"));
    let mut push = wasmgate();
    push.current_dir(&dir).args([
        "filter",
        "push",
        "--manifest-path",
        "my-gateway/hello/Cargo.toml",
    ]);
    let manifest = registry.push(push, "filters/hello:1.0");
    let installed = std::fs::read(gw.join("filters/hello.wasm")).unwrap();
    let component = {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(&installed);
        format!(
            "sha256:{}",
            hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    let pushed = std::fs::read(registry.blob_file(&component))
        .expect("the registry holds the installed component's bytes");
    assert_eq!(pushed, installed);
    assert!(registry.blob_file(&manifest).is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
