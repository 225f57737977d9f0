//! Filters from an OCI registry, end to end: a real registry (Debian's `docker-registry`, the
//! CNCF distribution registry, started here on a free port), components pushed with
//! `wasmgate filter push`, and the `wasmgate` binary serving them as a user runs it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Registry, free_port, upstream};

/// `wasmgate filter push --file <built test filter>` to `oci://.../<path>`: the manifest
/// digest it pins.
fn push(registry: &Registry, built: &str, path: &str) -> String {
    let mut cmd = wasmgate();
    cmd.args(["filter", "push", "--file"])
        .arg(wasmgate_artifacts::filter(built));
    registry.push(cmd, path)
}

fn wasmgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmgate"));
    // No credentials but the ones a test gives.
    cmd.env_remove("WASMGATE_REGISTRY_USERNAME")
        .env_remove("WASMGATE_REGISTRY_PASSWORD")
        .env_remove("DOCKER_CONFIG")
        .env("HOME", std::env::temp_dir().join("wasmgate-no-home"));
    cmd
}

fn temp(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wasmgate-registry-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("filters")).unwrap();
    dir
}

/// A `wasmgate serve` process on a config in `dir` whose one route runs the filter `tag` from
/// `source`; its log lines are kept.
struct Gateway {
    child: Child,
    port: u16,
    admin: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    fn start(dir: &Path, registry: &str, source: &str, extra: &str) -> Gateway {
        Gateway::start_env(dir, registry, source, extra, &[])
    }

    fn start_env(
        dir: &Path,
        registry: &str,
        source: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let (port, admin) = (free_port(), free_port());
        let config = format!(
            r#"listen = "127.0.0.1:{port}"
filters_dir = "filters"
cache_dir = "cache"
access_log = {{ enabled = false }}
admin = {{ listen = "127.0.0.1:{admin}" }}

[registry]
plain_http = ["{registry}"]
poll_interval = "100ms"
timeout = "5s"
{extra}

[services.up]
upstreams = ["http://127.0.0.1:{}"]

[[routes]]
name = "tagged"
prefix = "/"
service = "up"
filters = [{{ name = "tag", source = "{source}" }}]
"#,
            upstream()
        );
        std::fs::write(dir.join("gateway.toml"), config).unwrap();
        let mut cmd = wasmgate();
        cmd.envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .args(["serve", "--config"])
            .arg(dir.join("gateway.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("wasmgate serving") {
                    let _ = tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the gateway did not start");
        Gateway {
            child,
            port,
            admin,
            log,
        }
    }

    /// Status and `x-filter-version` of a GET through the route.
    fn version(&self) -> (u16, String) {
        let answer = support::get(self.port, "/probe");
        (status(&answer), header(&answer, "x-filter-version"))
    }

    /// The admin endpoint's `/filters` entry for `tag`.
    fn filter(&self) -> serde_json::Value {
        let answer = support::get(self.admin, "/filters");
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let list: serde_json::Value = serde_json::from_str(body).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "tag")
            .cloned()
            .unwrap_or_else(|| panic!("no filter tag in {list}"))
    }

    fn ready(&self) -> (u16, String) {
        let answer = support::get(self.admin, "/ready");
        (status(&answer), answer)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn header(answer: &str, name: &str) -> String {
    answer
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Poll `check` every 20 ms until it holds, or panic after `limit` saying `what`.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SWAP: Duration = Duration::from_secs(10);

/// Pushed with the CLI, served by tag and by digest; the admin endpoint says which digest
/// serves; a restart takes the compiled component from the cache.
#[test]
fn a_pushed_filter_serves_by_tag_and_by_digest() {
    let dir = temp("serve");
    let registry = Registry::start(&dir.join("registry"));
    let v1 = push(&registry, "tag-v1", "team/tag:live");

    let gw = Gateway::start(&dir, &registry.host(), &registry.oci("team/tag:live"), "");
    assert_eq!(gw.version(), (200, "v1".to_string()));
    let f = gw.filter();
    assert_eq!(f["origin"], registry.oci("team/tag:live"));
    assert_eq!(f["digest"], v1);
    assert_eq!(f["source"], "compiled");
    drop(gw);

    // Pinned: the same digest, compiled once: the restart loads it from the compile cache.
    let pinned = format!("{}@{v1}", registry.oci("team/tag"));
    let gw = Gateway::start(&dir, &registry.host(), &pinned, "");
    assert_eq!(gw.version(), (200, "v1".to_string()));
    let f = gw.filter();
    assert_eq!(
        (f["digest"].as_str(), f["source"].as_str()),
        (Some(v1.as_str()), Some("cache"))
    );
}

/// The tag moves ten times while eight clients send requests: every move serves within the
/// bound and no request fails. A pinned digest never moves.
#[test]
fn a_moving_tag_swaps_under_load_and_a_pinned_digest_stays() {
    let dir = temp("moves");
    let registry = Registry::start(&dir.join("registry"));
    let v1 = push(&registry, "tag-v1", "team/tag:live");
    let gw = Gateway::start(&dir, &registry.host(), &registry.oci("team/tag:live"), "");
    assert_eq!(gw.version(), (200, "v1".to_string()));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed, port) = (stop.clone(), ok.clone(), failed.clone(), gw.port);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let answer = support::get(port, "/load");
                    let version = header(&answer, "x-filter-version");
                    if status(&answer) == 200 && (version == "v1" || version == "v2") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed under load: {answer}");
                    }
                }
            })
        })
        .collect();

    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let (built, expected) = if i % 2 == 0 {
            ("tag-v2", "v2")
        } else {
            ("tag-v1", "v1")
        };
        let pushed = Instant::now();
        push(&registry, built, "team/tag:live");
        eventually(SWAP, &format!("move {i} to {expected}"), || {
            gw.version().1 == expected
        });
        worst = worst.max(pushed.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "10 tag moves: push-to-serving worst {worst:?}; under load {ok} requests ok, {failed} failed"
    );
    assert_eq!(failed, 0, "requests failed while the tag moved");
    assert!(ok > 200, "the load was too light to mean anything: {ok}");
    assert_eq!(
        gw.filter()["source"],
        "cache",
        "v1 came back from the compile cache"
    );
    drop(gw);

    // Pinned to v1: pushing v2 over the tag changes nothing.
    let pinned = format!("{}@{v1}", registry.oci("team/tag"));
    let gw = Gateway::start(&dir, &registry.host(), &pinned, "");
    push(&registry, "tag-v2", "team/tag:live");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gw.version(), (200, "v1".to_string()));
}

/// Two replicas, each with its own cache, follow one tag: one push reaches both.
#[test]
fn replicas_following_a_tag_all_take_the_pushed_version() {
    let dir = temp("replicas");
    let registry = Registry::start(&dir.join("registry"));
    push(&registry, "tag-v1", "team/tag:live");
    let source = registry.oci("team/tag:live");
    let replicas: Vec<Gateway> = ["a", "b"]
        .iter()
        .map(|name| {
            Gateway::start(
                &temp(&format!("replica-{name}")),
                &registry.host(),
                &source,
                "",
            )
        })
        .collect();
    for gw in &replicas {
        assert_eq!(gw.version(), (200, "v1".to_string()));
    }
    let v2 = push(&registry, "tag-v2", "team/tag:live");
    for gw in &replicas {
        eventually(SWAP, "every replica to serve v2", || gw.version().1 == "v2");
        assert_eq!(gw.filter()["digest"], v2);
    }
}

/// A registry that accepts connections and never answers holds up no config reload: polls
/// ask registries without holding what reloads need.
#[test]
fn a_silent_registry_does_not_hold_up_config_reloads() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let dir = temp("silent");
    // Startup waits for the first pull's timeout, 5 s (the route then answers 503).
    let gw = Gateway::start(&dir, &host, &format!("oci://{host}/team/tag:live"), "");
    assert_eq!(gw.version().0, 503);
    let config = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    let added = format!(
        "{}\n[[routes]]\nname = \"other\"\nprefix = \"/other\"\nservice = \"up\"\n",
        config.replace("prefix = \"/\"", "prefix = \"/probe\"")
    );
    // Polls run every 100 ms and each waits 5 s for the silent registry.
    std::thread::sleep(Duration::from_millis(300));
    let edited = Instant::now();
    std::fs::write(dir.join(".gateway.toml.tmp"), added).unwrap();
    std::fs::rename(dir.join(".gateway.toml.tmp"), dir.join("gateway.toml")).unwrap();
    eventually(
        Duration::from_secs(3),
        "the reload while a poll waits",
        || status(&support::get(gw.port, "/other")) == 200,
    );
    eprintln!(
        "config reload with a poll waiting on a silent registry: {:?}",
        edited.elapsed()
    );
    assert_eq!(
        gw.version().0,
        503,
        "the filtered route still has no filter"
    );
}

/// A registry that serves bytes other than the digest says (storage tampered with, or
/// something in between) is refused before anything compiles, and the route answers 503; a
/// tag moved onto such a component leaves the serving version in place.
#[test]
fn a_digest_mismatch_is_refused() {
    let dir = temp("mismatch");
    let registry = Registry::start(&dir.join("registry"));
    let v1 = push(&registry, "tag-v1", "team/tag:good");
    let v2_manifest = push(&registry, "tag-v2", "team/tag:bad");
    let gw = Gateway::start(&dir, &registry.host(), &registry.oci("team/tag:good"), "");
    assert_eq!(gw.version(), (200, "v1".to_string()));
    drop(gw);

    // One byte of v2's component, as the registry stores it, flipped.
    let v2_component =
        wasmgate_digest(&std::fs::read(wasmgate_artifacts::filter("tag-v2")).unwrap());
    let stored = registry.blob_file(&v2_component);
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();

    let fresh = temp("mismatch-fresh");
    let pinned = format!("{}@{v2_manifest}", registry.oci("team/tag"));
    let gw = Gateway::start(&fresh, &registry.host(), &pinned, "");
    let (status, _) = gw.version();
    assert_eq!(status, 503, "nothing serves a refused component");
    let f = gw.filter();
    let reason = f["rejected"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("digest mismatch") && reason.contains(&v2_component),
        "{f}"
    );
    assert_eq!(gw.ready().0, 503);
    assert!(gw.log().contains("digest mismatch"), "{}", gw.log());
    drop(gw);

    // Serving v1 by tag; the tag moves to the tampered component: v1 keeps serving.
    let gw = Gateway::start(&dir, &registry.host(), &registry.oci("team/tag:good"), "");
    assert_eq!(gw.filter()["digest"], v1);
    registry.retag("bad", "good");
    eventually(SWAP, "the refused pull to be logged", || {
        gw.log().contains("digest mismatch")
    });
    assert_eq!(gw.version(), (200, "v1".to_string()));
    assert_eq!(gw.filter()["digest"], v1);
}

/// The registry goes away: the loaded version keeps serving, and a moved tag is picked up when
/// it is back. Restarted while it is away, the gateway serves a pinned digest from its store;
/// a tag (or a digest never pulled) is a clear error and the gateway is not ready until the
/// registry answers.
#[test]
fn a_killed_registry_leaves_the_loaded_version_serving() {
    let dir = temp("killed");
    let registry_dir = dir.join("registry");
    let mut registry = Registry::start(&registry_dir);
    let port = registry.port;
    let v1 = push(&registry, "tag-v1", "team/tag:live");
    let gw = Gateway::start(&dir, &registry.host(), &registry.oci("team/tag:live"), "");
    assert_eq!(gw.version(), (200, "v1".to_string()));

    registry.kill();
    eventually(SWAP, "the failed poll to be said", || {
        gw.filter()["pull_failing"] == true
    });
    for _ in 0..20 {
        assert_eq!(gw.version(), (200, "v1".to_string()));
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(gw.ready().0, 200, "a serving version is ready");
    let warned = gw.log();
    assert_eq!(
        warned.matches("keeps serving").count(),
        1,
        "said once, not at every poll:\n{warned}"
    );

    let registry = Registry::start_with(&registry_dir, port, None);
    push(&registry, "tag-v2", "team/tag:live");
    eventually(
        SWAP,
        "the moved tag to serve once the registry is back",
        || gw.version().1 == "v2",
    );
    assert_eq!(gw.filter()["pull_failing"], false);
    drop(gw);
    drop(registry);

    // Registry down, restarted gateway: the pinned digest comes from the store.
    let pinned = format!("oci://127.0.0.1:{port}/team/tag@{v1}");
    let host = format!("127.0.0.1:{port}");
    let gw = Gateway::start(&dir, &host, &pinned, "");
    assert_eq!(gw.version(), (200, "v1".to_string()));
    drop(gw);

    // A tag, or a digest never pulled here: a clear error, not ready, retried.
    let fresh = temp("killed-fresh");
    let gw = Gateway::start(
        &fresh,
        &host,
        &format!("oci://127.0.0.1:{port}/team/tag:live"),
        "",
    );
    assert_eq!(gw.version().0, 503);
    let (ready, answer) = gw.ready();
    assert_eq!(ready, 503, "{answer}");
    let reason = gw.filter()["rejected"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains(&format!("oci://127.0.0.1:{port}/team/tag:live"))
            && reason.contains("cannot resolve the tag"),
        "{reason}"
    );
    assert!(gw.log().contains("filter not loaded"), "{}", gw.log());
    let registry = Registry::start_with(&registry_dir, port, None);
    eventually(SWAP, "the filter to load once the registry answers", || {
        gw.version().0 == 200
    });
    assert_eq!(gw.ready().0, 200);
    drop(registry);
}

/// A registry that wants credentials: from a Docker-style config.json, or the environment;
/// without them the pull is refused with the registry's reason; no secret reaches the log.
#[test]
fn credentials_come_from_a_docker_config_or_the_environment_and_are_never_logged() {
    use base64::Engine as _;
    let dir = temp("auth");
    let password = "s3cret-pw-7f1c";
    let registry = Registry::start_with(&dir.join("registry"), free_port(), Some(("ci", password)));
    push(&registry, "tag-v1", "team/tag:live");
    let source = registry.oci("team/tag:live");

    // No credentials: refused, with the registry's reason.
    let gw = Gateway::start(&dir, &registry.host(), &source, "");
    assert_eq!(gw.version().0, 503);
    let reason = gw.filter()["rejected"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(reason.contains("not authorized"), "{reason}");
    drop(gw);

    // A Docker config.json beside the config.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{password}"));
    std::fs::write(
        dir.join("docker.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let gw = Gateway::start(
        &dir,
        &registry.host(),
        &source,
        "auth_file = \"docker.json\"",
    );
    assert_eq!(gw.version(), (200, "v1".to_string()));
    let log = gw.log();
    assert!(!log.contains(password) && !log.contains(&auth), "{log}");
    drop(gw);

    // The environment.
    let fresh = temp("auth-env");
    let gw = Gateway::start_env(
        &fresh,
        &registry.host(),
        &source,
        "",
        &[
            ("WASMGATE_REGISTRY_USERNAME", "ci"),
            ("WASMGATE_REGISTRY_PASSWORD", password),
        ],
    );
    assert_eq!(gw.version(), (200, "v1".to_string()));
    assert!(!gw.log().contains(password));
}

/// `sha256:<hex>` of `bytes`, as registries name blobs.
fn wasmgate_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}
