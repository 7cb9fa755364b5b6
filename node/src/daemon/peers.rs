//! The other nodes of the locality, as their status and availability
//! gossip describes them: who is alive (gateway election, failover), what
//! they hold complete (what a gateway need not pull), and how their
//! releases progress (status views).
//!
//! Its own lock, apart from the release table's: no method takes both,
//! and the lock is recovered when poisoned, for the reasons given in
//! `releases`.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edgeswarm_protocol::election::{self, Stance};
use edgeswarm_protocol::wire::{DesiredDigest, NodeStatus, ReleaseProgress, ReleaseState};
use edgeswarm_protocol::Digest;
use libp2p::PeerId;

/// A peer not heard from for this long is considered gone (failover).
pub(super) const PEER_TIMEOUT: Duration = Duration::from_secs(8);

/// A gone peer's record is dropped this long after its last report
/// (status views show it as gone until then).
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A gateway-capable peer whose newest status report arrived this long
/// after this node accepted a release, and does not list it, declined the
/// release (it refused it, or does not follow it): gossip carries a
/// release to every node within milliseconds, and a node lists a release
/// in every report from the moment it accepts it.
pub(super) const DECLINE_GRACE: Duration = Duration::from_secs(1);

/// Releases remembered per peer as vouched for by its signed gateway
/// messages (see [`Peers::vouch`]).
const MAX_VOUCHED: usize = 64;

/// Most peers recorded (each of `peers` and `complete_at`). Any key can
/// author gossip, so without a bound a stream of fresh identities grows
/// these maps without end; past it, the peer heard from longest ago goes.
pub(super) const MAX_PEERS: usize = 1024;

/// The locality as gossip describes it.
#[derive(Default)]
pub(super) struct Peers {
    /// The records, behind one lock.
    table: Mutex<PeerTable>,
}

/// What [`Peers`] guards.
#[derive(Default)]
struct PeerTable {
    /// Other nodes by peer id.
    peers: HashMap<PeerId, PeerEntry>,
    /// Blobs other nodes report holding complete (availability gossip), at
    /// most `MAX_ANNOUNCED_BLOBS` per peer: a gateway pulls only layers no
    /// live peer holds.
    complete_at: HashMap<PeerId, (Instant, HashSet<Digest>)>,
}

impl PeerTable {
    /// Drops records older than [`FORGET_AFTER`], then, while either map
    /// is still full and `incoming` is new to it, the oldest record.
    fn make_room(&mut self, incoming: &PeerId, now: Instant) {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) <= FORGET_AFTER;
        self.peers.retain(|_, e| fresh(&e.last_seen));
        self.complete_at.retain(|_, (t, _)| fresh(t));
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(incoming) {
            if let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(p, _)| *p)
            {
                self.peers.remove(&oldest);
                self.complete_at.remove(&oldest);
            }
        }
        if self.complete_at.len() >= MAX_PEERS && !self.complete_at.contains_key(incoming) {
            if let Some(oldest) = self
                .complete_at
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(p, _)| *p)
            {
                self.complete_at.remove(&oldest);
            }
        }
    }
}

/// What a status report told about its sender that this node acts on at
/// once ([`Peers::record_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Heard {
    /// The peer now reports an empty desired state and did not before (a
    /// node that just joined or was wiped): anti-entropy pushes to it.
    pub(super) newly_empty: bool,
    /// The peer was unknown or gone until this report (it joined, or
    /// restarted after the peer timeout): it has not heard this node's
    /// availability, which is otherwise re-announced only every 30 s, and
    /// a gateway among them would pull from the registry what this node
    /// holds.
    pub(super) arrived: bool,
}

/// What the daemon knows of another node.
struct PeerEntry {
    /// Its last status report.
    status: NodeStatus,
    /// When that report arrived.
    last_seen: Instant,
    /// Per release: when this node first saw the peer report it, and how
    /// long until it reported it done (as observed through status gossip,
    /// so within a status interval of the truth).
    timings: HashMap<Digest, (Instant, Option<Duration>)>,
    /// Releases for which it signed a resolution or chunk digests: it
    /// accepted them, whatever its status says yet.
    vouched: Vec<Vouch>,
}

/// A release a peer signed gateway messages of.
struct Vouch {
    /// The release.
    release: Digest,
    /// When its last one arrived (it acts on the release as gateway:
    /// `election::elect_acting`); forgotten when the peer arrives again,
    /// since a restarted process pulls nothing until it is elected again.
    acted: Option<Instant>,
}

/// A copy of what is known of one peer, for views.
#[derive(Debug, Clone)]
pub(super) struct PeerSnapshot {
    /// Its peer id.
    pub(super) peer: PeerId,
    /// Its last status report.
    pub(super) status: NodeStatus,
    /// Time since that report.
    pub(super) last_seen: Duration,
    /// Per release it reports done: how long it took, as observed here.
    pub(super) took: HashMap<Digest, Duration>,
}

impl PeerSnapshot {
    /// Whether the peer stopped reporting.
    pub(super) fn gone(&self) -> bool {
        self.last_seen > PEER_TIMEOUT
    }
}

/// A gateway candidate for a release: its encoded peer id, what it said
/// of the release, and how long ago it last acted on it as gateway.
pub(super) type GatewayCandidate = (Vec<u8>, Stance, Option<Duration>);

impl PeerEntry {
    /// Whether it signed a gateway message of release `id`.
    fn vouches(&self, id: &Digest) -> bool {
        self.vouched.iter().any(|v| v.release == *id)
    }

    /// Whether the peer reported recently.
    fn live(&self) -> bool {
        self.last_seen.elapsed() <= PEER_TIMEOUT
    }
}

impl Peers {
    /// Locks the table (a poisoned lock is recovered).
    fn lock(&self) -> MutexGuard<'_, PeerTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `peer`'s status report, and when it first reported each
    /// release done. Says what is new about the peer ([`Heard`]), so that
    /// this node answers it without waiting for its next status tick.
    pub(super) fn record_status(&self, peer: PeerId, status: NodeStatus) -> Heard {
        let empty = |s: &NodeStatus| s.desired.as_ref().is_some_and(|d| d.count == 0);
        let mut table = self.lock();
        let known = table.peers.get(&peer);
        let heard = Heard {
            newly_empty: empty(&status) && !known.is_some_and(|e| empty(&e.status)),
            arrived: !known.is_some_and(PeerEntry::live),
        };
        if heard.arrived {
            // Back from gone: whatever it pulled died with it (a restart)
            // or was cut off; it acts again when it signs again.
            if let Some(e) = table.peers.get_mut(&peer) {
                for v in &mut e.vouched {
                    v.acted = None;
                }
            }
        }
        let now = Instant::now();
        if !table.peers.contains_key(&peer) {
            table.make_room(&peer, now);
        }
        let entry = table.peers.entry(peer).or_insert_with(|| PeerEntry {
            status: status.clone(),
            last_seen: now,
            timings: HashMap::new(),
            vouched: Vec::new(),
        });
        entry
            .timings
            .retain(|id, _| status.releases.iter().any(|r| r.release_id == *id));
        for r in &status.releases {
            let timing = entry.timings.entry(r.release_id).or_insert((now, None));
            if r.state == ReleaseState::Done && timing.1.is_none() {
                timing.1 = Some(now.duration_since(timing.0));
            }
        }
        entry.status = status;
        entry.last_seen = now;
        heard
    }

    /// What `peer` last reported of release `release`: whether the peer is
    /// live, and its progress entry if it reports the release. `None` for
    /// a peer never heard from (or forgotten).
    pub(super) fn report_of(
        &self,
        peer: &PeerId,
        release: &Digest,
    ) -> Option<(bool, Option<ReleaseProgress>)> {
        let table = self.lock();
        let entry = table.peers.get(peer)?;
        let progress = entry
            .status
            .releases
            .iter()
            .find(|r| r.release_id == *release)
            .cloned();
        Some((entry.live(), progress))
    }

    /// Whether a live peer may pull from the registry.
    pub(super) fn any_live_gateway(&self) -> bool {
        self.lock()
            .peers
            .values()
            .any(|p| p.live() && p.status.gateway_capable)
    }

    /// Whether a live peer reports a desired-state digest other than
    /// `ours` (peers that send none are older nodes: ignored).
    pub(super) fn desired_differs(&self, ours: &DesiredDigest) -> bool {
        self.lock()
            .peers
            .values()
            .any(|p| p.live() && p.status.desired.as_ref().is_some_and(|d| d != ours))
    }

    /// Whether a live peer reports an empty desired state: a node that
    /// joined late or lost its data dir, which nothing but anti-entropy
    /// will ever bring the locality's releases to.
    pub(super) fn a_peer_holds_nothing(&self) -> bool {
        self.lock()
            .peers
            .values()
            .any(|p| p.live() && p.status.desired.as_ref().is_some_and(|d| d.count == 0))
    }

    /// Records the blobs `peer` holds complete. Each availability message
    /// lists all of them (up to the cap), so removals show as well.
    pub(super) fn record_complete(&self, peer: PeerId, complete: HashSet<Digest>) {
        let mut table = self.lock();
        let now = Instant::now();
        if !table.complete_at.contains_key(&peer) {
            table.make_room(&peer, now);
        }
        table.complete_at.insert(peer, (now, complete));
    }

    /// Live peers that report holding `blob` complete.
    pub(super) fn holders(&self, blob: &Digest) -> Vec<PeerId> {
        let table = self.lock();
        table
            .complete_at
            .iter()
            .filter(|(peer, (_, blobs))| {
                blobs.contains(blob) && table.peers.get(peer).is_some_and(PeerEntry::live)
            })
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Whether a live peer reports holding `blob` complete.
    pub(super) fn holds(&self, blob: &Digest) -> bool {
        let table = self.lock();
        table.complete_at.iter().any(|(peer, (_, blobs))| {
            blobs.contains(blob) && table.peers.get(peer).is_some_and(PeerEntry::live)
        })
    }

    /// Live gateway-capable peers, as encoded peer ids.
    pub(super) fn live_gateways(&self) -> Vec<Vec<u8>> {
        self.lock()
            .peers
            .iter()
            .filter(|(_, e)| e.status.gateway_capable && e.live())
            .map(|(p, _)| p.to_bytes())
            .collect()
    }

    /// Whether `peer` signed a gateway message of release `id`.
    pub(super) fn vouched(&self, peer: &PeerId, id: &Digest) -> bool {
        self.lock().peers.get(peer).is_some_and(|e| e.vouches(id))
    }

    /// Whether the locality is at work on release `id` already: a peer
    /// signed a gateway message of it (it pulls or pulled it), or a live
    /// peer reports it done or its pull retrying. A node that only now
    /// learns such a release is late to it (`Inner::late_hold`).
    pub(super) fn work_on(&self, id: &Digest) -> bool {
        self.lock().peers.values().any(|e| {
            e.vouches(id)
                || e.live()
                    && e.status.releases.iter().any(|r| {
                        r.release_id == *id
                            && (r.state == ReleaseState::Done || r.waiting.is_some())
                    })
        })
    }

    /// Records that `peer` signed a gateway message of release `id` just
    /// now (it accepted the release, and acts on it as gateway). True when
    /// this is news (it had not signed one, or not within
    /// `election::INCUMBENCY`) and `peer` is a live gateway-capable peer,
    /// so that the caller elects again.
    pub(super) fn vouch(&self, peer: PeerId, id: Digest) -> bool {
        let mut table = self.lock();
        let Some(entry) = table.peers.get_mut(&peer) else {
            return false;
        };
        let now = Instant::now();
        let news = match entry.vouched.iter_mut().find(|v| v.release == id) {
            Some(v) => {
                let was_acting = v.acted.is_some_and(|t| now - t <= election::INCUMBENCY);
                v.acted = Some(now);
                !was_acting
            }
            None => {
                if entry.vouched.len() >= MAX_VOUCHED {
                    entry.vouched.remove(0);
                }
                entry.vouched.push(Vouch {
                    release: id,
                    acted: Some(now),
                });
                true
            }
        };
        news && entry.status.gateway_capable && entry.live()
    }

    /// Live gateway-capable peers that `allowed` lets act as gateways, as
    /// encoded peer ids, each with what it said of release `id`, which
    /// this node accepted at `accepted`: accepted when its status lists
    /// the release (not failed) or it signed a gateway message of it;
    /// declined when its status lists it failed, or its newest report
    /// arrived [`DECLINE_GRACE`] after `accepted` without it, or it is
    /// among `silent` (elected, it signed nothing of the release in time)
    /// and signed nothing since; undecided otherwise. With each, how long
    /// ago it last acted on the release as gateway: signed a gateway
    /// message of it, or reported (in the status last heard) that it
    /// retries its registry pull of it.
    pub(super) fn gateway_stances(
        &self,
        id: &Digest,
        accepted: Instant,
        silent: &[PeerId],
        allowed: impl Fn(&PeerId) -> bool,
    ) -> Vec<GatewayCandidate> {
        self.lock()
            .peers
            .iter()
            .filter(|(p, e)| e.status.gateway_capable && e.live() && allowed(p))
            .map(|(p, e)| {
                let listed = e.status.releases.iter().find(|r| r.release_id == *id);
                let signed = e
                    .vouched
                    .iter()
                    .find(|v| v.release == *id)
                    .and_then(|v| v.acted)
                    .map(|t| t.elapsed());
                let retrying = listed
                    .filter(|r| r.waiting.is_some())
                    .map(|_| e.last_seen.elapsed());
                let acted = match (signed, retrying) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let stance = match listed.map(|r| r.state) {
                    Some(ReleaseState::Failed) => Stance::Declined,
                    _ if e.vouches(id) => Stance::Accepted,
                    _ if silent.contains(p) => Stance::Declined,
                    Some(_) => Stance::Accepted,
                    None if e.last_seen.saturating_duration_since(accepted) >= DECLINE_GRACE => {
                        Stance::Declined
                    }
                    None => Stance::Undecided,
                };
                (p.to_bytes(), stance, acted)
            })
            .collect()
    }

    /// Copies of every peer's record (records past [`FORGET_AFTER`]
    /// are dropped first).
    pub(super) fn snapshot(&self) -> Vec<PeerSnapshot> {
        let mut table = self.lock();
        let now = Instant::now();
        table
            .peers
            .retain(|_, e| now.saturating_duration_since(e.last_seen) <= FORGET_AFTER);
        table
            .peers
            .iter()
            .map(|(peer, entry)| PeerSnapshot {
                peer: *peer,
                status: entry.status.clone(),
                last_seen: entry.last_seen.elapsed(),
                took: entry
                    .timings
                    .iter()
                    .filter_map(|(id, (_, took))| took.map(|t| (*id, t)))
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use edgeswarm_protocol::wire::PeerRole;

    use super::*;

    fn status(gateway_capable: bool, releases: &[(Digest, ReleaseState)]) -> NodeStatus {
        NodeStatus {
            role: PeerRole::Node,
            gateway_capable,
            timestamp_ms: 0,
            releases: releases
                .iter()
                .map(|(id, state)| ReleaseProgress {
                    release_id: *id,
                    state: *state,
                    bytes_total: 0,
                    bytes_done: 0,
                    bytes_from_cloud: 0,
                    bytes_from_peers: 0,
                    error: None,
                    waiting: None,
                })
                .collect(),
            desired: None,
        }
    }

    #[test]
    fn a_peer_is_reported_once_when_it_starts_to_hold_nothing() {
        use edgeswarm_protocol::wire::DesiredDigest;
        let with = |count: u64| NodeStatus {
            desired: Some(DesiredDigest {
                count,
                hash: Digest::of(&count.to_le_bytes()),
            }),
            ..status(false, &[])
        };
        let peers = Peers::default();
        let (late, old) = (PeerId::random(), PeerId::random());
        let empty = |h: Heard| h.newly_empty;
        assert!(
            empty(peers.record_status(late, with(0))),
            "a new, empty peer"
        );
        assert!(!empty(peers.record_status(late, with(0))), "reported once");
        assert!(peers.a_peer_holds_nothing());
        assert!(!empty(peers.record_status(late, with(1))));
        assert!(!peers.a_peer_holds_nothing());
        assert!(
            empty(peers.record_status(late, with(0))),
            "wiped: empty again"
        );
        assert!(!empty(peers.record_status(old, with(3))));
        assert!(
            !empty(peers.record_status(old, status(false, &[]))),
            "no digest"
        );
    }

    #[test]
    fn a_peer_arrives_when_first_heard_and_when_back_from_gone() {
        let peers = Peers::default();
        let peer = PeerId::random();
        assert!(peers.record_status(peer, status(true, &[])).arrived);
        assert!(!peers.record_status(peer, status(true, &[])).arrived);
        // Gone (no report for PEER_TIMEOUT), then back: arrived again.
        if let Some(past) = Instant::now().checked_sub(PEER_TIMEOUT + Duration::from_secs(1)) {
            peers.lock().peers.get_mut(&peer).unwrap().last_seen = past;
            assert!(peers.record_status(peer, status(true, &[])).arrived);
        }
    }

    #[test]
    fn availability_counts_only_for_peers_that_report_status() {
        let peers = Peers::default();
        let (peer, blob) = (PeerId::random(), Digest::of(b"layer"));
        peers.record_complete(peer, HashSet::from([blob]));
        assert!(!peers.holds(&blob), "a peer never heard from is not live");
        peers.record_status(peer, status(false, &[]));
        assert!(peers.holds(&blob));
        // The next announcement lists what it holds now: the blob is gone.
        peers.record_complete(peer, HashSet::new());
        assert!(!peers.holds(&blob));
    }

    #[test]
    fn a_flood_of_fresh_identities_stays_bounded_and_old_records_expire() {
        let peers = Peers::default();
        let first = PeerId::random();
        peers.record_status(first, status(false, &[]));
        peers.record_complete(first, HashSet::from([Digest::of(b"x")]));
        for _ in 0..(MAX_PEERS + 500) {
            let p = PeerId::random();
            peers.record_status(p, status(false, &[]));
            peers.record_complete(p, HashSet::new());
        }
        let table = peers.lock();
        assert!(table.peers.len() <= MAX_PEERS, "{}", table.peers.len());
        assert!(table.complete_at.len() <= MAX_PEERS);
        // The oldest went first.
        assert!(!table.peers.contains_key(&first));
        drop(table);
        // A record older than FORGET_AFTER is dropped from views.
        let peers = Peers::default();
        let old = PeerId::random();
        peers.record_status(old, status(false, &[]));
        if let Some(past) = Instant::now().checked_sub(FORGET_AFTER + Duration::from_secs(1)) {
            peers.lock().peers.get_mut(&old).unwrap().last_seen = past;
            assert!(peers.snapshot().is_empty());
        }
    }

    #[test]
    fn only_gateway_capable_peers_are_candidates() {
        let peers = Peers::default();
        let (node, gateway) = (PeerId::random(), PeerId::random());
        peers.record_status(node, status(false, &[]));
        peers.record_status(gateway, status(true, &[]));
        assert_eq!(peers.live_gateways(), vec![gateway.to_bytes()]);
    }

    #[test]
    fn a_gateway_accepts_by_listing_a_release_or_vouching_and_declines_by_reporting_without_it() {
        let peers = Peers::default();
        let id = Digest::of(b"release");
        let (lists, silent, failed, vouches, barred) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let accepted = Instant::now();
        peers.record_status(lists, status(true, &[(id, ReleaseState::Fetching)]));
        peers.record_status(silent, status(true, &[]));
        peers.record_status(failed, status(true, &[(id, ReleaseState::Failed)]));
        peers.record_status(vouches, status(true, &[]));
        peers.record_status(barred, status(true, &[(id, ReleaseState::Done)]));
        assert!(peers.vouch(vouches, id));
        assert!(!peers.vouch(vouches, id), "news once while it acts");
        let stances = |at: Instant| -> HashMap<PeerId, Stance> {
            peers
                .gateway_stances(&id, at, &[], |p| *p != barred)
                .into_iter()
                .map(|(p, s, _)| (PeerId::from_bytes(&p).unwrap(), s))
                .collect()
        };
        let now = stances(accepted);
        assert_eq!(now.len(), 4, "only allowed peers are candidates");
        assert_eq!(now[&lists], Stance::Accepted);
        assert_eq!(now[&vouches], Stance::Accepted);
        assert_eq!(now[&failed], Stance::Declined);
        assert_eq!(now[&silent], Stance::Undecided, "reported just now");
        // Passed over as silent: declined, unless it signed a gateway
        // message of the release.
        let quiet = [lists, vouches];
        let passed: HashMap<PeerId, Stance> = peers
            .gateway_stances(&id, accepted, &quiet, |_| true)
            .into_iter()
            .map(|(p, s, _)| (PeerId::from_bytes(&p).unwrap(), s))
            .collect();
        assert_eq!(passed[&lists], Stance::Declined);
        assert_eq!(passed[&vouches], Stance::Accepted);
        // Its newest report came DECLINE_GRACE after this node accepted
        // the release, and does not list it: it declined.
        if let Some(earlier) = accepted.checked_sub(DECLINE_GRACE) {
            assert_eq!(stances(earlier)[&silent], Stance::Declined);
        }
    }

    #[test]
    fn a_release_is_timed_from_first_report_to_done_and_forgotten_when_dropped() {
        let peers = Peers::default();
        let (peer, id) = (PeerId::random(), Digest::of(b"release"));
        peers.record_status(peer, status(false, &[(id, ReleaseState::Fetching)]));
        let seen = &peers.snapshot()[0];
        assert!(seen.took.is_empty(), "not done yet");
        assert!(!seen.gone());
        std::thread::sleep(Duration::from_millis(20));
        peers.record_status(peer, status(false, &[(id, ReleaseState::Done)]));
        let took = peers.snapshot()[0].took[&id];
        assert!(took >= Duration::from_millis(20), "{took:?}");
        peers.record_status(peer, status(false, &[]));
        peers.record_status(peer, status(false, &[(id, ReleaseState::Done)]));
        assert_eq!(
            peers.snapshot()[0].took[&id],
            Duration::ZERO,
            "a dropped release is timed afresh (first seen done)"
        );
    }

    #[test]
    fn a_gateway_acts_while_it_signs_or_retries_and_not_after_it_comes_back() {
        let peers = Peers::default();
        let id = Digest::of(b"release");
        let (signs, retries, idle) = (PeerId::random(), PeerId::random(), PeerId::random());
        let fetching = [(id, ReleaseState::Fetching)];
        peers.record_status(signs, status(true, &fetching));
        let mut waiting = status(true, &fetching);
        waiting.releases[0].waiting = Some("registry unreachable".into());
        peers.record_status(retries, waiting);
        peers.record_status(idle, status(true, &fetching));
        assert!(peers.vouch(signs, id));
        let acted = || -> HashMap<PeerId, Option<Duration>> {
            peers
                .gateway_stances(&id, Instant::now(), &[], |_| true)
                .into_iter()
                .map(|(p, _, a)| (PeerId::from_bytes(&p).unwrap(), a))
                .collect()
        };
        let now = acted();
        assert!(now[&signs].is_some_and(|a| a < Duration::from_secs(1)));
        assert!(now[&retries].is_some_and(|a| a < Duration::from_secs(1)));
        assert_eq!(now[&idle], None);
        // Its last signature is older than the incumbency: no longer
        // acting, and signing again is news (elect again).
        let Some(past) = Instant::now().checked_sub(election::INCUMBENCY * 2) else {
            return;
        };
        peers.lock().peers.get_mut(&signs).unwrap().vouched[0].acted = Some(past);
        assert!(acted()[&signs].is_some_and(|a| a > election::INCUMBENCY));
        assert!(peers.vouch(signs, id), "acting again is news");
        // Gone (a crash), then back: it acts on nothing until it signs
        // again, but still counts as having accepted the release.
        peers.lock().peers.get_mut(&signs).unwrap().last_seen = past;
        assert!(peers.record_status(signs, status(true, &[])).arrived);
        let back = peers.gateway_stances(&id, Instant::now(), &[], |_| true);
        let entry = back
            .iter()
            .find(|(p, _, _)| *p == signs.to_bytes())
            .unwrap();
        assert_eq!((entry.1, entry.2), (Stance::Accepted, None));
    }
}
