//! Which gateway pulls a release.
//!
//! Every node of a locality must agree, without talking, on the one
//! gateway-capable node that pulls a given release from the registry. We use
//! rendezvous (highest-random-weight) hashing: each candidate's weight for a
//! release is the sha2-256 of `"edgeswarm-gateway-v1\0" || manifest digest
//! || candidate id`, and the candidate with the largest weight wins. Releases
//! spread evenly across gateways, and when the winner dies, removing it from
//! the candidate set hands the release to the runner-up while every other
//! release keeps its gateway.
//!
//! Candidates are opaque byte strings (the node uses libp2p peer ids), so
//! this module stays free of networking types.
//!
//! Only a candidate that accepted the release can pull it: a node that
//! refuses it (it does not trust the publisher) would hold the release
//! forever. [`elect_accepting`] walks the ranking with each candidate's
//! [`Stance`]: declined candidates are passed over, and the election waits
//! while a better-ranked candidate has not said yet, so that nodes that
//! learn stances at slightly different times still agree on the winner
//! instead of each pulling the release.
//!
//! A gateway that is *acting* on a release keeps it ([`elect_acting`]):
//! one that signed a resolution or chunk digests of it (or reported that
//! it retries its registry pull) within [`INCUMBENCY`]. Among acting
//! candidates the best-ranked wins; only when none acts does the ranking
//! of every accepting candidate decide. So a gateway that returns from a
//! crash while the runner-up pulls the release is ranked first again but
//! does not act, and defers (it fetches the layers from the swarm)
//! instead of pulling them a second time; two gateways that both act (a
//! healed partition) agree on the better-ranked one, and the other stops;
//! an incumbent that goes silent stops acting after [`INCUMBENCY`] and
//! the ranking takes over again. An elector late to a release (it resumed
//! it from disk, or learned it from its peers after a wipe) knows none of
//! the elections made before: it counts every acting candidate
//! ([`Candidate::elected_before`]), so a wiped gateway defers too.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::address::Digest;

/// Domain separation for election weights.
const CONTEXT: &[u8] = b"edgeswarm-gateway-v1\0";

/// The weight of `candidate` for the release with manifest `manifest`.
pub fn weight(manifest: &Digest, candidate: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CONTEXT);
    h.update(manifest.as_bytes());
    h.update(candidate);
    h.finalize().into()
}

/// Ranks candidates for a release, best first. Ties (identical ids) keep
/// their input order.
pub fn rank<'a, C>(manifest: &Digest, candidates: impl IntoIterator<Item = &'a C>) -> Vec<&'a C>
where
    C: AsRef<[u8]> + ?Sized + 'a,
{
    let mut ranked: Vec<(&C, [u8; 32])> = candidates
        .into_iter()
        .map(|c| (c, weight(manifest, c.as_ref())))
        .collect();
    ranked.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    ranked.into_iter().map(|(c, _)| c).collect()
}

/// The elected gateway for a release, if there is any candidate.
pub fn elect<'a, C>(manifest: &Digest, candidates: impl IntoIterator<Item = &'a C>) -> Option<&'a C>
where
    C: AsRef<[u8]> + ?Sized + 'a,
{
    candidates
        .into_iter()
        .max_by_key(|c| weight(manifest, c.as_ref()))
}

/// What a candidate said about a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stance {
    /// It accepted the release (it can pull it).
    Accepted,
    /// It refused the release, gave up on it, or never said it accepted
    /// it although it reported since.
    Declined,
    /// Not known yet.
    Undecided,
}

/// The outcome of [`elect_accepting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a, C: ?Sized> {
    /// The best-ranked candidate that accepted the release, with every
    /// better-ranked one declined.
    Elected(&'a C),
    /// A better-ranked candidate than any that accepted has not said yet.
    Waiting(&'a C),
    /// No candidate is left.
    None,
}

/// Elects among `candidates` the best-ranked one that accepted the
/// release, passing over those that declined it; waits (returns
/// [`Outcome::Waiting`]) on the first undecided one that outranks every
/// candidate that accepted.
pub fn elect_accepting<'a, C>(
    manifest: &Digest,
    candidates: impl IntoIterator<Item = (&'a C, Stance)>,
) -> Outcome<'a, C>
where
    C: AsRef<[u8]> + ?Sized + 'a,
{
    let mut ranked: Vec<(&C, Stance, [u8; 32])> = candidates
        .into_iter()
        .map(|(c, s)| (c, s, weight(manifest, c.as_ref())))
        .collect();
    ranked.sort_by_key(|entry| std::cmp::Reverse(entry.2));
    for (candidate, stance, _) in ranked {
        match stance {
            Stance::Accepted => return Outcome::Elected(candidate),
            Stance::Undecided => return Outcome::Waiting(candidate),
            Stance::Declined => {}
        }
    }
    Outcome::None
}

/// How long after a candidate last acted on a release (signed a gateway
/// message of it, or reported retrying its pull) it is still acting on it:
/// as long as an elected gateway may stay silent before it is passed over.
/// A pulling gateway signs chunk digests as each chunk lands, and reports
/// its retries in every status report (2 s).
pub const INCUMBENCY: Duration = Duration::from_secs(10);

/// A candidate as an elector sees it, for [`elect_acting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a, C: ?Sized> {
    /// Its id (the node uses encoded peer ids).
    pub id: &'a C,
    /// What it said about the release.
    pub stance: Stance,
    /// How long ago the elector last saw it act on the release as its
    /// gateway; `None` when it never did (since it last joined: a
    /// restarted process pulls nothing until it is elected again).
    pub acted: Option<Duration>,
    /// Whether the elector elected it for this release before (true for
    /// every candidate when the elector cannot know: it restarted and
    /// resumed the release from its persisted state, or it learned the
    /// release late from its peers, say after its data dir was wiped).
    pub elected_before: bool,
}

impl<C: ?Sized> Candidate<'_, C> {
    /// Whether it accepted the release and acted on it within
    /// [`INCUMBENCY`].
    pub fn acting(&self) -> bool {
        self.stance == Stance::Accepted && self.acted.is_some_and(|a| a <= INCUMBENCY)
    }
}

/// Elects a release's gateway, keeping it with whoever acts on it.
/// `incumbent` is the gateway the elector elected last (if any). A
/// candidate that acts ([`Candidate::acting`]) counts when the elector
/// elected it before, or when it outranks `incumbent` (it could have won
/// the ranking): the best-ranked such candidate wins. When none counts,
/// [`elect_accepting`] decides. A member that signs gateway messages of a
/// release it was never elected for, ranked below the gateway it would
/// displace, gains nothing. Electors that saw the same candidates and
/// elections agree.
pub fn elect_acting<'a, C>(
    manifest: &Digest,
    incumbent: Option<&[u8]>,
    candidates: impl IntoIterator<Item = Candidate<'a, C>>,
) -> Outcome<'a, C>
where
    C: AsRef<[u8]> + ?Sized + 'a,
{
    let candidates: Vec<Candidate<'a, C>> = candidates.into_iter().collect();
    let bar = incumbent.map(|i| weight(manifest, i));
    let acting = candidates
        .iter()
        .filter(|c| c.acting())
        .map(|c| (c, weight(manifest, c.id.as_ref())))
        .filter(|(c, w)| c.elected_before || bar.is_some_and(|b| *w > b))
        .max_by_key(|(_, w)| *w);
    match acting {
        Some((c, _)) => Outcome::Elected(c.id),
        None => elect_accepting(manifest, candidates.iter().map(|c| (c.id, c.stance))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A locality of gateway-capable candidates on simulated time, as one
    /// elector sees it: who is live, what each said, when each last acted.
    struct Sim {
        now: Duration,
        manifest: Digest,
        ids: Vec<Vec<u8>>,
        live: Vec<bool>,
        stance: Vec<Stance>,
        last_act: Vec<Option<Duration>>,
        /// The elector's elections so far (what it elected last, and
        /// everyone it ever elected).
        incumbent: Option<usize>,
        history: Vec<usize>,
    }

    impl Sim {
        fn new(n: usize) -> Self {
            Sim {
                now: Duration::ZERO,
                manifest: Digest::of(b"manifest"),
                ids: peers(n),
                live: vec![true; n],
                stance: vec![Stance::Accepted; n],
                last_act: vec![None; n],
                incumbent: None,
                history: Vec::new(),
            }
        }
        /// Candidates by rank, best first.
        fn ranked(&self) -> Vec<usize> {
            rank(&self.manifest, &self.ids)
                .into_iter()
                .map(|c| self.ids.iter().position(|i| i == c).unwrap())
                .collect()
        }
        fn advance(&mut self, secs: u64) {
            self.now += Duration::from_secs(secs);
        }
        fn act(&mut self, i: usize) {
            self.last_act[i] = Some(self.now);
        }
        /// The candidate stops reporting (the caller drops it from the
        /// candidates), then comes back with nothing acted.
        fn kill(&mut self, i: usize) {
            self.live[i] = false;
        }
        fn restart(&mut self, i: usize) {
            self.live[i] = true;
            self.last_act[i] = None;
        }
        /// Elects as the elector, and remembers it.
        fn elect(&mut self) -> Option<usize> {
            let candidates = (0..self.ids.len())
                .filter(|&i| self.live[i])
                .map(|i| Candidate {
                    id: self.ids[i].as_slice(),
                    stance: self.stance[i],
                    acted: self.last_act[i].map(|t| self.now - t),
                    elected_before: self.history.contains(&i),
                });
            let incumbent = self.incumbent.map(|i| self.ids[i].as_slice());
            let winner = match elect_acting(&self.manifest, incumbent, candidates) {
                Outcome::Elected(c) => Some(self.ids.iter().position(|i| i == c).unwrap()),
                _ => None,
            };
            if let Some(w) = winner {
                if !self.history.contains(&w) {
                    self.history.push(w);
                }
            }
            self.incumbent = winner;
            winner
        }
    }

    #[test]
    fn a_gateway_back_while_the_runner_up_pulls_defers_until_it_stops_acting() {
        let mut sim = Sim::new(4);
        let order = sim.ranked();
        let (g, r) = (order[0], order[1]);
        // Nobody acts yet: the ranking decides.
        assert_eq!(sim.elect(), Some(g));
        for _ in 0..3 {
            sim.advance(1);
            sim.act(g);
        }
        // G dies; the elector drops it once its reports stop (8 s), and
        // elects the runner-up, which pulls and signs chunk digests.
        sim.kill(g);
        sim.advance(8);
        assert_eq!(sim.elect(), Some(r));
        sim.act(r);
        sim.advance(1);
        sim.act(r);
        // G is back, ranked first, acting on nothing: R keeps the release
        // as long as it acts, however long the pull takes.
        sim.restart(g);
        // G's own view: restarted, it knows none of its elections, and
        // defers to whoever acts.
        let mut own = Sim::new(4);
        own.history = (0..4).collect();
        own.act(r);
        assert_eq!(own.elect(), Some(r));
        for _ in 0..30 {
            assert_eq!(sim.elect(), Some(r), "at {:?}", sim.now);
            sim.advance(1);
            sim.act(r);
        }
        // R finished (or hung): silent for longer than the incumbency,
        // the ranking hands the release back to G.
        sim.advance(INCUMBENCY.as_secs());
        assert_eq!(sim.elect(), Some(r), "still acting at the bound");
        sim.advance(1);
        assert_eq!(sim.elect(), Some(g));
        // R dies instead of going quiet: failover as before.
        let mut sim2 = Sim::new(4);
        sim2.kill(g);
        sim2.act(r);
        sim2.kill(r);
        assert_eq!(sim2.elect(), Some(order[2]));
    }

    #[test]
    fn a_wiped_gateway_learning_the_release_late_defers_and_takes_over_when_none_acts() {
        let mut sim = Sim::new(4);
        let order = sim.ranked();
        let (g, r) = (order[0], order[1]);
        // G was elected and killed; the runner-up took the release over
        // and pulls. G comes back with a wiped data dir and learns the
        // release from its peers: it never elected anyone for it.
        let mut wiped = Sim::new(4);
        wiped.act(r);
        // Electing as a fresh elector, the ranking puts G first and R's
        // acting does not count (the gap: G pulled the layer again).
        let mut fresh = Sim::new(4);
        fresh.act(r);
        assert_eq!(fresh.elect(), Some(g));
        // As a late elector (like a resumed one) it counts every acting
        // candidate, and defers while R acts.
        wiped.history = (0..4).collect();
        for _ in 0..20 {
            assert_eq!(wiped.elect(), Some(r), "at {:?}", wiped.now);
            wiped.advance(1);
            wiped.act(r);
        }
        // R done and quiet: G takes the release back by rank.
        wiped.advance(INCUMBENCY.as_secs() + 1);
        assert_eq!(wiped.elect(), Some(g));
        // Back when nobody acts (R died too): G takes over at once.
        let mut alone = Sim::new(4);
        alone.history = (0..4).collect();
        alone.kill(r);
        assert_eq!(alone.elect(), Some(g));
        // The others, who elected G and then R, keep R while it acts.
        sim.elect();
        sim.kill(g);
        assert_eq!(sim.elect(), Some(r));
        sim.restart(g);
        sim.act(r);
        assert_eq!(sim.elect(), Some(r));
    }

    #[test]
    fn two_acting_gateways_agree_on_the_better_ranked_one() {
        let mut a = Sim::new(5);
        let order = a.ranked();
        let (best, good, worse) = (order[0], order[1], order[3]);
        let mut b = Sim::new(5);
        // A partition: side A elected `good` (the best one was not
        // there), side B `worse`; each pulls.
        a.live[best] = false;
        a.live[worse] = false;
        assert_eq!(a.elect(), Some(good));
        for i in [best, good, order[2]] {
            b.live[i] = false;
        }
        assert_eq!(b.elect(), Some(worse));
        // Healed, both acting: side B takes the better-ranked one (it
        // outranks B's incumbent), side A keeps its own; the best one,
        // idle, displaces neither.
        for sim in [&mut a, &mut b] {
            sim.live = vec![true; 5];
            sim.act(good);
            sim.act(worse);
        }
        assert_eq!(a.elect(), Some(good));
        assert_eq!(b.elect(), Some(good));
        // `good` goes silent (done): after the incumbency both fall back
        // to the ranking. (`worse`, which stopped pulling, acts no more.)
        for sim in [&mut a, &mut b] {
            sim.advance(INCUMBENCY.as_secs() + 1);
            assert_eq!(sim.elect(), Some(best));
        }
    }

    #[test]
    fn a_member_acting_unelected_below_the_gateway_gains_nothing() {
        let mut sim = Sim::new(5);
        let order = sim.ranked();
        let (gateway, member) = (order[0], order[2]);
        // The gateway is elected and has not signed yet (resolving); a
        // member ranked below it signs gateway messages of the release.
        assert_eq!(sim.elect(), Some(gateway));
        sim.act(member);
        assert_eq!(sim.elect(), Some(gateway));
        // Even when the gateway went quiet (its pull is done).
        sim.act(gateway);
        sim.advance(INCUMBENCY.as_secs() + 1);
        sim.act(member);
        assert_eq!(sim.elect(), Some(gateway));
        // An elector that restarted knows none of its elections: it
        // defers to whoever acts (the others pass a silent gateway over
        // after 10 s: bounded).
        let mut restarted = Sim::new(5);
        restarted.history = (0..5).collect();
        restarted.act(member);
        assert_eq!(restarted.elect(), Some(member));
    }

    #[test]
    fn only_an_accepting_candidate_can_act() {
        let mut sim = Sim::new(3);
        let order = sim.ranked();
        // The second-ranked was elected (the best one declined then) and
        // acted, and then failed the release (or was passed over as
        // silent: declined): the best-ranked wins once it accepts.
        sim.stance[order[0]] = Stance::Declined;
        assert_eq!(sim.elect(), Some(order[1]));
        sim.act(order[1]);
        sim.stance[order[0]] = Stance::Accepted;
        sim.stance[order[1]] = Stance::Declined;
        assert_eq!(sim.elect(), Some(order[0]));
        // An undecided better-ranked candidate does not hold up an
        // acting one this elector elected (it is pulling already).
        sim.stance[order[1]] = Stance::Accepted;
        sim.stance[order[0]] = Stance::Undecided;
        assert_eq!(sim.elect(), Some(order[1]));
        // Without anyone acting, the election waits for it as before.
        sim.advance(INCUMBENCY.as_secs() + 1);
        assert_eq!(sim.elect(), None);
    }

    #[test]
    fn the_best_ranked_accepting_candidate_wins_and_undecided_better_ones_are_awaited() {
        let m = Digest::of(b"manifest");
        let p = peers(4);
        let order = rank(&m, &p);
        let (best, second, third) = (order[0], order[1], order[2]);
        let stances = |s: [Stance; 3]| {
            vec![(best, s[0]), (second, s[1]), (third, s[2])]
                .into_iter()
                .map(|(c, s)| (c.as_slice(), s))
                .collect::<Vec<_>>()
        };
        use Stance::*;
        assert_eq!(
            elect_accepting(&m, stances([Accepted, Accepted, Accepted])),
            Outcome::Elected(best.as_slice())
        );
        // The best declined (it does not trust the publisher): the next
        // one that accepted wins.
        assert_eq!(
            elect_accepting(&m, stances([Declined, Undecided, Accepted])),
            Outcome::Waiting(second.as_slice())
        );
        assert_eq!(
            elect_accepting(&m, stances([Declined, Declined, Accepted])),
            Outcome::Elected(third.as_slice())
        );
        // An undecided candidate ranked below the winner does not matter.
        assert_eq!(
            elect_accepting(&m, stances([Accepted, Undecided, Declined])),
            Outcome::Elected(best.as_slice())
        );
        assert_eq!(
            elect_accepting(&m, stances([Declined, Declined, Declined])),
            Outcome::None
        );
        // The input order does not change the outcome.
        let mut reversed = stances([Declined, Accepted, Accepted]);
        reversed.reverse();
        assert_eq!(
            elect_accepting(&m, reversed),
            Outcome::Elected(second.as_slice())
        );
    }

    fn peers(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("peer-{i}").into_bytes()).collect()
    }

    #[test]
    fn everyone_agrees_whatever_the_order() {
        let m = Digest::of(b"manifest");
        let mut p = peers(7);
        let first = elect(&m, &p).cloned();
        p.reverse();
        assert_eq!(elect(&m, &p).cloned(), first);
        assert_eq!(rank(&m, &p)[0], first.as_ref().unwrap());
    }

    #[test]
    fn failover_goes_to_the_runner_up_and_others_keep_their_gateway() {
        let p = peers(5);
        let releases: Vec<Digest> = (0..200u32).map(|i| Digest::of(&i.to_be_bytes())).collect();
        let before: Vec<&Vec<u8>> = releases.iter().map(|m| elect(m, &p).unwrap()).collect();
        let dead = &p[2];
        let survivors: Vec<Vec<u8>> = p.iter().filter(|c| *c != dead).cloned().collect();
        for (m, old) in releases.iter().zip(&before) {
            let new = elect(m, &survivors).unwrap();
            if *old == dead {
                assert_eq!(new, rank(m, &p)[1], "runner-up takes over");
            } else {
                assert_eq!(new, *old, "a live gateway keeps its release");
            }
        }
    }

    #[test]
    fn releases_spread_across_gateways() {
        let p = peers(4);
        let mut counts = [0usize; 4];
        for i in 0..400u32 {
            let m = Digest::of(&i.to_be_bytes());
            let winner = elect(&m, &p).unwrap();
            counts[p.iter().position(|c| c == winner).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (60..=140).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn no_candidates_no_gateway() {
        let none: Vec<Vec<u8>> = Vec::new();
        assert!(elect(&Digest::of(b"m"), &none).is_none());
    }

    #[test]
    fn weight_is_pinned() {
        // Golden (computed independently with Python's hashlib): every
        // implementation must pick the same gateway.
        assert_eq!(
            hex::encode(weight(&Digest::of(b""), b"peer")),
            "118f4a19e45250f145118fd94836ec230c2c3939c7ff2adbd9e4a3f1fb88cdd5"
        );
    }
}
