//! HTTPS: certificates chosen by SNI (exact, wildcard, default), ALPN h2 and http/1.1, files
//! reloaded when they change (a bad new file keeps the old certificate serving), the plaintext
//! redirect, and `check` naming unusable certificates. Certificates are made here with rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use wasmgate_tests::{TestGateway, Upstream, eventually, temp_dir};

/// A CA that signs the test certificates.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A leaf for `names`, written as `<dir>/<file>.pem` and `.key`; the two paths.
    pub(crate) fn leaf(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    pub(crate) fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate as PEM, for a `ca_file`.
    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }
}

fn entry((cert, key): &(PathBuf, PathBuf)) -> String {
    format!(
        "{{ cert = {:?}, key = {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What an HTTPS request saw.
struct Answer {
    version: Version,
    status: u16,
    body: Bytes,
}

/// GET `path` over TLS with SNI `name`, trusting `ca`, offering `alpn`.
async fn get(
    addr: std::net::SocketAddr,
    name: &str,
    ca: &Ca,
    alpn: &[&[u8]],
    path: &str,
) -> Result<Answer, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let uri = format!("https://{name}{path}");
    let req = Request::get(uri.as_str())
        .header("host", name)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = wasmgate_tests::send_over_tls(addr, name, roots, alpn, req).await?;
    let (version, status) = (resp.version(), resp.status().as_u16());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok(Answer {
        version,
        status,
        body,
    })
}

async fn gateway(up: &Upstream, tls: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[tls]
{tls}

[services.svc]
upstreams = ["{}"]

[[routes]]
name = "all"
prefix = "/"
service = "svc"
"#,
        up.url()
    ))
    .await
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_both_protocols_are_offered() {
    let dir = temp_dir("tls-sni");
    let ca = Ca::new();
    let default = ca.leaf(&dir, "default", &["default.test"], false);
    let exact = ca.leaf(&dir, "a", &["a.test"], false);
    let wild = ca.leaf(&dir, "wild", &["*.wild.test"], false);
    let up = Upstream::start("svc").await;
    let gw = gateway(
        &up,
        &format!(
            "listen = \"127.0.0.1:0\"\ncertificates = [{}, {}, {}]",
            entry(&default),
            entry(&exact),
            entry(&wild)
        ),
    )
    .await;
    let addr = gw.running.tls_addr.expect("an HTTPS listener");

    // The client verifies the name: each handshake succeeds only with the right certificate.
    for name in ["a.test", "x.wild.test", "default.test"] {
        let r = get(addr, name, &ca, &[b"http/1.1"], "/who").await.unwrap();
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.version, Version::HTTP_11);
        let seen: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https", "{name}");
    }
    // No certificate covers it: the default is offered, and the client refuses it.
    let err = get(addr, "other.test", &ca, &[b"http/1.1"], "/")
        .await
        .err();
    assert!(
        err.is_some_and(|e| e.contains("handshake")),
        "a name no certificate covers"
    );
    let err = get(addr, "a.b.wild.test", &ca, &[b"http/1.1"], "/")
        .await
        .err();
    assert!(err.is_some(), "a wildcard covers one label only");

    let h2 = get(addr, "a.test", &ca, &[b"h2", b"http/1.1"], "/h2")
        .await
        .unwrap();
    assert_eq!((h2.version, h2.status), (Version::HTTP_2, 200));

    // Plain HTTP keeps working beside it.
    assert_eq!(gw.get("/plain").await.status, 200);
}

#[tokio::test]
async fn changed_certificate_files_are_picked_up_and_bad_ones_keep_the_old() {
    let dir = temp_dir("tls-reload");
    let ca = Ca::new();
    let files = ca.leaf(&dir, "site", &["old.test"], false);
    let up = Upstream::start("svc").await;
    let gw = gateway(
        &up,
        &format!(
            "listen = \"127.0.0.1:0\"\ncertificates = [{}]",
            entry(&files)
        ),
    )
    .await;
    let addr = gw.running.tls_addr.unwrap();
    assert!(get(addr, "old.test", &ca, &[], "/").await.is_ok());

    // A renewed certificate for another name, written in place.
    let renewed = ca.leaf(&dir, "renewed", &["new.test"], false);
    std::fs::copy(&renewed.0, &files.0).unwrap();
    std::fs::copy(&renewed.1, &files.1).unwrap();
    eventually(
        Duration::from_secs(10),
        "the new certificate serves",
        || async {
            get(addr, "new.test", &ca, &[], "/")
                .await
                .ok()
                .map(|r| r.status)
        },
    )
    .await;

    // A broken file: refused, and the certificate before it keeps serving.
    std::fs::write(&files.0, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = get(addr, "new.test", &ca, &[], "/").await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn plain_http_can_redirect_to_https() {
    let dir = temp_dir("tls-redirect");
    let ca = Ca::new();
    let files = ca.leaf(&dir, "site", &["site.test"], false);
    let port = free_port();
    let up = Upstream::start("svc").await;
    let gw = gateway(
        &up,
        &format!(
            "listen = \"127.0.0.1:{port}\"\nredirect_http = true\ncertificates = [{}]",
            entry(&files)
        ),
    )
    .await;
    let r = gw
        .request("GET", "/path?q=1", &[("host", "site.test:8080")], "")
        .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://site.test:{port}/path?q=1").as_str())
    );
    assert_eq!(up.hits(), 0);
    let https = get(gw.running.tls_addr.unwrap(), "site.test", &ca, &[], "/path").await;
    assert_eq!(https.unwrap().status, 200);
}

#[tokio::test]
async fn check_names_expired_and_mismatched_certificates() {
    let dir = temp_dir("tls-check");
    let ca = Ca::new();
    let expired = ca.leaf(&dir, "expired", &["old.test"], true);
    let one = ca.leaf(&dir, "one", &["one.test"], false);
    let two = ca.leaf(&dir, "two", &["two.test"], false);
    let mismatched = (one.0.clone(), two.1.clone());
    let missing = (dir.join("missing.pem"), two.1.clone());
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nlisten = \"127.0.0.1:8443\"\ncertificates = [\n  {},\n  {},\n  {},\n  {},\n]\n",
            entry(&expired),
            entry(&mismatched),
            entry(&missing),
            entry(&one)
        ),
    )
    .unwrap();
    let report = wasmgate::check(&config, None).await.unwrap();
    let problems = report.problems.join("\n");
    assert_eq!(report.problems.len(), 3, "{problems}");
    assert!(
        problems.contains(":4:3: tls:") && problems.contains("expired on"),
        "{problems}"
    );
    assert!(
        problems.contains(":5:3: tls:") && problems.contains("is not the key of the certificate"),
        "{problems}"
    );
    assert!(
        problems.contains(":6:3: tls:") && problems.contains("missing.pem: cannot read"),
        "{problems}"
    );
}

/// A config reload that lists other certificate files serves them without a restart; one that
/// lists an unusable file is rejected and the serving certificates stay.
#[tokio::test]
async fn a_config_reload_may_list_other_certificates() {
    let dir = temp_dir("tls-config-reload");
    let ca = Ca::new();
    let first = ca.leaf(&dir, "first", &["first.test"], false);
    let second = ca.leaf(&dir, "second", &["second.test"], false);
    let up = Upstream::start("svc").await;
    let body = |certs: &str| {
        format!(
            "\n[tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{certs}]\n\n[services.svc]\nupstreams = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nservice = \"svc\"\n",
            up.url()
        )
    };
    let fg = wasmgate_tests::FileGateway::start(dir.clone(), &body(&entry(&first)), &[]).await;
    let addr = fg.gw.running.tls_addr.unwrap();
    assert!(get(addr, "first.test", &ca, &[], "/").await.is_ok());

    fg.write_config(&body(&format!("{}, {}", entry(&first), entry(&second))));
    eventually(
        Duration::from_secs(10),
        "the listed certificate serves",
        || async {
            get(addr, "second.test", &ca, &[], "/")
                .await
                .ok()
                .map(|r| r.status)
        },
    )
    .await;

    let missing = (dir.join("missing.pem"), second.1.clone());
    fg.write_config(&body(&entry(&missing)));
    eventually(
        Duration::from_secs(10),
        "the reload is rejected",
        || async {
            let config = fg.gw.admin("/config").await;
            let rejected = config["rejected"]["errors"].to_string();
            rejected.contains("missing.pem").then_some(rejected)
        },
    )
    .await;
    tokio::time::sleep(tls_poll()).await;
    for name in ["first.test", "second.test"] {
        let r = get(addr, name, &ca, &[], "/").await.unwrap();
        assert_eq!(r.status, 200, "{name}");
    }
}

/// A little over the certificate poll interval.
fn tls_poll() -> Duration {
    Duration::from_millis(2500)
}
