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

/// How long a live peer's desired-state digest must differ from this
/// node's before this node re-publishes its entries: live gossip settles
/// most differences first, and a release in flight is not pushed twice.
pub(super) const SYNC_AFTER: Duration = Duration::from_secs(4);

/// Shortest gap between two anti-entropy pushes of this node.
pub(super) const SYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Most desired-state entries one push re-publishes (each at most 16 KiB
/// of gossip); the next push continues where this one stopped.
pub(super) const SYNC_BATCH: usize = 64;

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
            desired: Some(self.desired.digest()),
        }
    }
}

/// Publishes status reports and re-runs gateway election as peers come and
/// go, so a release whose gateway died is taken over.
pub(super) async fn status_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    let mut announced: Vec<Digest> = Vec::new();
    let mut last_refresh: Option<Instant> = None;
    let mut sync = AntiEntropy::default();
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
        let stale = last_refresh.is_none_or(|t| t.elapsed() >= AVAILABILITY_REFRESH)
            || inner
                .announce_availability
                .swap(false, std::sync::atomic::Ordering::Relaxed);
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
        sync.tick(&inner).await;
        let pending = inner.releases.pending();
        for id in pending {
            inner.drive(id);
        }
    }
}

/// Anti-entropy: when a live peer's desired-state digest has differed from
/// this node's for [`SYNC_AFTER`] (at once when the peer holds nothing:
/// [`should_push`]), this node re-publishes its desired
/// releases and removals on gossip (at most [`SYNC_BATCH`] each
/// [`SYNC_INTERVAL`]). The peer applies them through the checks of live
/// gossip and, where it holds newer entries, its own push brings them
/// here: both converge to the newest entry per image. A node that joined
/// late or restarted holds nothing, so it learns every entry this way.
#[derive(Default)]
struct AntiEntropy {
    /// Since when some live peer's digest differs (None: all agree).
    differs_since: Option<Instant>,
    /// When this node last pushed.
    last_push: Option<Instant>,
    /// Where the next push starts in the list of entries.
    cursor: usize,
}

impl AntiEntropy {
    async fn tick(&mut self, inner: &Inner) {
        let ours = inner.desired.digest();
        if !inner.peers.desired_differs(&ours) {
            self.differs_since = None;
            self.cursor = 0;
            return;
        }
        let since = *self.differs_since.get_or_insert_with(Instant::now);
        let rested = self.last_push.is_none_or(|t| t.elapsed() >= SYNC_INTERVAL);
        let newly_empty = inner
            .push_to_empty_peer
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if !should_push(
            since.elapsed(),
            rested,
            ours.count,
            inner.peers.a_peer_holds_nothing(),
            newly_empty,
        ) {
            return;
        }
        self.last_push = Some(Instant::now());
        let entries = inner.desired.entries();
        if self.cursor >= entries.len() {
            self.cursor = 0;
        }
        let batch: Vec<_> = entries.iter().skip(self.cursor).take(SYNC_BATCH).collect();
        self.cursor += batch.len();
        tracing::info!(
            entries = batch.len(),
            of = entries.len(),
            "desired state differs from a peer's; re-publishing"
        );
        for entry in batch {
            let bytes = entry.to_gossip().encode();
            if let Err(e) = inner.swarm.publish(Topic::Releases, bytes).await {
                tracing::debug!(error = %e, "desired entry not re-published");
            }
        }
    }
}

/// Whether to re-publish the desired state now, given how long some live
/// peer's digest has differed, whether the last push is [`SYNC_INTERVAL`]
/// old, how many entries this node holds, whether a live peer holds none
/// and whether one newly reported holding none since the last tick. A
/// peer that holds nothing is a late joiner or a wiped node: no release
/// in flight will reach it, so waiting [`SYNC_AFTER`] for live gossip to
/// settle only delays it (the fault suite measured late joiners at T(1) +
/// 6 s, over the T(1) + 5 s target, 4 s of it this wait). Nor does one
/// that newly holds nothing wait for the rest: a late joiner that started
/// 4.7 s after its peers' last push (made while the release spread) heard
/// of the release 7.0 s after its start, at the end of their rest, and
/// took 10.7 s against T(1) + 5 s = 8.4 s. It is pushed to once per
/// arrival: a peer that stays empty (it refuses every release) is pushed
/// to every [`SYNC_INTERVAL`] at most.
fn should_push(
    differs_for: Duration,
    rested: bool,
    ours: u64,
    peer_empty: bool,
    newly_empty: bool,
) -> bool {
    ours > 0 && (newly_empty || (rested && (peer_empty || differs_for >= SYNC_AFTER)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_peer_is_pushed_to_at_once_other_differences_after_sync_after() {
        let now = Duration::ZERO;
        // A late joiner (empty digest): pushed to on the first tick.
        assert!(should_push(now, true, 1, true, false));
        // Another difference: live gossip gets SYNC_AFTER first.
        assert!(!should_push(now, true, 1, false, false));
        assert!(!should_push(
            SYNC_AFTER - Duration::from_millis(1),
            true,
            1,
            false,
            false
        ));
        assert!(should_push(SYNC_AFTER, true, 1, false, false));
        // Never more often than SYNC_INTERVAL, and nothing to push from an
        // empty state.
        assert!(!should_push(now, false, 1, true, false));
        assert!(!should_push(SYNC_AFTER, true, 0, true, false));
        // Except to a peer that newly holds nothing: at once, rested or
        // not (but still nothing from an empty state).
        assert!(should_push(now, false, 1, true, true));
        assert!(!should_push(now, false, 0, true, true));
    }
}
