//! A download session: one stream to one peer for one blob. Its writer
//! sends `Hello` and pipelined `ChunkRequest`s; its reader takes
//! `Bitfield`, `Have` and `ChunkResponse` frames, reads each payload into a
//! chunk-sized buffer and has the store verify and write it off the read
//! path, reporting to the download coordinator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgeswarm_protocol::picker::FailReason;
use edgeswarm_protocol::wire::{self, ChunkRequest, ChunkStatus, Hello, StreamMessage};
use edgeswarm_protocol::Digest;
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::PeerId;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::super::chunkstore::BlobLayout;
use super::super::frame::{self, FrameError};
use super::super::{ChunkStore, ChunkStoreError, ChunkWrite};
use super::download::Event;
use super::{lock, Inner, STORE_WRITES_PER_SESSION};

/// Request ids sent on a session and not yet answered, with their chunk.
type Outstanding = Arc<Mutex<HashMap<u64, u32>>>;

/// One download session with one peer for one blob.
pub(super) async fn session<S: ChunkStore>(
    inner: Arc<Inner<S>>,
    peer: PeerId,
    blob: Digest,
    layout: BlobLayout,
    requests: mpsc::Receiver<u32>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let mut control = inner.control.clone();
    let open = control.open_stream(peer, inner.protocols.chunks.clone());
    let outcome = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(Duration::from_secs(10), open) => r,
    };
    let stream = match outcome {
        Ok(Ok(s)) => s,
        Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
            let _ = events.send(Event::Closed(peer, None, true)).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "cannot open chunk stream");
            let _ = events.send(Event::Closed(peer, None, false)).await;
            return;
        }
        Err(_) => {
            let _ = events.send(Event::Closed(peer, None, false)).await;
            return;
        }
    };
    let (r, w) = stream.split();
    let outstanding: Outstanding = Arc::new(Mutex::new(HashMap::new()));
    let res = tokio::select! {
        _ = cancel.cancelled() => return,
        r = session_writer(w, blob, requests, outstanding.clone()) => r,
        r = session_reader(&inner, r, peer, blob, &layout, &events, &outstanding) => r,
    };
    let violation = match res {
        Err(e) if e.is_violation() => Some(e.to_string()),
        Err(e) => {
            debug!(%peer, error = %e, "chunk session ended");
            None
        }
        Ok(()) => None,
    };
    let _ = events.send(Event::Closed(peer, violation, false)).await;
}

async fn session_writer<W: AsyncWrite + Unpin>(
    mut w: W,
    blob: Digest,
    mut requests: mpsc::Receiver<u32>,
    outstanding: Outstanding,
) -> Result<(), FrameError> {
    let hello = StreamMessage::Hello(Hello {
        protocol_version: wire::STREAM_VERSION,
        blobs: vec![blob],
    });
    frame::write_message(&mut w, &hello, &[]).await?;
    w.flush().await?;
    let mut next_id: u64 = 0;
    while let Some(index) = requests.recv().await {
        next_id += 1;
        lock(&outstanding).insert(next_id, index);
        let req = StreamMessage::ChunkRequest(ChunkRequest {
            request_id: next_id,
            blob,
            index,
        });
        frame::write_message(&mut w, &req, &[]).await?;
        w.flush().await?;
    }
    Ok(())
}

async fn session_reader<S: ChunkStore, R: AsyncRead + Unpin>(
    inner: &Arc<Inner<S>>,
    mut r: R,
    peer: PeerId,
    blob: Digest,
    layout: &BlobLayout,
    events: &mpsc::Sender<Event>,
    outstanding: &Outstanding,
) -> Result<(), FrameError> {
    let count = layout.chunk_count();
    let mut hello = false;
    let writes = Arc::new(Semaphore::new(STORE_WRITES_PER_SESSION));
    loop {
        let msg = frame::read_message(&mut r).await?;
        let ev = match msg {
            StreamMessage::Hello(_) if !hello => {
                hello = true;
                continue;
            }
            StreamMessage::Bitfield(b) if hello => {
                if b.blob != blob {
                    continue; // about another blob we did not ask for: ignore
                }
                if b.bitfield.len() != count {
                    return Err(FrameError::violation(format!(
                        "bitfield of {} bits for {count} chunks",
                        b.bitfield.len()
                    )));
                }
                Event::Bitfield(peer, b.bitfield)
            }
            StreamMessage::Have(h) if hello => {
                if h.blob != blob {
                    continue;
                }
                if h.indices.iter().any(|i| *i >= count) {
                    return Err(FrameError::violation("Have index out of range"));
                }
                Event::Have(peer, h.indices)
            }
            StreamMessage::ChunkResponse(resp) if hello => {
                let Some(index) = lock(outstanding).remove(&resp.request_id) else {
                    return Err(FrameError::violation(format!(
                        "response to unknown request {}",
                        resp.request_id
                    )));
                };
                match resp.status {
                    ChunkStatus::Ok { len } => {
                        let expected = layout.chunk_len(index).ok_or_else(|| {
                            FrameError::violation(format!("chunk {index} out of range"))
                        })?;
                        if len != expected as u64 {
                            return Err(FrameError::violation(format!(
                                "chunk {index} of {len} bytes, expected {expected}"
                            )));
                        }
                        let mut buf = vec![0u8; expected as usize];
                        r.read_exact(&mut buf).await?;
                        // Verify and store off the read path, so the next
                        // chunk streams in meanwhile (bounded per session).
                        let permit =
                            writes.clone().acquire_owned().await.map_err(|_| {
                                FrameError::Io(std::io::ErrorKind::BrokenPipe.into())
                            })?;
                        let inner = inner.clone();
                        let events = events.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let ev = match inner
                                .store
                                .write_chunk(blob, index, Bytes::from(buf))
                                .await
                            {
                                Ok(outcome) => {
                                    if outcome == ChunkWrite::AlreadyHad {
                                        inner.metrics.duplicate_chunks.inc();
                                    } else {
                                        inner.metrics.chunks_downloaded.inc();
                                        inner.metrics.bytes_downloaded.inc_by(expected as u64);
                                        inner.metrics.record_source(peer);
                                    }
                                    Event::Stored(peer, index, outcome)
                                }
                                Err(ChunkStoreError::Corrupt(reason)) => {
                                    Event::Corrupt(peer, index, reason)
                                }
                                Err(e) => Event::StoreFailed(peer, index, e),
                            };
                            let _ = events.send(ev).await;
                        });
                        continue;
                    }
                    ChunkStatus::NotHave => Event::Rejected(peer, index, FailReason::NotHave),
                    // At its upload limit: leave the peer alone briefly.
                    ChunkStatus::Busy => Event::Rejected(peer, index, FailReason::Busy),
                    // Seed sparing and errors: ask another holder of this
                    // chunk (the picker comes back here if there is none).
                    ChunkStatus::TryElsewhere | ChunkStatus::Error { .. } => {
                        Event::Rejected(peer, index, FailReason::Error)
                    }
                }
            }
            other => {
                return Err(FrameError::violation(format!(
                    "unexpected message kind {} from a server",
                    other.kind()
                )))
            }
        };
        if events.send(ev).await.is_err() {
            return Ok(());
        }
    }
}
