//! Shared set-up for tests that run whole node daemons in-process over
//! real libp2p TCP on loopback, against a real `docker-registry`.

#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::time::{Duration, Instant};

use edgeswarm_node::daemon::{Daemon, DaemonConfig, ReleasePhase, ReleaseView};
use edgeswarm_node::import::ImportSinkKind;
use edgeswarm_node::registry::testing::{BuiltImage, Pusher, TestRegistry};
use edgeswarm_node::registry::{Platform, RegistryConfig};
use edgeswarm_node::store::StoreConfig;
use edgeswarm_node::swarm::SwarmConfig;
use edgeswarm_protocol::signing::TrustedKeys;
use edgeswarm_protocol::ChunkSize;

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A daemon configuration for a loopback test node.
pub(crate) fn config(
    dir: &Path,
    locality: &str,
    gateway: bool,
    bootstrap: Vec<libp2p::Multiaddr>,
) -> DaemonConfig {
    let mut swarm = SwarmConfig::new(dir, locality);
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
        keep_versions: 2,
    }
}

/// A locality of daemons: the first `gateways` are gateway-capable; all
/// bootstrap from the first.
pub(crate) struct Locality {
    pub(crate) daemons: Vec<Daemon>,
    pub(crate) dirs: Vec<tempfile::TempDir>,
}

impl Locality {
    pub(crate) async fn start(name: &str, gateways: usize, nodes: usize) -> Locality {
        let dirs: Vec<_> = (0..nodes).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut daemons: Vec<Daemon> = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let bootstrap = match daemons.first() {
                Some(first) => vec![first.swarm().listen_addrs().await.unwrap()[0].clone()],
                None => vec![],
            };
            let (d, _h) = Daemon::start(config(dir.path(), name, i < gateways, bootstrap))
                .await
                .unwrap();
            daemons.push(d);
        }
        // Let gossip meshes form and status reports flow.
        tokio::time::sleep(Duration::from_secs(3)).await;
        Locality { daemons, dirs }
    }

    pub(crate) fn shutdown(&self) {
        for d in &self.daemons {
            d.shutdown();
        }
    }
}

/// This node's view of its release of `image`, if any.
pub(crate) async fn release_of(daemon: &Daemon, image: &str) -> Option<ReleaseView> {
    daemon
        .status()
        .await
        .this
        .releases
        .into_iter()
        .find(|r| r.image == image)
}

/// Waits until every daemon reports `image` done; panics on failure or timeout.
pub(crate) async fn wait_done(daemons: &[Daemon], image: &str, timeout: Duration) {
    let started = Instant::now();
    loop {
        let mut done = 0;
        for d in daemons {
            if let Some(r) = release_of(d, image).await {
                assert!(r.error.is_none(), "release failed: {r:?}");
                done += (r.state == ReleasePhase::Done) as usize;
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

/// Waits until `daemon` reports `image` failed and returns the error.
pub(crate) async fn wait_failed(daemon: &Daemon, image: &str, timeout: Duration) -> String {
    let started = Instant::now();
    loop {
        if let Some(r) = release_of(daemon, image).await {
            if r.state == ReleasePhase::Failed {
                return r.error.unwrap_or_default();
            }
            assert_ne!(
                r.state,
                ReleasePhase::Done,
                "release unexpectedly succeeded"
            );
        }
        assert!(
            started.elapsed() < timeout,
            "{image} did not fail in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pushes `image` as `repo:tag` and returns its reference.
pub(crate) async fn push(
    registry: &TestRegistry,
    repo: &str,
    tag: &str,
    image: &BuiltImage,
) -> String {
    Pusher::new(&registry.host(), None)
        .unwrap()
        .push_image(repo, Some(tag), image)
        .await
        .unwrap();
    format!("{}/{repo}:{tag}", registry.host())
}

/// Bytes of an image's layers, config and manifest.
pub(crate) fn image_bytes(image: &BuiltImage) -> u64 {
    image.layers_size() + (image.config_bytes.len() + image.manifest_bytes.len()) as u64
}
