//! Behaviour of `node::store` through its public API: round trips, typed
//! refusals, resume, torn and rotten chunks, quota and GC, pins, concurrent
//! readers while a blob is written.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use edgeswarm_node::store::{Store, StoreConfig, StoreError, StoreEvent, WriteOutcome};
use edgeswarm_protocol::{ChunkError, ChunkMap, ChunkSize, Digest};

use crate::support::corrupt;

/// Deterministic pseudo-random bytes (sha256 counter mode).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut block = seed.to_le_bytes().to_vec();
        block.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(Digest::of(&block).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A test blob: bytes, digest, chunk map.
struct TestBlob {
    bytes: Vec<u8>,
    digest: Digest,
    map: ChunkMap,
}

impl TestBlob {
    fn new(len: usize, seed: u64, cs: ChunkSize) -> Self {
        let bytes = data(len, seed);
        TestBlob {
            digest: Digest::of(&bytes),
            map: ChunkMap::from_bytes(&bytes, cs),
            bytes,
        }
    }
    fn chunk(&self, i: u32) -> Bytes {
        let r = self.map.chunk_range(i).unwrap();
        Bytes::copy_from_slice(&self.bytes[r.start as usize..r.end as usize])
    }
    fn offset(&self, i: u32) -> u64 {
        self.map.chunk_range(i).unwrap().start
    }
}

async fn open(dir: &Path) -> Store {
    Store::open(dir.to_path_buf(), StoreConfig::default())
        .await
        .unwrap()
}

/// A store that keeps no recently verified chunk in memory: every read
/// goes to disk (for the tests of rot under held chunks).
async fn open_reading_disk(dir: &Path) -> Store {
    let config = StoreConfig {
        recent_chunks: 0,
        ..StoreConfig::default()
    };
    Store::open(dir.to_path_buf(), config).await.unwrap()
}

fn partial_data(dir: &Path, blob: &Digest) -> std::path::PathBuf {
    dir.join("partial").join(blob.to_hex()).join("data")
}

#[tokio::test]
async fn round_trip_write_read_verify_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut events = store.subscribe();
    let t = TestBlob::new(5 * 65536 + 1234, 1, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    // Idempotent declaration.
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    let info = store.blob_info(&t.digest).unwrap();
    assert_eq!(
        (info.size, info.chunk_count, info.digests_known),
        (t.bytes.len() as u64, 6, 6)
    );
    assert_eq!(store.usage(), t.bytes.len() as u64);

    for i in [3u32, 0, 5, 1, 4] {
        assert_eq!(
            store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap(),
            WriteOutcome::Stored
        );
        assert_eq!(store.read_chunk(t.digest, i).await.unwrap(), t.chunk(i));
    }
    assert_eq!(
        store.write_chunk(t.digest, 3, t.chunk(3)).await.unwrap(),
        WriteOutcome::AlreadyHad
    );
    assert!(!store.is_complete(&t.digest));
    assert!(store.blob_path(&t.digest).is_none());
    assert!(matches!(
        store.read_chunk(t.digest, 2).await,
        Err(StoreError::ChunkMissing { index: 2, .. })
    ));
    assert_eq!(
        store.write_chunk(t.digest, 2, t.chunk(2)).await.unwrap(),
        WriteOutcome::BlobComplete
    );
    assert!(store.is_complete(&t.digest));
    let path = store.blob_path(&t.digest).unwrap();
    assert_eq!(
        path,
        dir.path().join("blobs/sha256").join(t.digest.to_hex())
    );
    assert_eq!(std::fs::read(&path).unwrap(), t.bytes);
    assert!(!dir.path().join("partial").join(t.digest.to_hex()).exists());
    // Chunks are still served from the complete blob.
    for i in 0..6 {
        assert_eq!(store.read_chunk(t.digest, i).await.unwrap(), t.chunk(i));
    }
    assert_eq!(
        store.write_chunk(t.digest, 0, t.chunk(0)).await.unwrap(),
        WriteOutcome::AlreadyHad
    );
    assert_eq!(*store.chunk_map(&t.digest).unwrap(), t.map);

    let mut stored = Vec::new();
    let mut complete = false;
    let mut learned = 0;
    while let Ok(ev) = events.try_recv() {
        match ev {
            StoreEvent::ChunkStored { blob, index } if blob == t.digest => stored.push(index),
            StoreEvent::BlobComplete { blob } if blob == t.digest => complete = true,
            StoreEvent::DigestsLearned { blob } if blob == t.digest => learned += 1,
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(stored, vec![3, 0, 5, 1, 4, 2]);
    assert!(complete);
    // The map's digests were new once: the repeated declaration taught
    // nothing.
    assert_eq!(learned, 1);

    // Survives a restart as a complete blob.
    drop(store);
    let store = open(dir.path()).await;
    assert!(store.is_complete(&t.digest));
    assert_eq!(store.read_chunk(t.digest, 5).await.unwrap(), t.chunk(5));
    assert_eq!(*store.chunk_map(&t.digest).unwrap(), t.map);

    // A lost chunk map is rebuilt from the blob (at the default chunk
    // size); debris of an interrupted create and temp files are removed.
    drop(store);
    let map_file = dir.path().join("maps/sha256").join(t.digest.to_hex());
    std::fs::remove_file(&map_file).unwrap();
    let debris = dir
        .path()
        .join("partial")
        .join(Digest::of(b"debris").to_hex());
    std::fs::create_dir_all(&debris).unwrap();
    std::fs::write(debris.join("data"), b"half").unwrap();
    std::fs::write(dir.path().join("tmp/123.4"), b"tmp").unwrap();
    let store = open(dir.path()).await;
    assert_eq!(
        *store.chunk_map(&t.digest).unwrap(),
        ChunkMap::from_bytes(&t.bytes, ChunkSize::DEFAULT)
    );
    assert!(map_file.exists());
    assert!(!debris.exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(store.blobs().len(), 1);
}

#[tokio::test]
async fn wrong_bytes_are_refused_with_typed_errors_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(3 * 65536 + 10, 2, ChunkSize::MIN);
    assert!(matches!(
        store.write_chunk(t.digest, 0, t.chunk(0)).await,
        Err(StoreError::UnknownBlob(d)) if d == t.digest
    ));
    store
        .create_blob(t.digest, t.bytes.len() as u64, ChunkSize::MIN)
        .await
        .unwrap();
    assert!(matches!(
        store.write_chunk(t.digest, 0, t.chunk(0)).await,
        Err(StoreError::DigestUnknown { index: 0, .. })
    ));
    store
        .add_chunk_digests(t.digest, 0, t.map.digests())
        .await
        .unwrap();

    let mut bad = t.chunk(1).to_vec();
    bad[100] ^= 1;
    let err = store
        .write_chunk(t.digest, 1, Bytes::from(bad))
        .await
        .unwrap_err();
    assert_digest_mismatch(&err, 1);
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(err.is_bad_chunk() && !err.is_local());
    assert!(matches!(
        store.write_chunk(t.digest, 3, t.chunk(0)).await,
        Err(StoreError::Chunk(ChunkError::WrongLength {
            index: 3,
            expected: 10,
            ..
        }))
    ));
    assert!(matches!(
        store.write_chunk(t.digest, 4, t.chunk(0)).await,
        Err(StoreError::Chunk(ChunkError::IndexOutOfRange {
            index: 4,
            count: 4
        }))
    ));
    // The right bytes at the wrong index.
    assert!(matches!(
        store.write_chunk(t.digest, 2, t.chunk(1)).await,
        Err(StoreError::Chunk(ChunkError::DigestMismatch {
            index: 2,
            ..
        }))
    ));
    assert_eq!(store.bitfield(&t.digest).unwrap().count_ones(), 0);
    // Nothing reached the data file: it is still all zeroes.
    let on_disk = std::fs::read(partial_data(dir.path(), &t.digest)).unwrap();
    assert!(on_disk.iter().all(|&b| b == 0));
    // Mismatching layout and digests are refused too.
    assert!(matches!(
        store.create_blob(t.digest, 5, ChunkSize::MIN).await,
        Err(StoreError::LayoutConflict { .. })
    ));
    assert!(matches!(
        store
            .add_chunk_digests(t.digest, 1, &[Digest::of(b"x")])
            .await,
        Err(StoreError::DigestConflict { index: 1, .. })
    ));
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.bitfield(&t.digest).unwrap().count_ones(), 0);
    assert_eq!(
        store.write_chunk(t.digest, 1, t.chunk(1)).await.unwrap(),
        WriteOutcome::Stored
    );
}

#[tokio::test]
async fn digests_streamed_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(4 * 65536, 3, ChunkSize::MIN);
    store
        .create_blob(t.digest, t.bytes.len() as u64, ChunkSize::MIN)
        .await
        .unwrap();
    store
        .add_chunk_digests(t.digest, 0, &t.map.digests()[..2])
        .await
        .unwrap();
    assert!(store.chunk_map(&t.digest).is_none());
    assert_eq!(store.blob_info(&t.digest).unwrap().digests_known, 2);
    assert_eq!(
        store.write_chunk(t.digest, 1, t.chunk(1)).await.unwrap(),
        WriteOutcome::Stored
    );
    assert!(matches!(
        store.write_chunk(t.digest, 2, t.chunk(2)).await,
        Err(StoreError::DigestUnknown { index: 2, .. })
    ));
    assert!(matches!(
        store
            .add_chunk_digests(t.digest, 3, &t.map.digests()[..2])
            .await,
        Err(StoreError::Chunk(ChunkError::IndexOutOfRange { .. }))
    ));
    // Digests known before a restart are still known after it.
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.blob_info(&t.digest).unwrap().digests_known, 2);
    store
        .add_chunk_digests(t.digest, 1, &t.map.digests()[1..])
        .await
        .unwrap();
    assert_eq!(*store.chunk_map(&t.digest).unwrap(), t.map);
    for i in [0, 2, 3] {
        store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
    }
    assert!(store.is_complete(&t.digest));
}

#[tokio::test]
async fn digests_after_a_gap_do_not_count_as_known() {
    // A node that missed the first digest updates learns later ones first:
    // they do not count in the known prefix (`digests_known`), and the
    // set a download requests from (`known_digests`) has them, not the gap.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(4 * 65536, 3, ChunkSize::MIN);
    store
        .create_blob(t.digest, t.bytes.len() as u64, ChunkSize::MIN)
        .await
        .unwrap();
    store
        .add_chunk_digests(t.digest, 2, &t.map.digests()[2..])
        .await
        .unwrap();
    assert_eq!(store.blob_info(&t.digest).unwrap().digests_known, 0);
    let known = store.known_digests(&t.digest).unwrap();
    assert_eq!(known.iter_ones().collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(store.authoritative_digests(&t.digest, 1), None);
    assert_eq!(store.authoritative_digests(&t.digest, 0), Some(vec![]));
    store
        .add_chunk_digests(t.digest, 0, &t.map.digests()[..1])
        .await
        .unwrap();
    assert_eq!(store.blob_info(&t.digest).unwrap().digests_known, 1);
    assert_eq!(
        store.authoritative_digests(&t.digest, 1),
        Some(t.map.digests()[..1].to_vec())
    );
    assert_eq!(store.authoritative_digests(&t.digest, 2), None);
    assert_eq!(
        store.authoritative_digests(&t.digest, 5),
        None,
        "past the end"
    );
    store
        .add_chunk_digests(t.digest, 1, &t.map.digests()[1..2])
        .await
        .unwrap();
    assert_eq!(store.blob_info(&t.digest).unwrap().digests_known, 4);
}

/// Held bytes count a partial blob's verified chunks (what a release
/// resumed after a restart held before it fetched anything), then the
/// whole blob.
#[tokio::test]
async fn held_bytes_count_verified_chunks_then_the_whole_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(3 * 65536 + 100, 4, ChunkSize::MIN);
    assert_eq!(store.held_bytes(&t.digest), 0, "not declared");
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    assert_eq!(store.held_bytes(&t.digest), 0);
    store.write_chunk(t.digest, 1, t.chunk(1)).await.unwrap();
    assert_eq!(store.held_bytes(&t.digest), 65536);
    for i in [0, 2, 3] {
        store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
    }
    assert!(store.is_complete(&t.digest));
    assert_eq!(store.held_bytes(&t.digest), t.bytes.len() as u64);
    // Reopened partial: its kept chunks are held.
    let u = TestBlob::new(2 * 65536, 5, ChunkSize::MIN);
    store.put_chunk_map(u.digest, &u.map).await.unwrap();
    store.write_chunk(u.digest, 0, u.chunk(0)).await.unwrap();
    store.flush().await.unwrap();
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.held_bytes(&u.digest), 65536);
}

#[tokio::test]
async fn resume_keeps_verified_chunks_and_bitfield() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestBlob::new(8 * 65536, 4, ChunkSize::MIN);
    let before = {
        let store = open(dir.path()).await;
        store.put_chunk_map(t.digest, &t.map).await.unwrap();
        for i in [0u32, 2, 3, 7] {
            store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
        }
        store.bitfield(&t.digest).unwrap()
    };
    let store = open(dir.path()).await;
    assert_eq!(store.bitfield(&t.digest).unwrap(), before);
    assert_eq!(*store.chunk_map(&t.digest).unwrap(), t.map);
    for i in [0u32, 2, 3, 7] {
        assert_eq!(
            store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap(),
            WriteOutcome::AlreadyHad
        );
    }
    for i in [1u32, 4, 5, 6] {
        store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
    }
    assert!(store.is_complete(&t.digest));
    assert_eq!(
        std::fs::read(store.blob_path(&t.digest).unwrap()).unwrap(),
        t.bytes
    );
}

#[tokio::test]
async fn torn_chunk_on_disk_is_cleared_on_reopen_and_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestBlob::new(4 * 65536, 5, ChunkSize::MIN);
    {
        let store = open(dir.path()).await;
        store.put_chunk_map(t.digest, &t.map).await.unwrap();
        for i in 0..3 {
            store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
        }
    }
    // A torn write: the tail of chunk 1 never reached the disk.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(partial_data(dir.path(), &t.digest))
        .unwrap();
    f.write_all_at(&vec![0u8; 4096], t.offset(2) - 4096)
        .unwrap();
    drop(f);
    let store = open(dir.path()).await;
    let bits = store.bitfield(&t.digest).unwrap();
    assert_eq!(bits.iter_ones().collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!(
        store.write_chunk(t.digest, 1, t.chunk(1)).await.unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(store.read_chunk(t.digest, 1).await.unwrap(), t.chunk(1));
    // The clear is durable: a second restart agrees.
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(
        store
            .bitfield(&t.digest)
            .unwrap()
            .iter_ones()
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[tokio::test]
async fn in_order_chunks_are_hashed_as_they_land_and_later_rot_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_reading_disk(dir.path()).await;
    let t = TestBlob::new(4 * 65536 + 9, 11, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    for i in 0..4 {
        store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
    }
    // Chunk 1 rots after it went into the in-order digest: the check at
    // completion does not re-read it (that is the saving)...
    corrupt(&partial_data(dir.path(), &t.digest), t.offset(1) + 3);
    assert_eq!(
        store.write_chunk(t.digest, 4, t.chunk(4)).await.unwrap(),
        WriteOutcome::BlobComplete
    );
    // ...and every read still re-verifies: the rot is found, the chunk
    // refetched, and the blob reads back intact.
    assert!(matches!(
        store.read_chunk(t.digest, 1).await,
        Err(StoreError::ChunkCorrupt { index: 1, .. })
    ));
    assert!(!store.is_complete(&t.digest));
    assert_eq!(
        store.write_chunk(t.digest, 1, t.chunk(1)).await.unwrap(),
        WriteOutcome::BlobComplete
    );
    assert_eq!(
        std::fs::read(store.blob_path(&t.digest).unwrap()).unwrap(),
        t.bytes
    );

    // Out of order: chunks landing after a gap are read back from disk
    // once the gap fills, so rot before that is hashed and found at
    // completion, and only the rotten chunk is fetched again.
    let u = TestBlob::new(4 * 65536 + 9, 12, ChunkSize::MIN);
    store.put_chunk_map(u.digest, &u.map).await.unwrap();
    for i in [4, 3, 2, 1] {
        store.write_chunk(u.digest, i, u.chunk(i)).await.unwrap();
    }
    corrupt(&partial_data(dir.path(), &u.digest), u.offset(2) + 5);
    assert_eq!(
        store.write_chunk(u.digest, 0, u.chunk(0)).await.unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(
        store
            .bitfield(&u.digest)
            .unwrap()
            .iter_zeros()
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(
        store.write_chunk(u.digest, 2, u.chunk(2)).await.unwrap(),
        WriteOutcome::BlobComplete
    );
    assert_eq!(
        std::fs::read(store.blob_path(&u.digest).unwrap()).unwrap(),
        u.bytes
    );
}

#[tokio::test]
async fn reads_reverify_and_clear_rotten_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_reading_disk(dir.path()).await;
    // Partial blob: rot under a set bit.
    let t = TestBlob::new(3 * 65536, 6, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    store.write_chunk(t.digest, 0, t.chunk(0)).await.unwrap();
    store.write_chunk(t.digest, 1, t.chunk(1)).await.unwrap();
    corrupt(&partial_data(dir.path(), &t.digest), t.offset(1) + 7);
    assert!(matches!(
        store.read_chunk(t.digest, 1).await,
        Err(StoreError::ChunkCorrupt { index: 1, .. })
    ));
    assert_eq!(
        store
            .bitfield(&t.digest)
            .unwrap()
            .iter_ones()
            .collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(
        store.write_chunk(t.digest, 1, t.chunk(1)).await.unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(store.read_chunk(t.digest, 1).await.unwrap(), t.chunk(1));

    // Complete blob: rot makes it partial again with only that chunk missing.
    store.write_chunk(t.digest, 2, t.chunk(2)).await.unwrap();
    assert!(store.is_complete(&t.digest));
    let path = store.blob_path(&t.digest).unwrap();
    corrupt(&path, t.offset(2) + 1);
    let err = store.read_chunk(t.digest, 2).await.unwrap_err();
    assert!(
        matches!(err, StoreError::ChunkCorrupt { index: 2, .. }),
        "{err}"
    );
    assert!(!store.is_complete(&t.digest));
    assert_eq!(
        store
            .bitfield(&t.digest)
            .unwrap()
            .iter_ones()
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(store.read_chunk(t.digest, 0).await.unwrap(), t.chunk(0));
    // Survives a restart in that state, then heals.
    drop(store);
    let store = open_reading_disk(dir.path()).await;
    assert_eq!(
        store
            .bitfield(&t.digest)
            .unwrap()
            .iter_ones()
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(
        store.write_chunk(t.digest, 2, t.chunk(2)).await.unwrap(),
        WriteOutcome::BlobComplete
    );
    assert_eq!(
        std::fs::read(store.blob_path(&t.digest).unwrap()).unwrap(),
        t.bytes
    );
}

/// The last chunks verified are served again from memory, the bytes that
/// were checked, without a disk read (rot written under them after the
/// check goes unseen until they are forgotten); older chunks are read from
/// disk and re-verified. A blob collected and declared again never sees
/// the old one's chunks.
#[tokio::test]
async fn recently_verified_chunks_are_served_from_memory_and_older_ones_from_disk() {
    use edgeswarm_node::store::DEFAULT_RECENT_CHUNKS;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let kept = DEFAULT_RECENT_CHUNKS as u32;
    let chunks = kept + 3;
    let t = TestBlob::new(chunks as usize * 65536 + 77, 31, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    for i in 0..chunks - 1 {
        store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
    }
    // Chunks 2..=kept+1 are the last `kept` stored; 0 and 1 were forgotten.
    let newest = chunks - 2;
    let oldest_kept = newest + 1 - kept;
    assert_eq!(oldest_kept, 2);
    let path = partial_data(dir.path(), &t.digest);
    corrupt(&path, t.offset(newest) + 9);
    corrupt(&path, t.offset(1) + 9);
    let before = store.recent_stats();
    assert_eq!(
        store.read_chunk(t.digest, newest).await.unwrap(),
        t.chunk(newest)
    );
    assert_eq!(
        store.read_chunk(t.digest, oldest_kept).await.unwrap(),
        t.chunk(oldest_kept)
    );
    let after = store.recent_stats();
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (2, 0)
    );
    // Chunk 1 is read from disk: its rot is found and it is cleared.
    assert!(matches!(
        store.read_chunk(t.digest, 1).await,
        Err(StoreError::ChunkCorrupt { index: 1, .. })
    ));
    assert_eq!(store.recent_stats().misses - after.misses, 1);
    assert!(!store.bitfield(&t.digest).unwrap().get(1));
    // Chunk 0 from disk, intact.
    assert_eq!(store.read_chunk(t.digest, 0).await.unwrap(), t.chunk(0));
    // The blob reader takes the same path: kept chunks from memory.
    store.write_chunk(t.digest, 1, t.chunk(1)).await.unwrap();
    let hits = store.recent_stats().hits;
    let mut reader = store.reader(t.digest).unwrap();
    reader.set_timeout(Some(Duration::from_secs(10)));
    let read = tokio::task::spawn_blocking(move || {
        let mut out = vec![0u8; 65536];
        reader.read_exact(&mut out).map(|()| out)
    });
    assert_eq!(read.await.unwrap().unwrap(), t.chunk(0).to_vec());
    assert_eq!(
        store.recent_stats().hits,
        hits,
        "chunk 0 was forgotten: disk"
    );

    // Forgotten after a restart: the rot under the newest chunk is found
    // (a partial blob's chunks are re-hashed on open).
    drop(store);
    let store = open(dir.path()).await;
    assert!(!store.bitfield(&t.digest).unwrap().get(newest));
    assert!(matches!(
        store.read_chunk(t.digest, newest).await,
        Err(StoreError::ChunkMissing { .. })
    ));

    // Collected, declared again: the old blob's kept chunks are not the
    // new one's, whatever the digest.
    let u = TestBlob::new(2 * 65536, 32, ChunkSize::MIN);
    store.put_chunk_map(u.digest, &u.map).await.unwrap();
    store.write_chunk(u.digest, 0, u.chunk(0)).await.unwrap();
    store.gc().await.unwrap();
    assert!(store.bitfield(&u.digest).is_none(), "collected: not pinned");
    store.put_chunk_map(u.digest, &u.map).await.unwrap();
    assert!(matches!(
        store.read_chunk(u.digest, 0).await,
        Err(StoreError::ChunkMissing { index: 0, .. })
    ));
}

/// Chunks over 1 MiB are never kept in memory (a 16 MiB chunk size must
/// not pin 128 MiB of a 1 GiB device): their reads go to disk.
#[tokio::test]
async fn large_chunks_are_not_kept_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let cs = ChunkSize::new(2 << 20).unwrap();
    let t = TestBlob::new(2 * (2 << 20), 33, cs);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    store.write_chunk(t.digest, 0, t.chunk(0)).await.unwrap();
    assert_eq!(store.read_chunk(t.digest, 0).await.unwrap(), t.chunk(0));
    let stats = store.recent_stats();
    assert_eq!((stats.hits, stats.misses), (0, 1));
}

#[tokio::test]
async fn wrong_chunk_map_fails_the_whole_blob_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut events = store.subscribe();
    let t = TestBlob::new(2 * 65536 + 5, 7, ChunkSize::MIN);
    // A lying map: its chunks are self-consistent but are not this blob.
    let claimed = Digest::of(b"some other layer");
    store.put_chunk_map(claimed, &t.map).await.unwrap();
    for i in 0..2 {
        store.write_chunk(claimed, i, t.chunk(i)).await.unwrap();
    }
    let err = store.write_chunk(claimed, 2, t.chunk(2)).await.unwrap_err();
    match err {
        StoreError::BlobCorrupt { blob, actual } => {
            assert_eq!(blob, claimed);
            assert_eq!(actual, t.digest);
        }
        other => panic!("expected BlobCorrupt, got {other}"),
    }
    let failed = std::iter::from_fn(|| events.try_recv().ok())
        .any(|e| matches!(e, StoreEvent::BlobFailed { blob, .. } if blob == claimed));
    assert!(failed, "BlobFailed event emitted");
    assert!(!store.is_complete(&claimed));
    assert!(store.bitfield(&claimed).is_none());
    assert!(!dir
        .path()
        .join("blobs/sha256")
        .join(claimed.to_hex())
        .exists());
    // It can be declared again (with the right map, in real life).
    store.put_chunk_map(claimed, &t.map).await.unwrap();
    assert_eq!(store.bitfield(&claimed).unwrap().count_ones(), 0);
}

#[tokio::test]
async fn put_blob_verifies_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let manifest = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let digest = Digest::of(&manifest);
    let err = store
        .put_blob(Digest::of(b"nope"), manifest.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::BlobCorrupt { actual, .. } if actual == digest),
        "{err}"
    );
    assert!(store.blobs().is_empty());
    store.put_blob(digest, manifest.clone()).await.unwrap();
    store.put_blob(digest, manifest.clone()).await.unwrap();
    assert!(store.is_complete(&digest));
    assert_eq!(
        std::fs::read(store.blob_path(&digest).unwrap()).unwrap(),
        manifest
    );
    drop(store);
    let store = open(dir.path()).await;
    assert!(store.is_complete(&digest));
    assert_eq!(store.read_chunk(digest, 0).await.unwrap(), manifest);
    let mut r = store.reader(digest).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert_eq!(out, manifest);
}

#[tokio::test]
async fn quota_gc_and_pins() {
    let dir = tempfile::tempdir().unwrap();
    const S: usize = 2 * 65536;
    let config = StoreConfig {
        max_size: Some(3 * S as u64),
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path().to_path_buf(), config.clone())
        .await
        .unwrap();
    let blobs: Vec<TestBlob> = (0..5)
        .map(|i| TestBlob::new(S, 100 + i, ChunkSize::MIN))
        .collect();
    let [a, b, c, d, e] = [&blobs[0], &blobs[1], &blobs[2], &blobs[3], &blobs[4]];
    store.pin("app:1", &[a.digest]).await.unwrap();
    for t in [a, b, c] {
        store.put_chunk_map(t.digest, &t.map).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // b complete, c partial: both unpinned.
    for i in 0..2 {
        store.write_chunk(b.digest, i, b.chunk(i)).await.unwrap();
    }
    store.write_chunk(a.digest, 0, a.chunk(0)).await.unwrap();
    assert_eq!(store.usage(), 3 * S as u64);
    // d does not fit: the oldest unpinned blob (b) is collected.
    store.put_chunk_map(d.digest, &d.map).await.unwrap();
    assert!(store.bitfield(&b.digest).is_none(), "b collected");
    assert!(!dir
        .path()
        .join("blobs/sha256")
        .join(b.digest.to_hex())
        .exists());
    assert!(store.bitfield(&c.digest).is_some(), "c (younger) kept");
    assert_eq!(store.usage(), 3 * S as u64);
    // With everything pinned, a new blob is refused with a clear error.
    store.pin("app:2", &[c.digest, d.digest]).await.unwrap();
    let err = store.put_chunk_map(e.digest, &e.map).await.unwrap_err();
    assert!(
        matches!(err, StoreError::QuotaExceeded { needed, max, .. } if needed == S as u64 && max == 3 * S as u64),
        "{err}"
    );
    assert!(err.to_string().contains("quota exceeded"), "{err}");
    assert!(store.bitfield(&e.digest).is_none());
    // Pinned blobs survive gc; unpinned ones go.
    assert!(store.gc().await.unwrap().removed.is_empty());
    store.unpin("app:1").await.unwrap();
    store.unpin("never-existed").await.unwrap();
    // Pins and partial state survive a restart.
    drop(store);
    let store = Store::open(dir.path().to_path_buf(), config).await.unwrap();
    assert_eq!(store.pins().keys().collect::<Vec<_>>(), vec!["app:2"]);
    let summary = store.blobs();
    assert_eq!(summary.len(), 3);
    let a_sum = summary.iter().find(|s| s.digest == a.digest).unwrap();
    assert!(a_sum.pinned_by.is_empty() && a_sum.chunks_have == 1 && !a_sum.complete);
    let report = store.gc().await.unwrap();
    assert_eq!(report.removed, vec![a.digest]);
    assert_eq!(report.freed, S as u64);
    assert!(!dir.path().join("partial").join(a.digest.to_hex()).exists());
    assert!(store.bitfield(&c.digest).is_some() && store.bitfield(&d.digest).is_some());
    // Now e fits.
    store.put_chunk_map(e.digest, &e.map).await.unwrap();
    assert!(matches!(
        store.pin("", &[]).await,
        Err(StoreError::InvalidName(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_block_until_chunks_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(16 * 65536 + 333, 8, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    let readers: Vec<_> = (0..3)
        .map(|k| {
            let mut r = store.reader(t.digest).unwrap();
            r.set_timeout(Some(Duration::from_secs(30)));
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                // Odd read sizes cross chunk boundaries.
                let mut buf = vec![0u8; 1000 + k * 4321];
                loop {
                    let n = r.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                out
            })
        })
        .collect();
    // Every chunk but the first: readers must not get past byte 0.
    for i in (1..t.map.chunk_count()).rev() {
        store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.cursor(&t.digest), 0, "readers wait for chunk 0");
    assert!(readers.iter().all(|r| !r.is_finished()));
    assert_eq!(
        store.write_chunk(t.digest, 0, t.chunk(0)).await.unwrap(),
        WriteOutcome::BlobComplete
    );
    for r in readers {
        assert!(
            r.await.unwrap() == t.bytes,
            "reader got the blob's bytes in order"
        );
    }
    assert_eq!(store.cursor(&t.digest), t.bytes.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_follow_interleaved_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(24 * 65536, 9, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    let mut r = store.reader(t.digest).unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    });
    // A scrambled but deterministic order, with pauses.
    let order: Vec<u32> = (0..24).map(|i| (i * 7) % 24).collect();
    for i in order {
        store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(reader.await.unwrap().unwrap() == t.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_can_time_out_be_aborted_and_stop_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(2 * 65536, 10, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    store.write_chunk(t.digest, 0, t.chunk(0)).await.unwrap();

    let mut r = store.reader(t.digest).unwrap();
    r.set_timeout(Some(Duration::from_millis(100)));
    let timed = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 3 * 65536];
        let first = r.read(&mut buf).unwrap();
        (first, r.read(&mut buf).unwrap_err().kind())
    });
    assert_eq!(timed.await.unwrap(), (65536, std::io::ErrorKind::TimedOut));

    let mut r = store.reader(t.digest).unwrap();
    let abort = r.abort_handle();
    let aborted = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap_err().to_string()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!aborted.is_finished());
    abort.abort();
    assert!(aborted.await.unwrap().contains("aborted"));

    let mut r = store.reader(t.digest).unwrap();
    let closed = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap_err().to_string()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.close();
    assert!(closed.await.unwrap().contains("closing"));
    assert!(matches!(
        store.write_chunk(t.digest, 1, t.chunk(1)).await,
        Err(StoreError::Closing)
    ));
}

#[tokio::test]
async fn empty_blob_completes_on_create() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let d = Digest::of(b"");
    store.create_blob(d, 0, ChunkSize::DEFAULT).await.unwrap();
    assert!(store.is_complete(&d));
    let mut out = Vec::new();
    store.reader(d).unwrap().read_to_end(&mut out).unwrap();
    assert!(out.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_concurrent_writers_store_each_chunk_once() {
    // Endgame: several peers deliver the same chunks at the same time.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = std::sync::Arc::new(TestBlob::new(32 * 65536 + 17, 11, ChunkSize::MIN));
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    let mut reader = store.reader(t.digest).unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map(|_| out)
    });
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let store = store.clone();
            let t = t.clone();
            tokio::spawn(async move {
                let n = t.map.chunk_count();
                let mut outcomes = Vec::new();
                for k in 0..n {
                    let i = (k * (2 * w + 1) + w) % n;
                    let o = store.write_chunk(t.digest, i, t.chunk(i)).await.unwrap();
                    outcomes.push((i, o));
                }
                outcomes
            })
        })
        .collect();
    let mut stored = vec![0u32; t.map.chunk_count() as usize];
    let mut completes = 0;
    for w in writers {
        for (i, o) in w.await.unwrap() {
            match o {
                WriteOutcome::Stored => stored[i as usize] += 1,
                WriteOutcome::BlobComplete => {
                    stored[i as usize] += 1;
                    completes += 1
                }
                WriteOutcome::AlreadyHad => {}
            }
        }
    }
    assert_eq!(completes, 1, "exactly one writer completes the blob");
    assert!(
        stored.iter().all(|&n| n == 1),
        "each chunk stored exactly once: {stored:?}"
    );
    assert!(read.await.unwrap().unwrap() == t.bytes);
    assert_eq!(
        std::fs::read(store.blob_path(&t.digest).unwrap()).unwrap(),
        t.bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_reader_fails_when_the_blob_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(2 * 65536, 12, ChunkSize::MIN);
    let claimed = Digest::of(b"not these bytes");
    store.put_chunk_map(claimed, &t.map).await.unwrap();
    let mut r = store.reader(claimed).unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap_err()
    });
    // Chunk 1 first so the reader is still waiting for chunk 0 when the
    // last write fails the blob.
    store.write_chunk(claimed, 1, t.chunk(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(
        store.write_chunk(claimed, 0, t.chunk(0)).await,
        Err(StoreError::BlobCorrupt { .. })
    ));
    let err = read.await.unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("hashes to"), "{err}");
}

/// Downloads request a chunk only once its digest is known, and learn of
/// new digests from this event rather than at their next periodic look.
#[tokio::test]
async fn newly_known_digests_are_announced_once_each_time_some_are_new() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(4 * 65536, 7, ChunkSize::MIN);
    store
        .create_blob(t.digest, t.bytes.len() as u64, ChunkSize::MIN)
        .await
        .unwrap();
    let mut events = store.subscribe();
    let learned = |events: &mut tokio::sync::broadcast::Receiver<StoreEvent>| {
        let mut n = 0;
        while let Ok(ev) = events.try_recv() {
            if ev == (StoreEvent::DigestsLearned { blob: t.digest }) {
                n += 1;
            }
        }
        n
    };
    let digests = t.map.digests();
    // A gateway's signed digests, one chunk at a time.
    store
        .add_chunk_digests(t.digest, 0, &digests[..1])
        .await
        .unwrap();
    assert_eq!(learned(&mut events), 1);
    assert_eq!(store.blob_info(&t.digest).unwrap().digests_known, 1);
    // The same digest again (a gateway announces its prefix again).
    store
        .add_chunk_digests(t.digest, 0, &digests[..1])
        .await
        .unwrap();
    assert_eq!(learned(&mut events), 0);
    // A peer's chunk map fills in the rest.
    let peer = libp2p::PeerId::random();
    store
        .put_peer_chunk_map(t.digest, &t.map, peer)
        .await
        .unwrap();
    assert_eq!(learned(&mut events), 1);
    assert_eq!(store.blob_info(&t.digest).unwrap().digests_known, 4);
    // The same map again teaches nothing.
    store
        .put_peer_chunk_map(t.digest, &t.map, peer)
        .await
        .unwrap();
    assert_eq!(learned(&mut events), 0);
}

#[tokio::test]
async fn own_chunks_are_checked_with_the_callers_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = TestBlob::new(2 * 65536 + 5, 23, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    // Other bytes, hashed by the caller: refused like any wrong chunk.
    let other = t.chunk(1);
    let err = store
        .write_own_chunk(t.digest, 0, other.clone(), Digest::of(&other))
        .await
        .unwrap_err();
    assert_digest_mismatch(&err, 0);
    assert_eq!(store.bitfield(&t.digest).unwrap().count_ones(), 0);
    for i in 0..3 {
        let c = t.chunk(i);
        let sha = Digest::of(&c);
        store.write_own_chunk(t.digest, i, c, sha).await.unwrap();
    }
    assert!(store.is_complete(&t.digest));
    assert_eq!(
        std::fs::read(store.blob_path(&t.digest).unwrap()).unwrap(),
        t.bytes
    );
}

/// The receive path takes its chunk buffers from the store and the store
/// takes them back once written, so a node streams chunk after chunk
/// through the same few buffers; a reused buffer that still holds another
/// chunk's bytes is filled completely before it is written, and reads
/// (which reuse buffers too) still return exactly the stored bytes.
#[tokio::test]
async fn chunk_buffers_are_reused_across_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing kept in memory: a written chunk's buffer goes straight back
    // to the pool (kept chunks' buffers go back when forgotten).
    let store = open_reading_disk(dir.path()).await;
    let t = TestBlob::new(4 * 65536, 29, ChunkSize::MIN);
    store.put_chunk_map(t.digest, &t.map).await.unwrap();
    let before = store.buffer_stats();
    for i in [2u32, 0, 3, 1] {
        let want = t.chunk(i);
        let mut buf = store.chunk_buffer(want.len());
        assert_eq!(buf.len(), want.len());
        buf.copy_from_slice(&want);
        store
            .write_chunk(t.digest, i, Bytes::from(buf))
            .await
            .unwrap();
    }
    assert!(store.is_complete(&t.digest));
    let after = store.buffer_stats();
    assert!(
        after.reused >= before.reused + 3,
        "writes after the first reuse its buffer: {before:?} -> {after:?}"
    );
    for i in 0..4 {
        let got = store.read_chunk(t.digest, i).await.unwrap();
        assert_eq!(got, t.chunk(i), "chunk {i} read through a reused buffer");
        store.recycle_chunk(got);
    }
    // A buffer given back with another chunk's bytes, then refilled
    // wrongly (one byte differs), is refused: reuse never lets stale bytes
    // pass a check.
    let t2 = TestBlob::new(2 * 65536, 31, ChunkSize::MIN);
    store.put_chunk_map(t2.digest, &t2.map).await.unwrap();
    let mut buf = store.chunk_buffer(65536);
    buf.copy_from_slice(&t2.chunk(0));
    buf[100] ^= 1;
    let err = store
        .write_chunk(t2.digest, 0, Bytes::from(buf))
        .await
        .unwrap_err();
    assert_digest_mismatch(&err, 0);
}

/// `err` is the refusal of chunk `index` for bytes that do not match its
/// digest.
#[track_caller]
fn assert_digest_mismatch(err: &StoreError, index: u32) {
    assert!(
        matches!(
            err,
            StoreError::Chunk(ChunkError::DigestMismatch { index: i, .. }) if *i == index
        ),
        "{err}"
    );
}
