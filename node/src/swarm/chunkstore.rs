//! What the swarm needs from a chunk store, and an interim directory store.
//!
//! The swarm is written against the [`ChunkStore`] trait rather than
//! `node::store::Store` directly because the store lands on another branch
//! in parallel; an adapter `impl ChunkStore for crate::store::Store` is a
//! few lines once it is merged. The trait mirrors the agreed contract
//! (CONTRACTS.md): chunk maps, bitfields of verified chunks, `write_chunk`
//! that verifies before it records anything, `read_chunk` that re-verifies.
//!
//! [`DirStore`] is a small, crash-safe implementation used by the swarm's
//! tests and benches until the real store is merged: one directory per blob
//! holding the encoded chunk map, a preallocated data file written with
//! positional writes, and the bitfield of verified chunks (written after the
//! chunk's bytes, atomically, so a crash can lose a chunk but never claim an
//! unwritten one). Non-goals: quotas, GC, pins, readers.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use edgeswarm_protocol::{Bitfield, ChunkMap, Digest};
use sha2::Digest as _;

/// Why a store operation failed, as far as the swarm cares: whether the
/// peer that sent the bytes is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ChunkStoreError {
    /// The bytes do not match the chunk map: the sender is at fault.
    #[error("chunk rejected: {0}")]
    Corrupt(String),
    /// The blob or its chunk map is unknown here.
    #[error("unknown blob {0}")]
    UnknownBlob(Digest),
    /// Every chunk verified but the assembled blob has another digest: the
    /// chunk map was wrong (nobody sent a bad chunk).
    #[error("blob corrupt: {0}")]
    BlobCorrupt(String),
    /// A local problem (disk, quota): nobody else is at fault.
    #[error("store failure: {0}")]
    Local(String),
}

/// Outcome of a successful [`ChunkStore::write_chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkWrite {
    /// The chunk was already verified and stored.
    AlreadyHad,
    /// The chunk was verified and stored.
    Stored,
    /// The chunk was the last one and the whole blob verified.
    BlobComplete,
}

/// A blob's layout, known as soon as it is declared, before every chunk
/// digest is (a gateway streams digests as the registry sends the layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLayout {
    /// Blob size in bytes.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: edgeswarm_protocol::ChunkSize,
    /// Chunks `0..digests_known` have known digests and can be verified.
    pub digests_known: u32,
}

impl BlobLayout {
    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        edgeswarm_protocol::chunkmap::chunk_count(self.size, self.chunk_size) as u32
    }

    /// Length of chunk `index`, if in range.
    pub fn chunk_len(&self, index: u32) -> Option<u32> {
        let start = index as u64 * self.chunk_size.get() as u64;
        (index < self.chunk_count())
            .then(|| (self.size - start).min(self.chunk_size.get() as u64) as u32)
    }

    /// The chunk holding byte `offset`.
    pub fn chunk_at(&self, offset: u64) -> Option<u32> {
        (offset < self.size).then(|| (offset / self.chunk_size.get() as u64) as u32)
    }

    fn of(map: &ChunkMap) -> Self {
        BlobLayout {
            size: map.blob_size(),
            chunk_size: map.chunk_size(),
            digests_known: map.chunk_count(),
        }
    }
}

/// The storage operations the swarm uses. Implementations must be cheap to
/// clone (an `Arc` inside) and must never block the async runtime.
pub trait ChunkStore: Clone + Send + Sync + 'static {
    /// The complete chunk map of `blob`, if known.
    fn chunk_map(&self, blob: &Digest) -> Option<Arc<ChunkMap>>;
    /// The layout of `blob` once declared, even while digests are partial.
    fn layout(&self, blob: &Digest) -> Option<BlobLayout> {
        self.chunk_map(blob).map(|m| BlobLayout::of(&m))
    }
    /// Snapshot of the verified chunks of `blob`, if the blob is known.
    fn bitfield(&self, blob: &Digest) -> Option<Bitfield>;
    /// Whether `blob` is complete and verified.
    fn is_complete(&self, blob: &Digest) -> bool;
    /// Bytes of `blob` consumed by the furthest reader (deadline window).
    fn cursor(&self, blob: &Digest) -> u64;
    /// Declares `blob` with its chunk map. Idempotent.
    fn put_chunk_map(
        &self,
        blob: Digest,
        map: &ChunkMap,
    ) -> impl Future<Output = Result<(), ChunkStoreError>> + Send;
    /// Verifies and durably stores one chunk.
    fn write_chunk(
        &self,
        blob: Digest,
        index: u32,
        bytes: Bytes,
    ) -> impl Future<Output = Result<ChunkWrite, ChunkStoreError>> + Send;
    /// Reads and re-verifies one chunk.
    fn read_chunk(
        &self,
        blob: Digest,
        index: u32,
    ) -> impl Future<Output = Result<Bytes, ChunkStoreError>> + Send;
    /// Events of chunks verified and blobs completed, whichever path they
    /// took (a peer, the gateway's registry pull): servers announce them
    /// at once instead of at their next periodic check. `None` for stores
    /// without events (they are polled).
    fn subscribe_events(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::store::StoreEvent>> {
        None
    }
}

/// Interim crash-safe directory store (see the module docs).
#[derive(Clone)]
pub struct DirStore {
    inner: Arc<DirInner>,
}

struct DirInner {
    /// Root directory; one sub-directory per blob, named by hex digest.
    root: PathBuf,
    /// Known blobs.
    blobs: Mutex<HashMap<Digest, Arc<BlobEntry>>>,
}

struct BlobEntry {
    /// The blob's chunk map.
    map: Arc<ChunkMap>,
    /// The blob's directory.
    dir: PathBuf,
    /// Verified chunks and the whole-blob verdict.
    state: Mutex<BlobState>,
}

struct BlobState {
    bits: Bitfield,
    complete: bool,
}

fn local(path: &Path, e: std::io::Error) -> ChunkStoreError {
    ChunkStoreError::Local(format!("{}: {e}", path.display()))
}

impl DirStore {
    /// Opens (or creates) a store under `root`, reloading every blob found.
    pub async fn open(root: PathBuf) -> Result<Self, ChunkStoreError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(root))
            .await
            .map_err(|e| ChunkStoreError::Local(e.to_string()))?
    }

    fn open_blocking(root: PathBuf) -> Result<Self, ChunkStoreError> {
        std::fs::create_dir_all(&root).map_err(|e| local(&root, e))?;
        let mut blobs = HashMap::new();
        for entry in std::fs::read_dir(&root).map_err(|e| local(&root, e))? {
            let entry = entry.map_err(|e| local(&root, e))?;
            let dir = entry.path();
            let Some(Ok(blob)) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(Digest::parse_hex)
            else {
                continue;
            };
            let Ok(map_bytes) = std::fs::read(dir.join("map")) else {
                continue;
            };
            let Ok(map) = ChunkMap::decode(&map_bytes) else {
                continue;
            };
            let bits = std::fs::read(dir.join("bits"))
                .ok()
                .and_then(|b| Bitfield::from_bytes(map.chunk_count(), b).ok())
                .unwrap_or_else(|| Bitfield::new(map.chunk_count()));
            let complete = dir.join("complete").exists() && bits.is_complete();
            blobs.insert(
                blob,
                Arc::new(BlobEntry {
                    map: Arc::new(map),
                    dir,
                    state: Mutex::new(BlobState { bits, complete }),
                }),
            );
        }
        Ok(DirStore {
            inner: Arc::new(DirInner {
                root,
                blobs: Mutex::new(blobs),
            }),
        })
    }

    fn entry(&self, blob: &Digest) -> Option<Arc<BlobEntry>> {
        lock(&self.inner.blobs).get(blob).cloned()
    }

    /// Path of a complete blob's data file.
    pub fn blob_path(&self, blob: &Digest) -> Option<PathBuf> {
        let e = self.entry(blob)?;
        let complete = lock(&e.state).complete;
        complete.then(|| e.dir.join("data"))
    }

    /// Stores a whole blob from a reader (seeding in tests and benches):
    /// declares `map` and writes every chunk, verifying each.
    pub async fn import<R: std::io::Read + Send + 'static>(
        &self,
        blob: Digest,
        map: &ChunkMap,
        mut reader: R,
    ) -> Result<(), ChunkStoreError> {
        self.put_chunk_map(blob, map).await?;
        for index in 0..map.chunk_count() {
            let len = map
                .chunk_len(index)
                .map_err(|e| ChunkStoreError::Local(e.to_string()))? as usize;
            let (r, buf) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                let res = reader.read_exact(&mut buf);
                (reader, res.map(|_| buf))
            })
            .await
            .map_err(|e| ChunkStoreError::Local(e.to_string()))?;
            reader = r;
            let buf = buf.map_err(|e| ChunkStoreError::Local(e.to_string()))?;
            self.write_chunk(blob, index, Bytes::from(buf)).await?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ChunkStore for DirStore {
    fn chunk_map(&self, blob: &Digest) -> Option<Arc<ChunkMap>> {
        self.entry(blob).map(|e| e.map.clone())
    }

    fn bitfield(&self, blob: &Digest) -> Option<Bitfield> {
        self.entry(blob).map(|e| lock(&e.state).bits.clone())
    }

    fn is_complete(&self, blob: &Digest) -> bool {
        self.entry(blob).is_some_and(|e| lock(&e.state).complete)
    }

    fn cursor(&self, _blob: &Digest) -> u64 {
        0
    }

    async fn put_chunk_map(&self, blob: Digest, map: &ChunkMap) -> Result<(), ChunkStoreError> {
        if let Some(e) = self.entry(&blob) {
            if *e.map == *map {
                return Ok(());
            }
            return Err(ChunkStoreError::Local(format!(
                "blob {blob} already declared with another chunk map"
            )));
        }
        let dir = self.inner.root.join(blob.to_hex());
        let map_bytes = map.encode();
        let size = map.blob_size();
        let d2 = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ChunkStoreError> {
            std::fs::create_dir_all(&d2).map_err(|e| local(&d2, e))?;
            let data = d2.join("data");
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&data)
                .map_err(|e| local(&data, e))?;
            f.set_len(size).map_err(|e| local(&data, e))?;
            let tmp = d2.join("map.tmp");
            std::fs::write(&tmp, &map_bytes).map_err(|e| local(&tmp, e))?;
            std::fs::rename(&tmp, d2.join("map")).map_err(|e| local(&tmp, e))?;
            Ok(())
        })
        .await
        .map_err(|e| ChunkStoreError::Local(e.to_string()))??;
        let mut blobs = lock(&self.inner.blobs);
        blobs.entry(blob).or_insert_with(|| {
            Arc::new(BlobEntry {
                map: Arc::new(map.clone()),
                dir,
                state: Mutex::new(BlobState {
                    bits: Bitfield::new(map.chunk_count()),
                    complete: false,
                }),
            })
        });
        Ok(())
    }

    async fn write_chunk(
        &self,
        blob: Digest,
        index: u32,
        bytes: Bytes,
    ) -> Result<ChunkWrite, ChunkStoreError> {
        let e = self
            .entry(&blob)
            .ok_or(ChunkStoreError::UnknownBlob(blob))?;
        if lock(&e.state).bits.get(index) {
            return Ok(ChunkWrite::AlreadyHad);
        }
        let e2 = e.clone();
        tokio::task::spawn_blocking(move || -> Result<ChunkWrite, ChunkStoreError> {
            e2.map
                .verify_chunk(index, &bytes)
                .map_err(|err| ChunkStoreError::Corrupt(err.to_string()))?;
            let offset = e2
                .map
                .chunk_range(index)
                .map_err(|err| ChunkStoreError::Corrupt(err.to_string()))?
                .start;
            let data = e2.dir.join("data");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&data)
                .map_err(|err| local(&data, err))?;
            f.write_all_at(&bytes, offset)
                .map_err(|err| local(&data, err))?;
            f.sync_data().map_err(|err| local(&data, err))?;
            // Record the bit only after the bytes are durable.
            let mut st = lock(&e2.state);
            if !st.bits.set(index) {
                return Ok(ChunkWrite::AlreadyHad);
            }
            let tmp = e2.dir.join("bits.tmp");
            std::fs::write(&tmp, st.bits.as_bytes()).map_err(|err| local(&tmp, err))?;
            std::fs::rename(&tmp, e2.dir.join("bits")).map_err(|err| local(&tmp, err))?;
            if !st.bits.is_complete() {
                return Ok(ChunkWrite::Stored);
            }
            drop(st);
            // Whole-blob check, streamed from disk.
            let mut file = std::fs::File::open(&data).map_err(|err| local(&data, err))?;
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(|err| local(&data, err))?;
            let actual = Digest::from_bytes(hasher.finalize().into());
            if actual != blob {
                return Err(ChunkStoreError::BlobCorrupt(format!(
                    "blob {blob} assembled to {actual}: chunk map is wrong"
                )));
            }
            let marker = e2.dir.join("complete");
            std::fs::write(&marker, b"").map_err(|err| local(&marker, err))?;
            lock(&e2.state).complete = true;
            Ok(ChunkWrite::BlobComplete)
        })
        .await
        .map_err(|err| ChunkStoreError::Local(err.to_string()))?
    }

    async fn read_chunk(&self, blob: Digest, index: u32) -> Result<Bytes, ChunkStoreError> {
        let e = self
            .entry(&blob)
            .ok_or(ChunkStoreError::UnknownBlob(blob))?;
        if !lock(&e.state).bits.get(index) {
            return Err(ChunkStoreError::Local(format!(
                "chunk {index} of {blob} not held"
            )));
        }
        tokio::task::spawn_blocking(move || -> Result<Bytes, ChunkStoreError> {
            let range = e
                .map
                .chunk_range(index)
                .map_err(|err| ChunkStoreError::Local(err.to_string()))?;
            let data = e.dir.join("data");
            let f = std::fs::File::open(&data).map_err(|err| local(&data, err))?;
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.read_exact_at(&mut buf, range.start)
                .map_err(|err| local(&data, err))?;
            if let Err(err) = e.map.verify_chunk(index, &buf) {
                let mut st = lock(&e.state);
                st.bits.clear(index);
                st.complete = false;
                return Err(ChunkStoreError::Local(format!("on-disk corruption: {err}")));
            }
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|err| ChunkStoreError::Local(err.to_string()))?
    }
}

/// The node's real store (`node::store`), as the swarm sees it.
impl ChunkStore for crate::store::Store {
    fn chunk_map(&self, blob: &Digest) -> Option<Arc<ChunkMap>> {
        crate::store::Store::chunk_map(self, blob)
    }

    fn layout(&self, blob: &Digest) -> Option<BlobLayout> {
        crate::store::Store::blob_info(self, blob).map(|i| BlobLayout {
            size: i.size,
            chunk_size: i.chunk_size,
            digests_known: i.digests_known,
        })
    }

    fn bitfield(&self, blob: &Digest) -> Option<Bitfield> {
        crate::store::Store::bitfield(self, blob)
    }

    fn is_complete(&self, blob: &Digest) -> bool {
        crate::store::Store::is_complete(self, blob)
    }

    fn cursor(&self, blob: &Digest) -> u64 {
        crate::store::Store::cursor(self, blob)
    }

    async fn put_chunk_map(&self, blob: Digest, map: &ChunkMap) -> Result<(), ChunkStoreError> {
        crate::store::Store::put_chunk_map(self, blob, map)
            .await
            .map_err(from_store_error)
    }

    async fn write_chunk(
        &self,
        blob: Digest,
        index: u32,
        bytes: Bytes,
    ) -> Result<ChunkWrite, ChunkStoreError> {
        use crate::store::WriteOutcome;
        match crate::store::Store::write_chunk(self, blob, index, bytes).await {
            Ok(WriteOutcome::AlreadyHad) => Ok(ChunkWrite::AlreadyHad),
            Ok(WriteOutcome::Stored) => Ok(ChunkWrite::Stored),
            Ok(WriteOutcome::BlobComplete) => Ok(ChunkWrite::BlobComplete),
            Err(e) => Err(from_store_error(e)),
        }
    }

    async fn read_chunk(&self, blob: Digest, index: u32) -> Result<Bytes, ChunkStoreError> {
        crate::store::Store::read_chunk(self, blob, index)
            .await
            .map_err(from_store_error)
    }

    fn subscribe_events(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::store::StoreEvent>> {
        Some(crate::store::Store::subscribe(self))
    }
}

/// Classifies store errors by whose fault they are.
fn from_store_error(e: crate::store::StoreError) -> ChunkStoreError {
    use crate::store::StoreError;
    match e {
        StoreError::Chunk(c) => ChunkStoreError::Corrupt(c.to_string()),
        StoreError::UnknownBlob(b) => ChunkStoreError::UnknownBlob(b),
        e @ StoreError::BlobCorrupt { .. } => ChunkStoreError::BlobCorrupt(e.to_string()),
        e => ChunkStoreError::Local(e.to_string()),
    }
}
