//! The libp2p behaviour of an edgeswarm node, shared with the bootstrap
//! binary: transport (TCP + optional pnet + TLS or noise + yamux), Kademlia,
//! gossipsub and identify scoped to a locality, mDNS, ping, connection
//! limits, a block list for bans, and `libp2p-stream` for chunk bytes.

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, connection_limits, gossipsub, identify, kad, mdns, ping, tcp, yamux, PeerId,
    StreamProtocol, Swarm, Transport as _,
};

use edgeswarm_protocol::signing::PublisherKey;
pub use edgeswarm_protocol::wire::Topic;
use edgeswarm_protocol::wire::{self, Locality, MAX_SEALED_BYTES};

use super::security::{prefer_tls, Security, YAMUX_FRAME_PAYLOAD};
use super::SwarmError;

/// Protocol names of one locality, as `edgeswarm_protocol::wire` builds
/// them. Peers with another locality speak other names and so cannot share
/// a DHT, a gossip mesh or chunks with us.
#[derive(Debug, Clone)]
pub struct Protocols {
    /// The locality.
    pub locality: Locality,
    /// `/edgeswarm/<locality>/kad/1.0.0`.
    pub kad: StreamProtocol,
    /// `/edgeswarm/<locality>/id/1.0.0` (identify's protocol version string).
    pub identify: String,
    /// `/edgeswarm/<locality>/meshsub` (gossipsub prefix).
    pub gossip_prefix: String,
    /// `/edgeswarm/<locality>/chunks/1.0.0`.
    pub chunks: StreamProtocol,
}

impl Protocols {
    /// Protocol names for `locality` (see `wire::Locality` for the rule).
    pub fn new(locality: &str) -> Result<Self, SwarmError> {
        let locality = Locality::new(locality).map_err(|e| SwarmError::Config(e.to_string()))?;
        let proto = |s: String| {
            StreamProtocol::try_from_owned(s).map_err(|e| SwarmError::Config(e.to_string()))
        };
        Ok(Protocols {
            kad: proto(wire::kad_protocol(&locality))?,
            identify: wire::identify_protocol(&locality),
            gossip_prefix: wire::gossip_protocol_prefix(&locality),
            chunks: proto(wire::stream_protocol(&locality))?,
            locality,
        })
    }

    /// The gossip topic `edgeswarm/<locality>/<name>`.
    pub fn topic(&self, topic: Topic) -> gossipsub::IdentTopic {
        gossipsub::IdentTopic::new(wire::topic_name(&self.locality, topic))
    }
}

/// Tunables of the network layer shared by nodes and the bootstrap peer.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Locality protocol names.
    pub protocols: Protocols,
    /// Pre-shared key of the locality, if membership is restricted.
    pub swarm_key: Option<PreSharedKey>,
    /// Whether to discover peers with mDNS.
    pub mdns: bool,
    /// Most established connections in total.
    pub max_connections: u32,
    /// Connections kept open without traffic this long (long transfers pause).
    pub idle_timeout: Duration,
}

/// Bytes of a gossipsub RPC around one message's data at most: field tags
/// and lengths, and the topic name (a 64-character locality and the
/// longest topic make 86 bytes).
const GOSSIP_RPC_FRAMING: usize = 512;

/// Gossipsub's target mesh degree (peers each message is pushed to).
const GOSSIP_MESH: usize = 4;

/// A gossip message's id: 16 bytes of SHA-256 over its bytes, a
/// [`wire::SealedGossip`] (unique per author and `seq`, both signed; every
/// copy of one message has the same bytes). Gossipsub runs unsigned, so
/// this is what tells one message from another.
fn short_message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    gossipsub::MessageId::new(&wire::SealedGossip::message_id(&m.data))
}

/// The key a node seals its gossip with: its libp2p identity, which must
/// be ed25519 (the key its `PeerId` inlines).
pub fn gossip_key(key: &Keypair) -> Result<PublisherKey, SwarmError> {
    let ed = key
        .clone()
        .try_into_ed25519()
        .map_err(|_| SwarmError::Config("gossip needs an ed25519 identity key".into()))?;
    let secret: [u8; 32] = ed
        .secret()
        .as_ref()
        .try_into()
        .map_err(|_| SwarmError::Config("an ed25519 secret key is not 32 bytes".into()))?;
    Ok(PublisherKey::from_secret_bytes(secret))
}

/// Seals a gossip message (a [`wire::GossipMessage`] encoding) for `topic`
/// with the author's key (see [`gossip_key`]): the bytes to publish.
pub fn seal_gossip(
    key: &PublisherKey,
    protocols: &Protocols,
    topic: Topic,
    seq: u64,
    body: Vec<u8>,
) -> Vec<u8> {
    let name = wire::topic_name(&protocols.locality, topic);
    wire::SealedGossip::seal(key, &name, seq, body).encode()
}

/// The `PeerId` of a seal's author.
pub fn author_peer(author: &edgeswarm_protocol::signing::PublicKey) -> Option<PeerId> {
    let ed = libp2p::identity::ed25519::PublicKey::try_from_bytes(author.as_bytes()).ok()?;
    Some(libp2p::identity::PublicKey::from(ed).to_peer_id())
}

/// Largest Kademlia message accepted or sent (see `build_swarm`).
pub const KAD_MAX_PACKET: usize = 256 << 10;

/// How many closest peers a DHT query converges on and a provider record
/// is stored at (Kademlia's k; libp2p's default is 20). A locality's DHT
/// only finds holders a node is not connected to, and with k = 20 every
/// query at 21 peers asked all of them, each answering with 20 peers and
/// their addresses: a node's `Provide` of each blob cost ~40 KiB of its
/// link. 8 copies of a provider record still outlive any plausible churn
/// within their 30-minute republication.
pub const KAD_REPLICATION: usize = 8;

/// Whether a provider record a peer sent is one this protocol uses: its
/// key is a blob's raw CIDv1 (sha2-256), as `Command::Provide` makes it.
pub fn accept_provider_record(key: &[u8]) -> bool {
    let template = edgeswarm_protocol::Digest::of(b"")
        .to_cid(edgeswarm_protocol::Codec::Raw)
        .to_bytes();
    key.len() == template.len() && key[..4] == template[..4]
}

/// The composed behaviour of an edgeswarm peer.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Ban list: blocked peers are disconnected and refused.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Connection limits.
    pub limits: connection_limits::Behaviour,
    /// Locality-scoped DHT: peer routing and provider records per blob.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Locality-scoped gossip mesh.
    pub gossipsub: gossipsub::Behaviour,
    /// Learns listen addresses and protocol versions of peers.
    pub identify: identify::Behaviour,
    /// LAN discovery (optional).
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// Raw streams for chunk bytes.
    pub stream: libp2p_stream::Behaviour,
}

/// Builds the transport: TCP (+ pnet if keyed) + noise (or TLS where
/// configured, [`super::security`]) + yamux.
fn transport(
    key: &Keypair,
    psk: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, SwarmError> {
    let security =
        Security::new(key, prefer_tls()).map_err(|e| SwarmError::Transport(e.to_string()))?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let mut yamux = yamux::Config::default();
    yamux
        .set_max_num_streams(512)
        .set_split_send_size(YAMUX_FRAME_PAYLOAD);
    Ok(match psk {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(security)
            .multiplex(yamux)
            .timeout(Duration::from_secs(20))
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(security)
            .multiplex(yamux)
            .timeout(Duration::from_secs(20))
            .boxed(),
    })
}

/// Builds a `Swarm` with the edgeswarm behaviour for `key` and `cfg`.
/// Kademlia is forced into server mode (a LAN never confirms an external
/// address) and gossipsub validates every message in the application.
pub fn build_swarm(key: Keypair, cfg: &NetConfig) -> Result<Swarm<Behaviour>, SwarmError> {
    let transport = transport(&key, cfg.swarm_key)?;
    let peer_id = key.public().to_peer_id();
    let p = &cfg.protocols;

    // Kademlia: LAN-sized TTLs, raised store limits, and a packet bound
    // fitted to the largest message this protocol exchanges: a provider
    // list of up to `max_providers_per_key` peers with a few addresses each
    // (about 200 bytes a peer, so ~50 KiB at 256). A bigger bound only
    // lets a peer make this node buffer more.
    let mut kcfg = kad::Config::new(p.kad.clone());
    kcfg.set_query_timeout(Duration::from_secs(20))
        .set_provider_record_ttl(Some(Duration::from_secs(2 * 3600)))
        .set_provider_publication_interval(Some(Duration::from_secs(30 * 60)))
        .set_record_ttl(Some(Duration::from_secs(2 * 3600)))
        .set_max_packet_size(KAD_MAX_PACKET)
        // Peers' records go through the swarm task, which keeps only
        // provider records of blob keys (`accept_provider_record`); value
        // records (`PutRecord`) are not used by this protocol and dropped.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
    if let Some(n) = NonZeroUsize::new(3) {
        kcfg.set_parallelism(n);
    }
    if let Some(k) = NonZeroUsize::new(KAD_REPLICATION) {
        kcfg.set_replication_factor(k);
    }
    let store = MemoryStore::with_config(
        peer_id,
        MemoryStoreConfig {
            // Value records are never stored (see the filtering above).
            max_records: 16,
            max_value_bytes: 1024,
            max_providers_per_key: 256,
            max_provided_keys: 16 * 1024,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, kcfg);
    kad.set_mode(Some(kad::Mode::Server));

    // Gossipsub: unsigned (each message is sealed by its author and the
    // seal checked once per message, not per copy: `wire::SealedGossip`),
    // application-validated, bounded messages.
    let gcfg = gossipsub::ConfigBuilder::default()
        .protocol_id_prefix(p.gossip_prefix.clone())
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        // A sealed message and its RPC framing (topic name, field tags).
        .max_transmit_size(MAX_SEALED_BYTES + GOSSIP_RPC_FRAMING)
        .heartbeat_interval(Duration::from_millis(700))
        // A locality is a few dozen peers that all connect to each other.
        // The defaults (mesh 6-12, every publish flooded to every peer)
        // delivered each message 8.5 times to each node at N=21; with this
        // mesh the node links carried 1.049x N x image for a 49 MB deploy
        // instead of 1.066x. A mesh of 4 still reaches 21 peers in three
        // hops, and heartbeat gossip (IHAVE) repairs what a hop loses.
        .mesh_n(GOSSIP_MESH)
        .mesh_n_low(GOSSIP_MESH - 1)
        .mesh_n_high(GOSSIP_MESH + 2)
        .mesh_outbound_min(GOSSIP_MESH / 2)
        .gossip_lazy(GOSSIP_MESH - 1)
        .flood_publish(false)
        // IHAVE lists every id of the last heartbeats to a few peers each
        // heartbeat: with the default 71-byte ids (base58 peer id and
        // decimal sequence number) and three heartbeats of history, IHAVE
        // cost a node as much as the messages themselves. 16-byte ids
        // and two heartbeats of history cut that by three quarters.
        .message_id_fn(short_message_id)
        .history_gossip(2)
        .build()
        .map_err(|e| SwarmError::Config(e.to_string()))?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gcfg)
        .map_err(|e| SwarmError::Config(e.to_string()))?;
    let mut params = gossipsub::PeerScoreParams::default();
    for t in Topic::ALL {
        // Quiet topics are normal here: no penalties for few deliveries;
        // invalid messages cost a lot.
        let tp = gossipsub::TopicScoreParams {
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            invalid_message_deliveries_weight: -100.0,
            invalid_message_deliveries_decay: 0.9,
            ..Default::default()
        };
        params.topics.insert(p.topic(t).hash(), tp);
    }
    gossipsub
        .with_peer_score(params, gossipsub::PeerScoreThresholds::default())
        .map_err(SwarmError::Config)?;
    for t in Topic::ALL {
        gossipsub
            .subscribe(&p.topic(t))
            .map_err(|e| SwarmError::Config(e.to_string()))?;
    }

    let identify = identify::Behaviour::new(
        identify::Config::new(p.identify.clone(), key.public()).with_push_listen_addr_updates(true),
    );
    let mdns = if cfg.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| SwarmError::Transport(e.to_string()))?,
        )
    } else {
        None
    };
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(cfg.max_connections))
            .with_max_established_per_peer(Some(2))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(64)),
    );
    let behaviour = Behaviour {
        blocked: Default::default(),
        limits,
        kad,
        gossipsub,
        identify,
        mdns: Toggle::from(mdns),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15))),
        stream: libp2p_stream::Behaviour::new(),
    };
    let idle = cfg.idle_timeout;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| SwarmError::Transport(e.to_string()))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| SwarmError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &[u8]) -> gossipsub::Message {
        gossipsub::Message {
            source: None,
            data: data.to_vec(),
            sequence_number: None,
            topic: gossipsub::TopicHash::from_raw("t"),
        }
    }

    /// The vendored libp2p-kad's `ClosestIter` (third_party/libp2p-kad,
    /// PATCHES.md) against a brute-force sort by XOR distance: both its
    /// uses (keys for lookups, entries for answering peers), across targets
    /// in near and far buckets, with a routing table of a few peers (most
    /// buckets empty, as in a locality) and of many.
    #[test]
    fn kademlia_lists_the_closest_local_peers_in_distance_order() {
        use libp2p::kad::KBucketKey;
        use libp2p::Multiaddr;
        for peers in [3usize, 21, 200] {
            let local = PeerId::random();
            let mut kad = kad::Behaviour::with_config(
                local,
                MemoryStore::new(local),
                kad::Config::new(StreamProtocol::new("/edgeswarm-test/kad")),
            );
            let mut known = Vec::new();
            for i in 0..peers {
                let peer = PeerId::random();
                let addr: Multiaddr = format!("/ip4/10.0.{}.{}/tcp/4001", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap();
                if matches!(kad.add_address(&peer, addr), kad::RoutingUpdate::Success) {
                    known.push(peer);
                }
            }
            assert!(
                known.len() >= peers.min(20),
                "{} of {peers} peers in the table",
                known.len()
            );
            let mut targets: Vec<PeerId> = (0..16).map(|_| PeerId::random()).collect();
            targets.extend(known.iter().take(4).copied());
            for target in targets {
                let key = KBucketKey::from(target);
                let mut want = known.clone();
                want.sort_by_key(|p| key.distance(&KBucketKey::from(*p)));
                let keys: Vec<PeerId> = kad
                    .get_closest_local_peers(&key)
                    .map(|k| *k.preimage())
                    .collect();
                assert_eq!(keys, want, "{peers} peers");
                // Answering a peer: the same order without the asker, at
                // most K of them.
                let asker = want[0];
                let answer: Vec<PeerId> = kad
                    .find_closest_local_peers(&key, &asker)
                    .map(|p| p.node_id)
                    .collect();
                let expected: Vec<PeerId> = want[1..].iter().take(20).copied().collect();
                assert_eq!(answer, expected, "{peers} peers");
            }
        }
    }

    #[test]
    fn message_ids_are_16_bytes_and_tell_author_and_sequence_apart() {
        let protocols = Protocols::new("lab").unwrap();
        let (a, b) = (
            gossip_key(&Keypair::generate_ed25519()).unwrap(),
            gossip_key(&Keypair::generate_ed25519()).unwrap(),
        );
        let sealed =
            |k: &PublisherKey, seq| seal_gossip(k, &protocols, Topic::Status, seq, b"x".to_vec());
        let id = short_message_id(&message(&sealed(&a, 7)));
        assert_eq!(id.0.len(), 16);
        // The id names the author's message, whatever relay carried it.
        assert_eq!(id, short_message_id(&message(&sealed(&a, 7))));
        assert_ne!(id, short_message_id(&message(&sealed(&a, 8))));
        assert_ne!(id, short_message_id(&message(&sealed(&b, 7))));
    }

    #[test]
    fn a_seal_names_the_peer_whose_identity_signed_it() {
        let identity = Keypair::generate_ed25519();
        let key = gossip_key(&identity).unwrap();
        assert_eq!(
            author_peer(&key.public()),
            Some(identity.public().to_peer_id())
        );
    }
}
