//! The names a locality's peers speak (`docs/PROTOCOL.md` §7): libp2p
//! protocol names and gossip topics, all scoped by the [`Locality`].
//!
//! Peers of another locality (or any other libp2p application) speak other
//! names, so they never share a routing table, a gossip mesh or a chunk
//! stream with us:
//!
//! | what | name |
//! |---|---|
//! | Kademlia | `/edgeswarm/L/kad/1.0.0` ([`kad_protocol`]) |
//! | identify | `/edgeswarm/L/id/1.0.0` ([`identify_protocol`]) |
//! | gossipsub protocol prefix | `/edgeswarm/L/meshsub-sealed` ([`gossip_protocol_prefix`]) |
//! | chunk exchange streams | `/edgeswarm/L/chunks/1.0.0` ([`stream_protocol`]) |
//! | gossip topics | `edgeswarm/L/releases`, `edgeswarm/L/availability`, `edgeswarm/L/status` ([`topic_name`]) |
//!
//! Which message kind travels on which topic is [`GossipMessage::topic`].

use super::*;

/// Longest locality name, in characters (all ASCII).
pub const MAX_LOCALITY_CHARS: usize = 64;

/// A locality name: 1 to [`MAX_LOCALITY_CHARS`] characters out of ASCII
/// letters, digits, `-`, `_` and `.`, so it fits every protocol name and
/// topic as one path segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality(String);

impl Locality {
    /// Checks `name` against the locality rule.
    pub fn new(name: &str) -> Result<Self, WireError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_LOCALITY_CHARS
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if ok {
            Ok(Locality(name.to_owned()))
        } else {
            Err(WireError::InvalidLocality {
                name: name.to_owned(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Kademlia protocol name of `locality`.
pub fn kad_protocol(locality: &Locality) -> String {
    format!("/edgeswarm/{locality}/kad/1.0.0")
}

/// The identify protocol version string of `locality`; a peer announcing
/// another one is not of this locality.
pub fn identify_protocol(locality: &Locality) -> String {
    format!("/edgeswarm/{locality}/id/1.0.0")
}

/// The gossipsub protocol id prefix of `locality`. `-sealed`: its
/// messages are [`SealedGossip`]s, published unsigned; peers that publish
/// gossipsub-signed messages (the former `/meshsub`) speak another
/// protocol, so the two never mix in one mesh.
pub fn gossip_protocol_prefix(locality: &Locality) -> String {
    format!("/edgeswarm/{locality}/meshsub-sealed")
}

/// The libp2p stream protocol name of chunk exchange in `locality` (the
/// frames of [`StreamMessage`]).
pub fn stream_protocol(locality: &Locality) -> String {
    format!("/edgeswarm/{locality}/chunks/{STREAM_PROTOCOL_VERSION}")
}

/// The version segment of [`stream_protocol`]: the frame format of
/// [`STREAM_VERSION`].
pub const STREAM_PROTOCOL_VERSION: &str = "1.0.0";

const _: () = assert!(STREAM_VERSION == 1, "bump STREAM_PROTOCOL_VERSION too");

/// The gossipsub topic `topic` of `locality`.
pub fn topic_name(locality: &Locality, topic: Topic) -> String {
    format!("edgeswarm/{locality}/{}", topic.name())
}

/// The gossip topics of a locality; every node subscribes to all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Publisher-signed releases and removals, and the gateway's signed
    /// resolutions and chunk digests.
    Releases,
    /// Availability batches.
    Availability,
    /// Node status reports.
    Status,
}

impl Topic {
    /// Every topic, for subscribing.
    pub const ALL: [Topic; 3] = [Topic::Releases, Topic::Availability, Topic::Status];

    /// The topic's last path segment.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Releases => "releases",
            Topic::Availability => "availability",
            Topic::Status => "status",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
