//! The release table: every release this node tracks, and the only code
//! that changes their state.
//!
//! ## Layout
//!
//! - [`Releases`]: the table behind one mutex. Each method is one change
//!   (or one read) made under that lock, so callers never hold it and
//!   never see a release half-updated;
//! - `Tracked`: one release's record (private: only the table writes it);
//! - [`Snapshot`]: a copy of a record for views and status reports, so that
//!   reading the store for progress happens outside the lock;
//! - [`PullPlan`]: the layers this node's gateway pull takes from the
//!   registry, unmarked when the plan is dropped;
//! - refusals: the last [`MAX_REFUSALS`] releases and removals refused,
//!   for status.
//!
//! ## Phases
//!
//! A release moves forward only: announced, resolving, fetching,
//! importing, done; or to failed from any phase before done. Done and
//! failed are final: a late result (say, a gateway pull that fails after
//! the import finished) never overwrites them, and [`Releases::transition`]
//! says why it refused.
//!
//! ## Lock poisoning
//!
//! A poisoned lock is recovered (`into_inner`), as in the store, the swarm
//! and the registry client. Every method leaves each record valid after
//! each assignment (every combination of flags is one the daemon handles),
//! so a panic in one task cannot leave the table unusable. Panicking on a
//! poisoned lock instead would turn one task's bug into a panic of every
//! task and API request that touches release state: a node that still
//! serves chunks but never reports or imports again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edgeswarm_protocol::election::{self, Candidate, Outcome};
use edgeswarm_protocol::release::Release;
use edgeswarm_protocol::wire::ReleaseState;
use edgeswarm_protocol::Digest;
use libp2p::PeerId;

use super::peers::GatewayCandidate;
use super::views::{RefusedView, ReleasePhase};
use super::DaemonError;
use crate::registry::ResolvedImage;

/// Most gateways passed over as silent per release.
const MAX_SILENT: usize = 16;

/// Most gateways remembered as elected per release.
const MAX_ELECTED: usize = 16;

/// How many refusals status keeps.
pub(super) const MAX_REFUSALS: usize = 32;

/// A layer of a release, as its verified manifest and config name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LayerInfo {
    /// The compressed blob's digest (what the swarm moves).
    pub(super) digest: Digest,
    /// The compressed blob's size in bytes.
    pub(super) size: u64,
    /// Its media type (tells the importer how it is compressed).
    pub(super) media_type: String,
    /// The digest of the uncompressed tar (the config's diff_id).
    pub(super) diff_id: Digest,
}

/// Every release this node tracks. See the module documentation.
#[derive(Default)]
pub(super) struct Releases {
    /// The records, behind the one lock of release state.
    table: Mutex<Table>,
}

/// What [`Releases`] guards.
#[derive(Default)]
struct Table {
    /// Releases by id.
    releases: HashMap<Digest, Tracked>,
    /// Layers this node's gateway pulls are taking from the registry right
    /// now, with how many pulls take each: its own fetch pipeline waits
    /// for them instead of asking peers.
    pulling_blobs: HashMap<Digest, usize>,
    /// Recently refused releases and removals, oldest first, at most
    /// [`MAX_REFUSALS`].
    refused: VecDeque<RefusedView>,
}

/// One release on this node.
struct Tracked {
    /// The verified release.
    release: Release,
    /// Its phase.
    state: ReleaseState,
    /// When this node accepted it.
    accepted: Instant,
    /// How long it took to import, once done.
    took: Option<Duration>,
    /// The gateway currently expected to pull it.
    gateway: Option<PeerId>,
    /// When this node elected that gateway.
    gateway_since: Option<Instant>,
    /// Every gateway this node elected for it, at most `MAX_ELECTED`
    /// (an acting one keeps the release: `election::elect_acting`).
    elected: Vec<PeerId>,
    /// Resumed at start from the persisted desired state, or learned
    /// late from peers (a wiped node, a healed partition): this node does
    /// not know whom it (or its peers) elected before, and defers to any
    /// gateway acting on the release.
    late: bool,
    /// Gateways elected for it that stayed silent (signed no gateway
    /// message of it within `GATEWAY_SILENCE`): passed over since, at
    /// most `MAX_SILENT`.
    silent: Vec<PeerId>,
    /// Whether this node started pulling it as gateway.
    pulling: bool,
    /// No gateway pull starts before this (a release resumed at start or
    /// learned late: see [`Releases::hold_pull`]).
    hold_pull_until: Option<Instant>,
    /// Whether this node's pull (if any) has decided which layers it
    /// pulls from the registry (they are then in `Table::pulling_blobs`).
    /// Until then this node's fetch pipeline asks no peer for layers: the
    /// gateway would otherwise download from its peers the very chunks its
    /// registry pull is writing (measured: 91 MB in for a 48.7 MB image).
    pull_planned: bool,
    /// Whether the fetch pipeline was started.
    fetching: bool,
    /// Layer bytes in the release.
    bytes_total: u64,
    /// Bytes pulled from the registry by this node (counted by the pull as
    /// bytes arrive, without taking the table's lock).
    bytes_from_cloud: Arc<AtomicU64>,
    /// Layers of the release (known once the manifest is verified).
    layers: Vec<Digest>,
    /// Layer bytes held when the release was accepted (not fetched).
    bytes_held_before: u64,
    /// Why it failed.
    error: Option<String>,
    /// Why it is waiting, while it is (this node's gateway pull retrying).
    waiting: Option<Retrying>,
    /// The registry's answer for the release's manifest, from this node's
    /// first gateway pull of it. The manifest is pinned by digest, so a
    /// later pull (the election starts one whenever this node is gateway,
    /// not pulling and not done: all through its own import, and to heal
    /// a layer the locality lost) needs no registry round trip. Without
    /// it, a gateway fetched the manifest and config again every status
    /// tick until its import ended; Docker Hub counts each manifest GET
    /// against its pull limit.
    resolved: Option<Arc<ResolvedImage>>,
}

/// This node's gateway pull of a release waiting to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Retrying {
    /// Why the last attempt failed, in a few words.
    pub(super) cause: String,
    /// Attempts failed so far.
    pub(super) attempt: u32,
    /// When the next attempt starts.
    pub(super) next_at: Instant,
}

impl Retrying {
    /// The reason status shows, with the delay left until the next
    /// attempt (rounded up, so it never reads 0 while waiting).
    pub(super) fn describe(&self) -> String {
        let left = self.next_at.saturating_duration_since(Instant::now());
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        format!(
            "retrying: {}, attempt {}, next in {secs} s",
            self.cause, self.attempt
        )
    }
}

/// A copy of one release's record.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    /// The release id.
    pub(super) id: Digest,
    /// The verified release.
    pub(super) release: Release,
    /// Its phase.
    pub(super) state: ReleaseState,
    /// How long it took to import, once done.
    pub(super) took: Option<Duration>,
    /// The gateway currently expected to pull it.
    pub(super) gateway: Option<PeerId>,
    /// Layer bytes in the release.
    pub(super) bytes_total: u64,
    /// Bytes pulled from the registry by this node so far.
    pub(super) bytes_from_cloud: u64,
    /// Layers of the release (empty until the manifest is verified).
    pub(super) layers: Vec<Digest>,
    /// Layer bytes held when the release was accepted.
    pub(super) bytes_held_before: u64,
    /// Why it failed.
    pub(super) error: Option<String>,
    /// Why this node's gateway pull waits, while it does
    /// ([`Retrying::describe`]).
    pub(super) waiting: Option<String>,
}

/// What [`Releases::schedule`] decided to start for a release.
#[derive(Debug, Default)]
pub(super) struct Work {
    /// Pull the release from the registry: this node is its gateway now.
    pub(super) pull: Option<Release>,
    /// Run the fetch pipeline: this node is targeted and has not started.
    pub(super) fetch: Option<Release>,
}

/// A phase change the table made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Transition {
    /// The phase before.
    pub(super) from: ReleaseState,
    /// How long the release took, when it just became done.
    pub(super) took: Option<Duration>,
}

/// Why the table refused a phase change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum TransitionRefused {
    /// The release is not tracked (never accepted, or removed since).
    #[error("release not tracked")]
    Unknown,
    /// The release is done or failed; those phases are final.
    #[error("release is already {}", ReleasePhase::from(*.0))]
    Final(ReleaseState),
    /// The change would move the release back (or nowhere).
    #[error("release cannot go from {} to {}", ReleasePhase::from(*.from), ReleasePhase::from(*.to))]
    Backwards {
        /// Its phase.
        from: ReleaseState,
        /// The phase asked for.
        to: ReleaseState,
    },
}

/// What [`Releases::drop_image`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dropped {
    /// Releases of the image dropped.
    pub(super) releases: usize,
    /// Whether other releases are still in progress (their blobs are not
    /// pinned yet, so garbage collection must wait).
    pub(super) busy: bool,
}

/// Where a phase sits in the forward order (failed is handled apart).
fn rank(state: ReleaseState) -> u8 {
    match state {
        ReleaseState::Announced => 0,
        ReleaseState::Resolving => 1,
        ReleaseState::Fetching => 2,
        ReleaseState::Importing => 3,
        ReleaseState::Done => 4,
        ReleaseState::Failed => 5,
    }
}

/// Whether `state` is done or failed.
pub(super) fn is_final(state: ReleaseState) -> bool {
    matches!(state, ReleaseState::Done | ReleaseState::Failed)
}

impl Tracked {
    fn snapshot(&self, id: Digest) -> Snapshot {
        Snapshot {
            id,
            release: self.release.clone(),
            state: self.state,
            took: self.took,
            gateway: self.gateway,
            bytes_total: self.bytes_total,
            bytes_from_cloud: self.bytes_from_cloud.load(Ordering::Relaxed),
            layers: self.layers.clone(),
            bytes_held_before: self.bytes_held_before,
            error: self.error.clone(),
            waiting: self.waiting.as_ref().map(Retrying::describe),
        }
    }
}

impl Releases {
    /// Locks the table (a poisoned lock is recovered: see the module
    /// documentation).
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking `release`, announced. False if it is tracked already.
    pub(super) fn track(&self, release: Release) -> bool {
        let id = release.id();
        let mut table = self.lock();
        if table.releases.contains_key(&id) {
            return false;
        }
        table.releases.insert(
            id,
            Tracked {
                release,
                state: ReleaseState::Announced,
                accepted: Instant::now(),
                took: None,
                gateway: None,
                gateway_since: None,
                elected: Vec::new(),
                late: false,
                silent: Vec::new(),
                pulling: false,
                hold_pull_until: None,
                pull_planned: false,
                fetching: false,
                bytes_total: 0,
                bytes_from_cloud: Default::default(),
                layers: Vec::new(),
                bytes_held_before: 0,
                error: None,
                waiting: None,
                resolved: None,
            },
        );
        true
    }

    /// Starts tracking `release` as done: it was installed before this
    /// node restarted. False if it is tracked already.
    pub(super) fn track_done(&self, release: Release) -> bool {
        let id = release.id();
        if !self.track(release) {
            return false;
        }
        if let Some(t) = self.lock().releases.get_mut(&id) {
            t.state = ReleaseState::Done;
            t.took = Some(Duration::ZERO);
            t.fetching = true;
        }
        true
    }

    /// Starts no gateway pull of release `id` before `until`, and defers
    /// to any gateway acting on it (this node is late to it: resumed at
    /// start, or learned from peers). Such a release is elected among the
    /// gateways this node has heard of, which at first is itself alone,
    /// and pulled of what the peers it has not heard from yet hold: it
    /// waits until their status, availability and gateway messages came
    /// in.
    pub(super) fn hold_pull(&self, id: &Digest, until: Instant) {
        if let Some(t) = self.lock().releases.get_mut(id) {
            t.hold_pull_until = Some(until);
            t.late = true;
        }
    }

    /// Records that this node's gateway pull of release `id` waits to try
    /// again, or clears it with `None`. Shown in status and carried in
    /// status reports; not a failure.
    pub(super) fn set_waiting(&self, id: &Digest, reason: Option<Retrying>) {
        if let Some(t) = self.lock().releases.get_mut(id) {
            t.waiting = reason;
        }
    }

    /// Elects release `id`'s gateway among `candidates` (encoded peer ids,
    /// this node `me` included when it may pull, each with what it said
    /// of the release and when it last acted on it: see
    /// `election::elect_acting`; this node acts on it while it pulls it)
    /// and decides what
    /// this node starts: the registry pull when it is the gateway and is
    /// not pulling yet (unless the release is done), the fetch pipeline
    /// when `targeted` and not started. Marks what it returns as started.
    /// While a better-ranked candidate has not said whether it accepted
    /// the release, the release has no gateway.
    pub(super) fn schedule(
        &self,
        id: &Digest,
        candidates: &[GatewayCandidate],
        me: PeerId,
        targeted: impl FnOnce(&Release) -> bool,
    ) -> Work {
        let mut table = self.lock();
        let Some(t) = table.releases.get_mut(id) else {
            return Work::default();
        };
        let me_bytes = me.to_bytes();
        let pulling = t.pulling;
        let elected: Vec<Vec<u8>> = t.elected.iter().map(|p| p.to_bytes()).collect();
        let incumbent = t.gateway.map(|g| g.to_bytes());
        let outcome = election::elect_acting(
            &t.release.manifest,
            incumbent.as_deref(),
            candidates.iter().map(|(c, stance, acted)| Candidate {
                id: c.as_slice(),
                stance: *stance,
                // Others learn of this node's pull from what it signs, a
                // gossip hop later; it knows at once.
                acted: if pulling && *c == me_bytes {
                    Some(Duration::ZERO)
                } else {
                    *acted
                },
                elected_before: t.late || elected.contains(c),
            }),
        );
        let peer = |c: &[u8]| PeerId::from_bytes(c).expect("candidates are encoded peer ids");
        let gateway = match outcome {
            Outcome::Elected(c) => Some(peer(c)),
            Outcome::Waiting(c) => {
                tracing::debug!(release = %id, candidate = %peer(c), "waiting for a better-ranked gateway to accept or decline");
                None
            }
            Outcome::None => None,
        };
        if gateway != t.gateway {
            tracing::info!(release = %id, gateway = ?gateway, "gateway elected");
            t.gateway = gateway;
            t.gateway_since = gateway.map(|_| Instant::now());
            if let Some(g) = gateway.filter(|g| !t.elected.contains(g)) {
                if t.elected.len() >= MAX_ELECTED {
                    t.elected.remove(0);
                }
                t.elected.push(g);
            }
        }
        let held = t.hold_pull_until.is_some_and(|u| Instant::now() < u);
        let pull = gateway == Some(me) && !t.pulling && t.state != ReleaseState::Done && !held;
        if pull {
            t.pulling = true;
            t.pull_planned = false;
        }
        let fetch = targeted(&t.release) && !t.fetching;
        if fetch {
            t.fetching = true;
        }
        Work {
            pull: pull.then(|| t.release.clone()),
            fetch: fetch.then(|| t.release.clone()),
        }
    }

    /// Moves release `id` to phase `new`, recording `error` with it.
    /// Refuses to leave done or failed, and to move back.
    pub(super) fn transition(
        &self,
        id: &Digest,
        new: ReleaseState,
        error: Option<String>,
    ) -> Result<Transition, TransitionRefused> {
        let mut table = self.lock();
        let t = table
            .releases
            .get_mut(id)
            .ok_or(TransitionRefused::Unknown)?;
        let from = t.state;
        if is_final(from) {
            return Err(TransitionRefused::Final(from));
        }
        if new != ReleaseState::Failed && rank(new) <= rank(from) {
            return Err(TransitionRefused::Backwards { from, to: new });
        }
        t.state = new;
        if new == ReleaseState::Done {
            t.took = Some(t.accepted.elapsed());
        }
        if error.is_some() {
            t.error = error;
        }
        if is_final(new) {
            t.waiting = None;
        }
        Ok(Transition { from, took: t.took })
    }

    /// What this node's gateway pull learned of release `id`'s manifest
    /// from the registry, if it resolved it since it started.
    pub(super) fn resolution(&self, id: &Digest) -> Option<Arc<ResolvedImage>> {
        self.lock().releases.get(id)?.resolved.clone()
    }

    /// Keeps `resolved` (release `id`'s manifest, as the registry served
    /// it and as the release pins it) for this node's later pulls.
    pub(super) fn keep_resolution(&self, id: &Digest, resolved: Arc<ResolvedImage>) {
        if let Some(t) = self.lock().releases.get_mut(id) {
            t.resolved = Some(resolved);
        }
    }

    /// This node's gateway pull of release `id` ended (however): a later
    /// election may start another, and the fetch pipeline no longer waits
    /// for its plan.
    pub(super) fn pull_finished(&self, id: &Digest) {
        if let Some(t) = self.lock().releases.get_mut(id) {
            t.pulling = false;
            t.pull_planned = true;
        }
    }

    /// Records the plan of this node's gateway pull of release `id`: it
    /// pulls `blobs` from the registry. Until the returned plan is
    /// dropped, [`Releases::pulls_itself`] holds for them; from now on it
    /// no longer holds for the release's other layers.
    pub(super) fn plan_pull(&self, id: &Digest, blobs: &[Digest]) -> PullPlan<'_> {
        let mut table = self.lock();
        for blob in blobs {
            *table.pulling_blobs.entry(*blob).or_default() += 1;
        }
        if let Some(t) = table.releases.get_mut(id) {
            t.pull_planned = true;
        }
        PullPlan {
            releases: self,
            blobs: blobs.to_vec(),
        }
    }

    /// Whether this node must not fetch `blob` of release `id` from peers
    /// now: its own gateway pull is deciding what to pull, or pulls `blob`.
    pub(super) fn pulls_itself(&self, id: &Digest, blob: &Digest) -> bool {
        let table = self.lock();
        let planning = table
            .releases
            .get(id)
            .is_some_and(|t| t.pulling && !t.pull_planned);
        planning || table.pulling_blobs.contains_key(blob)
    }

    /// Records release `id`'s layers (from its verified manifest), of
    /// which `bytes_held_before` bytes were held here already.
    pub(super) fn set_layers(&self, id: &Digest, layers: &[LayerInfo], bytes_held_before: u64) {
        if let Some(t) = self.lock().releases.get_mut(id) {
            t.layers = layers.iter().map(|l| l.digest).collect();
            t.bytes_total = layers.iter().map(|l| l.size).sum();
            t.bytes_held_before = bytes_held_before;
        }
    }

    /// The counter of bytes this node pulls from the registry for release
    /// `id` (a detached counter when it is not tracked).
    pub(super) fn cloud_counter(&self, id: &Digest) -> Arc<AtomicU64> {
        self.lock()
            .releases
            .get(id)
            .map(|t| t.bytes_from_cloud.clone())
            .unwrap_or_default()
    }

    /// Release `id`'s elected gateway; `None` when it is not tracked.
    pub(super) fn gateway_of(&self, id: &Digest) -> Option<Option<PeerId>> {
        self.lock().releases.get(id).map(|t| t.gateway)
    }

    /// Whether `peer` is the elected gateway of a tracked release whose
    /// verified manifest lists `layer`. Releases that share a layer (two
    /// mirror releases of one manifest, by tag and by digest, or two images
    /// on one base layer) get it pulled once, under one of them, with its
    /// digests signed under that one: a node that follows only another
    /// must still take them.
    pub(super) fn gateway_of_layer(&self, layer: &Digest, peer: &PeerId) -> bool {
        self.lock()
            .releases
            .values()
            .any(|t| t.gateway.as_ref() == Some(peer) && t.layers.contains(layer))
    }

    /// Release `id`'s gateway, when it is another node than `me` elected
    /// at least `silence` ago: the candidate to check for silence.
    pub(super) fn gateway_elected_before(
        &self,
        id: &Digest,
        me: PeerId,
        silence: Duration,
    ) -> Option<PeerId> {
        let table = self.lock();
        let t = table.releases.get(id)?;
        let since = t.gateway_since?;
        t.gateway.filter(|g| *g != me && since.elapsed() >= silence)
    }

    /// Passes over `peer` as release `id`'s gateway from now on, until it
    /// signs a gateway message of it.
    pub(super) fn mark_silent(&self, id: &Digest, peer: PeerId) {
        if let Some(t) = self.lock().releases.get_mut(id) {
            if !t.silent.contains(&peer) {
                if t.silent.len() >= MAX_SILENT {
                    t.silent.remove(0);
                }
                t.silent.push(peer);
            }
        }
    }

    /// The gateways passed over as silent for release `id`.
    pub(super) fn silent(&self, id: &Digest) -> Vec<PeerId> {
        self.lock()
            .releases
            .get(id)
            .map(|t| t.silent.clone())
            .unwrap_or_default()
    }

    /// When this node accepted release `id`.
    pub(super) fn accepted_at(&self, id: &Digest) -> Option<Instant> {
        self.lock().releases.get(id).map(|t| t.accepted)
    }

    /// Releases in progress that have no gateway yet (waiting for
    /// candidates to say whether they accepted them).
    pub(super) fn without_gateway(&self) -> Vec<Digest> {
        self.lock()
            .releases
            .iter()
            .filter(|(_, t)| t.gateway.is_none() && !is_final(t.state))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether release `id` is done.
    pub(super) fn is_done(&self, id: &Digest) -> bool {
        self.lock()
            .releases
            .get(id)
            .is_some_and(|t| t.state == ReleaseState::Done)
    }

    /// Whether any release is neither done nor failed.
    pub(super) fn any_in_progress(&self) -> bool {
        self.lock().releases.values().any(|t| !is_final(t.state))
    }

    /// Releases the status loop drives again: those in progress, and those
    /// this node is pulling as gateway (a done release may still be
    /// pulled for the locality).
    pub(super) fn pending(&self) -> Vec<Digest> {
        self.lock()
            .releases
            .iter()
            .filter(|(_, t)| !is_final(t.state) || t.pulling)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Stops tracking every release of `image`. With `not_after` (a
    /// removal's sequence), refuses when a release of it has a larger
    /// sequence (a removal request older than a redeploy removes nothing). Refuses while this node's own
    /// import of it is in progress.
    pub(super) fn drop_image(
        &self,
        image: &str,
        not_after: Option<u64>,
    ) -> Result<Dropped, DaemonError> {
        let mut table = self.lock();
        let mine: Vec<(Digest, &Tracked)> = table
            .releases
            .iter()
            .filter(|(_, t)| t.release.image == image)
            .map(|(id, t)| (*id, t))
            .collect();
        if let Some(limit) = not_after {
            if let Some((id, _)) = mine.iter().find(|(_, t)| t.release.seq > limit) {
                return Err(DaemonError::RemovalRefused(format!(
                    "release {id} of {image} is newer than the removal request; keeping it"
                )));
            }
        }
        // Only this node's own import can be in the way; a gateway that
        // is not targeted tracks the release without importing it.
        if let Some((id, t)) = mine.iter().find(|(_, t)| t.fetching && !is_final(t.state)) {
            return Err(DaemonError::Conflict(format!(
                "release {id} of {image} is still {} here; remove it once it is done",
                ReleasePhase::from(t.state)
            )));
        }
        let ids: Vec<Digest> = mine.iter().map(|(id, _)| *id).collect();
        for id in &ids {
            table.releases.remove(id);
        }
        // Blobs of a release still downloading are not pinned yet.
        let busy = table.releases.values().any(|t| !is_final(t.state));
        Ok(Dropped {
            releases: ids.len(),
            busy,
        })
    }

    /// A copy of release `id`'s record.
    pub(super) fn get(&self, id: &Digest) -> Option<Snapshot> {
        self.lock().releases.get(id).map(|t| t.snapshot(*id))
    }

    /// Copies of every record.
    pub(super) fn snapshot(&self) -> Vec<Snapshot> {
        self.lock()
            .releases
            .iter()
            .map(|(id, t)| t.snapshot(*id))
            .collect()
    }

    /// Keeps a refusal for status (bounded to [`MAX_REFUSALS`]).
    pub(super) fn record_refusal(&self, image: String, from: Option<PeerId>, reason: String) {
        let mut table = self.lock();
        // Anti-entropy re-publishes what peers hold: the same stale message
        // refused again is one entry, not a flood that hides the others.
        let from_text = from.map(|p| p.to_string());
        if table
            .refused
            .iter()
            .any(|r| r.image == image && r.reason == reason && r.from == from_text)
        {
            return;
        }
        if table.refused.len() == MAX_REFUSALS {
            table.refused.pop_front();
        }
        table.refused.push_back(RefusedView {
            image,
            from: from.map(|p| p.to_string()),
            reason,
        });
    }

    /// Recent refusals, oldest first.
    pub(super) fn refusals(&self) -> Vec<RefusedView> {
        self.lock().refused.iter().cloned().collect()
    }
}

/// Layers a gateway pull takes from the registry ([`Releases::plan_pull`]);
/// dropping the plan, however the pull ends, lets the fetch pipeline ask
/// peers for them again.
pub(super) struct PullPlan<'a> {
    /// The table the blobs are marked in.
    releases: &'a Releases,
    /// The marked blobs.
    blobs: Vec<Digest>,
}

impl Drop for PullPlan<'_> {
    fn drop(&mut self) {
        let mut table = self.releases.lock();
        for blob in &self.blobs {
            if let Some(count) = table.pulling_blobs.get_mut(blob) {
                *count -= 1;
                if *count == 0 {
                    table.pulling_blobs.remove(blob);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use edgeswarm_protocol::release::Platform;

    use super::*;
    use edgeswarm_protocol::election::Stance;

    /// A release whose sequence is its creation time.
    fn release(image: &str, created: u64) -> Release {
        Release {
            image: image.to_owned(),
            manifest: Digest::of(image.as_bytes()),
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            created,
            locality: "test".into(),
            selector: Vec::new(),
            seq: created,
        }
    }

    /// A table tracking one release; returns its id.
    fn one(image: &str) -> (Releases, Digest) {
        let table = Releases::default();
        let r = release(image, 1);
        let id = r.id();
        assert!(table.track(r));
        (table, id)
    }

    /// A candidate that accepted the release.
    fn yes(peer: PeerId) -> GatewayCandidate {
        (peer.to_bytes(), Stance::Accepted, None)
    }

    fn state(table: &Releases, id: &Digest) -> ReleaseState {
        table.get(id).expect("tracked").state
    }

    fn layer(name: &str, size: u64) -> LayerInfo {
        LayerInfo {
            digest: Digest::of(name.as_bytes()),
            size,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: Digest::of(format!("{name} tar").as_bytes()),
        }
    }

    #[test]
    fn a_release_is_tracked_once_and_starts_announced() {
        let (table, id) = one("reg/app:v1");
        assert!(!table.track(release("reg/app:v1", 1)), "tracked twice");
        assert_eq!(table.snapshot().len(), 1);
        assert_eq!(state(&table, &id), ReleaseState::Announced);
    }

    #[test]
    fn phases_move_forward_and_done_records_the_time_taken() {
        let (table, id) = one("reg/app:v1");
        for phase in [
            ReleaseState::Resolving,
            ReleaseState::Fetching,
            ReleaseState::Done,
        ] {
            let change = table.transition(&id, phase, None).unwrap();
            assert_eq!(change.took.is_some(), phase == ReleaseState::Done);
            assert_eq!(state(&table, &id), phase);
        }
        assert!(table.get(&id).unwrap().took.is_some());
        assert!(!table.any_in_progress());
        assert!(table.is_done(&id));
    }

    #[test]
    fn phases_never_move_back() {
        let (table, id) = one("reg/app:v1");
        table.transition(&id, ReleaseState::Fetching, None).unwrap();
        for back in [ReleaseState::Resolving, ReleaseState::Fetching] {
            assert_eq!(
                table.transition(&id, back, None),
                Err(TransitionRefused::Backwards {
                    from: ReleaseState::Fetching,
                    to: back
                })
            );
        }
        assert_eq!(state(&table, &id), ReleaseState::Fetching);
    }

    #[test]
    fn done_and_failed_are_final() {
        for last in [ReleaseState::Done, ReleaseState::Failed] {
            let (table, id) = one("reg/app:v1");
            table.transition(&id, last, Some("first".into())).unwrap();
            for next in [
                ReleaseState::Announced,
                ReleaseState::Fetching,
                ReleaseState::Done,
                ReleaseState::Failed,
            ] {
                assert_eq!(
                    table.transition(&id, next, Some("late".into())),
                    Err(TransitionRefused::Final(last)),
                    "{last:?} -> {next:?}"
                );
            }
            let t = table.get(&id).unwrap();
            assert_eq!(t.state, last);
            assert_eq!(t.error.as_deref(), Some("first"), "a late error overwrote");
        }
    }

    #[test]
    fn failing_keeps_the_error_and_unknown_releases_are_refused() {
        let (table, id) = one("reg/app:v1");
        table
            .transition(&id, ReleaseState::Failed, Some("disk full".into()))
            .unwrap();
        assert_eq!(table.get(&id).unwrap().error.as_deref(), Some("disk full"));
        let other = Digest::of(b"not tracked");
        assert_eq!(
            table.transition(&other, ReleaseState::Fetching, None),
            Err(TransitionRefused::Unknown)
        );
    }

    #[test]
    fn schedule_starts_the_pull_on_the_elected_gateway_and_the_fetch_once() {
        let (table, id) = one("reg/app:v1");
        let me = PeerId::random();
        let work = table.schedule(&id, &[yes(me)], me, |_| true);
        assert!(work.pull.is_some() && work.fetch.is_some());
        assert_eq!(table.gateway_of(&id), Some(Some(me)));
        // Both are running: nothing to start again.
        let again = table.schedule(&id, &[yes(me)], me, |_| true);
        assert!(again.pull.is_none() && again.fetch.is_none());
        // Another node elected: this one does not pull.
        let (table, id) = one("reg/app:v2");
        let other = PeerId::random();
        let work = table.schedule(&id, &[yes(other)], me, |_| false);
        assert!(work.pull.is_none() && work.fetch.is_none());
        assert_eq!(table.gateway_of(&id), Some(Some(other)));
    }

    /// A random peer ranked above `me` for the release of `manifest`.
    fn better_ranked(manifest: &Digest, me: &PeerId) -> PeerId {
        let mine = election::weight(manifest, &me.to_bytes());
        std::iter::repeat_with(PeerId::random)
            .find(|p| election::weight(manifest, &p.to_bytes()) > mine)
            .unwrap()
    }

    #[test]
    fn a_declining_gateway_is_passed_over_and_an_undecided_better_one_awaited() {
        let (table, id) = one("reg/app:v1");
        let manifest = table.get(&id).unwrap().release.manifest;
        let me = PeerId::random();
        let better = better_ranked(&manifest, &me);
        let with = |stance| [yes(me), (better.to_bytes(), stance, None)];
        let work = table.schedule(&id, &with(Stance::Undecided), me, |_| false);
        assert!(work.pull.is_none(), "pulled before the better one said");
        assert_eq!(table.gateway_of(&id), Some(None));
        assert_eq!(table.without_gateway(), vec![id]);
        let work = table.schedule(&id, &with(Stance::Declined), me, |_| false);
        assert!(work.pull.is_some(), "the better one declined");
        assert_eq!(table.gateway_of(&id), Some(Some(me)));
        assert!(table.without_gateway().is_empty());
    }

    #[test]
    fn a_pulling_gateway_keeps_the_release_until_a_better_ranked_one_acts() {
        let (table, id) = one("reg/app:v1");
        let manifest = table.get(&id).unwrap().release.manifest;
        let me = PeerId::random();
        let better = better_ranked(&manifest, &me);
        // The better-ranked gateway is gone: this node pulls.
        assert!(table
            .schedule(&id, &[yes(me)], me, |_| false)
            .pull
            .is_some());
        // It comes back (a restart), accepting the release and acting on
        // nothing: this node, pulling, keeps the release.
        let work = table.schedule(&id, &[yes(me), yes(better)], me, |_| false);
        assert!(work.pull.is_none());
        assert_eq!(table.gateway_of(&id), Some(Some(me)));
        // The better-ranked one acts too (it signed chunk digests just
        // now): it wins, and this node's pull stops at its next read.
        let acting = (better.to_bytes(), Stance::Accepted, Some(Duration::ZERO));
        table.schedule(&id, &[yes(me), acting.clone()], me, |_| false);
        assert_eq!(table.gateway_of(&id), Some(Some(better)));
        // The better-ranked node's own table after a restart: the release
        // resumed (it knows none of its elections), this node acting on
        // it. It defers, whatever the ranking, and pulls nothing.
        let (resumed, id) = one("reg/app:v1");
        resumed.hold_pull(&id, Instant::now());
        let acting_me = (
            me.to_bytes(),
            Stance::Accepted,
            Some(Duration::from_secs(1)),
        );
        let work = resumed.schedule(&id, &[yes(better), acting_me], better, |_| false);
        assert!(work.pull.is_none(), "the restarted one pulled");
        assert_eq!(resumed.gateway_of(&id), Some(Some(me)));
        // A node that never elected this one, and did not restart, keeps
        // the better-ranked gateway it elected: a worse-ranked member
        // signing gateway messages gains nothing.
        let (fresh, id) = one("reg/app:v1");
        let observer = PeerId::random();
        fresh.schedule(&id, &[yes(better)], observer, |_| false);
        let acting_me = (me.to_bytes(), Stance::Accepted, Some(Duration::ZERO));
        fresh.schedule(&id, &[yes(better), acting_me], observer, |_| false);
        assert_eq!(fresh.gateway_of(&id), Some(Some(better)));
    }

    #[test]
    fn a_release_learned_late_defers_to_an_acting_gateway_and_is_pulled_when_none_acts() {
        let (table, id) = one("reg/app:v1");
        let manifest = table.get(&id).unwrap().release.manifest;
        let runner_up = PeerId::random();
        let me = better_ranked(&manifest, &runner_up);
        // This node, wiped and back, is pushed the release by a peer
        // before it has heard anyone: alone, ranked first, held.
        table.hold_pull(&id, Instant::now() + Duration::from_secs(60));
        let work = table.schedule(&id, &[yes(me)], me, |_| false);
        assert!(work.pull.is_none(), "pulled before the hold ended");
        // It hears the runner-up, which pulls (signs chunk digests): it
        // defers to it, during the hold and after.
        let acting = (
            runner_up.to_bytes(),
            Stance::Accepted,
            Some(Duration::from_secs(1)),
        );
        table.schedule(&id, &[yes(me), acting.clone()], me, |_| false);
        assert_eq!(table.gateway_of(&id), Some(Some(runner_up)));
        table.hold_pull(&id, Instant::now());
        let work = table.schedule(&id, &[yes(me), acting.clone()], me, |_| false);
        assert!(work.pull.is_none(), "pulled while the runner-up acts");
        assert_eq!(table.gateway_of(&id), Some(Some(runner_up)));
        // The runner-up quiet past the incumbency (done, or dead): the
        // ranking hands the release back, and this node pulls.
        let quiet = (
            runner_up.to_bytes(),
            Stance::Accepted,
            Some(election::INCUMBENCY + Duration::from_secs(1)),
        );
        let work = table.schedule(&id, &[yes(me), quiet], me, |_| false);
        assert!(work.pull.is_some(), "nobody acts: this node takes over");
        // Back when nobody acts at all: it takes over once the hold ends.
        let (alone, id) = one("reg/app:v1");
        alone.hold_pull(&id, Instant::now() + Duration::from_secs(60));
        assert!(alone
            .schedule(&id, &[yes(me)], me, |_| false)
            .pull
            .is_none());
        alone.hold_pull(&id, Instant::now());
        assert!(alone
            .schedule(&id, &[yes(me)], me, |_| false)
            .pull
            .is_some());
        // Not marked late (the gap): it elected itself over the acting
        // runner-up, whom it never elected, and pulled again.
        let (unmarked, id) = one("reg/app:v1");
        assert!(unmarked
            .schedule(&id, &[yes(me), acting], me, |_| false)
            .pull
            .is_some());
    }

    #[test]
    fn a_pull_restarts_until_the_release_is_done() {
        let (table, id) = one("reg/app:v1");
        let me = PeerId::random();
        assert!(table
            .schedule(&id, &[yes(me)], me, |_| false)
            .pull
            .is_some());
        table.pull_finished(&id);
        assert!(
            table
                .schedule(&id, &[yes(me)], me, |_| false)
                .pull
                .is_some(),
            "an unfinished release is pulled again once the pull ended"
        );
        table.pull_finished(&id);
        table.transition(&id, ReleaseState::Done, None).unwrap();
        assert!(table
            .schedule(&id, &[yes(me)], me, |_| false)
            .pull
            .is_none());
        assert!(table.pending().is_empty());
    }

    #[test]
    fn a_held_release_starts_no_pull_until_the_hold_ends_but_fetches() {
        let (table, id) = one("reg/app:v1");
        let me = PeerId::random();
        table.hold_pull(&id, Instant::now() + Duration::from_millis(200));
        let work = table.schedule(&id, &[yes(me)], me, |_| true);
        assert!(work.pull.is_none(), "pulled during the hold");
        assert!(work.fetch.is_some(), "the fetch does not wait");
        assert!(!table.pulls_itself(&id, &Digest::of(b"a")));
        std::thread::sleep(Duration::from_millis(250));
        assert!(table.schedule(&id, &[yes(me)], me, |_| true).pull.is_some());
    }

    #[test]
    fn the_gateway_fetches_nothing_from_peers_until_its_pull_is_planned() {
        let (table, id) = one("reg/app:v1");
        let me = PeerId::random();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert!(!table.pulls_itself(&id, &a), "no pull yet");
        table.schedule(&id, &[yes(me)], me, |_| true);
        assert!(table.pulls_itself(&id, &a) && table.pulls_itself(&id, &b));
        let plan = table.plan_pull(&id, &[a]);
        assert!(table.pulls_itself(&id, &a), "planned blob");
        assert!(!table.pulls_itself(&id, &b), "the locality holds b");
        drop(plan);
        assert!(!table.pulls_itself(&id, &a), "the plan ended");
        table.pull_finished(&id);
        assert!(!table.pulls_itself(&id, &a));
    }

    #[test]
    fn a_blob_stays_marked_while_any_plan_pulls_it() {
        let (table, id) = one("reg/app:v1");
        let a = Digest::of(b"a");
        let first = table.plan_pull(&id, &[a]);
        let second = table.plan_pull(&id, &[a]);
        drop(first);
        assert!(
            table.pulls_itself(&id, &a),
            "the second pull still writes it"
        );
        drop(second);
        assert!(!table.pulls_itself(&id, &a));
    }

    #[test]
    fn layers_set_the_totals() {
        let (table, id) = one("reg/app:v1");
        let layers = [layer("a", 100), layer("b", 50)];
        table.set_layers(&id, &layers, 50);
        let t = table.get(&id).unwrap();
        assert_eq!(t.bytes_total, 150);
        assert_eq!(t.bytes_held_before, 50);
        assert_eq!(t.layers, vec![layers[0].digest, layers[1].digest]);
        table
            .cloud_counter(&id)
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(table.get(&id).unwrap().bytes_from_cloud, 7);
    }

    #[test]
    fn dropping_an_image_refuses_newer_releases_and_imports_in_progress() {
        let table = Releases::default();
        let old = release("reg/app:v1", 10);
        let old_id = old.id();
        table.track(old);
        let other = release("reg/other:v1", 10);
        let other_id = other.id();
        table.track(other);
        // Newer than the removal request: kept.
        let err = table.drop_image("reg/app:v1", Some(5)).unwrap_err();
        assert!(matches!(err, DaemonError::RemovalRefused(_)), "{err}");
        // This node imports it right now: refused until done.
        let me = PeerId::random();
        table.schedule(&old_id, &[], me, |_| true);
        table
            .transition(&old_id, ReleaseState::Fetching, None)
            .unwrap();
        let err = table.drop_image("reg/app:v1", None).unwrap_err();
        assert!(
            matches!(&err, DaemonError::Conflict(m) if m.contains("still fetching")),
            "{err}"
        );
        table.transition(&old_id, ReleaseState::Done, None).unwrap();
        let dropped = table.drop_image("reg/app:v1", Some(10)).unwrap();
        assert_eq!(
            dropped,
            Dropped {
                releases: 1,
                busy: true // reg/other is still announced
            }
        );
        assert!(table.get(&old_id).is_none());
        assert!(table.get(&other_id).is_some());
    }

    #[test]
    fn a_layer_belongs_to_the_gateway_elected_for_a_release_that_lists_it() {
        let (table, id) = one("reg/app@sha256:abc");
        let gateway = PeerId::random();
        let shared = layer("shared", 10);
        assert!(
            !table.gateway_of_layer(&shared.digest, &gateway),
            "no layers yet"
        );
        table.set_layers(&id, std::slice::from_ref(&shared), 0);
        assert!(
            !table.gateway_of_layer(&shared.digest, &gateway),
            "no gateway elected yet"
        );
        table.schedule(&id, &[yes(gateway)], PeerId::random(), |_| false);
        assert_eq!(table.gateway_of(&id), Some(Some(gateway)));
        assert!(table.gateway_of_layer(&shared.digest, &gateway));
        // Not another peer, and not a layer the manifest does not list.
        assert!(!table.gateway_of_layer(&shared.digest, &PeerId::random()));
        assert!(!table.gateway_of_layer(&layer("other", 10).digest, &gateway));
    }

    #[test]
    fn refusals_are_bounded_oldest_first() {
        let table = Releases::default();
        for i in 0..MAX_REFUSALS + 3 {
            table.record_refusal(format!("img{i}"), None, "untrusted".into());
        }
        let refused = table.refusals();
        assert_eq!(refused.len(), MAX_REFUSALS);
        assert_eq!(refused[0].image, "img3");
        assert_eq!(
            refused.last().unwrap().image,
            format!("img{}", MAX_REFUSALS + 2)
        );
    }

    #[test]
    fn a_poisoned_table_stays_usable() {
        let (table, id) = one("reg/app:v1");
        let table = Arc::new(table);
        let poisoner = table.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("a task panics while holding the table");
        })
        .join();
        assert!(panicked.is_err());
        assert!(table.table.is_poisoned());
        table
            .transition(&id, ReleaseState::Resolving, None)
            .unwrap();
        assert_eq!(state(&table, &id), ReleaseState::Resolving);
    }
}
