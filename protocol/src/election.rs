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

#[cfg(test)]
mod tests {
    use super::*;

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
