//! A pure-model swarm simulation of the piece picker: one seed, 20 nodes,
//! rounds in which each node uploads at most `k` chunks (extra requests are
//! answered `Busy`). Checks that everyone completes and that rarest-first
//! plus load balancing keep the seed's upload near one copy of the blob.

use edgeswarm_protocol::picker::{FailReason, Picker, PickerConfig};
use edgeswarm_protocol::{Bitfield, ChunkSize, Digest};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Outcome of one simulated rollout.
struct SimResult {
    rounds: u64,
    /// Mean over nodes of the round at which the consumer cursor (first
    /// missing chunk) passed half the blob: how early in-order consumption
    /// (decompression) can make progress.
    half_consumed_round: f64,
    uploads: Vec<u64>,
    complete: usize,
}

fn simulate(seeds: u32, nodes: u32, chunks: u32, k: usize, window: u32, seed: u64) -> SimResult {
    let blob = Digest::of(b"sim blob");
    let chunk_size = ChunkSize::MIN;
    let blob_size = chunks as u64 * chunk_size.get() as u64;
    let peers = seeds + nodes; // peers 0..seeds are seeds
    let mut have: Vec<Bitfield> = (0..peers)
        .map(|p| {
            if p < seeds {
                Bitfield::full(chunks)
            } else {
                Bitfield::new(chunks)
            }
        })
        .collect();
    let mut pickers: Vec<Picker<u32>> = (0..peers)
        .map(|me| {
            let mut picker = Picker::new(PickerConfig {
                max_in_flight_per_peer: 4,
                window_chunks: window,
                endgame_threshold: 4,
                max_requests_per_chunk: 2,
                endgame_min_age_ms: 0,
                endgame_begun_chunk_times: PickerConfig::default().endgame_begun_chunk_times,
                seed: seed ^ (me as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                timeout_base_ms: 60_000,
                timeout_ms_per_mib: 0,
                busy_backoff_ms: 100,
                spare_patience_ms: PickerConfig::default().spare_patience_ms,
            });
            picker
                .add_blob(blob, blob_size, chunk_size, have[me as usize].clone())
                .unwrap();
            for other in 0..peers {
                if other != me {
                    picker
                        .peer_bitfield(&other, &blob, have[other as usize].clone())
                        .unwrap();
                }
            }
            picker
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut uploads = vec![0u64; peers as usize];
    let mut round = 0u64;
    let mut half_at = vec![None::<u64>; peers as usize];
    while round < 10_000 && (seeds..peers).any(|p| !have[p as usize].is_complete()) {
        round += 1;
        let now = round * 100;
        // Requests arrive at uploaders.
        let mut queues: Vec<Vec<(u32, u32)>> = vec![Vec::new(); peers as usize];
        for me in seeds..peers {
            for r in pickers[me as usize].next_requests(now) {
                assert!(
                    have[r.peer as usize].get(r.index),
                    "asked a peer for a chunk it lacks"
                );
                queues[r.peer as usize].push((me, r.index));
            }
        }
        // Each uploader serves at most k, the rest are Busy. Like a real
        // server reading one stream per requester, it takes each
        // requester's requests in the order they were sent, round-robin
        // over the requesters (in random order).
        let mut delivered = Vec::new();
        let mut busy = Vec::new();
        for (uploader, queue) in queues.iter_mut().enumerate() {
            let mut requesters: Vec<u32> = queue.iter().map(|&(r, _)| r).collect();
            requesters.sort_unstable();
            requesters.dedup();
            requesters.shuffle(&mut rng);
            let mut per: Vec<std::collections::VecDeque<u32>> = requesters
                .iter()
                .map(|r| queue.iter().filter(|q| q.0 == *r).map(|q| q.1).collect())
                .collect();
            let mut order = Vec::new();
            while per.iter().any(|q| !q.is_empty()) {
                for (i, q) in per.iter_mut().enumerate() {
                    if let Some(index) = q.pop_front() {
                        order.push((requesters[i], index));
                    }
                }
            }
            for (i, &(requester, index)) in order.iter().enumerate() {
                if i < k {
                    uploads[uploader] += 1;
                    delivered.push((uploader as u32, requester, index));
                } else {
                    busy.push((uploader as u32, requester, index));
                }
            }
        }
        for (uploader, requester, index) in busy {
            pickers[requester as usize].request_failed(
                &uploader,
                &blob,
                index,
                FailReason::Busy,
                now,
            );
        }
        let mut new_haves = Vec::new();
        for (uploader, requester, index) in delivered {
            pickers[requester as usize]
                .chunk_received(&blob, index, Some(&uploader))
                .unwrap();
            if have[requester as usize].set(index) {
                new_haves.push((requester, index));
            }
        }
        for (holder, index) in new_haves {
            for (p, picker) in pickers.iter_mut().enumerate() {
                if p as u32 != holder {
                    picker.peer_has(&holder, &blob, index).unwrap();
                }
            }
        }
        for me in seeds..peers {
            let cursor = have[me as usize].next_zero(0).unwrap_or(chunks);
            pickers[me as usize].set_cursor(&blob, cursor).unwrap();
            if cursor >= chunks / 2 && half_at[me as usize].is_none() {
                half_at[me as usize] = Some(round);
            }
        }
    }
    SimResult {
        rounds: round,
        half_consumed_round: half_at[seeds as usize..]
            .iter()
            .map(|r| r.unwrap_or(round) as f64)
            .sum::<f64>()
            / nodes as f64,
        uploads,
        complete: (seeds..peers)
            .filter(|&p| have[p as usize].is_complete())
            .count(),
    }
}

#[test]
fn twenty_nodes_complete_and_seed_uploads_about_one_copy() {
    let chunks = 100;
    let k = 2;
    let r = simulate(1, 20, chunks, k, 4, 7);
    let seed_uploads = r.uploads[0];
    let total: u64 = r.uploads.iter().sum();
    println!(
        "rounds {} seed uploads {} ({:.2}x blob), total uploads {} (ideal {}), lower bound rounds {}",
        r.rounds,
        seed_uploads,
        seed_uploads as f64 / chunks as f64,
        total,
        20 * chunks,
        (20 * chunks as u64).div_ceil(21 * k as u64),
    );
    assert_eq!(r.complete, 20, "every node completes");
    assert!(
        seed_uploads as f64 <= 1.2 * chunks as f64,
        "seed uploaded {seed_uploads} chunks of a {chunks}-chunk blob"
    );
}

/// Sweeps window sizes, upload rates and seeds: every configuration must
/// complete; prints the figures (`--nocapture`) for tuning.
#[test]
fn every_configuration_completes() {
    for window in [0, 8, 16] {
        for k in [2, 4] {
            for seed in 0..2 {
                let r = simulate(1, 20, 100, k, window, seed);
                println!(
                    "window {window} k {k} seed {seed}: rounds {} half consumed at {:.1} seed x{:.2} complete {}",
                    r.rounds,
                    r.half_consumed_round,
                    r.uploads[0] as f64 / 100.0,
                    r.complete
                );
                assert_eq!(r.complete, 20, "window {window} k {k} seed {seed}");
                assert!(r.uploads[0] <= 125, "seed uploaded {}", r.uploads[0]);
            }
        }
    }
}

/// A well-supplied swarm (4 seeds, 2 nodes, one upload per seed per round):
/// with a deadline window the consumer cursor passes half the blob about
/// halfway through; without one, rarest-first order scatters chunks and
/// the front is complete only near the end.
#[test]
fn deadline_window_lets_consumption_start_early() {
    let with = simulate(4, 2, 100, 1, 8, 3);
    let without = simulate(4, 2, 100, 1, 0, 3);
    println!(
        "half consumed at round {:.1} of {} with window, {:.1} of {} without",
        with.half_consumed_round, with.rounds, without.half_consumed_round, without.rounds
    );
    assert_eq!(with.complete, 2);
    assert_eq!(without.complete, 2);
    assert!(with.half_consumed_round < 0.7 * with.rounds as f64);
    assert!(without.half_consumed_round > 0.8 * without.rounds as f64);
}

/// One node fetching from one seed (no contention): the window makes the
/// chunks arrive in order, so consumption tracks download.
#[test]
fn lone_node_gets_chunks_in_order() {
    let with = simulate(1, 1, 100, 4, 8, 5);
    let without = simulate(1, 1, 100, 4, 0, 5);
    println!(
        "lone node: half consumed at round {:.1} of {} with window, {:.1} of {} without",
        with.half_consumed_round, with.rounds, without.half_consumed_round, without.rounds
    );
    assert_eq!(with.complete, 1);
    assert!(with.half_consumed_round <= 0.6 * with.rounds as f64);
    assert!(without.half_consumed_round > 0.8 * without.rounds as f64);
}
