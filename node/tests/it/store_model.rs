//! Model-based property test of `node::store`: random sequences of good
//! and bad chunk writes, reads, on-disk rot of held chunks and restarts,
//! checked after every step against a small model of what must be held.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use edgeswarm_node::store::{Store, StoreConfig, StoreError, WriteOutcome};
use edgeswarm_protocol::{ChunkMap, ChunkSize, Digest};
use proptest::prelude::*;

const CHUNKS: u32 = 6;
const LEN: usize = 5 * 65536 + 100;

#[derive(Debug, Clone)]
enum Op {
    /// Deliver chunk i, correct or with one byte wrong.
    Write(u32, bool),
    /// Read chunk i.
    Read(u32),
    /// Rot one byte of held chunk i on disk.
    Rot(u32),
    /// Restart the store.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..CHUNKS, any::<bool>()).prop_map(|(i, g)| Op::Write(i, g)),
        2 => (0..CHUNKS).prop_map(Op::Read),
        1 => (0..CHUNKS).prop_map(Op::Rot),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Debug)]
struct Model {
    held: BTreeSet<u32>,
    rotten: BTreeSet<u32>,
    complete: bool,
    /// Chunks `0..fed` went into the store's in-order blob digest (it
    /// feeds a stored chunk if it is next, then the held chunks after it).
    fed: u32,
    /// Rotten chunks that rotted after they were fed: the whole-blob
    /// check does not see them (reads do).
    rotted_after_fed: BTreeSet<u32>,
}

impl Model {
    /// A chunk was stored: the in-order digest takes it if it is next,
    /// then every held chunk after it.
    fn feed(&mut self, i: u32) {
        if i == self.fed {
            self.fed += 1;
        }
        while self.fed < CHUNKS && self.held.contains(&self.fed) {
            self.fed += 1;
        }
    }

    /// Rot found (by a read, a restart or the whole-blob check).
    fn cleared(&mut self, i: u32) {
        self.held.remove(&i);
        self.rotten.remove(&i);
        self.rotted_after_fed.remove(&i);
    }
}

struct Blob {
    bytes: Vec<u8>,
    digest: Digest,
    map: ChunkMap,
}

impl Blob {
    fn chunk(&self, i: u32) -> Bytes {
        let r = self.map.chunk_range(i).unwrap();
        Bytes::copy_from_slice(&self.bytes[r.start as usize..r.end as usize])
    }
}

async fn open(dir: &Path) -> Store {
    Store::open(dir.to_path_buf(), StoreConfig::default())
        .await
        .unwrap()
}

async fn run(ops: Vec<Op>) {
    let bytes: Vec<u8> = (0..LEN)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    let blob = Blob {
        digest: Digest::of(&bytes),
        map: ChunkMap::from_bytes(&bytes, ChunkSize::MIN),
        bytes,
    };
    let d = blob.digest;
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path()).await;
    store.put_chunk_map(d, &blob.map).await.unwrap();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Write(i, good) => {
                let mut c = blob.chunk(i).to_vec();
                if !good {
                    let mid = c.len() / 2;
                    c[mid] ^= 0x20;
                }
                let got = store.write_chunk(d, i, Bytes::from(c)).await;
                if m.complete || m.held.contains(&i) {
                    assert_eq!(got.unwrap(), WriteOutcome::AlreadyHad);
                } else if !good {
                    assert!(matches!(got, Err(StoreError::Chunk(_))), "{got:?}");
                } else {
                    m.held.insert(i);
                    m.feed(i);
                    if m.held.len() == CHUNKS as usize {
                        // The check at completion takes the in-order digest.
                        m.fed = 0;
                        if m.rotten.is_subset(&m.rotted_after_fed) {
                            // Every rotten byte went in before it rotted:
                            // the digest is right, and reads find the rot.
                            assert_eq!(got.unwrap(), WriteOutcome::BlobComplete);
                            m.complete = true;
                        } else {
                            // Rotten bytes were hashed: the whole file is
                            // hashed again from disk and every rotten
                            // chunk is found and cleared.
                            assert_eq!(got.unwrap(), WriteOutcome::Stored);
                            for r in m.rotten.clone() {
                                m.cleared(r);
                            }
                        }
                    } else {
                        assert_eq!(got.unwrap(), WriteOutcome::Stored);
                    }
                }
            }
            Op::Read(i) => {
                let got = store.read_chunk(d, i).await;
                if !m.held.contains(&i) {
                    assert!(
                        matches!(got, Err(StoreError::ChunkMissing { .. })),
                        "{got:?}"
                    );
                } else if m.rotten.contains(&i) {
                    assert!(
                        matches!(got, Err(StoreError::ChunkCorrupt { .. })),
                        "{got:?}"
                    );
                    m.cleared(i);
                    m.complete = false;
                } else {
                    assert_eq!(got.unwrap(), blob.chunk(i));
                }
            }
            Op::Rot(i) => {
                if m.held.contains(&i) {
                    let path = store.blob_path(&d).unwrap_or_else(|| {
                        dir.path().join("partial").join(d.to_hex()).join("data")
                    });
                    let off = blob.map.chunk_range(i).unwrap().start + 11;
                    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                    f.write_all_at(&[!blob.bytes[off as usize]], off).unwrap();
                    if m.rotten.insert(i) && i < m.fed {
                        m.rotted_after_fed.insert(i);
                    }
                }
            }
            Op::Reopen => {
                drop(store);
                store = open(dir.path()).await;
                // A restarted store's in-order digest starts at chunk 0.
                m.fed = 0;
                if !m.complete {
                    // Partial blobs are re-hashed on open.
                    for r in m.rotten.clone() {
                        m.cleared(r);
                    }
                }
            }
        }
        let bits = store.bitfield(&d).unwrap();
        assert_eq!(bits.iter_ones().collect::<BTreeSet<_>>(), m.held, "{m:?}");
        assert_eq!(store.is_complete(&d), m.complete, "{m:?}");
    }
    // Heal: reads find the rot, writes fill the gaps, the blob completes
    // and reads back intact.
    for r in std::mem::take(&mut m.rotten) {
        assert!(store.read_chunk(d, r).await.is_err());
    }
    for i in store.bitfield(&d).unwrap().iter_zeros().collect::<Vec<_>>() {
        store.write_chunk(d, i, blob.chunk(i)).await.unwrap();
    }
    assert!(store.is_complete(&d));
    let mut r = store.reader(d).unwrap();
    r.set_timeout(Some(Duration::from_secs(10)));
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(out == blob.bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops));
    }
}
