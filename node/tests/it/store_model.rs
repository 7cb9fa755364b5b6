//! Model-based property test of `node::store`: random sequences of good
//! and bad chunk writes, reads, on-disk rot of held chunks and restarts,
//! checked after every step against a small model of what must be held,
//! with and without the store's memory of recently verified chunks.

use std::collections::{BTreeSet, VecDeque};
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
    /// The in-order digest read a chunk back from disk while it was
    /// rotten: the whole-blob check disagrees and hashes the file again.
    /// Rot that came after a chunk was fed goes unseen by that check
    /// (reads find it).
    poisoned: bool,
    /// How many recently verified chunks the store keeps in memory.
    cache: usize,
    /// The chunks it keeps, oldest first: the last `cache` chunks
    /// stored, whose reads return the bytes that were verified (rot on
    /// disk under them is found once they are forgotten). A restart
    /// forgets them all.
    recent: VecDeque<u32>,
}

impl Model {
    /// A chunk was stored: the in-order digest takes it (from memory) if
    /// it is next, then every held chunk after it (read back from disk).
    fn feed(&mut self, i: u32) {
        if i == self.fed {
            self.fed += 1;
        }
        while self.fed < CHUNKS && self.held.contains(&self.fed) {
            self.poisoned |= self.rotten.contains(&self.fed);
            self.fed += 1;
        }
    }

    /// Chunk `i` was verified and stored: the store keeps its bytes.
    fn remember(&mut self, i: u32) {
        if self.cache == 0 {
            return;
        }
        self.recent.retain(|&r| r != i);
        while self.recent.len() >= self.cache {
            self.recent.pop_front();
        }
        self.recent.push_back(i);
    }

    /// The in-order digest starts again from chunk 0.
    fn restart_digest(&mut self) {
        self.fed = 0;
        self.poisoned = false;
    }

    /// Rot found (by a read, a restart or the whole-blob check). A digest
    /// that went past the chunk forgets what it hashed.
    fn cleared(&mut self, i: u32) {
        self.held.remove(&i);
        self.rotten.remove(&i);
        if i < self.fed {
            self.restart_digest();
        }
    }
}

struct Blob {
    bytes: Vec<u8>,
    digest: Digest,
    map: ChunkMap,
}

impl Blob {
    /// A deterministic blob of `LEN` bytes (byte `lane` of a multiplicative
    /// hash of each index), with its digest and chunk map.
    fn test(lane: usize) -> Blob {
        let bytes: Vec<u8> = (0..LEN)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[lane])
            .collect();
        Blob {
            digest: Digest::of(&bytes),
            map: ChunkMap::from_bytes(&bytes, ChunkSize::MIN),
            bytes,
        }
    }

    fn chunk(&self, i: u32) -> Bytes {
        let r = self.map.chunk_range(i).unwrap();
        Bytes::copy_from_slice(&self.bytes[r.start as usize..r.end as usize])
    }
}

async fn open(dir: &Path) -> Store {
    open_keeping(dir, StoreConfig::default().recent_chunks).await
}

/// Opens the store keeping `cache` recently verified chunks in memory.
async fn open_keeping(dir: &Path, cache: usize) -> Store {
    let config = StoreConfig {
        recent_chunks: cache,
        ..StoreConfig::default()
    };
    Store::open(dir.to_path_buf(), config).await.unwrap()
}

async fn run(ops: Vec<Op>, cache: usize) {
    let blob = Blob::test(2);
    let d = blob.digest;
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_keeping(dir.path(), cache).await;
    store.put_chunk_map(d, &blob.map).await.unwrap();
    let mut m = Model {
        cache,
        ..Model::default()
    };
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
                    m.remember(i);
                    m.feed(i);
                    if m.held.len() == CHUNKS as usize {
                        // The check at completion takes the in-order digest.
                        let poisoned = m.poisoned;
                        m.restart_digest();
                        if !poisoned || m.rotten.is_empty() {
                            // Every byte hashed was good (rot that came
                            // later is for reads to find), or the file
                            // hashed again from disk is whole.
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
                } else if m.rotten.contains(&i) && !m.recent.contains(&i) {
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
                    m.rotten.insert(i);
                }
            }
            Op::Reopen => {
                drop(store);
                store = open_keeping(dir.path(), cache).await;
                // A restarted store's in-order digest starts at chunk 0,
                // and it keeps no chunk in memory.
                m.restart_digest();
                m.recent.clear();
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
    // Heal: after a restart (nothing in memory, partial blobs re-hashed)
    // reads find the rot, writes fill the gaps, the blob completes and
    // reads back intact.
    drop(store);
    store = open_keeping(dir.path(), cache).await;
    if !m.complete {
        m.rotten.clear();
    }
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
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40), cache in 0usize..4) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops, cache));
    }
}

// ---------------------------------------------------------------------
// Digest provenance: a liar's and an honest member's chunk maps
// (provisional), the gateway's digests (authoritative), chunk bytes of
// either, reads and restarts, against a model of what each digest slot
// rests on. The invariant that matters: a chunk counts as held (read,
// served) only once verified against an authoritative digest or the
// whole blob, and never with the liar's bytes.

/// Who supplied a chunk map (or chunk bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Liar,
    Honest,
}

#[derive(Debug, Clone)]
enum POp {
    /// A member's chunk map arrives.
    Map(Who),
    /// The gateway's signed digests of chunks `first..first + len`.
    Gateway(u32, u32),
    /// Chunk i arrives with the bytes the liar's map describes, or the
    /// true ones.
    Write(u32, Who),
    /// Read chunk i.
    Read(u32),
    /// Restart the store.
    Reopen,
}

fn pop() -> impl Strategy<Value = POp> {
    let who = prop_oneof![Just(Who::Liar), Just(Who::Honest)];
    prop_oneof![
        2 => who.clone().prop_map(POp::Map),
        1 => (0..CHUNKS, 1..=CHUNKS).prop_map(|(f, l)| POp::Gateway(f, l.min(CHUNKS - f))),
        5 => (0..CHUNKS, who).prop_map(|(i, w)| POp::Write(i, w)),
        2 => (0..CHUNKS).prop_map(POp::Read),
        1 => Just(POp::Reopen),
    ]
}

/// What a chunk's digest rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Unknown,
    Gateway,
    Map(Who),
}

#[derive(Debug)]
struct PModel {
    slots: Vec<Slot>,
    held: BTreeSet<u32>,
    unconfirmed: BTreeSet<u32>,
    /// Unconfirmed chunks whose stored bytes are the liar's false ones.
    false_bytes: BTreeSet<u32>,
    complete: bool,
}

impl PModel {
    /// Drops every provisional digest `who` gave, with its chunks.
    fn drop_map(&mut self, who: impl Fn(Who) -> bool) {
        for i in 0..CHUNKS {
            if let Slot::Map(w) = self.slots[i as usize] {
                if who(w) {
                    self.slots[i as usize] = Slot::Unknown;
                    self.unconfirmed.remove(&i);
                    self.false_bytes.remove(&i);
                }
            }
        }
    }
}

async fn run_provenance(ops: Vec<POp>, false_chunks: BTreeSet<u32>) {
    let blob = Blob::test(1);
    let d = blob.digest;
    // The liar's chunks: false where `false_chunks` says, true elsewhere;
    // its map describes them.
    let liar_chunk = |i: u32| -> Bytes {
        let mut c = blob.chunk(i).to_vec();
        if false_chunks.contains(&i) {
            c[7] ^= 0x41;
        }
        Bytes::from(c)
    };
    let liar_map = ChunkMap::new(
        blob.map.blob_size(),
        blob.map.chunk_size(),
        (0..CHUNKS).map(|i| Digest::of(&liar_chunk(i))).collect(),
    )
    .unwrap();
    let peer = |w: Who| match w {
        Who::Liar => libp2p::PeerId::from_bytes(&[0, 2, 0x4c, 0x4c]).unwrap(),
        Who::Honest => libp2p::PeerId::from_bytes(&[0, 2, 0x48, 0x48]).unwrap(),
    };
    let lies_at = |w: Who, i: u32| w == Who::Liar && false_chunks.contains(&i);
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path()).await;
    store
        .create_blob(d, blob.map.blob_size(), blob.map.chunk_size())
        .await
        .unwrap();
    let mut m = PModel {
        slots: vec![Slot::Unknown; CHUNKS as usize],
        held: BTreeSet::new(),
        unconfirmed: BTreeSet::new(),
        false_bytes: BTreeSet::new(),
        complete: false,
    };
    for op in ops {
        match op {
            POp::Map(who) => {
                let map = if who == Who::Liar {
                    &liar_map
                } else {
                    &blob.map
                };
                let got = store.put_peer_chunk_map(d, map, peer(who)).await;
                let lies = (0..CHUNKS).any(|i| lies_at(who, i));
                if m.complete {
                    assert_eq!(got.is_ok(), !lies, "{got:?}");
                    if lies {
                        assert!(got.unwrap_err().is_false_layout());
                    }
                    continue;
                }
                let against_gateway =
                    (0..CHUNKS).any(|i| m.slots[i as usize] == Slot::Gateway && lies_at(who, i));
                let disputed = (0..CHUNKS).any(|i| match m.slots[i as usize] {
                    Slot::Map(other) => lies_at(other, i) != lies_at(who, i),
                    _ => false,
                });
                if against_gateway {
                    assert!(
                        matches!(got, Err(StoreError::DigestConflict { .. })),
                        "{got:?}"
                    );
                } else if disputed {
                    assert!(
                        matches!(got, Err(StoreError::MapDisputed { .. })),
                        "{got:?}"
                    );
                } else {
                    got.unwrap();
                    for s in &mut m.slots {
                        if *s == Slot::Unknown {
                            *s = Slot::Map(who);
                        }
                    }
                }
            }
            POp::Gateway(first, len) => {
                let range = first..first + len;
                let got = store
                    .add_chunk_digests(
                        d,
                        first,
                        &blob.map.digests()[first as usize..(first + len) as usize],
                    )
                    .await
                    .unwrap();
                let mut refuted = Vec::new();
                for i in range.clone() {
                    if let Slot::Map(w) = m.slots[i as usize] {
                        if lies_at(w, i) && !refuted.contains(&w) {
                            refuted.push(w);
                        }
                    }
                }
                let expected: Vec<_> = refuted.iter().map(|&w| peer(w)).collect();
                assert_eq!(got, expected, "{m:?}");
                m.drop_map(|w| refuted.contains(&w));
                for i in range {
                    m.slots[i as usize] = Slot::Gateway;
                    if m.unconfirmed.remove(&i) {
                        assert!(!m.false_bytes.contains(&i));
                        m.held.insert(i);
                    }
                }
            }
            POp::Write(i, who) => {
                let bytes = if who == Who::Liar {
                    liar_chunk(i)
                } else {
                    blob.chunk(i)
                };
                let is_false = lies_at(who, i);
                let got = store.write_chunk(d, i, bytes).await;
                if m.complete || m.held.contains(&i) || m.unconfirmed.contains(&i) {
                    assert_eq!(got.unwrap(), WriteOutcome::AlreadyHad);
                    continue;
                }
                let slot = m.slots[i as usize];
                let matches = match slot {
                    Slot::Unknown => {
                        assert!(
                            matches!(got, Err(StoreError::DigestUnknown { .. })),
                            "{got:?}"
                        );
                        continue;
                    }
                    Slot::Gateway => !is_false,
                    Slot::Map(w) => lies_at(w, i) == is_false,
                };
                if !matches {
                    match slot {
                        Slot::Gateway => {
                            assert!(matches!(got, Err(StoreError::Chunk(_))), "{got:?}")
                        }
                        _ => assert!(
                            matches!(got, Err(StoreError::DigestDisputed { .. })),
                            "{got:?}"
                        ),
                    }
                    continue;
                }
                if slot == Slot::Gateway {
                    m.held.insert(i);
                } else {
                    m.unconfirmed.insert(i);
                    if is_false {
                        m.false_bytes.insert(i);
                    }
                }
                if m.held.len() + m.unconfirmed.len() < CHUNKS as usize {
                    assert_eq!(got.unwrap(), WriteOutcome::Stored);
                } else if m.false_bytes.is_empty() {
                    assert_eq!(got.unwrap(), WriteOutcome::BlobComplete);
                    m.complete = true;
                    m.held = (0..CHUNKS).collect();
                    m.unconfirmed.clear();
                    m.slots = vec![Slot::Gateway; CHUNKS as usize];
                } else {
                    let mut sources: Vec<Who> = m
                        .slots
                        .iter()
                        .filter_map(|s| match s {
                            Slot::Map(w) => Some(*w),
                            _ => None,
                        })
                        .collect();
                    sources.dedup();
                    let mut expected: Vec<_> = sources.iter().map(|&w| peer(w)).collect();
                    expected.sort();
                    expected.dedup();
                    match got {
                        Err(StoreError::DigestsRefuted { sources, .. }) => {
                            assert_eq!(sources, expected)
                        }
                        other => panic!("{other:?} {m:?}"),
                    }
                    m.drop_map(|_| true);
                }
            }
            POp::Read(i) => {
                let got = store.read_chunk(d, i).await;
                if m.held.contains(&i) {
                    assert_eq!(got.unwrap(), blob.chunk(i));
                } else {
                    assert!(
                        matches!(got, Err(StoreError::ChunkMissing { .. })),
                        "{got:?}"
                    );
                }
            }
            POp::Reopen => {
                drop(store);
                store = open(dir.path()).await;
                // Provisional digests and unconfirmed chunks are never
                // journaled: a restart forgets them.
                m.drop_map(|_| true);
            }
        }
        let held = store.bitfield(&d).unwrap();
        assert_eq!(held.iter_ones().collect::<BTreeSet<_>>(), m.held, "{m:?}");
        let unconfirmed = store.unconfirmed(&d).unwrap();
        assert_eq!(
            unconfirmed.iter_ones().collect::<BTreeSet<_>>(),
            m.unconfirmed,
            "{m:?}"
        );
        assert_eq!(store.is_complete(&d), m.complete);
        let known = m.slots.iter().take_while(|s| **s != Slot::Unknown).count() as u32;
        assert_eq!(store.blob_info(&d).unwrap().digests_known, known, "{m:?}");
        // A chunk map is served on only when every digest is authoritative.
        let all_gateway = m.slots.iter().all(|s| *s == Slot::Gateway);
        assert_eq!(store.chunk_map(&d).is_some(), all_gateway, "{m:?}");
        if let Some(map) = store.chunk_map(&d) {
            assert_eq!(map.digests(), blob.map.digests());
        }
    }
    // Heal: the gateway's digests and the true chunks complete the blob.
    let _ = store.add_chunk_digests(d, 0, blob.map.digests()).await;
    for i in store.bitfield(&d).unwrap().iter_zeros().collect::<Vec<_>>() {
        store.write_chunk(d, i, blob.chunk(i)).await.unwrap();
    }
    assert!(store.is_complete(&d));
    let path = store.blob_path(&d).unwrap();
    assert!(std::fs::read(path).unwrap() == blob.bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn digest_provenance_matches_model(
        ops in proptest::collection::vec(pop(), 1..40),
        false_chunks in proptest::collection::btree_set(0..CHUNKS, 0..3),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_provenance(ops, false_chunks));
    }
}

/// CI's counterexample of 2026-12-07: chunk 2 is fed to the in-order
/// digest while rotten, then a read finds the rot and clears it; the
/// digest must forget it, or the completion check hashes the whole file
/// again and clears chunk 0, which rotted only after it was fed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rot_found_by_a_read_behind_the_digest_front_restarts_the_digest() {
    use Op::*;
    run(
        vec![
            Write(0, true),
            Write(5, true),
            Write(2, true),
            Rot(2),
            Write(1, true),
            Read(2),
            Write(4, true),
            Rot(0),
            Write(2, true),
            Write(3, true),
        ],
        0,
    ) // every read from disk, where the rot is
    .await;
}
