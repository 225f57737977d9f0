//! TLS termination: certificates and keys from PEM files, chosen per connection by SNI (exact
//! names before wildcards, the first certificate for anything else), TLS 1.2 and 1.3 only, ALPN
//! `h2` and `http/1.1`, and reloads that keep the previous certificates when new files are bad.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::pem_error;
use crate::config::{CertificateFiles, Place};

/// How often certificate files are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// The TLS settings every HTTPS connection starts from; swapped whole on reload.
pub type Acceptor = Arc<ArcSwap<ServerConfig>>;

/// A certificate that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the certificate's entry is in the config.
    pub place: Place,
    /// What is wrong, naming the file.
    pub reason: String,
}

/// One usable certificate.
#[derive(Debug)]
struct Loaded {
    /// Lower-case DNS names it is valid for (`*.example.com` for a wildcard).
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Read and check every certificate; the server settings when all are usable, else every
/// problem.
pub fn load(files: &[CertificateFiles]) -> Result<Arc<ServerConfig>, Vec<Problem>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match load_one(f, &provider, SystemTime::now()) {
            Ok(cert) => loaded.push(cert),
            Err(reason) => problems.push(Problem {
                place: f.place,
                reason,
            }),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| {
            vec![Problem {
                place: Place { line: 0, column: 0 },
                reason: format!("TLS settings: {e}"),
            }]
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni(loaded)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_one(
    files: &CertificateFiles,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Loaded, String> {
    let (cert_path, key_path) = (files.cert.display(), files.key.display());
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert_path}: {}", pem_error(e)))?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(format!("{cert_path}: no certificate in the file"));
    };
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{key_path}: {}", pem_error(e)))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{key_path} is not the key of the certificate in {cert_path}")
        }
        other => format!("{key_path}: {other}"),
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| format!("{cert_path}: not a valid certificate: {e}"))?;
    let validity = parsed.validity();
    let unix = |t: x509_parser::time::ASN1Time| t.timestamp();
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if unix(validity.not_after) < now {
        return Err(format!(
            "{cert_path}: the certificate expired on {}",
            validity.not_after
        ));
    }
    if unix(validity.not_before) > now {
        return Err(format!(
            "{cert_path}: the certificate is not valid before {}",
            validity.not_before
        ));
    }
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(Loaded {
        names,
        key: Arc::new(key),
    })
}

/// Picks the certificate for a connection by the name the client asked for.
#[derive(Debug)]
struct BySni(Vec<Loaded>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .map(str::to_ascii_lowercase)
            .and_then(|name| {
                let exact = self.0.iter().find(|c| c.names.contains(&name));
                exact.or_else(|| {
                    self.0
                        .iter()
                        .find(|c| c.names.iter().any(|n| wildcard_matches(n, &name)))
                })
            })
            .or(self.0.first());
        chosen.map(|c| c.key.clone())
    }
}

/// `*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    name.strip_suffix(suffix)
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

/// When the certificate files last changed, to notice new ones.
pub fn stamp(files: &[CertificateFiles]) -> Vec<Option<SystemTime>> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    files
        .iter()
        .flat_map(|f| [modified(&f.cert), modified(&f.key)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::wildcard_matches;

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        assert!(wildcard_matches("*.example.com", "a.example.com"));
        assert!(!wildcard_matches("*.example.com", "example.com"));
        assert!(!wildcard_matches("*.example.com", "a.b.example.com"));
        assert!(!wildcard_matches("a.example.com", "a.example.com"));
    }
}
