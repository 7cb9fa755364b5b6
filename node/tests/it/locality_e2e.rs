//! End to end on loopback: a real `docker-registry`, a real multi-layer
//! image, and a locality of three in-process nodes over real libp2p TCP.
//! One gateway pulls the image from the registry once; the others fetch it
//! from the swarm; every node imports it into a root filesystem.

use std::time::Duration;

use crate::support::daemon::*;
use crate::support::{eventually, init_tracing, push};
use edgeswarm_node::daemon::ReleasePhase;
use edgeswarm_node::registry::testing::{build_image, ImageSpec, TestRegistry};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_pulls_once_and_the_locality_imports_from_peers() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build_dir = tempfile::tempdir().unwrap();
    let image = build_image(ImageSpec::realistic(6 << 20, "v1"), build_dir.path())
        .await
        .unwrap();
    let reference = push(&registry, "e2e/app", "v1", &image).await;

    let locality = Locality::start("e2e", 1, 3).await;
    let gateway = &locality.daemons[0];
    let signed = gateway
        .prepare_release(&reference, vec![], None)
        .await
        .unwrap();
    assert_eq!(signed.body_unverified().manifest, image.manifest_digest);
    gateway.publish_release(signed).await.unwrap();
    wait_done(&locality.daemons, &reference, Duration::from_secs(120)).await;

    // Every node has the image's files.
    let name = edgeswarm_node::import::image_dir_name(&reference);
    for dir in &locality.dirs {
        let rootfs = dir.path().join("rootfs").join(&name);
        assert!(
            rootfs.join("bin/busybox").is_file(),
            "{} lacks busybox",
            rootfs.display()
        );
        assert!(rootfs.join("app/run.sh").is_file());
    }
    // The image crossed the cloud link once.
    let pulled = gateway.registry().unwrap().stats().bytes_pulled;
    assert!(
        pulled as f64 <= image_bytes(&image) as f64 * 1.02,
        "gateway pulled {pulled} bytes for a {}-byte image",
        image_bytes(&image)
    );
    // The other nodes received from peers, and everyone sees everyone.
    for d in &locality.daemons[1..] {
        let r = release_of(d, &reference).await.unwrap();
        assert_eq!(r.bytes_from_cloud, 0);
        assert_eq!(r.bytes_from_peers, image.layers_size());
        assert_eq!(r.bytes_done, image.layers_size());
    }
    // Completions reach the gateway's view of the locality through status
    // gossip, sent on every state change.
    let what = "the gateway sees both nodes done";
    eventually(what, Duration::from_secs(5), async || {
        let status = gateway.status().await;
        assert_eq!(status.nodes.len(), 2, "{status:?}");
        let done = status
            .nodes
            .iter()
            .filter(|n| n.releases.iter().any(|r| r.state == ReleasePhase::Done))
            .count();
        (done == 2)
            .then_some(())
            .ok_or_else(|| format!("{status:?}"))
    })
    .await;
    // Prometheus shows the same split per release.
    let want = format!(
        "edgeswarm_release_bytes{{image=\"{reference}\",source=\"peers\"}} {}",
        image.layers_size()
    );
    let what = format!("`{want}` in the metrics");
    eventually(&what, Duration::from_secs(5), async || {
        let text = locality.daemons[1].encode_metrics().unwrap();
        text.contains(&want).then_some(()).ok_or(text)
    })
    .await;
    locality.shutdown().await;
}
