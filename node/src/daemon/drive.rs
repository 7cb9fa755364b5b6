//! Moving releases forward: trust checks, acceptance, gateway election,
//! and starting the gateway pull and the fetch pipeline.

use std::sync::Arc;
use std::time::Instant;

use edgeswarm_protocol::election;
use edgeswarm_protocol::release::{Release, SignedRelease};
use edgeswarm_protocol::wire::ReleaseState;
use edgeswarm_protocol::Digest;
use libp2p::PeerId;

use super::releases::Tracked;
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
        self.record_refusal(
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
        let targeted = self.targets(&release);
        let id = release.id();
        {
            let mut state = self.state.lock().expect("state lock");
            if state.releases.contains_key(&id) {
                return;
            }
            if !targeted && !self.config.gateway {
                tracing::info!(release = %id, "release does not select this node");
                return;
            }
            tracing::info!(release = %id, image = %release.image, "release accepted");
            state.releases.insert(
                id,
                Tracked {
                    release,
                    state: ReleaseState::Announced,
                    accepted: Instant::now(),
                    took: None,
                    gateway: None,
                    pulling: false,
                    pull_planned: false,
                    fetching: false,
                    bytes_total: 0,
                    bytes_from_cloud: Default::default(),
                    layers: Vec::new(),
                    bytes_held_before: 0,
                    error: None,
                },
            );
        }
        self.drive(id);
    }

    /// Moves a release forward: elects its gateway (and pulls if that is
    /// this node), and starts the fetch pipeline on targeted nodes.
    pub(super) fn drive(self: &Arc<Self>, id: Digest) {
        let me = self.swarm.local_peer_id();
        let (pull, fetch) = {
            let mut state = self.state.lock().expect("state lock");
            let candidates = self.gateway_candidates(&state);
            let Some(t) = state.releases.get_mut(&id) else {
                return;
            };
            let gateway = election::elect(&t.release.manifest, &candidates)
                .map(|c| PeerId::from_bytes(c).expect("candidates are encoded peer ids"));
            if gateway != t.gateway {
                tracing::info!(release = %id, gateway = ?gateway, "gateway elected");
                t.gateway = gateway;
            }
            let pull = gateway == Some(me) && !t.pulling && t.state != ReleaseState::Done;
            if pull {
                t.pulling = true;
                t.pull_planned = false;
            }
            let fetch = self.targets(&t.release) && !t.fetching;
            if fetch {
                t.fetching = true;
            }
            (
                pull.then(|| t.release.clone()),
                fetch.then(|| t.release.clone()),
            )
        };
        if let Some(release) = pull {
            let inner = self.clone();
            tokio::spawn(async move { gateway::pull(inner, release).await });
        }
        if let Some(release) = fetch {
            let inner = self.clone();
            tokio::spawn(async move {
                let id = release.id();
                pipeline::run(inner.clone(), release.clone()).await;
                let done = inner
                    .state
                    .lock()
                    .expect("state lock")
                    .releases
                    .get(&id)
                    .is_some_and(|t| t.state == ReleaseState::Done);
                if done {
                    inner.retain_versions(&release.image, release.created).await;
                }
                inner.collect_deferred().await;
            });
        }
    }
}
