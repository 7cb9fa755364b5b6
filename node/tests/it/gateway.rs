//! The gateway role against a real `docker-registry`: only the layers the
//! locality lacks cross the cloud link; zstd and multi-arch images; bad
//! references and unknown images are reported and the node keeps running.

use std::time::Duration;

use crate::support::daemon::*;
use crate::support::{init_tracing, push};
use edgeswarm_node::registry::testing::{
    build_image, ImageSpec, ManifestFormat, Pusher, TestRegistry,
};
use edgeswarm_node::registry::{Compression, Platform};
use edgeswarm_protocol::release::{Platform as ReleasePlatform, Release, SignedRelease};
use edgeswarm_protocol::Digest;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_release_pulls_only_its_new_layers() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let v1 = build_image(ImageSpec::realistic(4 << 20, "v1"), build.path())
        .await
        .unwrap();
    let v2 = build_image(ImageSpec::realistic(4 << 20, "v2"), build.path())
        .await
        .unwrap();
    assert_eq!(
        v1.layers[0].digest, v2.layers[0].digest,
        "base layers are shared"
    );
    assert_ne!(
        v1.layers[2].digest, v2.layers[2].digest,
        "app layers differ"
    );
    let r1 = push(&registry, "diff/app", "v1", &v1).await;
    let r2 = push(&registry, "diff/app", "v2", &v2).await;

    let locality = Locality::start("diff", 1, 2).await;
    let gateway = &locality.daemons[0];
    let signed = gateway.prepare_release(&r1, vec![], None).await.unwrap();
    gateway.publish_release(signed).await.unwrap();
    wait_done(&locality.daemons, &r1, Duration::from_secs(120)).await;
    let after_v1 = gateway.registry().unwrap().stats().bytes_pulled;

    let signed = gateway.prepare_release(&r2, vec![], None).await.unwrap();
    gateway.publish_release(signed).await.unwrap();
    wait_done(&locality.daemons, &r2, Duration::from_secs(120)).await;
    let for_v2 = gateway.registry().unwrap().stats().bytes_pulled - after_v1;
    // Documents (manifest and config, fetched when the tag is resolved and
    // again by the pull) and the new app layer; never the shared layers.
    println!(
        "v2 pulled {for_v2} bytes; its new layer is {}",
        v2.layers[2].size
    );
    assert!(
        for_v2 >= v2.layers[2].size,
        "the new layer came from elsewhere?"
    );
    assert!(
        for_v2 < v2.layers[0].size / 10,
        "v2 pulled {for_v2} bytes: the shared {}-byte base layer was pulled again",
        v2.layers[0].size
    );
    let name = edgeswarm_node::import::image_dir_name(&r2);
    let node_rootfs = locality.dirs[1].path().join("rootfs").join(name);
    assert!(node_rootfs.join("bin/busybox").is_file());
    locality.shutdown().await;
}

/// A gateway that imports the release itself fetches its manifest from
/// the registry once. The election re-runs its finished pull at each
/// status tick until its import ends (a layer the locality lost is pulled
/// again that way); those re-runs reuse the first one's resolution, where
/// they fetched the manifest and config again (Docker Hub counts each
/// manifest GET against its pull limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_importing_its_release_fetches_the_manifest_once() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    // Its import outlasts the pull: re-run three times in 1 s, the pull
    // took 11 requests before the reuse.
    let image = build_image(ImageSpec::realistic(48 << 20, "once"), build.path())
        .await
        .unwrap();
    let reference = push(&registry, "once/app", "v1", &image).await;
    let locality = Locality::start("once", 1, 1).await;
    let gateway = &locality.daemons[0];
    let signed = gateway
        .prepare_release(&reference, vec![], None)
        .await
        .unwrap();
    let before = gateway.registry().unwrap().stats();
    gateway.publish_release(signed).await.unwrap();
    wait_done(&locality.daemons, &reference, Duration::from_secs(120)).await;
    let after = gateway.registry().unwrap().stats();
    let took = release_of(gateway, &reference)
        .await
        .and_then(|r| r.seconds);
    let requests = after.requests - before.requests;
    println!(
        "{requests} registry requests for the pull ({} retries); done in {took:?} s",
        after.retries - before.retries
    );
    // The manifest, the config and each layer's blob, once.
    assert_eq!(
        requests,
        2 + image.layers.len() as u64 + (after.retries - before.retries)
    );
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zstd_and_multi_arch_images_deploy() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let mut spec = ImageSpec::realistic(2 << 20, "zstd");
    spec.compression = Compression::Zstd;
    let zstd = build_image(spec, build.path()).await.unwrap();
    let r_zstd = push(&registry, "fmt/zstd", "v1", &zstd).await;

    // An index with this host's image and a foreign-arch sibling.
    let host = build_image(ImageSpec::realistic(2 << 20, "host"), build.path())
        .await
        .unwrap();
    let mut other_spec = ImageSpec::realistic(1 << 20, "other");
    other_spec.platform = Platform::new("linux", "riscv64", None);
    let other = build_image(other_spec, build.path()).await.unwrap();
    let pusher = Pusher::new(&registry.host(), None).unwrap();
    pusher
        .push_index("fmt/multi", "v1", &[&other, &host], ManifestFormat::Oci)
        .await
        .unwrap();
    let r_multi = format!("{}/fmt/multi:v1", registry.host());

    let locality = Locality::start("fmt", 1, 2).await;
    let gateway = &locality.daemons[0];
    for reference in [&r_zstd, &r_multi] {
        let signed = gateway
            .prepare_release(reference, vec![], None)
            .await
            .unwrap();
        gateway.publish_release(signed).await.unwrap();
    }
    wait_done(&locality.daemons, &r_zstd, Duration::from_secs(120)).await;
    wait_done(&locality.daemons, &r_multi, Duration::from_secs(120)).await;
    let multi = release_of(gateway, &r_multi).await.unwrap();
    assert_eq!(
        multi.manifest,
        host.manifest_digest.to_string(),
        "resolved to this host's platform"
    );
    for reference in [&r_zstd, &r_multi] {
        let name = edgeswarm_node::import::image_dir_name(reference);
        assert!(locality.dirs[1]
            .path()
            .join("rootfs")
            .join(name)
            .join("bin/busybox")
            .is_file());
    }
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_references_and_unknown_images_are_reported_and_the_node_keeps_running() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let locality = Locality::start("bad", 1, 2).await;
    let gateway = &locality.daemons[0];

    let err = gateway
        .prepare_release("Not A Reference!", vec![], None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad image reference"), "{err}");
    let unknown = format!("{}/nobody/here:v1", registry.host());
    let err = gateway
        .prepare_release(&unknown, vec![], None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nobody/here"), "{err}");

    // A release pinning a manifest the registry does not have: every node
    // reports the failure, nothing is imported.
    let missing = Digest::of(b"no such manifest");
    let release = Release {
        image: format!("{}/nobody/here@{}", registry.host(), missing),
        manifest: missing,
        platform: ReleasePlatform::new(&Platform::host().os, &Platform::host().architecture),
        created: 1,
        locality: "bad".into(),
        selector: vec![],
        seq: 0,
    };
    let image = release.image.clone();
    let signed = SignedRelease::sign(
        release,
        &edgeswarm_protocol::signing::PublisherKey::generate(&mut rand::rngs::OsRng),
    );
    gateway.publish_release(signed).await.unwrap();
    let error = wait_failed(gateway, &image, Duration::from_secs(60)).await;
    assert!(error.contains("nobody/here"), "{error}");

    // Still serving: a good image deploys afterwards.
    let build = tempfile::tempdir().unwrap();
    let good = build_image(ImageSpec::realistic(1 << 20, "ok"), build.path())
        .await
        .unwrap();
    let reference = push(&registry, "bad/good", "v1", &good).await;
    let signed = gateway
        .prepare_release(&reference, vec![], None)
        .await
        .unwrap();
    gateway.publish_release(signed).await.unwrap();
    wait_done(&locality.daemons, &reference, Duration::from_secs(120)).await;
    locality.shutdown().await;
}
