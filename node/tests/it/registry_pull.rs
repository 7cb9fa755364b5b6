//! Pulls from a real `docker-registry` (Debian package) on loopback:
//! multi-layer images in every compression, multi-arch indexes, foreign
//! layers, and the errors users meet (unknown images, bad references,
//! plain-HTTP registries not marked insecure).

use crate::support::registry::*;
use crate::support::{init_tracing, push};
use edgeswarm_node::registry::testing::{
    self, ImageSpec, LayerSource, ManifestFormat, Pusher, TestRegistry,
};
use edgeswarm_node::registry::{
    manifest, Compression, Platform, Reference, RegistryClient, RegistryConfig, RegistryError,
};
use futures::StreamExt;

#[tokio::test]
async fn pulls_multi_layer_gzip_docker_image() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = build(dir.path(), Compression::Gzip, "v1").await;
    assert_eq!(image.layers.len(), 3);
    assert!(
        image.layers[0].size > 1 << 20,
        "host lib layer is realistic"
    );
    push(&registry, "team/app", "v1", &image).await;

    let client = client();
    let reference = format!("{}/team/app:v1", registry.host());
    let resolved = pull_and_verify(&client, &reference, &Platform::host(), &image).await;
    assert_eq!(resolved.manifest_media_type, manifest::DOCKER_MANIFEST);
    assert!(resolved.index_digest.is_none());
    let stats = client.stats();
    let documents = (resolved.manifest_bytes.len() + resolved.config_bytes.len()) as u64;
    assert_eq!(
        stats.bytes_pulled,
        image.layers_size() + documents,
        "{stats:?}"
    );
    assert_eq!(stats.resumes, 0);

    // Pinned by digest: same result, no tag needed.
    let pinned = format!("{}/team/app@{}", registry.host(), image.manifest_digest);
    pull_and_verify(&client, &pinned, &Platform::host(), &image).await;
}

#[tokio::test]
async fn pulls_zstd_and_uncompressed_oci_images() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    for (compression, tag, media_type) in [
        (Compression::Zstd, "zstd", manifest::OCI_LAYER_ZSTD),
        (Compression::None, "plain", manifest::OCI_LAYER_TAR),
    ] {
        let mut spec = ImageSpec::realistic(LIB_BYTES, tag);
        spec.compression = compression;
        spec.format = ManifestFormat::Oci;
        let image = testing::build_image(spec, dir.path()).await.unwrap();
        push(&registry, "team/app", tag, &image).await;
        let resolved = pull_and_verify(
            &client,
            &format!("{}/team/app:{tag}", registry.host()),
            &Platform::host(),
            &image,
        )
        .await;
        assert_eq!(resolved.manifest_media_type, manifest::OCI_MANIFEST);
        assert!(resolved.layers.iter().all(|l| l.media_type == media_type));
    }
}

#[tokio::test]
async fn resolves_multi_arch_index_to_requested_platform() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for platform in ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"] {
        let platform = Platform::parse(platform).unwrap();
        let mut spec = ImageSpec::realistic(1 << 20, &platform.to_string());
        // Distinct app layer per platform, shared base layers.
        spec.layers[2] = LayerSource::app(&platform.to_string());
        spec.platform = platform;
        spec.format = ManifestFormat::Oci;
        images.push(testing::build_image(spec, dir.path()).await.unwrap());
    }
    // A BuildKit-style attestation entry (unknown/unknown) listed first must be skipped.
    let mut attestation = ImageSpec::realistic(1 << 20, "attestation");
    attestation.layers.truncate(1);
    attestation.platform = Platform::new("unknown", "unknown", None);
    attestation.format = ManifestFormat::Oci;
    let attestation = testing::build_image(attestation, dir.path()).await.unwrap();
    let pusher = Pusher::new(&registry.host(), None).unwrap();
    let refs: Vec<_> = std::iter::once(&attestation).chain(images.iter()).collect();
    let index_digest = pusher
        .push_index("multi/app", "oci", &refs, ManifestFormat::Oci)
        .await
        .unwrap();
    // The same images as a Docker manifest list need Docker manifests.
    let mut docker_images = Vec::new();
    for image in &images {
        let mut spec = ImageSpec::realistic(1 << 20, &image.platform.to_string());
        spec.platform = image.platform.clone();
        docker_images.push(testing::build_image(spec, dir.path()).await.unwrap());
    }
    let refs: Vec<_> = docker_images.iter().collect();
    pusher
        .push_index("multi/app", "docker", &refs, ManifestFormat::Docker)
        .await
        .unwrap();

    let client = client();
    for (tag, set) in [("oci", &images), ("docker", &docker_images)] {
        for (i, want) in ["linux/amd64", "linux/arm64", "linux/arm/v7"]
            .iter()
            .enumerate()
        {
            let platform = Platform::parse(want).unwrap();
            let resolved = pull_and_verify(
                &client,
                &format!("{}/multi/app:{tag}", registry.host()),
                &platform,
                &set[i],
            )
            .await;
            assert_eq!(resolved.platform.to_string(), *want);
            assert!(resolved.index_digest.is_some());
        }
    }
    let resolved = client
        .resolve(
            &Reference::parse(&format!("{}/multi/app:oci", registry.host())).unwrap(),
            &Platform::parse("linux/arm64").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resolved.index_digest, Some(index_digest));

    let err = client
        .resolve(
            &Reference::parse(&format!("{}/multi/app:oci", registry.host())).unwrap(),
            &Platform::parse("linux/s390x").unwrap(),
        )
        .await
        .unwrap_err();
    match &err {
        RegistryError::NoMatchingPlatform { available, .. } => {
            assert!(available.contains("linux/arm64"), "{err}");
        }
        other => panic!("expected NoMatchingPlatform, got {other}"),
    }
    assert!(err.to_string().contains("multi/app:oci"), "{err}");
}

#[tokio::test]
async fn unknown_images_and_blobs_give_clear_errors() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = build(dir.path(), Compression::Gzip, "v1").await;
    push(&registry, "team/app", "v1", &image).await;
    let client = client();

    let missing_tag = Reference::parse(&format!("{}/team/app:nope", registry.host())).unwrap();
    let err = client
        .resolve(&missing_tag, &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert_eq!(err.http_status(), Some(404));
    let text = err.to_string();
    assert!(
        text.contains("team/app:nope") && text.contains("MANIFEST_UNKNOWN"),
        "{text}"
    );

    let missing_repo = Reference::parse(&format!("{}/no/such:v1", registry.host())).unwrap();
    let err = client
        .resolve(&missing_repo, &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no/such:v1"), "{err}");

    let good = Reference::parse(&format!("{}/team/app:v1", registry.host())).unwrap();
    let unknown_blob = edgeswarm_protocol::Digest::of(b"not in the registry");
    let mut stream = client.blob_stream(&good, &unknown_blob, 0);
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&unknown_blob.to_oci()), "{err}");
    assert!(stream.next().await.is_none(), "an error ends the stream");

    // Pinned to a digest the registry does not have.
    let pinned = good.with_digest(unknown_blob);
    let err = client
        .resolve(&pinned, &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");

    // Bad references never reach the network.
    for bad in [
        "",
        "Upper",
        "docker.io/Team/app",
        "app:bad tag",
        "app@sha256:123",
        "host:99999/x",
    ] {
        let err = Reference::parse(bad)
            .map_err(RegistryError::from)
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidReference(_)),
            "{bad:?}: {err}"
        );
        assert!(
            err.to_string().starts_with("invalid image reference"),
            "{err}"
        );
    }

    // Nothing listening: retries, then a clear error naming the reference.
    let quick = RegistryClient::new(RegistryConfig {
        max_attempts: 2,
        initial_backoff: std::time::Duration::from_millis(10),
        ..RegistryConfig::default()
    })
    .unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = Reference::parse(&format!("{closed}/team/app:v1")).unwrap();
    let err = quick.resolve(&dead, &Platform::host()).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("{closed}/team/app:v1")),
        "{err}"
    );
}

#[tokio::test]
async fn plain_http_needs_insecure_registry_unless_loopback_rule() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = build(dir.path(), Compression::Gzip, "v1").await;
    push(&registry, "team/app", "v1", &image).await;
    let reference = format!("{}/team/app:v1", registry.host());

    let strict = RegistryClient::new(RegistryConfig {
        loopback_insecure: false,
        max_attempts: 1,
        ..RegistryConfig::default()
    })
    .unwrap();
    let err = strict
        .resolve(&Reference::parse(&reference).unwrap(), &Platform::host())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--insecure-registry"), "{err}");

    let listed = RegistryClient::new(RegistryConfig {
        loopback_insecure: false,
        insecure_registries: vec![registry.host()],
        ..RegistryConfig::default()
    })
    .unwrap();
    pull_and_verify(&listed, &reference, &Platform::host(), &image).await;
}

#[tokio::test]
async fn foreign_layers_come_from_their_urls() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut image = build(dir.path(), Compression::Gzip, "v1").await;
    // Host the base layer elsewhere: another repository of the registry,
    // reached by URL (anonymous, as foreign URLs are).
    let pusher = Pusher::new(&registry.host(), None).unwrap();
    let base = image.layers[0].clone();
    pusher
        .push_blob_file("elsewhere/blobs", &base.digest, base.size, &base.path)
        .await
        .unwrap();
    let url = format!(
        "{}/v2/elsewhere/blobs/blobs/{}",
        registry.url(),
        base.digest
    );
    image.make_foreign(
        0,
        vec![
            format!("{}/v2/missing/blobs/{}", registry.url(), base.digest),
            url,
        ],
    );
    push(&registry, "team/foreign", "v1", &image).await;
    assert!(!pusher.has_blob("team/foreign", &base.digest).await.unwrap());

    let client = client();
    let resolved = pull_and_verify(
        &client,
        &format!("{}/team/foreign:v1", registry.host()),
        &Platform::host(),
        &image,
    )
    .await;
    assert!(resolved.layers[0].foreign);
    assert_eq!(
        resolved.layers[0].media_type,
        manifest::DOCKER_LAYER_FOREIGN_GZIP
    );
    assert_eq!(resolved.layers[0].urls.len(), 2);
}

/// The test image builder must produce images other tools accept, since the
/// testnet feeds them to dockerd and containerd: skopeo copies them (checking
/// every digest) in all three compressions and as a multi-arch index.
#[tokio::test]
async fn built_images_are_valid_for_skopeo() {
    init_tracing();
    if std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("skopeo (Debian package `skopeo`) is required for this test");
    }
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for (compression, format, tag) in [
        (Compression::Gzip, ManifestFormat::Docker, "gzip"),
        (Compression::Zstd, ManifestFormat::Oci, "zstd"),
        (Compression::None, ManifestFormat::Oci, "plain"),
    ] {
        let mut spec = ImageSpec::realistic(1 << 20, tag);
        spec.compression = compression;
        spec.format = format;
        let image = testing::build_image(spec, dir.path()).await.unwrap();
        push(&registry, "interop/app", tag, &image).await;
        images.push((tag, image));
    }
    let mut arm = ImageSpec::realistic(1 << 20, "arm64");
    arm.platform = Platform::parse("linux/arm64").unwrap();
    arm.format = ManifestFormat::Oci;
    let arm = testing::build_image(arm, dir.path()).await.unwrap();
    let amd = &images[1].1;
    let index_digest = Pusher::new(&registry.host(), None)
        .unwrap()
        .push_index("interop/app", "multi", &[amd, &arm], ManifestFormat::Oci)
        .await
        .unwrap();

    for tag in ["gzip", "zstd", "plain", "multi"] {
        let out = dir.path().join(format!("copy-{tag}"));
        let output = tokio::process::Command::new("skopeo")
            .args(["copy", "--all", "--src-tls-verify=false", "--quiet"])
            .arg(format!("docker://{}/interop/app:{tag}", registry.host()))
            .arg(format!("oci:{}:{tag}", out.display()))
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "skopeo copy {tag}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = tokio::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--override-arch", "arm64"])
        .arg(format!("docker://{}/interop/app:multi", registry.host()))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(inspect["Architecture"], "arm64");
    // skopeo reports the digest of the index it was pointed at.
    assert_eq!(inspect["Digest"], index_digest.to_oci());
    assert_eq!(
        inspect["Layers"].as_array().unwrap().len(),
        arm.layers.len()
    );
    assert_eq!(
        inspect["Layers"][2],
        arm.layers[2].digest.to_oci(),
        "the arm64 entry was chosen"
    );
}
