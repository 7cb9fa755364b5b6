//! A chunk stream that counts the bytes crossing it, so that the exchange's
//! cost beyond the chunks (frames, `Have`s, answers) shows in the metrics
//! next to the link counters.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use prometheus_client::metrics::counter::Counter;

/// `inner`, counting bytes read into `read` and bytes written into `written`.
pub(super) struct Counted<T> {
    /// The stream.
    inner: T,
    /// Bytes read so far are added here.
    read: Counter,
    /// Bytes written so far are added here.
    written: Counter,
}

impl<T> Counted<T> {
    pub(super) fn new(inner: T, read: Counter, written: Counter) -> Self {
        Counted {
            inner,
            read,
            written,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.read.inc_by(*n as u64);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.written.inc_by(*n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn counts_what_is_read_and_written() {
        futures::executor::block_on(async {
            let (read, written) = (Counter::default(), Counter::default());
            let mut s = Counted::new(
                futures::io::Cursor::new(vec![7u8; 10]),
                read.clone(),
                written.clone(),
            );
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!((read.get(), written.get()), (4, 0));
            s.write_all(b"abc").await.unwrap();
            assert_eq!((read.get(), written.get()), (4, 3));
        });
    }
}
