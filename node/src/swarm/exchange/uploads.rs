//! The serving side's upload policy: the protocol crate's sans-IO
//! [`Uploader`] (the same state machine the simulator runs) behind a lock,
//! and the chunk streams waiting on its decisions.
//!
//! Every inbound chunk stream is one [`Requester`] (it answers in order);
//! a stream task asks [`StreamUploads::ask`] before it serves a chunk and
//! gets either an [`UploadSlot`] (released when dropped) or the refusal to
//! send. Decisions for other streams that an event produces (a slot freed,
//! a peer gone) go to those streams' waiting asks through oneshots.
//! Nothing here does I/O or waits while holding the lock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use edgeswarm_protocol::upload::{self, Action, Ask, Refusal, UploadConfig, Uploader};
use edgeswarm_protocol::Digest;
use libp2p::PeerId;
use tokio::sync::oneshot;

use super::lock;

/// One inbound chunk stream of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct StreamId {
    /// The requesting peer.
    peer: PeerId,
    /// Distinguishes the peer's streams (a counter over all streams).
    stream: u64,
}

impl upload::Requester for StreamId {
    type Peer = PeerId;
    fn peer(&self) -> PeerId {
        self.peer
    }
}

/// The uploader's answer to one ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Send,
    Refuse(Refusal),
}

struct State {
    uploader: Uploader<StreamId>,
    /// Asks waiting for a slot, by stream and request id.
    pending: HashMap<(StreamId, u64), oneshot::Sender<Decision>>,
    /// Streams opened so far (the next stream's number).
    streams: u64,
    /// The connected-peers generation last applied (see [`Uploads::sync_peers`]).
    peers_generation: u64,
}

impl State {
    /// Performs the uploader's actions: the one answering `mine` is
    /// returned, the others go to their waiting asks. A `Send` whose ask is
    /// gone (its stream ended meanwhile) frees its slot again at once.
    fn dispatch(&mut self, mine: Option<(StreamId, u64)>) -> Option<Decision> {
        let mut own = None;
        while let Some(action) = self.uploader.poll_action() {
            let (key, decision) = match action {
                Action::Send {
                    requester, request, ..
                } => ((requester, request), Decision::Send),
                Action::Reply {
                    requester,
                    request,
                    refusal,
                } => ((requester, request), Decision::Refuse(refusal)),
            };
            if Some(key) == mine {
                own = Some(decision);
                continue;
            }
            let delivered = self
                .pending
                .remove(&key)
                .is_some_and(|tx| tx.send(decision).is_ok());
            if !delivered && decision == Decision::Send {
                self.uploader.finished(&key.0, key.1);
            }
        }
        own
    }
}

/// The node's upload policy and the asks waiting on it.
pub(super) struct Uploads {
    state: Mutex<State>,
    /// The policy's configuration (also inside the uploader; kept here to
    /// be read without the lock).
    policy: UploadConfig,
    /// Time zero of the uploader's millisecond clock.
    epoch: Instant,
}

impl Uploads {
    pub(super) fn new(config: UploadConfig) -> Self {
        Uploads {
            policy: config.clone(),
            state: Mutex::new(State {
                uploader: Uploader::new(config),
                pending: HashMap::new(),
                streams: 0,
                peers_generation: 0,
            }),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The policy's configuration.
    pub(super) fn policy(&self) -> &UploadConfig {
        &self.policy
    }

    /// A new inbound stream of `peer`; closed when the handle drops.
    pub(super) fn open(&self, peer: PeerId) -> StreamUploads<'_> {
        let mut state = lock(&self.state);
        let id = StreamId {
            peer,
            stream: state.streams,
        };
        state.streams += 1;
        StreamUploads { uploads: self, id }
    }

    /// Whether this origin chunk was uploaded to some peer (super-seeding
    /// keeps an offered chunk with its assignee once fetched).
    pub(super) fn given(&self, blob: &Digest, index: u32) -> bool {
        lock(&self.state).uploader.given(blob, index)
    }

    /// Ends seed sparing towards peers no longer connected, once per change
    /// of the connected set (`generation` counts its changes).
    pub(super) fn sync_peers(&self, generation: u64, connected: impl Fn(&PeerId) -> bool) {
        let mut state = lock(&self.state);
        if state.peers_generation == generation {
            return;
        }
        state.peers_generation = generation;
        state.uploader.retain_peers(&connected);
        // Their asks are no longer waiting in the uploader: answer them
        // (Busy, on a stream about to close) rather than leave them hanging.
        state
            .pending
            .retain(|(stream, _), _| connected(&stream.peer));
        state.dispatch(None);
    }

    /// Uploads running and requests waiting for a slot.
    #[cfg(test)]
    fn load(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.uploader.active(), state.uploader.waiting())
    }
}

/// The upload policy's view of one inbound stream.
pub(super) struct StreamUploads<'a> {
    uploads: &'a Uploads,
    id: StreamId,
}

/// A chunk to ask the upload policy about.
pub(super) struct ChunkAsk {
    /// The requester's request id.
    pub(super) request: u64,
    /// The blob.
    pub(super) blob: Digest,
    /// The chunk index.
    pub(super) index: u32,
    /// The chunk's length.
    pub(super) len: u32,
    /// Held without downloading it from peers here (seed sparing applies).
    pub(super) origin: bool,
}

impl<'a> StreamUploads<'a> {
    /// Waits for the policy's answer: an upload slot, or the refusal to
    /// send instead. Dropping the future while it waits withdraws the ask.
    pub(super) async fn ask(&self, chunk: ChunkAsk) -> Result<UploadSlot<'a>, Refusal> {
        let key = (self.id, chunk.request);
        let now = self.uploads.now_ms();
        let rx = {
            let mut state = lock(&self.uploads.state);
            state.uploader.request(
                now,
                Ask {
                    requester: self.id,
                    request: chunk.request,
                    blob: chunk.blob,
                    index: chunk.index,
                    len: chunk.len,
                    held: true,
                    origin: chunk.origin,
                },
            );
            match state.dispatch(Some(key)) {
                Some(decision) => return self.slot(chunk.request, decision),
                None => {
                    let (tx, rx) = oneshot::channel();
                    state.pending.insert(key, tx);
                    rx
                }
            }
        };
        let mut waiting = WaitingAsk {
            uploads: self.uploads,
            key,
            rx,
            answered: false,
        };
        let decision = (&mut waiting.rx).await;
        waiting.answered = true;
        // The sender is dropped without a decision only when the stream's
        // requests were dropped (peer gone): nothing to send then.
        self.slot(
            chunk.request,
            decision.unwrap_or(Decision::Refuse(Refusal::Busy)),
        )
    }

    fn slot(&self, request: u64, decision: Decision) -> Result<UploadSlot<'a>, Refusal> {
        match decision {
            Decision::Send => Ok(UploadSlot {
                uploads: self.uploads,
                key: (self.id, request),
            }),
            Decision::Refuse(refusal) => Err(refusal),
        }
    }
}

impl Drop for StreamUploads<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.uploads.state);
        state.uploader.closed(&self.id);
        let id = self.id;
        state.pending.retain(|(stream, _), _| *stream != id);
        state.dispatch(None);
    }
}

/// An ask waiting for its decision; withdrawn if dropped before it came.
struct WaitingAsk<'a> {
    uploads: &'a Uploads,
    key: (StreamId, u64),
    rx: oneshot::Receiver<Decision>,
    /// The decision was received (the caller owns what it says).
    answered: bool,
}

impl Drop for WaitingAsk<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut state = lock(&self.uploads.state);
        if state.pending.remove(&self.key).is_some() {
            state.uploader.cancel(&self.key.0, self.key.1);
        } else if let Ok(Decision::Send) = self.rx.try_recv() {
            // Granted while this ask was being dropped: give the slot back.
            state.uploader.finished(&self.key.0, self.key.1);
            state.dispatch(None);
        }
    }
}

/// A running upload's slot; the next waiting ask gets it when this drops.
pub(super) struct UploadSlot<'a> {
    uploads: &'a Uploads,
    key: (StreamId, u64),
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.uploads.state);
        state.uploader.finished(&self.key.0, self.key.1);
        state.dispatch(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(slots: usize, queue: usize) -> UploadConfig {
        UploadConfig {
            slots,
            queue,
            origin_queue: 0,
            sparing_ms: Some(60_000),
            spare_retry_ms: None,
            spare_min_len: 0,
        }
    }

    fn chunk(request: u64, index: u32, origin: bool) -> ChunkAsk {
        ChunkAsk {
            request,
            blob: Digest::of(b"uploads test"),
            index,
            len: 512 << 10,
            origin,
        }
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiting_stream() {
        let uploads = Uploads::new(config(1, 1));
        let (a, b) = (PeerId::random(), PeerId::random());
        let sa = uploads.open(a);
        let sb = uploads.open(b);
        let slot = sa.ask(chunk(1, 0, false)).await.expect("a free slot");
        let waiting = sb.ask(chunk(1, 1, false));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "waits while the one slot is taken"
        );
        assert_eq!(uploads.load(), (1, 1));
        // A third stream finds slot and queue full.
        let sc = uploads.open(PeerId::random());
        assert_eq!(sc.ask(chunk(1, 2, false)).await.err(), Some(Refusal::Busy));
        drop(slot);
        let slot = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("granted once the slot freed")
            .expect("a slot");
        assert_eq!(uploads.load(), (1, 0));
        drop(slot);
        assert_eq!(uploads.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_dropped_wait_or_stream_leaves_no_slot_taken() {
        let uploads = Uploads::new(config(1, 4));
        let sa = uploads.open(PeerId::random());
        let sb = uploads.open(PeerId::random());
        let slot = sa.ask(chunk(1, 0, false)).await.expect("a free slot");
        {
            let waiting = sb.ask(chunk(1, 1, false));
            tokio::pin!(waiting);
            let _ = tokio::time::timeout(Duration::from_millis(20), &mut waiting).await;
            assert_eq!(uploads.load(), (1, 1));
        }
        assert_eq!(uploads.load(), (1, 0), "the dropped ask was withdrawn");
        drop(sa);
        drop(slot);
        assert_eq!(uploads.load(), (0, 0));
        // A stream dropped with an ask granted but never read.
        let sc = uploads.open(PeerId::random());
        let held = sb.ask(chunk(2, 1, false)).await.expect("a free slot");
        let mut waiting = Box::pin(sc.ask(chunk(1, 2, false)));
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut waiting).await;
        drop(held);
        assert_eq!(uploads.load(), (1, 0), "granted to the waiting ask");
        // The decision is in the channel now; dropping the ask returns it
        // (before its stream closes, which would free it too).
        drop(waiting);
        assert_eq!(uploads.load(), (0, 0));
        drop(sc);
    }

    #[tokio::test]
    async fn an_origin_chunk_given_to_a_connected_peer_is_spared_until_it_leaves() {
        let uploads = Uploads::new(config(4, 0));
        let (a, b) = (PeerId::random(), PeerId::random());
        let sa = uploads.open(a);
        let sb = uploads.open(b);
        drop(sa.ask(chunk(1, 7, true)).await.expect("first give"));
        assert!(uploads.given(&Digest::of(b"uploads test"), 7));
        assert_eq!(
            sb.ask(chunk(1, 7, true)).await.err(),
            Some(Refusal::TryElsewhere)
        );
        // A downloaded blob's chunk is never spared.
        assert!(sb.ask(chunk(2, 7, false)).await.is_ok());
        // The first peer disconnects: the chunk is given again.
        uploads.sync_peers(1, |p| *p != a);
        assert!(sb.ask(chunk(3, 7, true)).await.is_ok());
    }
}
