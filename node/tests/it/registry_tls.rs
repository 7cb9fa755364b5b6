//! A private registry behind an internal CA: a real `docker-registry`
//! serving HTTPS with a certificate from a CA generated here. Without the
//! CA the pull fails at once with an error that names the problem and
//! `--registry-ca` (no retries: a certificate does not get more trusted);
//! with `--registry-ca` (`RegistryConfig::add_ca_file`) it pulls and
//! verifies the whole image.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::push;
use crate::support::registry::*;
use edgeswarm_node::registry::testing::TestRegistry;
use edgeswarm_node::registry::{
    Compression, Platform, Reference, RegistryClient, RegistryConfig, RegistryError,
};

/// Files of a CA and a server certificate it signed for 127.0.0.1.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A CA that signed nothing here, to check "some CA" is not enough.
    other_ca: PathBuf,
}

fn make_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    (params.self_signed(&key).unwrap(), key)
}

fn pki(dir: &Path) -> Pki {
    let (ca, ca_key) = make_ca("edgeswarm test internal CA");
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "registry.internal");
    let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let (other, _) = make_ca("some other CA");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("server.pem", server.pem()),
        key: write("server.key", server_key.serialize_pem()),
        other_ca: write("other-ca.pem", other.pem()),
    }
}

/// A client that speaks HTTPS to loopback registries (by default loopback
/// means plain HTTP, as in Docker), trusting `ca` files on top of the
/// system store.
fn https_client(ca: &[&Path]) -> RegistryClient {
    let mut config = RegistryConfig {
        loopback_insecure: false,
        max_attempts: 3,
        ..RegistryConfig::default()
    };
    for path in ca {
        assert_eq!(config.add_ca_file(path).unwrap(), 1);
    }
    RegistryClient::new(config).unwrap()
}

#[tokio::test]
async fn internal_ca_registry_needs_registry_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    // Pushed over plain HTTP, served over HTTPS from the same storage.
    let plain = TestRegistry::start().await.unwrap();
    let image = build(dir.path(), Compression::Gzip, "tls").await;
    push(&plain, "internal/app", "v1", &image).await;
    let tls = TestRegistry::start_tls(&plain.root_dir(), &pki.cert, &pki.key)
        .await
        .unwrap();
    let reference = format!("{}/internal/app:v1", tls.host());
    let parsed = Reference::parse(&reference).unwrap();

    for (what, client) in [
        ("system store only", https_client(&[])),
        ("an unrelated CA", https_client(&[&pki.other_ca])),
    ] {
        let started = Instant::now();
        let err = client
            .resolve(&parsed, &Platform::host())
            .await
            .expect_err(what);
        assert!(matches!(err, RegistryError::Tls { .. }), "{what}: {err}");
        let text = err.to_string();
        assert!(text.contains("not trusted"), "{what}: {text}");
        assert!(text.contains("--registry-ca"), "{what}: {text}");
        assert!(text.contains("internal/app:v1"), "{what}: {text}");
        // Not retried with backoff: fails as fast as one handshake.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_eq!(client.stats().retries, 0, "{what}");
    }

    let trusted = https_client(&[&pki.ca]);
    pull_and_verify(&trusted, &reference, &Platform::host(), &image).await;
    assert_eq!(trusted.stats().retries, 0);
}
