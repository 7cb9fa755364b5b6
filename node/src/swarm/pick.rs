//! Piece picker (the swarm's own until `protocol::picker` lands): pure,
//! deterministic given its seed.
//!
//! Order of preference for the next chunk to request:
//! 1. chunks in the deadline window `[cursor, cursor + window)`, in order, so
//!    the front of a layer arrives first for streaming import;
//! 2. then rarest-first (fewest peers advertising it), ties broken by a
//!    seeded hash so different nodes spread over different chunks.
//!
//! For each chunk the holder chosen is a *partial* peer if possible (seed
//! sparing: complete seeds serve what nobody else has), then the one with
//! the fewest requests in flight. A chunk is requested from one peer at a
//! time, except in endgame (every missing chunk already requested and few
//! left), when a second copy may be requested from another peer.

use std::collections::HashMap;
use std::hash::Hash;

use edgeswarm_protocol::Bitfield;

/// What the picker knows about one peer.
pub(crate) struct PeerView<'a> {
    /// Chunks the peer advertises.
    pub(crate) bits: &'a Bitfield,
    /// Requests in flight to this peer.
    pub(crate) inflight: usize,
    /// Whether a given chunk is in flight to this peer, or was declined recently.
    pub(crate) excluded: &'a dyn Fn(u32) -> bool,
}

/// Picker tunables.
pub(crate) struct PickParams {
    /// Requests in flight per peer at most.
    pub(crate) per_peer: usize,
    /// Chunks after the cursor fetched in order first.
    pub(crate) window: u32,
    /// Missing chunks at or below which endgame may start.
    pub(crate) endgame_below: usize,
    /// Seed for tie-breaking.
    pub(crate) seed: u64,
}

fn mix(seed: u64, x: u64) -> u64 {
    // splitmix64
    let mut z = seed ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Decides requests. `local` is what we hold; `outstanding` counts requests
/// in flight per chunk; `cursor_chunk` is the consumer's position.
pub(crate) fn pick<K: Copy + Eq + Hash + Ord>(
    params: &PickParams,
    local: &Bitfield,
    outstanding: &HashMap<u32, usize>,
    cursor_chunk: u32,
    peers: &[(K, PeerView<'_>)],
) -> Vec<(K, u32)> {
    let mut free: HashMap<K, usize> = peers
        .iter()
        .map(|(k, v)| (*k, params.per_peer.saturating_sub(v.inflight)))
        .collect();
    if free.values().all(|f| *f == 0) {
        return Vec::new();
    }
    let missing: Vec<u32> = local.iter_zeros().collect();
    let unrequested = missing
        .iter()
        .filter(|i| !outstanding.contains_key(i))
        .count();
    let endgame = unrequested == 0 && missing.len() <= params.endgame_below;
    let max_copies = if endgame { 2 } else { 1 };

    let avail = |i: u32| peers.iter().filter(|(_, v)| v.bits.get(i)).count();
    let window_end = cursor_chunk.saturating_add(params.window);
    let mut order: Vec<(u8, usize, u64, u32)> = missing
        .iter()
        .filter(|i| outstanding.get(i).copied().unwrap_or(0) < max_copies)
        .filter_map(|&i| {
            let a = avail(i);
            if a == 0 {
                return None;
            }
            let in_window = i >= cursor_chunk && i < window_end;
            Some(if in_window {
                (0, 0, i as u64, i)
            } else {
                (1, a, mix(params.seed, i as u64), i)
            })
        })
        .collect();
    order.sort_unstable();

    let mut out = Vec::new();
    let mut extra: HashMap<K, usize> = HashMap::new();
    for (_, _, _, i) in order {
        let best = peers
            .iter()
            .filter(|(k, v)| v.bits.get(i) && !(v.excluded)(i) && free[k] > 0)
            .min_by_key(|(k, v)| {
                let partial = !v.bits.is_complete();
                (
                    !partial,
                    v.inflight + extra.get(k).copied().unwrap_or(0),
                    mix(params.seed, i as u64 ^ 0x5555) % 7,
                    *k,
                )
            })
            .map(|(k, _)| *k);
        if let Some(k) = best {
            if let Some(f) = free.get_mut(&k) {
                *f -= 1;
            }
            *extra.entry(k).or_default() += 1;
            out.push((k, i));
            if free.values().all(|f| *f == 0) {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> PickParams {
        PickParams {
            per_peer: 2,
            window: 2,
            endgame_below: 4,
            seed: 7,
        }
    }

    #[test]
    fn window_first_then_rarest_and_partial_peers_preferred() {
        let local = Bitfield::new(8);
        let seed = Bitfield::full(8);
        let mut partial = Bitfield::new(8);
        for i in [0, 1, 5] {
            partial.set(i);
        }
        let no = |_: u32| false;
        let peers = [
            (
                1u8,
                PeerView {
                    bits: &seed,
                    inflight: 0,
                    excluded: &no,
                },
            ),
            (
                2u8,
                PeerView {
                    bits: &partial,
                    inflight: 0,
                    excluded: &no,
                },
            ),
        ];
        let out = pick(&params(), &local, &HashMap::new(), 0, &peers);
        assert_eq!(out.len(), 4);
        // Window chunks 0 and 1 come first, from the partial peer.
        assert_eq!(out[0], (2, 0));
        assert_eq!(out[1], (2, 1));
        // Rarest (held by the seed only) next, from the seed.
        assert!(out[2..]
            .iter()
            .all(|(p, i)| *p == 1 && ![0, 1, 5].contains(i)));
    }

    #[test]
    fn no_duplicates_until_endgame() {
        let mut local = Bitfield::full(8);
        local.clear(3);
        let full = Bitfield::full(8);
        let no = |_: u32| false;
        let peers = [
            (
                1u8,
                PeerView {
                    bits: &full,
                    inflight: 1,
                    excluded: &|i| i == 3,
                },
            ),
            (
                2u8,
                PeerView {
                    bits: &full,
                    inflight: 0,
                    excluded: &no,
                },
            ),
        ];
        let mut outstanding = HashMap::new();
        outstanding.insert(3, 1);
        // One chunk missing, already requested from peer 1: endgame asks peer 2.
        let out = pick(&params(), &local, &outstanding, 0, &peers);
        assert_eq!(out, vec![(2, 3)]);
        let mut p = params();
        p.endgame_below = 0;
        assert!(pick(&p, &local, &outstanding, 0, &peers).is_empty());
    }
}
