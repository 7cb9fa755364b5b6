//! The task that owns the `Swarm`. It never blocks: every arm of its loop is
//! a quick state update, and everything slow (disk, hashing, bulk bytes)
//! runs elsewhere.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeswarm_protocol::signing::PublisherKey;
use edgeswarm_protocol::wire::{self, GossipMessage};
use edgeswarm_protocol::Codec;
use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::behaviour::{
    author_peer, build_swarm, seal_gossip, Behaviour, BehaviourEvent, NetConfig, Protocols, Topic,
};
use super::exchange::{Exchange, Fetch, NoStore};
use super::keys::{load_or_create_identity, read_swarm_key};
use super::metrics::SwarmMetrics;
use super::{ChunkStore, Command, ReceivedGossip, SwarmClient, SwarmConfig, SwarmError};

/// Capacity of the command channel.
const COMMANDS: usize = 256;

/// Where bans are kept across restarts, in the data dir: a peer banned for
/// lying must not get a fresh start by waiting for the node to restart.
pub const BANS_FILE: &str = "bans.json";
/// Most bans persisted (those ending last); more are a flood of fresh
/// peer ids, which a ban list cannot stop anyway.
const MAX_PERSISTED_BANS: usize = 4096;

/// How long a gossip author counts as a live member of the locality:
/// every node publishes its status each 2 s (`daemon::status`), so 30 s
/// is many missed reports.
const AUTHOR_MEMORY: Duration = Duration::from_secs(30);

/// Most gossip authors tracked (a locality's members; bounds the map).
const MAX_AUTHORS: usize = 4096;

/// One ban in [`BANS_FILE`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PersistedBan {
    /// The banned peer id.
    peer: String,
    /// When the ban ends (unix seconds).
    until_unix: u64,
}

/// Seconds since the unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the persisted bans still in force (blocking). A missing or
/// unreadable file is no bans (logged): a ban list is a defence, not state
/// the node needs to run.
fn load_bans(path: &std::path::Path) -> Vec<(PeerId, Duration)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "bans not read");
            return Vec::new();
        }
    };
    let list: Vec<PersistedBan> = match serde_json::from_slice(&bytes) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "bans file unreadable; ignored");
            return Vec::new();
        }
    };
    let now = unix_now();
    list.into_iter()
        .take(MAX_PERSISTED_BANS)
        .filter(|b| b.until_unix > now)
        .filter_map(|b| {
            let peer = b.peer.parse().ok()?;
            Some((peer, Duration::from_secs(b.until_unix - now)))
        })
        .collect()
}

/// Writes every snapshot of the ban list it is handed, newest only
/// (a `watch` channel), crash-safe, off the swarm task.
async fn save_bans(path: PathBuf, mut rx: tokio::sync::watch::Receiver<Vec<PersistedBan>>) {
    while rx.changed().await.is_ok() {
        let list = rx.borrow_and_update().clone();
        let dest = path.clone();
        let res = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
            crate::fsutil::write_atomic(&dest, &bytes)
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(path = %path.display(), error = %e, "bans not saved"),
            Err(e) => warn!(error = %e, "bans save task failed"),
        }
    }
}

pub(crate) async fn start<S: ChunkStore>(
    config: SwarmConfig,
    key_path: PathBuf,
    store: Option<S>,
) -> Result<(SwarmClient, JoinHandle<()>), SwarmError> {
    let protocols = Protocols::new(&config.locality)?;
    let key = tokio::task::spawn_blocking(move || load_or_create_identity(&key_path))
        .await
        .map_err(|e| SwarmError::Config(e.to_string()))??;
    let swarm_key = match &config.swarm_key {
        Some(p) => Some(read_swarm_key(p)?),
        None => None,
    };
    let net = NetConfig {
        protocols: protocols.clone(),
        swarm_key,
        mdns: config.mdns,
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout,
    };
    let peer_id = key.public().to_peer_id();
    let seal_key = super::behaviour::gossip_key(&key)?;
    let mut swarm = build_swarm(key, &net)?;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| SwarmError::Transport(format!("listen on {addr}: {}", error_chain(&e))))?;
    }
    // Wait until every listener reports an address, so callers can hand
    // them out immediately.
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listen_addrs.len() < config.listen.len() {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => listen_addrs.push(address),
            Ok(SwarmEvent::ListenerError { error, .. }) => {
                return Err(SwarmError::Transport(error_chain(&error)))
            }
            Ok(SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            }) => return Err(SwarmError::Transport(error_chain(&error))),
            Ok(_) => {}
            Err(_) => return Err(SwarmError::Transport("listen timed out".into())),
        }
    }
    let control = swarm.behaviour().stream.new_control();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS);
    let bans = super::BanRequests::default();
    let (gossip_tx, _) = broadcast::channel(256);
    let metrics = SwarmMetrics::default();
    let shutdown = CancellationToken::new();
    let connected = Arc::new(std::sync::Mutex::new(super::ConnectedPeers::default()));
    let exchange: Arc<dyn Fetch> = match store {
        Some(store) => Arc::new(Exchange::start(
            &config,
            store,
            control,
            protocols.clone(),
            cmd_tx.clone(),
            bans.clone(),
            metrics.clone(),
            shutdown.clone(),
            peer_id,
            connected.clone(),
        )?),
        None => Arc::new(NoStore),
    };
    let bans_path = config.data_dir.join(BANS_FILE);
    let restored = {
        let path = bans_path.clone();
        tokio::task::spawn_blocking(move || load_bans(&path))
            .await
            .map_err(|e| SwarmError::Config(e.to_string()))?
    };
    let (bans_tx, bans_rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(save_bans(bans_path, bans_rx));
    let mut state = SwarmTask {
        swarm,
        protocols,
        listen_addrs,
        commands: cmd_rx,
        gossip: gossip_tx.clone(),
        metrics: metrics.clone(),
        bans: HashMap::new(),
        ban_requests: bans.clone(),
        ban_duration: config.ban_duration,
        limiter: super::ratelimit::GossipLimiter::new(config.gossip_rate, config.gossip_burst),
        authors: HashMap::new(),
        provider_queries: HashMap::new(),
        bootstrapped: false,
        bootstrap: config.bootstrap.clone(),
        redial: super::redial::Redial::new(Instant::now()),
        shutdown: shutdown.clone(),
        connected,
        bans_saved: bans_tx,
        seal_key,
        // From the clock, so a restarted node repeats no message id its
        // peers still remember (`wire::SealedGossip`).
        next_seq: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    if !restored.is_empty() {
        info!(peers = restored.len(), "bans restored from the data dir");
    }
    let now = Instant::now();
    for (peer, left) in restored {
        state.bans.insert(peer, now + left);
        state.swarm.behaviour_mut().blocked.block_peer(peer);
    }
    state.metrics.banned_peers.set(state.bans.len() as i64);
    for addr in &config.bootstrap {
        state.add_bootstrap(addr.clone());
    }
    info!(%peer_id, locality = %config.locality, "swarm started");
    let handle = tokio::spawn(async move { state.run().await });
    let client = SwarmClient {
        peer_id,
        cmd: cmd_tx,
        gossip: gossip_tx,
        exchange,
        metrics,
        shutdown,
        bans,
    };
    Ok((client, handle))
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    protocols: Protocols,
    listen_addrs: Vec<Multiaddr>,
    commands: mpsc::Receiver<Command>,
    gossip: broadcast::Sender<ReceivedGossip>,
    metrics: SwarmMetrics,
    /// Banned peers and when their ban ends.
    bans: HashMap<PeerId, Instant>,
    /// Bans asked for by the exchange.
    ban_requests: super::BanRequests,
    /// Snapshots of `bans` for the task that persists them.
    bans_saved: tokio::sync::watch::Sender<Vec<PersistedBan>>,
    ban_duration: Duration,
    /// Per-peer rate limit of valid gossip.
    limiter: super::ratelimit::GossipLimiter,
    /// Authors of valid gossip and when each was last heard (at most
    /// [`MAX_AUTHORS`]): the live members of the locality.
    authors: HashMap<PeerId, Instant>,
    /// Running provider lookups: found so far and whom to tell.
    provider_queries: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    bootstrapped: bool,
    /// The `--bootstrap` addresses, dialed at start and again while the
    /// node has no connection at all (`redial`).
    bootstrap: Vec<Multiaddr>,
    /// When to dial `bootstrap` again.
    redial: super::redial::Redial,
    shutdown: CancellationToken,
    /// Connected peers, shared with the exchange.
    connected: Arc<std::sync::Mutex<super::ConnectedPeers>>,
    /// This node's identity key, which seals the gossip it publishes.
    seal_key: PublisherKey,
    /// The `seq` of the next sealed message.
    next_seq: u64,
}

impl SwarmTask {
    /// Dials a bootstrap peer. It enters the routing table only once its
    /// identify shows this locality's Kademlia protocol (`on_event`): added
    /// at the dial, a peer of another locality sat in the table until its
    /// identify was read, and came back at every redial while the node was
    /// alone (`swarm_membership::another_locality_cannot_join` saw it under
    /// load).
    fn add_bootstrap(&mut self, addr: Multiaddr) {
        if let Err(e) = self.swarm.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                ev = self.swarm.select_next_some() => self.on_event(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => {
                    self.expire_bans();
                    self.redial_bootstrap();
                }
                _ = self.ban_requests.wait() => {
                    for (peer, reason) in self.ban_requests.take() {
                        self.ban(peer, reason);
                    }
                }
            }
        }
        info!("swarm task stopped");
    }

    /// Dials the bootstrap peers again when the node has been alone for
    /// the redial schedule's wait (see `redial`).
    fn redial_bootstrap(&mut self) {
        if self.bootstrap.is_empty() {
            return;
        }
        let connected = self.swarm.connected_peers().next().is_some();
        if !self.redial.due(Instant::now(), connected) {
            return;
        }
        info!(
            addrs = self.bootstrap.len(),
            "no connection: dialing the bootstrap peers again"
        );
        for addr in self.bootstrap.clone() {
            self.add_bootstrap(addr);
        }
    }

    fn expire_bans(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        let changed = !expired.is_empty();
        for p in expired {
            self.bans.remove(&p);
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
            info!(peer = %p, "ban expired");
        }
        self.metrics.banned_peers.set(self.bans.len() as i64);
        if changed {
            self.persist_bans();
        }
    }

    /// Hands the ban list to the saver (newest snapshot wins; no disk
    /// work here).
    fn persist_bans(&self) {
        let now = Instant::now();
        let unix = unix_now();
        let mut list: Vec<PersistedBan> = self
            .bans
            .iter()
            .map(|(peer, until)| PersistedBan {
                peer: peer.to_string(),
                until_unix: unix + until.saturating_duration_since(now).as_secs(),
            })
            .collect();
        list.sort_by_key(|b| std::cmp::Reverse(b.until_unix));
        list.truncate(MAX_PERSISTED_BANS);
        self.bans_saved.send_replace(list);
    }

    /// Bans `peer`: disconnected now, and every connection it (re)opens
    /// in either direction is refused until the ban expires.
    fn ban(&mut self, peer: PeerId, reason: String) {
        let until = Instant::now() + self.ban_duration;
        if self.bans.insert(peer, until).is_none() {
            warn!(%peer, %reason, "banning peer");
            self.metrics.bans.inc();
        }
        self.persist_bans();
        self.metrics.banned_peers.set(self.bans.len() as i64);
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs(tx) => {
                let me = *self.swarm.local_peer_id();
                let addrs = self
                    .listen_addrs
                    .iter()
                    .map(|a| a.clone().with(Protocol::P2p(me)))
                    .collect();
                let _ = tx.send(addrs);
            }
            Command::ConnectedPeers(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::RoutingPeers(tx) => {
                let _ = tx.send(self.routing_peers());
            }
            Command::Dial(addr, tx) => {
                let r = self
                    .swarm
                    .dial(addr)
                    .map_err(|e| SwarmError::Transport(e.to_string()));
                let _ = tx.send(r);
            }
            Command::Provide(blob) => {
                let key = kad::RecordKey::new(&blob.to_cid(Codec::Raw).to_bytes());
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    warn!(%blob, error = %e, "cannot provide");
                }
            }
            Command::GetProviders(blob, tx) => self.get_providers(blob, tx),
            Command::UnconnectedProviders(blob, tx) => {
                if self.knows_only_connected_peers() {
                    self.metrics.dht_lookups_skipped.inc();
                    let _ = tx.send(Vec::new());
                } else {
                    self.get_providers(blob, tx);
                }
            }
            Command::Publish(topic, bytes, tx) => {
                let r = match decode_gossip(topic, &bytes) {
                    Err(reason) => Err(SwarmError::Publish(reason)),
                    Ok(_) => {
                        let seq = self.next_seq;
                        self.next_seq = self.next_seq.wrapping_add(1);
                        let sealed =
                            seal_gossip(&self.seal_key, &self.protocols, topic, seq, bytes);
                        self.metrics
                            .gossip_bytes_published
                            .inc_by(sealed.len() as u64);
                        self.swarm
                            .behaviour_mut()
                            .gossipsub
                            .publish(self.protocols.topic(topic), sealed)
                            .map(|_| ())
                            .map_err(|e| SwarmError::Publish(e.to_string()))
                    }
                };
                let _ = tx.send(r);
            }
            Command::GossipScore(peer, tx) => {
                let _ = tx.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
            }
            SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. } => {
                let now: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
                self.metrics.connected_peers.set(now.len() as i64);
                let mut connected = self.connected.lock().unwrap_or_else(|p| p.into_inner());
                if connected.peers != now {
                    connected.peers = now;
                    connected.generation += 1;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != self.protocols.identify {
                    debug!(peer = %peer_id, version = %info.protocol_version, "foreign peer, disconnecting");
                    self.swarm.behaviour_mut().kad.remove_peer(&peer_id);
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if info.protocols.contains(&self.protocols.kad) {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                    if !self.bootstrapped {
                        self.bootstrapped = true;
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    if self.bans.contains_key(&peer) {
                        continue;
                    }
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .build();
                    let _ = self.swarm.dial(opts);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { request })) => {
                self.on_kad_inbound(request)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(res),
                step,
                ..
            })) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = res {
                    if let Some((found, _)) = self.provider_queries.get_mut(&id) {
                        found.extend(providers);
                    }
                }
                if step.last {
                    if let Some((found, tx)) = self.provider_queries.remove(&id) {
                        // Provider records outlive bans: a banned peer is
                        // no holder to anyone here (each session or map
                        // request to it waited 10 s for a stream the block
                        // list refused).
                        let usable = found.into_iter().filter(|p| !self.bans.contains_key(p));
                        let _ = tx.send(usable.collect());
                    }
                }
            }
            _ => {}
        }
    }

    /// Starts a DHT provider lookup for `blob`, answered on `tx` when it ends.
    fn get_providers(
        &mut self,
        blob: edgeswarm_protocol::Digest,
        tx: oneshot::Sender<Vec<PeerId>>,
    ) {
        let key = kad::RecordKey::new(&blob.to_cid(Codec::Raw).to_bytes());
        let id = self.swarm.behaviour_mut().kad.get_providers(key);
        self.provider_queries.insert(id, (HashSet::new(), tx));
        self.metrics.dht_provider_lookups.inc();
    }

    /// The peers in the DHT's routing table.
    fn routing_peers(&mut self) -> Vec<PeerId> {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            peers.extend(bucket.iter().map(|e| *e.node.key.preimage()));
        }
        peers
    }

    /// Notes that `author` published valid gossip: it is a live member of
    /// the locality. Past [`MAX_AUTHORS`] live authors, new ones are not
    /// tracked (see [`Self::knows_only_connected_peers`]).
    fn heard_from(&mut self, author: PeerId) {
        // Pruned only when full: this runs for every gossip message.
        if self.authors.len() >= MAX_AUTHORS && !self.authors.contains_key(&author) {
            self.forget_stale_authors();
            if self.authors.len() >= MAX_AUTHORS {
                return;
            }
        }
        self.authors.insert(author, Instant::now());
    }

    /// Forgets the authors not heard from for [`AUTHOR_MEMORY`].
    fn forget_stale_authors(&mut self) {
        let now = Instant::now();
        self.authors
            .retain(|_, t| now.duration_since(*t) < AUTHOR_MEMORY);
    }

    /// Whether this node is connected to every peer it knows of: each
    /// entry of the DHT's routing table, and each author of gossip heard
    /// within [`AUTHOR_MEMORY`] (gossip crosses the whole locality, so a
    /// member this node was never connected to shows up there). Then a
    /// provider lookup can only name peers a download already asks
    /// directly. False when the node knows no one, or when
    /// [`MAX_AUTHORS`] live authors may leave some untracked (a locality
    /// that large always runs its lookups).
    fn knows_only_connected_peers(&mut self) -> bool {
        self.forget_stale_authors();
        if self.authors.len() >= MAX_AUTHORS {
            return false;
        }
        let local = *self.swarm.local_peer_id();
        let mut known: Vec<PeerId> = self
            .authors
            .keys()
            // A banned peer is refused, not unknown.
            .filter(|p| **p != local && !self.bans.contains_key(*p))
            .copied()
            .collect();
        known.extend(self.routing_peers());
        !known.is_empty() && known.iter().all(|p| self.swarm.is_connected(p))
    }

    /// Stores the provider records this protocol uses; drops the rest
    /// (value records, keys that are no blob's) so a peer cannot fill the
    /// DHT store with data of its own.
    fn on_kad_inbound(&mut self, request: kad::InboundRequest) {
        use kad::store::RecordStore as _;
        match request {
            kad::InboundRequest::AddProvider {
                record: Some(record),
            } => {
                if super::behaviour::accept_provider_record(record.key.as_ref()) {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    if let Err(e) = kad.store_mut().add_provider(record) {
                        debug!(error = ?e, "provider record not stored");
                    }
                } else {
                    debug!(provider = %record.provider, "provider record for a foreign key dropped");
                    self.metrics.dht_records_dropped.inc();
                }
            }
            kad::InboundRequest::PutRecord {
                source,
                record: Some(_),
                ..
            } => {
                debug!(peer = %source, "value record dropped (not used by this protocol)");
                self.metrics.dht_records_dropped.inc();
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, from: PeerId, id: gossipsub::MessageId, msg: gossipsub::Message) {
        self.metrics
            .gossip_bytes_received
            .inc_by(msg.data.len() as u64);
        let topic = Topic::ALL
            .into_iter()
            .find(|t| self.protocols.topic(*t).hash() == msg.topic);
        let verdict = match topic {
            None => Err("unknown topic".to_string()),
            Some(t) => open_gossip(&self.protocols, t, &msg.data),
        };
        if let Ok((author, _)) = &verdict {
            self.heard_from(*author);
        }
        let (acceptance, decoded) = match verdict {
            Ok((author, message)) => match self.limiter.check(Some(author), from, Instant::now()) {
                super::ratelimit::Verdict::Allowed => (
                    gossipsub::MessageAcceptance::Accept,
                    Some((author, message)),
                ),
                super::ratelimit::Verdict::Limited { peer, first } => {
                    if first {
                        warn!(%peer, relay = %from, "gossip over the per-peer rate limit; dropping until it slows down");
                    }
                    self.metrics.gossip_rate_limited.inc();
                    // Ignore: not delivered, not forwarded, and no score
                    // penalty for an honest relay of a noisy author.
                    (gossipsub::MessageAcceptance::Ignore, None)
                }
            },
            Err(reason) => {
                warn!(peer = %from, %reason, "rejecting gossip message");
                self.metrics.gossip_rejected.inc();
                self.metrics.protocol_violations.inc();
                (gossipsub::MessageAcceptance::Reject, None)
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &from, acceptance);
        if let Some((author, message)) = decoded {
            self.metrics.gossip_accepted.inc();
            let _ = self.gossip.send(ReceivedGossip {
                source: Some(author),
                message,
            });
        }
    }
}

/// Opens a sealed gossip payload received on `topic`: its seal must verify
/// (once per message: gossipsub drops copies by id before this), then its
/// body is decoded and validated with `protocol::wire`: bounded,
/// canonical, a known message kind on the topic it belongs to. Signatures
/// inside the body are checked by the consumer (it holds the trust
/// policy).
fn open_gossip(
    protocols: &Protocols,
    topic: Topic,
    data: &[u8],
) -> Result<(PeerId, GossipMessage), String> {
    let sealed = wire::SealedGossip::decode(data).map_err(|e| e.to_string())?;
    sealed
        .open(&wire::topic_name(&protocols.locality, topic))
        .map_err(|e| e.to_string())?;
    let author = author_peer(&sealed.author).ok_or("a seal's author key is not ed25519")?;
    Ok((author, decode_gossip(topic, &sealed.body)?))
}

/// Decodes and validates a gossip body with `protocol::wire`: bounded,
/// canonical, a known message kind on the topic it belongs to.
fn decode_gossip(topic: Topic, data: &[u8]) -> Result<GossipMessage, String> {
    GossipMessage::decode_on(topic, data).map_err(|e| e.to_string())
}

/// `error` with the errors it wraps: libp2p's transport errors print
/// nothing of their own and keep the cause (an `io::Error` such as "address
/// in use") as their source.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
