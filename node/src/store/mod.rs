//! The content-addressed, crash-safe chunk store.
//!
//! Every layer, manifest and config a node holds lives here, addressed by
//! its sha256 digest. Layers arrive as verified chunks in any order (from
//! the registry through the gateway, or from peers); the store assembles
//! them in place, remembers which chunks it holds across restarts, and
//! serves them to peers and to the import pipeline while the blob is still
//! incomplete.
//!
//! ## On-disk layout (under the directory given to [`Store::open`])
//!
//! ```text
//! blobs/sha256/<hex>        complete blobs, verified as a whole, read-only
//! maps/sha256/<hex>         chunk map of each complete blob (canonical CBOR)
//! partial/<hex>/meta        CBOR [1, size, chunk_size]; written last on create,
//!                           so a partial dir without it is debris
//! partial/<hex>/data        the blob's bytes at their final offsets (sparse file)
//! partial/<hex>/journal     append-only records: chunk digests as they become
//!                           known, verified / cleared chunk indices (see `journal`)
//! refs/<hex(name)>          a pin: CBOR [1, name, [digest, ...]]
//! tmp/                      temp files for atomic replace; emptied on open
//! ```
//!
//! ## Crash safety
//!
//! A chunk is hashed and compared with its known digest before anything is
//! written. Its bytes are then written at their offset in `data`, its
//! index is appended to the journal and its bit set in memory (visible to
//! peers and readers). A killed process loses nothing acknowledged (the
//! page cache keeps both writes). Durability against power loss is
//! batched: a flusher thread `fdatasync`s each blob's data, then its
//! journal, every [`FLUSH_INTERVAL`], so a power loss can lose that last
//! window: a bit whose record was lost is simply fetched again, and a
//! record whose bytes were lost (or torn) is caught on open, where the
//! store replays each journal (dropping a torn tail), **re-hashes every
//! chunk marked present** on the blocking pool and clears the bit of any
//! chunk that fails, then rewrites the journal compactly (temp file +
//! fsync + rename). Nothing is ever trusted because a journal says so.
//! (Each write used to wait for an `fdatasync`, shared by the writes in
//! flight: a wait on every chunk's path, and one per few chunks on flash
//! that wears. On the 10-node testnet, the gateway's storing fell
//! 1.4-2.6 s behind its registry stream; this and the gateway storing 4
//! chunks at once brought that to 0.6-1.3 s: `CHUNKS_STORED_AT_ONCE` in
//! `daemon/gateway.rs`.) The blob digest is hashed in order as chunks
//! land (a chunk that lands out of order is read back once the chunks
//! before it are there), so when the last chunk lands only the rest,
//! usually nothing, is hashed, and checked against the blob digest (on a
//! mismatch the whole file is hashed again from disk first); on a match
//! it is fsynced and renamed into `blobs/sha256/` after its chunk map was
//! written to `maps/`. Reads re-verify every chunk they read from disk; a
//! complete blob whose chunk rots on disk is moved back to `partial/` with
//! that one chunk cleared. The last few chunks verified on write are kept
//! in memory (`recent`, [`DEFAULT_RECENT_CHUNKS`]) and served from there:
//! those are the very bytes that were checked, and in a swarm they are
//! the chunks peers ask for first.
//!
//! ## Digest provenance
//!
//! A chunk digest is *authoritative* when it comes from the release
//! gateway's signed updates, this node's own hashing of what it pulls, a
//! one-chunk blob's digest from a verified manifest, or a complete blob
//! ([`Store::add_chunk_digests`], [`Store::put_chunk_map`]); only those are
//! journaled. A digest from a peer's (unsigned) chunk map is *provisional*
//! ([`Store::put_peer_chunk_map`]): a chunk that matches it is written but
//! held back as *unconfirmed* (not read, not served, not journaled, no
//! [`StoreEvent::ChunkStored`]) until an authoritative digest or the
//! whole-blob check confirms it. Authoritative digests always win: one
//! that contradicts a provisional digest drops every provisional digest
//! of that peer with the chunks resting on them, and so does a whole-blob
//! check that fails on provisional digests (chunks verified against
//! authoritative ones are kept). Either way [`StoreEvent::DigestsRefuted`]
//! names the peers for the swarm to ban. A restart forgets provisional
//! digests and unconfirmed chunks.
//!
//! ## Space
//!
//! `usage()` counts the declared size of every blob, partial or complete
//! (a partial blob will grow to its size). With a quota, `create_blob` and
//! `put_blob` first collect unpinned blobs, oldest first, then refuse with
//! [`StoreError::QuotaExceeded`]. A full file system gives
//! [`StoreError::DiskFull`] naming the file and the bytes needed, and sets
//! no bit. Pin a blob (by image name) *before* declaring it, or a
//! concurrent collection may drop it; blobs with an open reader or in their
//! final check are never collected.
//!
//! ## Goals and non-goals
//!
//! - Never trust a byte that was not verified: chunks on write, chunks again
//!   on every read from disk and on restart, whole blobs at completion.
//! - Never block the async runtime: every disk access and hash runs on
//!   `spawn_blocking`; a whole blob is never held in memory.
//! - Not a general key-value store: no deletion of single chunks by callers,
//!   no compression, no deduplication across chunk sizes.

pub mod buffers;
mod error;
mod journal;
mod reader;
mod recent;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use edgeswarm_protocol::chunkmap::{chunk_count, MAX_CHUNKS};
use edgeswarm_protocol::{
    encoding, Bitfield, ChunkError, ChunkMap, ChunkMapBuilder, ChunkSize, Digest,
};
use libp2p::PeerId;
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

pub use error::StoreError;
use journal::Record;
pub use reader::{BlobReader, ReaderAbort};
pub use recent::{RecentStats, DEFAULT_RECENT_CHUNKS};

use crate::fsutil::AtomicWriteError;

/// Capacity of the [`StoreEvent`] broadcast channel; slow subscribers see
/// `Lagged` and should resynchronise from [`Store::bitfield`].
pub const EVENT_CAPACITY: usize = 1024;

/// Buffer size for streaming hashes and copies.
const IO_BUF: usize = 1 << 20;

/// Version of the `meta` and `refs` encodings.
const META_VERSION: u64 = 1;

/// Store settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Upper bound on [`Store::usage`] in bytes (`--max-store-size`);
    /// `None` means limited only by the disk.
    pub max_size: Option<u64>,
    /// Chunks verified moments ago kept in memory to serve reads without
    /// a disk read and re-hash (default [`DEFAULT_RECENT_CHUNKS`]; 0 keeps
    /// none, so every read goes to disk and is re-verified).
    pub recent_chunks: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_size: None,
            recent_chunks: DEFAULT_RECENT_CHUNKS,
        }
    }
}

/// What a chunk about to be stored is checked against.
struct ChunkCheck {
    /// The digest it must have.
    digest: Digest,
    /// The peer whose chunk map supplied `digest` (provisional), if any.
    from_peer: Option<PeerId>,
    /// Its sha256, when the caller has just computed it from these bytes.
    sha256: Option<Digest>,
}

/// What [`Store::write_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The chunk was already held; nothing written.
    AlreadyHad,
    /// The chunk was verified and stored.
    Stored,
    /// The chunk was the last one and the whole blob verified.
    BlobComplete,
}

/// Something that happened in the store, for the swarm (advertise new
/// chunks) and the API (progress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A chunk was verified and stored durably.
    ChunkStored {
        /// The blob.
        blob: Digest,
        /// The chunk index.
        index: u32,
    },
    /// A blob is complete and verified as a whole.
    BlobComplete {
        /// The blob.
        blob: Digest,
    },
    /// A blob failed its whole-blob check and was dropped.
    BlobFailed {
        /// The blob.
        blob: Digest,
        /// Why, for logs and status.
        reason: String,
    },
    /// Chunk digests that peers' chunk maps supplied were proven false
    /// (an authoritative digest contradicted them, or the blob they
    /// assembled failed its whole-blob check): they were dropped with
    /// every chunk verified only against them. The swarm bans `sources`.
    DigestsRefuted {
        /// The blob.
        blob: Digest,
        /// The peers whose chunk maps supplied the false digests.
        sources: Vec<PeerId>,
        /// Why, for logs and the ban reason.
        reason: String,
    },
    /// Chunk digests of a partial blob became known (the gateway's signed
    /// digests by gossip, a peer's chunk map): its downloads may request
    /// those chunks now rather than at their next periodic look.
    DigestsLearned {
        /// The blob.
        blob: Digest,
    },
}

/// Layout of a blob, available as soon as it is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Size in bytes.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: ChunkSize,
    /// Number of chunks.
    pub chunk_count: u32,
    /// Chunks `0..digests_known` have known digests (all once the chunk
    /// map is known): the prefix, whatever arrived after a gap. Counts
    /// provisional digests (from a peer's chunk map) too.
    pub digests_known: u32,
}

/// One blob as listed by [`Store::blobs`] (for `edgeswarm images`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobSummary {
    /// The blob digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: ChunkSize,
    /// Number of chunks.
    pub chunk_count: u32,
    /// Verified chunks held.
    pub chunks_have: u32,
    /// Whether the blob is complete and verified as a whole.
    pub complete: bool,
    /// Pin names referencing the blob (empty: collectable).
    pub pinned_by: Vec<String>,
}

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed, oldest first.
    pub removed: Vec<Digest>,
    /// Bytes of declared size freed.
    pub freed: u64,
}

/// The chunk store. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Store {
    /// Shared state.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// State shared by clones of a [`Store`] and its readers.
struct Inner {
    /// Root directory.
    dir: PathBuf,
    /// Settings.
    config: StoreConfig,
    /// Blobs and pins.
    state: Mutex<State>,
    /// Serialises create/put/pin/gc so quota decisions see a stable usage.
    admin: tokio::sync::Mutex<()>,
    /// Event fan-out.
    events: broadcast::Sender<StoreEvent>,
    /// Set by [`Store::close`]: readers and writers stop.
    closing: AtomicBool,
    /// Unique suffix for temp files.
    tmp_seq: AtomicU64,
    /// Sizes that descriptors pin for blobs (bounded): a layout of another
    /// size is refused whoever offers it.
    expected: Mutex<HashMap<Digest, u64>>,
    /// Chunk buffers for reads, writes and the swarm's receive path.
    buffers: buffers::ChunkBuffers,
    /// Chunks verified moments ago, served again without a read.
    recent: recent::RecentChunks,
}

/// Most blob sizes [`Store::expect_size`] remembers (a few releases' layers).
const MAX_EXPECTED_SIZES: usize = 4096;

/// The expected-size table, recovered when poisoned (plain data).
fn lock_expected(m: &Mutex<HashMap<Digest, u64>>) -> MutexGuard<'_, HashMap<Digest, u64>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The in-memory index.
#[derive(Default)]
struct State {
    /// Every live blob.
    blobs: HashMap<Digest, Arc<Blob>>,
    /// Pin name -> blobs it keeps.
    pins: BTreeMap<String, Vec<Digest>>,
}

/// One blob: immutable layout plus mutable state under a mutex, with a
/// condvar readers wait on for chunks.
pub(crate) struct Blob {
    /// The blob digest.
    digest: Digest,
    /// Size in bytes.
    size: u64,
    /// Chunk size.
    chunk_size: ChunkSize,
    /// Number of chunks.
    chunk_count: u32,
    /// When it was declared (GC order: oldest first).
    created: SystemTime,
    /// Mutable state.
    st: Mutex<BlobState>,
    /// Signalled on every bit set and phase change.
    cond: Condvar,
    /// Fsync batching.
    sync: SyncState,
    /// The blob digest, hashed in order as chunks land.
    prefix: Mutex<PrefixHash>,
}

/// The blob's sha256 over its chunks `0..next`, fed as chunks land in
/// order, so the whole-blob check at completion hashes only what is left
/// (usually nothing) instead of re-reading the blob from disk: without it
/// every byte was hashed twice on the way in, once per chunk and once per
/// blob. The bytes fed are the ones that just passed their chunk check,
/// or, for chunks that landed out of order, read back from the data file
/// (as the check at completion did for all of them). A chunk that rots on
/// disk after it was fed is caught by the re-verification of every read;
/// and if the prefix ever disagrees with the blob digest, the whole file
/// is hashed again from disk before anything is declared bad, so a result
/// never rests on the prefix alone.
#[derive(Default)]
struct PrefixHash {
    /// sha256 state over chunks `0..next`.
    hasher: Sha256,
    /// Chunks fed so far.
    next: u32,
}

/// Batches fsyncs of one blob's files.
///
/// A chunk write returns once its bytes are written (`pwrite`) and its
/// journal record appended: a killed process loses nothing, as the page
/// cache keeps both. The flusher thread makes them durable within
/// [`FLUSH_INTERVAL`]: it `fdatasync`s the data up to `written`, then the
/// journal. A power loss within that window costs refetching those
/// chunks; a record that reached the disk without its bytes fails the
/// re-hash on open (see the module doc).
#[derive(Default)]
struct SyncState {
    /// Data writes completed (pwrite returned).
    written: AtomicU64,
    /// Data writes known durable; held while syncing.
    synced: Mutex<u64>,
    /// The journal has appends not yet fsynced.
    journal_dirty: AtomicBool,
}

/// Longest delay before written chunk data and appended journal records
/// are fsynced (by the flusher thread). A power loss costs refetching at
/// most this much of a download (about 12 MB at 100 Mbit/s); a crash of
/// the process costs nothing (the page cache keeps the writes). Every
/// sync of a growing file also commits the filesystem's journal, so a
/// short interval multiplies device flushes (and flash wear) for no more
/// safety than a refetch. Testnet, 21 nodes on 2 cores, each node's data
/// on its run's loop-mounted ext4, single layout, interleaved
/// (`testnet/results/sim-current-2026-12-03/`): 50 ms gave T(21) 15.99 and
/// 15.76 s, 1 s 14.88 and 14.81 s (1.19-1.24 against 1.15-1.16 CPU-s per
/// node); at 10 nodes no difference beyond the runs' spread (5.23-5.51 s
/// against 5.24-5.37 s).
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a blob is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Chunks are being collected under `partial/`.
    Partial,
    /// Every chunk is there; the whole-blob check and move are running.
    Finishing,
    /// Verified and in `blobs/sha256/`.
    Complete,
    /// Collected or replaced; handles to it are stale.
    Removed,
    /// Failed its whole-blob check.
    Failed(String),
}

/// Mutable part of a [`Blob`].
struct BlobState {
    /// Life phase.
    phase: Phase,
    /// The data file (partial `data`, or the complete blob: same inode
    /// across the final rename, so handles stay valid).
    file: Arc<File>,
    /// The journal (partial blobs only).
    journal: Option<Arc<File>>,
    /// Length of the intact journal, to cut a failed append back off.
    journal_len: u64,
    /// Known chunk digests.
    digests: Vec<Option<Digest>>,
    /// Provenance of each known digest: `Some(peer)` when only that
    /// peer's (unsigned) chunk map vouches for it (provisional), `None`
    /// when it is authoritative (the release gateway's signed updates,
    /// this node's own hashing, a verified manifest, or the journal,
    /// which records authoritative digests only).
    from_peer: Vec<Option<PeerId>>,
    /// How many entries of `digests` are known.
    known: u32,
    /// The chunk map, once every digest is known and authoritative (a
    /// map resting on provisional digests is never served on).
    map: Option<Arc<ChunkMap>>,
    /// Verified chunks: against an authoritative digest, or the whole
    /// blob. Only these are read, served and journaled.
    have: Bitfield,
    /// Chunks written and matching a provisional digest only: held back
    /// (not readable, not advertised, not journaled) until an
    /// authoritative digest or the whole-blob check confirms them, and
    /// discarded when their digest is refuted. Disjoint from `have`.
    unconfirmed: Bitfield,
    /// Bytes consumed by the furthest reader.
    cursor: u64,
    /// Open readers (the blob is not collected while > 0).
    readers: u32,
}

impl Blob {
    /// Byte range of chunk `index` (caller checked the index).
    fn range(&self, index: u32) -> Range<u64> {
        let start = index as u64 * self.chunk_size.get() as u64;
        start..(start + self.chunk_size.get() as u64).min(self.size)
    }

    /// Locks the mutable state (a poisoned lock is still usable: every
    /// update keeps the state consistent before it can panic).
    fn lock(&self) -> MutexGuard<'_, BlobState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `index` against the chunk count.
    fn check_index(&self, index: u32) -> Result<(), StoreError> {
        if index < self.chunk_count {
            Ok(())
        } else {
            Err(ChunkError::IndexOutOfRange {
                index,
                count: self.chunk_count,
            }
            .into())
        }
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Maps an I/O error that cannot be a full disk (reads, renames).
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::io(path, 0, e)
}

/// Fsyncs a directory so a rename or create in it is durable.
fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::fsutil::fsync_dir(dir).map_err(io(dir))
}

/// Stream-hashes `len` bytes of `file` from offset 0.
fn hash_file(file: &File, len: u64, path: &Path) -> Result<Digest, StoreError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; IO_BUF.min(len.max(1) as usize)];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off).map_err(io(path))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Digest::from_bytes(h.finalize().into()))
}

/// Chunks of `file` that no longer match their digests (streaming).
fn bad_chunks(
    b: &Blob,
    file: &File,
    digests: &[Digest],
    path: &Path,
) -> Result<Vec<u32>, StoreError> {
    let mut buf = vec![0u8; b.chunk_size.get() as usize];
    let mut bad = Vec::new();
    for (i, d) in digests.iter().enumerate() {
        let r = b.range(i as u32);
        let n = (r.end - r.start) as usize;
        file.read_exact_at(&mut buf[..n], r.start)
            .map_err(io(path))?;
        if Digest::of(&buf[..n]) != *d {
            bad.push(i as u32);
        }
    }
    Ok(bad)
}

/// `[version, size, chunk_size]` of a partial blob.
type Meta = (u64, u64, ChunkSize);
/// `[version, name, blobs]` of a pin.
type PinFile = (u64, String, Vec<Digest>);

impl Inner {
    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.to_hex())
    }
    fn map_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("maps/sha256").join(d.to_hex())
    }
    fn partial_dir(&self, d: &Digest) -> PathBuf {
        self.dir.join("partial").join(d.to_hex())
    }
    fn pin_path(&self, name: &str) -> PathBuf {
        self.dir.join("refs").join(hex::encode(name.as_bytes()))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, blob: &Digest) -> Result<Arc<Blob>, StoreError> {
        self.lock()
            .blobs
            .get(blob)
            .cloned()
            .ok_or(StoreError::UnknownBlob(*blob))
    }

    fn emit(&self, ev: StoreEvent) {
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }

    /// Writes `bytes` to `dest` atomically: temp file, fsync, rename, fsync
    /// dir ([`crate::fsutil::write_atomic_via`]), with the temp file in
    /// the store's own `tmp/`, which opening the store empties.
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        crate::fsutil::write_atomic_via(dest, bytes, &tmp).map_err(|e| match e {
            AtomicWriteError::Temp(e) => StoreError::io(&tmp, bytes.len() as u64, e),
            AtomicWriteError::Publish(e) => StoreError::io(dest, 0, e),
        })
    }

    /// Appends `rec` to a partial blob's journal (under its lock). A failed
    /// append is cut off again so later records stay readable.
    fn append(&self, b: &Blob, st: &mut BlobState, rec: &Record) -> Result<(), StoreError> {
        let Some(j) = st.journal.clone() else {
            return Ok(());
        };
        let bytes = rec.encode();
        let path = self.partial_dir(&b.digest).join("journal");
        if let Err(e) = (&*j).write_all(&bytes) {
            let _ = j.set_len(st.journal_len);
            return Err(StoreError::io(&path, bytes.len() as u64, e));
        }
        st.journal_len += bytes.len() as u64;
        b.sync.journal_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Drops every provisional digest whose source `refuted` names, and
    /// every chunk verified only against one of them (never journaled, so
    /// nothing on disk needs undoing: the bytes are overwritten when the
    /// chunk is fetched again). Returns the discarded chunks.
    fn drop_provisional(
        &self,
        b: &Blob,
        st: &mut BlobState,
        refuted: impl Fn(&PeerId) -> bool,
    ) -> Vec<u32> {
        let mut discarded = Vec::new();
        for i in 0..b.chunk_count {
            let slot = i as usize;
            if !st.from_peer[slot].as_ref().is_some_and(&refuted) {
                continue;
            }
            st.from_peer[slot] = None;
            st.digests[slot] = None;
            st.known -= 1;
            if st.unconfirmed.get(i) {
                st.unconfirmed.clear(i);
                discarded.push(i);
            }
        }
        refresh_map(b, st);
        discarded
    }

    /// Forgets the in-order digest if it went past chunk `first` (which
    /// is gone again); the check at completion then hashes from disk.
    fn reset_prefix(&self, b: &Blob, first: u32) {
        let mut p = b.prefix.lock().unwrap_or_else(|e| e.into_inner());
        if p.next > first {
            *p = PrefixHash::default();
        }
    }

    /// Fsyncs, blob by blob, the chunk data written since the last pass,
    /// then the journal's unsynced appends (the flusher thread,
    /// [`Store::flush`] and drop). A blob with neither costs two atomic
    /// loads and an uncontended lock: no state lock, no syscall.
    fn flush_blobs(&self) {
        let blobs: Vec<Arc<Blob>> = self.lock().blobs.values().cloned().collect();
        for b in blobs {
            self.sync_data(&b);
            self.sync_journal(&b);
        }
    }

    /// Fsyncs `b`'s chunk data if a write came since the last sync.
    fn sync_data(&self, b: &Blob) {
        let mut synced = b.sync.synced.lock().unwrap_or_else(|e| e.into_inner());
        let target = b.sync.written.load(Ordering::SeqCst);
        if *synced >= target {
            return;
        }
        let data = b.lock().file.clone();
        match data.sync_data() {
            Ok(()) => *synced = target,
            // Nothing here can tell which chunks were lost (a failed sync
            // need not fail again): the re-hash on open clears what never
            // reached the disk.
            Err(e) => tracing::warn!(blob = %b.digest, error = %e, "chunk data fsync failed"),
        }
    }

    /// Fsyncs `b`'s journal if it has appends not yet synced.
    fn sync_journal(&self, b: &Blob) {
        if !b.sync.journal_dirty.swap(false, Ordering::SeqCst) {
            return;
        }
        let Some(j) = b.lock().journal.clone() else {
            return;
        };
        if let Err(e) = j.sync_data() {
            b.sync.journal_dirty.store(true, Ordering::SeqCst);
            // At worst chunks are fetched again.
            tracing::warn!(blob = %b.digest, error = %e, "journal fsync failed");
        }
    }

    /// Evicts unpinned, idle blobs oldest first until `needed` more bytes
    /// fit under the quota (`needed = None`: evict all of them).
    fn collect(&self, needed: Option<u64>, keep: Option<&Digest>) -> GcReport {
        let mut report = GcReport::default();
        let victims: Vec<Arc<Blob>> = {
            let mut state = self.lock();
            let pinned: std::collections::HashSet<Digest> =
                state.pins.values().flatten().copied().collect();
            let mut candidates: Vec<Arc<Blob>> = state
                .blobs
                .values()
                .filter(|b| !pinned.contains(&b.digest) && Some(&b.digest) != keep)
                .filter(|b| {
                    let st = b.lock();
                    st.readers == 0 && matches!(st.phase, Phase::Partial | Phase::Complete)
                })
                .cloned()
                .collect();
            candidates.sort_by_key(|b| (b.created, b.digest));
            let mut usage = usage_of(&state);
            let mut out = Vec::new();
            for b in candidates {
                if let (Some(n), Some(max)) = (needed, self.config.max_size) {
                    if usage.saturating_add(n) <= max {
                        break;
                    }
                }
                let mut st = b.lock();
                if st.readers > 0 || !matches!(st.phase, Phase::Partial | Phase::Complete) {
                    continue;
                }
                st.phase = Phase::Removed;
                drop(st);
                b.cond.notify_all();
                self.forget_recent(&b);
                state.blobs.remove(&b.digest);
                usage -= b.size;
                report.removed.push(b.digest);
                report.freed += b.size;
                out.push(b);
            }
            out
        };
        for b in victims {
            self.delete_files(&b.digest);
            tracing::info!(blob = %b.digest, size = b.size, "collected unpinned blob");
        }
        report
    }

    /// Removes every file of a blob (best effort; leftovers are cleaned on open).
    fn delete_files(&self, d: &Digest) {
        let _ = fs::remove_file(self.blob_path(d));
        let _ = fs::remove_file(self.map_path(d));
        let _ = fs::remove_dir_all(self.partial_dir(d));
    }

    /// Verifies and durably stores one chunk, then sets its bit (blocking):
    /// `have` for an authoritative digest, `unconfirmed` for a provisional
    /// one (`check.from_peer`).
    fn write_chunk_blocking(
        &self,
        b: &Arc<Blob>,
        index: u32,
        check: ChunkCheck,
        file: &File,
        bytes: &Bytes,
    ) -> Result<WriteOutcome, StoreError> {
        let ChunkCheck {
            digest,
            from_peer,
            sha256,
        } = check;
        let range = b.range(index);
        let expected = (range.end - range.start) as u32;
        if bytes.len() != expected as usize {
            return Err(ChunkError::WrongLength {
                index,
                expected,
                actual: bytes.len(),
            }
            .into());
        }
        // Off the runtime (this runs on the blocking pool), like the hash.
        debug_assert!(
            sha256.is_none_or(|s| s == Digest::of(bytes)),
            "write_own_chunk: not the digest of these bytes"
        );
        let actual = sha256.unwrap_or_else(|| Digest::of(bytes));
        if let (true, Some(source)) = (actual != digest, from_peer) {
            // Either the sender or the map's source lies: nobody is known
            // to be at fault yet.
            return Err(StoreError::DigestDisputed {
                blob: b.digest,
                index,
                peer: Box::new(source),
                actual,
            });
        }
        if actual != digest {
            return Err(ChunkError::DigestMismatch {
                index,
                expected: digest,
                actual,
            }
            .into());
        }
        let data_path = self.partial_dir(&b.digest).join("data");
        file.write_all_at(bytes, range.start)
            .map_err(|e| StoreError::io(&data_path, bytes.len() as u64, e))?;
        // Made durable by the flusher (`SyncState`), not here.
        b.sync.written.fetch_add(1, Ordering::SeqCst);
        let complete = {
            let mut st = b.lock();
            match st.phase {
                Phase::Partial => {}
                Phase::Finishing | Phase::Complete => {
                    tracing::debug!(blob = %b.digest, index, "chunk already held");
                    return Ok(WriteOutcome::AlreadyHad);
                }
                Phase::Removed | Phase::Failed(_) => return Err(StoreError::UnknownBlob(b.digest)),
            }
            if st.have.get(index) || st.unconfirmed.get(index) {
                tracing::debug!(blob = %b.digest, index, "chunk already held");
                return Ok(WriteOutcome::AlreadyHad);
            }
            // The digest may have been refuted, or confirmed, while the
            // chunk was hashed and written: the bit follows what is
            // recorded now, never what was looked up before.
            let confirmed = match (st.digests[index as usize], st.from_peer[index as usize]) {
                (Some(d), None) if d == digest => true,
                (Some(d), Some(_)) if d == digest => false,
                _ => {
                    return Err(StoreError::DigestUnknown {
                        blob: b.digest,
                        index,
                    })
                }
            };
            if confirmed {
                self.append(b, &mut st, &Record::Verified(vec![index]))?;
                st.have.set(index);
                // After the journal record: a chunk logged here survives
                // kill -9, so the fault-injection suite reads a second line
                // for one chunk as a verified chunk fetched twice.
                tracing::debug!(blob = %b.digest, index, "chunk stored");
            } else {
                st.unconfirmed.set(index);
                tracing::debug!(blob = %b.digest, index, "chunk stored unconfirmed (provisional digest)");
            }
            let complete = st.have.count_ones() + st.unconfirmed.count_ones() == b.chunk_count;
            if complete {
                st.phase = Phase::Finishing;
            }
            (complete, confirmed)
        };
        let (complete, confirmed) = complete;
        if confirmed {
            // Only chunks readers may read (`have`): an unconfirmed one's
            // bytes could be refuted and replaced without a write.
            for old in self.recent.insert(b, index, bytes) {
                self.buffers.give_back(old);
            }
        }
        b.cond.notify_all();
        if confirmed {
            self.emit(StoreEvent::ChunkStored {
                blob: b.digest,
                index,
            });
        }
        self.advance_prefix(b, file, index, bytes);
        if complete {
            self.finish(b)
        } else {
            Ok(WriteOutcome::Stored)
        }
    }

    /// Feeds chunk `index` (just verified and stored as `bytes`) to the
    /// blob's in-order digest if it is next, then any chunks after it that
    /// landed earlier, read back from `file`. Never waits: if another
    /// writer is feeding, that writer (or the check at completion) picks
    /// this chunk up. Reads stop at the first failure; the check at
    /// completion reads the rest.
    fn advance_prefix(&self, b: &Blob, file: &File, index: u32, bytes: &[u8]) {
        let Ok(mut p) = b.prefix.try_lock() else {
            return;
        };
        if index == p.next {
            p.hasher.update(bytes);
            p.next += 1;
        }
        // Taken from the pool only when a chunk has to be read back.
        let mut buf: Option<Vec<u8>> = None;
        while p.next < b.chunk_count {
            {
                // Lock order: prefix, then state (never the other way).
                let st = b.lock();
                if st.phase != Phase::Partial
                    || !(st.have.get(p.next) || st.unconfirmed.get(p.next))
                {
                    break;
                }
            }
            let r = b.range(p.next);
            let len = (r.end - r.start) as usize;
            let buf = buf.get_or_insert_with(|| self.buffers.take(len));
            buf.resize(len, 0);
            if file.read_exact_at(buf, r.start).is_err() {
                break;
            }
            p.hasher.update(buf);
            p.next += 1;
        }
        if let Some(buf) = buf {
            self.buffers.give_back_vec(buf);
        }
    }

    /// Whole-blob check and move into `blobs/` (blocking; phase is Finishing).
    fn finish(&self, b: &Arc<Blob>) -> Result<WriteOutcome, StoreError> {
        let (file, digests, provisional) = {
            let st = b.lock();
            (
                st.file.clone(),
                st.digests
                    .iter()
                    .map(|d| d.expect("all known"))
                    .collect::<Vec<_>>(),
                st.from_peer.iter().any(Option::is_some),
            )
        };
        let dir = self.partial_dir(&b.digest);
        let data_path = dir.join("data");
        let res = (|| {
            let actual = self.blob_digest(b, &file, &data_path)?;
            if actual != b.digest {
                // Rot since the chunks were verified, or a lying chunk map?
                let bad = bad_chunks(b, &file, &digests, &data_path)?;
                return Ok(Err((actual, bad)));
            }
            let map = ChunkMap::new(b.size, b.chunk_size, digests).map_err(|e| StoreError::Io {
                path: data_path.clone(),
                source: std::io::Error::other(e),
            })?;
            file.sync_all().map_err(io(&data_path))?;
            self.write_atomic(&self.map_path(&b.digest), &map.encode())?;
            let dest = self.blob_path(&b.digest);
            fs::rename(&data_path, &dest).map_err(io(&dest))?;
            fsync_dir(dest.parent().expect("parent"))?;
            let _ = fs::remove_dir_all(&dir);
            let _ = fsync_dir(&self.dir.join("partial"));
            Ok(Ok(map))
        })();
        match res {
            Ok(Ok(map)) => {
                {
                    let mut st = b.lock();
                    st.phase = Phase::Complete;
                    st.journal = None;
                    st.map = Some(Arc::new(map));
                    // The whole blob verified: every provisional digest
                    // and unconfirmed chunk was right.
                    st.have = Bitfield::full(b.chunk_count);
                    st.unconfirmed = Bitfield::new(b.chunk_count);
                    st.from_peer.iter_mut().for_each(|p| *p = None);
                }
                b.cond.notify_all();
                tracing::info!(blob = %b.digest, size = b.size, "blob complete and verified");
                self.emit(StoreEvent::BlobComplete { blob: b.digest });
                Ok(WriteOutcome::BlobComplete)
            }
            Ok(Err((_, bad))) if !bad.is_empty() => {
                // Chunks rotted on disk after they were verified: refetch
                // just those.
                tracing::warn!(blob = %b.digest, chunks = ?bad, "chunks rotted before the whole-blob check; cleared for refetch");
                {
                    let mut st = b.lock();
                    for &i in &bad {
                        st.have.clear(i);
                        st.unconfirmed.clear(i);
                    }
                    if let Err(e) = self.append(b, &mut st, &Record::Cleared(bad)) {
                        tracing::warn!(blob = %b.digest, error = %e, "could not journal cleared chunks");
                    }
                    st.phase = Phase::Partial;
                }
                b.cond.notify_all();
                Ok(WriteOutcome::Stored)
            }
            Ok(Err((actual, _))) if provisional => {
                // Every chunk matches its digest and the blob is still
                // wrong: the digests are. Authoritative ones always win,
                // so the provisional ones lied; they go with the chunks
                // that rest on them, and the blob is fetched on from the
                // chunks verified against authoritative digests.
                let reason = format!("chunk map assembles content hashing to {actual}");
                let (sources, discarded) = {
                    let mut st = b.lock();
                    let mut sources: Vec<PeerId> = st.from_peer.iter().flatten().copied().collect();
                    sources.sort();
                    sources.dedup();
                    let discarded = self.drop_provisional(b, &mut st, |_| true);
                    st.phase = Phase::Partial;
                    (sources, discarded)
                };
                b.cond.notify_all();
                tracing::warn!(blob = %b.digest, %actual, ?sources, discarded = discarded.len(), "blob failed its whole-blob check on peers' digests; dropped them and their chunks");
                self.emit(StoreEvent::DigestsRefuted {
                    blob: b.digest,
                    sources: sources.clone(),
                    reason,
                });
                Err(StoreError::DigestsRefuted {
                    blob: b.digest,
                    sources,
                    actual,
                })
            }
            Ok(Err((actual, _))) => {
                let reason = format!("content hashes to {actual}");
                {
                    let mut st = b.lock();
                    st.phase = Phase::Failed(reason.clone());
                }
                b.cond.notify_all();
                self.forget_recent(b);
                {
                    let mut state = self.lock();
                    if state
                        .blobs
                        .get(&b.digest)
                        .is_some_and(|x| Arc::ptr_eq(x, b))
                    {
                        state.blobs.remove(&b.digest);
                    }
                }
                let _ = fs::remove_dir_all(&dir);
                tracing::error!(blob = %b.digest, %actual, "blob failed its whole-blob check; dropped");
                self.emit(StoreEvent::BlobFailed {
                    blob: b.digest,
                    reason,
                });
                Err(StoreError::BlobCorrupt {
                    blob: b.digest,
                    actual,
                })
            }
            Err(e) => {
                // Retried on the next open (every bit is set then).
                b.lock().phase = Phase::Partial;
                b.cond.notify_all();
                Err(e)
            }
        }
    }

    /// The digest of a blob whose chunks are all held (blocking): the
    /// in-order prefix plus the chunks after it, read from `file`. Takes
    /// the prefix (a retry after refetches starts again from chunk 0). If
    /// that disagrees with the blob digest, the whole file is hashed from
    /// disk, so a mismatch never rests on the prefix.
    fn blob_digest(&self, b: &Blob, file: &File, path: &Path) -> Result<Digest, StoreError> {
        // Held until done: a late writer's catch-up waits for nothing and
        // finds the phase no longer Partial.
        let mut guard = b.prefix.lock().unwrap_or_else(|e| {
            // A panic while feeding may have left it half updated.
            let mut g = e.into_inner();
            *g = PrefixHash::default();
            g
        });
        let PrefixHash { mut hasher, next } = std::mem::take(&mut *guard);
        if next == 0 {
            return hash_file(file, b.size, path);
        }
        let start = (next as u64 * b.chunk_size.get() as u64).min(b.size);
        let mut buf = vec![0u8; IO_BUF.min((b.size - start).max(1) as usize)];
        let mut off = start;
        while off < b.size {
            let n = ((b.size - off) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], off).map_err(io(path))?;
            hasher.update(&buf[..n]);
            off += n as u64;
        }
        let actual = Digest::from_bytes(hasher.finalize().into());
        if actual == b.digest {
            return Ok(actual);
        }
        tracing::warn!(blob = %b.digest, chunks = next, "in-order digest disagrees; hashing the whole blob from disk");
        hash_file(file, b.size, path)
    }

    /// Reads and re-verifies one chunk (blocking).
    fn read_chunk_blocking(&self, b: &Arc<Blob>, index: u32) -> Result<Bytes, StoreError> {
        let (file, digest, path) = {
            let st = b.lock();
            self.check_readable(b, &st, index)?;
            if let Some(bytes) = self.recent.get(b, index) {
                return Ok(bytes);
            }
            self.recent.missed();
            let path = if st.phase == Phase::Complete {
                self.blob_path(&b.digest)
            } else {
                self.partial_dir(&b.digest).join("data")
            };
            (
                st.file.clone(),
                st.digests[index as usize].expect("set bit has a digest"),
                path,
            )
        };
        let range = b.range(index);
        let mut buf = self.buffers.take((range.end - range.start) as usize);
        file.read_exact_at(&mut buf, range.start)
            .map_err(io(&path))?;
        let actual = Digest::of(&buf);
        if actual != digest {
            self.chunk_corrupt(b, index);
            return Err(StoreError::ChunkCorrupt {
                blob: b.digest,
                index,
                actual,
            });
        }
        Ok(Bytes::from(buf))
    }

    /// Frees the recently verified chunks of `b`, which is gone.
    fn forget_recent(&self, b: &Arc<Blob>) {
        for old in self.recent.forget_blob(b) {
            self.buffers.give_back(old);
        }
    }

    /// Chunk `index` of `b` as [`Self::read_chunk_blocking`] would return
    /// it, if it is held and still in [`Inner::recent`]: no disk, no hash,
    /// so no need for the blocking pool.
    fn recent_chunk(&self, b: &Arc<Blob>, index: u32) -> Option<Bytes> {
        let st = b.lock();
        self.check_readable(b, &st, index).ok()?;
        self.recent.get(b, index)
    }

    /// Whether chunk `index` of `b` may be read: its blob live, the chunk
    /// held (`have`; an unconfirmed chunk is not read).
    fn check_readable(&self, b: &Blob, st: &BlobState, index: u32) -> Result<(), StoreError> {
        match st.phase {
            Phase::Removed | Phase::Failed(_) => return Err(StoreError::UnknownBlob(b.digest)),
            _ => {}
        }
        if !st.have.get(index) {
            return Err(StoreError::ChunkMissing {
                blob: b.digest,
                index,
            });
        }
        Ok(())
    }

    /// A held chunk failed re-verification: clear its bit durably. A
    /// complete blob goes back to `partial/` so only this chunk is refetched.
    /// A partial blob's in-order digest forgets it if it went past the
    /// chunk: it may have hashed these rotten bytes, and the prefix only
    /// ever covers chunks still held (as for discarded provisional ones).
    fn chunk_corrupt(&self, b: &Arc<Blob>, index: u32) {
        tracing::warn!(blob = %b.digest, index, "chunk failed re-verification; cleared for refetch");
        let mut st = b.lock();
        match st.phase {
            Phase::Partial if st.have.get(index) => {
                st.have.clear(index);
                if let Err(e) = self.append(b, &mut st, &Record::Cleared(vec![index])) {
                    // The restart re-hash clears it anyway.
                    tracing::warn!(blob = %b.digest, error = %e, "could not journal a cleared chunk");
                }
            }
            Phase::Complete => match self.demote(b, &mut st, index) {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(blob = %b.digest, error = %e, "could not move a damaged blob back to partial; dropping it");
                    st.phase = Phase::Failed(format!("chunk {index} rotted on disk"));
                    drop(st);
                    self.lock().blobs.remove(&b.digest);
                    self.delete_files(&b.digest);
                    b.cond.notify_all();
                    return;
                }
            },
            _ => {}
        }
        drop(st);
        // Lock order: prefix before state, so only once `st` is dropped.
        self.reset_prefix(b, index);
        b.cond.notify_all();
    }

    /// Moves a complete blob back to `partial/` with chunk `index` cleared.
    fn demote(&self, b: &Blob, st: &mut BlobState, index: u32) -> Result<(), StoreError> {
        let dir = self.partial_dir(&b.digest);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let digests: Vec<Digest> = st.digests.iter().map(|d| d.expect("complete")).collect();
        let mut journal = Record::Digests { first: 0, digests }.encode();
        let held: Vec<u32> = (0..b.chunk_count).filter(|&i| i != index).collect();
        journal.extend(Record::Verified(held).encode());
        let jpath = dir.join("journal");
        self.write_atomic(&jpath, &journal)?;
        let data = dir.join("data");
        fs::rename(self.blob_path(&b.digest), &data).map_err(io(&data))?;
        let meta: Meta = (META_VERSION, b.size, b.chunk_size);
        self.write_atomic(&dir.join("meta"), &encoding::encode(&meta))?;
        let _ = fs::remove_file(self.map_path(&b.digest));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data)
            .map_err(io(&data))?;
        let j = OpenOptions::new()
            .append(true)
            .open(&jpath)
            .map_err(io(&jpath))?;
        st.file = Arc::new(file);
        st.journal = Some(Arc::new(j));
        st.journal_len = journal.len() as u64;
        st.have.clear(index);
        st.phase = Phase::Partial;
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flush_blobs();
    }
}

/// Sets a partial blob's chunk map once every digest is known and
/// authoritative, and clears it otherwise.
fn refresh_map(b: &Blob, st: &mut BlobState) {
    if st.phase == Phase::Complete {
        return;
    }
    st.map = if st.known == b.chunk_count && st.from_peer.iter().all(Option::is_none) {
        let all = st.digests.iter().map(|d| d.expect("known")).collect();
        ChunkMap::new(b.size, b.chunk_size, all).ok().map(Arc::new)
    } else {
        None
    };
}

/// Sum of declared sizes of live blobs.
fn usage_of(state: &State) -> u64 {
    state.blobs.values().map(|b| b.size).sum()
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, recovering from any
    /// crash: torn journal tails are dropped and every chunk marked present
    /// in a partial blob is re-hashed; failures are cleared for refetch.
    #[tracing::instrument(level = "debug", skip(config), fields(dir = %dir.display()))]
    pub async fn open(dir: PathBuf, config: StoreConfig) -> Result<Store, StoreError> {
        let (inner, finish) = blocking(move || recover::open(dir, config)).await?;
        let store = Store {
            inner: Arc::new(inner),
        };
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_INTERVAL);
                let Some(inner) = weak.upgrade() else { break };
                inner.flush_blobs();
            })
            .map_err(|e| StoreError::Task(format!("spawning the journal flusher: {e}")))?;
        for b in finish {
            let inner = store.inner.clone();
            let digest = b.digest;
            // A blob that lost its final step in a crash; a failure is logged
            // and leaves it dropped (BlobCorrupt) or partial (I/O).
            if let Err(e) = blocking(move || inner.finish(&b)).await {
                tracing::warn!(blob = %digest, error = %e, "finishing a recovered blob failed");
            }
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Declares a blob (size known from the manifest). Idempotent; a
    /// different size or chunk size than declared before is refused. Under
    /// a quota, unpinned blobs are collected first to make room.
    #[tracing::instrument(level = "debug", skip(self), fields(blob = %blob))]
    pub async fn create_blob(
        &self,
        blob: Digest,
        size: u64,
        chunk_size: ChunkSize,
    ) -> Result<(), StoreError> {
        let count = chunk_count(size, chunk_size);
        if count > MAX_CHUNKS as u64 {
            return Err(ChunkError::TooManyChunks {
                size,
                chunk_size: chunk_size.get(),
                max: MAX_CHUNKS,
            }
            .into());
        }
        if let Some(&expected) = lock_expected(&self.inner.expected).get(&blob) {
            if expected != size {
                return Err(StoreError::SizeMismatch {
                    blob,
                    expected,
                    size,
                });
            }
        }
        self.check_open()?;
        let _admin = self.inner.admin.lock().await;
        if let Some(b) = self.inner.lock().blobs.get(&blob) {
            if b.size == size && b.chunk_size == chunk_size {
                return Ok(());
            }
            return Err(StoreError::LayoutConflict {
                blob,
                existing_size: b.size,
                existing_chunk_size: b.chunk_size,
                size,
                chunk_size,
            });
        }
        self.reserve(blob, size).await?;
        let inner = self.inner.clone();
        let b = blocking(move || recover::create_partial(&inner, blob, size, chunk_size)).await?;
        self.inner.lock().blobs.insert(blob, b.clone());
        tracing::debug!(%blob, size, chunks = count, "declared blob");
        if count == 0 {
            b.lock().phase = Phase::Finishing;
            let inner = self.inner.clone();
            blocking(move || inner.finish(&b)).await?;
        }
        Ok(())
    }

    /// Makes room for `size` more bytes under the quota, collecting
    /// unpinned blobs oldest first.
    async fn reserve(&self, blob: Digest, size: u64) -> Result<(), StoreError> {
        let Some(max) = self.inner.config.max_size else {
            return Ok(());
        };
        if self.usage().saturating_add(size) <= max {
            return Ok(());
        }
        let inner = self.inner.clone();
        let report = blocking(move || Ok(inner.collect(Some(size), Some(&blob)))).await?;
        if !report.removed.is_empty() {
            tracing::info!(
                freed = report.freed,
                blobs = report.removed.len(),
                "quota pressure: collected unpinned blobs"
            );
        }
        let used = self.usage();
        if used.saturating_add(size) > max {
            return Err(StoreError::QuotaExceeded {
                blob,
                needed: size,
                used,
                max,
            });
        }
        Ok(())
    }

    /// Records authoritative chunk digests `first_index..` as they become
    /// known: the release gateway's signed updates, this node's own
    /// hashing of what it pulls, a one-chunk blob's own digest from a
    /// verified manifest. A digest conflicting with a recorded
    /// authoritative one is refused and nothing of the batch is recorded.
    /// Authoritative digests always win over provisional ones (from a
    /// peer's chunk map, [`put_peer_chunk_map`](Self::put_peer_chunk_map)):
    /// a matching provisional digest is confirmed (with its unconfirmed
    /// chunk); a contradicted one refutes its source, whose provisional
    /// digests are all dropped with the chunks verified only against them.
    /// Returns the refuted sources (also sent as
    /// [`StoreEvent::DigestsRefuted`]) for the caller to ban.
    pub async fn add_chunk_digests(
        &self,
        blob: Digest,
        first_index: u32,
        digests: &[Digest],
    ) -> Result<Vec<PeerId>, StoreError> {
        let b = self.inner.get(&blob)?;
        let end = first_index as u64 + digests.len() as u64;
        if end > b.chunk_count as u64 {
            return Err(ChunkError::IndexOutOfRange {
                index: (end - 1).min(u32::MAX as u64) as u32,
                count: b.chunk_count,
            }
            .into());
        }
        let digests = digests.to_vec();
        let inner = self.inner.clone();
        blocking(move || {
            let (refuted, discarded, confirmed) = {
                let mut st = b.lock();
                let mut new = false;
                let mut refuted: Vec<PeerId> = Vec::new();
                for (i, d) in digests.iter().enumerate() {
                    let index = first_index + i as u32;
                    match (st.digests[index as usize], st.from_peer[index as usize]) {
                        (Some(known), None) if known != *d => {
                            return Err(StoreError::DigestConflict {
                                blob,
                                index,
                                known,
                                offered: *d,
                            })
                        }
                        (Some(_), None) => {}
                        (Some(known), Some(source)) => {
                            new = true;
                            if known != *d && !refuted.contains(&source) {
                                refuted.push(source);
                            }
                        }
                        (None, _) => new = true,
                    }
                }
                if !new {
                    return Ok(Vec::new());
                }
                match st.phase {
                    Phase::Partial => {}
                    Phase::Finishing if refuted.is_empty() => {}
                    Phase::Finishing => {
                        // Every chunk is in and the whole-blob check is
                        // running: it fails on the false digests and drops
                        // them there.
                        tracing::debug!(%blob, "digests refuted during the whole-blob check");
                        return Ok(refuted);
                    }
                    _ => return Err(StoreError::UnknownBlob(blob)),
                }
                let rec = Record::Digests {
                    first: first_index,
                    digests: digests.clone(),
                };
                inner.append(&b, &mut st, &rec)?;
                let discarded = inner.drop_provisional(&b, &mut st, |p| refuted.contains(p));
                let mut confirmed = Vec::new();
                for (i, d) in digests.iter().enumerate() {
                    let index = first_index + i as u32;
                    let slot = index as usize;
                    if st.digests[slot].is_none() {
                        st.digests[slot] = Some(*d);
                        st.known += 1;
                    }
                    st.from_peer[slot] = None;
                    if st.unconfirmed.get(index) {
                        confirmed.push(index);
                    }
                }
                if !confirmed.is_empty() {
                    // Verified against what is now an authoritative digest.
                    if let Err(e) = inner.append(&b, &mut st, &Record::Verified(confirmed.clone())) {
                        // Not held then: they are fetched again.
                        tracing::warn!(%blob, error = %e, "could not journal confirmed chunks");
                        for &i in &confirmed {
                            st.unconfirmed.clear(i);
                        }
                        confirmed.clear();
                    }
                    for &i in &confirmed {
                        st.unconfirmed.clear(i);
                        st.have.set(i);
                    }
                }
                refresh_map(&b, &mut st);
                (refuted, discarded, confirmed)
            };
            if let Some(&first) = discarded.iter().min() {
                inner.reset_prefix(&b, first);
            }
            b.cond.notify_all();
            inner.emit(StoreEvent::DigestsLearned { blob });
            for index in confirmed {
                inner.emit(StoreEvent::ChunkStored { blob, index });
            }
            if !refuted.is_empty() {
                tracing::warn!(%blob, sources = ?refuted, discarded = discarded.len(), "authoritative chunk digests contradict peers' chunk maps; dropped their digests and chunks");
                inner.emit(StoreEvent::DigestsRefuted {
                    blob,
                    sources: refuted.clone(),
                    reason: "chunk map contradicts the authoritative chunk digests".into(),
                });
            }
            Ok(refuted)
        })
        .await
    }

    /// Records the digests of a chunk map that `source`, a peer, served:
    /// provisional until an authoritative digest or the whole-blob check
    /// confirms them (see [`add_chunk_digests`](Self::add_chunk_digests)).
    /// Declares the blob first. A map contradicting an authoritative
    /// digest or a complete blob's map is [`StoreError::DigestConflict`]
    /// (the source lies); one contradicting another peer's provisional
    /// digest is [`StoreError::MapDisputed`] (one of them lies; the
    /// whole-blob check will tell) and nothing of it is recorded.
    pub async fn put_peer_chunk_map(
        &self,
        blob: Digest,
        map: &ChunkMap,
        source: PeerId,
    ) -> Result<(), StoreError> {
        self.create_blob(blob, map.blob_size(), map.chunk_size())
            .await?;
        if self.is_complete(&blob) {
            return self.put_chunk_map(blob, map).await;
        }
        let b = self.inner.get(&blob)?;
        if map.chunk_count() != b.chunk_count {
            // create_blob checked size and chunk size, so this cannot be.
            return Err(ChunkError::IndexOutOfRange {
                index: map.chunk_count(),
                count: b.chunk_count,
            }
            .into());
        }
        let mut st = b.lock();
        if st.phase != Phase::Partial {
            return Ok(());
        }
        // A contradicted authoritative digest proves the lie, wherever a
        // dispute with another peer's map comes first.
        for (i, d) in map.digests().iter().enumerate() {
            if let (Some(known), None) = (st.digests[i], st.from_peer[i]) {
                if known != *d {
                    return Err(StoreError::DigestConflict {
                        blob,
                        index: i as u32,
                        known,
                        offered: *d,
                    });
                }
            }
        }
        for (i, d) in map.digests().iter().enumerate() {
            if let (Some(known), Some(other)) = (st.digests[i], st.from_peer[i]) {
                if known != *d {
                    return Err(StoreError::MapDisputed {
                        blob,
                        index: i as u32,
                        peer: other,
                    });
                }
            }
        }
        let mut learned = false;
        for (i, d) in map.digests().iter().enumerate() {
            if st.digests[i].is_none() {
                st.digests[i] = Some(*d);
                st.from_peer[i] = Some(source);
                st.known += 1;
                learned = true;
            }
        }
        drop(st);
        b.cond.notify_all();
        if learned {
            self.inner.emit(StoreEvent::DigestsLearned { blob });
        }
        Ok(())
    }

    /// [`create_blob`](Self::create_blob) plus
    /// [`add_chunk_digests`](Self::add_chunk_digests) for a complete map
    /// this node trusts (authoritative: computed here or checked against
    /// a verified document); a peer's map goes through
    /// [`put_peer_chunk_map`](Self::put_peer_chunk_map).
    pub async fn put_chunk_map(&self, blob: Digest, map: &ChunkMap) -> Result<(), StoreError> {
        self.create_blob(blob, map.blob_size(), map.chunk_size())
            .await?;
        if self.is_complete(&blob) {
            // A complete blob's map was computed from its verified bytes.
            return match self.chunk_map(&blob) {
                Some(m) if *m == *map => Ok(()),
                Some(m) => {
                    let index = m
                        .digests()
                        .iter()
                        .zip(map.digests())
                        .position(|(a, b)| a != b)
                        .unwrap_or(0) as u32;
                    Err(StoreError::DigestConflict {
                        blob,
                        index,
                        known: m.digests()[index as usize],
                        offered: map.digests()[index as usize],
                    })
                }
                None => Ok(()),
            };
        }
        self.add_chunk_digests(blob, 0, map.digests())
            .await
            .map(drop)
    }

    /// Pins `blob`'s size to what its descriptor (a verified manifest)
    /// says: any later layout of another size is refused
    /// ([`StoreError::SizeMismatch`]), whoever offers it. Fails when the
    /// blob is already declared with another size.
    pub fn expect_size(&self, blob: Digest, size: u64) -> Result<(), StoreError> {
        {
            let mut expected = lock_expected(&self.inner.expected);
            if expected.len() >= MAX_EXPECTED_SIZES && !expected.contains_key(&blob) {
                // Oldest entries are not tracked; any one will do, since a
                // release re-pins its layers each time it runs.
                if let Some(k) = expected.keys().next().copied() {
                    expected.remove(&k);
                }
            }
            expected.insert(blob, size);
        }
        match self.blob_info(&blob) {
            Some(info) if info.size != size => Err(StoreError::SizeMismatch {
                blob,
                expected: size,
                size: info.size,
            }),
            _ => Ok(()),
        }
    }

    /// The size pinned for `blob` by [`Store::expect_size`], if any.
    pub fn expected_size(&self, blob: &Digest) -> Option<u64> {
        lock_expected(&self.inner.expected).get(blob).copied()
    }

    /// The chunk map once every digest is known.
    pub fn chunk_map(&self, blob: &Digest) -> Option<Arc<ChunkMap>> {
        let b = self.inner.get(blob).ok()?;
        let st = b.lock();
        st.map.clone()
    }

    /// Layout info, even while digests are still arriving.
    pub fn blob_info(&self, blob: &Digest) -> Option<BlobInfo> {
        let b = self.inner.get(blob).ok()?;
        // The known *prefix*, not the count: digests can arrive out of
        // order (a node that missed the first digest updates), and whoever
        // takes this as "chunks below it can be verified" must not count
        // the ones after a gap (a downloader that did fetched chunks it
        // could not verify, over and over: 83 refused chunks, the gateway
        // uploading the image twice). Downloads take the set instead
        // (`known_digests`).
        let known = {
            let st = b.lock();
            if st.map.is_some() {
                b.chunk_count
            } else {
                st.digests.iter().take_while(|d| d.is_some()).count() as u32
            }
        };
        Some(BlobInfo {
            size: b.size,
            chunk_size: b.chunk_size,
            chunk_count: b.chunk_count,
            digests_known: known,
        })
    }

    /// The chunks of `blob` whose digests are known (provisional ones
    /// from a peer's chunk map included; all once the map is), whatever
    /// the gaps: a download requests exactly these (see
    /// [`BlobInfo::digests_known`] for the prefix).
    pub fn known_digests(&self, blob: &Digest) -> Option<Bitfield> {
        let b = self.inner.get(blob).ok()?;
        let st = b.lock();
        if st.map.is_some() {
            return Some(Bitfield::full(b.chunk_count));
        }
        let mut known = Bitfield::new(b.chunk_count);
        for (index, digest) in st.digests.iter().enumerate() {
            if digest.is_some() {
                known.set(index as u32);
            }
        }
        Some(known)
    }

    /// How many leading chunks have known authoritative digests: chunks
    /// below this index can be verified, so a gateway that takes over a
    /// half-pulled blob resumes the registry download here and gets the
    /// rest from peers. Provisional digests do not count: the gateway's
    /// own pull is what confirms or refutes them.
    pub fn known_digest_prefix(&self, blob: &Digest) -> Option<u32> {
        let b = self.inner.get(blob).ok()?;
        let st = b.lock();
        if st.map.is_some() {
            return Some(b.chunk_count);
        }
        Some(
            st.digests
                .iter()
                .zip(&st.from_peer)
                .take_while(|(d, p)| d.is_some() && p.is_none())
                .count() as u32,
        )
    }

    /// Bytes of `blob` held verified: all of it once complete, else its
    /// verified chunks counted whole (0 for a blob not declared here).
    pub fn held_bytes(&self, blob: &Digest) -> u64 {
        let Ok(b) = self.inner.get(blob) else {
            return 0;
        };
        let st = b.lock();
        if st.phase == Phase::Complete {
            return b.size;
        }
        (st.have.count_ones() as u64 * b.chunk_size.get() as u64).min(b.size)
    }

    /// The authoritative digests of chunks `0..end` of a partial `blob`
    /// (its own pull's, or its gateway's signed ones; none from a peer's
    /// map), or `None` if one of them is not known so.
    pub fn authoritative_digests(&self, blob: &Digest, end: u32) -> Option<Vec<Digest>> {
        let b = self.inner.get(blob).ok()?;
        let st = b.lock();
        let end = end as usize;
        if end > st.digests.len() {
            return None;
        }
        st.digests[..end]
            .iter()
            .zip(&st.from_peer[..end])
            .map(|(d, p)| if p.is_none() { *d } else { None })
            .collect()
    }

    /// Drops the provisional digests `source`'s chunk map gave `blob`,
    /// with the chunks verified only against them (their digests are
    /// disputed: chunks from other peers contradict them). Nobody is
    /// blamed; the download learns those digests again from someone else.
    /// Returns how many digests were dropped.
    pub async fn drop_peer_digests(&self, blob: Digest, source: PeerId) -> Result<u32, StoreError> {
        let b = self.inner.get(&blob)?;
        let inner = self.inner.clone();
        blocking(move || {
            let (dropped, discarded) = {
                let mut st = b.lock();
                if st.phase != Phase::Partial {
                    return Ok(0);
                }
                let before = st.known;
                let discarded = inner.drop_provisional(&b, &mut st, |p| *p == source);
                (before - st.known, discarded)
            };
            if let Some(&first) = discarded.iter().min() {
                inner.reset_prefix(&b, first);
            }
            b.cond.notify_all();
            Ok(dropped)
        })
        .await
    }

    /// Chunks written and verified only against provisional digests (a
    /// peer's chunk map): held back from readers and peers until confirmed.
    pub fn unconfirmed(&self, blob: &Digest) -> Option<Bitfield> {
        let b = self.inner.get(blob).ok()?;
        let bits = b.lock().unconfirmed.clone();
        Some(bits)
    }

    /// Chunks verified against any known digest, confirmed or not: what a
    /// download need not fetch again while their digests stand.
    pub fn stored(&self, blob: &Digest) -> Option<Bitfield> {
        let b = self.inner.get(blob).ok()?;
        let st = b.lock();
        let mut bits = st.have.clone();
        for i in st.unconfirmed.iter_ones() {
            bits.set(i);
        }
        Some(bits)
    }

    /// Snapshot of the verified chunks.
    pub fn bitfield(&self, blob: &Digest) -> Option<Bitfield> {
        let b = self.inner.get(blob).ok()?;
        let bits = b.lock().have.clone();
        Some(bits)
    }

    /// Verifies the chunk against its known digest (on the blocking pool),
    /// writes it durably, then sets its bit. When the last chunk lands the
    /// whole blob is stream-hashed against `blob`: a match moves it to
    /// `blobs/` ([`WriteOutcome::BlobComplete`]); a mismatch drops it,
    /// emits [`StoreEvent::BlobFailed`] and returns
    /// [`StoreError::BlobCorrupt`]. Wrong bytes store nothing.
    #[tracing::instrument(level = "trace", skip(self, bytes), fields(blob = %blob, len = bytes.len()))]
    pub async fn write_chunk(
        &self,
        blob: Digest,
        index: u32,
        bytes: Bytes,
    ) -> Result<WriteOutcome, StoreError> {
        self.write_chunk_hashed(blob, index, bytes, None).await
    }

    /// [`Self::write_chunk`] for a chunk whose sha256 the caller has just
    /// computed from these very bytes (the gateway hashes what it pulls to
    /// announce the digest): `sha256` is compared with the known digest
    /// instead of hashing the chunk a second time.
    pub async fn write_own_chunk(
        &self,
        blob: Digest,
        index: u32,
        bytes: Bytes,
        sha256: Digest,
    ) -> Result<WriteOutcome, StoreError> {
        self.write_chunk_hashed(blob, index, bytes, Some(sha256))
            .await
    }

    async fn write_chunk_hashed(
        &self,
        blob: Digest,
        index: u32,
        bytes: Bytes,
        sha256: Option<Digest>,
    ) -> Result<WriteOutcome, StoreError> {
        self.check_open()?;
        let b = self.inner.get(&blob)?;
        b.check_index(index)?;
        let (digest, from_peer, file) = {
            let st = b.lock();
            match st.phase {
                Phase::Partial => {}
                Phase::Finishing | Phase::Complete => {
                    tracing::debug!(blob = %blob, index, "chunk already held");
                    return Ok(WriteOutcome::AlreadyHad);
                }
                Phase::Removed | Phase::Failed(_) => return Err(StoreError::UnknownBlob(blob)),
            }
            if st.have.get(index) {
                tracing::debug!(blob = %blob, index, "chunk already held");
                return Ok(WriteOutcome::AlreadyHad);
            }
            if st.unconfirmed.get(index) {
                tracing::debug!(blob = %blob, index, "chunk already held unconfirmed");
                return Ok(WriteOutcome::AlreadyHad);
            }
            let digest =
                st.digests[index as usize].ok_or(StoreError::DigestUnknown { blob, index })?;
            (digest, st.from_peer[index as usize], st.file.clone())
        };
        let inner = self.inner.clone();
        let check = ChunkCheck {
            digest,
            from_peer,
            sha256,
        };
        blocking(move || {
            let outcome = inner.write_chunk_blocking(&b, index, check, &file, &bytes);
            // The caller's buffer (from `chunk_buffer`, or a pulled
            // chunk's) serves the next chunk, unless someone still holds
            // a view of it.
            inner.buffers.give_back(bytes);
            outcome
        })
        .await
    }

    /// A buffer of `len` bytes for a chunk about to be received, from the
    /// store's bounded pool (contents unspecified: fill all of it). Handing
    /// it to [`Self::write_chunk`] as [`Bytes`] returns it to the pool.
    pub fn chunk_buffer(&self, len: usize) -> Vec<u8> {
        self.inner.buffers.take(len)
    }

    /// Returns a chunk's buffer (from [`Self::read_chunk`] once it has been
    /// sent, say) to the pool; a buffer still shared is simply dropped.
    pub fn recycle_chunk(&self, bytes: Bytes) {
        self.inner.buffers.give_back(bytes);
    }

    /// How the chunk buffer pool has been used.
    pub fn buffer_stats(&self) -> buffers::BufferStats {
        self.inner.buffers.stats()
    }

    /// How many chunk reads the recently verified chunks in memory served
    /// (and how many went to disk).
    pub fn recent_stats(&self) -> RecentStats {
        self.inner.recent.stats()
    }

    /// Reads chunk `index`: from memory if it is one of the chunks verified
    /// last (the bytes that were checked), else from disk, re-verified; on
    /// a mismatch clears its bit (so it is fetched again) and returns
    /// [`StoreError::ChunkCorrupt`].
    pub async fn read_chunk(&self, blob: Digest, index: u32) -> Result<Bytes, StoreError> {
        let b = self.inner.get(&blob)?;
        b.check_index(index)?;
        if let Some(bytes) = self.inner.recent_chunk(&b, index) {
            return Ok(bytes);
        }
        let inner = self.inner.clone();
        blocking(move || inner.read_chunk_blocking(&b, index)).await
    }

    /// Stores a whole small blob (manifest, config) after checking that its
    /// sha256 is `digest`; a mismatch is [`StoreError::BlobCorrupt`] and
    /// stores nothing. Completes a partial blob of the same digest.
    #[tracing::instrument(level = "debug", skip(self, bytes), fields(blob = %digest, len = bytes.len()))]
    pub async fn put_blob(&self, digest: Digest, bytes: Bytes) -> Result<(), StoreError> {
        self.check_open()?;
        if self.is_complete(&digest) {
            return Ok(());
        }
        let _admin = self.inner.admin.lock().await;
        let existing = self.inner.lock().blobs.get(&digest).cloned();
        if let Some(b) = &existing {
            if b.size != bytes.len() as u64 {
                return Err(StoreError::LayoutConflict {
                    blob: digest,
                    existing_size: b.size,
                    existing_chunk_size: b.chunk_size,
                    size: bytes.len() as u64,
                    chunk_size: b.chunk_size,
                });
            }
            if b.lock().phase != Phase::Partial {
                return Ok(());
            }
        } else {
            self.reserve(digest, bytes.len() as u64).await?;
        }
        let inner = self.inner.clone();
        blocking(move || recover::put_blob(&inner, digest, &bytes, existing)).await
    }

    /// Whether the blob is complete and verified as a whole.
    pub fn is_complete(&self, blob: &Digest) -> bool {
        self.inner
            .get(blob)
            .is_ok_and(|b| b.lock().phase == Phase::Complete)
    }

    /// Path of a complete blob's file, for read-only use (for example
    /// serving it to containerd). Do not modify it.
    pub fn blob_path(&self, blob: &Digest) -> Option<PathBuf> {
        self.is_complete(blob).then(|| self.inner.blob_path(blob))
    }

    /// A blocking [`std::io::Read`] over the blob in order, waiting for
    /// chunks that are not there yet (use it inside `spawn_blocking`).
    /// Each chunk is re-verified before its bytes are returned, and end of
    /// file waits for the whole-blob check. Reading advances
    /// [`cursor`](Self::cursor). See [`BlobReader`] for timeouts and abort.
    pub fn reader(&self, blob: Digest) -> Result<BlobReader, StoreError> {
        self.check_open()?;
        let b = self.inner.get(&blob)?;
        Ok(BlobReader::new(self.inner.clone(), b))
    }

    /// Bytes consumed by the furthest reader of the blob (0 if unknown).
    pub fn cursor(&self, blob: &Digest) -> u64 {
        self.inner.get(blob).map(|b| b.lock().cursor).unwrap_or(0)
    }

    /// Subscribes to store events (bounded: [`EVENT_CAPACITY`]).
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    /// Pins `blobs` under `name` (replacing an earlier pin of that name).
    /// Pinned blobs are never collected; blobs need not exist yet.
    #[tracing::instrument(level = "debug", skip(self, blobs), fields(blobs = blobs.len()))]
    pub async fn pin(&self, name: &str, blobs: &[Digest]) -> Result<(), StoreError> {
        if name.is_empty() || name.len() > 255 {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        let _admin = self.inner.admin.lock().await;
        let pin: PinFile = (META_VERSION, name.to_string(), blobs.to_vec());
        let inner = self.inner.clone();
        let path = self.inner.pin_path(name);
        blocking(move || inner.write_atomic(&path, &encoding::encode(&pin))).await?;
        self.inner
            .lock()
            .pins
            .insert(name.to_string(), blobs.to_vec());
        Ok(())
    }

    /// Drops the pin `name` (no error if absent). Its blobs become
    /// collectable unless another pin keeps them.
    pub async fn unpin(&self, name: &str) -> Result<(), StoreError> {
        let _admin = self.inner.admin.lock().await;
        let path = self.inner.pin_path(name);
        let dir = self.inner.dir.join("refs");
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => fsync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&path, 0, e)),
        })
        .await?;
        self.inner.lock().pins.remove(name);
        Ok(())
    }

    /// Pin names and the blobs they keep.
    pub fn pins(&self) -> BTreeMap<String, Vec<Digest>> {
        self.inner.lock().pins.clone()
    }

    /// Removes every blob, complete or partial, that no pin references
    /// (oldest first), except blobs with an open reader or in their final
    /// check.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn gc(&self) -> Result<GcReport, StoreError> {
        let _admin = self.inner.admin.lock().await;
        let inner = self.inner.clone();
        blocking(move || Ok(inner.collect(None, None))).await
    }

    /// Declared bytes of all blobs (partial blobs count in full).
    pub fn usage(&self) -> u64 {
        usage_of(&self.inner.lock())
    }

    /// Every blob with its progress and pins, sorted by digest.
    pub fn blobs(&self) -> Vec<BlobSummary> {
        let state = self.inner.lock();
        let mut out: Vec<BlobSummary> = state
            .blobs
            .values()
            .map(|b| {
                let st = b.lock();
                BlobSummary {
                    digest: b.digest,
                    size: b.size,
                    chunk_size: b.chunk_size,
                    chunk_count: b.chunk_count,
                    chunks_have: st.have.count_ones(),
                    complete: st.phase == Phase::Complete,
                    pinned_by: state
                        .pins
                        .iter()
                        .filter(|(_, v)| v.contains(&b.digest))
                        .map(|(k, _)| k.clone())
                        .collect(),
                }
            })
            .collect();
        out.sort_by_key(|s| s.digest);
        out
    }

    /// Whether the store accepts writes (not [`Store::close`]d).
    pub fn is_open(&self) -> bool {
        !self.inner.closing.load(Ordering::SeqCst)
    }

    /// Starts shutting down: waiting readers return an error, new writes
    /// are refused with [`StoreError::Closing`]. Everything already
    /// acknowledged is durable.
    pub fn close(&self) {
        if !self.inner.closing.swap(true, Ordering::SeqCst) {
            let RecentStats { hits, misses } = self.inner.recent.stats();
            tracing::info!(
                from_memory = hits,
                from_disk = misses,
                "store closed; chunk reads served from recently verified chunks in memory, and from disk"
            );
        }
        let blobs: Vec<Arc<Blob>> = self.inner.lock().blobs.values().cloned().collect();
        for b in blobs {
            // Take the lock so a reader between its check and its wait
            // cannot miss the wakeup.
            drop(b.lock());
            b.cond.notify_all();
        }
    }

    /// Makes every acknowledged chunk durable now (fsyncs the chunk data
    /// written, then the pending journal appends; otherwise done within
    /// [`FLUSH_INTERVAL`]). Call on graceful shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            inner.flush_blobs();
            Ok(())
        })
        .await
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            Err(StoreError::Closing)
        } else {
            Ok(())
        }
    }
}

mod recover;

#[cfg(test)]
mod tests;

/// Reads a whole small file (metadata), mapping errors to `path`.
fn read_small(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .map_err(io(path))?;
    Ok(v)
}

/// Builds a chunk map by streaming a file (recovering a missing map).
fn map_of_file(
    file: &File,
    len: u64,
    chunk_size: ChunkSize,
    path: &Path,
) -> Result<(ChunkMap, Digest), StoreError> {
    let mut builder = ChunkMapBuilder::new(chunk_size);
    let mut buf = vec![0u8; IO_BUF];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off).map_err(io(path))?;
        builder.update(&buf[..n]);
        off += n as u64;
    }
    Ok(builder.finish())
}
