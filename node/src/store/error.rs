//! Errors of the chunk store.

use std::io;
use std::path::{Path, PathBuf};

use edgeswarm_protocol::{ChunkError, ChunkSize, Digest};

/// Why a store operation failed. Every variant leaves the store consistent:
/// a failed write never sets a chunk's bit.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("store I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file system is full (ENOSPC or EDQUOT). Nothing was recorded for
    /// the write that hit it; free space and fetch again.
    #[error("disk full: writing {path} needs {needed} more bytes; free space on that file system, or set --max-store-size below it so unpinned blobs are collected first")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
        /// Bytes the failed write needed.
        needed: u64,
    },
    /// The blob was never declared (or was collected).
    #[error("unknown blob {0}")]
    UnknownBlob(Digest),
    /// The chunk's digest is not known yet, so it cannot be verified.
    #[error("digest of chunk {index} of blob {blob} is not known yet")]
    DigestUnknown {
        /// The blob.
        blob: Digest,
        /// The chunk index.
        index: u32,
    },
    /// A different digest was already recorded for this chunk.
    #[error("chunk {index} of blob {blob}: digest {offered} conflicts with the recorded {known}")]
    DigestConflict {
        /// The blob.
        blob: Digest,
        /// The chunk index.
        index: u32,
        /// The digest recorded earlier.
        known: Digest,
        /// The conflicting digest offered now.
        offered: Digest,
    },
    /// A chunk does not match a provisional digest (one only a peer's
    /// chunk map vouches for): the chunk's sender or the map's `source`
    /// lies, and which is not known yet. Nothing was stored.
    #[error("chunk {index} of blob {blob} contradicts the digest {peer}'s chunk map gave it")]
    DigestDisputed {
        /// The blob.
        blob: Digest,
        /// The chunk index.
        index: u32,
        /// The peer whose map gave the digest (boxed: keeps the error small).
        peer: Box<libp2p::PeerId>,
        /// What the offered chunk hashes to.
        actual: Digest,
    },
    /// A peer's chunk map contradicts another peer's provisional digest:
    /// one of them lies, and which is not known yet. Nothing of the map
    /// was recorded.
    #[error("chunk map of blob {blob} contradicts, at chunk {index}, the one {peer} served")]
    MapDisputed {
        /// The blob.
        blob: Digest,
        /// The first chunk index in dispute.
        index: u32,
        /// The peer whose map's digest is recorded.
        peer: libp2p::PeerId,
    },
    /// Every chunk matched its digest but the blob hashes to `actual`,
    /// and some digests were provisional (from peers' chunk maps): those
    /// lied. They were dropped with the chunks verified only against
    /// them; chunks verified against authoritative digests are kept, and
    /// the blob stays partial.
    #[error("blob {blob}: the chunk maps of {sources:?} assemble content hashing to {actual}; their digests and chunks were dropped")]
    DigestsRefuted {
        /// The blob.
        blob: Digest,
        /// The peers whose chunk maps gave the false digests.
        sources: Vec<libp2p::PeerId>,
        /// What the assembled content hashed to.
        actual: Digest,
    },
    /// The chunk is out of range, has the wrong length or the wrong digest.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The assembled blob does not hash to its digest (every chunk matched
    /// its chunk map, so the chunk map was wrong). The blob was dropped.
    #[error("blob {blob} is corrupt: its content hashes to {actual}; dropped it")]
    BlobCorrupt {
        /// The blob's expected digest.
        blob: Digest,
        /// What its content actually hashes to.
        actual: Digest,
    },
    /// The blob does not fit under `--max-store-size`, even after
    /// collecting every unpinned blob.
    #[error("store quota exceeded: blob {blob} needs {needed} bytes but {used} of the {max}-byte limit are held by pinned or in-use blobs")]
    QuotaExceeded {
        /// The blob refused.
        blob: Digest,
        /// Its size.
        needed: u64,
        /// Bytes in use after collecting what could be collected.
        used: u64,
        /// The configured limit.
        max: u64,
    },
    /// The blob was declared earlier with a different size or chunk size.
    #[error("blob {blob} is already declared as {existing_size} bytes in {}-byte chunks; refused {size} bytes in {}-byte chunks", existing_chunk_size.get(), chunk_size.get())]
    LayoutConflict {
        /// The blob.
        blob: Digest,
        /// Size declared first.
        existing_size: u64,
        /// Chunk size declared first.
        existing_chunk_size: ChunkSize,
        /// Size offered now.
        size: u64,
        /// Chunk size offered now.
        chunk_size: ChunkSize,
    },
    /// The blob's size differs from the size its descriptor (the verified
    /// manifest, or the release's gateway) pins: the layout is a lie.
    #[error("blob {blob} is {expected} bytes by its descriptor; refused a layout of {size} bytes")]
    SizeMismatch {
        /// The blob.
        blob: Digest,
        /// The size its descriptor pins.
        expected: u64,
        /// The size offered.
        size: u64,
    },
    /// The chunk is not stored (yet).
    #[error("chunk {index} of blob {blob} is not stored")]
    ChunkMissing {
        /// The blob.
        blob: Digest,
        /// The chunk index.
        index: u32,
    },
    /// A stored chunk failed re-verification on read (disk rot or a torn
    /// write). Its bit was cleared so it gets fetched again.
    #[error("chunk {index} of blob {blob} is corrupt on disk (hashes to {actual}); cleared it for refetch")]
    ChunkCorrupt {
        /// The blob.
        blob: Digest,
        /// The chunk index.
        index: u32,
        /// What the bytes on disk hash to.
        actual: Digest,
    },
    /// The blob failed (or was collected) while a reader waited for it.
    #[error("blob {blob} is gone: {reason}")]
    BlobGone {
        /// The blob.
        blob: Digest,
        /// Why.
        reason: String,
    },
    /// A pin name that cannot be stored.
    #[error("invalid pin name {0:?}: must be 1 to 255 bytes")]
    InvalidName(String),
    /// The store is shutting down.
    #[error("the store is closing")]
    Closing,
    /// A blocking task panicked or was cancelled.
    #[error("store background task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether the error means the layout or chunk digests offered for a
    /// blob contradict a trusted fact: the size its descriptor pins
    /// ([`Store::expect_size`](super::Store::expect_size)), or digests
    /// already recorded, which (a member's map being stored whole, only
    /// for an undeclared blob) came from the gateway's signed updates.
    /// Whoever offered them lied. A layout conflict is not counted: for a
    /// blob without a pinned size (the manifest) the first layout may have
    /// been the lie, and another chunk size for the right size is none
    /// (nodes cut the small documents they put whole with their own).
    pub fn is_false_layout(&self) -> bool {
        matches!(
            self,
            StoreError::SizeMismatch { .. } | StoreError::DigestConflict { .. }
        )
    }

    /// Whether the offered chunk bytes were wrong (wrong length or digest):
    /// the peer that sent them is at fault, not this node. The swarm uses
    /// this to penalise senders without blaming them for local disk trouble.
    pub fn is_bad_chunk(&self) -> bool {
        matches!(
            self,
            StoreError::Chunk(ChunkError::DigestMismatch { .. } | ChunkError::WrongLength { .. })
        )
    }

    /// Whether the failure is local to this node (disk, quota, shutdown):
    /// retrying the same chunk from another peer will not help.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. }
                | StoreError::DiskFull { .. }
                | StoreError::QuotaExceeded { .. }
                | StoreError::Closing
                | StoreError::Task(_)
        )
    }

    /// Maps an I/O error on `path`, turning ENOSPC/EDQUOT into
    /// [`StoreError::DiskFull`] with the bytes the operation needed.
    pub(crate) fn io(path: &Path, needed: u64, source: io::Error) -> StoreError {
        let full = source.kind() == io::ErrorKind::StorageFull
            || matches!(source.raw_os_error(), Some(28) | Some(122));
        if full {
            StoreError::DiskFull {
                path: path.to_path_buf(),
                needed,
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}
