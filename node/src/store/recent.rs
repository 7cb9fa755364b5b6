//! Chunks verified moments ago, kept in memory to be served again.
//!
//! In a swarm a chunk is wanted most right after it lands: it is then the
//! rarest piece its holder has, so its peers ask for it at once, and the
//! gateway serves every chunk it pulls within moments of storing it. Each
//! of those reads used to read the chunk back from the page cache and hash
//! it again (reads re-verify, in case the disk rotted what was written):
//! in the N = 21 `dir` profile, uploads' re-reads and re-hashes were about
//! 0.03 of a node's 1.93 CPU-s, and the blocking-pool round trip of each
//! read came on top (`testnet/results/issue11-15-intel-2026-12-07/`).
//!
//! The bytes kept here are the very bytes that were hashed and matched
//! their digest when they were stored, held since in memory, never read
//! back from disk, so serving them needs no second check. Reads of any
//! other chunk go to the file and are re-verified as before.
//!
//! Bounded: at most `StoreConfig::recent_chunks` chunks (by default
//! [`DEFAULT_RECENT_CHUNKS`], 4 MiB at the default chunk size), the oldest
//! forgotten first. Chunks larger than
//! [`MAX_RECENT_CHUNK`] are not kept, so a 16 MiB chunk size cannot pin
//! 128 MiB of a 1 GiB device. An entry names its blob by a weak pointer to
//! the store's in-memory blob: a blob removed and declared again is a new
//! one, and never sees the old one's entries.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use super::Blob;

/// Chunks kept at most, by default: about what a node's peers ask of it
/// in the moments after a chunk lands (its upload slots), 4 MiB at the
/// default 512 KiB chunk size.
pub const DEFAULT_RECENT_CHUNKS: usize = 8;

/// Larger chunks are not kept (see the module doc).
pub(super) const MAX_RECENT_CHUNK: usize = 1 << 20;

/// The recently verified chunks (see the module doc).
pub(crate) struct RecentChunks {
    /// Oldest first.
    entries: Mutex<VecDeque<Entry>>,
    /// How many are kept at most.
    max: usize,
    /// Reads served from here.
    hits: AtomicU64,
    /// Reads that went to the file.
    misses: AtomicU64,
}

/// One kept chunk.
struct Entry {
    /// Its blob (compared by pointer; see the module doc).
    blob: Weak<Blob>,
    /// Its index in the blob.
    index: u32,
    /// The bytes that matched the chunk's digest.
    bytes: Bytes,
}

/// How the cache has been used, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentStats {
    /// Reads served from memory.
    pub hits: u64,
    /// Reads that went to the file.
    pub misses: u64,
}

impl RecentChunks {
    /// An empty cache that keeps at most `max` chunks (0 keeps none).
    pub(crate) fn new(max: usize) -> Self {
        RecentChunks {
            entries: Mutex::new(VecDeque::with_capacity(max)),
            max,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        // Plain data: a panic elsewhere leaves it consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `bytes`, which just matched the digest of chunk `index` of
    /// `blob`, in place of any older copy. Returns the chunks it forgets
    /// (for the buffer pool).
    pub(crate) fn insert(&self, blob: &Arc<Blob>, index: u32, bytes: &Bytes) -> Vec<Bytes> {
        if self.max == 0 || bytes.len() > MAX_RECENT_CHUNK {
            return Vec::new();
        }
        let weak = Arc::downgrade(blob);
        let mut entries = self.lock();
        let mut forgotten = Vec::new();
        if let Some(i) = entries
            .iter()
            .position(|e| e.index == index && Weak::ptr_eq(&e.blob, &weak))
        {
            forgotten.extend(entries.remove(i).map(|e| e.bytes));
        }
        while entries.len() >= self.max {
            forgotten.extend(entries.pop_front().map(|e| e.bytes));
        }
        entries.push_back(Entry {
            blob: weak,
            index,
            bytes: bytes.clone(),
        });
        forgotten
    }

    /// The kept bytes of chunk `index` of `blob`, if any (counted as a
    /// hit).
    pub(crate) fn get(&self, blob: &Arc<Blob>, index: u32) -> Option<Bytes> {
        let found = self
            .lock()
            .iter()
            .rev()
            .find(|e| e.index == index && std::ptr::eq(e.blob.as_ptr(), Arc::as_ptr(blob)))
            .map(|e| e.bytes.clone());
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Counts a read that had to go to the file.
    pub(crate) fn missed(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets every chunk of `blob` (removed, failed or demoted), returning
    /// them for the buffer pool.
    pub(crate) fn forget_blob(&self, blob: &Arc<Blob>) -> Vec<Bytes> {
        let mut entries = self.lock();
        let mut forgotten = Vec::new();
        entries.retain_mut(|e| {
            if std::ptr::eq(e.blob.as_ptr(), Arc::as_ptr(blob)) {
                forgotten.push(std::mem::take(&mut e.bytes));
                false
            } else {
                true
            }
        });
        forgotten
    }

    /// Hits and misses so far.
    pub(crate) fn stats(&self) -> RecentStats {
        RecentStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}
