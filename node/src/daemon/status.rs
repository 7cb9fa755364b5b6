//! The status loop. Every [`STATUS_INTERVAL`], or soon after a release
//! changes phase, it gossips this node's status report (which peers read
//! for liveness and progress) and, when the set changed or now and then,
//! the blobs it holds complete (availability, which gateways read to skip
//! layers). Then it drives every pending release again: re-election as
//! peers come and go is what moves a release to the runner-up gateway
//! when the elected one dies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeswarm_protocol::wire::{
    Availability, AvailabilityBatch, AvailabilityEntry, GossipMessage, NodeStatus, PeerRole,
};
use edgeswarm_protocol::Digest;

use super::{unix_millis, Inner};
use crate::swarm::Topic;

/// How often a node reports its status on gossip.
pub(super) const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// Shortest gap between two status reports triggered by state changes.
pub(super) const MIN_STATUS_GAP: Duration = Duration::from_millis(250);

/// Most complete blobs announced in one availability message (each entry
/// is about 40 bytes; gossip messages are at most 64 KiB).
pub(super) const MAX_ANNOUNCED_BLOBS: usize = 1024;

/// A node re-announces its complete blobs at least this often, so nodes
/// that joined later learn of them.
pub(super) const AVAILABILITY_REFRESH: Duration = Duration::from_secs(30);

impl Inner {
    /// This node's status report (also refreshes the per-release metrics).
    pub(super) fn status_report(&self) -> NodeStatus {
        let releases = self.releases.snapshot();
        let progress = self.progress(&releases);
        for (t, p) in releases.iter().zip(&progress) {
            self.metrics.record_progress(&t.release.image, p);
        }
        NodeStatus {
            role: if self.config.gateway {
                PeerRole::Gateway
            } else {
                PeerRole::Node
            },
            gateway_capable: self.config.gateway,
            timestamp_ms: unix_millis(),
            releases: progress,
        }
    }
}

/// Publishes status reports and re-runs gateway election as peers come and
/// go, so a release whose gateway died is taken over.
pub(super) async fn status_loop(inner: Arc<Inner>) {
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
        let pending = inner.releases.pending();
        for id in pending {
            inner.drive(id);
        }
    }
}
