//! Super-seeding for origin blobs: which requester sees which chunk.
//!
//! An origin seed (a gateway while a layer streams in from the registry, or
//! a node holding a blob it did not download in this process) offers each
//! chunk to one requester only, in turn, and lets the requesters trade the
//! rest among themselves. Advertising every chunk to everyone let the
//! fastest askers win most of them: at 5 nodes two peers got 3x the
//! gateway chunks of the other two and had to upload 60 MB each while the
//! others uploaded 20 MB, so the busy uplinks set the pace (testnet,
//! single 46 MB layer, `--queue-ms 100`). A chunk whose assignee has not
//! fetched it within [`OFFER_TIMEOUT`], or whose assignee left, is shown
//! to everyone, so a slow or dead requester cannot hide it.
//!
//! Pure bookkeeping with the clock passed in; the serving tasks call it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use edgeswarm_protocol::{Bitfield, Digest};
use libp2p::PeerId;

/// How long a chunk stays offered to its assignee alone. A requester asks
/// for an offered chunk within a round trip of its `Have`; a second is
/// far more than that, and short against a transfer of several seconds.
pub(super) const OFFER_TIMEOUT: Duration = Duration::from_secs(1);

/// Origin blobs tracked at most (older ones are forgotten and shown to
/// everyone, as before super-seeding).
const MAX_BLOBS: usize = 64;

/// Offers of one blob.
#[derive(Default)]
struct BlobOffers {
    /// Requesters bound to the blob now, with how many of their streams.
    requesters: BTreeMap<PeerId, usize>,
    /// Chunk -> the requester it was offered to, and when.
    assigned: HashMap<u32, (PeerId, Instant)>,
    /// Round-robin position among `requesters`.
    next: usize,
    /// Last time anything touched this blob (for eviction).
    touched: Option<Instant>,
}

/// Super-seeding state of every origin blob a node serves.
#[derive(Default)]
pub(super) struct Offers {
    /// Per blob.
    blobs: HashMap<Digest, BlobOffers>,
}

impl Offers {
    /// A requester's stream bound `blob` (sent `Hello` naming it).
    pub(super) fn bind(&mut self, blob: Digest, peer: PeerId, now: Instant) {
        if !self.blobs.contains_key(&blob) && self.blobs.len() >= MAX_BLOBS {
            let oldest = self
                .blobs
                .iter()
                .min_by_key(|(_, b)| b.touched)
                .map(|(d, _)| *d);
            if let Some(oldest) = oldest {
                self.blobs.remove(&oldest);
            }
        }
        let b = self.blobs.entry(blob).or_default();
        *b.requesters.entry(peer).or_insert(0) += 1;
        b.touched = Some(now);
    }

    /// A requester's stream bound to `blob` ended.
    pub(super) fn unbind(&mut self, blob: &Digest, peer: &PeerId) {
        if let Some(b) = self.blobs.get_mut(blob) {
            if let Some(n) = b.requesters.get_mut(peer) {
                *n -= 1;
                if *n == 0 {
                    b.requesters.remove(peer);
                }
            }
        }
    }

    /// The chunks of `held` that `peer` may see: those offered to it, and
    /// those whose offer lapsed (timed out unfetched, or its assignee is
    /// gone). Chunks not offered to anyone yet are assigned now, in turn
    /// among the bound requesters. `fetched(index)` says whether the chunk
    /// was uploaded since it was offered (then it stays with its assignee,
    /// who relays it). Chunks for which `small(index)` holds are shown to
    /// everyone at once, never offered.
    pub(super) fn visible(
        &mut self,
        blob: &Digest,
        peer: &PeerId,
        held: &Bitfield,
        now: Instant,
        fetched: impl Fn(u32) -> bool,
        small: impl Fn(u32) -> bool,
    ) -> Bitfield {
        let Some(b) = self.blobs.get_mut(blob) else {
            return held.clone();
        };
        b.touched = Some(now);
        if b.requesters.is_empty() {
            return held.clone();
        }
        let mut out = Bitfield::new(held.len());
        let requesters: Vec<PeerId> = b.requesters.keys().copied().collect();
        for index in held.iter_ones() {
            if small(index) {
                out.set(index);
                continue;
            }
            let (to, at) = match b.assigned.get(&index) {
                Some(&(to, at)) if b.requesters.contains_key(&to) => (to, at),
                _ => {
                    let to = requesters[b.next % requesters.len()];
                    b.next = b.next.wrapping_add(1);
                    b.assigned.insert(index, (to, now));
                    (to, now)
                }
            };
            let lapsed = now.duration_since(at) >= OFFER_TIMEOUT && !fetched(index);
            if to == *peer || lapsed {
                out.set(index);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob() -> Digest {
        Digest::of(b"layer")
    }

    fn full(n: u32) -> Bitfield {
        Bitfield::full(n)
    }

    /// Offers with `n` requesters bound to `blob()` at `t`.
    fn requesters(n: usize) -> (Offers, Instant, Vec<PeerId>) {
        let mut o = Offers::default();
        let t = Instant::now();
        let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        for p in &peers {
            o.bind(blob(), *p, t);
        }
        (o, t, peers)
    }

    /// Offers with two requesters bound to `blob()` at `t`.
    fn two_requesters() -> (Offers, Instant, PeerId, PeerId) {
        let (o, t, peers) = requesters(2);
        (o, t, peers[0], peers[1])
    }

    /// How many of the requesters' views show chunk `index`.
    fn owners(seen: &[Bitfield], index: u32) -> usize {
        seen.iter().filter(|s| s.get(index)).count()
    }

    #[test]
    fn each_chunk_is_offered_to_one_requester_in_turn() {
        let (mut o, t, peers) = requesters(4);
        let held = full(40);
        let seen: Vec<Bitfield> = peers
            .iter()
            .map(|p| o.visible(&blob(), p, &held, t, |_| false, |_| false))
            .collect();
        for i in 0..40 {
            assert_eq!(owners(&seen, i), 1, "chunk {i} offered to several or none");
        }
        for s in &seen {
            assert_eq!(s.count_ones(), 10, "unbalanced offers");
        }
    }

    #[test]
    fn small_chunks_are_shown_to_every_requester_at_once() {
        let (mut o, t, peers) = requesters(4);
        // A one-chunk blob (a manifest), and a layer's short last chunk.
        let one = full(1);
        for p in &peers {
            let seen = o.visible(&blob(), p, &one, t, |_| false, |i| i == 0);
            assert!(
                seen.get(0),
                "a small chunk was offered to one requester only"
            );
        }
        let layer = full(9);
        let seen: Vec<Bitfield> = peers
            .iter()
            .map(|p| o.visible(&blob(), p, &layer, t, |_| false, |i| i == 8))
            .collect();
        assert_eq!(owners(&seen, 8), 4, "the short last chunk was offered");
        for i in 0..8 {
            assert_eq!(
                owners(&seen, i),
                1,
                "full-size chunk {i} offered to several or none"
            );
        }
    }

    #[test]
    fn an_unfetched_offer_lapses_to_everyone_and_a_fetched_one_does_not() {
        let (mut o, t, a, b) = two_requesters();
        let held = full(2);
        let now_a = o.visible(&blob(), &a, &held, t, |_| false, |_| false);
        let now_b = o.visible(&blob(), &b, &held, t, |_| false, |_| false);
        assert_eq!((now_a.count_ones(), now_b.count_ones()), (1, 1));
        let ia = now_a.iter_ones().next().unwrap();
        let ib = now_b.iter_ones().next().unwrap();
        assert_ne!(ia, ib);
        // a fetched its chunk; b never fetched its own.
        let later = t + OFFER_TIMEOUT;
        let fetched = |i: u32| i == ia;
        let later_a = o.visible(&blob(), &a, &held, later, fetched, |_| false);
        let later_b = o.visible(&blob(), &b, &held, later, fetched, |_| false);
        assert!(later_a.get(ib), "a lapsed, unfetched offer stayed hidden");
        assert!(
            !later_b.get(ia),
            "a fetched offer was shown to another requester"
        );
        assert!(later_b.get(ib));
    }

    #[test]
    fn a_chunk_of_a_requester_that_left_is_offered_again() {
        let (mut o, t, a, b) = two_requesters();
        let held = full(2);
        let for_a = o.visible(&blob(), &a, &held, t, |_| false, |_| false);
        o.unbind(&blob(), &a);
        let for_b = o.visible(&blob(), &b, &held, t, |_| false, |_| false);
        assert_eq!(for_a.count_ones(), 1);
        assert_eq!(
            for_b.count_ones(),
            2,
            "chunks of a departed requester stayed hidden"
        );
    }

    #[test]
    fn blobs_without_requesters_or_unknown_are_shown_whole() {
        let mut o = Offers::default();
        let held = full(3);
        let p = PeerId::random();
        assert_eq!(
            o.visible(&blob(), &p, &held, Instant::now(), |_| false, |_| false),
            held
        );
    }
}
