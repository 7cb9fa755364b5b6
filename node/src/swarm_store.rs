//! The chunk store as the swarm sees it: [`crate::store::Store`] behind the
//! swarm's [`ChunkStore`] trait, with store errors sorted by who is at
//! fault (a bad chunk is the sender's; a full disk is ours).

use std::sync::Arc;

use bytes::Bytes;
use edgeswarm_protocol::{Bitfield, ChunkMap, Digest};

use crate::store::{Store, StoreError, WriteOutcome};
use crate::swarm::{ChunkStore, ChunkStoreError, ChunkWrite};

impl From<StoreError> for ChunkStoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Chunk(_) => ChunkStoreError::Corrupt(e.to_string()),
            StoreError::UnknownBlob(blob) => ChunkStoreError::UnknownBlob(blob),
            StoreError::BlobCorrupt { .. } => ChunkStoreError::BlobCorrupt(e.to_string()),
            other => ChunkStoreError::Local(other.to_string()),
        }
    }
}

impl ChunkStore for Store {
    fn chunk_map(&self, blob: &Digest) -> Option<Arc<ChunkMap>> {
        Store::chunk_map(self, blob)
    }

    fn bitfield(&self, blob: &Digest) -> Option<Bitfield> {
        Store::bitfield(self, blob)
    }

    fn is_complete(&self, blob: &Digest) -> bool {
        Store::is_complete(self, blob)
    }

    fn cursor(&self, blob: &Digest) -> u64 {
        Store::cursor(self, blob)
    }

    async fn put_chunk_map(&self, blob: Digest, map: &ChunkMap) -> Result<(), ChunkStoreError> {
        Ok(Store::put_chunk_map(self, blob, map).await?)
    }

    async fn write_chunk(
        &self,
        blob: Digest,
        index: u32,
        bytes: Bytes,
    ) -> Result<ChunkWrite, ChunkStoreError> {
        Ok(match Store::write_chunk(self, blob, index, bytes).await? {
            WriteOutcome::AlreadyHad => ChunkWrite::AlreadyHad,
            WriteOutcome::Stored => ChunkWrite::Stored,
            WriteOutcome::BlobComplete => ChunkWrite::BlobComplete,
        })
    }

    async fn read_chunk(&self, blob: Digest, index: u32) -> Result<Bytes, ChunkStoreError> {
        Ok(Store::read_chunk(self, blob, index).await?)
    }
}
