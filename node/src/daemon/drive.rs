//! Moving releases forward: trust checks, acceptance, gateway election,
//! and starting the gateway pull and the fetch pipeline.

use std::sync::Arc;

use edgeswarm_protocol::release::{Release, SignedRelease};
use edgeswarm_protocol::wire::ReleaseState;
use edgeswarm_protocol::Digest;
use libp2p::PeerId;

use super::error::ReleaseError;
use super::{gateway, pipeline, DaemonError, Inner};

impl Inner {
    /// Checks a release against this node's trust policy and locality.
    pub(super) fn check_release(&self, signed: &SignedRelease) -> Result<Release, DaemonError> {
        let release = if self.config.trusted.is_empty() {
            signed.verify_embedded()
        } else {
            signed.verify_trusted(&self.config.trusted)
        }
        .map_err(|e| DaemonError::Refused(e.to_string()))?
        .clone();
        if release.locality != self.config.swarm.locality {
            return Err(DaemonError::Refused(format!(
                "release is for locality {:?}, this node is in {:?}",
                release.locality, self.config.swarm.locality
            )));
        }
        Ok(release)
    }

    /// Records and reports a refused release.
    pub(super) fn refuse(&self, signed: &SignedRelease, from: Option<PeerId>, error: &DaemonError) {
        tracing::warn!(from = ?from, image = %signed.body_unverified().image, error = %error, "release refused");
        self.releases.record_refusal(
            signed.body_unverified().image.clone(),
            from,
            error.to_string(),
        );
    }

    /// Whether `release`'s selector matches this node's labels.
    pub(super) fn targets(&self, release: &Release) -> bool {
        release.selects(
            self.config
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// Starts tracking an accepted release, if this node is targeted.
    pub(super) fn accept_release(self: &Arc<Self>, release: Release) {
        let id = release.id();
        if !self.targets(&release) && !self.config.gateway {
            tracing::info!(release = %id, "release does not select this node");
            return;
        }
        let image = release.image.clone();
        if self.releases.track(release) {
            tracing::info!(release = %id, %image, "release accepted");
            self.drive(id);
        }
    }

    /// Moves a release forward: elects its gateway (and pulls if that is
    /// this node), and starts the fetch pipeline on targeted nodes.
    pub(super) fn drive(self: &Arc<Self>, id: Digest) {
        let me = self.swarm.local_peer_id();
        let candidates = self.gateway_candidates();
        let work = self
            .releases
            .schedule(&id, &candidates, me, |release| self.targets(release));
        if let Some(release) = work.pull {
            let inner = self.clone();
            tokio::spawn(async move { gateway::pull(inner, release).await });
        }
        if let Some(release) = work.fetch {
            let inner = self.clone();
            tokio::spawn(async move {
                let id = release.id();
                pipeline::run(inner.clone(), release.clone()).await;
                if inner.releases.is_done(&id) {
                    inner.retain_versions(&release.image, release.created).await;
                }
                inner.collect_deferred().await;
            });
        }
    }

    /// Live gateway-capable nodes, this one included, as encoded peer ids.
    fn gateway_candidates(&self) -> Vec<Vec<u8>> {
        let mut candidates = self.peers.live_gateways();
        if self.config.gateway {
            candidates.push(self.swarm.local_peer_id().to_bytes());
        }
        candidates
    }

    /// Records a phase change of release `id`, counts it and wakes the
    /// status loop so the locality learns of it promptly. A change the
    /// release table refuses (out of done or failed, or backwards) is
    /// dropped.
    pub(super) fn set_state(&self, id: &Digest, new: ReleaseState) {
        self.record_phase(id, new, None);
    }

    /// Records that release `id` failed on this node, and why.
    pub(super) fn fail(&self, id: &Digest, error: &ReleaseError) {
        self.record_phase(id, ReleaseState::Failed, Some(error.to_string()));
    }

    fn record_phase(&self, id: &Digest, new: ReleaseState, error: Option<String>) {
        match self.releases.transition(id, new, error.clone()) {
            Ok(change) => {
                self.metrics.record_phase(new, change.took);
                self.status_changed.notify_one();
                if let Some(e) = error {
                    tracing::error!(release = %id, error = %e, "release failed");
                }
            }
            Err(refused) => {
                tracing::debug!(release = %id, to = ?new, %refused, "phase change not recorded");
            }
        }
    }
}
