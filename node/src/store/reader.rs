//! A blocking reader over a blob that may still be arriving.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Blob, Inner, Phase, StoreError};

/// Reads a blob in order, blocking on a condvar until the next chunk is
/// verified. Each chunk read from disk is re-verified before its bytes are
/// returned; one verified moments ago comes from the store's memory
/// (`recent`), the bytes that were checked (at most one chunk is
/// buffered). Reading advances the blob's
/// consume cursor, which the picker's deadline window follows. End of file
/// is reported only once the whole blob passed its final sha256 check, so
/// a consumer never mistakes a corrupt blob for a clean one.
///
/// It fails with an [`io::Error`] wrapping a [`StoreError`] when the blob
/// fails or is collected, the store closes, the reader is aborted through
/// its [`ReaderAbort`], or no new chunk arrives within the timeout.
pub struct BlobReader {
    /// The store.
    inner: Arc<Inner>,
    /// The blob read.
    blob: Arc<Blob>,
    /// Next blob offset to return.
    pos: u64,
    /// The verified chunk being returned.
    buf: Bytes,
    /// Blob offset of `buf[0]`.
    buf_start: u64,
    /// Longest wait for one chunk; `None` waits until aborted.
    timeout: Option<Duration>,
    /// Set by [`ReaderAbort::abort`].
    aborted: Arc<AtomicBool>,
}

/// Aborts a [`BlobReader`] from another thread or task: a blocked or
/// later `read` returns an error.
#[derive(Clone)]
pub struct ReaderAbort {
    /// Shared with the reader.
    aborted: Arc<AtomicBool>,
    /// To wake the reader.
    blob: Arc<Blob>,
}

impl ReaderAbort {
    /// Makes the reader fail its current and every later `read`.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        drop(self.blob.lock());
        self.blob.cond.notify_all();
    }
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("blob", &self.blob.digest)
            .field("pos", &self.pos)
            .finish()
    }
}

impl BlobReader {
    pub(super) fn new(inner: Arc<Inner>, blob: Arc<Blob>) -> Self {
        blob.lock().readers += 1;
        BlobReader {
            inner,
            blob,
            pos: 0,
            buf: Bytes::new(),
            buf_start: 0,
            timeout: None,
            aborted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets the longest wait for one chunk (`None`: wait until aborted or
    /// the store closes). A timeout fails the read with
    /// [`io::ErrorKind::TimedOut`]; a later read may wait again.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// A handle that aborts this reader.
    pub fn abort_handle(&self) -> ReaderAbort {
        ReaderAbort {
            aborted: self.aborted.clone(),
            blob: self.blob.clone(),
        }
    }

    /// Bytes returned so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the next read to blob offset `pos` (at most the size), for a
    /// reader that serves a byte range: the chunks before it are neither
    /// waited for nor read.
    pub fn seek_to(&mut self, pos: u64) {
        self.pos = pos.min(self.blob.size);
    }

    /// Size of the blob.
    pub fn size(&self) -> u64 {
        self.blob.size
    }

    /// Blocks until `ready` holds for the blob's state, or fails on abort,
    /// store close, blob failure/removal or timeout.
    fn wait_for(&self, what: &str, ready: impl Fn(&super::BlobState) -> bool) -> io::Result<()> {
        let b = &self.blob;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut st = b.lock();
        loop {
            if self.aborted.load(Ordering::SeqCst) {
                return Err(io::Error::other("blob reader aborted"));
            }
            if self.inner.closing.load(Ordering::SeqCst) {
                return Err(io::Error::other(StoreError::Closing));
            }
            match &st.phase {
                Phase::Removed => {
                    return Err(io::Error::other(StoreError::BlobGone {
                        blob: b.digest,
                        reason: "collected or replaced".into(),
                    }))
                }
                Phase::Failed(r) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        StoreError::BlobGone {
                            blob: b.digest,
                            reason: r.clone(),
                        },
                    ))
                }
                _ => {}
            }
            if ready(&st) {
                return Ok(());
            }
            st = match deadline {
                None => b.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("timed out waiting for {what} of blob {}", b.digest),
                        ));
                    }
                    b.cond
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Waits for the chunk holding `self.pos`, reads and verifies it.
    fn load(&mut self) -> io::Result<()> {
        let b = self.blob.clone();
        let cs = b.chunk_size.get() as u64;
        let index = (self.pos / cs) as u32;
        loop {
            self.wait_for(&format!("chunk {index}"), |st| st.have.get(index))?;
            match self.inner.read_chunk_blocking(&b, index) {
                Ok(bytes) => {
                    let done = std::mem::replace(&mut self.buf, bytes);
                    self.inner.buffers.give_back(done);
                    self.buf_start = index as u64 * cs;
                    return Ok(());
                }
                // Cleared for refetch: wait for it again.
                Err(StoreError::ChunkCorrupt { .. }) | Err(StoreError::ChunkMissing { .. }) => {
                    continue
                }
                // The blob failed or went between the wait and the read:
                // the wait reports why (a failed whole-blob check is
                // `InvalidData` with its reason, not "unknown blob").
                Err(StoreError::UnknownBlob(_)) => continue,
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

impl io::Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.blob.size {
            // End of file only once the whole blob verified: a blob that
            // fails its final check is an error, never a clean EOF.
            self.wait_for("the whole-blob check", |st| st.phase == Phase::Complete)?;
            return Ok(0);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.buf.is_empty() || self.pos < self.buf_start || self.pos >= buf_end {
            self.load()?;
        }
        let off = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - off);
        out[..n].copy_from_slice(&self.buf[off..off + n]);
        self.pos += n as u64;
        let mut st = self.blob.lock();
        if self.pos > st.cursor {
            st.cursor = self.pos;
        }
        Ok(n)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        let mut st = self.blob.lock();
        st.readers = st.readers.saturating_sub(1);
    }
}
