//! Where a filter's component comes from when it is not a file in the filters directory: an
//! OCI registry (`source = "oci://..."` on a route's filter), and how registries are reached
//! (`[registry]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A filter pulled from an OCI registry: `oci://REGISTRY/REPOSITORY:TAG` (followed: a moved
/// tag is picked up) or `oci://REGISTRY/REPOSITORY@sha256:DIGEST` (pinned: never changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSource {
    /// As written in the config.
    pub text: String,
    /// `host[:port]`.
    pub registry: String,
    /// `team/auth`.
    pub repository: String,
    /// The tag, when the source follows one.
    pub tag: Option<String>,
    /// `sha256:<64 hex digits>`, when the source is pinned to a manifest digest.
    pub digest: Option<String>,
}

impl FilterSource {
    /// Parse `oci://...`; the reason when it is not a usable reference.
    pub fn parse(text: &str) -> Result<FilterSource, String> {
        const SHAPE: &str = "expected \"oci://REGISTRY/REPOSITORY:TAG\" or \"oci://REGISTRY/REPOSITORY@sha256:DIGEST\"";
        let Some(rest) = text.strip_prefix("oci://") else {
            return Err(format!("source {text:?}: {SHAPE}"));
        };
        let (name, digest) = match rest.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (rest, None),
        };
        let Some((registry, path)) = name.split_once('/') else {
            return Err(format!("source {text:?}: no repository; {SHAPE}"));
        };
        // The tag is after the last ':' that follows the last '/' (a registry may have a port).
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(format!(
                "source {text:?}: {registry:?} is not a registry host"
            ));
        }
        if repository.is_empty()
            || repository.split('/').any(|part| {
                part.is_empty()
                    || !part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
            })
        {
            return Err(format!(
                "source {text:?}: {repository:?} is not a repository (lowercase letters, digits, '.', '_', '-', separated by '/')"
            ));
        }
        if let Some(tag) = tag
            && (tag.is_empty()
                || tag.len() > 128
                || !tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!("source {text:?}: {tag:?} is not a tag"));
        }
        if let Some(digest) = digest {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
                return Err(format!(
                    "source {text:?}: {digest:?} is not a digest (sha256: and 64 lowercase hex digits)"
                ));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!(
                "source {text:?}: name a tag (\":1.4\", followed) or a digest (\"@sha256:...\", pinned)"
            ));
        }
        Ok(FilterSource {
            text: text.to_string(),
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// Whether the source names a digest: it never changes, and is never polled.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// `registry/repository` followed by `@digest` or `:tag`, as registry clients take it.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => format!("{}/{}@{digest}", self.registry, self.repository),
            (None, Some(tag)) => format!("{}/{}:{tag}", self.registry, self.repository),
            (None, None) => unreachable!("parse requires a tag or a digest"),
        }
    }
}

/// How OCI registries are reached (`[registry]`), for filters with an `oci://` source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegistryConfig {
    /// How often a followed tag is checked for a new digest (default 30s).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest one pull (manifest and component) may take (default 30s).
    #[serde(default = "default_registry_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A Docker-style `config.json` with credentials (`auths`); relative to the config file.
    /// Default: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, when present.
    /// `WASMGATE_REGISTRY_USERNAME` and `WASMGATE_REGISTRY_PASSWORD` in the environment win.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// Registries (`host:port`) spoken to over plain HTTP rather than HTTPS (default none).
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Largest component accepted from a registry (default 64 MiB).
    #[serde(default = "default_max_component_bytes")]
    pub max_component_bytes: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            poll_interval: default_poll_interval(),
            timeout: default_registry_timeout(),
            auth_file: None,
            plain_http: Vec::new(),
            max_component_bytes: default_max_component_bytes(),
        }
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_registry_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_component_bytes() -> u64 {
    64 << 20
}

#[cfg(test)]
mod tests {
    use super::FilterSource;

    #[test]
    fn tags_and_digests_parse_with_ports_and_nested_repositories() {
        let s = FilterSource::parse("oci://127.0.0.1:5000/team/auth:1.4").unwrap();
        assert_eq!(
            (s.registry.as_str(), s.repository.as_str(), s.tag.as_deref()),
            ("127.0.0.1:5000", "team/auth", Some("1.4"))
        );
        assert!(!s.is_pinned());
        assert_eq!(s.reference(), "127.0.0.1:5000/team/auth:1.4");

        let digest = format!("sha256:{}", "ab".repeat(32));
        let s = FilterSource::parse(&format!("oci://ghcr.io/acme/auth@{digest}")).unwrap();
        assert!(s.is_pinned());
        assert_eq!(s.tag, None);
        assert_eq!(s.reference(), format!("ghcr.io/acme/auth@{digest}"));
    }

    #[test]
    fn bad_sources_say_what_is_wrong() {
        for (text, says) in [
            ("https://ghcr.io/acme/auth:1", "expected \"oci://"),
            ("oci://ghcr.io", "no repository"),
            ("oci://ghcr.io/acme/auth", "name a tag"),
            ("oci://ghcr.io/Acme/auth:1", "is not a repository"),
            ("oci://ghcr.io/acme/auth@sha256:12", "is not a digest"),
            ("oci://ghcr.io/acme/auth:a+b", "is not a tag"),
        ] {
            let err = FilterSource::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
