//! How the registry client behaves: [`RegistryConfig`] (insecure
//! registries, credentials, retry and timeout settings, document size
//! limits) and the loopback rule that makes `localhost`, 127.0.0.0/8 and
//! `::1` registries insecure implicitly, as dockerd does.

use std::time::Duration;

use super::auth::DockerConfig;
use super::error::RegistryError;
use super::reference::Reference;

/// How the client behaves. `Default` is Docker-like and suits production.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`HOST[:PORT]`, as in the reference) spoken to over plain
    /// HTTP (`--insecure-registry`). Everything else uses HTTPS.
    pub insecure_registries: Vec<String>,
    /// Treat loopback registries (`localhost`, 127.0.0.0/8, `::1`) as
    /// insecure without listing them, as dockerd does. Default `true`.
    pub loopback_insecure: bool,
    /// Credential source (`~/.docker/config.json` or `--registry-auth FILE`).
    pub credentials: DockerConfig,
    /// Attempts per request (and consecutive failures without progress for
    /// a blob stream) before giving up.
    pub max_attempts: u32,
    /// First backoff delay; doubles per attempt (with jitter).
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured on 429/503; longer waits give up.
    pub max_retry_after: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout for small documents (manifests, configs, tokens).
    pub request_timeout: Duration,
    /// Longest silence inside a blob body before the connection counts as dead
    /// and the stream resumes with Range.
    pub idle_timeout: Duration,
    /// Largest manifest or index accepted (containerd uses 4 MiB).
    pub max_manifest_bytes: u64,
    /// Largest image config accepted.
    pub max_config_bytes: u64,
    /// `User-Agent` header.
    pub user_agent: String,
    /// CA certificates trusted for HTTPS besides the system store
    /// (`--registry-ca FILE`): registries behind an internal CA.
    pub extra_ca: Vec<reqwest::Certificate>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            loopback_insecure: true,
            credentials: DockerConfig::empty(),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 16 << 20,
            user_agent: concat!("edgeswarm/", env!("CARGO_PKG_VERSION")).to_owned(),
            extra_ca: Vec::new(),
        }
    }
}

impl RegistryConfig {
    /// The configuration for the daemon's flags: `--insecure-registry
    /// HOST[:PORT]` (repeatable) and `--registry-auth FILE` (Docker
    /// `config.json` shape; without it `~/.docker/config.json` is used,
    /// missing meaning anonymous).
    pub fn from_flags(
        insecure_registries: &[String],
        registry_auth: Option<&std::path::Path>,
    ) -> Result<RegistryConfig, RegistryError> {
        for entry in insecure_registries {
            // Same host grammar as references.
            Reference::parse(&format!("{entry}/probe")).map_err(RegistryError::from)?;
            if entry.contains('/') {
                return Err(RegistryError::from(
                    super::reference::ReferenceError::InvalidDomain(entry.clone()),
                ));
            }
        }
        let credentials = match registry_auth {
            Some(path) => DockerConfig::load(path),
            None => DockerConfig::load_default(),
        }
        .map_err(|source| RegistryError::Credentials {
            reference: "(registry credentials)".into(),
            source,
        })?;
        Ok(RegistryConfig {
            insecure_registries: insecure_registries.to_vec(),
            credentials,
            ..RegistryConfig::default()
        })
    }
}

impl RegistryConfig {
    /// Trusts every certificate of the PEM file `path` (`--registry-ca`,
    /// one CA or a bundle) for HTTPS, on top of the system CA store.
    /// Returns how many certificates it holds; a file without any is an
    /// error, so a wrong path or a key file is caught at start, not at the
    /// first pull. Blocking (reads the file).
    pub fn add_ca_file(&mut self, path: &std::path::Path) -> Result<usize, RegistryError> {
        let ca_error = |reason: String| RegistryError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_error(super::client::error_chain(&e)))?;
        if certs.is_empty() {
            return Err(ca_error(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
            ));
        }
        let n = certs.len();
        self.extra_ca.extend(certs);
        Ok(n)
    }
}

/// `localhost`, 127.0.0.0/8 or `::1`, with or without port.
pub(super) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.3.2.1"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("registry.example.com"));
    }

    #[test]
    fn config_from_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        std::fs::write(
            &file,
            br#"{"auths":{"r.example:5000":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let cfg = RegistryConfig::from_flags(&["r.example:5000".into()], Some(&file)).unwrap();
        assert_eq!(cfg.insecure_registries, vec!["r.example:5000".to_owned()]);
        assert!(RegistryConfig::from_flags(&["bad host".into()], Some(&file)).is_err());
        assert!(RegistryConfig::from_flags(&["h:1/x".into()], Some(&file)).is_err());
        let missing = dir.path().join("missing.json");
        assert!(matches!(
            RegistryConfig::from_flags(&[], Some(&missing)),
            Err(RegistryError::Credentials { .. })
        ));
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RegistryConfig::default();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            cfg.add_ca_file(&missing),
            Err(RegistryError::CaFile { .. })
        ));
        let key_only = dir.path().join("key.pem");
        std::fs::write(
            &key_only,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = cfg.add_ca_file(&key_only).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        assert!(cfg.extra_ca.is_empty());
    }
}
