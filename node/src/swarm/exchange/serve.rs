//! The serving side: every inbound chunk stream gets a task (bounded); a
//! reader half parses the requester's frames into a bounded queue, the
//! writer half answers `Hello`, pushes bitfields and `Have`s, serves chunk
//! maps and chunks as the upload policy ([`super::uploads`]: slots, seed
//! sparing) decides, under the token bucket.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeswarm_protocol::upload::Refusal;
use edgeswarm_protocol::wire::{
    self, BitfieldMsg, ChunkMapResponse, ChunkResponse, ChunkStatus, Have, Hello, StreamMessage,
};
use edgeswarm_protocol::{Bitfield, Digest};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

use super::super::frame::{self, FrameError};
use super::super::ChunkStore;
use super::relay::{Outcome as RelayOutcome, Relay};
use super::uploads::{ChunkAsk, StreamUploads};
use super::{lock, penalise, Inner, TokenBucket, SERVER_QUEUE};

pub(super) async fn accept_loop<S: ChunkStore>(
    inner: Arc<Inner<S>>,
    mut incoming: libp2p_stream::IncomingStreams,
) {
    let limit = Arc::new(Semaphore::new(inner.max_inbound_streams));
    loop {
        let next = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            n = incoming.next() => n,
        };
        let Some((peer, stream)) = next else { return };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "too many inbound chunk streams; dropping one");
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let cancel = inner.shutdown.clone();
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = serve_stream(&inner, peer, stream) => {
                    if let Err(e) = r {
                        if e.is_violation() {
                            penalise(&inner, peer, &e.to_string());
                        } else {
                            debug!(%peer, error = %e, "chunk stream ended");
                        }
                    }
                }
            }
        });
    }
}

/// Most blobs one stream's `Hello` may bind.
const MAX_HELLO_BLOBS: usize = 64;

/// Requests parsed by a server's reader half.
enum Incoming {
    /// The requester's `Hello`: its protocol version and blobs.
    Hello(u64, Vec<Digest>),
    Map(u64, Digest),
    Chunk(u64, Digest, u32),
}

/// Cancelled request ids one stream remembers at most (a requester keeps
/// only a few requests outstanding; more is abuse and is ignored).
const MAX_CANCELLED: usize = 64;

async fn serve_reader<R: AsyncRead + Unpin>(
    mut r: R,
    tx: mpsc::Sender<Incoming>,
    cancelled: &std::sync::Mutex<HashSet<u64>>,
) -> Result<(), FrameError> {
    let mut hello = false;
    loop {
        let msg = match frame::read_message(&mut r).await {
            Ok(m) => m,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let incoming = match msg {
            StreamMessage::Hello(h) if !hello => {
                hello = true;
                if h.blobs.len() > MAX_HELLO_BLOBS {
                    return Err(FrameError::violation(format!(
                        "Hello lists {} blobs",
                        h.blobs.len()
                    )));
                }
                Incoming::Hello(h.protocol_version, h.blobs)
            }
            StreamMessage::ChunkRequest(q) if hello => {
                Incoming::Chunk(q.request_id, q.blob, q.index)
            }
            StreamMessage::ChunkMapRequest(q) if hello => Incoming::Map(q.request_id, q.blob),
            StreamMessage::Cancel(c) if hello => {
                // A request still queued is skipped without an answer; one
                // already being answered in pieces stops at the next piece
                // (`RELAY_ABORT`); an unpieced answer to an old requester
                // completes (it reads and drops it).
                let mut set = lock(cancelled);
                if set.len() < MAX_CANCELLED {
                    set.insert(c.request_id);
                }
                continue;
            }
            StreamMessage::Have(_) | StreamMessage::Bitfield(_) | StreamMessage::Relaying(_)
                if hello =>
            {
                continue
            }
            other => {
                return Err(FrameError::violation(format!(
                    "unexpected message kind {} from a requester",
                    other.kind()
                )))
            }
        };
        if tx.send(incoming).await.is_err() {
            return Ok(());
        }
    }
}

async fn serve_stream<S: ChunkStore>(
    inner: &Inner<S>,
    peer: PeerId,
    stream: Stream,
) -> Result<(), FrameError> {
    let (r, mut w) = super::counted(inner, stream).split();
    let uploads = inner.uploads.open(peer);
    let (tx, mut rx) = mpsc::channel(SERVER_QUEUE);
    let cancelled = std::sync::Mutex::new(HashSet::new());
    let reader = serve_reader(r, tx, &cancelled);
    let writer = async {
        // Blobs the requester asked about, with the bitfield last sent.
        let mut bound: Vec<(Digest, Option<Bitfield>)> = Vec::new();
        // Whether the requester takes relayed chunks, and those of each
        // bound blob announced to it as relaying.
        let mut relay_ok = false;
        // Whether the requester reads answers in pieces (`Relay` framing),
        // so that its `Cancel` can stop one under way.
        let mut pieces_ok = false;
        let mut relaying: Vec<HashSet<u32>> = Vec::new();
        let mut relay_starts = inner.relays.subscribe();
        // Registers this requester with super-seeding while the stream lives.
        let mut binding = Binding {
            inner,
            peer,
            blobs: Vec::new(),
        };
        // `Have`s go out as soon as the store verifies a chunk (every hop
        // of a relay waits for them); the tick re-checks now and then.
        let mut events = inner.store.subscribe_events();
        let mut tick = tokio::time::interval(HAVE_RECHECK);
        loop {
            tokio::select! {
                changed = next_stored(&mut events) => {
                    let touched: Vec<usize> = match changed {
                        Some(blob) => bound.iter().position(|(b, _)| *b == blob).into_iter().collect(),
                        None => (0..bound.len()).collect(),
                    };
                    if !touched.is_empty() {
                        for i in touched {
                            let (blob, sent) = &mut bound[i];
                            push_haves(inner, peer, &mut w, blob, sent).await?;
                        }
                        w.flush().await?;
                    }
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { return Ok::<(), FrameError>(()) };
                    match msg {
                        Incoming::Hello(version, blobs) => {
                            let known: Vec<Digest> = blobs.iter().copied().filter(|b| inner.store.bitfield(b).is_some()).collect();
                            let hello = StreamMessage::Hello(Hello { protocol_version: wire::HELLO_VERSION, blobs: known });
                            frame::write_message(&mut w, &hello, &[]).await?;
                            pieces_ok = version >= wire::HELLO_VERSION_RELAY;
                            relay_ok = inner.relay && pieces_ok;
                            bound = blobs.into_iter().map(|b| (b, None)).collect();
                            relaying = vec![HashSet::new(); bound.len()];
                            binding.bind(bound.iter().map(|(b, _)| *b).collect());
                            for (i, (blob, sent)) in bound.iter_mut().enumerate() {
                                push_haves(inner, peer, &mut w, blob, sent).await?;
                                if relay_ok {
                                    push_relaying(inner, &mut w, blob, sent, &mut relaying[i]).await?;
                                }
                            }
                        }
                        Incoming::Map(request_id, blob) => match inner.store.chunk_map(&blob) {
                            Some(map) => {
                                let bytes = map.encode();
                                let resp = StreamMessage::ChunkMapResponse(ChunkMapResponse { request_id, blob, status: ChunkStatus::Ok { len: bytes.len() as u64 } });
                                frame::write_message(&mut w, &resp, &bytes).await?;
                            }
                            None => {
                                let resp = StreamMessage::ChunkMapResponse(ChunkMapResponse { request_id, blob, status: ChunkStatus::NotHave });
                                frame::write_message(&mut w, &resp, &[]).await?;
                            }
                        },
                        Incoming::Chunk(request_id, blob, index) => {
                            // Requests are answered in order: ids up to
                            // this one will not come again.
                            let skip = {
                                let mut set = lock(&cancelled);
                                let skip = set.remove(&request_id);
                                set.retain(|id| *id > request_id);
                                skip
                            };
                            if skip {
                                inner.metrics.cancelled_requests.inc();
                                continue;
                            }
                            let relay = inner.relays.get(&blob, index).filter(|_| relay_ok && !inner.corrupt_uploads);
                            match relay {
                                Some(relay) => serve_relay(inner, peer, &uploads, &mut w, request_id, (blob, index), relay, &cancelled).await?,
                                None => {
                                    let abortable = pieces_ok.then_some(&cancelled);
                                    serve_chunk(inner, peer, &uploads, &mut w, request_id, (blob, index), abortable).await?
                                }
                            }
                        }
                    }
                    w.flush().await?;
                }
                started = relay_starts.recv(), if relay_ok => {
                    use tokio::sync::broadcast::error::RecvError;
                    let touched: Vec<usize> = match started {
                        Ok(blob) => bound.iter().position(|(b, _)| *b == blob).into_iter().collect(),
                        Err(RecvError::Lagged(_)) => (0..bound.len()).collect(),
                        Err(RecvError::Closed) => Vec::new(),
                    };
                    if !touched.is_empty() {
                        for i in touched {
                            let (blob, sent) = &bound[i];
                            push_relaying(inner, &mut w, blob, sent, &mut relaying[i]).await?;
                        }
                        w.flush().await?;
                    }
                }
                _ = tick.tick() => {
                    if !bound.is_empty() {
                        for (i, (blob, sent)) in bound.iter_mut().enumerate() {
                            push_haves(inner, peer, &mut w, blob, sent).await?;
                            // A relay begun before this stream could first
                            // advertise the blob (no bitfield sent yet) was
                            // skipped then: announced now.
                            if relay_ok {
                                push_relaying(inner, &mut w, blob, sent, &mut relaying[i]).await?;
                            }
                        }
                        w.flush().await?;
                    }
                }
            }
        }
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// How long a relay waits for more bytes of its chunk before it aborts.
const RELAY_IDLE: Duration = Duration::from_secs(2);

/// How often a server re-checks what it advertises without a store event:
/// a safety net after missed (lagged) events, and when super-seeding
/// offers lapse (`offers::OFFER_TIMEOUT`).
const HAVE_RECHECK: Duration = Duration::from_secs(1);

/// The blob of the next chunk verified or blob completed; `None` when
/// events were missed (check every blob). Pends forever without events.
async fn next_stored(
    events: &mut Option<tokio::sync::broadcast::Receiver<crate::store::StoreEvent>>,
) -> Option<Digest> {
    use crate::store::StoreEvent;
    use tokio::sync::broadcast::error::RecvError;
    let Some(rx) = events.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(StoreEvent::ChunkStored { blob, .. }) | Ok(StoreEvent::BlobComplete { blob }) => {
                return Some(blob)
            }
            Ok(
                StoreEvent::BlobFailed { .. }
                | StoreEvent::DigestsRefuted { .. }
                | StoreEvent::DigestsLearned { .. },
            ) => continue,
            Err(RecvError::Lagged(_)) => return None,
            Err(RecvError::Closed) => {
                *events = None;
                return std::future::pending().await;
            }
        }
    }
}

/// The blobs a requester's stream bound, registered with super-seeding
/// ([`super::offers`]) until the stream ends.
struct Binding<'a, S> {
    /// The exchange.
    inner: &'a Inner<S>,
    /// The requester.
    peer: PeerId,
    /// Blobs registered.
    blobs: Vec<Digest>,
}

impl<S> Binding<'_, S> {
    fn bind(&mut self, blobs: Vec<Digest>) {
        self.unbind_all();
        let now = Instant::now();
        let mut offers = lock(&self.inner.offers);
        for blob in &blobs {
            offers.bind(*blob, self.peer, now);
        }
        self.blobs = blobs;
    }

    fn unbind_all(&mut self) {
        let mut offers = lock(&self.inner.offers);
        for blob in self.blobs.drain(..) {
            offers.unbind(&blob, &self.peer);
        }
    }
}

impl<S> Drop for Binding<'_, S> {
    fn drop(&mut self) {
        self.unbind_all();
    }
}

/// What we advertise for `blob` to `peer`: verified chunks; of an origin
/// blob with seed sparing on, only those offered to this requester
/// (super-seeding); everything when injecting the corrupt-uploads fault.
fn advertised<S: ChunkStore>(inner: &Inner<S>, peer: PeerId, blob: &Digest) -> Option<Bitfield> {
    let bits = inner.store.bitfield(blob)?;
    if inner.corrupt_uploads {
        return Some(Bitfield::full(bits.len()));
    }
    let policy = inner.uploads.policy();
    if policy.sparing_ms.is_none() || lock(&inner.downloaded).contains(blob) {
        return Some(bits);
    }
    let fetched = |index: u32| inner.uploads.given(blob, index);
    // Small chunks (a manifest, a config, a layer's short last chunk) are
    // shown to everyone, as they are never spared: offered to one
    // requester, the others waited for its relay, or for OFFER_TIMEOUT
    // when it did not fetch the chunk within that second: in 3 of 15
    // five-node mirror rounds every node had the 895-byte manifest 1.05-
    // 1.2 s after the gateway, together (its chunk map had come at
    // +80 ms), against 0.04-0.3 s otherwise; 0 of 6 rounds after.
    let layout = inner.store.layout(blob);
    let small = |index: u32| {
        layout
            .as_ref()
            .and_then(|l| l.chunk_len(index))
            .is_some_and(|len| len <= policy.spare_min_len)
    };
    Some(lock(&inner.offers).visible(blob, &peer, &bits, Instant::now(), fetched, small))
}

/// Sends the bitfield of `blob` the first time we know it, then `Have`
/// for every chunk verified since the last call.
async fn push_haves<S: ChunkStore, W: AsyncWrite + Unpin>(
    inner: &Inner<S>,
    peer: PeerId,
    w: &mut W,
    blob: &Digest,
    sent: &mut Option<Bitfield>,
) -> Result<(), FrameError> {
    let Some(mut now) = advertised(inner, peer, blob) else {
        return Ok(());
    };
    // What was announced stays announced (an offer moved to another
    // requester is not taken back: `Have` is monotonic).
    if let Some(prev) = sent.as_ref().filter(|p| p.len() == now.len()) {
        for i in prev.iter_ones() {
            now.set(i);
        }
    }
    match sent {
        Some(prev) if prev.len() == now.len() => {
            let new: Vec<u32> = now.iter_ones().filter(|i| !prev.get(*i)).collect();
            for batch in new.chunks(wire::MAX_HAVE_BATCH) {
                let have = StreamMessage::Have(Have {
                    blob: *blob,
                    indices: batch.to_vec(),
                });
                frame::write_message(w, &have, &[]).await?;
            }
        }
        _ => {
            let msg = StreamMessage::Bitfield(BitfieldMsg {
                blob: *blob,
                bitfield: now.clone(),
            });
            frame::write_message(w, &msg, &[]).await?;
        }
    }
    *sent = Some(now);
    Ok(())
}

/// Sends `Relaying` for the chunks of `blob` now arriving here that the
/// requester has not been told of (as relaying, or as held in `sent`).
async fn push_relaying<S: ChunkStore, W: AsyncWrite + Unpin>(
    inner: &Inner<S>,
    w: &mut W,
    blob: &Digest,
    sent: &Option<Bitfield>,
    announced: &mut HashSet<u32>,
) -> Result<(), FrameError> {
    let Some(sent) = sent else { return Ok(()) };
    let new: Vec<u32> = inner
        .relays
        .in_flight(blob)
        .into_iter()
        .filter(|i| *i < sent.len() && !sent.get(*i) && !announced.contains(i))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    // Chunks held since are announced by `Have`; keep the set small.
    announced.retain(|i| !sent.get(*i));
    announced.extend(new.iter().copied());
    for batch in new.chunks(wire::MAX_HAVE_BATCH) {
        let msg = StreamMessage::Relaying(wire::Relaying {
            blob: *blob,
            indices: batch.to_vec(),
        });
        frame::write_message(w, &msg, &[]).await?;
    }
    Ok(())
}

/// Answers a request for a chunk still arriving here: `Relay`, then its
/// bytes in pieces as they come, under an upload slot and the token bucket
/// like any upload; the last byte only once our copy verified. Aborts if
/// our copy fails or the requester cancels.
#[allow(clippy::too_many_arguments)]
async fn serve_relay<S: ChunkStore, W: AsyncWrite + Unpin>(
    inner: &Inner<S>,
    peer: PeerId,
    uploads: &StreamUploads<'_>,
    w: &mut W,
    request_id: u64,
    (blob, index): (Digest, u32),
    relay: Arc<Relay>,
    cancelled: &std::sync::Mutex<HashSet<u64>>,
) -> Result<(), FrameError> {
    let len = relay.len();
    // A chunk arriving here is of a blob we download: never spared.
    let ask = ChunkAsk {
        request: request_id,
        blob,
        index,
        len: u32::try_from(len).unwrap_or(u32::MAX),
        origin: false,
    };
    let _slot = match uploads.ask(ask).await {
        Ok(slot) => slot,
        Err(refusal) => return respond(w, request_id, refused(refusal)).await,
    };
    let mut changed = relay.want();
    respond(w, request_id, ChunkStatus::Relay { len: len as u64 }).await?;
    let most = match &inner.bucket {
        Some(bucket) => bucket.piece(),
        None => wire::MAX_RELAY_PIECE as usize,
    };
    let mut sent = 0usize;
    let mut piece_buf = Vec::with_capacity(4 + most);
    loop {
        changed.borrow_and_update();
        let (mut pieces, outcome) = relay.sendable(sent);
        let requester_cancelled = lock(cancelled).contains(&request_id);
        if outcome == RelayOutcome::Failed && !requester_cancelled {
            // Our copy ended early, for example because our download
            // completed from another copy and closed the session still
            // reading this one (relays aborted 400-500 KB into a 512 KiB
            // chunk in 3 of 7 rounds at 20/10 Mbit/s, N = 10; that this
            // was their cause is not measured). The rest can come from
            // the store if we hold the chunk verified and the requester's
            // bytes so far are its bytes.
            match rest_from_store(inner, &relay, (blob, index), sent).await {
                Some(rest) => {
                    inner.metrics.relays_completed_from_store.inc();
                    pieces = vec![rest];
                }
                None => {
                    w.write_all(&wire::RELAY_ABORT.to_be_bytes()).await?;
                    debug!(%peer, request_id, sent, "relay aborted: our copy failed");
                    return Ok(());
                }
            }
        } else if requester_cancelled {
            w.write_all(&wire::RELAY_ABORT.to_be_bytes()).await?;
            debug!(%peer, request_id, "relay aborted: cancelled");
            return Ok(());
        }
        if pieces.is_empty() && relay.rest_in_store(sent) {
            // Wanted only after the session had read it all: the verified
            // chunk is in the store now.
            match inner.store.read_chunk(blob, index).await {
                Ok(bytes) if bytes.len() == len => pieces = vec![bytes.slice(sent..)],
                _ => {
                    w.write_all(&wire::RELAY_ABORT.to_be_bytes()).await?;
                    return Ok(());
                }
            }
        }
        for piece in &pieces {
            for part in piece.chunks(most) {
                if let Some(bucket) = &inner.bucket {
                    bucket.take(part.len() as u64).await;
                }
                write_piece(w, &mut piece_buf, part).await?;
                sent += part.len();
            }
        }
        if sent == len {
            break;
        }
        w.flush().await?;
        // A relay that stops moving holds up this requester's next
        // answers (a stream answers in order): it gives up, and the
        // requester asks again, there or elsewhere.
        match tokio::time::timeout(RELAY_IDLE, changed.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                w.write_all(&wire::RELAY_ABORT.to_be_bytes()).await?;
                inner.metrics.relays_given_up.inc();
                debug!(%peer, request_id, sent, "relay idle; aborted");
                return Ok(());
            }
        }
    }
    inner.metrics.chunks_uploaded.inc();
    inner.metrics.chunks_relayed.inc();
    inner.metrics.bytes_uploaded.inc_by(len as u64);
    debug!(%peer, request_id, "relayed chunk");
    Ok(())
}

/// The rest of a relayed chunk from `sent`, read from the store, when
/// its relay failed after sending `sent` bytes: only if the chunk is held
/// verified (`read_chunk` checks it again) and those bytes match it, so
/// the requester completes exactly the verified chunk.
async fn rest_from_store<S: ChunkStore>(
    inner: &Inner<S>,
    relay: &Relay,
    (blob, index): (Digest, u32),
    sent: usize,
) -> Option<Bytes> {
    if !inner.store.bitfield(&blob).is_some_and(|b| b.get(index)) {
        return None;
    }
    let bytes = inner.store.read_chunk(blob, index).await.ok()?;
    (bytes.len() == relay.len() && sent < bytes.len() && relay.copied_prefix_is(&bytes[..sent]))
        .then(|| bytes.slice(sent..))
}

/// The answer a refusal of the upload policy sends.
fn refused(refusal: Refusal) -> ChunkStatus {
    match refusal {
        Refusal::NotHave => ChunkStatus::NotHave,
        Refusal::Busy => ChunkStatus::Busy,
        Refusal::TryElsewhere => ChunkStatus::TryElsewhere,
    }
}

async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    request_id: u64,
    status: ChunkStatus,
) -> Result<(), FrameError> {
    let msg = StreamMessage::ChunkResponse(ChunkResponse { request_id, status });
    frame::write_message(w, &msg, &[]).await
}

/// Answers a request for a chunk we hold. To a requester that reads
/// pieces (`abortable` is its stream's cancelled requests) the chunk goes
/// as a `Relay` answer in pieces, and its `Cancel` stops it at the next
/// piece: an endgame duplicate whose answer had begun was otherwise sent
/// whole, a chunk per duplicate on a requester's link (20/10 Mbit/s,
/// N = 10: 0-3 per round, the rounds at 1.048-1.053x the bytes needed).
#[allow(clippy::too_many_arguments)]
async fn serve_chunk<S: ChunkStore, W: AsyncWrite + Unpin>(
    inner: &Inner<S>,
    peer: PeerId,
    uploads: &StreamUploads<'_>,
    w: &mut W,
    request_id: u64,
    (blob, index): (Digest, u32),
    abortable: Option<&std::sync::Mutex<HashSet<u64>>>,
) -> Result<(), FrameError> {
    // The layout suffices: a partial blob's verified chunks are served
    // while its later digests are still unknown.
    let Some(layout) = inner.store.layout(&blob) else {
        return respond(w, request_id, ChunkStatus::NotHave).await;
    };
    let Some(len) = layout.chunk_len(index) else {
        let message = wire::truncate_message(&format!("chunk {index} out of range"));
        return respond(w, request_id, ChunkStatus::Error { message }).await;
    };
    // An origin seed holds chunks it did not download from peers (a seed,
    // or a gateway while the blob still streams in from the registry): the
    // policy spares them (answers TryElsewhere for a chunk another peer
    // just got, so peers trade it) and lets a few requests wait for them,
    // as they have no other holder. The corrupt-uploads fault serves
    // everyone.
    let origin = !inner.corrupt_uploads && !lock(&inner.downloaded).contains(&blob);
    if origin {
        let connected = lock(&inner.connected);
        inner
            .uploads
            .sync_peers(connected.generation, |p| connected.peers.contains(p));
    }
    let ask = ChunkAsk {
        request: request_id,
        blob,
        index,
        len,
        origin,
    };
    let _slot = match uploads.ask(ask).await {
        Ok(slot) => slot,
        Err(refusal) => return respond(w, request_id, refused(refusal)).await,
    };
    let is_cancelled = || abortable.is_some_and(|set| lock(set).contains(&request_id));
    if is_cancelled() {
        // Cancelled while it waited for its slot: no answer (the requester
        // expects none or any).
        inner.metrics.cancelled_requests.inc();
        return Ok(());
    }
    let bytes = if inner.corrupt_uploads {
        Bytes::from(vec![0xA5u8; len as usize])
    } else {
        match inner.store.read_chunk(blob, index).await {
            Ok(b) => b,
            Err(e) => {
                debug!(%blob, index, error = %e, "cannot serve chunk");
                return respond(w, request_id, ChunkStatus::NotHave).await;
            }
        }
    };
    if abortable.is_some() {
        respond(
            w,
            request_id,
            ChunkStatus::Relay {
                len: bytes.len() as u64,
            },
        )
        .await?;
        let most = inner
            .bucket
            .as_ref()
            .map_or(UNPACED_STORED_PIECE, TokenBucket::piece);
        let mut piece_buf = Vec::with_capacity(4 + most);
        for part in bytes.chunks(most) {
            // Checked before each piece's tokens and write: what is still
            // unsent of a cancelled answer never enters the link.
            if is_cancelled() {
                w.write_all(&wire::RELAY_ABORT.to_be_bytes()).await?;
                inner.metrics.cancelled_requests.inc();
                debug!(%peer, %blob, index, request_id, "answer cancelled under way");
                inner.store.recycle_chunk(bytes);
                return Ok(());
            }
            if let Some(bucket) = &inner.bucket {
                bucket.take(part.len() as u64).await;
            }
            write_piece(w, &mut piece_buf, part).await?;
        }
        inner.metrics.chunks_uploaded.inc();
        inner.metrics.bytes_uploaded.inc_by(bytes.len() as u64);
        inner.store.recycle_chunk(bytes);
        debug!(%peer, %blob, index, "served chunk");
        return Ok(());
    }
    let head = StreamMessage::ChunkResponse(ChunkResponse {
        request_id,
        status: ChunkStatus::Ok {
            len: bytes.len() as u64,
        },
    });
    match &inner.bucket {
        None => frame::write_message(w, &head, &bytes).await?,
        Some(bucket) => {
            // Paced in small pieces, so the upload never sends a whole
            // chunk at line rate into the link's queue: a rate cap a little
            // below the link keeps that queue, and with it the latency of
            // every request and `Have` crossing it, short.
            frame::write_head(w, &head).await?;
            for piece in bytes.chunks(bucket.piece()) {
                bucket.take(piece.len() as u64).await;
                w.write_all(piece).await?;
            }
        }
    }
    inner.metrics.chunks_uploaded.inc();
    inner.metrics.bytes_uploaded.inc_by(bytes.len() as u64);
    inner.store.recycle_chunk(bytes);
    debug!(%peer, %blob, index, "served chunk");
    Ok(())
}

/// Piece size of an unpaced answer from the store: small enough that a
/// `Cancel` stops it within a piece once the link pushes back, large
/// enough that the 4-byte prefixes cost nothing (0.006 %).
const UNPACED_STORED_PIECE: usize = 64 << 10;

/// Writes one relay piece, its length prefix included, in one write: a
/// separate 4-byte write became a yamux frame and a packet of its own.
async fn write_piece<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &mut Vec<u8>,
    part: &[u8],
) -> Result<(), FrameError> {
    debug_assert!(!part.is_empty() && part.len() <= wire::MAX_RELAY_PIECE as usize);
    buf.clear();
    buf.extend_from_slice(&(part.len() as u32).to_be_bytes());
    buf.extend_from_slice(part);
    w.write_all(buf).await?;
    Ok(())
}
