//! Chunk buffers kept for reuse.
//!
//! Every chunk a node receives, stores or serves passes through a buffer of
//! about a chunk (512 KiB by default). Allocating a fresh zeroed one per
//! chunk cost an N = 5 node about 3 % of its CPU: glibc hands a 512 KiB
//! request back to the kernel on free (`madvise`), so the next one faults
//! its 128 pages in again, and `vec![0; n]` zeroes them besides
//! (`testnet/results/issue15-cpu-attribution-2026-12-04`: memset plus page
//! faults under the session's receive buffer). The pool keeps a few
//! buffers instead; a taken buffer keeps whatever bytes it held, which is
//! sound because every user overwrites the whole buffer before it reads
//! it (a read that fails part way discards the buffer).
//!
//! Bounded: at most [`DEFAULT_MAX_IDLE`] buffers wait in the pool
//! (4 MiB at the default chunk size); a buffer larger than
//! [`MAX_POOLED_CAPACITY`] is never kept. Buffers in use are bounded by
//! their users (sessions, write permits, upload slots), not here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// Buffers waiting for reuse at most, by default: enough for the chunks a
/// node has in flight at once on the hot path (a few sessions' receive
/// buffers plus the writes waiting for the store).
pub const DEFAULT_MAX_IDLE: usize = 8;

/// Larger buffers are freed, not kept: the pool must not pin a 16 MiB
/// chunk size's buffers on a 1 GiB device. 1 MiB holds the default
/// 512 KiB chunk with room for a larger configured one.
pub const MAX_POOLED_CAPACITY: usize = 1 << 20;

/// A bounded pool of reusable chunk buffers (see the module doc).
#[derive(Debug)]
pub struct ChunkBuffers {
    /// The buffers waiting, any length, each with capacity at most
    /// [`MAX_POOLED_CAPACITY`].
    idle: Mutex<Vec<Vec<u8>>>,
    /// How many may wait at most.
    max_idle: usize,
    /// Buffers handed out from the pool.
    reused: AtomicU64,
    /// Buffers allocated because none fitted.
    allocated: AtomicU64,
}

/// How a pool has been used, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferStats {
    /// Buffers handed out again.
    pub reused: u64,
    /// Buffers freshly allocated.
    pub allocated: u64,
    /// Buffers waiting now.
    pub idle: usize,
}

impl Default for ChunkBuffers {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_IDLE)
    }
}

impl ChunkBuffers {
    /// A pool that keeps at most `max_idle` buffers.
    pub fn new(max_idle: usize) -> Self {
        ChunkBuffers {
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            reused: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
        }
    }

    /// A buffer of exactly `len` bytes whose contents are unspecified (a
    /// previous chunk's bytes, or zeroes): the caller overwrites all of it.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            // Last in, first out: the warmest buffer in the caches.
            idle.iter()
                .rposition(|b| b.capacity() >= len)
                .map(|i| idle.swap_remove(i))
        };
        match pooled {
            Some(mut buf) => {
                self.reused.fetch_add(1, Ordering::Relaxed);
                // Truncates, or zero-fills past the length it was
                // returned with (after a blob's short last chunk).
                buf.resize(len, 0);
                buf
            }
            None => {
                self.allocated.fetch_add(1, Ordering::Relaxed);
                vec![0u8; len]
            }
        }
    }

    /// Returns a buffer for reuse. Dropped instead when the pool is full,
    /// when it is too large, or when `bytes` is still shared (a relay or a
    /// reader holds a view of it: it is freed with the last view).
    pub fn give_back(&self, bytes: Bytes) {
        // Checked before the conversion, which would move a view that does
        // not start its allocation to the front (every buffer the node
        // makes does: the pool's, the gateway's cut chunks).
        if bytes.len() > MAX_POOLED_CAPACITY || self.is_full() {
            return;
        }
        let Ok(unique) = bytes.try_into_mut() else {
            return;
        };
        self.give_back_vec(Vec::from(unique));
    }

    fn is_full(&self) -> bool {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len() >= self.max_idle
    }

    /// [`Self::give_back`] for a buffer that never became [`Bytes`].
    pub fn give_back_vec(&self, buf: Vec<u8>) {
        if buf.capacity() > MAX_POOLED_CAPACITY || buf.is_empty() {
            return;
        }
        // Kept at the length it had: `take` zero-fills only past it, which
        // after a full chunk is nothing (and a buffer that is not kept is
        // not touched at all).
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(buf);
        }
    }

    /// Counters since the pool was made.
    pub fn stats(&self) -> BufferStats {
        BufferStats {
            reused: self.reused.load(Ordering::Relaxed),
            allocated: self.allocated.load(Ordering::Relaxed),
            idle: self.idle.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_without_reallocating() {
        let pool = ChunkBuffers::new(2);
        let buf = pool.take(1000);
        assert_eq!(buf.len(), 1000);
        let ptr = buf.as_ptr();
        pool.give_back(Bytes::from(buf));
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), ptr, "the same allocation came back");
        assert_eq!(again.len(), 1000);
        assert_eq!(
            pool.stats(),
            BufferStats {
                reused: 1,
                allocated: 1,
                idle: 0
            }
        );
    }

    #[test]
    fn a_shorter_take_then_a_longer_one_keeps_the_length_exact() {
        let pool = ChunkBuffers::new(1);
        let mut buf = pool.take(512);
        buf.fill(7);
        pool.give_back_vec(buf);
        let short = pool.take(100);
        assert_eq!(short.len(), 100);
        assert!(
            short.iter().all(|b| *b == 7),
            "contents are left as they were"
        );
        pool.give_back_vec(short);
        let long = pool.take(512);
        assert_eq!(long.len(), 512);
        assert_eq!(pool.stats().allocated, 1);
    }

    #[test]
    fn a_buffer_still_shared_is_not_taken_back() {
        let pool = ChunkBuffers::new(4);
        let bytes = Bytes::from(pool.take(64));
        let view = bytes.slice(0..10);
        pool.give_back(bytes);
        assert_eq!(pool.stats().idle, 0, "a relay's view must stay valid");
        drop(view);
    }

    #[test]
    fn the_pool_is_bounded_in_count_and_size() {
        let pool = ChunkBuffers::new(2);
        for _ in 0..5 {
            pool.give_back_vec(vec![0u8; 64]);
        }
        assert_eq!(pool.stats().idle, 2);
        let pool = ChunkBuffers::new(2);
        pool.give_back_vec(vec![0u8; MAX_POOLED_CAPACITY + 1]);
        assert_eq!(pool.stats().idle, 0);
    }

    #[test]
    fn a_too_small_buffer_is_not_grown() {
        let pool = ChunkBuffers::new(2);
        pool.give_back_vec(vec![0u8; 64]);
        let big = pool.take(4096);
        assert_eq!(big.len(), 4096);
        let stats = pool.stats();
        assert_eq!((stats.reused, stats.allocated, stats.idle), (0, 1, 1));
    }
}
