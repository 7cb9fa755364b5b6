//! End to end on loopback: a real `docker-registry`, a real multi-layer
//! image, and a locality of three in-process nodes over real libp2p TCP.
//! One gateway pulls the image from the registry once; the others fetch it
//! from the swarm; every node imports it into a root filesystem.

use std::path::Path;
use std::time::{Duration, Instant};

use edgeswarm_node::daemon::{Daemon, DaemonConfig};
use edgeswarm_node::import::ImportSinkKind;
use edgeswarm_node::registry::testing::{build_image, ImageSpec, Pusher, TestRegistry};
use edgeswarm_node::registry::{Platform, RegistryConfig};
use edgeswarm_node::store::StoreConfig;
use edgeswarm_node::swarm::SwarmConfig;
use edgeswarm_protocol::release::TrustedKeys;
use edgeswarm_protocol::ChunkSize;

fn config(dir: &Path, gateway: bool, bootstrap: Vec<libp2p::Multiaddr>) -> DaemonConfig {
    let mut swarm = SwarmConfig::new(dir, "e2e");
    swarm.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    swarm.mdns = false;
    swarm.bootstrap = bootstrap;
    DaemonConfig {
        data_dir: dir.to_path_buf(),
        swarm,
        store: StoreConfig::default(),
        gateway,
        registry: RegistryConfig::default(),
        platform: Platform::host(),
        import: Some(ImportSinkKind::Dir),
        trusted: TrustedKeys::new(),
        labels: Default::default(),
        chunk_size: ChunkSize::new(256 << 10).unwrap(),
    }
}

async fn wait_done(daemons: &[Daemon], image: &str, timeout: Duration) {
    let started = Instant::now();
    loop {
        let mut done = 0;
        for d in daemons {
            let status = d.status().await;
            for r in status.this.releases.iter().filter(|r| r.image == image) {
                assert!(r.error.is_none(), "release failed: {r:?}");
                if r.state == "done" {
                    done += 1;
                }
            }
        }
        if done == daemons.len() {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "only {done} of {} nodes finished {image} in {timeout:?}",
            daemons.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_pulls_once_and_the_locality_imports_from_peers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let registry = TestRegistry::start().await.unwrap();
    let build_dir = tempfile::tempdir().unwrap();
    let image = build_image(ImageSpec::realistic(6 << 20, "v1"), build_dir.path())
        .await
        .unwrap();
    let pusher = Pusher::new(&registry.host(), None).unwrap();
    pusher
        .push_image("e2e/app", Some("v1"), &image)
        .await
        .unwrap();
    let reference = format!("{}/e2e/app:v1", registry.host());

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (gateway, _g) = Daemon::start(config(dirs[0].path(), true, vec![]))
        .await
        .unwrap();
    let gateway_addr = gateway.swarm().listen_addrs().await.unwrap()[0].clone();
    let mut daemons = vec![gateway.clone()];
    for dir in &dirs[1..] {
        let (d, _h) = Daemon::start(config(dir.path(), false, vec![gateway_addr.clone()]))
            .await
            .unwrap();
        daemons.push(d);
    }
    // Let gossip meshes form and status reports flow.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let signed = gateway
        .prepare_release(&reference, vec![], None)
        .await
        .unwrap();
    assert_eq!(signed.body_unverified().manifest, image.manifest_digest);
    gateway.publish_release(signed).await.unwrap();
    wait_done(&daemons, &reference, Duration::from_secs(120)).await;

    // Every node has the image's files.
    let name = edgeswarm_node::import::image_dir_name(&reference);
    for dir in &dirs {
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
    let image_bytes =
        image.layers_size() + (image.config_bytes.len() + image.manifest_bytes.len()) as u64;
    assert!(
        pulled as f64 <= image_bytes as f64 * 1.02,
        "gateway pulled {pulled} bytes for a {image_bytes}-byte image"
    );
    // The other nodes received from peers.
    for d in &daemons[1..] {
        let status = d.status().await;
        let r = &status.this.releases[0];
        assert_eq!(r.bytes_from_cloud, 0);
        assert_eq!(r.bytes_done, image.layers_size());
    }
    for d in &daemons {
        d.shutdown();
    }
}
