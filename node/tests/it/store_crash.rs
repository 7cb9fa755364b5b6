//! A process killed (SIGKILL) mid-write, then restarted: every chunk it
//! acknowledged is kept, every bit set re-verifies, and the rest (including
//! the one being written when it died) is accepted again.
//!
//! The test re-executes its own binary in a child mode selected by an
//! environment variable; the child writes chunks in a loop, printing each
//! acknowledged index, until the parent kills it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeswarm_node::store::{Store, StoreConfig, WriteOutcome};
use edgeswarm_protocol::{ChunkMapBuilder, ChunkSize, Digest};

/// Selects the child mode; its value is the store directory.
const CHILD_ENV: &str = "EDGESWARM_STORE_CRASH_CHILD";
/// Chunks in the test blob (64 KiB each: 48 MiB).
const CHUNKS: u32 = 768;
const CS: usize = 64 << 10;

/// Chunk `i` of the test blob (xorshift, deterministic).
fn chunk(i: u32) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut out = Vec::with_capacity(CS);
    while out.len() < CS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The blob's digest and chunk map.
fn blob() -> (Digest, edgeswarm_protocol::ChunkMap) {
    let mut b = ChunkMapBuilder::new(ChunkSize::MIN);
    for i in 0..CHUNKS {
        b.update(&chunk(i));
    }
    let (map, digest) = b.finish();
    (digest, map)
}

/// Child mode: write every chunk, in an order that is not sequential,
/// reporting each acknowledged index on stdout, then idle until killed.
async fn child(dir: &Path) {
    let store = Store::open(dir.to_path_buf(), StoreConfig::default())
        .await
        .unwrap();
    let (digest, map) = blob();
    store.put_chunk_map(digest, &map).await.unwrap();
    println!("ready");
    for k in 0..CHUNKS {
        let i = (k * 7) % CHUNKS;
        store
            .write_chunk(digest, i, Bytes::from(chunk(i)))
            .await
            .unwrap();
        println!("stored {i}");
    }
    println!("done");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_write_keeps_verified_chunks_and_refetches_the_rest() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // We are the child process.
        child(Path::new(&dir)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            // The full test path: this file is a module of the `it` binary.
            "--exact",
            "store_crash::killed_mid_write_keeps_verified_chunks_and_refetches_the_rest",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Kill on any panic below.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = proc.stdout.take().unwrap();
    let mut guard = Kill(proc);
    let lines = tokio::task::spawn_blocking(move || {
        let mut acked = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        let start = Instant::now();
        while let Some(Ok(line)) = lines.next() {
            if let Some(i) = line.strip_prefix("stored ") {
                acked.push(i.parse::<u32>().unwrap());
                // Mid-way through the blob: pull the plug.
                if acked.len() == CHUNKS as usize / 3 {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(300), "child too slow");
        }
        (acked, lines)
    })
    .await
    .unwrap();
    let (acked, rest) = lines;
    // SIGKILL a moment later, while the child is busy writing more chunks.
    tokio::time::sleep(Duration::from_millis(25)).await;
    guard.0.kill().unwrap();
    let status = guard.0.wait().unwrap();
    assert!(!status.success(), "child was killed, not finished");
    // Anything it acknowledged after our cut-off line is also durable.
    let acked: Vec<u32> = acked
        .into_iter()
        .chain(
            rest.map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("stored ").map(|i| i.parse().unwrap())),
        )
        .collect();
    assert!(acked.len() < CHUNKS as usize, "killed before the end");

    let (digest, map) = blob();
    let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
        .await
        .unwrap();
    let bits = store.bitfield(&digest).expect("partial blob recovered");
    for &i in &acked {
        assert!(bits.get(i), "acknowledged chunk {i} survived the kill");
    }
    // Every bit set re-verifies against the chunk map.
    for i in bits.iter_ones() {
        let got = store.read_chunk(digest, i).await.unwrap();
        map.verify_chunk(i, &got).unwrap();
    }
    // Chunks whose bytes (some or all) reached the file but whose bit is
    // not set: writes in flight at the kill, torn or not yet journaled.
    let data = std::fs::read(
        dir.path()
            .join("partial")
            .join(digest.to_hex())
            .join("data"),
    )
    .unwrap();
    let in_flight = bits
        .iter_zeros()
        .filter(|&i| {
            data[i as usize * CS..(i as usize + 1) * CS]
                .iter()
                .any(|&b| b != 0)
        })
        .count();
    drop(data);
    // The missing chunks (including any torn one) are accepted again.
    let missing: Vec<u32> = bits.iter_zeros().collect();
    assert!(!missing.is_empty());
    let mut last = None;
    for i in missing {
        last = Some(
            store
                .write_chunk(digest, i, Bytes::from(chunk(i)))
                .await
                .unwrap(),
        );
    }
    assert_eq!(last, Some(WriteOutcome::BlobComplete));
    assert!(store.is_complete(&digest));
    eprintln!(
        "child acknowledged {} of {CHUNKS} chunks before SIGKILL; {} were set after restart; \
         {in_flight} unset chunk(s) had bytes on disk (in flight at the kill) and were fetched again",
        acked.len(),
        bits.count_ones()
    );
}
