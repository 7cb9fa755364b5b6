//! Piece picker behaviour on crafted swarms.

use edgeswarm_protocol::picker::*;
use edgeswarm_protocol::{Bitfield, ChunkSize, Digest};

const CS: ChunkSize = ChunkSize::MIN;

fn blob() -> Digest {
    Digest::of(b"blob")
}

fn size(chunks: u32) -> u64 {
    chunks as u64 * CS.get() as u64
}

fn config() -> PickerConfig {
    PickerConfig {
        max_in_flight_per_peer: 100,
        window_chunks: 0,
        endgame_threshold: 0,
        max_requests_per_chunk: 2,
        endgame_min_age_ms: 0,
        endgame_begun_chunk_times: 8,
        seed: 42,
        timeout_base_ms: 1_000,
        timeout_ms_per_mib: 8_000,
        busy_backoff_ms: 500,
        spare_patience_ms: 5_000,
    }
}

fn bits(len: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
    let mut b = Bitfield::new(len);
    for i in ones {
        b.set(i);
    }
    b
}

fn picker(config: PickerConfig, chunks: u32) -> Picker<u32> {
    let mut p = Picker::new(config);
    p.add_blob(blob(), size(chunks), CS, Bitfield::new(chunks))
        .unwrap();
    p
}

fn indices(reqs: &[Request<u32>]) -> Vec<u32> {
    reqs.iter().map(|r| r.index).collect()
}

fn sorted(reqs: &[Request<u32>]) -> Vec<u32> {
    let mut v = indices(reqs);
    v.sort_unstable();
    v
}

#[test]
fn rarest_chunk_goes_first() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 1,
            ..config()
        },
        10,
    );
    // Peers 1..=3 hold everything but chunk 6; peer 4 holds only chunk 6
    // and chunk 2.
    for peer in 1..=3 {
        p.peer_bitfield(&peer, &blob(), bits(10, (0..10).filter(|&i| i != 6)))
            .unwrap();
    }
    p.peer_bitfield(&4, &blob(), bits(10, [2, 6])).unwrap();
    assert_eq!(p.availability(&blob(), 6), 1);
    assert_eq!(p.availability(&blob(), 2), 4);
    let reqs = p.next_requests(0);
    assert_eq!(reqs.len(), 4, "one request per peer: {reqs:?}");
    let six: Vec<_> = reqs.iter().filter(|r| r.index == 6).collect();
    assert_eq!(six.len(), 1);
    assert_eq!(six[0].peer, 4, "chunk 6 only at peer 4");
    assert_eq!(six[0].kind, RequestKind::Rarest);
    assert!(reqs.iter().all(|r| r.kind == RequestKind::Rarest));
    // The three other requests are for distinct chunks.
    let mut idx = indices(&reqs);
    idx.sort();
    idx.dedup();
    assert_eq!(idx.len(), 4);
}

#[test]
fn rarer_chunks_are_ordered_before_common_ones() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 2,
            ..config()
        },
        6,
    );
    // Availability: chunk i held by i+1 peers (chunk 5 by all 6).
    for peer in 0..6u32 {
        p.peer_bitfield(&peer, &blob(), bits(6, peer..6)).unwrap();
    }
    let reqs = p.next_requests(0);
    // Every chunk has a holder with capacity, so all 6 are requested, in
    // order of rarity.
    assert_eq!(indices(&reqs), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(reqs[0].peer, 0);
}

#[test]
fn deadline_window_comes_first_and_in_order() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 2,
            window_chunks: 3,
            ..config()
        },
        20,
    );
    // Chunk 15 is rare, the window chunks are common.
    for peer in 1..=4 {
        p.peer_bitfield(&peer, &blob(), bits(20, (0..20).filter(|&i| i != 15)))
            .unwrap();
    }
    p.peer_bitfield(&5, &blob(), bits(20, [15])).unwrap();
    p.set_cursor(&blob(), 10).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(&indices(&reqs)[..3], &[10, 11, 12], "{reqs:?}");
    assert!(reqs[..3].iter().all(|r| r.kind == RequestKind::Window));
    assert!(reqs[3..].iter().all(|r| r.kind == RequestKind::Rarest));
    assert_eq!(reqs[3].index, 15, "then the rarest chunk");
    // Chunks inside the window are never requested twice outside endgame.
    let mut idx = indices(&reqs);
    idx.sort();
    idx.dedup();
    assert_eq!(idx.len(), reqs.len());
}

#[test]
fn window_follows_the_cursor_and_skips_held_chunks() {
    let mut p = Picker::new(PickerConfig {
        max_in_flight_per_peer: 3,
        window_chunks: 4,
        ..config()
    });
    p.add_blob(blob(), size(10), CS, bits(10, [1])).unwrap();
    p.peer_has_all(&1, &blob()).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(
        indices(&reqs),
        vec![0, 2, 3],
        "window 0..4 minus held 1, in order"
    );
    p.chunk_received(&blob(), 0, Some(&1)).unwrap();
    p.set_cursor(&blob(), 2).unwrap();
    let reqs = p.next_requests(1);
    assert_eq!(indices(&reqs), vec![4]);
    assert_eq!(reqs[0].kind, RequestKind::Window);
}

#[test]
fn unknown_digests_are_not_requested() {
    let mut p = picker(config(), 10);
    p.peer_has_all(&1, &blob()).unwrap();
    p.set_digests_known(&blob(), 3).unwrap();
    assert_eq!(sorted(&p.next_requests(0)), vec![0, 1, 2]);
    p.set_digests_known(&blob(), 5).unwrap();
    assert_eq!(sorted(&p.next_requests(0)), vec![3, 4]);
}

#[test]
fn per_peer_in_flight_cap_is_respected() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 3,
            ..config()
        },
        100,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    let first = p.next_requests(0);
    assert_eq!(first.len(), 3);
    assert_eq!(p.in_flight(&1), 3);
    assert!(p.next_requests(1).is_empty(), "cap reached");
    p.chunk_received(&blob(), first[0].index, Some(&1)).unwrap();
    assert_eq!(p.in_flight(&1), 2);
    assert_eq!(p.next_requests(2).len(), 1);
}

#[test]
fn load_is_balanced_and_seeds_are_spared() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 4,
            ..config()
        },
        8,
    );
    // Peer 1 is a seed; peers 2 and 3 hold every chunk but 7.
    p.peer_has_all(&1, &blob()).unwrap();
    p.peer_bitfield(&2, &blob(), bits(8, 0..7)).unwrap();
    p.peer_bitfield(&3, &blob(), bits(8, 0..7)).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(reqs.len(), 8);
    let to = |peer| reqs.iter().filter(|r| r.peer == peer).count();
    // Chunk 7 only at the seed; the seed gets as few of the others as the
    // balance allows (holders with fewer requests in flight first, then
    // the holder with fewer chunks).
    assert!(reqs.iter().any(|r| r.index == 7 && r.peer == 1));
    assert_eq!((to(1), to(2), to(3)), (2, 3, 3), "{reqs:?}");
}

#[test]
fn endgame_duplicates_only_at_the_end() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 100,
            endgame_threshold: 2,
            ..config()
        },
        10,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    p.peer_has_all(&2, &blob()).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(reqs.len(), 10);
    assert!(reqs.iter().all(|r| r.kind == RequestKind::Rarest));
    // Nothing more to do while 10 > threshold chunks are missing.
    assert!(p.next_requests(1).is_empty());
    // Receive all but 3: still no duplicates.
    let mut rest: Vec<_> = reqs.clone();
    rest.sort_by_key(|r| r.index);
    for r in &rest[..7] {
        p.chunk_received(&blob(), r.index, Some(&r.peer)).unwrap();
    }
    assert_eq!(p.missing(&blob()), Some(3));
    assert!(p.next_requests(2).is_empty(), "3 missing > threshold 2");
    p.chunk_received(&blob(), rest[7].index, Some(&rest[7].peer))
        .unwrap();
    // 2 missing, both in flight: duplicates to the other holder.
    let dups = p.next_requests(3);
    assert_eq!(dups.len(), 2, "{dups:?}");
    for d in &dups {
        assert_eq!(d.kind, RequestKind::Endgame);
        let original = rest.iter().find(|r| r.index == d.index).unwrap();
        assert_ne!(d.peer, original.peer, "a duplicate goes to another peer");
    }
    // At most max_requests_per_chunk (2) per chunk.
    assert!(p.next_requests(4).is_empty());
    // When a copy lands, the other request is returned for cancelling.
    let cancel = p
        .chunk_received(&blob(), dups[0].index, Some(&dups[0].peer))
        .unwrap();
    assert_eq!(cancel.len(), 1);
    assert_eq!(cancel[0].index, dups[0].index);
    assert_ne!(cancel[0].peer, dups[0].peer);
}

#[test]
fn a_peer_that_delivers_is_not_stalled_by_its_queue() {
    // Timeout 1000 ms + 8000 ms/MiB: 1000 ms + 512 ms for 64 KiB chunks.
    let mut p = picker(config(), 4);
    p.peer_has_all(&1, &blob()).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(reqs.len(), 4);
    // The peer delivers one chunk every 1000 ms: each later request is
    // older than the timeout, but the peer is making progress.
    for (i, r) in reqs.iter().enumerate().take(3) {
        let now = 1_000 * (i as u64 + 1);
        p.chunk_received(&blob(), r.index, Some(&1)).unwrap();
        p.peer_progressed(&1, now);
        assert!(p.expire(now + 1).is_empty(), "expired while delivering");
    }
    // Then it goes silent: the last request expires a timeout later.
    assert!(p.expire(3_000 + 1_400).is_empty());
    let expired = p.expire(3_000 + 1_600);
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].index, reqs[3].index);
}

#[test]
fn endgame_waits_until_a_request_is_old_enough() {
    let mut p = two_chunks_in_endgame();
    // Both in flight, both missing: endgame applies, but not yet.
    assert!(
        p.next_requests(1_000).is_empty(),
        "duplicated a fresh request"
    );
    assert!(
        p.next_requests(1_749).is_empty(),
        "duplicated before the age"
    );
    let dups = p.next_requests(1_750);
    assert_eq!(dups.len(), 2, "{dups:?}");
    assert!(dups.iter().all(|d| d.kind == RequestKind::Endgame));
}

/// Two chunks, both missing and both requested at t=1000 from peers 1
/// and 2: endgame applies to both, after 750 ms at the least.
fn two_chunks_in_endgame() -> Picker<u32> {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 100,
            endgame_threshold: 2,
            endgame_min_age_ms: 750,
            ..config()
        },
        2,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    p.peer_has_all(&2, &blob()).unwrap();
    assert_eq!(p.next_requests(1_000).len(), 2);
    p
}

#[test]
fn endgame_on_a_slow_link_waits_for_what_is_outstanding_to_drain() {
    // Two chunks outstanding at a quarter of a chunk per second: they take
    // 8 s to drain, so a request is late only after 12 s.
    let mut p = two_chunks_in_endgame();
    p.set_observed_rate(Some(CS.get() as u64 / 4));
    assert!(
        p.next_requests(1_750).is_empty(),
        "duplicated a request that is on time at this rate"
    );
    assert!(p.next_requests(12_999).is_empty());
    assert_eq!(p.next_requests(13_000).len(), 2);
    // A fast rate falls back to the fixed age.
    let mut q = two_chunks_in_endgame();
    q.set_observed_rate(Some(CS.get() as u64 * 1_000));
    assert_eq!(q.next_requests(1_750).len(), 2);
}

#[test]
fn endgame_leaves_an_answer_under_way_alone_until_it_is_slow() {
    let mut p = two_chunks_in_endgame();
    let reqs = p.outstanding();
    assert_eq!(reqs.len(), 2);
    // Two chunks per second: one chunk takes 500 ms at our rate.
    p.set_observed_rate(Some(CS.get() as u64 * 2));
    let began = &reqs[0];
    p.answer_began(&blob(), began.index, &began.peer, 1_100);
    // Answers to requests we no longer have are ignored.
    p.answer_began(&blob(), began.index, &9, 1_100);
    // The request not answered yet is late once what is outstanding had
    // 1.5 times its drain time (2 chunks: 1.5 s); the one under way is not.
    assert!(p.next_requests(2_499).is_empty());
    let dups = p.next_requests(2_500);
    assert_eq!(dups.len(), 1, "{dups:?}");
    assert_eq!(dups[0].index, reqs[1].index);
    assert_eq!(dups[0].kind, RequestKind::Endgame);
    // The answer under way is slow only after 8 chunk times (4 s) of
    // streaming.
    assert!(
        p.next_requests(5_099).is_empty(),
        "duplicated an answer under way"
    );
    let late = p.next_requests(5_100);
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].index, began.index);
    assert_ne!(late[0].peer, began.peer);
}

#[test]
fn no_endgame_while_other_work_waits_for_capacity() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 1,
            endgame_threshold: 5,
            ..config()
        },
        3,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    p.peer_has_all(&2, &blob()).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(reqs.len(), 2);
    // Chunk 3rd is unrequested (no capacity); finishing one frees a slot
    // which must go to the unrequested chunk, not a duplicate.
    p.chunk_received(&blob(), reqs[0].index, Some(&reqs[0].peer))
        .unwrap();
    let next = p.next_requests(1);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].kind, RequestKind::Rarest);
    assert!(!reqs.iter().any(|r| r.index == next[0].index));
}

#[test]
fn same_seed_same_requests_and_seeds_change_ties() {
    let run = |seed: u64| {
        let mut p = picker(
            PickerConfig {
                max_in_flight_per_peer: 3,
                window_chunks: 2,
                seed,
                ..config()
            },
            64,
        );
        for peer in 0..8u32 {
            p.peer_bitfield(&peer, &blob(), bits(64, (0..64).filter(|i| i % 8 != peer)))
                .unwrap();
        }
        let mut all = Vec::new();
        for t in 0..5 {
            let reqs = p.next_requests(t);
            for r in reqs.iter().take(4) {
                p.chunk_received(&blob(), r.index, Some(&r.peer)).unwrap();
            }
            all.extend(reqs);
        }
        all
    };
    assert_eq!(run(7), run(7));
    assert!(
        (0..5).any(|s| run(s) != run(7)),
        "the seed must influence tie-breaking"
    );
}

#[test]
fn stalled_requests_expire_and_move_to_another_peer() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 1,
            ..config()
        },
        1,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    let first = p.next_requests(0);
    assert_eq!(first.len(), 1);
    let stalled = first[0].peer;
    // Timeout: 1000 ms + 64 KiB * 8000 ms/MiB = 1500 ms.
    assert_eq!(p.timeout_ms(&blob(), 0), Some(1_500));
    p.peer_has_all(&2, &blob()).unwrap();
    assert!(p.expire(1_499).is_empty());
    assert!(
        p.next_requests(1_499).is_empty(),
        "still in flight, no endgame"
    );
    let expired = p.expire(1_500);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].peer, stalled);
    assert_eq!(p.in_flight(&stalled), 0);
    let retry = p.next_requests(1_500);
    assert_eq!(retry.len(), 1);
    assert_ne!(retry[0].peer, stalled, "not the stalled peer again");
}

#[test]
fn timeout_scales_with_chunk_size() {
    let mut p = Picker::<u32>::new(config());
    let big = ChunkSize::new(4 << 20).unwrap();
    p.add_blob(blob(), (4 << 20) + 1024, big, Bitfield::new(2))
        .unwrap();
    assert_eq!(p.timeout_ms(&blob(), 0), Some(1_000 + 32_000));
    // The 1 KiB tail chunk gets a short timeout.
    assert_eq!(p.timeout_ms(&blob(), 1), Some(1_000 + 7));
    assert_eq!(p.timeout_ms(&blob(), 2), None);
}

#[test]
fn busy_peers_are_left_alone_for_the_backoff() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 1,
            ..config()
        },
        4,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    let r = p.next_requests(0);
    p.request_failed(&1, &blob(), r[0].index, FailReason::Busy, 100);
    assert_eq!(p.in_flight(&1), 0);
    assert!(p.next_requests(599).is_empty(), "backoff until 600");
    assert_eq!(p.next_requests(600).len(), 1);
}

#[test]
fn not_have_clears_stale_availability() {
    let mut p = picker(config(), 2);
    p.peer_has_all(&1, &blob()).unwrap();
    p.peer_has(&2, &blob(), 0).unwrap();
    assert_eq!(p.availability(&blob(), 0), 2);
    let reqs = p.next_requests(0);
    let r0 = reqs.iter().find(|r| r.index == 0).unwrap().clone();
    p.request_failed(&r0.peer, &blob(), 0, FailReason::NotHave, 1);
    assert_eq!(p.availability(&blob(), 0), 1);
    let again = p.next_requests(2);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].peer, r0.peer);
}

#[test]
fn error_excludes_peer_for_that_chunk_while_others_exist() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 1,
            ..config()
        },
        1,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    let r = p.next_requests(0);
    assert_eq!(r[0].peer, 1);
    p.request_failed(&1, &blob(), 0, FailReason::Error, 1);
    // Only holder: asked again despite the error.
    let again = p.next_requests(2);
    assert_eq!(again[0].peer, 1);
    p.request_failed(&1, &blob(), 0, FailReason::Error, 3);
    p.peer_has_all(&2, &blob()).unwrap();
    assert_eq!(p.next_requests(4)[0].peer, 2);
}

#[test]
fn removed_peers_return_their_requests() {
    let mut p = picker(config(), 4);
    p.peer_has_all(&1, &blob()).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(reqs.len(), 4);
    let dropped = p.remove_peer(&1);
    assert_eq!(dropped.len(), 4);
    assert_eq!(p.availability(&blob(), 0), 0);
    assert!(p.outstanding().is_empty());
    assert!(p.next_requests(1).is_empty(), "no holder left");
}

#[test]
fn bitfields_before_the_blob_are_kept() {
    let mut p = Picker::<u32>::new(config());
    p.peer_bitfield(&1, &blob(), bits(4, [0, 1])).unwrap();
    p.peer_bitfield(&2, &blob(), bits(5, [0])).unwrap(); // wrong length: dropped later
    p.add_blob(blob(), size(4), CS, Bitfield::new(4)).unwrap();
    assert_eq!(p.availability(&blob(), 0), 1);
    assert_eq!(sorted(&p.next_requests(0)), vec![0, 1]);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut p = picker(config(), 4);
    assert_eq!(
        p.peer_bitfield(&1, &blob(), Bitfield::new(5)),
        Err(PickerError::LengthMismatch {
            blob: blob(),
            expected: 4,
            found: 5
        })
    );
    assert_eq!(
        p.peer_has(&1, &blob(), 4),
        Err(PickerError::IndexOutOfRange {
            blob: blob(),
            index: 4,
            count: 4
        })
    );
    let other = Digest::of(b"other");
    assert_eq!(
        p.peer_has(&1, &other, 0),
        Err(PickerError::UnknownBlob(other))
    );
    assert_eq!(
        p.set_cursor(&other, 0),
        Err(PickerError::UnknownBlob(other))
    );
    assert!(p.add_blob(other, size(3), CS, Bitfield::new(4)).is_err());
    assert!(p.chunk_received(&blob(), 9, None).is_err());
}

#[test]
fn completion_and_lost_chunks() {
    let mut p = picker(config(), 2);
    p.peer_has_all(&1, &blob()).unwrap();
    for r in p.next_requests(0) {
        p.chunk_received(&blob(), r.index, Some(&r.peer)).unwrap();
    }
    assert!(p.is_complete(&blob()));
    assert!(p.next_requests(1).is_empty());
    p.chunk_lost(&blob(), 1).unwrap();
    assert_eq!(p.missing(&blob()), Some(1));
    assert_eq!(indices(&p.next_requests(2)), vec![1]);
    // Removing the blob hands back its outstanding requests.
    assert_eq!(p.remove_blob(&blob()).len(), 1);
    assert_eq!(p.in_flight(&1), 0);
}

#[test]
fn contended_window_chunks_are_left_to_rarest_first() {
    // One seed, and another node known to lack everything: the front chunks
    // are contended, so they are not requested as window chunks (the two
    // nodes should fetch different chunks from the seed and trade).
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 2,
            window_chunks: 4,
            ..config()
        },
        64,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    p.peer_bitfield(&2, &blob(), Bitfield::new(64)).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs.iter().all(|r| r.kind == RequestKind::Rarest),
        "{reqs:?}"
    );
    // Once the other node holds chunk 0 too, it is a window chunk again.
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 2,
            window_chunks: 4,
            ..config()
        },
        64,
    );
    p.peer_has_all(&1, &blob()).unwrap();
    p.peer_bitfield(&2, &blob(), bits(64, [0])).unwrap();
    let reqs = p.next_requests(0);
    assert_eq!(reqs[0].index, 0);
    assert_eq!(reqs[0].kind, RequestKind::Window);
    assert_eq!(
        reqs[0].peer, 2,
        "the holder with fewer chunks spares the seed"
    );
}

mod invariants {
    //! Random event sequences: whatever happens, the picker's requests
    //! respect its rules and its bookkeeping stays consistent.

    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Debug, Clone)]
    enum Op {
        Bitfield(u32, Vec<bool>),
        Has(u32, u32),
        RemovePeer(u32),
        Next,
        Receive(usize),
        Fail(usize, u8),
        Advance(u64),
        Cursor(u32),
        Lost(u32),
        Arrive(usize),
        Land(usize, bool),
        Begin(usize),
    }

    const CHUNKS: u32 = 24;
    const PEERS: u32 = 5;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..PEERS,
                proptest::collection::vec(any::<bool>(), CHUNKS as usize)
            )
                .prop_map(|(p, b)| Op::Bitfield(p, b)),
            (0..PEERS, 0..CHUNKS).prop_map(|(p, i)| Op::Has(p, i)),
            (0..PEERS).prop_map(Op::RemovePeer),
            Just(Op::Next),
            Just(Op::Next),
            any::<usize>().prop_map(Op::Receive),
            (any::<usize>(), 0u8..3).prop_map(|(i, r)| Op::Fail(i, r)),
            (0u64..3000).prop_map(Op::Advance),
            (0..=CHUNKS).prop_map(Op::Cursor),
            (0..CHUNKS).prop_map(Op::Lost),
            any::<usize>().prop_map(Op::Arrive),
            (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Land(i, ok)),
            any::<usize>().prop_map(Op::Begin),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn rules_hold_under_random_events(
            ops in proptest::collection::vec(op(), 1..80),
            cap in 1usize..4,
            window in 0u32..6,
            endgame in 0u32..5,
            seed in any::<u64>(),
        ) {
            let cfg = PickerConfig {
                max_in_flight_per_peer: cap,
                window_chunks: window,
                endgame_threshold: endgame,
                max_requests_per_chunk: 2,
                endgame_min_age_ms: 0,
                endgame_begun_chunk_times: 8,
                seed,
                timeout_base_ms: 1_000,
                timeout_ms_per_mib: 1_000,
                busy_backoff_ms: 300,
                spare_patience_ms: 1_000,
            };
            let mut p = picker(cfg, CHUNKS);
            // Our model of what peers hold and what we hold.
            let mut holds: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
            let mut have: BTreeSet<u32> = BTreeSet::new();
            // Chunks whose bytes arrived and are being written, by sender.
            let mut landing: BTreeMap<u32, u32> = BTreeMap::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Bitfield(peer, b) => {
                        let set: BTreeSet<u32> = (0..CHUNKS).filter(|&i| b[i as usize]).collect();
                        p.peer_bitfield(&peer, &blob(), bits(CHUNKS, set.iter().copied())).unwrap();
                        holds.insert(peer, set);
                    }
                    Op::Has(peer, i) => {
                        p.peer_has(&peer, &blob(), i).unwrap();
                        holds.entry(peer).or_default().insert(i);
                    }
                    Op::RemovePeer(peer) => {
                        let dropped = p.remove_peer(&peer);
                        prop_assert!(dropped.iter().all(|r| r.peer == peer));
                        holds.remove(&peer);
                    }
                    Op::Next => {
                        let missing_before = CHUNKS - have.len() as u32;
                        let outstanding: BTreeSet<(u32, u32)> =
                            p.outstanding().iter().map(|r| (r.peer, r.index)).collect();
                        for r in p.next_requests(now) {
                            prop_assert!(holds.get(&r.peer).is_some_and(|h| h.contains(&r.index)),
                                "{r:?} goes to a peer that does not hold the chunk");
                            prop_assert!(!have.contains(&r.index), "{r:?} for a chunk we hold");
                            prop_assert!(!landing.contains_key(&r.index), "{r:?} for a chunk being written");
                            prop_assert!(!outstanding.contains(&(r.peer, r.index)), "{r:?} repeats an outstanding request");
                            if r.kind == RequestKind::Endgame {
                                prop_assert!(missing_before <= endgame, "endgame with {missing_before} missing");
                            }
                        }
                    }
                    Op::Receive(k) => {
                        let out = p.outstanding();
                        if !out.is_empty() {
                            let r = &out[k % out.len()];
                            let others = p.chunk_received(&blob(), r.index, Some(&r.peer)).unwrap();
                            prop_assert!(others.iter().all(|o| o.index == r.index && o.peer != r.peer));
                            have.insert(r.index);
                            landing.remove(&r.index);
                        }
                    }
                    Op::Fail(k, reason) => {
                        let out = p.outstanding();
                        if !out.is_empty() {
                            let r = &out[k % out.len()];
                            let reason = [FailReason::NotHave, FailReason::Busy, FailReason::Error][reason as usize];
                            p.request_failed(&r.peer, &blob(), r.index, reason, now);
                            if reason == FailReason::NotHave {
                                if let Some(h) = holds.get_mut(&r.peer) { h.remove(&r.index); }
                            }
                        }
                    }
                    Op::Advance(ms) => {
                        now += ms;
                        for r in p.expire(now) {
                            prop_assert!(now >= p.timeout_ms(&blob(), r.index).unwrap());
                        }
                    }
                    Op::Cursor(c) => p.set_cursor(&blob(), c).unwrap(),
                    Op::Lost(i) => {
                        p.chunk_lost(&blob(), i).unwrap();
                        have.remove(&i);
                    }
                    Op::Arrive(k) => {
                        let out = p.outstanding();
                        if !out.is_empty() {
                            let r = &out[k % out.len()];
                            p.chunk_arrived(&blob(), r.index, &r.peer).unwrap();
                            prop_assert_eq!(p.outstanding().len(), out.len() - 1);
                            landing.insert(r.index, r.peer);
                        }
                    }
                    Op::Begin(k) => {
                        // An answer beginning changes no request.
                        let out = p.outstanding();
                        if !out.is_empty() {
                            let r = &out[k % out.len()];
                            p.answer_began(&blob(), r.index, &r.peer, now);
                            prop_assert_eq!(p.outstanding(), out);
                        }
                    }
                    Op::Land(k, ok) => {
                        let all: Vec<(u32, u32)> = landing.iter().map(|(i, p)| (*i, *p)).collect();
                        if !all.is_empty() {
                            let (index, peer) = all[k % all.len()];
                            landing.remove(&index);
                            if ok {
                                p.chunk_received(&blob(), index, Some(&peer)).unwrap();
                                have.insert(index);
                            } else {
                                p.request_failed(&peer, &blob(), index, FailReason::Error, now);
                            }
                        }
                    }
                }
                // Bookkeeping invariants after every event.
                let out = p.outstanding();
                let mut per_peer: BTreeMap<u32, usize> = BTreeMap::new();
                let mut per_chunk: BTreeMap<u32, usize> = BTreeMap::new();
                for r in &out {
                    *per_peer.entry(r.peer).or_default() += 1;
                    *per_chunk.entry(r.index).or_default() += 1;
                }
                for peer in 0..PEERS {
                    let n = per_peer.get(&peer).copied().unwrap_or(0);
                    prop_assert_eq!(p.in_flight(&peer), n);
                    prop_assert!(n <= cap, "peer {} has {} in flight, cap {}", peer, n, cap);
                }
                prop_assert!(per_chunk.values().all(|&n| n <= 2));
                prop_assert_eq!(p.missing(&blob()), Some(CHUNKS - have.len() as u32));
                for i in 0..CHUNKS {
                    let holders = holds.values().filter(|h| h.contains(&i)).count() as u32;
                    prop_assert_eq!(p.availability(&blob(), i), holders, "availability of {}", i);
                }
            }
        }
    }
}

#[test]
fn try_elsewhere_backs_a_lone_holder_off_that_chunk_only() {
    let mut p = picker(config(), 2);
    p.peer_bitfield(&1, &blob(), bits(2, [0, 1])).unwrap();
    let first = p.next_requests(0);
    assert_eq!(sorted(&first), vec![0, 1]);
    p.request_failed(&1, &blob(), 0, FailReason::TryElsewhere, 10);
    // Peer 1 is the only holder, yet chunk 0 is not asked of it again
    // until the backoff (500 ms) passes...
    assert!(p.next_requests(10).is_empty());
    assert!(p.next_requests(509).is_empty());
    assert!(p.is_wanted(&blob(), 0));
    // ...while another holder gets it at once.
    p.peer_bitfield(&2, &blob(), bits(2, [0])).unwrap();
    let r = p.next_requests(20);
    assert_eq!((r[0].peer, r[0].index), (2, 0));
    // Alone again (peer 2 was wrong about it), peer 1 is asked once the
    // backoff has passed.
    p.request_failed(&2, &blob(), 0, FailReason::NotHave, 30);
    assert_eq!(indices(&p.next_requests(510)), vec![0]);
}

#[test]
fn a_seed_that_spared_a_chunk_waits_its_patience_while_another_holder_has_it() {
    let mut p = picker(config(), 2);
    // Peer 1 is the seed (holds both chunks), peer 2 holds chunk 0.
    p.peer_bitfield(&1, &blob(), bits(2, [0, 1])).unwrap();
    p.peer_bitfield(&2, &blob(), bits(2, [0])).unwrap();
    p.set_peer_limit(&2, Some(0));
    // Peer 2 takes no requests for now: both chunks go to the seed.
    assert_eq!(sorted(&p.next_requests(0)), vec![0, 1]);
    p.request_failed(&1, &blob(), 0, FailReason::TryElsewhere, 10);
    p.set_peer_limit(&2, Some(1));
    p.request_failed(&2, &blob(), 0, FailReason::Busy, 300);
    // Past the backoff (510) the seed is free and peer 2 still busy
    // (until 800), yet the seed is not asked again: peer 2 holds the
    // chunk.
    assert!(p.next_requests(600).is_empty());
    let r = p.next_requests(800);
    assert_eq!((r[0].peer, r[0].index), (2, 0));
    p.request_failed(&2, &blob(), 0, FailReason::Busy, 4_900);
    assert!(p.next_requests(5_000).is_empty());
    // Its patience (5 s since the first refusal) spent, the seed is asked
    // while peer 2 is still busy.
    let r = p.next_requests(5_010);
    assert_eq!((r[0].peer, r[0].index), (1, 0));
}

#[test]
fn total_and_per_peer_limits_cap_outstanding_requests() {
    let mut p = picker(config(), 10);
    for peer in 1..=3 {
        p.peer_bitfield(&peer, &blob(), Bitfield::full(10)).unwrap();
    }
    p.set_total_limit(Some(4));
    p.set_peer_limit(&1, Some(1));
    let r = p.next_requests(0);
    assert_eq!(r.len(), 4);
    assert_eq!(r.iter().filter(|q| q.peer == 1).count(), 1);
    assert!(!p.peer_open(&1, 0));
    assert!(p.peer_open(&2, 0));
    assert!(p.next_requests(0).is_empty(), "at the total limit");
    p.chunk_received(&blob(), r[0].index, Some(&r[0].peer))
        .unwrap();
    assert!(!p.is_wanted(&blob(), r[0].index));
    assert_eq!(p.next_requests(0).len(), 1);
    p.set_total_limit(None);
    assert_eq!(p.next_requests(0).len(), 5);
}

#[test]
fn an_arrived_chunk_frees_its_peers_pipeline_and_is_asked_of_nobody_while_it_lands() {
    let mut p = picker(
        PickerConfig {
            max_in_flight_per_peer: 1,
            ..config()
        },
        2,
    );
    p.peer_bitfield(&1, &blob(), bits(2, [0, 1])).unwrap();
    let first = p.next_requests(0);
    assert_eq!(first.len(), 1, "{first:?}");
    let landed = first[0].index;
    // Peer 1 is at its limit until the bytes are in hand...
    assert!(p.next_requests(10).is_empty());
    p.chunk_arrived(&blob(), landed, &1).unwrap();
    assert_eq!(p.in_flight(&1), 0);
    // ...then its next request goes out while the chunk is written, and
    // nobody is asked for the landing chunk.
    let next = p.next_requests(20);
    assert_eq!(indices(&next), vec![1 - landed], "{next:?}");
    assert!(!p.is_wanted(&blob(), landed));
    // The write failed (corrupt bytes): requestable again, from another
    // holder than the sender.
    p.request_failed(&1, &blob(), landed, FailReason::Error, 30);
    assert!(p.is_wanted(&blob(), landed));
    p.peer_bitfield(&2, &blob(), bits(2, [landed])).unwrap();
    let again = p.next_requests(40);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0].peer, again[0].index), (2, landed));
    // A landing that verifies is held; the sender's count is not taken
    // twice.
    p.chunk_arrived(&blob(), 1 - landed, &1).unwrap();
    p.chunk_received(&blob(), 1 - landed, Some(&1)).unwrap();
    assert_eq!(p.in_flight(&1), 0);
    assert_eq!(p.in_flight(&2), 1);
    assert_eq!(p.missing(&blob()), Some(1));
}

#[test]
fn known_digests_after_a_gap_are_requested() {
    let mut p = picker(config(), 10);
    p.peer_has_all(&1, &blob()).unwrap();
    // Digests of chunks 0..3 and 8 missed; 3..8 and 9 known.
    let mut known = Bitfield::new(10);
    for i in (3..8).chain([9]) {
        known.set(i);
    }
    p.set_known_digests(&blob(), &known).unwrap();
    assert_eq!(sorted(&p.next_requests(0)), vec![3, 4, 5, 6, 7, 9]);
    assert!(!p.is_wanted(&blob(), 0) && !p.is_wanted(&blob(), 8));
    // The gap's digests arrive: only its chunks are new.
    p.set_known_digests(&blob(), &Bitfield::full(10)).unwrap();
    assert_eq!(sorted(&p.next_requests(0)), vec![0, 1, 2, 8]);
    // A set of another length is refused.
    assert!(matches!(
        p.set_known_digests(&blob(), &Bitfield::full(9)),
        Err(PickerError::LengthMismatch { .. })
    ));
}
