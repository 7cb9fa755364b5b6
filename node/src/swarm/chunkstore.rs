//! What the swarm needs from a chunk store, and the two stores it runs on.
//!
//! The swarm is written against the [`ChunkStore`] trait rather than
//! `node::store::Store` directly so that it names only the operations it
//! uses (and so the bootstrap peer can run it without any store): chunk
//! maps and layouts, bitfields of verified chunks, `write_chunk` that
//! verifies before it records anything, `read_chunk` that re-verifies.
//!
//! ## Layout
//!
//! - [`ChunkStore`], [`ChunkStoreError`] (whose fault a failure is),
//!   [`ChunkWrite`] and [`BlobLayout`]: the contract.
//! - `impl ChunkStore for crate::store::Store`: the node's real store, the
//!   only one that holds bytes. Nodes, the swarm's tests and its benches
//!   all run on it.
//! - [`NoStore`]: an uninhabited store for the bootstrap peer, which serves
//!   the DHT and the gossip mesh but never chunks (its exchange is never
//!   started, so no value of this type ever exists).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use edgeswarm_protocol::{Bitfield, ChunkMap, Digest};

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
    /// A chunk map contradicts what is pinned or known of its blob (the
    /// size its descriptor gives, digests the release's gateway signed):
    /// whoever offered it lied.
    #[error("false chunk map: {0}")]
    FalseLayout(String),
    /// A chunk or chunk map contradicts a provisional digest (one only
    /// another peer's unsigned chunk map vouches for): one of the two
    /// lies, and which is not known yet; nobody is penalised.
    #[error("disputed: {}", .0.reason)]
    Disputed(Box<Dispute>),
    /// Every chunk matched its digest but the assembled blob did not: the
    /// provisional digests from these peers' chunk maps lied. They were
    /// dropped with the chunks verified only against them; the blob stays
    /// partial and needs their digests again from someone else.
    #[error("false chunk digests from {sources:?}: {reason}")]
    DigestsRefuted {
        /// The peers whose maps gave the false digests.
        sources: Vec<libp2p::PeerId>,
        /// What happened, for logs and the ban reason.
        reason: String,
    },
    /// A local problem (disk, quota): nobody else is at fault.
    #[error("store failure: {0}")]
    Local(String),
}

/// What a [`ChunkStoreError::Disputed`] is about.
#[derive(Debug)]
pub struct Dispute {
    /// The peer whose map gave the disputed digest (a chunk's dispute).
    pub map_from: Option<libp2p::PeerId>,
    /// What the disputed chunk hashes to (a chunk's dispute).
    pub actual: Option<Digest>,
    /// What was disputed.
    pub reason: String,
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
    /// The chunks of `blob` whose digests are known (provisional ones
    /// included), once declared: what a download may request. A set, not
    /// a prefix: digests after a gap count (a node that missed some of
    /// the gateway's updates).
    fn known_digests(&self, blob: &Digest) -> Option<Bitfield> {
        self.layout(blob)
            .map(|l| Bitfield::prefix(l.chunk_count(), l.digests_known))
    }
    /// Snapshot of the verified chunks of `blob`, if the blob is known.
    fn bitfield(&self, blob: &Digest) -> Option<Bitfield>;
    /// The chunks of `blob` stored against any known digest, including
    /// those verified only against a peer's provisional digest (held back
    /// from peers and readers until confirmed): what a download need not
    /// fetch again while their digests stand.
    fn stored(&self, blob: &Digest) -> Option<Bitfield> {
        self.bitfield(blob)
    }
    /// Whether `blob` is complete and verified.
    fn is_complete(&self, blob: &Digest) -> bool;
    /// Bytes of `blob` consumed by the furthest reader (deadline window).
    fn cursor(&self, blob: &Digest) -> u64;
    /// Declares `blob` with a chunk map this node trusts (its caller's).
    /// Idempotent.
    fn put_chunk_map(
        &self,
        blob: Digest,
        map: &ChunkMap,
    ) -> impl Future<Output = Result<(), ChunkStoreError>> + Send;
    /// Declares `blob` with the chunk map peer `source` served: its digests
    /// are provisional until authoritative ones or the whole-blob check
    /// confirm them. Idempotent.
    fn put_peer_chunk_map(
        &self,
        blob: Digest,
        map: &ChunkMap,
        source: libp2p::PeerId,
    ) -> impl Future<Output = Result<(), ChunkStoreError>> + Send;
    /// Drops the provisional digests peer `source`'s map gave `blob`, with
    /// the chunks verified only against them. Nobody is blamed.
    fn drop_peer_digests(
        &self,
        blob: Digest,
        source: libp2p::PeerId,
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
    /// A buffer of `len` bytes to receive a chunk into (contents
    /// unspecified: the caller fills all of it). A store that pools
    /// buffers takes it back through [`Self::write_chunk`].
    fn chunk_buffer(&self, len: usize) -> Vec<u8> {
        vec![0u8; len]
    }
    /// A chunk's buffer is no longer needed (a read chunk was sent): a
    /// store that pools buffers may reuse it.
    fn recycle_chunk(&self, bytes: Bytes) {
        drop(bytes);
    }
    /// Events of chunks verified and blobs completed, whichever path they
    /// took (a peer, the gateway's registry pull): servers announce them
    /// at once instead of at their next periodic check. `None` for stores
    /// without events (servers then re-check once a second).
    fn subscribe_events(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::store::StoreEvent>> {
        None
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

    fn known_digests(&self, blob: &Digest) -> Option<Bitfield> {
        crate::store::Store::known_digests(self, blob)
    }

    fn bitfield(&self, blob: &Digest) -> Option<Bitfield> {
        crate::store::Store::bitfield(self, blob)
    }

    fn stored(&self, blob: &Digest) -> Option<Bitfield> {
        crate::store::Store::stored(self, blob)
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

    async fn put_peer_chunk_map(
        &self,
        blob: Digest,
        map: &ChunkMap,
        source: libp2p::PeerId,
    ) -> Result<(), ChunkStoreError> {
        crate::store::Store::put_peer_chunk_map(self, blob, map, source)
            .await
            .map_err(from_store_error)
    }

    async fn drop_peer_digests(
        &self,
        blob: Digest,
        source: libp2p::PeerId,
    ) -> Result<(), ChunkStoreError> {
        crate::store::Store::drop_peer_digests(self, blob, source)
            .await
            .map(drop)
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

    fn chunk_buffer(&self, len: usize) -> Vec<u8> {
        crate::store::Store::chunk_buffer(self, len)
    }

    fn recycle_chunk(&self, bytes: Bytes) {
        crate::store::Store::recycle_chunk(self, bytes);
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
        e @ StoreError::DigestDisputed { .. } => {
            let reason = e.to_string();
            let StoreError::DigestDisputed { peer, actual, .. } = e else {
                unreachable!("matched above")
            };
            ChunkStoreError::Disputed(Box::new(Dispute {
                map_from: Some(*peer),
                actual: Some(actual),
                reason,
            }))
        }
        e @ StoreError::MapDisputed { .. } => ChunkStoreError::Disputed(Box::new(Dispute {
            map_from: None,
            actual: None,
            reason: e.to_string(),
        })),
        StoreError::DigestsRefuted {
            blob,
            sources,
            actual,
        } => ChunkStoreError::DigestsRefuted {
            sources,
            reason: format!("their chunk maps of {blob} assemble content hashing to {actual}"),
        },
        e if e.is_false_layout() => ChunkStoreError::FalseLayout(e.to_string()),
        e => ChunkStoreError::Local(e.to_string()),
    }
}

/// The store of a peer that holds no blobs: the bootstrap peer. It has no
/// values, so none of its methods can be called; it only names the type
/// parameter of the swarm task for a node started without a store.
#[derive(Debug, Clone, Copy)]
pub enum NoStore {}

impl ChunkStore for NoStore {
    fn chunk_map(&self, _blob: &Digest) -> Option<Arc<ChunkMap>> {
        match *self {}
    }

    fn bitfield(&self, _blob: &Digest) -> Option<Bitfield> {
        match *self {}
    }

    fn is_complete(&self, _blob: &Digest) -> bool {
        match *self {}
    }

    fn cursor(&self, _blob: &Digest) -> u64 {
        match *self {}
    }

    async fn put_chunk_map(&self, _blob: Digest, _map: &ChunkMap) -> Result<(), ChunkStoreError> {
        match *self {}
    }

    async fn put_peer_chunk_map(
        &self,
        _blob: Digest,
        _map: &ChunkMap,
        _source: libp2p::PeerId,
    ) -> Result<(), ChunkStoreError> {
        match *self {}
    }

    async fn drop_peer_digests(
        &self,
        _blob: Digest,
        _source: libp2p::PeerId,
    ) -> Result<(), ChunkStoreError> {
        match *self {}
    }

    async fn write_chunk(
        &self,
        _blob: Digest,
        _index: u32,
        _bytes: Bytes,
    ) -> Result<ChunkWrite, ChunkStoreError> {
        match *self {}
    }

    async fn read_chunk(&self, _blob: Digest, _index: u32) -> Result<Bytes, ChunkStoreError> {
        match *self {}
    }
}
