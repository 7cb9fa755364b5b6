//! Prints how long the picker takes per decision on large swarms
//! (`cargo bench -p edgeswarm-protocol --bench picker`). Figures, not
//! asserts: the node calls `next_requests` after every swarm event, so a
//! call must stay far below a chunk's transfer time (~10 ms for 1 MiB at
//! 100 Mbit/s).

use std::time::Instant;

use edgeswarm_protocol::picker::{Picker, PickerConfig};
use edgeswarm_protocol::{Bitfield, ChunkSize, Digest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn run(chunks: u32, peers: u32) {
    let blob = Digest::of(b"bench");
    let cs = ChunkSize::DEFAULT;
    let mut picker = Picker::new(PickerConfig {
        seed: 1,
        ..PickerConfig::default()
    });
    picker
        .add_blob(
            blob,
            chunks as u64 * cs.get() as u64,
            cs,
            Bitfield::new(chunks),
        )
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for p in 0..peers {
        let mut b = Bitfield::new(chunks);
        for i in 0..chunks {
            if rng.gen_bool(0.3) {
                b.set(i);
            }
        }
        picker.peer_bitfield(&p, &blob, b).unwrap();
    }
    let mut calls = 0u64;
    let mut requests = 0u64;
    let mut have_events = 0u64;
    let start = Instant::now();
    let mut now = 0;
    while !picker.is_complete(&blob) && calls < 1_000_000 {
        now += 1;
        let reqs = picker.next_requests(now);
        calls += 1;
        requests += reqs.len() as u64;
        for r in picker.outstanding().into_iter().take(4) {
            picker
                .chunk_received(&blob, r.index, Some(&r.peer))
                .unwrap();
            // Other peers announce chunks meanwhile: calls without new capacity.
            for _ in 0..5 {
                let p = rng.gen_range(0..peers);
                let i = rng.gen_range(0..chunks);
                picker.peer_has(&p, &blob, i).unwrap();
                requests += picker.next_requests(now).len() as u64;
                calls += 1;
                have_events += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{chunks} chunks, {peers} peers: {calls} next_requests calls ({have_events} after Have events), {requests} requests, {:.1} us/call, complete: {}",
        elapsed.as_secs_f64() * 1e6 / calls as f64,
        picker.is_complete(&blob)
    );
}

fn main() {
    for (chunks, peers) in [(64, 20), (512, 20), (2048, 50), (8192, 100)] {
        run(chunks, peers);
    }
}
