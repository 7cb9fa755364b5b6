//! Prometheus metrics of the swarm, plus the per-node statistics that tests
//! and the status API read (distinct peers chunks came from, bytes moved).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of one node's swarm. Cheap to clone (Arc inside).
#[derive(Clone, Default)]
pub struct SwarmMetrics {
    /// Verified chunks received from peers.
    pub chunks_downloaded: Counter,
    /// Bytes of verified chunks received from peers.
    pub bytes_downloaded: Counter,
    /// Chunks received that were already stored (endgame duplicates).
    pub duplicate_chunks: Counter,
    /// Chunks served to peers.
    pub chunks_uploaded: Counter,
    /// Of those, chunks served while still arriving here (cut-through).
    pub chunks_relayed: Counter,
    /// Relayed answers received that ended without the chunk (the relay
    /// lost its source); each is asked again.
    pub relays_aborted: Counter,
    /// Payload bytes read of those aborted answers: received, then thrown
    /// away (the chunk is fetched again).
    pub relay_bytes_aborted: Counter,
    /// Answers this node had cancelled that the server stopped under way
    /// (the rest of the chunk never crossed the link).
    pub cancelled_answers_cut: Counter,
    /// Payload bytes read of answers this node had cancelled, thrown away:
    /// whole endgame duplicates and the start of answers cut short.
    pub cancelled_bytes_read: Counter,
    /// Relays this node gave up because their chunk stopped arriving.
    pub relays_given_up: Counter,
    /// Relays whose own copy ended early that this node completed from
    /// the verified chunk in its store instead of aborting.
    pub relays_completed_from_store: Counter,
    /// Download sessions whose stream the peer dropped unread (its inbound
    /// queue was full); each is opened again shortly.
    pub streams_dropped: Counter,
    /// Bytes of chunks served to peers.
    pub bytes_uploaded: Counter,
    /// Chunks that failed verification (each bans the sender).
    pub bad_chunks: Counter,
    /// Peers banned (bad chunks or protocol violations).
    pub bans: Counter,
    /// Peers' chunk maps set aside because chunks of several other peers
    /// contradicted them, or because no holder of a missing chunk had a
    /// copy matching them (their digests were learned again).
    pub maps_set_aside: Counter,
    /// Peers banned right now.
    pub banned_peers: Gauge,
    /// Stream or gossip messages that broke the protocol.
    pub protocol_violations: Counter,
    /// Gossip messages rejected by validation.
    pub gossip_rejected: Counter,
    /// Gossip messages accepted by validation.
    pub gossip_accepted: Counter,
    /// Valid gossip messages dropped because their author or relay sent
    /// more than its rate allows.
    pub gossip_rate_limited: Counter,
    /// DHT records from peers dropped as kinds this protocol does not use.
    pub dht_records_dropped: Counter,
    /// DHT provider lookups started.
    pub dht_provider_lookups: Counter,
    /// Provider lookups of downloads answered at once, without a query:
    /// every peer the routing table knew, and every author of gossip heard
    /// lately, was connected already.
    pub dht_lookups_skipped: Counter,
    /// Peers whose requests were reassigned because they stalled.
    pub stalls: Counter,
    /// Requests declined by servers (seed sparing, not held).
    pub rejected_requests: Counter,
    /// Chunk requests this node skipped, or whose answer it stopped under
    /// way, because the requester cancelled them (the chunk came from
    /// elsewhere first).
    pub cancelled_requests: Counter,
    /// Peers connected right now.
    pub connected_peers: Gauge,
    /// Every byte read from chunk streams: payloads plus frames (`Have`,
    /// bitfields, requests, answers). Less `bytes_downloaded`, what the
    /// exchange costs beyond the chunks.
    pub stream_bytes_received: Counter,
    /// Every byte written to chunk streams.
    pub stream_bytes_sent: Counter,
    /// Bytes of gossip messages delivered to this node, seals included
    /// (each message once: gossipsub's duplicates and control traffic are
    /// not seen here).
    pub gossip_bytes_received: Counter,
    /// Bytes of gossip messages this node published, seals included.
    pub gossip_bytes_published: Counter,
    /// Distinct peers this node has received verified chunks from.
    sources: Arc<Mutex<HashSet<PeerId>>>,
}

impl SwarmMetrics {
    /// Registers every metric under `registry` (prefix it with
    /// `registry.sub_registry_with_prefix("swarm")` if wanted).
    pub fn register(&self, registry: &mut Registry) {
        let c = |r: &mut Registry, n: &str, h: &str, m: &Counter| {
            r.register(n, h, m.clone());
        };
        c(
            registry,
            "chunks_downloaded",
            "Verified chunks received",
            &self.chunks_downloaded,
        );
        c(
            registry,
            "bytes_downloaded",
            "Verified bytes received",
            &self.bytes_downloaded,
        );
        c(
            registry,
            "duplicate_chunks",
            "Chunks received that were already stored",
            &self.duplicate_chunks,
        );
        c(
            registry,
            "chunks_uploaded",
            "Chunks served",
            &self.chunks_uploaded,
        );
        c(
            registry,
            "bytes_uploaded",
            "Bytes served",
            &self.bytes_uploaded,
        );
        c(
            registry,
            "bad_chunks",
            "Chunks failing verification",
            &self.bad_chunks,
        );
        c(registry, "bans", "Peers banned", &self.bans);
        c(
            registry,
            "maps_set_aside",
            "Peers' chunk maps set aside as disputed by other peers' chunks or not completable",
            &self.maps_set_aside,
        );
        c(
            registry,
            "stream_bytes_received",
            "Bytes read from chunk streams (payloads and frames)",
            &self.stream_bytes_received,
        );
        c(
            registry,
            "stream_bytes_sent",
            "Bytes written to chunk streams (payloads and frames)",
            &self.stream_bytes_sent,
        );
        c(
            registry,
            "gossip_bytes_received",
            "Bytes of gossip messages delivered (once each)",
            &self.gossip_bytes_received,
        );
        c(
            registry,
            "gossip_bytes_published",
            "Bytes of gossip messages published",
            &self.gossip_bytes_published,
        );
        c(
            registry,
            "protocol_violations",
            "Protocol violations by peers",
            &self.protocol_violations,
        );
        c(
            registry,
            "gossip_rejected",
            "Gossip messages rejected",
            &self.gossip_rejected,
        );
        c(
            registry,
            "gossip_accepted",
            "Gossip messages accepted",
            &self.gossip_accepted,
        );
        c(
            registry,
            "gossip_rate_limited",
            "Valid gossip messages dropped by the per-peer rate limit",
            &self.gossip_rate_limited,
        );
        c(
            registry,
            "dht_records_dropped",
            "DHT records from peers dropped (kinds this protocol does not use)",
            &self.dht_records_dropped,
        );
        c(
            registry,
            "dht_provider_lookups",
            "DHT provider lookups started",
            &self.dht_provider_lookups,
        );
        c(
            registry,
            "dht_lookups_skipped",
            "Provider lookups answered without a query (every routing-table peer and recent gossip author connected)",
            &self.dht_lookups_skipped,
        );
        c(
            registry,
            "stalls",
            "Stalled peers whose requests were reassigned",
            &self.stalls,
        );
        c(
            registry,
            "rejected_requests",
            "Requests declined by servers",
            &self.rejected_requests,
        );
        c(
            registry,
            "chunks_relayed",
            "Chunks served while still arriving here (cut-through relay)",
            &self.chunks_relayed,
        );
        c(
            registry,
            "relays_aborted",
            "Relayed chunk answers received that ended without the chunk",
            &self.relays_aborted,
        );
        c(
            registry,
            "relay_bytes_aborted",
            "Payload bytes of aborted relayed answers, read and thrown away",
            &self.relay_bytes_aborted,
        );
        c(
            registry,
            "cancelled_answers_cut",
            "Answers this node cancelled that the server stopped under way",
            &self.cancelled_answers_cut,
        );
        c(
            registry,
            "cancelled_bytes_read",
            "Payload bytes of answers this node had cancelled, read and thrown away",
            &self.cancelled_bytes_read,
        );
        c(
            registry,
            "relays_completed_from_store",
            "Relays whose copy ended early, completed from the verified chunk in the store",
            &self.relays_completed_from_store,
        );
        c(
            registry,
            "relays_given_up",
            "Relays given up because their chunk stopped arriving",
            &self.relays_given_up,
        );
        c(
            registry,
            "streams_dropped",
            "Download sessions whose stream the peer dropped unread (opened again shortly)",
            &self.streams_dropped,
        );
        c(
            registry,
            "cancelled_requests",
            "Chunk requests skipped or answers stopped because the requester cancelled them",
            &self.cancelled_requests,
        );
        registry.register(
            "banned_peers",
            "Peers banned now",
            self.banned_peers.clone(),
        );
        registry.register(
            "connected_peers",
            "Peers connected now",
            self.connected_peers.clone(),
        );
    }

    pub(crate) fn record_source(&self, peer: PeerId) {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
    }

    /// A snapshot of the headline figures.
    pub fn stats(&self) -> SwarmStats {
        SwarmStats {
            chunks_downloaded: self.chunks_downloaded.get(),
            bytes_downloaded: self.bytes_downloaded.get(),
            duplicate_chunks: self.duplicate_chunks.get(),
            chunks_uploaded: self.chunks_uploaded.get(),
            chunks_relayed: self.chunks_relayed.get(),
            bytes_uploaded: self.bytes_uploaded.get(),
            bad_chunks: self.bad_chunks.get(),
            bans: self.bans.get(),
            maps_set_aside: self.maps_set_aside.get(),
            protocol_violations: self.protocol_violations.get(),
            gossip_rejected: self.gossip_rejected.get(),
            gossip_rate_limited: self.gossip_rate_limited.get(),
            dht_records_dropped: self.dht_records_dropped.get(),
            dht_provider_lookups: self.dht_provider_lookups.get(),
            dht_lookups_skipped: self.dht_lookups_skipped.get(),
            stalls: self.stalls.get(),
            streams_dropped: self.streams_dropped.get(),
            distinct_sources: self.sources.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }
}

/// Headline figures of one node (see [`SwarmMetrics`] for meanings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmStats {
    /// Verified chunks received.
    pub chunks_downloaded: u64,
    /// Verified bytes received.
    pub bytes_downloaded: u64,
    /// Chunks received that were already stored.
    pub duplicate_chunks: u64,
    /// Chunks served.
    pub chunks_uploaded: u64,
    /// Of those, chunks served while still arriving (cut-through).
    pub chunks_relayed: u64,
    /// Bytes served.
    pub bytes_uploaded: u64,
    /// Chunks that failed verification.
    pub bad_chunks: u64,
    /// Bans issued.
    pub bans: u64,
    /// Chunk maps set aside as disputed.
    pub maps_set_aside: u64,
    /// Protocol violations seen.
    pub protocol_violations: u64,
    /// Gossip messages rejected.
    pub gossip_rejected: u64,
    /// Valid gossip messages dropped by the rate limit.
    pub gossip_rate_limited: u64,
    /// DHT records from peers dropped.
    pub dht_records_dropped: u64,
    /// DHT provider lookups started.
    pub dht_provider_lookups: u64,
    /// Provider lookups answered without a query.
    pub dht_lookups_skipped: u64,
    /// Stalled peers.
    pub stalls: u64,
    /// Download sessions dropped unread by the peer.
    pub streams_dropped: u64,
    /// Distinct peers verified chunks came from.
    pub distinct_sources: usize,
}
