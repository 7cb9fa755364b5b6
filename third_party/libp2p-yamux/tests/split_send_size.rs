//! `Config::set_split_send_size` (edgeswarm's change): the frames a
//! stream's writes become are at most that large, and every byte still
//! arrives, in order, at a peer with the default configuration.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::poll_fn;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p_core::muxing::{StreamMuxer, StreamMuxerExt};
use libp2p_core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p_yamux::Config;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// Records the length of every write that reaches the socket.
struct Recorder {
    inner: Compat<tokio::io::DuplexStream>,
    writes: Arc<Mutex<Vec<usize>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            self.writes.lock().unwrap().push(*n);
        }
        written
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Sends `data` on one stream from a muxer with `split` (or the default)
/// to a default muxer; returns what arrived and the sender's write sizes.
async fn send(data: Vec<u8>, split: Option<usize>) -> (Vec<u8>, Vec<usize>) {
    // A socket buffer far smaller than the data, so that writes queue.
    let (a, b) = tokio::io::duplex(64 << 10);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let sender_io = Recorder {
        inner: a.compat(),
        writes: writes.clone(),
    };
    let mut config = Config::default();
    if let Some(split) = split {
        config.set_split_send_size(split);
    }
    let mut sender = config
        .upgrade_outbound(sender_io, "/yamux/1.0.0")
        .await
        .unwrap();
    let mut receiver = Config::default()
        .upgrade_inbound(b.compat(), "/yamux/1.0.0")
        .await
        .unwrap();

    let reading = tokio::spawn(async move {
        let mut stream = poll_fn(|cx| receiver.poll_inbound_unpin(cx)).await.unwrap();
        let drive = tokio::spawn(async move {
            loop {
                if poll_fn(|cx| receiver.poll_unpin(cx)).await.is_err() {
                    return;
                }
            }
        });
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        drive.abort();
        got
    });
    let mut stream = poll_fn(|cx| Pin::new(&mut sender).poll_outbound(cx))
        .await
        .unwrap();
    let drive = tokio::spawn(async move {
        loop {
            if poll_fn(|cx| sender.poll_unpin(cx)).await.is_err() {
                return;
            }
        }
    });
    stream.write_all(&data).await.unwrap();
    stream.close().await.unwrap();
    let got = reading.await.unwrap();
    drive.abort();
    let writes = writes.lock().unwrap().clone();
    (got, writes)
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_at_most_the_split_send_size_and_every_byte_arrives() {
    let sent = data(600_000);
    let (got, writes) = send(sent.clone(), Some(64_499)).await;
    assert!(got == sent, "the bytes arrive, in order");
    // yamux writes a frame as its 12-byte header, then its body.
    let largest = writes.iter().copied().max().unwrap();
    assert_eq!(largest, 64_499, "{writes:?}");

    let (got, writes) = send(sent.clone(), None).await;
    assert!(got == sent);
    assert_eq!(writes.iter().copied().max().unwrap(), 16 << 10);

    let (got, writes) = send(sent.clone(), Some(1000)).await;
    assert!(got == sent);
    assert_eq!(writes.iter().copied().max().unwrap(), 1000);
}
