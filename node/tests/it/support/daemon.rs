//! Set-up for tests that run whole node daemons in-process over real
//! libp2p TCP on loopback, against a real `docker-registry`.

use std::path::Path;
use std::time::Duration;

use edgeswarm_node::daemon::{Daemon, DaemonConfig, ReleasePhase, ReleaseView};
use edgeswarm_node::import::ImportSinkKind;
use edgeswarm_node::registry::testing::BuiltImage;
use edgeswarm_node::registry::{Platform, RegistryConfig};
use edgeswarm_node::store::StoreConfig;
use edgeswarm_node::swarm::SwarmConfig;
use edgeswarm_protocol::signing::TrustedKeys;
use edgeswarm_protocol::ChunkSize;

use tokio::task::JoinHandle;

use super::{eventually, join};

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
        // Tests that are about something else than trust deploy with the
        // node's own identity.
        allow_any_publisher: true,
        trusted_gateways: Vec::new(),
        labels: Default::default(),
        chunk_size: ChunkSize::new(256 << 10).unwrap(),
        keep_versions: 2,
        unpack: Default::default(),
        dir: Default::default(),
    }
}

/// A locality of daemons: the first `gateways` are gateway-capable; all
/// bootstrap from the first.
pub(crate) struct Locality {
    pub(crate) daemons: Vec<Daemon>,
    pub(crate) dirs: Vec<tempfile::TempDir>,
    tasks: Vec<JoinHandle<()>>,
}

impl Locality {
    pub(crate) async fn start(name: &str, gateways: usize, nodes: usize) -> Locality {
        Locality::start_with(name, nodes, |i, c| c.gateway = i < gateways).await
    }

    /// A locality of `nodes` daemons, none gateway-capable until `adjust`
    /// (called with each node's index and configuration before it starts,
    /// in order) says so; all bootstrap from the first.
    pub(crate) async fn start_with(
        name: &str,
        nodes: usize,
        mut adjust: impl FnMut(usize, &mut DaemonConfig),
    ) -> Locality {
        let dirs: Vec<_> = (0..nodes).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut daemons: Vec<Daemon> = Vec::new();
        let mut tasks = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let bootstrap = match daemons.first() {
                Some(first) => vec![first.swarm().listen_addrs().await.unwrap()[0].clone()],
                None => vec![],
            };
            let mut config = config(dir.path(), name, false, bootstrap);
            adjust(i, &mut config);
            let (d, task) = Daemon::start(config).await.unwrap();
            daemons.push(d);
            tasks.push(task);
        }
        // Let gossip meshes form and status reports flow.
        tokio::time::sleep(Duration::from_secs(3)).await;
        Locality {
            daemons,
            dirs,
            tasks,
        }
    }

    /// Stops every daemon and joins its task: a daemon task that panicked
    /// during the test fails it here. A slow stop is tolerated.
    pub(crate) async fn shutdown(self) {
        for d in &self.daemons {
            d.shutdown();
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), join(task)).await;
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
    let what = format!("every node finished {image}");
    eventually(&what, timeout, async || {
        let mut done = 0;
        for d in daemons {
            if let Some(r) = release_of(d, image).await {
                assert!(r.error.is_none(), "release failed: {r:?}");
                done += (r.state == ReleasePhase::Done) as usize;
            }
        }
        if done == daemons.len() {
            Ok(())
        } else {
            Err(format!("only {done} of {} nodes done", daemons.len()))
        }
    })
    .await
}

/// Waits until `daemon` reports `image` failed and returns the error.
pub(crate) async fn wait_failed(daemon: &Daemon, image: &str, timeout: Duration) -> String {
    let what = format!("{image} failed");
    eventually(&what, timeout, async || {
        match release_of(daemon, image).await {
            Some(r) if r.state == ReleasePhase::Failed => Ok(r.error.unwrap_or_default()),
            Some(r) => {
                assert_ne!(
                    r.state,
                    ReleasePhase::Done,
                    "release unexpectedly succeeded"
                );
                Err(format!("{:?}", r.state))
            }
            None => Err("no release".to_owned()),
        }
    })
    .await
}

/// Bytes of an image's layers, config and manifest.
pub(crate) fn image_bytes(image: &BuiltImage) -> u64 {
    image.layers_size() + (image.config_bytes.len() + image.manifest_bytes.len()) as u64
}
