// Copyright 2019 Parity Technologies (UK) Ltd.
//
// Permission is hereby granted, free of charge, to any person obtaining a
// copy of this software and associated documentation files (the "Software"),
// to deal in the Software without restriction, including without limitation
// the rights to use, copy, modify, merge, publish, distribute, sublicense,
// and/or sell copies of the Software, and to permit persons to whom the
// Software is furnished to do so, subject to the following conditions:
//
// The above copyright notice and this permission notice shall be included in
// all copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
// OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
// FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
// AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
// LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
// FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
// DEALINGS IN THE SOFTWARE.

use std::{fmt, pin::Pin};

use futures::{
    io::{self, AsyncWrite},
    ready,
    task::{Context, Poll},
};
use pin_project::pin_project;

use crate::xsalsa20::XSalsa20;

/// The most bytes one `poll_write` takes: the buffer never grows past it
/// (noise, above pnet, writes frames of at most 65535 bytes).
const MAX_WRITE: usize = 64 * 1024;

/// A writer that encrypts and forwards to an inner writer
#[pin_project]
pub(crate) struct CryptWriter<W> {
    #[pin]
    inner: W,
    /// Encrypted bytes; `buf[written..]` are not yet written to `inner`.
    buf: Vec<u8>,
    /// Bytes of `buf` already written (edgeswarm: an offset instead of
    /// upstream's `drain`, which moved the rest of the buffer to its front
    /// after every partial write).
    written: usize,
    cipher: XSalsa20,
}

impl<W: AsyncWrite> CryptWriter<W> {
    /// Creates a new `CryptWriter` with the specified buffer capacity.
    pub(crate) fn with_capacity(capacity: usize, inner: W, cipher: XSalsa20) -> CryptWriter<W> {
        CryptWriter {
            inner,
            buf: Vec::with_capacity(capacity),
            written: 0,
            cipher,
        }
    }

    /// Gets a pinned mutable reference to the inner writer.
    ///
    /// It is inadvisable to directly write to the inner writer.
    pub(crate) fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut W> {
        self.project().inner
    }
}

/// Write `buf[*written..]` into an [`AsyncWrite`].
///
/// The handling 0 byte progress and the Interrupted error was taken from BufWriter in async_std.
///
/// If this fn returns Ready(Ok(())), the buffer has been completely flushed and is empty.
fn poll_flush_buf<W: AsyncWrite>(
    inner: &mut Pin<&mut W>,
    buf: &mut Vec<u8>,
    written: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while *written < buf.len() {
        match inner.as_mut().poll_write(cx, &buf[*written..]) {
            Poll::Ready(Ok(0)) => {
                // we got Ok but got no progress whatsoever,
                // so bail out so we don't spin writing 0 bytes.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "Failed to write buffered data",
                )));
            }
            Poll::Ready(Ok(n)) => *written += n,
            // Interrupted is the only error that we consider to be recoverable by trying again
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    buf.clear();
    *written = 0;
    Poll::Ready(Ok(()))
}

impl<W: AsyncWrite> AsyncWrite for CryptWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        // completely flush the buffer, returning pending if not possible
        ready!(poll_flush_buf(&mut this.inner, this.buf, this.written, cx))?;
        // if we get here, the buffer is empty
        debug_assert!(this.buf.is_empty());
        let count = buf.len().min(MAX_WRITE);
        // Exactly: amortised growth would take the buffer past MAX_WRITE.
        this.buf.reserve_exact(count);
        this.buf.extend_from_slice(&buf[..count]);
        this.cipher.apply_keystream(this.buf);
        tracing::trace!(bytes=%count, "encrypted bytes");
        // flush immediately afterwards, but if we get a pending we don't care
        if let Poll::Ready(Err(e)) = poll_flush_buf(&mut this.inner, this.buf, this.written, cx) {
            Poll::Ready(Err(e))
        } else {
            Poll::Ready(Ok(count))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        ready!(poll_flush_buf(&mut this.inner, this.buf, this.written, cx))?;
        this.inner.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        ready!(poll_flush_buf(&mut this.inner, this.buf, this.written, cx))?;
        this.inner.poll_close(cx)
    }
}

impl<W: AsyncWrite + fmt::Debug> fmt::Debug for CryptWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptWriter")
            .field("writer", &self.inner)
            .field("buf", &self.buf)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncWriteExt, executor::block_on};
    use proptest::prelude::*;

    use super::*;

    /// A writer that takes at most `step` bytes per call and is pending
    /// every other call, as a congested TCP socket is.
    struct Trickle {
        taken: Vec<u8>,
        step: usize,
        pending_next: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.pending_next = !self.pending_next;
            if !self.pending_next {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.step);
            self.taken.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    proptest! {
        /// Whatever the inner writer takes per call and however the caller
        /// splits its writes, the inner writer receives the plaintext
        /// XORed with the keystream, each byte once and in order.
        #[test]
        fn partial_writes_deliver_the_ciphertext_once_in_order(
            data in proptest::collection::vec(any::<u8>(), 0..(3 * MAX_WRITE)),
            writes in proptest::collection::vec(1usize..(2 * MAX_WRITE), 1..8),
            step in 1usize..5000,
        ) {
            let (key, nonce) = ([1u8; 32], [2u8; 24]);
            let trickle = Trickle { taken: Vec::new(), step, pending_next: false };
            let mut writer = Box::pin(CryptWriter::with_capacity(
                1024,
                trickle,
                XSalsa20::new(&key, &nonce),
            ));
            block_on(async {
                let mut rest = &data[..];
                let mut sizes = writes.iter().cycle();
                while !rest.is_empty() {
                    let size = (*sizes.next().expect("cycle")).min(rest.len());
                    writer.write_all(&rest[..size]).await.expect("write");
                    rest = &rest[size..];
                }
                writer.flush().await.expect("flush");
            });
            prop_assert!(writer.buf.capacity() <= MAX_WRITE);
            let mut expected = data.clone();
            XSalsa20::new(&key, &nonce).apply_keystream(&mut expected);
            prop_assert_eq!(&writer.as_mut().get_pin_mut().taken, &expected);
        }
    }
}
