//! A filter author with nothing but the installed binary: a copy of `wasmgate` in a directory
//! of its own, `HOME` and `CARGO_HOME` fresh, the environment cleared but for the Rust
//! toolchain on `PATH`, and no path into this repository. `wasmgate filter new`, the new
//! crate's first `cargo test` (cold: the registry's index and every third-party crate
//! downloaded; timed against issue 36's 90 seconds), `wasmgate filter build --install`,
//! `wasmgate filter add rate-limit`, the starter config's comment followed as written, then
//! both filters serving real requests.
//!
//! One test in its own binary, so nothing else of `cargo test` runs beside the timed build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::{free_port, get, run, serve, upstream};

/// The bound on a new crate's first `cargo test`.
const FIRST_TEST_WITHIN: Duration = Duration::from_secs(90);

struct User {
    /// Holds the installed `wasmgate`.
    bin: PathBuf,
    home: PathBuf,
    cargo_home: PathBuf,
    /// The Rust toolchain's `bin` (the `cargo` running this test lives there).
    toolchain: PathBuf,
}

impl User {
    fn command(&self, program: &str, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd)
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:{}:/usr/local/bin:/usr/bin:/bin",
                    self.bin.display(),
                    self.toolchain.display()
                ),
            )
            .env("HOME", &self.home)
            .env("CARGO_HOME", &self.cargo_home);
        cmd
    }

    fn wasmgate(&self, cwd: &Path) -> Command {
        self.command(self.bin.join("wasmgate").to_str().unwrap(), cwd)
    }
}

#[test]
fn a_new_filter_tests_builds_and_serves_with_only_the_binary() {
    let root = std::env::temp_dir().join(format!("wasmgate-binary-only-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let user = User {
        bin: root.join("bin"),
        home: root.join("home"),
        cargo_home: root.join("cargo-home"),
        toolchain: Path::new(&std::env::var("CARGO").unwrap())
            .parent()
            .unwrap()
            .to_path_buf(),
    };
    let work = root.join("work");
    for dir in [&user.bin, &user.home, &user.cargo_home, &work] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_wasmgate"), user.bin.join("wasmgate")).unwrap();
    let (listen, admin, upstream) = (free_port(), free_port(), upstream());

    // A gateway directory, and a filter crate beside it.
    run(user
        .wasmgate(&work)
        .args(["init", "gw"])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &format!("http://127.0.0.1:{upstream}")]));
    run(user.wasmgate(&work).args(["filter", "new", "hello"]));
    let manifest = std::fs::read_to_string(work.join("hello/Cargo.toml")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert!(
        !manifest.contains(repo.to_str().unwrap()),
        "the crate points into the checkout:\n{manifest}"
    );

    // Its first `cargo test`: unit tests natively, sandbox tests running the .wasm in the
    // binary's sandbox.
    let started = Instant::now();
    let tested = run(user.command("cargo", &work.join("hello")).arg("test"));
    let took = started.elapsed();
    eprintln!("first `cargo test` of a new filter crate, cold: {took:.1?}");
    assert!(
        tested.contains("Running tests/sandbox.rs"),
        "no sandbox tests ran:\n{tested}"
    );
    assert!(
        !tested.contains("test result: FAILED") && !tested.contains(" 0 passed"),
        "{tested}"
    );
    assert!(
        took < FIRST_TEST_WITHIN,
        "the first cargo test took {took:.1?}, over {FIRST_TEST_WITHIN:?}"
    );

    // Build and install it; add a bundled filter; follow the starter config's comment.
    let built = run(user.wasmgate(&work.join("hello")).args([
        "filter",
        "build",
        "--install",
        "../gw/filters",
    ]));
    assert!(built.contains("installed"), "{built}");
    let gw = work.join("gw");
    let config = std::fs::read_to_string(gw.join("gateway.toml")).unwrap();
    let command = "wasmgate filter add rate-limit --install filters";
    assert!(
        config.contains("`wasmgate filter add rate-limit\n# --install filters`"),
        "the starter config no longer says `{command}`:\n{config}"
    );
    let added =
        run(user
            .wasmgate(&gw)
            .args(["filter", "add", "rate-limit", "--install", "filters"]));
    assert!(added.contains("installed"), "{added}");
    let mut uncommented: String = config
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("[[routes.filters]]")
                    || rest.starts_with("name = ")
                    || rest.starts_with("config = ") =>
            {
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    uncommented.push_str("\n[[routes.filters]]\nname = \"hello\"\n");
    std::fs::write(gw.join("gateway.toml"), uncommented).unwrap();
    let checked = run(user
        .wasmgate(&gw)
        .args(["check", "--config", "gateway.toml"]));
    assert!(checked.contains("ok (1 routes, 2 filters)"), "{checked}");

    // Both serve: hello greets the upstream, rate-limit refuses past 10 a second.
    let mut gateway = serve(user.wasmgate(&gw), &gw.join("gateway.toml"));
    let answers: Vec<String> = (0..25).map(|_| get(listen, "/users")).collect();
    let _ = gateway.kill();
    let _ = gateway.wait();
    assert!(answers[0].starts_with("HTTP/1.1 200"), "{}", answers[0]);
    assert!(
        answers[0].ends_with("\r\n\r\nhello from hello"),
        "the upstream got the greeting: {}",
        answers[0]
    );
    let limited = answers
        .iter()
        .find(|a| a.starts_with("HTTP/1.1 429"))
        .unwrap_or_else(|| panic!("no request of 25 was limited: {answers:?}"));
    assert!(limited.contains("ratelimit-policy"), "{limited}");
    let _ = std::fs::remove_dir_all(&root);
}
