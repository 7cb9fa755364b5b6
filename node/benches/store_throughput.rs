//! Store throughput: write + verify (per-chunk hash, write, journal,
//! fsyncs by the store's flusher, whole-blob check at the end) of a 256
//! MiB blob in chunks of the default size (`ChunkSize::DEFAULT`, what
//! nodes store), then an in-order read through `BlobReader` (re-verifies
//! every chunk), then reopening a half-written blob (re-hashes every
//! chunk held).
//!
//! `cargo bench -p edgeswarm-node --bench store_throughput`
//! (`STORE_BENCH_DIR` picks the file system; default: the temp dir;
//! `STORE_BENCH_MIB` the blob size).

use std::io::Read;
use std::time::Instant;

use bytes::Bytes;
use edgeswarm_node::store::{Store, StoreConfig, WriteOutcome};
use edgeswarm_protocol::{ChunkMap, ChunkMapBuilder, ChunkSize, Digest};

/// The chunk size nodes use (the bench once hard-coded 1 MiB and failed
/// on every write when the default became 512 KiB).
const CS: usize = ChunkSize::DEFAULT.get() as usize;
/// Distinct chunks the blob repeats.
const POOL: u32 = 16;

fn chunk(i: u32, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn mibs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

/// The chunk map and digest of the benches' blob: `chunks` chunks
/// repeating the pool's.
fn blob_layout(chunks: u32) -> (ChunkMap, Digest) {
    let mut b = ChunkMapBuilder::new(ChunkSize::DEFAULT);
    for i in 0..chunks {
        b.update(&chunk(i % POOL, CS));
    }
    b.finish()
}

/// The pool's distinct chunks, generated ahead of time (16 MiB, not the
/// whole blob) so only the store is timed.
fn chunk_pool() -> Vec<Bytes> {
    (0..POOL).map(|i| Bytes::from(chunk(i, CS))).collect()
}

async fn write_all(store: &Store, chunks: u32, concurrency: usize) -> f64 {
    let (map, digest) = blob_layout(chunks);
    store.put_chunk_map(digest, &map).await.unwrap();
    let pool = chunk_pool();
    let start = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..chunks as usize {
        let c = pool[i % POOL as usize].clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = store.write_chunk(digest, i as u32, c).await.unwrap();
            drop(permit);
            r
        }));
    }
    let mut complete = 0;
    for t in tasks {
        if t.await.unwrap() == WriteOutcome::BlobComplete {
            complete += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(complete, 1);
    let rate = mibs(chunks as u64 * CS as u64, secs);
    println!(
        "write+verify {} MiB in {} KiB chunks, {concurrency} in flight: {secs:.2} s, {rate:.0} MiB/s (incl. whole-blob check)",
        (chunks as u64 * CS as u64) >> 20,
        CS >> 10
    );

    let start = Instant::now();
    let mut r = store.reader(digest).unwrap();
    let n = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break total;
            }
            total += n as u64;
        }
    })
    .await
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "BlobReader in-order read+verify: {:.0} MiB/s",
        mibs(n, secs)
    );
    rate
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mib: u32 = std::env::var("STORE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let chunks = (mib as u64 * (1 << 20) / CS as u64) as u32;
    let base = std::env::var("STORE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    // Baseline under the current machine load: sha256 alone over the same bytes.
    let pool: Vec<Vec<u8>> = (0..POOL).map(|i| chunk(i, CS)).collect();
    let start = Instant::now();
    for i in 0..chunks {
        std::hint::black_box(edgeswarm_protocol::Digest::of(&pool[(i % POOL) as usize]));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "baseline sha256 only: {:.0} MiB/s",
        mibs(chunks as u64 * CS as u64, secs)
    );
    drop(pool);
    for concurrency in [1, 4] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
            .await
            .unwrap();
        write_all(&store, chunks, concurrency).await;
    }

    // Recovery cost: half a blob held, reopen re-hashes it.
    let dir = tempfile::tempdir_in(&base).unwrap();
    let (map, digest) = blob_layout(chunks);
    {
        let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
            .await
            .unwrap();
        store.put_chunk_map(digest, &map).await.unwrap();
        for i in 0..chunks / 2 {
            store
                .write_chunk(digest, i, Bytes::from(chunk(i % POOL, CS)))
                .await
                .unwrap();
        }
    }
    let start = Instant::now();
    let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let held = store.bitfield(&digest).unwrap().count_ones();
    println!(
        "reopen with {} MiB held (re-verified): {secs:.2} s, {:.0} MiB/s",
        (held as u64 * CS as u64) >> 20,
        mibs(held as u64 * CS as u64, secs)
    );
    drop(store);

    for kept in [StoreConfig::default().recent_chunks, 0] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        serve_after_store(dir.path(), chunks, kept).await;
    }
}

/// Reads each chunk `READS_PER_CHUNK` times right after storing it (as
/// peers ask a node for the chunk it just got), with `kept` recently
/// verified chunks in memory, and prints the time per chunk served (the
/// reads run one at a time, so on an idle machine that is their CPU).
async fn serve_after_store(dir: &std::path::Path, chunks: u32, kept: usize) {
    const READS_PER_CHUNK: u32 = 2;
    let config = StoreConfig {
        recent_chunks: kept,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.to_path_buf(), config).await.unwrap();
    let (map, digest) = blob_layout(chunks);
    store.put_chunk_map(digest, &map).await.unwrap();
    let pool = chunk_pool();
    let mut reading = std::time::Duration::ZERO;
    for i in 0..chunks {
        store
            .write_chunk(digest, i, pool[(i % POOL) as usize].clone())
            .await
            .unwrap();
        let start = Instant::now();
        for _ in 0..READS_PER_CHUNK {
            let bytes = store.read_chunk(digest, i).await.unwrap();
            assert_eq!(bytes.len(), CS);
            store.recycle_chunk(bytes);
        }
        reading += start.elapsed();
    }
    let served = (chunks * READS_PER_CHUNK) as f64;
    let stats = store.recent_stats();
    println!(
        "serve each chunk {READS_PER_CHUNK}x right after storing it, {kept} kept in memory: \
         {:.1} us per chunk served ({} from memory, {} from disk)",
        reading.as_secs_f64() / served * 1e6,
        stats.hits,
        stats.misses
    );
}
