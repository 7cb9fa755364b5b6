//! The other nodes of the locality, as their status and availability
//! gossip describes them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use edgeswarm_protocol::wire::NodeStatus;
use edgeswarm_protocol::Digest;

use super::releases::State;
use super::Inner;

/// A peer not heard from for this long is considered gone (failover).
pub(super) const PEER_TIMEOUT: Duration = Duration::from_secs(8);

/// What the daemon knows of another node.
pub(super) struct PeerEntry {
    /// Its last status report.
    pub(super) status: NodeStatus,
    /// When that report arrived.
    pub(super) last_seen: Instant,
    /// Per release: when this node first saw the peer report it, and how
    /// long until it reported it done (as observed through status gossip,
    /// so within a status interval of the truth).
    pub(super) timings: HashMap<Digest, (Instant, Option<Duration>)>,
}

impl Inner {
    /// Whether a live peer reports holding `blob` complete.
    pub(super) fn locality_holds(&self, blob: &Digest) -> bool {
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
    pub(super) fn gateway_candidates(&self, state: &State) -> Vec<Vec<u8>> {
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
}
