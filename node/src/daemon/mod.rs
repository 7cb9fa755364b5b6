//! The node daemon: what turns a release announcement into an imported
//! image on every node of a locality.
//!
//! ## Layout
//!
//! - this module: [`Daemon`] (start, shutdown, status), the gossip loop that
//!   validates releases, resolutions and status reports against the node's
//!   trust policy, and the periodic status/failover loop;
//! - `gateway`: the pull side. The gateway-capable node elected for a
//!   release (rendezvous hashing, `protocol::election`) resolves it at the
//!   registry, announces the resolution, and pulls the layers the locality
//!   lacks into its store, once, chunk by chunk;
//! - `pipeline`: the fetch side, run by every targeted node: manifest and
//!   config, then every layer from the swarm, each streamed from the store
//!   into the import sink while it downloads.
//!
//! ## Trust chain
//!
//! A release is signed by a publisher key the node trusts (or, when the
//! node has no `--trust` key, by any key: the embedded-signer mode). It pins
//! the manifest digest; the manifest (fetched from anyone, verified by that
//! digest) pins the config and layer digests; the config pins the diff_ids.
//! The gateway's signed resolution is only a hint that the release is
//! ready: nodes read the layer list from the verified manifest.
//!
//! ## Goals and non-goals
//!
//! - One registry pull per layer per locality: the gateway pulls only
//!   layers no live peer reports complete (availability gossip), and
//!   gossips each chunk's digest (signed) within 100 ms of its arrival, so
//!   the locality fetches and forwards a layer while it still downloads.
//! - Failover: when the elected gateway stops reporting, the runner-up
//!   takes the release and pulls only the chunk runs it lacks (Range).
//! - Non-goals: scheduling containers after import; pulling from more than
//!   one registry mirror.

mod gateway;
mod pipeline;
mod removal;

pub use removal::{
    decode_signed as decode_removal, encode_gossip as encode_removal_gossip, repository_of,
    Removal, RemoveReport, SignedRemoval,
};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgeswarm_protocol::release::{Release, SignedRelease};
use edgeswarm_protocol::signing::{PublicKey, PublisherKey, TrustedKeys};
use edgeswarm_protocol::wire::{
    Availability, AvailabilityBatch, AvailabilityEntry, GossipMessage, NodeStatus, PeerRole,
    ReleaseProgress, ReleaseState, SignedChunkDigestUpdate, SignedReleaseResolution,
};
use edgeswarm_protocol::{election, ChunkSize, Digest};
use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::import::{ImportSink, ImportSinkKind};
use crate::registry::{Platform, RegistryClient, RegistryConfig};
use crate::store::{Store, StoreConfig};
use crate::swarm::{keys, Node, SwarmClient, SwarmConfig, Topic};

/// How often a node reports its status on gossip.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// Shortest gap between two status reports triggered by state changes.
const MIN_STATUS_GAP: Duration = Duration::from_millis(250);
/// A peer not heard from for this long is considered gone (failover).
const PEER_TIMEOUT: Duration = Duration::from_secs(8);
/// How many releases a node works on at once.
const MAX_ACTIVE_RELEASES: usize = 4;

/// Everything a node daemon needs to start.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Data directory (store, identity, rootfs and OCI outputs).
    pub data_dir: PathBuf,
    /// The network layer.
    pub swarm: SwarmConfig,
    /// The chunk store's quota.
    pub store: StoreConfig,
    /// Whether this node may pull from the cloud registry.
    pub gateway: bool,
    /// Registry client settings (used when `gateway`).
    pub registry: RegistryConfig,
    /// The platform to resolve multi-arch images to.
    pub platform: Platform,
    /// Import sink; `None` picks Docker when its socket answers, else `dir`.
    pub import: Option<ImportSinkKind>,
    /// Publisher keys accepted for releases; empty accepts any signer.
    pub trusted: TrustedKeys,
    /// This node's labels, matched against release selectors.
    pub labels: BTreeMap<String, String>,
    /// Chunk size the gateway cuts layers in.
    pub chunk_size: ChunkSize,
    /// Versions of each repository kept once a newer one is imported
    /// (rollback window); older ones are unpinned and collected.
    pub keep_versions: usize,
}

/// Default of [`DaemonConfig::keep_versions`].
pub const DEFAULT_KEEP_VERSIONS: usize = 2;
/// Removal requests from gossip handled at once; more are dropped.
const MAX_GOSSIP_REMOVALS: usize = 4;

/// Why the daemon could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error("chunk store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The network layer could not start.
    #[error("swarm: {0}")]
    Swarm(#[from] crate::swarm::SwarmError),
    /// The registry client could not be built.
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The import sink could not be set up.
    #[error("import: {0}")]
    Import(#[from] crate::import::ImportError),
    /// A release was refused.
    #[error("release refused: {0}")]
    Refused(String),
    /// The node's identity key cannot sign (it must be ed25519).
    #[error("node identity: {0}")]
    Identity(String),
    /// The request conflicts with work in progress (retry later).
    #[error("{0}")]
    Conflict(String),
    /// A removal request was refused (untrusted, other locality, malformed).
    #[error("removal refused: {0}")]
    RemovalRefused(String),
    /// Removing an image's files failed.
    #[error("removing the image: {0}")]
    Remove(String),
}

/// A release as this node tracks it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseView {
    /// The release id (`sha256:...`).
    pub id: String,
    /// The image reference.
    pub image: String,
    /// The manifest digest.
    pub manifest: String,
    /// The state name (`announced`, `fetching`, `done`, ...).
    pub state: String,
    /// Layer bytes to fetch.
    pub bytes_total: u64,
    /// Layer bytes verified so far.
    pub bytes_done: u64,
    /// Bytes this node pulled from the registry for the release.
    pub bytes_from_cloud: u64,
    /// Bytes this node received from peers for the release.
    pub bytes_from_peers: u64,
    /// Seconds from accepting the release to the image being imported.
    pub seconds: Option<f64>,
    /// Why the release failed.
    pub error: Option<String>,
    /// The node that pulls the release from the registry, when known.
    pub gateway: Option<String>,
    /// When the release was made (unix seconds), when this node knows the
    /// release: tells a redeploy of the same image from the earlier one.
    #[serde(default)]
    pub created: Option<u64>,
}

/// Another node of the locality, as its status reports describe it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerView {
    /// Its peer id.
    pub peer_id: String,
    /// `node`, `gateway` or `bootstrap`.
    pub role: String,
    /// Whether it can pull from the registry.
    pub gateway_capable: bool,
    /// Seconds since its last report.
    pub last_seen_secs: f64,
    /// Whether it stopped reporting.
    pub gone: bool,
    /// Its releases, as it reports them.
    pub releases: Vec<ReleaseView>,
}

/// The locality as this node sees it (`edgeswarm status --json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusView {
    /// This node.
    #[serde(rename = "self")]
    pub this: SelfView,
    /// Every other node heard from.
    pub nodes: Vec<PeerView>,
    /// Releases this node refused recently (newest last).
    pub refused: Vec<RefusedView>,
}

/// A release this node refused, in [`StatusView`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RefusedView {
    /// The image the release named.
    pub image: String,
    /// The peer that gossiped it, when it came from the network.
    pub from: Option<String>,
    /// Why it was refused.
    pub reason: String,
}

/// Most complete blobs announced in one availability message (each entry
/// is about 40 bytes; gossip messages are at most 64 KiB).
const MAX_ANNOUNCED_BLOBS: usize = 1024;
/// A node re-announces its complete blobs at least this often, so nodes
/// that joined later learn of them.
const AVAILABILITY_REFRESH: Duration = Duration::from_secs(30);

/// How many refusals status keeps.
const MAX_REFUSALS: usize = 32;

/// This node, in [`StatusView`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SelfView {
    /// Its peer id.
    pub peer_id: String,
    /// Its listen addresses, each ending in `/p2p/<peer id>`.
    pub addresses: Vec<String>,
    /// `node` or `gateway`.
    pub role: String,
    /// Its locality.
    pub locality: String,
    /// Connected peers.
    pub connected_peers: usize,
    /// Its releases.
    pub releases: Vec<ReleaseView>,
}

/// Mutable state shared by the daemon's tasks.
#[derive(Default)]
struct State {
    /// Releases by id.
    releases: HashMap<Digest, Tracked>,
    /// Other nodes by peer id.
    peers: HashMap<PeerId, PeerEntry>,
    /// Recently refused releases, oldest first, at most [`MAX_REFUSALS`].
    refused: std::collections::VecDeque<RefusedView>,
    /// Blobs other nodes report holding complete (availability gossip), at
    /// most [`MAX_ANNOUNCED_BLOBS`] per peer: a gateway pulls only layers no
    /// live peer holds.
    complete_at: HashMap<PeerId, std::collections::HashSet<Digest>>,
}

/// What the daemon knows of another node.
struct PeerEntry {
    /// Its last status report.
    status: NodeStatus,
    /// When that report arrived.
    last_seen: Instant,
    /// Per release: when this node first saw the peer report it, and how
    /// long until it reported it done (as observed through status gossip,
    /// so within a status interval of the truth).
    timings: HashMap<Digest, (Instant, Option<Duration>)>,
}

/// One release on this node.
struct Tracked {
    /// The verified release.
    release: Release,
    /// Its phase.
    state: ReleaseState,
    /// When this node accepted it.
    accepted: Instant,
    /// How long it took to import, once done.
    took: Option<Duration>,
    /// The gateway currently expected to pull it.
    gateway: Option<PeerId>,
    /// Whether this node started pulling it as gateway.
    pulling: bool,
    /// Whether this node's pull (if any) has decided which layers it
    /// pulls from the registry (they are then in `Inner::pulling_blobs`).
    /// Until then this node's fetch pipeline asks no peer for layers: the
    /// gateway would otherwise download from its peers the very chunks its
    /// registry pull is writing (measured: 91 MB in for a 48.7 MB image).
    pull_planned: bool,
    /// Whether the fetch pipeline was started.
    fetching: bool,
    /// Layer bytes in the release.
    bytes_total: u64,
    /// Bytes pulled from the registry by this node.
    bytes_from_cloud: Arc<std::sync::atomic::AtomicU64>,
    /// Layers of the release (known once the manifest is verified).
    layers: Vec<Digest>,
    /// Layer bytes held when the release was accepted (not fetched).
    bytes_held_before: u64,
    /// Why it failed.
    error: Option<String>,
}

/// Shared core of a running daemon.
pub(crate) struct Inner {
    /// Configuration.
    config: DaemonConfig,
    /// The chunk store.
    store: Store,
    /// The network layer.
    swarm: SwarmClient,
    /// This node's identity as a signing key (signs resolutions and
    /// releases deployed without a publisher key).
    identity: PublisherKey,
    /// The registry client, on gateway-capable nodes.
    registry: Option<RegistryClient>,
    /// Where images go.
    sink: ImportSink,
    /// Releases and peers.
    state: Mutex<State>,
    /// Stops every task.
    shutdown: CancellationToken,
    /// Bounds the releases worked on at once.
    release_slots: Arc<tokio::sync::Semaphore>,
    /// Layers this node is pulling from the registry right now (its own
    /// fetch pipeline waits for them instead of asking peers).
    pulling_blobs: Mutex<std::collections::HashSet<Digest>>,
    /// Wakes the status loop when a release changes state, so the locality
    /// learns of completions without waiting for the next periodic report.
    status_changed: tokio::sync::Notify,
    /// Release-level metrics.
    metrics: DaemonMetrics,
    /// Every metric of the node, for `/metrics`.
    metrics_registry: prometheus_client::registry::Registry,
    /// Serialises updates of `versions.json` (the rollback window).
    versions_lock: tokio::sync::Mutex<()>,
    /// Bounds removal requests from gossip handled at once.
    removal_slots: Arc<tokio::sync::Semaphore>,
    /// A removal skipped garbage collection because releases were in
    /// progress; collect when they finish.
    gc_deferred: std::sync::atomic::AtomicBool,
}

/// Release-level Prometheus metrics.
#[derive(Clone, Default)]
struct DaemonMetrics {
    /// Releases imported.
    releases_done: prometheus_client::metrics::counter::Counter,
    /// Releases failed.
    releases_failed: prometheus_client::metrics::counter::Counter,
    /// Seconds from accepting a release to its image being imported.
    release_seconds: ReleaseHistogram,
    /// Bytes pulled from the cloud registry.
    cloud_bytes: prometheus_client::metrics::counter::Counter,
    /// Images removed (`rm`, `rm --locality`, the rollback window).
    images_removed: prometheus_client::metrics::counter::Counter,
    /// Removal requests refused (untrusted, other locality, stale).
    removals_refused: prometheus_client::metrics::counter::Counter,
    /// Per release and source (`cloud` or `peers`): layer bytes this node
    /// received, so an operator sees whether P2P is working for a release.
    release_bytes: prometheus_client::metrics::family::Family<
        ReleaseBytesLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

/// Labels of [`DaemonMetrics::release_bytes`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReleaseBytesLabels {
    /// The image reference of the release.
    image: String,
    /// `cloud` or `peers`.
    source: &'static str,
}

/// A histogram of release durations (seconds).
#[derive(Clone)]
struct ReleaseHistogram(prometheus_client::metrics::histogram::Histogram);

impl Default for ReleaseHistogram {
    fn default() -> Self {
        ReleaseHistogram(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.5, 2.0, 12),
        ))
    }
}

impl DaemonMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "releases_done",
            "Releases imported",
            self.releases_done.clone(),
        );
        registry.register(
            "releases_failed",
            "Releases failed",
            self.releases_failed.clone(),
        );
        registry.register(
            "release_duration_seconds",
            "Seconds from accepting a release to its image being imported",
            self.release_seconds.0.clone(),
        );
        registry.register(
            "cloud_bytes",
            "Bytes pulled from the cloud registry",
            self.cloud_bytes.clone(),
        );
        registry.register(
            "release_bytes",
            "Layer bytes received per release, by source (cloud or peers)",
            self.release_bytes.clone(),
        );
        registry.register(
            "images_removed",
            "Images removed by rm, rm --locality or the rollback window",
            self.images_removed.clone(),
        );
        registry.register(
            "removals_refused",
            "Removal requests refused (untrusted, other locality, stale, busy)",
            self.removals_refused.clone(),
        );
    }
}

/// A running node daemon. Cheap to clone.
#[derive(Clone)]
pub struct Daemon {
    /// The shared core.
    inner: Arc<Inner>,
}

impl Daemon {
    /// Opens the store, starts the swarm and the daemon's tasks.
    pub async fn start(config: DaemonConfig) -> Result<(Daemon, JoinHandle<()>), DaemonError> {
        let store = Store::open(config.data_dir.join("store"), config.store.clone()).await?;
        let keypair = keys::load_or_create_identity(&config.data_dir.join("identity.key"))?;
        let identity = publisher_key(&keypair)?;
        let (swarm, swarm_task) = Node::start(config.swarm.clone(), store.clone()).await?;
        let registry = if config.gateway {
            Some(RegistryClient::new(config.registry.clone())?)
        } else {
            None
        };
        let sink = match config.import {
            Some(kind) => ImportSink::from_kind(kind, &config.data_dir).await?,
            None => crate::import::detect_default_sink(&config.data_dir).await,
        };
        tracing::info!(
            peer_id = %swarm.local_peer_id(),
            locality = %config.swarm.locality,
            gateway = config.gateway,
            sink = %sink.kind(),
            "node started"
        );
        let metrics = DaemonMetrics::default();
        let mut registry_metrics = prometheus_client::registry::Registry::with_prefix("edgeswarm");
        metrics.register(&mut registry_metrics);
        swarm.metrics().register(&mut registry_metrics);
        let inner = Arc::new(Inner {
            config,
            store,
            swarm,
            identity,
            registry,
            sink,
            state: Mutex::new(State::default()),
            shutdown: CancellationToken::new(),
            release_slots: Arc::new(tokio::sync::Semaphore::new(MAX_ACTIVE_RELEASES)),
            pulling_blobs: Mutex::new(Default::default()),
            status_changed: tokio::sync::Notify::new(),
            metrics,
            metrics_registry: registry_metrics,
            versions_lock: tokio::sync::Mutex::new(()),
            removal_slots: Arc::new(tokio::sync::Semaphore::new(MAX_GOSSIP_REMOVALS)),
            gc_deferred: Default::default(),
        });
        let gossip = tokio::spawn(gossip_loop(inner.clone(), inner.swarm.subscribe_gossip()));
        let ticker = tokio::spawn(status_loop(inner.clone()));
        let shutdown = inner.shutdown.clone();
        let swarm_client = inner.swarm.clone();
        let store = inner.store.clone();
        let handle = tokio::spawn(async move {
            shutdown.cancelled().await;
            swarm_client.shutdown();
            gossip.abort();
            ticker.abort();
            // Imports blocked on chunks that will never come now fail, so
            // their blocking threads end; the journal is made durable.
            store.close();
            if let Err(e) = store.flush().await {
                tracing::warn!(error = %e, "store journal not flushed at shutdown");
            }
            let _ = swarm_task.await;
        });
        Ok((Daemon { inner }, handle))
    }

    /// The swarm handle (peer id, addresses, metrics).
    pub fn swarm(&self) -> &SwarmClient {
        &self.inner.swarm
    }

    /// The chunk store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The registry client, on gateway-capable nodes.
    pub fn registry(&self) -> Option<&RegistryClient> {
        self.inner.registry.as_ref()
    }

    /// Builds and signs a release of `image` for this locality. A reference
    /// by tag is resolved at the registry, so it needs a gateway-capable
    /// node; `IMAGE@sha256:...` works everywhere. Signed by `key`, or by
    /// the node's own identity.
    pub async fn prepare_release(
        &self,
        image: &str,
        selector: Vec<(String, String)>,
        key: Option<&PublisherKey>,
    ) -> Result<SignedRelease, DaemonError> {
        let reference = crate::registry::Reference::parse(image)
            .map_err(|e| DaemonError::Refused(format!("bad image reference {image:?}: {e}")))?;
        let platform = self.inner.config.platform.clone();
        let manifest = match (&self.inner.registry, reference.digest) {
            (Some(registry), _) => {
                registry
                    .resolve(&reference, &platform)
                    .await?
                    .manifest_digest
            }
            (None, Some(digest)) => digest,
            (None, None) => {
                return Err(DaemonError::Refused(format!(
                    "{image} is a tag; this node cannot reach the registry to resolve it \
                     (deploy through a --gateway node, or name the image by @sha256 digest)"
                )))
            }
        };
        let release = Release {
            image: image.to_owned(),
            manifest,
            platform: (&platform).into(),
            created: unix_seconds(),
            locality: self.inner.config.swarm.locality.clone(),
            selector,
        };
        Ok(SignedRelease::sign(
            release,
            key.unwrap_or(&self.inner.identity),
        ))
    }

    /// Validates a signed release as every node would and gossips it to the
    /// locality (this node acts on it too). Returns the release id.
    pub async fn publish_release(&self, signed: SignedRelease) -> Result<Digest, DaemonError> {
        let release = match self.inner.check_release(&signed) {
            Ok(r) => r,
            Err(e) => {
                self.inner.refuse(&signed, None, &e);
                return Err(e);
            }
        };
        let id = release.id();
        let bytes = GossipMessage::Release(signed).encode();
        self.inner.accept_release(release);
        if let Err(e) = self.inner.swarm.publish(Topic::Releases, bytes).await {
            // A locality of one has no gossip peers: the release still runs here.
            tracing::warn!(error = %e, "release not gossiped");
        }
        Ok(id)
    }

    /// The locality as this node sees it.
    pub async fn status(&self) -> StatusView {
        let me = self.inner.swarm.local_peer_id();
        // With the `/p2p/` suffix, ready to paste into another node's
        // `--bootstrap`.
        let addresses = self
            .inner
            .swarm
            .listen_addrs()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                if a.iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                {
                    a.to_string()
                } else {
                    a.with(libp2p::multiaddr::Protocol::P2p(me)).to_string()
                }
            })
            .collect();
        let connected_peers = self
            .inner
            .swarm
            .connected_peers()
            .await
            .map(|p| p.len())
            .unwrap_or(0);
        let state = self.inner.state.lock().expect("state lock");
        let releases = self.inner.release_views(&state);
        let nodes = state
            .peers
            .iter()
            .map(|(peer, entry)| PeerView {
                peer_id: peer.to_string(),
                role: role_name(entry.status.role).into(),
                gateway_capable: entry.status.gateway_capable,
                last_seen_secs: entry.last_seen.elapsed().as_secs_f64(),
                gone: entry.last_seen.elapsed() > PEER_TIMEOUT,
                releases: entry
                    .status
                    .releases
                    .iter()
                    .map(|p| {
                        let mut view = progress_view(p, &state);
                        view.seconds = entry
                            .timings
                            .get(&p.release_id)
                            .and_then(|t| t.1)
                            .map(|d| d.as_secs_f64());
                        view
                    })
                    .collect(),
            })
            .collect();
        StatusView {
            this: SelfView {
                peer_id: self.inner.swarm.local_peer_id().to_string(),
                addresses,
                role: if self.inner.config.gateway {
                    "gateway"
                } else {
                    "node"
                }
                .into(),
                locality: self.inner.config.swarm.locality.clone(),
                connected_peers,
                releases,
            },
            nodes,
            refused: state.refused.iter().cloned().collect(),
        }
    }

    /// Removes `image` from this node (pin, status, import sink, then
    /// unreferenced blobs). With `request`, the removal is first checked
    /// against this node's trust policy (as every node will check it) and
    /// then gossiped to the locality; `request` must name `image`.
    pub async fn remove(
        &self,
        image: &str,
        request: Option<SignedRemoval>,
    ) -> Result<RemoveReport, DaemonError> {
        let not_after = match &request {
            Some(signed) => {
                let removal = self.inner.check_removal(signed).inspect_err(|_| {
                    self.inner.metrics.removals_refused.inc();
                })?;
                if removal.image != image {
                    return Err(DaemonError::RemovalRefused(format!(
                        "the signed removal names {:?}, not {image:?}",
                        removal.image
                    )));
                }
                Some(removal.created)
            }
            None => None,
        };
        let report = self.inner.remove_image(image, not_after).await?;
        if let Some(signed) = request {
            let bytes = removal::encode_gossip(&signed);
            if let Err(e) = self.inner.swarm.publish(Topic::Releases, bytes).await {
                // A locality of one has no gossip peers.
                tracing::warn!(error = %e, "removal not gossiped");
            }
        }
        Ok(report)
    }

    /// Signs a removal of `image` for this locality with the node's own
    /// identity (accepted by nodes without `--trust`).
    pub fn sign_removal(&self, image: &str) -> SignedRemoval {
        SignedRemoval::sign(
            Removal {
                image: image.to_owned(),
                locality: self.inner.config.swarm.locality.clone(),
                created: unix_seconds(),
            },
            &self.inner.identity,
        )
    }

    /// Every metric of the node in the Prometheus text format.
    pub fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.metrics_registry)?;
        Ok(text)
    }

    /// Stops the daemon and its swarm.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }
}

impl Inner {
    /// Checks a release against this node's trust policy and locality.
    fn check_release(&self, signed: &SignedRelease) -> Result<Release, DaemonError> {
        let release = if self.config.trusted.is_empty() {
            signed.verify_embedded()
        } else {
            signed.verify_trusted(&self.config.trusted)
        }
        .map_err(|e| DaemonError::Refused(e.to_string()))?
        .clone();
        if release.locality != self.config.swarm.locality {
            return Err(DaemonError::Refused(format!(
                "release is for locality {:?}, this node is in {:?}",
                release.locality, self.config.swarm.locality
            )));
        }
        Ok(release)
    }

    /// Records and reports a refused release.
    fn refuse(&self, signed: &SignedRelease, from: Option<PeerId>, error: &DaemonError) {
        tracing::warn!(from = ?from, image = %signed.body_unverified().image, error = %error, "release refused");
        self.record_refusal(
            signed.body_unverified().image.clone(),
            from,
            error.to_string(),
        );
    }

    /// Keeps a refusal for status (bounded to [`MAX_REFUSALS`]).
    fn record_refusal(&self, image: String, from: Option<PeerId>, reason: String) {
        let mut state = self.state.lock().expect("state lock");
        if state.refused.len() == MAX_REFUSALS {
            state.refused.pop_front();
        }
        state.refused.push_back(RefusedView {
            image,
            from: from.map(|p| p.to_string()),
            reason,
        });
    }

    /// Whether `release`'s selector matches this node's labels.
    fn targets(&self, release: &Release) -> bool {
        release.selects(
            self.config
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// Starts tracking an accepted release, if this node is targeted.
    fn accept_release(self: &Arc<Self>, release: Release) {
        let targeted = self.targets(&release);
        let id = release.id();
        {
            let mut state = self.state.lock().expect("state lock");
            if state.releases.contains_key(&id) {
                return;
            }
            if !targeted && !self.config.gateway {
                tracing::info!(release = %id, "release does not select this node");
                return;
            }
            tracing::info!(release = %id, image = %release.image, "release accepted");
            state.releases.insert(
                id,
                Tracked {
                    release,
                    state: ReleaseState::Announced,
                    accepted: Instant::now(),
                    took: None,
                    gateway: None,
                    pulling: false,
                    pull_planned: false,
                    fetching: false,
                    bytes_total: 0,
                    bytes_from_cloud: Default::default(),
                    layers: Vec::new(),
                    bytes_held_before: 0,
                    error: None,
                },
            );
        }
        self.drive(id);
    }

    /// Moves a release forward: elects its gateway (and pulls if that is
    /// this node), and starts the fetch pipeline on targeted nodes.
    fn drive(self: &Arc<Self>, id: Digest) {
        let me = self.swarm.local_peer_id();
        let (pull, fetch) = {
            let mut state = self.state.lock().expect("state lock");
            let candidates = self.gateway_candidates(&state);
            let Some(t) = state.releases.get_mut(&id) else {
                return;
            };
            let gateway = election::elect(&t.release.manifest, &candidates)
                .map(|c| PeerId::from_bytes(c).expect("candidates are encoded peer ids"));
            if gateway != t.gateway {
                tracing::info!(release = %id, gateway = ?gateway, "gateway elected");
                t.gateway = gateway;
            }
            let pull = gateway == Some(me) && !t.pulling && t.state != ReleaseState::Done;
            if pull {
                t.pulling = true;
                t.pull_planned = false;
            }
            let fetch = self.targets(&t.release) && !t.fetching;
            if fetch {
                t.fetching = true;
            }
            (
                pull.then(|| t.release.clone()),
                fetch.then(|| t.release.clone()),
            )
        };
        if let Some(release) = pull {
            let inner = self.clone();
            tokio::spawn(async move { gateway::pull(inner, release).await });
        }
        if let Some(release) = fetch {
            let inner = self.clone();
            tokio::spawn(async move {
                let id = release.id();
                pipeline::run(inner.clone(), release.clone()).await;
                let done = inner
                    .state
                    .lock()
                    .expect("state lock")
                    .releases
                    .get(&id)
                    .is_some_and(|t| t.state == ReleaseState::Done);
                if done {
                    inner.retain_versions(&release.image, release.created).await;
                }
                inner.collect_deferred().await;
            });
        }
    }

    /// Whether a live peer reports holding `blob` complete.
    fn locality_holds(&self, blob: &Digest) -> bool {
        let state = self.state.lock().expect("state lock");
        state.complete_at.iter().any(|(peer, blobs)| {
            blobs.contains(blob)
                && state
                    .peers
                    .get(peer)
                    .is_some_and(|e| e.last_seen.elapsed() <= PEER_TIMEOUT)
        })
    }

    /// Live gateway-capable nodes, this one included, as encoded peer ids.
    fn gateway_candidates(&self, state: &State) -> Vec<Vec<u8>> {
        let mut candidates: Vec<Vec<u8>> = state
            .peers
            .iter()
            .filter(|(_, e)| e.status.gateway_capable && e.last_seen.elapsed() <= PEER_TIMEOUT)
            .map(|(p, _)| p.to_bytes())
            .collect();
        if self.config.gateway {
            candidates.push(self.swarm.local_peer_id().to_bytes());
        }
        candidates
    }

    /// The gateway pull of release `id` on this node has marked the layers
    /// it pulls from the registry.
    fn set_pull_planned(&self, id: &Digest) {
        let mut state = self.state.lock().expect("state lock");
        if let Some(t) = state.releases.get_mut(id) {
            t.pull_planned = true;
        }
    }

    /// Whether this node must not fetch `blob` of release `id` from peers
    /// now: its own gateway pull is deciding what to pull, or pulls `blob`.
    fn pulls_itself(&self, id: &Digest, blob: &Digest) -> bool {
        let planning = self
            .state
            .lock()
            .expect("state lock")
            .releases
            .get(id)
            .is_some_and(|t| t.pulling && !t.pull_planned);
        planning
            || self
                .pulling_blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(blob)
    }

    /// Records a phase change.
    fn set_state(&self, id: &Digest, new: ReleaseState, error: Option<String>) {
        let mut state = self.state.lock().expect("state lock");
        if let Some(t) = state.releases.get_mut(id) {
            if t.state == ReleaseState::Done || t.state == ReleaseState::Failed {
                return;
            }
            t.state = new;
            if new == ReleaseState::Done {
                let took = t.accepted.elapsed();
                t.took = Some(took);
                self.metrics.releases_done.inc();
                self.metrics.release_seconds.0.observe(took.as_secs_f64());
            }
            if new == ReleaseState::Failed {
                self.metrics.releases_failed.inc();
            }
            self.status_changed.notify_one();
            if let Some(e) = error {
                tracing::error!(release = %id, error = %e, "release failed");
                t.error = Some(e);
            }
        }
    }

    /// Progress of this node's releases, as status reports carry it.
    fn progress(&self, state: &State) -> Vec<ReleaseProgress> {
        state
            .releases
            .iter()
            .map(|(id, t)| {
                let bytes_done = self.bytes_done(t);
                let from_cloud = t
                    .bytes_from_cloud
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .min(t.bytes_total);
                ReleaseProgress {
                    release_id: *id,
                    state: t.state,
                    bytes_total: t.bytes_total,
                    bytes_done,
                    bytes_from_cloud: from_cloud,
                    bytes_from_peers: bytes_done
                        .saturating_sub(from_cloud)
                        .saturating_sub(t.bytes_held_before),
                    error: t.error.clone(),
                }
            })
            .collect()
    }

    /// Verified bytes of a release's layers in the store.
    fn bytes_done(&self, t: &Tracked) -> u64 {
        t.layers
            .iter()
            .map(|layer| match self.store.blob_info(layer) {
                Some(info) if self.store.is_complete(layer) => info.size,
                Some(info) => self
                    .store
                    .bitfield(layer)
                    .map(|b| (b.count_ones() as u64 * info.chunk_size.get() as u64).min(info.size))
                    .unwrap_or(0),
                None => 0,
            })
            .sum()
    }

    /// Views of this node's releases.
    fn release_views(&self, state: &State) -> Vec<ReleaseView> {
        self.progress(state)
            .iter()
            .map(|p| progress_view(p, state))
            .collect()
    }

    /// This node's status report (also refreshes the per-release metrics).
    fn status_report(&self) -> NodeStatus {
        let state = self.state.lock().expect("state lock");
        for p in self.progress(&state) {
            if let Some(t) = state.releases.get(&p.release_id) {
                for (source, bytes) in
                    [("cloud", p.bytes_from_cloud), ("peers", p.bytes_from_peers)]
                {
                    self.metrics
                        .release_bytes
                        .get_or_create(&ReleaseBytesLabels {
                            image: t.release.image.clone(),
                            source,
                        })
                        .set(bytes as i64);
                }
            }
        }
        NodeStatus {
            role: if self.config.gateway {
                PeerRole::Gateway
            } else {
                PeerRole::Node
            },
            gateway_capable: self.config.gateway,
            timestamp_ms: unix_millis(),
            releases: self.progress(&state),
        }
    }
}

/// Renders a progress entry, adding what this node knows of the release.
fn progress_view(p: &ReleaseProgress, state: &State) -> ReleaseView {
    let tracked = state.releases.get(&p.release_id);
    ReleaseView {
        id: p.release_id.to_string(),
        image: tracked.map(|t| t.release.image.clone()).unwrap_or_default(),
        manifest: tracked
            .map(|t| t.release.manifest.to_string())
            .unwrap_or_default(),
        state: state_name(p.state).into(),
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        bytes_from_cloud: p.bytes_from_cloud,
        bytes_from_peers: p.bytes_from_peers,
        seconds: tracked.and_then(|t| t.took).map(|d| d.as_secs_f64()),
        error: p.error.clone(),
        gateway: tracked.and_then(|t| t.gateway).map(|g| g.to_string()),
        created: tracked.map(|t| t.release.created),
    }
}

/// The lowercase name of a release state.
pub fn state_name(state: ReleaseState) -> &'static str {
    match state {
        ReleaseState::Announced => "announced",
        ReleaseState::Resolving => "resolving",
        ReleaseState::Fetching => "fetching",
        ReleaseState::Importing => "importing",
        ReleaseState::Done => "done",
        ReleaseState::Failed => "failed",
    }
}

/// The lowercase name of a role.
fn role_name(role: PeerRole) -> &'static str {
    match role {
        PeerRole::Node => "node",
        PeerRole::Gateway => "gateway",
        PeerRole::Bootstrap => "bootstrap",
    }
}

/// Handles every validated gossip message.
async fn gossip_loop(inner: Arc<Inner>, mut rx: broadcast::Receiver<crate::swarm::ReceivedGossip>) {
    loop {
        let msg = match rx.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "gossip handler lagged");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // Decoded and validated once, by the swarm.
        match msg.message {
            GossipMessage::Release(signed) => match inner.check_release(&signed) {
                Ok(release) => inner.accept_release(release),
                Err(e) => inner.refuse(&signed, msg.source, &e),
            },
            GossipMessage::Status(status) => {
                if let Some(peer) = msg.source {
                    let mut state = inner.state.lock().expect("state lock");
                    let now = Instant::now();
                    let entry = state.peers.entry(peer).or_insert_with(|| PeerEntry {
                        status: status.clone(),
                        last_seen: now,
                        timings: HashMap::new(),
                    });
                    entry
                        .timings
                        .retain(|id, _| status.releases.iter().any(|r| r.release_id == *id));
                    for r in &status.releases {
                        let timing = entry.timings.entry(r.release_id).or_insert((now, None));
                        if r.state == ReleaseState::Done && timing.1.is_none() {
                            timing.1 = Some(now.duration_since(timing.0));
                        }
                    }
                    entry.status = status;
                    entry.last_seen = now;
                }
            }
            GossipMessage::Resolution(signed) => on_resolution(&inner, msg.source, signed).await,
            GossipMessage::ChunkDigests(signed) => {
                on_chunk_digests(&inner, msg.source, signed).await
            }
            GossipMessage::Removal(signed) => on_removal(&inner, msg.source, signed),
            GossipMessage::Availability(batch) => {
                if let Some(peer) = msg.source {
                    let complete: std::collections::HashSet<Digest> = batch
                        .entries
                        .iter()
                        .filter(|e| matches!(e.availability, Availability::Complete))
                        .map(|e| e.blob)
                        .take(MAX_ANNOUNCED_BLOBS)
                        .collect();
                    // Each message lists everything the peer holds complete
                    // (up to the cap), so removals show as well.
                    let mut state = inner.state.lock().expect("state lock");
                    state.complete_at.insert(peer, complete);
                }
            }
        }
    }
}

/// A gateway announces chunk digests of a layer it is pulling. Accepted
/// only from the gateway elected for that release, signed with its own
/// identity: a member that lies cannot poison a transfer.
async fn on_chunk_digests(
    inner: &Arc<Inner>,
    source: Option<PeerId>,
    signed: SignedChunkDigestUpdate,
) {
    let Some(source) = source else { return };
    let Some(key) = peer_public_key(&source) else {
        return;
    };
    let update = match signed.verify_signer(&key) {
        Ok(update) => update.clone(),
        Err(e) => {
            tracing::warn!(%source, error = %e, "forged chunk digests");
            return;
        }
    };
    let gateway = update.release_id.and_then(|id| {
        let state = inner.state.lock().expect("state lock");
        state.releases.get(&id).map(|t| t.gateway)
    });
    match gateway {
        Some(Some(gateway)) if gateway == source => {}
        Some(_) => {
            tracing::warn!(%source, blob = %update.blob, "chunk digests from a peer that is not the release's gateway; ignored");
            return;
        }
        None => return, // a release this node does not follow
    }
    let store = &inner.store;
    if let Err(e) = store
        .create_blob(update.blob, update.blob_size, update.chunk_size)
        .await
    {
        tracing::warn!(blob = %update.blob, error = %e, "cannot declare layer");
        return;
    }
    if let Err(e) = store
        .add_chunk_digests(update.blob, update.first_index, &update.digests)
        .await
    {
        tracing::warn!(%source, blob = %update.blob, error = %e, "chunk digests refused");
    }
}

/// A removal request arrived on gossip: checked like a release, then run
/// in the background (bounded; extra requests are dropped and logged).
fn on_removal(inner: &Arc<Inner>, source: Option<PeerId>, signed: SignedRemoval) {
    let checked = inner.check_removal(&signed);
    let removal = match checked {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(from = ?source, error = %e, "removal refused");
            inner.metrics.removals_refused.inc();
            inner.record_refusal(String::new(), source, e.to_string());
            return;
        }
    };
    let Ok(slot) = inner.removal_slots.clone().try_acquire_owned() else {
        tracing::warn!(image = %removal.image, "too many removals at once; request dropped");
        return;
    };
    let inner = inner.clone();
    tokio::spawn(async move {
        let _slot = slot;
        match inner
            .remove_image(&removal.image, Some(removal.created))
            .await
        {
            Ok(report) => tracing::info!(from = ?source, ?report, "removed on request"),
            Err(e) => {
                tracing::warn!(from = ?source, image = %removal.image, error = %e, "removal request not applied");
                inner.metrics.removals_refused.inc();
                inner.record_refusal(removal.image.clone(), source, e.to_string());
            }
        }
    });
}

/// A gateway says a release is resolved. Accepted only from the release's
/// elected gateway, signed with its own identity (as chunk digests are).
/// Nodes still read the layers from the manifest the release pins; the
/// resolution lets them declare the blobs at once, so their downloads
/// start without asking peers for chunk maps first (measured: a node held
/// the manifest 0.6-1.1 s after the release, and its layers began
/// arriving only then, while the gateway's pull was already running).
async fn on_resolution(
    inner: &Arc<Inner>,
    source: Option<PeerId>,
    signed: SignedReleaseResolution,
) {
    let Some(source) = source else { return };
    let Some(key) = peer_public_key(&source) else {
        tracing::warn!(%source, "resolution from a peer without an ed25519 key");
        return;
    };
    let resolution = match signed.verify_signer(&key) {
        Ok(resolution) => resolution.clone(),
        Err(e) => {
            tracing::warn!(%source, error = %e, "forged release resolution");
            return;
        }
    };
    let gateway = {
        let state = inner.state.lock().expect("state lock");
        state
            .releases
            .get(&resolution.release_id)
            .map(|t| t.gateway)
    };
    match gateway {
        Some(Some(gateway)) if gateway == source => {}
        Some(_) => {
            tracing::warn!(%source, release = %resolution.release_id, "resolution from a peer that is not the release's gateway; ignored");
            return;
        }
        None => return, // a release this node does not follow
    }
    tracing::debug!(release = %resolution.release_id, gateway = %source, "release resolved");
    declare_resolved(&inner.store, &resolution).await;
}

/// Declares the blobs of a resolution in the store: each with its layout,
/// and a blob of one chunk with that chunk's digest too (its own digest),
/// so it can be fetched and verified before any map or digest update.
async fn declare_resolved(store: &Store, resolution: &edgeswarm_protocol::wire::ReleaseResolution) {
    let chunk = resolution.chunk_size;
    let blobs = [&resolution.manifest, &resolution.config]
        .into_iter()
        .chain(resolution.layers.iter());
    for blob in blobs {
        if store.blob_info(&blob.digest).is_some() || store.is_complete(&blob.digest) {
            continue;
        }
        if let Err(e) = store.create_blob(blob.digest, blob.size, chunk).await {
            tracing::debug!(blob = %blob.digest, error = %e, "cannot declare resolved blob");
            continue;
        }
        if blob.size > 0 && blob.size <= u64::from(chunk.get()) {
            if let Err(e) = store
                .add_chunk_digests(blob.digest, 0, &[blob.digest])
                .await
            {
                tracing::debug!(blob = %blob.digest, error = %e, "cannot record a one-chunk digest");
            }
        }
    }
}

/// Publishes status reports and re-runs gateway election as peers come and
/// go, so a release whose gateway died is taken over.
async fn status_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    let mut announced: Vec<Digest> = Vec::new();
    let mut last_refresh: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.status_changed.notified() => {
                // Coalesce bursts of changes into one report.
                tokio::time::sleep(MIN_STATUS_GAP).await;
            }
        }
        let report = GossipMessage::Status(inner.status_report()).encode();
        if let Err(e) = inner.swarm.publish(Topic::Status, report).await {
            tracing::trace!(error = %e, "status not published");
        }
        // Announce the complete blobs when the set changed, and now and then.
        let mut complete: Vec<Digest> = inner
            .store
            .blobs()
            .into_iter()
            .filter(|b| b.complete)
            .map(|b| b.digest)
            .take(MAX_ANNOUNCED_BLOBS)
            .collect();
        complete.sort();
        let stale = last_refresh.is_none_or(|t| t.elapsed() >= AVAILABILITY_REFRESH);
        if complete != announced || stale {
            let entries = complete
                .iter()
                .map(|blob| AvailabilityEntry {
                    blob: *blob,
                    availability: Availability::Complete,
                })
                .collect();
            let batch = GossipMessage::Availability(AvailabilityBatch { entries }).encode();
            match inner.swarm.publish(Topic::Availability, batch).await {
                Ok(()) => {
                    last_refresh = Some(Instant::now());
                    announced = complete;
                }
                Err(e) => tracing::trace!(error = %e, "availability not published"),
            }
        }
        let pending: Vec<Digest> = {
            let state = inner.state.lock().expect("state lock");
            state
                .releases
                .iter()
                .filter(|(_, t)| {
                    !matches!(t.state, ReleaseState::Done | ReleaseState::Failed) || t.pulling
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for id in pending {
            inner.drive(id);
        }
    }
}

/// The ed25519 public key behind a peer id (libp2p inlines ed25519 keys).
pub(crate) fn peer_public_key(peer: &PeerId) -> Option<PublicKey> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    PublicKey::from_bytes(ed.to_bytes()).ok()
}

/// The node's libp2p identity as a signing key: resolutions it signs verify
/// against the public key inlined in its peer id.
fn publisher_key(keypair: &libp2p::identity::Keypair) -> Result<PublisherKey, DaemonError> {
    let ed = keypair
        .clone()
        .try_into_ed25519()
        .map_err(|_| DaemonError::Identity("not an ed25519 key".into()))?;
    let secret: [u8; 32] = ed
        .secret()
        .as_ref()
        .try_into()
        .map_err(|_| DaemonError::Identity("ed25519 secret is not 32 bytes".into()))?;
    Ok(PublisherKey::from_secret_bytes(secret))
}

/// Seconds since the unix epoch.
fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the unix epoch.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
