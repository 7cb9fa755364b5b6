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

#[cfg(test)]
mod tests {
    use super::*;

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
