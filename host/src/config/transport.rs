//! How the gateway talks to a service's instances: the HTTP version and, for `https://`
//! upstreams, the TLS settings (trusted roots, client certificate, verification). Built once
//! when the config is read, so a bad file rejects the config with its place, and shared by
//! every request to the service.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The HTTP version spoken to a service's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1, over TLS for `https://` upstreams (ALPN `http/1.1`).
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`); `https://` upstreams only.
    H2,
    /// HTTP/2 in cleartext with prior knowledge; `http://` upstreams only.
    H2c,
}

impl Protocol {
    /// The config spelling: `http1`, `h2` or `h2c`.
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "http1" => Some(Protocol::Http1),
            "h2" => Some(Protocol::H2),
            "h2c" => Some(Protocol::H2c),
            _ => None,
        }
    }
}

/// The TLS files and switches of one service, as written in the config (paths resolved).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles<'a> {
    /// PEM certificates trusted instead of the bundled web roots.
    pub ca_file: Option<&'a Path>,
    /// PEM certificate chain and key presented to the upstream (mutual TLS).
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// `false` turns certificate verification off (logged whenever the config is applied).
    pub verify: bool,
}

/// A service's transport: protocol and TLS client settings.
#[derive(Clone)]
pub struct Transport {
    pub protocol: Protocol,
    pub(crate) tls: Arc<ClientConfig>,
    /// Identifies the settings, so that pools survive reloads that change nothing.
    pub(crate) key: u64,
    /// Certificate verification is off.
    pub insecure: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("protocol", &self.protocol)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// Web roots, no client certificate, verification on.
static DEFAULT_TLS: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
    let roots = DEFAULT_TLS_ROOTS.clone();
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
});

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Transport {
    /// The transport for `protocol` with the default TLS settings.
    pub fn plain(protocol: Protocol) -> Transport {
        Transport {
            protocol,
            tls: DEFAULT_TLS.clone(),
            key: 0,
            insecure: false,
        }
    }

    /// Read the files and build the TLS settings; the error names the file and what is wrong
    /// with it.
    pub fn new(protocol: Protocol, files: &TlsFiles<'_>) -> Result<Transport, String> {
        if files.ca_file.is_none() && files.client_cert.is_none() && files.verify {
            return Ok(Transport::plain(protocol));
        }
        // Fixed keys: the same settings read again give the same key.
        let mut key = std::collections::hash_map::DefaultHasher::new();
        protocol.hash(&mut key);
        files.verify.hash(&mut key);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS settings: {e}"))?;
        let builder = if !files.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(
                    provider().signature_verification_algorithms,
                )))
        } else if let Some(ca) = files.ca_file {
            let certs = read_certificates(ca)?;
            certs.hash(&mut key);
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            builder.with_root_certificates(roots)
        } else {
            builder.with_root_certificates(DEFAULT_TLS_ROOTS.clone())
        };
        let config = match files.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key_file)) => {
                let chain = read_certificates(cert)?;
                chain.hash(&mut key);
                let private = PrivateKeyDer::from_pem_file(key_file)
                    .map_err(|e| format!("{}: {}", key_file.display(), pem_error(e)))?;
                private.secret_der().hash(&mut key);
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => format!(
                            "{} is not the key of the certificate in {}",
                            key_file.display(),
                            cert.display()
                        ),
                        other => format!("{}: {other}", key_file.display()),
                    })?
            }
        };
        Ok(Transport {
            protocol,
            tls: Arc::new(config),
            // Never 0, the default settings' key.
            key: key.finish() | 1,
            insecure: !files.verify,
        })
    }
}

static DEFAULT_TLS_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    Arc::new(RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
});

/// Every certificate in a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// `tls_verify = false`: any certificate is accepted; handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// What is wrong with a PEM file, in words.
pub(crate) fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}
