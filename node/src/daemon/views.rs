//! What the API shows of the daemon: this node, its releases and the
//! locality as status gossip describes it.

use edgeswarm_protocol::wire::{PeerRole, ReleaseProgress, ReleaseState};
use serde::Serialize;

use super::peers::PEER_TIMEOUT;
use super::releases::{State, Tracked};
use super::{Daemon, Inner};

/// A release as this node tracks it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseView {
    /// The release id (`sha256:...`).
    pub id: String,
    /// The image reference.
    pub image: String,
    /// The manifest digest.
    pub manifest: String,
    /// The state name (`announced`, `fetching`, `done`, ...).
    pub state: String,
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
}

impl Daemon {
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
        let state = self.inner.state.lock().expect("state lock");
        let releases = self.inner.release_views(&state);
        let nodes = state
            .peers
            .iter()
            .map(|(peer, entry)| PeerView {
                peer_id: peer.to_string(),
                role: role_name(entry.status.role).into(),
                gateway_capable: entry.status.gateway_capable,
                last_seen_secs: entry.last_seen.elapsed().as_secs_f64(),
                gone: entry.last_seen.elapsed() > PEER_TIMEOUT,
                releases: entry
                    .status
                    .releases
                    .iter()
                    .map(|p| {
                        let mut view = progress_view(p, &state);
                        view.seconds = entry
                            .timings
                            .get(&p.release_id)
                            .and_then(|t| t.1)
                            .map(|d| d.as_secs_f64());
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
            },
            nodes,
            refused: state.refused.iter().cloned().collect(),
        }
    }
}

impl Inner {
    /// Progress of this node's releases, as status reports carry it.
    pub(super) fn progress(&self, state: &State) -> Vec<ReleaseProgress> {
        state
            .releases
            .iter()
            .map(|(id, t)| {
                let bytes_done = self.bytes_done(t);
                let from_cloud = t
                    .bytes_from_cloud
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .min(t.bytes_total);
                ReleaseProgress {
                    release_id: *id,
                    state: t.state,
                    bytes_total: t.bytes_total,
                    bytes_done,
                    bytes_from_cloud: from_cloud,
                    bytes_from_peers: bytes_done
                        .saturating_sub(from_cloud)
                        .saturating_sub(t.bytes_held_before),
                    error: t.error.clone(),
                }
            })
            .collect()
    }

    /// Verified bytes of a release's layers in the store.
    pub(super) fn bytes_done(&self, t: &Tracked) -> u64 {
        t.layers
            .iter()
            .map(|layer| match self.store.blob_info(layer) {
                Some(info) if self.store.is_complete(layer) => info.size,
                Some(info) => self
                    .store
                    .bitfield(layer)
                    .map(|b| (b.count_ones() as u64 * info.chunk_size.get() as u64).min(info.size))
                    .unwrap_or(0),
                None => 0,
            })
            .sum()
    }

    /// Views of this node's releases.
    pub(super) fn release_views(&self, state: &State) -> Vec<ReleaseView> {
        self.progress(state)
            .iter()
            .map(|p| progress_view(p, state))
            .collect()
    }
}

/// Renders a progress entry, adding what this node knows of the release.
pub(super) fn progress_view(p: &ReleaseProgress, state: &State) -> ReleaseView {
    let tracked = state.releases.get(&p.release_id);
    ReleaseView {
        id: p.release_id.to_string(),
        image: tracked.map(|t| t.release.image.clone()).unwrap_or_default(),
        manifest: tracked
            .map(|t| t.release.manifest.to_string())
            .unwrap_or_default(),
        state: state_name(p.state).into(),
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        bytes_from_cloud: p.bytes_from_cloud,
        bytes_from_peers: p.bytes_from_peers,
        seconds: tracked.and_then(|t| t.took).map(|d| d.as_secs_f64()),
        error: p.error.clone(),
        gateway: tracked.and_then(|t| t.gateway).map(|g| g.to_string()),
        created: tracked.map(|t| t.release.created),
    }
}

/// The lowercase name of a release state.
pub fn state_name(state: ReleaseState) -> &'static str {
    match state {
        ReleaseState::Announced => "announced",
        ReleaseState::Resolving => "resolving",
        ReleaseState::Fetching => "fetching",
        ReleaseState::Importing => "importing",
        ReleaseState::Done => "done",
        ReleaseState::Failed => "failed",
    }
}

/// The lowercase name of a role.
pub(super) fn role_name(role: PeerRole) -> &'static str {
    match role {
        PeerRole::Node => "node",
        PeerRole::Gateway => "gateway",
        PeerRole::Bootstrap => "bootstrap",
    }
}
