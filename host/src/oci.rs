//! Filters in OCI registries: pulling a route's `source = "oci://..."` (by tag or pinned
//! digest, verified before it is compiled, kept in a content-addressed store beside the compile
//! cache) and pushing a built component (`wasmgate filter push`).
//!
//! A component is stored as a Wasm OCI artifact, as `wkg` and the CNCF Wasm OCI artifact
//! layout have it: one layer of media type `application/wasm` and a small config of media
//! type `application/vnd.wasm.config.v0+json`. Layers of media type
//! `application/vnd.wasm.content.layer.v1+wasm` (the older `wasm-to-oci` layout) are accepted
//! too.
//!
//! Nothing a pull or push says (logs, errors) carries credentials: they are read from the
//! environment or a Docker-style `config.json` when a pull starts, and handed to the client only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config as BlobConfig, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;

use crate::config::{FilterSource, RegistryConfig};

/// The layer media type pushed, and the first one looked for.
pub const WASM_LAYER: &str = "application/wasm";
/// The older layer media type, accepted on pull.
const WASM_LAYER_V1: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// The config media type pushed.
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Manifest media types accepted on pull.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Largest manifest accepted.
const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// A component pulled and verified.
#[derive(Debug)]
pub struct Pulled {
    /// The manifest's digest (`sha256:...`): what a tag pointed at.
    pub manifest: String,
    /// The component's bytes; their SHA-256 is the layer's digest.
    pub bytes: Vec<u8>,
    /// Whether both came from the local store (no registry was asked).
    pub from_store: bool,
}

/// Pulls components from registries. One per `[registry]` setting.
pub struct Puller {
    client: Client,
    settings: RegistryConfig,
    /// `<cache_dir>/oci`: manifests and components by digest, so that a pinned digest loads
    /// without the registry and a tag moving back costs no download.
    store: Option<PathBuf>,
}

impl Puller {
    /// A puller for `settings`, storing what it pulls under `cache_dir`.
    pub fn new(settings: &RegistryConfig, cache_dir: Option<&Path>) -> Puller {
        Puller {
            client: client(settings),
            settings: settings.clone(),
            store: cache_dir.map(|d| d.join("oci")),
        }
    }

    /// Whether this puller was made for `settings` and `cache_dir`.
    pub fn is_for(&self, settings: &RegistryConfig, cache_dir: Option<&Path>) -> bool {
        self.settings == *settings && self.store == cache_dir.map(|d| d.join("oci"))
    }

    /// Pull `source` unless its digest is `serving` (the manifest digest of the version
    /// serving now): `None` then. A pinned digest found in the store is not asked for; a tag
    /// is resolved at the registry every time.
    pub async fn pull(
        &self,
        source: &FilterSource,
        serving: Option<&str>,
    ) -> Result<Option<Pulled>, String> {
        if let Some(digest) = &source.digest {
            if serving == Some(digest.as_str()) {
                return Ok(None);
            }
            if let Some(pulled) = self.stored(digest) {
                return Ok(Some(pulled));
            }
        }
        let limit = self.settings.timeout;
        match tokio::time::timeout(limit, self.pull_remote(source, serving)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{}: no answer from the registry within {} ([registry] timeout)",
                source.text,
                humantime::format_duration(limit)
            )),
        }
    }

    async fn pull_remote(
        &self,
        source: &FilterSource,
        serving: Option<&str>,
    ) -> Result<Option<Pulled>, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", source.text);
        let reference: Reference = source
            .reference()
            .parse()
            .map_err(|e| fail("not a reference", &e))?;
        let auth = credentials(&self.settings, &source.registry)?;
        let digest = match &source.digest {
            Some(digest) => digest.clone(),
            None => {
                let digest = self
                    .client
                    .fetch_manifest_digest(&reference, &auth)
                    .await
                    .map_err(|e| fail("cannot resolve the tag", &chain(&e)))?;
                if serving == Some(digest.as_str()) {
                    return Ok(None);
                }
                if let Some(pulled) = self.stored(&digest) {
                    return Ok(Some(pulled));
                }
                digest
            }
        };
        let by_digest = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            digest.clone(),
        );
        let (manifest_bytes, _) = self
            .client
            .pull_manifest_raw(&by_digest, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| fail("cannot pull the manifest", &chain(&e)))?;
        if manifest_bytes.len() > MAX_MANIFEST_BYTES {
            return Err(fail("manifest too large", &manifest_bytes.len()));
        }
        verify(&manifest_bytes, &digest).map_err(|e| fail("manifest refused", &e))?;
        let layer = wasm_layer(&manifest_bytes).map_err(|e| fail("not a Wasm component", &e))?;
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > self.settings.max_component_bytes {
            return Err(format!(
                "{}: the component is {size} bytes, over [registry] max_component_bytes ({})",
                source.text, self.settings.max_component_bytes
            ));
        }
        let bytes = match self.read_store(&layer.digest) {
            Some(bytes) => bytes,
            None => {
                let mut stream = self
                    .client
                    .pull_blob_stream(&by_digest, &layer)
                    .await
                    .map_err(|e| fail("cannot pull the component", &chain(&e)))?;
                let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| {
                        // oci-client checks the registry's Docker-Content-Digest as it streams.
                        if e.to_string().to_lowercase().contains("digest") {
                            fail("component refused: digest mismatch", &e)
                        } else {
                            fail("cannot pull the component", &e)
                        }
                    })?;
                    if bytes.len() + chunk.len() > usize::try_from(size).unwrap_or(usize::MAX) {
                        return Err(fail(
                            "component refused",
                            &format!("more bytes than the {size} its manifest gives"),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                verify(&bytes, &layer.digest).map_err(|e| fail("component refused", &e))?;
                self.write_store(&layer.digest, &bytes);
                bytes
            }
        };
        self.write_store(&digest, &manifest_bytes);
        Ok(Some(Pulled {
            manifest: digest,
            bytes,
            from_store: false,
        }))
    }

    /// Manifest `digest` and its component from the store, both verified again.
    fn stored(&self, digest: &str) -> Option<Pulled> {
        let manifest = self.read_store(digest)?;
        let layer = wasm_layer(&manifest).ok()?;
        let bytes = self.read_store(&layer.digest)?;
        Some(Pulled {
            manifest: digest.to_string(),
            bytes,
            from_store: true,
        })
    }

    /// The stored blob `digest`, when it is there and hashes to it (one that does not is
    /// removed).
    fn read_store(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.store_path(digest)?;
        let bytes = std::fs::read(&path).ok()?;
        if verify(&bytes, digest).is_ok() {
            Some(bytes)
        } else {
            tracing::warn!(file = %path.display(), "stored OCI blob does not match its digest; removed");
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Store blob `digest` (best effort: a failure costs a download later, nothing else).
    fn write_store(&self, digest: &str, bytes: &[u8]) {
        let Some(path) = self.store_path(digest) else {
            return;
        };
        if path.exists() {
            // Touched, so that pruning keeps what is still in use.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(file = %path.display(), "cannot store a pulled OCI blob: {e}");
        }
    }

    fn store_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.store.as_ref()?.join("sha256").join(hex))
    }

    /// Keep the store bounded: the blobs of `serving` (the hex digests of the manifests serving
    /// now and of their components) and the [`STORE_KEEP`] most recently used others.
    pub fn prune(&self, serving: &[&str]) {
        let Some(dir) = self.store.as_ref().map(|s| s.join("sha256")) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| !serving.contains(&n))
            })
            .map(|e| {
                let used = e.metadata().and_then(|m| m.modified());
                (used.unwrap_or(std::time::SystemTime::UNIX_EPOCH), e.path())
            })
            .collect();
        others.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        for (_, path) in others.into_iter().skip(STORE_KEEP) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Blobs kept in the store beyond the serving ones.
const STORE_KEEP: usize = 16;

/// What `push` did.
pub struct Pushed {
    /// The manifest's digest: `oci://REGISTRY/REPOSITORY@<digest>` pins what was pushed.
    pub manifest: String,
    /// The component's digest (its SHA-256, as the gateway reports a filter's version).
    pub component: String,
}

/// Push `component` to `target` (which names a tag) as a Wasm OCI artifact.
pub async fn push(
    settings: &RegistryConfig,
    target: &FilterSource,
    component: Vec<u8>,
) -> Result<Pushed, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", target.text);
    if target.tag.is_none() || target.digest.is_some() {
        return Err(format!(
            "{}: push to a tag (oci://REGISTRY/REPOSITORY:TAG); the digest is what the push prints",
            target.text
        ));
    }
    let reference: Reference = target
        .reference()
        .parse()
        .map_err(|e| fail("not a reference", &e))?;
    let auth = credentials(settings, &target.registry)?;
    let client = client(settings);
    client
        .auth(&reference, &auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| fail("cannot log in", &chain(&e)))?;
    let component_digest = sha256(&component);
    let config = serde_json::json!({
        "created": httpdate::fmt_http_date(std::time::SystemTime::now()),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [component_digest],
        "component": { "target": format!("wasmgate:filter@{}", wasmgate_sandbox::WIT_VERSION) },
    });
    let config = BlobConfig::new(
        serde_json::to_vec(&config).expect("JSON"),
        WASM_CONFIG.to_string(),
        None,
    );
    let layer = ImageLayer::new(component, WASM_LAYER.to_string(), None);
    let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    manifest.media_type = Some(MANIFEST_TYPES[0].to_string());
    manifest.artifact_type = Some(WASM_CONFIG.to_string());
    client
        .push_blob(&reference, layer.data.clone(), &component_digest)
        .await
        .map_err(|e| fail("cannot push the component", &chain(&e)))?;
    client
        .push_blob(&reference, config.data.clone(), &manifest.config.digest)
        .await
        .map_err(|e| fail("cannot push the config", &chain(&e)))?;
    let body = serde_json::to_vec(&manifest).expect("JSON");
    let manifest_digest = sha256(&body);
    client
        .push_manifest_raw(
            &reference,
            body,
            http::HeaderValue::from_static(MANIFEST_TYPES[0]),
        )
        .await
        .map_err(|e| fail("cannot push the manifest", &chain(&e)))?;
    Ok(Pushed {
        manifest: manifest_digest,
        component: component_digest,
    })
}

fn client(settings: &RegistryConfig) -> Client {
    // reqwest's rustls takes the process's provider; the gateway's TLS uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: if settings.plain_http.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(settings.plain_http.clone())
        },
        connect_timeout: Some(settings.timeout.min(Duration::from_secs(5))),
        read_timeout: Some(settings.timeout),
        user_agent: concat!("wasmgate/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    })
}

/// `sha256:<hex>` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", wasmgate_sandbox::content_hash(bytes))
}

/// `bytes` hash to `digest`, or why not.
fn verify(bytes: &[u8], digest: &str) -> Result<(), String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!("digest {digest:?} is not sha256"));
    };
    let actual = sha2::Sha256::digest(bytes);
    let actual: String = actual.iter().map(|b| format!("{b:02x}")).collect();
    if actual == hex {
        Ok(())
    } else {
        Err(format!(
            "digest mismatch: expected {digest}, the bytes received hash to sha256:{actual}"
        ))
    }
}

/// The one Wasm layer of a manifest.
fn wasm_layer(manifest: &[u8]) -> Result<OciDescriptor, String> {
    let manifest: OciImageManifest =
        serde_json::from_slice(manifest).map_err(|e| format!("unreadable manifest: {e}"))?;
    let mut wasm = manifest
        .layers
        .into_iter()
        .filter(|l| l.media_type == WASM_LAYER || l.media_type == WASM_LAYER_V1);
    match (wasm.next(), wasm.next()) {
        (Some(layer), None) => Ok(layer),
        (None, _) => Err(format!(
            "no layer of media type {WASM_LAYER} (push components with `wasmgate filter push` or `wkg oci push`)"
        )),
        (Some(_), Some(_)) => Err("more than one Wasm layer".into()),
    }
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Credentials for `registry`: `WASMGATE_REGISTRY_USERNAME` and `WASMGATE_REGISTRY_PASSWORD`,
/// else the `auths` entry for it in the Docker-style config file, else anonymous.
fn credentials(settings: &RegistryConfig, registry: &str) -> Result<RegistryAuth, String> {
    if let (Ok(user), Ok(password)) = (
        std::env::var("WASMGATE_REGISTRY_USERNAME"),
        std::env::var("WASMGATE_REGISTRY_PASSWORD"),
    ) {
        return Ok(RegistryAuth::Basic(user, password));
    }
    let file = match &settings.auth_file {
        Some(file) => file.clone(),
        None => match default_auth_file() {
            Some(file) if file.exists() => file,
            _ => return Ok(RegistryAuth::Anonymous),
        },
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("registry credentials {}: cannot read: {e}", file.display()))?;
    auth_for(&text, registry)
        .map_err(|why| format!("registry credentials {}: {why}", file.display()))
}

fn default_auth_file() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    Some(PathBuf::from(std::env::var_os("HOME")?).join(".docker/config.json"))
}

/// The credentials a Docker `config.json` (`text`) gives `registry`. Its `auths` keys may be
/// `host[:port]` or a URL (`https://host/...`); an entry has `auth` (base64 of `user:password`),
/// or `username` and `password`, or an `identitytoken`. Errors never quote a secret.
fn auth_for(text: &str, registry: &str) -> Result<RegistryAuth, String> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        identitytoken: Option<String>,
    }
    let file: File = serde_json::from_str(text).map_err(|e| {
        // serde_json's message names a place, never the value.
        format!("not a Docker config.json: {e}")
    })?;
    let host_of = |key: &str| {
        let key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        key.split('/').next().unwrap_or(key).to_string()
    };
    let Some(entry) = file
        .auths
        .iter()
        .find(|(key, _)| host_of(key) == registry)
        .map(|(_, entry)| entry)
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| format!("auths[{registry:?}].auth is not base64 of user:password"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths[{registry:?}].auth is not base64 of user:password"))?;
        return Ok(RegistryAuth::Basic(user.to_string(), password.to_string()));
    }
    if let Some(token) = &entry.identitytoken {
        return Ok(RegistryAuth::Bearer(token.clone()));
    }
    Err(format!(
        "auths[{registry:?}] has no auth, username and password, or identitytoken"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_match_by_host() {
        let text = r#"{"auths": {
            "https://registry.example.com/v1/": {"auth": "YWxpY2U6czNjcjN0"},
            "127.0.0.1:5000": {"username": "bob", "password": "pw"},
            "ghcr.io": {"identitytoken": "tok"}
        }}"#;
        let basic = |u: &str, p: &str| format!("{:?}", RegistryAuth::Basic(u.into(), p.into()));
        assert_eq!(
            format!("{:?}", auth_for(text, "registry.example.com").unwrap()),
            basic("alice", "s3cr3t")
        );
        assert_eq!(
            format!("{:?}", auth_for(text, "127.0.0.1:5000").unwrap()),
            basic("bob", "pw")
        );
        assert!(matches!(
            auth_for(text, "ghcr.io").unwrap(),
            RegistryAuth::Bearer(t) if t == "tok"
        ));
        assert!(matches!(
            auth_for(text, "other.example.com").unwrap(),
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn a_bad_entry_is_an_error_that_quotes_no_secret() {
        let err = auth_for(r#"{"auths": {"r.io": {"auth": "not base64!!"}}}"#, "r.io").unwrap_err();
        assert!(err.contains("not base64"), "{err}");
        assert!(!err.contains("!!"), "{err}");
        let err = auth_for("{", "r.io").unwrap_err();
        assert!(err.contains("not a Docker config.json"), "{err}");
    }

    #[test]
    fn verify_names_both_digests() {
        let digest = sha256(b"component");
        assert!(verify(b"component", &digest).is_ok());
        let err = verify(b"tampered", &digest).unwrap_err();
        assert!(err.contains(&digest) && err.contains("mismatch"), "{err}");
    }
}
