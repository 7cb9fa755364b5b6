//! What the API shows of the daemon ([`Daemon::status`]): this node, its
//! releases and the locality as status gossip describes it. The types
//! here are the JSON of `/v1/status`, which the CLI reads back, so they
//! are shared by both ([`ReleasePhase`] for a release's state). Built from
//! snapshots of the release and peer tables; progress reads the store
//! outside their locks.

use std::collections::HashMap;

use edgeswarm_protocol::wire::{PeerRole, ReleaseProgress, ReleaseState};
use edgeswarm_protocol::Digest;
use serde::{Deserialize, Serialize};

use super::desired::DesiredView;
use super::releases::Snapshot;
use super::{Daemon, Inner};

/// A release's phase, as the API reports it and the CLI reads it (the
/// protocol's [`ReleaseState`] travels as a number; this is its JSON
/// face, the lowercase name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleasePhase {
    /// Accepted, nothing fetched yet.
    Announced,
    /// Fetching the manifest and config.
    Resolving,
    /// Fetching (and importing while fetching) the layers.
    Fetching,
    /// Layers complete, importing into the runtime.
    Importing,
    /// Imported (on a gateway the release does not select: its layers
    /// are in the locality).
    Done,
    /// Gave up; the release's `error` says why.
    Failed,
}

impl ReleasePhase {
    /// The lowercase name (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            ReleasePhase::Announced => "announced",
            ReleasePhase::Resolving => "resolving",
            ReleasePhase::Fetching => "fetching",
            ReleasePhase::Importing => "importing",
            ReleasePhase::Done => "done",
            ReleasePhase::Failed => "failed",
        }
    }

    /// Whether the release is done or failed: nothing more will happen.
    pub fn is_settled(self) -> bool {
        matches!(self, ReleasePhase::Done | ReleasePhase::Failed)
    }
}

impl From<ReleaseState> for ReleasePhase {
    fn from(state: ReleaseState) -> Self {
        match state {
            ReleaseState::Announced => ReleasePhase::Announced,
            ReleaseState::Resolving => ReleasePhase::Resolving,
            ReleaseState::Fetching => ReleasePhase::Fetching,
            ReleaseState::Importing => ReleasePhase::Importing,
            ReleaseState::Done => ReleasePhase::Done,
            ReleaseState::Failed => ReleasePhase::Failed,
        }
    }
}

impl std::fmt::Display for ReleasePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A release as this node tracks it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseView {
    /// The release id (`sha256:...`).
    pub id: String,
    /// The image reference.
    pub image: String,
    /// The manifest digest.
    pub manifest: String,
    /// Its phase (`announced`, `fetching`, `done`, ...).
    pub state: ReleasePhase,
    /// Layer bytes to fetch.
    pub bytes_total: u64,
    /// Layer bytes verified so far.
    pub bytes_done: u64,
    /// Bytes this node pulled from the registry for the release.
    pub bytes_from_cloud: u64,
    /// Bytes this node received from peers for the release.
    pub bytes_from_peers: u64,
    /// Seconds from accepting the release to the image being imported.
    pub seconds: Option<f64>,
    /// Why the release failed.
    pub error: Option<String>,
    /// The node that pulls the release from the registry, when known.
    pub gateway: Option<String>,
    /// When the release was made (unix seconds), when this node knows the
    /// release: tells a redeploy of the same image from the earlier one.
    #[serde(default)]
    pub created: Option<u64>,
    /// The publisher's sequence number of the release, when this node
    /// knows the release: orders releases of the same image.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Why the release is waiting, while it is: a gateway pull retrying
    /// after a registry failure (the cause, the attempt, the next one's
    /// delay), on the gateway and, naming it, on every node that waits for
    /// it; the elected gateway gone or failed; no gateway live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// Another node of the locality, as its status reports describe it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerView {
    /// Its peer id.
    pub peer_id: String,
    /// `node`, `gateway` or `bootstrap`.
    pub role: String,
    /// Whether it can pull from the registry.
    pub gateway_capable: bool,
    /// Seconds since its last report.
    pub last_seen_secs: f64,
    /// Whether it stopped reporting.
    pub gone: bool,
    /// Its releases, as it reports them.
    pub releases: Vec<ReleaseView>,
}

/// The locality as this node sees it (`edgeswarm status --json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusView {
    /// This node.
    #[serde(rename = "self")]
    pub this: SelfView,
    /// Every other node heard from.
    pub nodes: Vec<PeerView>,
    /// Releases this node refused recently (newest last).
    pub refused: Vec<RefusedView>,
    /// The locality's desired state as this node holds it: per image the
    /// newest release or removal.
    #[serde(default)]
    pub desired: Vec<DesiredView>,
    /// The sequence number a publisher signing through this node uses next
    /// (above every one this node holds).
    #[serde(default)]
    pub next_seq: u64,
}

/// A release this node refused, in [`StatusView`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RefusedView {
    /// The image the release named.
    pub image: String,
    /// The peer that gossiped it, when it came from the network.
    pub from: Option<String>,
    /// Why it was refused.
    pub reason: String,
}

/// This node, in [`StatusView`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SelfView {
    /// Its peer id.
    pub peer_id: String,
    /// Its listen addresses, each ending in `/p2p/<peer id>`.
    pub addresses: Vec<String>,
    /// `node` or `gateway`.
    pub role: String,
    /// Its locality.
    pub locality: String,
    /// Connected peers.
    pub connected_peers: usize,
    /// Its releases.
    pub releases: Vec<ReleaseView>,
    /// What the operator must fix or know about its trust and membership
    /// settings: no trusted publisher key (refuses every release, and how
    /// to trust one), `--allow-any-publisher`, an open locality.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The longest a [`Daemon::status_after`] waits for a phase change.
pub const MAX_STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A status answered by [`Daemon::status_after`].
#[derive(Debug)]
pub struct StatusAfter {
    /// The locality as this node sees it.
    pub view: StatusView,
    /// How many release phase changes this node had recorded when the
    /// view was built (the view may already show a later one): the next
    /// long poll passes it back.
    pub phases: u64,
    /// How long the call waited before a change (or the deadline) let it
    /// answer.
    pub waited: std::time::Duration,
}

impl Daemon {
    /// The status once this node's release phases differ from `seen` (a
    /// count earlier returned as [`StatusAfter::phases`]), or after
    /// `wait` (capped at [`MAX_STATUS_WAIT`]), or at shutdown; at once
    /// when `seen` is `None` or already stale. A watcher that long-polls
    /// this learns of every phase change as it happens, for one request
    /// per change instead of one per poll interval.
    pub async fn status_after(&self, seen: Option<u64>, wait: std::time::Duration) -> StatusAfter {
        let started = std::time::Instant::now();
        let mut phases = self.inner.phases.subscribe();
        if seen.is_some_and(|seen| *phases.borrow_and_update() == seen) {
            tokio::select! {
                _ = phases.changed() => {}
                () = tokio::time::sleep(wait.min(MAX_STATUS_WAIT)) => {}
                () = self.inner.shutdown.cancelled() => {}
            }
        }
        let waited = started.elapsed();
        // Read before the view is built: the view is at least this new.
        let count = *phases.borrow();
        StatusAfter {
            view: self.status().await,
            phases: count,
            waited,
        }
    }

    /// The locality as this node sees it.
    pub async fn status(&self) -> StatusView {
        let me = self.inner.swarm.local_peer_id();
        // With the `/p2p/` suffix, ready to paste into another node's
        // `--bootstrap`.
        let addresses = self
            .inner
            .swarm
            .listen_addrs()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                if a.iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                {
                    a.to_string()
                } else {
                    a.with(libp2p::multiaddr::Protocol::P2p(me)).to_string()
                }
            })
            .collect();
        let connected_peers = self
            .inner
            .swarm
            .connected_peers()
            .await
            .map(|p| p.len())
            .unwrap_or(0);
        let mine = self.inner.releases.snapshot();
        let releases = self.inner.release_views(&mine);
        let mine: HashMap<Digest, Snapshot> = mine.into_iter().map(|t| (t.id, t)).collect();
        let nodes = self
            .inner
            .peers
            .snapshot()
            .into_iter()
            .map(|peer| PeerView {
                peer_id: peer.peer.to_string(),
                role: role_name(peer.status.role).into(),
                gateway_capable: peer.status.gateway_capable,
                last_seen_secs: peer.last_seen.as_secs_f64(),
                gone: peer.gone(),
                releases: peer
                    .status
                    .releases
                    .iter()
                    .map(|p| {
                        let mut view = progress_view(p, mine.get(&p.release_id));
                        view.seconds = peer.took.get(&p.release_id).map(|d| d.as_secs_f64());
                        view
                    })
                    .collect(),
            })
            .collect();
        StatusView {
            this: SelfView {
                peer_id: self.inner.swarm.local_peer_id().to_string(),
                addresses,
                role: if self.inner.config.gateway {
                    "gateway"
                } else {
                    "node"
                }
                .into(),
                locality: self.inner.config.swarm.locality.clone(),
                connected_peers,
                releases,
                warnings: super::trust_warnings(
                    &self.inner.config,
                    self.inner.swarm.local_peer_id(),
                ),
            },
            nodes,
            refused: self.inner.releases.refusals(),
            desired: self.inner.desired.views(),
            next_seq: self.inner.desired.next_seq(),
        }
    }
}

impl Inner {
    /// Progress of these releases of this node, as status reports carry it.
    pub(super) fn progress(&self, releases: &[Snapshot]) -> Vec<ReleaseProgress> {
        releases.iter().map(|t| self.progress_of(t)).collect()
    }

    /// Progress of one release of this node.
    pub(super) fn progress_of(&self, t: &Snapshot) -> ReleaseProgress {
        let bytes_done = self.bytes_done(t);
        let from_cloud = t.bytes_from_cloud.min(t.bytes_total);
        ReleaseProgress {
            release_id: t.id,
            state: t.state,
            bytes_total: t.bytes_total,
            bytes_done,
            bytes_from_cloud: from_cloud,
            bytes_from_peers: bytes_done
                .saturating_sub(from_cloud)
                .saturating_sub(t.bytes_held_before),
            error: t.error.clone(),
            // Only this node's own pull: a reason derived from another
            // node's report is not passed on (it would echo between nodes).
            waiting: t
                .waiting
                .as_deref()
                .map(edgeswarm_protocol::wire::truncate_message),
        }
    }

    /// Why release `t` waits on this node, while it does: this node's own
    /// gateway pull retrying; else what its elected gateway reports
    /// (retrying a registry outage, or failed); else that no gateway is
    /// live. `None` once the release has its layers, is done or failed.
    pub(super) fn waiting_of(&self, t: &Snapshot) -> Option<String> {
        if let Some(own) = &t.waiting {
            return Some(own.clone());
        }
        if !matches!(
            t.state,
            ReleaseState::Announced | ReleaseState::Resolving | ReleaseState::Fetching
        ) {
            return None;
        }
        let me = self.swarm.local_peer_id();
        match t.gateway {
            Some(gateway) if gateway == me => None,
            Some(gateway) => match self.peers.report_of(&gateway, &t.id) {
                Some((false, _)) => Some(format!(
                    "gateway {gateway} stopped reporting; waiting for another gateway to take over"
                )),
                Some((true, Some(p))) if p.waiting.is_some() => Some(format!(
                    "gateway {gateway} {}",
                    p.waiting.as_deref().unwrap_or_default()
                )),
                Some((true, Some(p))) if p.state == ReleaseState::Failed => Some(format!(
                    "gateway {gateway} failed the release ({}); waiting for a new release \
                     or another gateway",
                    p.error.as_deref().unwrap_or("no reason given")
                )),
                _ => None,
            },
            None => {
                Some("no gateway-capable node is live in the locality; waiting for one".to_owned())
            }
        }
    }

    /// Verified bytes of a release's layers in the store.
    fn bytes_done(&self, t: &Snapshot) -> u64 {
        t.layers
            .iter()
            .map(|layer| self.store.held_bytes(layer))
            .sum()
    }

    /// Views of these releases of this node.
    fn release_views(&self, releases: &[Snapshot]) -> Vec<ReleaseView> {
        releases
            .iter()
            .map(|t| ReleaseView {
                waiting: self.waiting_of(t),
                ..progress_view(&self.progress_of(t), Some(t))
            })
            .collect()
    }
}

/// Renders a progress entry, adding what this node knows of the release
/// (`tracked`, when this node tracks it too).
fn progress_view(p: &ReleaseProgress, tracked: Option<&Snapshot>) -> ReleaseView {
    ReleaseView {
        id: p.release_id.to_string(),
        image: tracked.map(|t| t.release.image.clone()).unwrap_or_default(),
        manifest: tracked
            .map(|t| t.release.manifest.to_string())
            .unwrap_or_default(),
        state: p.state.into(),
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        bytes_from_cloud: p.bytes_from_cloud,
        bytes_from_peers: p.bytes_from_peers,
        seconds: tracked.and_then(|t| t.took).map(|d| d.as_secs_f64()),
        error: p.error.clone(),
        gateway: tracked.and_then(|t| t.gateway).map(|g| g.to_string()),
        created: tracked.map(|t| t.release.created),
        seq: tracked.map(|t| t.release.seq),
        waiting: p.waiting.clone(),
    }
}

/// The lowercase name of a role.
fn role_name(role: PeerRole) -> &'static str {
    match role {
        PeerRole::Node => "node",
        PeerRole::Gateway => "gateway",
        PeerRole::Bootstrap => "bootstrap",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_travel_as_their_lowercase_names() {
        for (state, name) in [
            (ReleaseState::Announced, "announced"),
            (ReleaseState::Resolving, "resolving"),
            (ReleaseState::Fetching, "fetching"),
            (ReleaseState::Importing, "importing"),
            (ReleaseState::Done, "done"),
            (ReleaseState::Failed, "failed"),
        ] {
            let phase = ReleasePhase::from(state);
            assert_eq!(phase.to_string(), name);
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<ReleasePhase>(&json).unwrap(), phase);
        }
        assert!(serde_json::from_str::<ReleasePhase>("\"finished\"").is_err());
    }
}
