//! A download session: one stream to one peer for one blob. Its writer
//! sends `Hello` and pipelined `ChunkRequest`s; its reader takes
//! `Bitfield`, `Have` and `ChunkResponse` frames, reads each payload into a
//! chunk-sized buffer and has the store verify and write it off the read
//! path, reporting to the download coordinator.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeswarm_protocol::picker::FailReason;
use edgeswarm_protocol::wire::{self, Cancel, ChunkRequest, ChunkStatus, Hello, StreamMessage};
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
use super::relay::RelayWriter;
use super::{lock, Inner, STORE_WRITES_PER_SESSION};

/// What a download coordinator asks of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionCommand {
    /// Request this chunk.
    Request(u32),
    /// The chunk arrived from elsewhere: tell the peer not to send it
    /// (endgame duplicates, chunks landed by another path).
    Cancel(u32),
}

/// Requests of one session: those sent and not yet answered, and those
/// cancelled whose answer (if the server had already begun it) is read
/// and discarded.
#[derive(Default)]
struct Requests {
    /// Request id -> chunk index and when it was asked, awaiting an answer.
    outstanding: HashMap<u64, (u32, Instant)>,
    /// Request id -> chunk index, cancelled; the server may still answer.
    cancelled: HashMap<u64, u32>,
}

/// Shared between a session's writer and reader halves.
type Outstanding = Arc<Mutex<Requests>>;

/// Cancelled request ids remembered per session at most: a server answers
/// a requester in order, so ids older than this many cancellations were
/// skipped or answered long ago (each session has at most
/// `requests_per_peer` requests outstanding).
const MAX_CANCELLED: usize = 256;

/// What a session fetches, and from whom.
pub(super) struct Target {
    /// The peer.
    pub(super) peer: PeerId,
    /// The blob.
    pub(super) blob: Digest,
    /// The blob's layout.
    pub(super) layout: BlobLayout,
    /// Whether the peer's `Relaying` is taken (see
    /// `download::MAX_RELAY_ABORTS`).
    pub(super) accept_relaying: bool,
}

/// One download session with one peer for one blob.
pub(super) async fn session<S: ChunkStore>(
    inner: Arc<Inner<S>>,
    target: Target,
    requests: mpsc::Receiver<SessionCommand>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let Target {
        peer,
        blob,
        layout,
        accept_relaying,
    } = target;
    let mut control = inner.control.clone();
    let open = control.open_stream(peer, inner.protocols.chunks.clone());
    let outcome = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(Duration::from_secs(10), open) => r,
    };
    let stream = match outcome {
        Ok(Ok(s)) => s,
        Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
            let _ = events.send(Event::Closed(peer, Ending::Unsupported)).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "cannot open chunk stream");
            let _ = events.send(Event::Closed(peer, Ending::Ended)).await;
            return;
        }
        Err(_) => {
            let _ = events.send(Event::Closed(peer, Ending::Ended)).await;
            return;
        }
    };
    let (r, w) = super::counted(&inner, stream).split();
    let outstanding: Outstanding = Arc::new(Mutex::new(Requests::default()));
    let answered = AtomicBool::new(false);
    let res = tokio::select! {
        _ = cancel.cancelled() => return,
        r = session_writer(w, blob, requests, outstanding.clone()) => r,
        r = session_reader(&inner, r, peer, blob, &layout, accept_relaying, &events, &outstanding, &answered) => r,
    };
    let ending = match res {
        Err(e) if e.is_violation() => Ending::Violation(e.to_string()),
        Err(e) if !answered.load(Ordering::Relaxed) => {
            debug!(%peer, error = %e, "chunk stream dropped before the peer's Hello");
            inner.metrics.streams_dropped.inc();
            Ending::Dropped
        }
        Err(e) => {
            debug!(%peer, error = %e, "chunk session ended");
            Ending::Ended
        }
        Ok(()) => Ending::Ended,
    };
    let _ = events.send(Event::Closed(peer, ending)).await;
}

/// How a session ended, for its download's choice of when to try the peer
/// again.
#[derive(Debug)]
pub(super) enum Ending {
    /// The peer broke the protocol (it is penalised).
    Violation(String),
    /// The peer does not speak the chunk protocol.
    Unsupported,
    /// The stream closed before the peer's `Hello`: the peer dropped it
    /// unread. libp2p-stream hands inbound streams over a channel of one
    /// slot and drops those that find it full, which happens whenever a
    /// release starts (each node opens a session per blob to every peer at
    /// once: 4 of 40 streams dropped at N=5); a server at its inbound
    /// limit drops streams too. Not the peer's fault, and soon over.
    Dropped,
    /// Any other end (the connection closed, a read failed).
    Ended,
}

async fn session_writer<W: AsyncWrite + Unpin>(
    mut w: W,
    blob: Digest,
    mut requests: mpsc::Receiver<SessionCommand>,
    outstanding: Outstanding,
) -> Result<(), FrameError> {
    let hello = StreamMessage::Hello(Hello {
        protocol_version: wire::HELLO_VERSION,
        blobs: vec![blob],
    });
    frame::write_message(&mut w, &hello, &[]).await?;
    w.flush().await?;
    let mut next_id: u64 = 0;
    while let Some(command) = requests.recv().await {
        let msg = match command {
            SessionCommand::Request(index) => {
                next_id += 1;
                lock(&outstanding)
                    .outstanding
                    .insert(next_id, (index, Instant::now()));
                StreamMessage::ChunkRequest(ChunkRequest {
                    request_id: next_id,
                    blob,
                    index,
                })
            }
            SessionCommand::Cancel(index) => {
                let mut requests = lock(&outstanding);
                let Some(id) = requests
                    .outstanding
                    .iter()
                    .find(|(_, (i, _))| *i == index)
                    .map(|(id, _)| *id)
                else {
                    continue; // answered meanwhile
                };
                requests.outstanding.remove(&id);
                if requests.cancelled.len() >= MAX_CANCELLED {
                    let oldest = requests.cancelled.keys().min().copied();
                    if let Some(oldest) = oldest {
                        requests.cancelled.remove(&oldest);
                    }
                }
                requests.cancelled.insert(id, index);
                StreamMessage::Cancel(Cancel { request_id: id })
            }
        };
        frame::write_message(&mut w, &msg, &[]).await?;
        w.flush().await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn session_reader<S: ChunkStore, R: AsyncRead + Unpin>(
    inner: &Arc<Inner<S>>,
    mut r: R,
    peer: PeerId,
    blob: Digest,
    layout: &BlobLayout,
    accept_relaying: bool,
    events: &mpsc::Sender<Event>,
    outstanding: &Outstanding,
    answered: &AtomicBool,
) -> Result<(), FrameError> {
    let count = layout.chunk_count();
    let mut hello = false;
    let writes = Arc::new(Semaphore::new(STORE_WRITES_PER_SESSION));
    loop {
        let msg = frame::read_message(&mut r).await?;
        let msg_is_relaying = matches!(msg, StreamMessage::Relaying(_));
        let ev = match msg {
            StreamMessage::Hello(_) if !hello => {
                hello = true;
                answered.store(true, Ordering::Relaxed);
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
            // A chunk the peer is receiving can be requested like one it
            // holds: it is relayed as it arrives.
            StreamMessage::Have(wire::Have { blob: b, indices })
            | StreamMessage::Relaying(wire::Relaying { blob: b, indices })
                if hello =>
            {
                if b != blob {
                    continue;
                }
                // A peer whose relays kept failing is taken at its
                // verified chunks only (see `Event::RelayAborted`).
                if !accept_relaying && msg_is_relaying {
                    continue;
                }
                if indices.iter().any(|i| *i >= count) {
                    return Err(FrameError::violation("chunk index out of range"));
                }
                Event::Have(peer, indices)
            }
            StreamMessage::ChunkResponse(resp) if hello => {
                let (index, asked, cancelled) = {
                    let mut requests = lock(outstanding);
                    match requests.outstanding.remove(&resp.request_id) {
                        Some((index, asked)) => (index, Some(asked), false),
                        None => match requests.cancelled.remove(&resp.request_id) {
                            Some(index) => (index, None, true),
                            None => {
                                return Err(FrameError::violation(format!(
                                    "response to unknown request {}",
                                    resp.request_id
                                )))
                            }
                        },
                    }
                };
                // In relay pieces: a chunk still arriving at the server, or
                // one it holds sent so that our `Cancel` can stop it.
                let in_pieces = matches!(resp.status, ChunkStatus::Relay { .. });
                if cancelled {
                    // The server had begun the answer before our Cancel:
                    // the chunk is already held, read past it (a server
                    // answering in pieces stops at the next one).
                    if let ChunkStatus::Ok { len } | ChunkStatus::Relay { len } = resp.status {
                        let expected = announced_len(layout, index, len)?;
                        let mut buf = inner.store.chunk_buffer(expected as usize);
                        let read = match read_body(&mut r, &mut buf, in_pieces, None).await? {
                            Body::Complete => {
                                inner.metrics.duplicate_chunks.inc();
                                buf.len()
                            }
                            Body::Aborted { read } => {
                                inner.metrics.cancelled_answers_cut.inc();
                                read
                            }
                        };
                        inner.metrics.cancelled_bytes_read.inc_by(read as u64);
                        inner.store.recycle_chunk(Bytes::from(buf));
                    }
                    continue;
                }
                match resp.status {
                    ChunkStatus::Ok { len } | ChunkStatus::Relay { len } => {
                        let expected = announced_len(layout, index, len)?;
                        // Pooled: a fresh zeroed 512 KiB per chunk cost
                        // ~3 % of a node's CPU (see `store::buffers`).
                        let mut buf = inner.store.chunk_buffer(expected as usize);
                        let header_at = Instant::now();
                        if events.send(Event::Began(peer, index)).await.is_err() {
                            return Ok(());
                        }
                        // Passed on to our own requesters as it arrives.
                        let relay = inner.relays.begin(blob, index, expected);
                        if let Body::Aborted { read } =
                            read_body(&mut r, &mut buf, in_pieces, relay.as_ref()).await?
                        {
                            // The relay lost its source or its copy: not a
                            // fault; ask again, elsewhere if another peer
                            // holds the chunk.
                            inner.metrics.relays_aborted.inc();
                            inner.metrics.relay_bytes_aborted.inc_by(read as u64);
                            if events.send(Event::RelayAborted(peer, index)).await.is_err() {
                                return Ok(());
                            }
                            continue;
                        }
                        // The timeline of one transfer (queueing before the
                        // answer began, then the payload), for diagnosing
                        // where a swarm's time goes.
                        debug!(
                            %peer,
                            index,
                            in_pieces,
                            wait_ms = asked.map(|a| header_at.duration_since(a).as_millis()),
                            transfer_ms = header_at.elapsed().as_millis(),
                            "chunk received"
                        );
                        // Verify and store off the read path, so the next
                        // chunk streams in meanwhile (bounded per session).
                        let permit =
                            writes.clone().acquire_owned().await.map_err(|_| {
                                FrameError::Io(std::io::ErrorKind::BrokenPipe.into())
                            })?;
                        // The next request may go out while this chunk is
                        // verified and made durable; the permits bound what
                        // waits for the store.
                        if events.send(Event::Arrived(peer, index)).await.is_err() {
                            return Ok(());
                        }
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
                                    // Verified: its relays may finish. Not
                                    // a chunk that rests on a peer's
                                    // provisional digest (held back until
                                    // confirmed): its relays abort.
                                    let confirmed =
                                        inner.store.bitfield(&blob).is_some_and(|b| b.get(index));
                                    if let (Some(relay), true) = (relay, confirmed) {
                                        relay.verified();
                                    }
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
                    // Seed sparing: not from this peer for a while, even if
                    // it is the only holder (asking again at once made a
                    // storm of refusals in the simulator).
                    ChunkStatus::TryElsewhere => {
                        Event::Rejected(peer, index, FailReason::TryElsewhere)
                    }
                    // Errors: ask another holder of this chunk (the picker
                    // comes back here if there is none).
                    ChunkStatus::Error { .. } => Event::Rejected(peer, index, FailReason::Error),
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

/// The length of chunk `index`, if `announced` is it; a violation if not.
fn announced_len(layout: &BlobLayout, index: u32, announced: u64) -> Result<u32, FrameError> {
    let expected = layout
        .chunk_len(index)
        .ok_or_else(|| FrameError::violation(format!("chunk {index} out of range")))?;
    if announced != u64::from(expected) {
        return Err(FrameError::violation(format!(
            "chunk {index} of {announced} bytes, expected {expected}"
        )));
    }
    Ok(expected)
}

/// Bytes a session reads at most before it passes them on to relays: a
/// relay hop adds about this much delay (64 KiB is 5 ms at 100 Mbit/s).
const READ_STEP: usize = 64 << 10;

/// How a chunk answer's body ended.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// Every byte arrived.
    Complete,
    /// The server aborted the answer (`RELAY_ABORT`) after `read` payload
    /// bytes.
    Aborted {
        /// Payload bytes read before the abort (thrown away).
        read: usize,
    },
}

/// Reads a chunk answer's bytes into `buf` (its announced length): the raw
/// payload of an `Ok`, or the pieces of a `Relay`, telling `relay` what has
/// arrived as it comes.
async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    in_pieces: bool,
    relay: Option<&RelayWriter>,
) -> Result<Body, FrameError> {
    let mut filled = 0usize;
    while filled < buf.len() {
        let end = if in_pieces {
            let mut prefix = [0u8; 4];
            r.read_exact(&mut prefix).await?;
            match wire::check_relay_piece(prefix, (buf.len() - filled) as u64)? {
                Some(n) => filled + n as usize,
                None => return Ok(Body::Aborted { read: filled }),
            }
        } else {
            buf.len()
        };
        while filled < end {
            let step = (end - filled).min(READ_STEP);
            let n = r.read(&mut buf[filled..filled + step]).await?;
            if n == 0 {
                return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            filled += n;
            if let Some(relay) = relay {
                relay.progress(&buf[..filled]);
            }
        }
    }
    Ok(Body::Complete)
}
