//! The node daemon: what turns a release announcement into an imported
//! image on every node of a locality.
//!
//! ## Layout
//!
//! - this module: [`Daemon`], its [`DaemonConfig`], the shared core
//!   (`Inner`), start and shutdown;
//! - state, each with one owner:
//!   - `releases`: the release table, the only code that changes release
//!     state (phases, the elected gateway, the gateway's pull plan,
//!     layers, refusals); its methods enforce the phase order;
//!   - `peers`: the other nodes as their status and availability gossip
//!     describe them (liveness, what they hold complete);
//!   - `desired`: the locality's desired state, per image the newest
//!     signed release or removal by publisher sequence; persisted in
//!     `desired.json` and resumed at start; refuses older and replayed
//!     messages; its digest in status reports drives anti-entropy;
//! - what moves a release:
//!   - `drive`: trust checks, acceptance, gateway election and starting
//!     the pull and the fetch; each phase change goes through it (metrics,
//!     a prompt status report); [`Daemon::prepare_release`] and
//!     [`Daemon::publish_release`];
//!   - `gateway`: the pull side. The gateway-capable node elected for a
//!     release (rendezvous hashing, `protocol::election`) resolves it at
//!     the registry, announces the resolution, and pulls the layers the
//!     locality lacks into its store, once, chunk by chunk;
//!   - `pipeline`: the fetch side, run by every targeted node: manifest
//!     and config, then every layer from the swarm, each streamed from the
//!     store into the import sink while it downloads;
//!   - `removal`: `rm`, `rm --locality` and the rollback window;
//!   - `mirror`: the registry mirror's misses ([`Daemon::mirror_manifest`],
//!     [`Daemon::mirror_blob`]): mirror releases (a release that selects
//!     no node, pulled by the elected gateway like any other) and the
//!     mirror jobs that fetch, stream and pin their blobs; the trust model
//!     of tag answers;
//! - what the node hears and says:
//!   - `gossip`: `dispatch` hands each gossip message (decoded once, by
//!     the swarm) to the `on_*` handler of its kind;
//!   - `status`: the loop that reports status and availability, pushes
//!     the desired state to peers whose digest differs (anti-entropy) and drives
//!     pending releases again (failover);
//! - what it shows: `views` (the API's JSON: [`StatusView`],
//!   [`ReleasePhase`], ...) and `metrics` (Prometheus);
//! - `error`: [`DaemonError`] for callers, `ReleaseError` for why a
//!   release failed.
//!
//! Locks: the release table and the peer table each have one mutex, never
//! held together nor across an await, and recovered when poisoned (see
//! `releases`).
//!
//! ## Trust chain
//!
//! A release is signed by a publisher key the node trusts. A node with no
//! `--trust` key refuses every release and removal, unless it runs with
//! `--allow-any-publisher` (labs: any key, the embedded-signer mode). It pins
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
//!   A gateway acting on a release (signing its chunk digests, or
//!   retrying its pull) keeps it: a killed gateway that returns while the
//!   runner-up pulls defers to it (`protocol::election::elect_acting`),
//!   whether it resumes the release from disk or, wiped, learns it from
//!   its peers (`drive`: a release it is late to is held and deferred),
//!   and of two gateways pulling at once the worse-ranked one stops.
//! - Non-goals: scheduling containers after import; pulling from more than
//!   one registry mirror.

mod desired;
mod drive;
mod error;
mod gateway;
mod gossip;
mod metrics;
mod mirror;
mod peers;
mod pipeline;
mod ready;
mod releases;
mod removal;
mod status;
mod views;

pub use desired::DesiredView;
pub use error::DaemonError;
use gossip::gossip_loop;
use metrics::DaemonMetrics;
pub use mirror::{
    MirrorBlob, MirrorError, MirrorManifest, BLOB_WAIT, CHUNK_WAIT, MANIFEST_WAIT, MIRROR_SELECTOR,
    STALL_LIMIT, TAG_ANSWER_TTL,
};
use peers::Peers;
pub use ready::{Readiness, ReadyCheck, ReadyGate};
use releases::Releases;
use status::status_loop;
pub use views::{
    PeerView, RefusedView, ReleasePhase, ReleaseView, SelfView, StatusAfter, StatusView,
    MAX_STATUS_WAIT,
};

pub use removal::{
    decode_signed as decode_removal, encode_gossip as encode_removal_gossip, repository_of,
    Removal, RemoveReport, SignedRemoval,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use edgeswarm_protocol::signing::{PublicKey, PublisherKey, TrustedKeys};
use edgeswarm_protocol::ChunkSize;
use libp2p::PeerId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::import::{ImportSink, ImportSinkKind};
use crate::registry::{Platform, RegistryClient, RegistryConfig};
use crate::store::{Store, StoreConfig};
use crate::swarm::{keys, Node, SwarmClient, SwarmConfig};

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
    /// Publisher keys accepted for releases and removals. Empty refuses
    /// them all unless `allow_any_publisher`.
    pub trusted: TrustedKeys,
    /// With no `trusted` key: accept releases and removals signed by any
    /// key (labs only; logged loudly at start and shown in status).
    pub allow_any_publisher: bool,
    /// The only peers that may act as this locality's gateway (be elected
    /// to pull a release, and so sign its resolution and chunk digests);
    /// this node itself pulls only when listed. Empty lets every
    /// gateway-capable member (labs; logged at start and shown in
    /// status). Every node of a locality must hold the same list, or they
    /// elect different gateways.
    pub trusted_gateways: Vec<PeerId>,
    /// This node's labels, matched against release selectors.
    pub labels: BTreeMap<String, String>,
    /// Chunk size the gateway cuts layers in.
    pub chunk_size: ChunkSize,
    /// Versions of each repository kept once a newer one is imported
    /// (rollback window); older ones are unpinned and collected.
    pub keep_versions: usize,
    /// Bound on each layer's uncompressed size (decompression bombs).
    pub unpack: crate::import::UnpackLimit,
    /// What `dir` imports may create (device nodes, setuid bits).
    pub dir: crate::import::DirPolicy,
}

/// Default of [`DaemonConfig::keep_versions`].
pub const DEFAULT_KEEP_VERSIONS: usize = 2;
/// Removal requests from gossip handled at once; more are dropped.
const MAX_GOSSIP_REMOVALS: usize = 4;

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
    /// Every release this node tracks: the only owner of release state.
    releases: Releases,
    /// The locality's desired state as this node knows it.
    desired: desired::Desired,
    /// The other nodes of the locality, as gossip describes them.
    peers: Peers,
    /// Stops every task.
    shutdown: CancellationToken,
    /// Bounds the releases worked on at once.
    release_slots: Arc<tokio::sync::Semaphore>,
    /// Wakes the status loop when a release changes state, so the locality
    /// learns of completions without waiting for the next periodic report.
    status_changed: tokio::sync::Notify,
    /// Counts this node's release phase changes (every change recorded by
    /// `record_phase`): what a long-polling `GET /v1/status` waits on.
    phases: tokio::sync::watch::Sender<u64>,
    /// Gateway messages that arrived before this node elected the gateway.
    early: gossip::EarlyMessages,
    /// Release-level metrics.
    metrics: DaemonMetrics,
    /// Every metric of the node, for `/metrics`.
    metrics_registry: prometheus_client::registry::Registry,
    /// Serialises updates of `versions.json` (the rollback window).
    versions_lock: tokio::sync::Mutex<()>,
    /// Bounds removal requests from gossip handled at once.
    removal_slots: Arc<tokio::sync::Semaphore>,
    /// The registry mirror's jobs, the mirror releases seen, its metrics.
    mirror: mirror::MirrorState,
    /// A removal skipped garbage collection because releases were in
    /// progress; collect when they finish.
    gc_deferred: std::sync::atomic::AtomicBool,
    /// Readiness (`/v1/ready`): joined flag and component gates.
    ready: ready::ReadyState,
    /// A peer arrived: re-announce the complete blobs now rather than at
    /// the next refresh.
    announce_availability: std::sync::atomic::AtomicBool,
    /// A live peer newly reports an empty desired state (a late joiner, a
    /// wiped node): anti-entropy pushes to it now, even within
    /// `status::SYNC_INTERVAL` of its last push.
    push_to_empty_peer: std::sync::atomic::AtomicBool,
    /// One registry pull of a layer at a time on this node, whichever
    /// releases want it (see `gateway::pull_layer`).
    layer_pulls: gateway::LayerPulls,
    /// When this daemon started: a release learned from peers before it
    /// has heard every live peer is held like a resumed one
    /// (`Inner::late_hold`).
    started: std::time::Instant,
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
        for warning in trust_warnings(&config, swarm.local_peer_id()) {
            tracing::warn!("{warning}");
        }
        let metrics = DaemonMetrics::default();
        let mut registry_metrics = prometheus_client::registry::Registry::with_prefix("edgeswarm");
        metrics.register(&mut registry_metrics);
        swarm.metrics().register(&mut registry_metrics);
        let mirror = mirror::MirrorState::default();
        mirror.metrics.register(&mut registry_metrics);
        let desired_path = config.data_dir.join("desired.json");
        let inner = Arc::new(Inner {
            config,
            store,
            swarm,
            identity,
            registry,
            sink,
            releases: Releases::default(),
            desired: desired::Desired::new(desired_path),
            peers: Peers::default(),
            shutdown: CancellationToken::new(),
            release_slots: Arc::new(tokio::sync::Semaphore::new(MAX_ACTIVE_RELEASES)),
            status_changed: tokio::sync::Notify::new(),
            phases: tokio::sync::watch::Sender::new(0),
            early: gossip::EarlyMessages::default(),
            metrics,
            metrics_registry: registry_metrics,
            versions_lock: tokio::sync::Mutex::new(()),
            removal_slots: Arc::new(tokio::sync::Semaphore::new(MAX_GOSSIP_REMOVALS)),
            gc_deferred: Default::default(),
            mirror,
            ready: Default::default(),
            announce_availability: Default::default(),
            push_to_empty_peer: Default::default(),
            layer_pulls: Default::default(),
            started: std::time::Instant::now(),
        });
        // Subscribe before resuming, so no release gossiped meanwhile is missed.
        let gossip_rx = inner.swarm.subscribe_gossip();
        inner.resume_desired().await;
        let gossip = tokio::spawn(gossip_loop(inner.clone(), gossip_rx));
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

    /// Stops the daemon and its swarm.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }
}

/// Why this node refuses every release and removal, when it does: no
/// trusted publisher key and no `--allow-any-publisher`.
pub(crate) const NO_TRUSTED_KEY: &str = "this node trusts no publisher key, so it refuses every \
     release and removal: write a key pair with `edgeswarm keygen --out publisher.key`, start \
     the node with `--trust publisher.key.pub`, and deploy with `--key publisher.key` \
     (labs: `--allow-any-publisher`)";

/// What an operator must know about this node's trust and membership
/// settings: logged at start and shown in status.
pub(crate) fn trust_warnings(config: &DaemonConfig, me: PeerId) -> Vec<String> {
    let mut out = Vec::new();
    if config.trusted.is_empty() {
        if config.allow_any_publisher {
            out.push(
                "--allow-any-publisher: this node installs and removes whatever any key signs; \
                 anyone in the locality can change what it runs (labs only)"
                    .to_owned(),
            );
        } else {
            out.push(NO_TRUSTED_KEY.to_owned());
        }
    }
    if config.trusted_gateways.is_empty() {
        out.push(
            "no --trust-gateway: any gateway-capable member of the locality can be elected \
             to pull a release and sign its chunk digests, and a member that wins the \
             election and never pulls holds the release up; list the gateways' peer ids \
             with --trust-gateway on every node to close it"
                .to_owned(),
        );
    } else if config.gateway && !config.trusted_gateways.contains(&me) {
        out.push(format!(
            "--gateway, but this node ({me}) is not among the --trust-gateway peers: it is \
             never elected and pulls nothing"
        ));
    }
    if config.swarm.swarm_key.is_none() {
        out.push(
            "open locality (no swarm key): any host that reaches this node can join the \
             locality, gossip to it and exchange chunks; use `edgeswarm swarm-key --out \
             swarm.key` and `--swarm-key swarm.key` on every node to close it"
                .to_owned(),
        );
    }
    out
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
    // The same key that seals this node's gossip.
    crate::swarm::behaviour::gossip_key(keypair).map_err(|e| DaemonError::Identity(e.to_string()))
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
