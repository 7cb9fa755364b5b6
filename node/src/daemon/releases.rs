//! Release state: every release this node tracks, and the refusals
//! status shows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeswarm_protocol::release::Release;
use edgeswarm_protocol::wire::ReleaseState;
use edgeswarm_protocol::Digest;
use libp2p::PeerId;

use super::peers::PeerEntry;
use super::views::RefusedView;
use super::Inner;

/// How many refusals status keeps.
pub(super) const MAX_REFUSALS: usize = 32;

/// Mutable state shared by the daemon's tasks.
#[derive(Default)]
pub(super) struct State {
    /// Releases by id.
    pub(super) releases: HashMap<Digest, Tracked>,
    /// Other nodes by peer id.
    pub(super) peers: HashMap<PeerId, PeerEntry>,
    /// Recently refused releases, oldest first, at most [`MAX_REFUSALS`].
    pub(super) refused: std::collections::VecDeque<RefusedView>,
    /// Blobs other nodes report holding complete (availability gossip), at
    /// most [`MAX_ANNOUNCED_BLOBS`] per peer: a gateway pulls only layers no
    /// live peer holds.
    pub(super) complete_at: HashMap<PeerId, std::collections::HashSet<Digest>>,
}

/// One release on this node.
pub(super) struct Tracked {
    /// The verified release.
    pub(super) release: Release,
    /// Its phase.
    pub(super) state: ReleaseState,
    /// When this node accepted it.
    pub(super) accepted: Instant,
    /// How long it took to import, once done.
    pub(super) took: Option<Duration>,
    /// The gateway currently expected to pull it.
    pub(super) gateway: Option<PeerId>,
    /// Whether this node started pulling it as gateway.
    pub(super) pulling: bool,
    /// Whether this node's pull (if any) has decided which layers it
    /// pulls from the registry (they are then in `Inner::pulling_blobs`).
    /// Until then this node's fetch pipeline asks no peer for layers: the
    /// gateway would otherwise download from its peers the very chunks its
    /// registry pull is writing (measured: 91 MB in for a 48.7 MB image).
    pub(super) pull_planned: bool,
    /// Whether the fetch pipeline was started.
    pub(super) fetching: bool,
    /// Layer bytes in the release.
    pub(super) bytes_total: u64,
    /// Bytes pulled from the registry by this node.
    pub(super) bytes_from_cloud: Arc<std::sync::atomic::AtomicU64>,
    /// Layers of the release (known once the manifest is verified).
    pub(super) layers: Vec<Digest>,
    /// Layer bytes held when the release was accepted (not fetched).
    pub(super) bytes_held_before: u64,
    /// Why it failed.
    pub(super) error: Option<String>,
}

impl Inner {
    /// Keeps a refusal for status (bounded to [`MAX_REFUSALS`]).
    pub(super) fn record_refusal(&self, image: String, from: Option<PeerId>, reason: String) {
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

    /// The gateway pull of release `id` on this node has marked the layers
    /// it pulls from the registry.
    pub(super) fn set_pull_planned(&self, id: &Digest) {
        let mut state = self.state.lock().expect("state lock");
        if let Some(t) = state.releases.get_mut(id) {
            t.pull_planned = true;
        }
    }

    /// Whether this node must not fetch `blob` of release `id` from peers
    /// now: its own gateway pull is deciding what to pull, or pulls `blob`.
    pub(super) fn pulls_itself(&self, id: &Digest, blob: &Digest) -> bool {
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
    pub(super) fn set_state(&self, id: &Digest, new: ReleaseState, error: Option<String>) {
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
}
