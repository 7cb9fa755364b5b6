//! # node::swarm — the peer-to-peer layer of an edgeswarm node
//!
//! Every locality is a BitTorrent-like swarm over libp2p. This module owns
//! the network: identity and membership, discovery, gossip, and the chunk
//! exchange that moves blob bytes between peers.
//!
//! ## Layout
//!
//! - [`keys`]: persistent ed25519 identity (`<data-dir>/identity.key`) and
//!   go-ipfs `swarm.key` pre-shared keys (pnet).
//! - [`behaviour`]: the composed libp2p behaviour (Kademlia, gossipsub and
//!   identify scoped to `/edgeswarm/<locality>/...`, mDNS, ping, connection
//!   limits, ban list, `libp2p-stream`) and transport. The bootstrap peer
//!   ([`Node::start_bootstrap`], which the `edgeswarm-bootstrap` binary
//!   calls) runs this same behaviour and swarm task, with no store and so
//!   no chunk exchange.
//! - `task` (private): the single task that owns the `Swarm`. It never blocks;
//!   it answers [`SwarmClient`] commands (bounded mpsc + oneshot replies,
//!   the rust-libp2p `file-sharing` example shape), decodes and validates
//!   every gossip message once and hands it on decoded ([`ReceivedGossip`]),
//!   applies bans.
//! - `exchange` (private): the chunk protocol over raw `libp2p-stream`
//!   streams (framing in `frame`). Bytes go from the socket to the store
//!   without passing through the swarm task. One downloader task per blob
//!   runs the `protocol::picker::Picker` over per-peer sessions; one server task
//!   per inbound stream serves verified chunks under upload slots and an
//!   optional token-bucket rate.
//! - [`chunkstore`]: the storage operations the swarm needs, implemented
//!   for `node::store::Store` (what nodes, tests and benches run on) and
//!   by the empty [`chunkstore::NoStore`] of the bootstrap peer. A blob is
//!   fetchable and servable as soon as its layout is declared: chunks are
//!   requested only once their digests are known, so a gateway's chunks
//!   are forwarded while it is still streaming the layer in.
//! - [`metrics`]: prometheus counters/gauges and per-node statistics.
//! - `redial` (private): when a node with no connection dials its
//!   bootstrap peers again (backing off from 1 s to 30 s).
//!
//! ## Goals
//!
//! - Every node of a locality receives a blob at close to its own link
//!   speed, whatever the number of nodes; a seed uploads each chunk about
//!   once (rarest-first + seed sparing); partial blobs are served.
//! - Every chunk is verified before use or forwarding; a peer that sends a
//!   bad chunk, a false chunk map, or breaks the protocol is banned for a
//!   while (`ban_duration`, kept across restarts in `<data-dir>/bans.json`);
//!   stalled peers' requests move elsewhere; dead peers leave the
//!   availability maps.
//! - Everything is bounded: channels, in-flight requests, upload slots,
//!   inbound streams, frame sizes, connections.
//!
//! ## Non-goals
//!
//! - NAT traversal, relays, QUIC (a LAN is assumed), WAN DHT participation.
//! - Deciding *what* to fetch (releases, manifests): callers ask for blobs.

pub mod behaviour;
pub mod chunkstore;
mod exchange;
mod frame;
pub mod keys;
pub mod metrics;
mod ratelimit;
mod redial;
mod security;
mod task;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgeswarm_protocol::upload::UploadConfig;
use edgeswarm_protocol::{wire, ChunkMap, Digest};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use behaviour::{Protocols, Topic};
pub use chunkstore::{BlobLayout, ChunkStore, ChunkStoreError, ChunkWrite, Dispute};
pub use metrics::{SwarmMetrics, SwarmStats};
pub use task::BANS_FILE;

/// Errors of the swarm layer.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The identity key file is unusable.
    #[error("identity key {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The swarm key file is unusable.
    #[error("swarm key {path}: {reason}")]
    SwarmKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid swarm configuration: {0}")]
    Config(String),
    /// The transport could not be built or could not listen.
    #[error("transport: {0}")]
    Transport(String),
    /// The node is shutting down or has stopped.
    #[error("the swarm has shut down")]
    Shutdown,
    /// The store failed locally.
    #[error("store: {0}")]
    Store(#[from] ChunkStoreError),
    /// A gossip message could not be published.
    #[error("publish: {0}")]
    Publish(String),
    /// A blob's chunk map could not be obtained from any peer.
    #[error("no peer provided a chunk map for {0}")]
    NoChunkMap(Digest),
}

/// Configuration of a swarm node. Build it with [`SwarmConfig::new`] and
/// adjust fields; every field has a sensible LAN default.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Data directory; holds `identity.key`.
    pub data_dir: PathBuf,
    /// Locality name: scopes the DHT, gossip and chunk protocols.
    pub locality: String,
    /// Addresses to listen on (e.g. `/ip4/0.0.0.0/tcp/4001`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (`/ip4/../tcp/../p2p/<id>` preferred), and
    /// again while the node has no connection at all.
    pub bootstrap: Vec<Multiaddr>,
    /// go-ipfs swarm.key file restricting membership (pnet).
    pub swarm_key: Option<PathBuf>,
    /// Discover peers with mDNS.
    pub mdns: bool,
    /// Upload rate cap in bytes per second (token bucket), if any.
    pub max_upload_rate: Option<u64>,
    /// Chunks served concurrently at most (upload slots).
    pub upload_slots: usize,
    /// Chunk requests that may wait for an upload slot; more are answered
    /// `Busy` at once, and the requester asks another holder. Requests for
    /// a super-seeding origin's chunks, which have no other holder, may
    /// wait up to 3 (`UploadConfig::origin_queue`) when this is less.
    pub upload_queue: usize,
    /// Requests pipelined to one peer at most.
    pub requests_per_peer: usize,
    /// Requests of one download outstanding over all its peers at most
    /// (`None`: only the per-peer limit): a request then goes out when a
    /// chunk lands, to whichever holder is free, instead of waiting at a
    /// busy one.
    pub max_requests: Option<usize>,
    /// Peers one download talks to at most.
    pub max_download_peers: usize,
    /// Inbound chunk streams served at once at most; further streams are
    /// dropped unread (their requesters open them again shortly).
    pub max_inbound_streams: usize,
    /// Established connections at most.
    pub max_connections: u32,
    /// Idle connections close after this long.
    pub idle_timeout: Duration,
    /// How long a peer stays banned after a bad chunk or protocol violation.
    pub ban_duration: Duration,
    /// Valid gossip messages a second accepted from one author after a
    /// burst of `gossip_burst` (a relay gets 4x both); more are dropped
    /// and counted (`gossip_rate_limited`).
    pub gossip_rate: u32,
    /// See `gossip_rate`.
    pub gossip_burst: u32,
    /// Stall timeout: a peer with requests in flight that delivers nothing
    /// for `stall_base + chunk_len / stall_min_rate` loses its requests.
    pub stall_base: Duration,
    /// Slowest acceptable delivery rate (bytes/s) for the stall timeout.
    pub stall_min_rate: u64,
    /// Seed sparing: a node that holds a blob it did not download here
    /// (an origin seed) answers `TryElsewhere` to a chunk it uploaded to another,
    /// still connected peer within this period, so peers fetch it from each
    /// other. `None` disables.
    pub seed_sparing: Option<Duration>,
    /// Cut-through relay: serve chunks to peers while they still arrive
    /// here (every copy is still verified before use; see
    /// `exchange::relay`). Off, a chunk is served once whole and verified.
    pub relay: bool,
    /// Chunks ahead of the store's consume cursor fetched in order first.
    pub deadline_window: u32,
    /// Fault injection for tests: serve garbage instead of chunks while
    /// advertising every chunk. Only with the `test-support` feature; read
    /// through [`SwarmConfig::corrupt_uploads`], which is `false` without it.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub corrupt_uploads: bool,
}

impl SwarmConfig {
    /// Defaults for `data_dir` and `locality`, listening on all IPv4
    /// interfaces on an ephemeral port, mDNS on.
    pub fn new(data_dir: impl Into<PathBuf>, locality: impl Into<String>) -> Self {
        SwarmConfig {
            data_dir: data_dir.into(),
            locality: locality.into(),
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("static multiaddr")],
            bootstrap: Vec::new(),
            swarm_key: None,
            mdns: true,
            max_upload_rate: None,
            // Few uploads at full rate, none waiting, few requests per
            // peer: a request then lands where a holder is free, and each
            // chunk arrives (and can be relayed) sooner. Testnet, 10 nodes,
            // one 46 MB layer, 100 Mbit/s links with 100 ms FIFO queues:
            // 8/4/4 took 8.55 s with per-node uploads of 15-86 MB; 3/0/2
            // took 6.71 s with 36-53 MB (3/0/1 6.48 s, but 5.90 s against
            // 4.80 s at 2 nodes, where one holder serves a lone requester).
            // The simulator (protocol/examples/sim.rs) agrees: 3 slots and
            // Busy at once are its best.
            upload_slots: 3,
            upload_queue: 0,
            requests_per_peer: 2,
            // About our downlink's bandwidth-delay product plus two. At 3
            // (the simulator's best; testnet, base layout: 5 nodes 6.75
            // -> 6.37 s, 10 nodes 7.53 -> 7.23 s against 2), a request
            // waiting at a gateway (`UploadConfig::origin_queue`) left
            // too few for the other peers. Testnet, single layout, 10
            // nodes, interleaved: 4 with the gateway's queue gave T(10)
            // 5.16-5.53 s against 5.43-5.60 s (6 pairs); 4 alone changed
            // nothing measurable (5.67-6.16 s against 5.68-6.16 s, 4 pairs).
            max_requests: Some(4),
            max_download_peers: 32,
            max_inbound_streams: 256,
            max_connections: 256,
            idle_timeout: Duration::from_secs(600),
            ban_duration: Duration::from_secs(600),
            // A gateway gossips one chunk-digest message per chunk it
            // stores: 1000/s covers 1 MiB chunks at 1 GB/s, and the burst
            // a small layer cut in 64 KiB chunks pulled at once. Status and
            // availability add a few a second per node.
            gossip_rate: 1000,
            gossip_burst: 2000,
            stall_base: Duration::from_secs(10),
            stall_min_rate: 256 << 10,
            seed_sparing: Some(Duration::from_secs(60)),
            relay: true,
            deadline_window: 8,
            #[cfg(feature = "test-support")]
            corrupt_uploads: false,
        }
    }

    /// The upload policy these settings give (the protocol crate's, which
    /// the simulator runs too): `upload_slots`, `upload_queue` and
    /// `seed_sparing`, with the policy's defaults for the rest.
    pub fn upload_policy(&self) -> UploadConfig {
        UploadConfig {
            slots: self.upload_slots.max(1),
            queue: self.upload_queue,
            sparing_ms: self
                .seed_sparing
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ..UploadConfig::default()
        }
    }

    /// Whether the `corrupt_uploads` fault is injected: never in a build
    /// without the `test-support` feature (a shipped binary).
    pub(crate) fn corrupt_uploads(&self) -> bool {
        #[cfg(feature = "test-support")]
        return self.corrupt_uploads;
        #[cfg(not(feature = "test-support"))]
        return false;
    }
}

/// A gossip message delivered to subscribers, decoded once by the swarm
/// task when it validated it (bounded, canonical, on its kind's topic:
/// `wire::GossipMessage::decode_on`). Signatures are not checked yet: the
/// subscriber holds the trust policy.
#[derive(Debug, Clone)]
pub struct ReceivedGossip {
    /// The author whose seal the message carried (`wire::SealedGossip`);
    /// always `Some` for gossip the swarm delivers.
    pub source: Option<PeerId>,
    /// The message; `message.topic()` is the topic it arrived on.
    pub message: wire::GossipMessage,
}

/// Most bans waiting for the swarm task at once. Each entry is a distinct
/// peer that misbehaved on a connection of ours, and the task drains the
/// set on every wake-up, so this is only a backstop against a bug.
const MAX_PENDING_BANS: usize = 4096;

/// Bans remembered with when they were asked for, at most: as many as may
/// wait for the swarm task at once.
const MAX_BANS_RECORDED: usize = MAX_PENDING_BANS;

/// Peers connected now, kept by the swarm task, and how often that set
/// changed (so the exchange acts on departures once, not per request).
#[derive(Debug, Default)]
pub(crate) struct ConnectedPeers {
    /// The connected peers.
    pub(crate) peers: std::collections::HashSet<PeerId>,
    /// Changes of `peers` so far.
    pub(crate) generation: u64,
}

/// Bans on their way to the swarm task. Unlike a command on the bounded
/// channel (`try_send`, dropped when full: a flood of traffic could let
/// the very peer causing it escape its ban) a ban request is never lost:
/// requests are a set keyed by peer, so repeats cost nothing, and a
/// `Notify` permit wakes the task even if it was busy.
#[derive(Clone, Default)]
pub(crate) struct BanRequests {
    inner: Arc<(
        std::sync::Mutex<std::collections::HashMap<PeerId, String>>,
        tokio::sync::Notify,
    )>,
    /// When each peer's ban was last asked for, whoever asked (see
    /// [`BanRequests::since`]).
    requested: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, std::time::Instant>>>,
}

impl BanRequests {
    /// Asks the swarm task to ban `peer`.
    pub(crate) fn ban(&self, peer: PeerId, reason: String) {
        {
            let mut requested = self.requested.lock().unwrap_or_else(|p| p.into_inner());
            if requested.len() >= MAX_BANS_RECORDED && !requested.contains_key(&peer) {
                // Downloads ask about bans since they began: the oldest
                // half goes.
                let mut times: Vec<std::time::Instant> = requested.values().copied().collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                requested.retain(|_, t| *t > cut);
            }
            requested.insert(peer, std::time::Instant::now());
        }
        {
            let mut pending = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_PENDING_BANS && !pending.contains_key(&peer) {
                tracing::error!(%peer, %reason, "ban queue full; ban dropped");
                return;
            }
            pending.entry(peer).or_insert(reason);
        }
        self.inner.1.notify_one();
    }

    /// Whether a ban of `peer` was asked for at or after `since` (by a
    /// download, the gossip handlers or the daemon): a download counts
    /// such a peer a proven liar.
    pub(crate) fn since(&self, peer: &PeerId, since: std::time::Instant) -> bool {
        let requested = self.requested.lock().unwrap_or_else(|p| p.into_inner());
        requested.get(peer).is_some_and(|t| *t >= since)
    }

    /// Waits until a ban may be pending.
    pub(crate) async fn wait(&self) {
        self.inner.1.notified().await
    }

    /// Takes every pending ban.
    pub(crate) fn take(&self) -> Vec<(PeerId, String)> {
        let mut pending = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        pending.drain().collect()
    }
}

/// Commands from [`SwarmClient`] to the swarm task.
#[derive(Debug)]
pub(crate) enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    RoutingPeers(oneshot::Sender<Vec<PeerId>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), SwarmError>>),
    Provide(Digest),
    GetProviders(Digest, oneshot::Sender<Vec<PeerId>>),
    /// Providers of a blob that this node is not connected to: answers
    /// at once, with none, when every peer of the routing table and every
    /// recent gossip author is connected (a lookup could only name peers
    /// a download already asks directly, and at 21 peers each lookup cost
    /// every node ~40 KiB).
    UnconnectedProviders(Digest, oneshot::Sender<Vec<PeerId>>),
    Publish(Topic, Vec<u8>, oneshot::Sender<Result<(), SwarmError>>),
    GossipScore(PeerId, oneshot::Sender<Option<f64>>),
}

/// Cloneable handle to a running node.
#[derive(Clone)]
pub struct SwarmClient {
    peer_id: PeerId,
    cmd: mpsc::Sender<Command>,
    gossip: broadcast::Sender<ReceivedGossip>,
    exchange: Arc<dyn exchange::Fetch>,
    metrics: SwarmMetrics,
    shutdown: CancellationToken,
    bans: BanRequests,
}

impl SwarmClient {
    /// Bans `peer` (it lied in a way only the daemon sees, such as a
    /// gateway's layout contradicting the verified manifest). Never
    /// dropped, like the exchange's bans.
    pub fn ban(&self, peer: PeerId, reason: String) {
        self.bans.ban(peer, reason);
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SwarmError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(make(tx))
            .await
            .map_err(|_| SwarmError::Shutdown)?;
        rx.await.map_err(|_| SwarmError::Shutdown)
    }

    /// This node's stable PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Addresses the node listens on, each with `/p2p/<id>` appended.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, SwarmError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Peers with an established connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, SwarmError> {
        self.ask(Command::ConnectedPeers).await
    }

    /// Peers in the Kademlia routing table (same locality only).
    pub async fn routing_table_peers(&self) -> Result<Vec<PeerId>, SwarmError> {
        self.ask(Command::RoutingPeers).await
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), SwarmError> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Fetches `blob` from the swarm into the store, verifying every chunk;
    /// returns once the store holds the verified blob. Without a chunk map
    /// the map is requested from peers. Concurrent calls for one blob share
    /// one download. Wrap in a timeout to bound the wait.
    pub async fn fetch_blob(&self, blob: Digest, map: Option<ChunkMap>) -> Result<(), SwarmError> {
        if self.shutdown.is_cancelled() {
            return Err(SwarmError::Shutdown);
        }
        self.exchange.fetch(blob, map).await
    }

    /// Asks `peers` (holders of the complete blob) for `blob`'s chunk map
    /// and stores it, filling digests this node missed; true once the store
    /// knows every digest of `blob`.
    pub async fn fill_chunk_map(
        &self,
        blob: Digest,
        peers: Vec<PeerId>,
    ) -> Result<bool, SwarmError> {
        if self.shutdown.is_cancelled() {
            return Err(SwarmError::Shutdown);
        }
        self.exchange.fill_map(blob, peers).await
    }

    /// Whether `peer` backs a claim that it holds `blob` (of `size`
    /// bytes, as a verified manifest says) complete: it serves a chunk map
    /// of that size and a random chunk that matches it. Stores nothing; a
    /// peer that serves a map of another size, or a chunk contradicting
    /// its own map, is banned. Unbounded in time: wrap it in a timeout.
    pub async fn probe_holder(&self, peer: PeerId, blob: Digest, size: u64) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        self.exchange.probe_holder(peer, blob, size).await
    }

    /// Announces in the DHT that this node holds (part of) `blob`.
    pub async fn provide(&self, blob: Digest) -> Result<(), SwarmError> {
        self.cmd
            .send(Command::Provide(blob))
            .await
            .map_err(|_| SwarmError::Shutdown)
    }

    /// Peers the DHT lists as providers of `blob`.
    pub async fn providers(&self, blob: Digest) -> Result<Vec<PeerId>, SwarmError> {
        self.ask(|tx| Command::GetProviders(blob, tx)).await
    }

    /// Publishes `bytes` on a topic (must be canonical CBOR; at most 64 KiB).
    pub async fn publish(&self, topic: Topic, bytes: Vec<u8>) -> Result<(), SwarmError> {
        self.ask(|tx| Command::Publish(topic, bytes, tx)).await?
    }

    /// Receives every validated gossip message from now on.
    pub fn subscribe_gossip(&self) -> broadcast::Receiver<ReceivedGossip> {
        self.gossip.subscribe()
    }

    /// Gossipsub score of a peer (negative after invalid messages).
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>, SwarmError> {
        self.ask(|tx| Command::GossipScore(peer, tx)).await
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &SwarmMetrics {
        &self.metrics
    }

    /// Headline statistics.
    pub fn stats(&self) -> SwarmStats {
        self.metrics.stats()
    }

    /// Stops the node: the swarm task, servers and downloads end; pending
    /// `fetch_blob` calls return [`SwarmError::Shutdown`].
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// Entry point: starts nodes.
pub struct Node;

impl Node {
    /// Starts a node over `store`: loads (or creates) its identity, builds
    /// the swarm, starts listening and returns once every listen address is
    /// bound. The returned handle completes after [`SwarmClient::shutdown`].
    pub async fn start<S: ChunkStore>(
        config: SwarmConfig,
        store: S,
    ) -> Result<(SwarmClient, JoinHandle<()>), SwarmError> {
        let key = config.data_dir.join(keys::IDENTITY_FILE);
        task::start(config, key, Some(store)).await
    }

    /// Starts a bootstrap peer: DHT and gossip mesh only, no store and no
    /// chunk protocol, with its identity in `key_file` (created if absent)
    /// so its PeerId, and so the `/p2p/` address operators configure, is
    /// fixed. `fetch_blob` on its client returns an error.
    pub async fn start_bootstrap(
        config: SwarmConfig,
        key_file: PathBuf,
    ) -> Result<(SwarmClient, JoinHandle<()>), SwarmError> {
        task::start::<chunkstore::NoStore>(config, key_file, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeswarm_protocol::sim::SimConfig;

    /// The node serves by the protocol crate's upload policy on its
    /// defaults, and the simulator's `current` preset runs that same
    /// policy: a change to one shows here.
    #[test]
    fn the_default_upload_policy_is_the_protocols_and_the_simulators() {
        let config = SwarmConfig::new("/nonexistent", "test");
        assert_eq!(config.upload_policy(), UploadConfig::default());
        assert_eq!(
            SimConfig::default().current().upload,
            config.upload_policy()
        );
        let off = SwarmConfig {
            seed_sparing: None,
            upload_slots: 0,
            upload_queue: 5,
            ..config
        };
        let policy = off.upload_policy();
        assert_eq!(
            (policy.sparing_ms, policy.slots, policy.queue),
            (None, 1, 5)
        );
    }
}
