//! What the tests that run the binary as a user does share: an upstream, requests, commands,
//! an OCI registry.
// Each test binary uses its part.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers every request with 200 and the `x-greeting` header it received
/// as its body.
pub fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_one(conn));
        }
    });
    port
}

fn serve_one(conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut greeting = String::from("none");
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("x-greeting")
            {
                greeting = value.trim().to_string();
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{greeting}",
            greeting.len()
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// GET `path` from the gateway on `port`: the status line, headers and body as one string.
pub fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Serve `config` with `wasmgate` and wait until the gateway says it serves.
pub fn serve(mut wasmgate: Command, config: &Path) -> Child {
    let mut child = wasmgate
        .args(["serve", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("wasmgate serving") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the gateway did not start");
    child
}

/// A `docker-registry` process storing under `dir/storage`, on `port`; killed when dropped.
pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// `htpasswd` users, when the registry wants credentials.
    auth: Option<(String, String)>,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, free_port(), None)
    }

    pub fn start_with(dir: &Path, port: u16, auth: Option<(&str, &str)>) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: wasmgate-tests\n",
            dir.join("storage").display()
        );
        if let Some((user, password)) = auth {
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wasmgate-tests\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed (.ci/run installs Debian's docker-registry)");
        let registry = Registry {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `oci://127.0.0.1:PORT/<path>`
    pub fn oci(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.host())
    }

    /// Run `cmd` (`wasmgate filter push` and what to push: `--file` or `--manifest-path`)
    /// with `--plain-http oci://.../<path>` and the registry's credentials; the manifest digest
    /// it pins, from what it printed.
    pub fn push(&self, mut cmd: Command, path: &str) -> String {
        cmd.arg("--plain-http").arg(self.oci(path));
        if let Some((user, password)) = &self.auth {
            cmd.env("WASMGATE_REGISTRY_USERNAME", user)
                .env("WASMGATE_REGISTRY_PASSWORD", password);
        }
        let out = run(&mut cmd);
        let pinned = out
            .lines()
            .find_map(|l| l.strip_prefix("pin it in a route's filter: source = "))
            .unwrap_or_else(|| panic!("push printed no pin:\n{out}"));
        let digest = pinned
            .trim_matches('"')
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap();
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "{out}");
        digest
    }

    /// Point tag `to` of `team/tag` at the manifest tag `from` points at, uploading nothing
    /// (as `crane tag` does).
    pub fn retag(&self, from: &str, to: &str) {
        use std::io::{Read, Write};
        const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
        let exchange = |request: &[u8]| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
            s.write_all(request).unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).unwrap();
            answer
        };
        let answer = exchange(
            format!("GET /v2/team/tag/manifests/{from} HTTP/1.1\r\nhost: r\r\naccept: {OCI}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        );
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let manifest = &answer[split + 4..];
        let mut put = format!(
            "PUT /v2/team/tag/manifests/{to} HTTP/1.1\r\nhost: r\r\ncontent-type: {OCI}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            manifest.len()
        )
        .into_bytes();
        put.extend_from_slice(manifest);
        let answer = String::from_utf8_lossy(&exchange(&put)).to_string();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    }

    /// The file the registry keeps blob `digest` in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}
