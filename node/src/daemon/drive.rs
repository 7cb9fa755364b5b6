//! Moving releases forward: trust checks (a release is accepted only when
//! signed by a trusted key and for this locality), acceptance, gateway
//! election, and starting the gateway pull and the fetch pipeline. Every
//! phase change goes through [`Inner::set_state`] or [`Inner::fail`], which
//! ask the release table and then count the change and wake the status
//! loop. Also the API's way in: [`Daemon::prepare_release`] and
//! [`Daemon::publish_release`].

use std::sync::Arc;
use std::time::Duration;

use edgeswarm_protocol::election::Stance;
use edgeswarm_protocol::release::{Release, SignedRelease};
use edgeswarm_protocol::signing::PublisherKey;
use edgeswarm_protocol::wire::{GossipMessage, ReleaseState};
use edgeswarm_protocol::Digest;
use libp2p::PeerId;

use super::desired::{Entry, Offer};
use super::error::ReleaseError;
use super::{gateway, gossip, pipeline, unix_seconds, Daemon, DaemonError, Inner};
use crate::swarm::Topic;

/// An elected gateway that has signed no resolution or chunk digests of a
/// release this long after this node elected it is passed over for that
/// release (until it signs one): a gateway that pulls publishes its
/// resolution as soon as the registry answers, so a member that wins the
/// election and never pulls holds the release up this long at most.
pub(super) const GATEWAY_SILENCE: Duration = Duration::from_secs(10);

/// How long a release resumed at start waits before this node may pull it
/// as gateway: two status intervals and a second, so that every live peer
/// has reported (gateway election) and re-announced the blobs it holds
/// complete to this newly arrived node (what the pull skips). A restarted
/// gateway that pulled at once elected itself alone and pulled again what
/// the gateway that took over had pulled meanwhile (1.53x the image).
pub(super) const RESUME_SETTLE: std::time::Duration =
    std::time::Duration::from_secs(2 * super::status::STATUS_INTERVAL.as_secs() + 1);

/// [`Inner::late_hold`] on plain values: `settled` is when this node has
/// heard every live peer (its start and [`RESUME_SETTLE`]), `worked_on`
/// whether a peer works on the release already.
fn late_hold(
    now: std::time::Instant,
    settled: std::time::Instant,
    worked_on: bool,
) -> Option<std::time::Instant> {
    if now < settled {
        Some(settled)
    } else if worked_on {
        // It has heard its peers, but maybe not yet whether the one that
        // works on the release acts on it now (it signs as chunks land,
        // reports every status interval).
        Some(now + RESUME_SETTLE)
    } else {
        None
    }
}

impl Inner {
    /// Checks a release against this node's trust policy and locality.
    pub(super) fn check_release(&self, signed: &SignedRelease) -> Result<Release, DaemonError> {
        let release = if !self.config.trusted.is_empty() {
            signed.verify_trusted(&self.config.trusted)
        } else if self.config.allow_any_publisher {
            signed.verify_embedded()
        } else {
            return Err(DaemonError::Refused(super::NO_TRUSTED_KEY.to_owned()));
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

    /// Checks a signed release ([`Inner::check_release`]) and offers it to
    /// the desired state: `Some` when it is newer than what this node holds
    /// for its image (persist it and act on it), `None` when it is exactly
    /// that (a re-publication), an error when it is refused (older, a
    /// replay, or untrusted).
    pub(super) fn admit_release(
        &self,
        signed: &SignedRelease,
    ) -> Result<Option<Release>, DaemonError> {
        let release = self.check_release(signed)?;
        match self.desired.offer(Entry::Release(signed.clone())) {
            Offer::Newer(_) => Ok(Some(release)),
            Offer::Same => Ok(None),
            Offer::Refused(reason) => Err(DaemonError::Refused(reason)),
        }
    }

    /// Persists the desired state after a change, in the background (saves
    /// are serialised and each writes the state as it is then).
    pub(super) fn persist_desired(self: &Arc<Self>) {
        let inner = self.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.desired.save().await {
                tracing::warn!(error = %e, "desired state not saved");
            }
        });
    }

    /// Acts on a release the desired state just took: tracks and drives
    /// it, unless it was removed on this node only.
    pub(super) fn adopt_release(self: &Arc<Self>, signed: &SignedRelease, release: Release) {
        self.adopt_release_held(signed, release, None);
    }

    /// [`Inner::adopt_release`] for a release a peer gossiped (live, or
    /// re-published by anti-entropy): held like a resumed one when this
    /// node is late to it ([`Inner::late_hold`]).
    pub(super) fn adopt_learned_release(
        self: &Arc<Self>,
        signed: &SignedRelease,
        release: Release,
    ) {
        let hold = self.late_hold(&release.id(), std::time::Instant::now());
        if let Some(until) = hold {
            tracing::info!(release = %release.id(), hold = ?until.saturating_duration_since(std::time::Instant::now()), "release learned late; deferring to any gateway acting on it");
        }
        self.adopt_release_held(signed, release, hold);
    }

    fn adopt_release_held(
        self: &Arc<Self>,
        signed: &SignedRelease,
        release: Release,
        hold: Option<std::time::Instant>,
    ) {
        self.persist_desired();
        if self.desired.dismissed(signed) {
            tracing::info!(image = %release.image, "release removed on this node; not reinstalled");
            return;
        }
        self.accept_release_held(release, hold);
    }

    /// Until when this node, learning release `id` from a peer at `now`,
    /// starts no gateway pull of it, if it is late to the release: it
    /// started less than [`RESUME_SETTLE`] ago (a wiped or new node, whose
    /// peers push it the locality's releases before it has heard their
    /// status), or a peer works on the release already
    /// ([`super::peers::Peers::work_on`]: a healed partition). Like a
    /// resumed release, it then elects no one before the hold is over and
    /// defers to any gateway acting on the release: knowing none of the
    /// elections its peers made, the ranking alone made a wiped gateway,
    /// back while the runner-up pulled, elect itself at once and pull the
    /// layer again (1.370x the image, `gateway_restart`; 1.016x held).
    fn late_hold(&self, id: &Digest, now: std::time::Instant) -> Option<std::time::Instant> {
        late_hold(now, self.started + RESUME_SETTLE, self.peers.work_on(id))
    }

    /// Reads the persisted desired state and picks its releases up again:
    /// each is checked as when it arrived (the trust policy may have
    /// changed), an installed one is shown done, the others run again and
    /// resume from the chunks the store kept.
    pub(super) async fn resume_desired(self: &Arc<Self>) {
        let entries = self.desired.load().await;
        let pins = self.store.pins();
        let mut resumed = 0;
        for entry in entries {
            match entry {
                Entry::Release(signed) => {
                    let release = match self.check_release(&signed) {
                        Ok(r) => r,
                        Err(e) => {
                            self.refuse(&signed, None, &e);
                            continue;
                        }
                    };
                    self.desired.offer(Entry::Release(signed.clone()));
                    if self.desired.dismissed(&signed) {
                        continue;
                    }
                    let installed = pins
                        .get(&release.image)
                        .is_some_and(|blobs| blobs.first() == Some(&release.manifest));
                    if installed {
                        self.releases.track_done(release);
                    } else {
                        resumed += 1;
                        self.accept_release_held(
                            release,
                            Some(std::time::Instant::now() + RESUME_SETTLE),
                        );
                    }
                }
                Entry::Removal(signed) => match self.check_removal(&signed) {
                    Ok(removal) => {
                        self.desired.offer(Entry::Removal(signed));
                        if pins.contains_key(&removal.image) {
                            // Crashed between taking the removal and applying it.
                            let inner = self.clone();
                            tokio::spawn(async move {
                                if let Err(e) =
                                    inner.remove_image(&removal.image, Some(removal.seq)).await
                                {
                                    tracing::warn!(image = %removal.image, error = %e, "removal not applied at start");
                                }
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "persisted removal refused"),
                },
            }
        }
        let digest = self.desired.digest();
        tracing::info!(images = digest.count, resumed, "desired state loaded");
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
        // A mirror release imports nowhere (see `mirror`).
        !super::mirror::is_mirror(release)
            && release.selects(
                self.config
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
    }

    /// Starts tracking an accepted release, if this node is targeted (or
    /// may pull it), starting no gateway pull of it before `hold`
    /// ([`super::releases::Releases::hold_pull`]: it is late to it).
    fn accept_release_held(self: &Arc<Self>, release: Release, hold: Option<std::time::Instant>) {
        let id = release.id();
        if !self.targets(&release) && !self.config.gateway {
            tracing::info!(release = %id, "release does not select this node");
            return;
        }
        let image = release.image.clone();
        if self.releases.track(release) {
            tracing::info!(release = %id, %image, "release accepted");
            if let Some(until) = hold {
                self.releases.hold_pull(&id, until);
            }
            self.drive(id);
        }
    }

    /// Moves a release forward: elects its gateway (and pulls if that is
    /// this node), and starts the fetch pipeline on targeted nodes.
    pub(super) fn drive(self: &Arc<Self>, id: Digest) {
        let me = self.swarm.local_peer_id();
        let Some(accepted) = self.releases.accepted_at(&id) else {
            return;
        };
        if let Some(quiet) = self
            .releases
            .gateway_elected_before(&id, me, GATEWAY_SILENCE)
        {
            if !self.peers.vouched(&quiet, &id) {
                tracing::warn!(release = %id, gateway = %quiet, "elected gateway signed nothing of the release in {GATEWAY_SILENCE:?}; passing it over");
                self.releases.mark_silent(&id, quiet);
            }
        }
        let candidates = self.gateway_candidates(&id, accepted);
        let work = self
            .releases
            .schedule(&id, &candidates, me, |release| self.targets(release));
        if matches!(self.releases.gateway_of(&id), Some(Some(_))) {
            let held = self.early.take(&id);
            if !held.is_empty() {
                let inner = self.clone();
                tokio::spawn(async move { gossip::replay(&inner, held).await });
            }
        }
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
                    inner
                        .retain_versions(&release.image, release.seq, release.created)
                        .await;
                }
                // A locality-wide removal that came while this import ran
                // was refused then (the import was in the way) but is the
                // desired state of the image: apply it now.
                if let Some(Entry::Removal(removal)) = inner.desired.get(&release.image) {
                    let seq = removal.body_unverified().seq;
                    if let Err(e) = inner.remove_image(&release.image, Some(seq)).await {
                        tracing::warn!(image = %release.image, error = %e, "pending removal not applied");
                    }
                }
                inner.collect_deferred().await;
            });
        }
    }

    /// Whether `peer` may act as this locality's gateway
    /// (`--trust-gateway`; any peer when none is listed).
    pub(super) fn may_be_gateway(&self, peer: &PeerId) -> bool {
        let allowed = &self.config.trusted_gateways;
        allowed.is_empty() || allowed.contains(peer)
    }

    /// The candidates to pull release `id`, accepted here at `accepted`:
    /// live gateway-capable nodes allowed to be gateways, this one
    /// included (it accepted the release), as encoded peer ids with what
    /// each said of the release and when it last acted on it (this node's
    /// own pull is added by the release table).
    fn gateway_candidates(
        &self,
        id: &Digest,
        accepted: std::time::Instant,
    ) -> Vec<super::peers::GatewayCandidate> {
        let silent = self.releases.silent(id);
        let mut candidates = self
            .peers
            .gateway_stances(id, accepted, &silent, |p| self.may_be_gateway(p));
        let me = self.swarm.local_peer_id();
        if self.config.gateway && self.may_be_gateway(&me) {
            candidates.push((me.to_bytes(), Stance::Accepted, None));
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
                tracing::debug!(release = %id, from = ?change.from, to = ?new, "release phase");
                self.metrics.record_phase(new, change.took);
                self.status_changed.notify_one();
                self.phases.send_modify(|count| *count += 1);
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

impl Daemon {
    /// Builds and signs a release of `image` for this locality. A reference
    /// by tag is resolved at the registry, so it needs a gateway-capable
    /// node; `IMAGE@sha256:...` works everywhere. Signed by `key`, or by
    /// the node's own identity.
    pub async fn prepare_release(
        &self,
        image: &str,
        selector: Vec<(String, String)>,
        key: Option<&PublisherKey>,
    ) -> Result<SignedRelease, DaemonError> {
        let reference = crate::registry::Reference::parse(image)
            .map_err(|e| DaemonError::Refused(format!("bad image reference {image:?}: {e}")))?;
        let platform = self.inner.config.platform.clone();
        let manifest = match (&self.inner.registry, reference.digest) {
            (Some(registry), _) => {
                registry
                    .resolve(&reference, &platform)
                    .await?
                    .manifest_digest
            }
            (None, Some(digest)) => digest,
            (None, None) => {
                return Err(DaemonError::Refused(format!(
                    "{image} is a tag; this node cannot reach the registry to resolve it \
                     (deploy through a --gateway node, or name the image by @sha256 digest)"
                )))
            }
        };
        let release = Release {
            image: image.to_owned(),
            manifest,
            platform: (&platform).into(),
            created: unix_seconds(),
            locality: self.inner.config.swarm.locality.clone(),
            selector,
            seq: self.inner.desired.next_seq(),
        };
        Ok(SignedRelease::sign(
            release,
            key.unwrap_or(&self.inner.identity),
        ))
    }

    /// Validates a signed release as every node would (trust, locality, and
    /// newer than the desired state of its image) and gossips it to the
    /// locality (this node acts on it too). Returns the release id.
    pub async fn publish_release(&self, signed: SignedRelease) -> Result<Digest, DaemonError> {
        let id = signed.release_id();
        if super::mirror::is_mirror(signed.body_unverified()) {
            return Err(DaemonError::Refused(format!(
                "the selector key {} is reserved for the registry mirror",
                super::MIRROR_SELECTOR
            )));
        }
        match self.inner.admit_release(&signed) {
            Ok(Some(release)) => self.inner.adopt_release(&signed, release),
            // Published before: gossiped again, which is harmless.
            Ok(None) => {}
            Err(e) => {
                self.inner.refuse(&signed, None, &e);
                return Err(e);
            }
        }
        let bytes = GossipMessage::Release(signed).encode();
        if let Err(e) = self.inner.swarm.publish(Topic::Releases, bytes).await {
            // A locality of one has no gossip peers: the release still runs here.
            tracing::warn!(error = %e, "release not gossiped");
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_release_learned_late_is_held_until_the_peers_are_heard() {
        let start = Instant::now();
        let settled = start + RESUME_SETTLE;
        let at = |secs: u64| start + Duration::from_secs(secs);
        // Just started (a wiped or new node, pushed the locality's
        // releases by anti-entropy): held until it has heard every live
        // peer, whether or not it knows yet that one works on it.
        assert_eq!(late_hold(at(1), settled, false), Some(settled));
        assert_eq!(late_hold(at(1), settled, true), Some(settled));
        // Long up: a release deployed now is pulled at once; one a peer
        // works on already (a healed partition) waits a settle period.
        let later = settled + Duration::from_secs(60);
        assert_eq!(late_hold(later, settled, false), None);
        assert_eq!(late_hold(later, settled, true), Some(later + RESUME_SETTLE));
    }
}
