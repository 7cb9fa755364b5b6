//! The piece picker: which chunk to request from which peer, as pure,
//! deterministic logic.
//!
//! A node keeps one [`Picker`] for all blobs it is fetching. The swarm code
//! feeds it facts (blobs and what we hold of them, peers and their
//! bitfields, chunk arrivals, failures, the consume cursor of each blob)
//! and asks [`Picker::next_requests`] what to send; [`Picker::expire`]
//! reports requests that took too long so they can be sent elsewhere.
//! Time is passed in as milliseconds and ties are broken by a ChaCha
//! generator seeded from [`PickerConfig::seed`], so the same seed and the
//! same sequence of calls give the same requests: tests and simulations
//! are reproducible.
//!
//! ## Rules, in order
//!
//! 1. **Deadline window.** For each blob, the missing chunks in
//!    `cursor..cursor + window_chunks` (the cursor is how far decompression
//!    has read) are requested first, nearest first, so a layer's front
//!    arrives in order and extraction can start long before the layer is
//!    complete. Exception: a *contended* chunk (held by one peer only,
//!    while other known peers of the blob lack it) is left to rarest-first:
//!    otherwise every node of a fresh swarm asks the seed for the same
//!    front chunks and the seed uploads them many times over. In the
//!    20-node simulation (`tests/picker_sim.rs`) this keeps the seed's
//!    upload at 1.0-1.2 copies of the blob with any window size.
//! 2. **Rarest first.** Every other missing chunk is ordered by how many
//!    known peers hold it (fewest first, seeded random among equals): rare
//!    chunks get replicated before the peers holding them leave or get
//!    busy, and different nodes fetch different chunks, so they can trade.
//! 3. **Peer choice and load balance.** A chunk goes to the holder with the
//!    fewest of our requests in flight; among equals, the holder with the
//!    fewest chunks of the blob (a seed or gateway is kept for chunks only
//!    it has), then seeded random. A peer never has more than
//!    `max_in_flight_per_peer` of our requests. A peer that answered
//!    `Busy` gets nothing for `busy_backoff_ms`. A peer that failed or
//!    timed out on a chunk is not asked for that chunk again while another
//!    holder exists. A peer that answered `TryElsewhere` for a chunk is not
//!    asked for it for `busy_backoff_ms`, and for `spare_patience_ms`
//!    while another holder exists (an idle seed is otherwise everyone's
//!    least loaded holder, and serves a repeated request).
//! 4. **Endgame.** Only when a blob has at most `endgame_threshold` chunks
//!    missing and every missing chunk with a holder is already requested,
//!    in-flight chunks whose request is at least `endgame_min_age_ms` old
//!    are also requested from a second holder (at most
//!    `max_requests_per_chunk` requests per chunk); when one copy arrives
//!    [`Picker::chunk_received`] returns the others to cancel. An answer
//!    that has begun to arrive ([`Picker::answer_began`]) is duplicated
//!    only once it runs far slower than the node's arrival rate
//!    (`endgame_begun_chunk_times`).
//! 5. **Stalls.** A request outstanding longer than
//!    `timeout_base_ms + chunk_len * timeout_ms_per_mib / 1 MiB` since it
//!    was sent or since its peer last delivered a chunk
//!    ([`Picker::peer_progressed`]) is returned by [`Picker::expire`] and
//!    its chunk becomes requestable from another holder.
//!
//! Only chunks whose digests are known are requested
//! ([`Picker::set_known_digests`]): while the gateway is still streaming a
//! blob from the registry, its later chunks cannot be verified yet. The
//! known digests are a set, not a prefix: a node that missed some of the
//! gateway's digest updates (it was down, or the gateway was killed
//! before it gossiped them) still fetches every chunk after the gap whose
//! digest it has.
//!
//! ## Non-goals
//!
//! Reciprocity (nodes of a locality cooperate), upload scheduling (see
//! [`crate::upload`]: the serving side answers `Busy`), bandwidth
//! estimation (the caller sizes [`Picker::set_peer_limit`] and
//! [`Picker::set_total_limit`], e.g. with
//! [`crate::upload::pipeline_depth`]).

use std::collections::BTreeMap;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::address::Digest;
use crate::bitfield::Bitfield;
use crate::chunkmap::{chunk_count, ChunkSize};

/// Tuning of a [`Picker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickerConfig {
    /// Most of our requests outstanding at one peer: enough to keep a
    /// fast link busy while a response is in flight, few enough that a
    /// stalled peer holds up little.
    pub max_in_flight_per_peer: usize,
    /// How many chunks ahead of the consume cursor are fetched in order.
    pub window_chunks: u32,
    /// Endgame starts when a blob has at most this many chunks missing.
    pub endgame_threshold: u32,
    /// Most concurrent requests for one chunk during endgame.
    pub max_requests_per_chunk: usize,
    /// An in-flight chunk gets an endgame duplicate only once its request
    /// is this old: a duplicate of a request that is merely queued behind
    /// a few others at a busy holder moves the chunk twice. 0 duplicates
    /// at once.
    pub endgame_min_age_ms: u64,
    /// An in-flight chunk whose answer has begun to arrive
    /// ([`Picker::answer_began`]) gets an endgame duplicate only once that
    /// answer has run for this many times the time one chunk takes at the
    /// observed arrival rate ([`Picker::set_observed_rate`]; at least
    /// `endgame_min_age_ms`, and just that while no rate is known). An
    /// answer under way that is merely sharing its sender's uplink with
    /// other requesters is on time; a duplicate of it moves most of a
    /// chunk twice, as the first copy is nearly there. Measured at 20/10
    /// Mbit/s, N = 10 (testnet, 512 KiB chunks): answers near the end of a
    /// download streamed for 0.7-2.3 s where one chunk takes 0.45 s at the
    /// node's rate, and duplicating them cost 0.3-0.7 % of the locality's
    /// bytes, most of it never counted as a duplicate (the answers were
    /// still on the wire when the blob completed).
    pub endgame_begun_chunk_times: u64,
    /// Seed of the tie-breaking generator.
    pub seed: u64,
    /// Fixed part of a request's timeout.
    pub timeout_base_ms: u64,
    /// Timeout added per MiB of chunk (the slowest acceptable rate is
    /// 1 MiB per this many milliseconds).
    pub timeout_ms_per_mib: u64,
    /// How long a peer that answered `Busy` is left alone.
    pub busy_backoff_ms: u64,
    /// How long a peer that answered `TryElsewhere` for a chunk (an origin
    /// seed sparing its uplink) is not asked for that chunk again while
    /// another holder of it exists (before `busy_backoff_ms` only when it
    /// is the only holder). The seed serves a requester that asks again a
    /// few seconds after its refusal, taking the repeat for a sign that it
    /// has no usable holder; without this patience a requester asked again
    /// as soon as the seed was its least loaded holder (an idle gateway
    /// after its pull), and the gateway uploaded spared chunks a second
    /// time: 7.6-9.8 % of the image at 20/10 Mbit/s and N = 10 (testnet),
    /// while the other holders had them queued for about 7.5 s. With 15 s
    /// (not swept): 0.0 and 0.1 % in an interleaved pair, 4.5 % in a third
    /// run (testnet/results/issue11-patience-2026-12-01).
    pub spare_patience_ms: u64,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            max_in_flight_per_peer: 4,
            window_chunks: 8,
            endgame_threshold: 4,
            max_requests_per_chunk: 2,
            endgame_min_age_ms: 0,
            endgame_begun_chunk_times: 8,
            seed: 0,
            timeout_base_ms: 5_000,
            timeout_ms_per_mib: 4_000,
            busy_backoff_ms: 250,
            spare_patience_ms: 15_000,
        }
    }
}

/// Why the picker refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickerError {
    /// The blob was never added.
    #[error("blob {0} is not being fetched")]
    UnknownBlob(Digest),
    /// A bitfield's length differs from the blob's chunk count.
    #[error("bitfield for {blob} covers {found} chunks, the blob has {expected}")]
    LengthMismatch {
        /// The blob.
        blob: Digest,
        /// The blob's chunk count.
        expected: u32,
        /// The bitfield's length.
        found: u32,
    },
    /// A chunk index is past the end of the blob.
    #[error("chunk {index} of {blob} is out of range ({count} chunks)")]
    IndexOutOfRange {
        /// The blob.
        blob: Digest,
        /// The index.
        index: u32,
        /// The blob's chunk count.
        count: u32,
    },
}

/// Why a request is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// In the deadline window ahead of the cursor.
    Window,
    /// Rarest-first.
    Rarest,
    /// A duplicate of an in-flight request, near the end of a blob.
    Endgame,
}

/// A chunk request to send (or, from [`Picker::expire`] and
/// [`Picker::chunk_received`], one that is no longer tracked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<P> {
    /// Who to ask.
    pub peer: P,
    /// The blob.
    pub blob: Digest,
    /// The chunk index.
    pub index: u32,
    /// Why it was chosen.
    pub kind: RequestKind,
}

/// How a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The peer does not hold the chunk: its bit is cleared.
    NotHave,
    /// The peer is at its upload limit: it is left alone for a while.
    Busy,
    /// Anything else (bad data, stream error): the peer is not asked for
    /// this chunk again while another holder exists.
    Error,
    /// The peer (an origin seed sparing its uplink) gave this chunk to
    /// someone else moments ago: it is not asked for this chunk for
    /// `busy_backoff_ms`, even when it is the only holder known, since the
    /// peer it went to will announce it soon. Mapped to `Error` instead,
    /// a lone holder is asked again at once, and answers again at once:
    /// in the simulator that ping-pong was most of a 1,000-node swarm's
    /// requests.
    TryElsewhere,
}

/// One outstanding request.
#[derive(Debug, Clone)]
struct InFlight<P> {
    peer: P,
    started_ms: u64,
    /// When the answer's first bytes arrived, if they did.
    began_ms: Option<u64>,
    kind: RequestKind,
}

/// What we know of a blob being fetched.
#[derive(Debug, Clone)]
struct BlobState<P> {
    blob_size: u64,
    chunk_size: ChunkSize,
    count: u32,
    have: Bitfield,
    missing: u32,
    cursor: u32,
    /// Chunks whose digests are known (and so may be requested).
    known: Bitfield,
    /// Number of known peers holding each chunk.
    availability: Vec<u32>,
    in_flight: BTreeMap<u32, Vec<InFlight<P>>>,
    /// Chunks whose bytes arrived (from this peer) and are being verified
    /// and written ([`Picker::chunk_arrived`]): asked of nobody, and no
    /// longer in the peer's pipeline.
    landing: BTreeMap<u32, P>,
    /// Peers that failed or timed out on a chunk.
    excluded: BTreeMap<u32, Vec<P>>,
    /// Peers that sent us elsewhere for a chunk.
    spared: BTreeMap<u32, Vec<Spared<P>>>,
}

/// A peer that answered `TryElsewhere` for a chunk.
#[derive(Debug, Clone)]
struct Spared<P> {
    peer: P,
    /// Its first refusal of the chunk.
    since_ms: u64,
    /// Not asked for the chunk before this, even as its only holder.
    until_ms: u64,
}

impl<P> Spared<P> {
    /// Whether the peer may be asked for the chunk again, given whether
    /// another holder is there to ask instead.
    fn askable(&self, now_ms: u64, others_exist: bool, patience_ms: u64) -> bool {
        self.until_ms <= now_ms
            && (!others_exist || now_ms.saturating_sub(self.since_ms) >= patience_ms)
    }

    /// Whether the entry still holds anything back.
    fn live(&self, now_ms: u64, patience_ms: u64) -> bool {
        self.until_ms > now_ms || now_ms.saturating_sub(self.since_ms) < patience_ms
    }
}

impl<P> BlobState<P> {
    /// Whether chunk `index` is asked of a peer or landing: not to be
    /// requested (again) now.
    fn pending(&self, index: u32) -> bool {
        self.in_flight.contains_key(&index) || self.landing.contains_key(&index)
    }

    fn chunk_len(&self, index: u32) -> u64 {
        let start = index as u64 * self.chunk_size.get() as u64;
        (self.blob_size - start).min(self.chunk_size.get() as u64)
    }
}

/// What we know of a peer.
#[derive(Debug, Clone, Default)]
struct PeerState {
    /// Its bitfield per blob, with the number of bits set.
    blobs: BTreeMap<Digest, (Bitfield, u32)>,
    in_flight: usize,
    blocked_until_ms: u64,
    /// Per-peer pipelining depth, if set (else the config's).
    limit: Option<usize>,
}

impl PeerState {
    fn open(&self, max: usize, now_ms: u64) -> bool {
        self.in_flight < self.limit.unwrap_or(max) && self.blocked_until_ms <= now_ms
    }
}

/// The piece picker. `P` identifies a peer (a libp2p `PeerId` in the node,
/// an integer in simulations); it must be `Ord` so iteration order, and so
/// every decision, is deterministic.
#[derive(Debug, Clone)]
pub struct Picker<P: Ord + Clone> {
    config: PickerConfig,
    rng: ChaCha8Rng,
    /// Most requests outstanding over all peers, if set.
    total_limit: Option<usize>,
    /// The rate our chunks arrive at, bytes per second, if the caller
    /// measured it (see [`Picker::set_observed_rate`]).
    observed_rate: Option<u64>,
    blobs: BTreeMap<Digest, BlobState<P>>,
    peers: BTreeMap<P, PeerState>,
}

impl<P: Ord + Clone> Picker<P> {
    /// An empty picker.
    pub fn new(config: PickerConfig) -> Self {
        Picker {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            total_limit: None,
            observed_rate: None,
            config,
            blobs: BTreeMap::new(),
            peers: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PickerConfig {
        &self.config
    }

    /// Starts fetching a blob, of which we already hold `have` (its length
    /// must be the chunk count). All digests are assumed known; see
    /// [`set_known_digests`](Self::set_known_digests). Re-adding a blob
    /// replaces its local state.
    pub fn add_blob(
        &mut self,
        blob: Digest,
        blob_size: u64,
        chunk_size: ChunkSize,
        have: Bitfield,
    ) -> Result<(), PickerError> {
        let count = chunk_count(blob_size, chunk_size).min(u32::MAX as u64) as u32;
        if have.len() != count {
            return Err(PickerError::LengthMismatch {
                blob,
                expected: count,
                found: have.len(),
            });
        }
        self.remove_blob(&blob);
        let mut availability = vec![0u32; count as usize];
        for peer in self.peers.values_mut() {
            match peer.blobs.get(&blob) {
                Some((bits, _)) if bits.len() == count => {
                    for i in bits.iter_ones() {
                        availability[i as usize] += 1;
                    }
                }
                Some(_) => {
                    peer.blobs.remove(&blob);
                }
                None => {}
            }
        }
        let missing = count - have.count_ones();
        self.blobs.insert(
            blob,
            BlobState {
                blob_size,
                chunk_size,
                count,
                have,
                missing,
                cursor: 0,
                known: Bitfield::full(count),
                availability,
                in_flight: BTreeMap::new(),
                landing: BTreeMap::new(),
                excluded: BTreeMap::new(),
                spared: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Stops fetching a blob (complete, or abandoned). Returns its
    /// outstanding requests so the caller can cancel them.
    pub fn remove_blob(&mut self, blob: &Digest) -> Vec<Request<P>> {
        let Some(state) = self.blobs.remove(blob) else {
            return Vec::new();
        };
        let mut dropped = Vec::new();
        for (index, flights) in state.in_flight {
            for f in flights {
                if let Some(p) = self.peers.get_mut(&f.peer) {
                    p.in_flight -= 1;
                }
                dropped.push(Request {
                    peer: f.peer,
                    blob: *blob,
                    index,
                    kind: f.kind,
                });
            }
        }
        dropped
    }

    /// Only chunks `0..count` have known digests and may be requested (a
    /// gateway's digests arrive in chunk order).
    pub fn set_digests_known(&mut self, blob: &Digest, count: u32) -> Result<(), PickerError> {
        let state = self.blob_mut(blob)?;
        state.known = Bitfield::prefix(state.count, count);
        Ok(())
    }

    /// Only the chunks set in `known` have known digests and may be
    /// requested (its length must be the chunk count).
    pub fn set_known_digests(
        &mut self,
        blob: &Digest,
        known: &Bitfield,
    ) -> Result<(), PickerError> {
        let state = self.blob_mut(blob)?;
        if known.len() != state.count {
            return Err(PickerError::LengthMismatch {
                blob: *blob,
                expected: state.count,
                found: known.len(),
            });
        }
        if state.known != *known {
            state.known.clone_from(known);
        }
        Ok(())
    }

    /// The consumer has read every chunk before `index`; the deadline
    /// window starts there.
    pub fn set_cursor(&mut self, blob: &Digest, index: u32) -> Result<(), PickerError> {
        let state = self.blob_mut(blob)?;
        state.cursor = index.min(state.count);
        Ok(())
    }

    /// Registers a peer (idempotent).
    pub fn add_peer(&mut self, peer: P) {
        self.peers.entry(peer).or_default();
    }

    /// Sets how many of our requests may be outstanding at `peer` (its
    /// pipelining depth, e.g. from [`crate::upload::pipeline_depth`]),
    /// overriding [`PickerConfig::max_in_flight_per_peer`]; `None` restores
    /// the default. Requests already outstanding stay.
    pub fn set_peer_limit(&mut self, peer: &P, limit: Option<usize>) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.limit = limit.map(|l| l.max(1));
        }
    }

    /// Forgets a peer (disconnected). Returns its outstanding requests:
    /// their chunks are requestable elsewhere at once.
    pub fn remove_peer(&mut self, peer: &P) -> Vec<Request<P>> {
        let Some(state) = self.peers.remove(peer) else {
            return Vec::new();
        };
        let mut dropped = Vec::new();
        for (blob, (bits, _)) in &state.blobs {
            if let Some(b) = self.blobs.get_mut(blob) {
                if bits.len() == b.count {
                    for i in bits.iter_ones() {
                        b.availability[i as usize] -= 1;
                    }
                }
            }
        }
        for (blob, b) in self.blobs.iter_mut() {
            for (index, flights) in b.in_flight.iter_mut() {
                flights.retain(|f| {
                    if &f.peer == peer {
                        dropped.push(Request {
                            peer: f.peer.clone(),
                            blob: *blob,
                            index: *index,
                            kind: f.kind,
                        });
                        false
                    } else {
                        true
                    }
                });
            }
            b.in_flight.retain(|_, f| !f.is_empty());
            for spared in b.spared.values_mut() {
                spared.retain(|s| &s.peer != peer);
            }
            for excluded in b.excluded.values_mut() {
                excluded.retain(|p| p != peer);
            }
        }
        dropped
    }

    /// Sets a peer's whole bitfield for a blob (registering the peer if
    /// new). For a blob not added yet the bitfield is kept and used once
    /// the blob is added (if its length matches).
    pub fn peer_bitfield(
        &mut self,
        peer: &P,
        blob: &Digest,
        bitfield: Bitfield,
    ) -> Result<(), PickerError> {
        if let Some(b) = self.blobs.get(blob) {
            if bitfield.len() != b.count {
                return Err(PickerError::LengthMismatch {
                    blob: *blob,
                    expected: b.count,
                    found: bitfield.len(),
                });
            }
        }
        let state = self.peers.entry(peer.clone()).or_default();
        let ones = bitfield.count_ones();
        let old = state.blobs.insert(*blob, (bitfield, ones));
        if let Some(b) = self.blobs.get_mut(blob) {
            let new = &state.blobs[blob].0;
            for i in 0..b.count {
                let was = old.as_ref().is_some_and(|(o, _)| o.get(i));
                let is = new.get(i);
                if was != is {
                    if is {
                        b.availability[i as usize] += 1;
                    } else {
                        b.availability[i as usize] -= 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The peer holds every chunk of a blob we fetch.
    pub fn peer_has_all(&mut self, peer: &P, blob: &Digest) -> Result<(), PickerError> {
        let count = self.blob(blob)?.count;
        self.peer_bitfield(peer, blob, Bitfield::full(count))
    }

    /// The peer verified one more chunk of a blob we fetch.
    pub fn peer_has(&mut self, peer: &P, blob: &Digest, index: u32) -> Result<(), PickerError> {
        let count = self.blob(blob)?.count;
        if index >= count {
            return Err(PickerError::IndexOutOfRange {
                blob: *blob,
                index,
                count,
            });
        }
        let state = self.peers.entry(peer.clone()).or_default();
        let (bits, ones) = state
            .blobs
            .entry(*blob)
            .or_insert_with(|| (Bitfield::new(count), 0));
        if bits.set(index) {
            *ones += 1;
            self.blobs
                .get_mut(blob)
                .expect("checked above")
                .availability[index as usize] += 1;
        }
        Ok(())
    }

    /// `peer` delivered a chunk at `now_ms`: its other outstanding requests
    /// are timed from now. A peer serves one requester's requests in order
    /// while sharing its uplink with other requesters, so on a slow link the
    /// last of several pipelined requests can take longer than one
    /// request's timeout while the peer makes steady progress; a stall is a
    /// peer that delivers nothing for a timeout, not a long queue.
    pub fn peer_progressed(&mut self, peer: &P, now_ms: u64) {
        for state in self.blobs.values_mut() {
            for flights in state.in_flight.values_mut() {
                for f in flights.iter_mut().filter(|f| &f.peer == peer) {
                    f.started_ms = f.started_ms.max(now_ms);
                }
            }
        }
    }

    /// A chunk was verified and stored (from `from`, or from elsewhere such
    /// as the registry). Returns the other outstanding requests for it,
    /// which the caller may cancel.
    pub fn chunk_received(
        &mut self,
        blob: &Digest,
        index: u32,
        from: Option<&P>,
    ) -> Result<Vec<Request<P>>, PickerError> {
        let state = chunk_state(&mut self.blobs, blob, index)?;
        if state.have.set(index) {
            state.missing -= 1;
        }
        state.landing.remove(&index);
        state.excluded.remove(&index);
        state.spared.remove(&index);
        let mut others = Vec::new();
        for f in state.in_flight.remove(&index).unwrap_or_default() {
            if let Some(p) = self.peers.get_mut(&f.peer) {
                p.in_flight -= 1;
            }
            if from != Some(&f.peer) {
                others.push(Request {
                    peer: f.peer,
                    blob: *blob,
                    index,
                    kind: f.kind,
                });
            }
        }
        Ok(others)
    }

    /// The bytes of chunk `index` arrived from `peer` and are being
    /// verified and written. The request leaves `peer`'s pipeline, so its
    /// next request is on the wire while the store works (a request freed
    /// only once the chunk was durable left a peer's uplink idle for every
    /// write's `fdatasync`: on the testnet, with the disk shared, pairs of
    /// chunks came 250 ms to 1.3 s apart on a 100 Mbit/s link). The chunk
    /// is asked of nobody meanwhile; [`chunk_received`](Self::chunk_received)
    /// ends the landing, and [`request_failed`](Self::request_failed) from
    /// the same peer makes it requestable again. Other requests for it stay
    /// outstanding until then (the bytes may yet fail verification).
    pub fn chunk_arrived(
        &mut self,
        blob: &Digest,
        index: u32,
        peer: &P,
    ) -> Result<(), PickerError> {
        let state = chunk_state(&mut self.blobs, blob, index)?;
        if state.have.get(index) {
            return Ok(());
        }
        if let Some(flights) = state.in_flight.get_mut(&index) {
            let before = flights.len();
            flights.retain(|f| &f.peer != peer);
            if flights.len() < before {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.in_flight -= 1;
                }
            }
            if flights.is_empty() {
                state.in_flight.remove(&index);
            }
        }
        state.landing.insert(index, peer.clone());
        Ok(())
    }

    /// A chunk we held turned out corrupt and was dropped: fetch it again.
    pub fn chunk_lost(&mut self, blob: &Digest, index: u32) -> Result<(), PickerError> {
        let state = self.blob_mut(blob)?;
        if index < state.count && state.have.get(index) {
            state.have.clear(index);
            state.missing += 1;
        }
        Ok(())
    }

    /// A request failed; its chunk becomes requestable again.
    pub fn request_failed(
        &mut self,
        peer: &P,
        blob: &Digest,
        index: u32,
        reason: FailReason,
        now_ms: u64,
    ) {
        let Some(state) = self.blobs.get_mut(blob) else {
            return;
        };
        let patience = self.config.spare_patience_ms;
        if let Some(spared) = state.spared.get_mut(&index) {
            spared.retain(|s| s.live(now_ms, patience));
        }
        // Its bytes landed and then failed (corrupt, or the store refused
        // them): requestable again, from another holder first.
        if state.landing.get(&index) == Some(peer) {
            state.landing.remove(&index);
        }
        let mut removed = false;
        if let Some(flights) = state.in_flight.get_mut(&index) {
            let before = flights.len();
            flights.retain(|f| &f.peer != peer);
            removed = flights.len() < before;
            if flights.is_empty() {
                state.in_flight.remove(&index);
            }
        }
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if removed {
            p.in_flight -= 1;
        }
        match reason {
            FailReason::NotHave => {
                if let Some((bits, ones)) = p.blobs.get_mut(blob) {
                    if bits.get(index) {
                        bits.clear(index);
                        *ones -= 1;
                        state.availability[index as usize] -= 1;
                    }
                }
            }
            FailReason::Busy => {
                p.blocked_until_ms = now_ms.saturating_add(self.config.busy_backoff_ms);
            }
            FailReason::TryElsewhere => {
                let until_ms = now_ms.saturating_add(self.config.busy_backoff_ms);
                let spared = state.spared.entry(index).or_default();
                match spared.iter_mut().find(|s| &s.peer == peer) {
                    Some(s) => s.until_ms = until_ms,
                    None => spared.push(Spared {
                        peer: peer.clone(),
                        since_ms: now_ms,
                        until_ms,
                    }),
                }
            }
            FailReason::Error => {
                let excluded = state.excluded.entry(index).or_default();
                if !excluded.contains(peer) {
                    excluded.push(peer.clone());
                }
            }
        }
    }

    /// Removes and returns the requests outstanding for longer than their
    /// timeout (see the module docs); the peer is not asked for that chunk
    /// again while another holder exists.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Request<P>> {
        let mut expired = Vec::new();
        for (blob, state) in self.blobs.iter_mut() {
            let mut emptied = Vec::new();
            for (&index, flights) in state.in_flight.iter_mut() {
                let chunk_len = {
                    let start = index as u64 * state.chunk_size.get() as u64;
                    (state.blob_size - start).min(state.chunk_size.get() as u64)
                };
                let timeout = self.config.timeout_base_ms
                    + chunk_len.saturating_mul(self.config.timeout_ms_per_mib) / (1 << 20);
                flights.retain(|f| {
                    if now_ms.saturating_sub(f.started_ms) >= timeout {
                        expired.push(Request {
                            peer: f.peer.clone(),
                            blob: *blob,
                            index,
                            kind: f.kind,
                        });
                        false
                    } else {
                        true
                    }
                });
                if flights.is_empty() {
                    emptied.push(index);
                }
            }
            for index in emptied {
                state.in_flight.remove(&index);
            }
        }
        for r in &expired {
            if let Some(p) = self.peers.get_mut(&r.peer) {
                p.in_flight -= 1;
            }
            let excluded = self
                .blobs
                .get_mut(&r.blob)
                .expect("expired from this blob")
                .excluded
                .entry(r.index)
                .or_default();
            if !excluded.contains(&r.peer) {
                excluded.push(r.peer.clone());
            }
        }
        expired
    }

    /// Chooses the requests to send now and records them as in flight.
    pub fn next_requests(&mut self, now_ms: u64) -> Vec<Request<P>> {
        let mut out = Vec::new();
        if !self.any_capacity(now_ms) {
            return out;
        }

        // Candidates are limited to chunks some peer with spare capacity
        // holds: the others cannot be assigned now anyway, and skipping
        // them keeps a call cheap when most peers are saturated.
        let max = self.config.max_in_flight_per_peer;
        let open: Vec<&PeerState> = self
            .peers
            .values()
            .filter(|p| p.open(max, now_ms))
            .collect();
        // The open peers' bitfields of one blob, looked up once per blob
        // rather than once per chunk (a 10,000-node simulation spent most
        // of its time comparing digests here).
        let open_bits = |blob: &Digest| -> Vec<&Bitfield> {
            open.iter()
                .filter_map(|p| p.blobs.get(blob).map(|(b, _)| b))
                .collect()
        };
        let holds = |bits: &[&Bitfield], index: u32| bits.iter().any(|b| b.get(index));

        // A chunk is contended when only one peer holds it and other known
        // peers lack it: they are fetching it too, probably from that same
        // holder. Contended chunks are left to rarest-first even inside the
        // window, so that nodes spread over a seed's chunks instead of all
        // asking it for the same front (and then trade among themselves).
        let peers_with = |blob: &Digest| {
            self.peers
                .values()
                .filter(|p| p.blobs.contains_key(blob))
                .count() as u32
        };
        let contended = |s: &BlobState<P>, peers_with: u32, index: u32| {
            let avail = s.availability[index as usize];
            avail < 2 && peers_with > avail
        };

        // 1. Deadline window, nearest to the cursor first.
        // Per blob, computed once for both passes below.
        let per_blob: Vec<(u32, Vec<&Bitfield>)> = self
            .blobs
            .keys()
            .map(|blob| (peers_with(blob), open_bits(blob)))
            .collect();
        let mut window = Vec::new();
        for ((blob, s), (with, bits)) in self.blobs.iter().zip(&per_blob) {
            let with = *with;
            let end = s
                .cursor
                .saturating_add(self.config.window_chunks)
                .min(s.count);
            for index in s.cursor..end {
                if !s.known.get(index) {
                    continue;
                }
                let scarce = contended(s, with, index);
                if !s.have.get(index) && !scarce && !s.pending(index) && holds(bits, index) {
                    window.push((index - s.cursor, self.rng.next_u64(), *blob, index));
                }
            }
        }
        let mut rarest = Vec::new();
        for ((blob, s), (with, bits)) in self.blobs.iter().zip(&per_blob) {
            let with = *with;
            let window_end = s.cursor.saturating_add(self.config.window_chunks);
            if bits.is_empty() {
                continue;
            }
            for index in s.have.iter_zeros() {
                if !s.known.get(index) {
                    continue;
                }
                let in_window =
                    (s.cursor..window_end).contains(&index) && !contended(s, with, index);
                let avail = s.availability[index as usize];
                if avail > 0 && !in_window && !s.pending(index) && holds(bits, index) {
                    rarest.push((avail, self.rng.next_u64(), *blob, index));
                }
            }
        }
        drop(per_blob);
        drop(open);
        window.sort_unstable();
        for (_, _, blob, index) in window {
            self.assign(blob, index, RequestKind::Window, now_ms, &mut out);
        }

        // 2. Rarest first (window chunks that found no peer above stay for
        //    the next call: they have no open holder now).
        if self.any_capacity(now_ms) {
            rarest.sort_unstable();
            for (_, _, blob, index) in rarest {
                if !self.any_capacity(now_ms) {
                    break;
                }
                self.assign(blob, index, RequestKind::Rarest, now_ms, &mut out);
            }
        }

        // 3. Endgame: duplicates for blobs that are nearly done and have no
        //    other work.
        if self.any_capacity(now_ms) {
            let mut dup = Vec::new();
            let min_age = self.endgame_age_ms();
            for (blob, s) in &self.blobs {
                if s.missing == 0 || s.missing > self.config.endgame_threshold {
                    continue;
                }
                let other_work = s
                    .have
                    .iter_zeros()
                    .any(|i| s.known.get(i) && s.availability[i as usize] > 0 && !s.pending(i));
                if other_work {
                    continue;
                }
                for (&index, flights) in &s.in_flight {
                    let oldest = flights.iter().map(|f| f.started_ms).min().unwrap_or(now_ms);
                    if now_ms.saturating_sub(oldest) < min_age {
                        continue;
                    }
                    let streaming = flights.iter().filter_map(|f| f.began_ms).min();
                    if streaming.is_some_and(|b| {
                        now_ms.saturating_sub(b) < self.begun_age_ms(s.chunk_len(index))
                    }) {
                        continue;
                    }
                    if flights.len() < self.config.max_requests_per_chunk {
                        dup.push((flights.len(), self.rng.next_u64(), *blob, index));
                    }
                }
            }
            dup.sort_unstable();
            for (_, _, blob, index) in dup {
                self.assign(blob, index, RequestKind::Endgame, now_ms, &mut out);
            }
        }
        out
    }

    /// Picks a peer for one chunk and records the request.
    fn assign(
        &mut self,
        blob: Digest,
        index: u32,
        kind: RequestKind,
        now_ms: u64,
        out: &mut Vec<Request<P>>,
    ) {
        if self.total_full() {
            return;
        }
        let max = self.config.max_in_flight_per_peer;
        let state = &self.blobs[&blob];
        let no_flights = Vec::new();
        let flights = state.in_flight.get(&index).unwrap_or(&no_flights);
        let no_excluded = Vec::new();
        let excluded = state.excluded.get(&index).unwrap_or(&no_excluded);
        let holds = |p: &PeerState| p.blobs.get(&blob).is_some_and(|(b, _)| b.get(index));
        // Excluded peers only when no other holder exists at all.
        let others_exist = self
            .peers
            .iter()
            .any(|(id, p)| holds(p) && !excluded.contains(id));
        let no_spared = Vec::new();
        let spared = state.spared.get(&index).unwrap_or(&no_spared);
        let is_spared = |id: &P| spared.iter().find(|s| &s.peer == id);
        // A seed that spared us this chunk waits its patience while
        // another holder can be asked instead.
        let unspared_others_exist = self
            .peers
            .iter()
            .any(|(id, p)| holds(p) && !excluded.contains(id) && is_spared(id).is_none());
        let patience = self.config.spare_patience_ms;
        let mut best: Option<((usize, u32, u64), &P)> = None;
        for (id, p) in &self.peers {
            if !holds(p)
                || !p.open(max, now_ms)
                || flights.iter().any(|f| &f.peer == id)
                || (others_exist && excluded.contains(id))
                || is_spared(id)
                    .is_some_and(|s| !s.askable(now_ms, unspared_others_exist, patience))
            {
                continue;
            }
            let key = (p.in_flight, p.blobs[&blob].1, self.rng.next_u64());
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, id));
            }
        }
        let Some((_, peer)) = best else {
            return;
        };
        let peer = peer.clone();
        self.peers.get_mut(&peer).expect("chosen above").in_flight += 1;
        self.blobs
            .get_mut(&blob)
            .expect("exists")
            .in_flight
            .entry(index)
            .or_default()
            .push(InFlight {
                peer: peer.clone(),
                started_ms: now_ms,
                began_ms: None,
                kind,
            });
        out.push(Request {
            peer,
            blob,
            index,
            kind,
        });
    }

    fn any_capacity(&self, now_ms: u64) -> bool {
        if self.total_full() {
            return false;
        }
        let max = self.config.max_in_flight_per_peer;
        self.peers.values().any(|p| p.open(max, now_ms))
    }

    fn total_full(&self) -> bool {
        self.total_limit
            .is_some_and(|l| self.peers.values().map(|p| p.in_flight).sum::<usize>() >= l)
    }

    /// Caps our requests outstanding over all peers (`None`: only the
    /// per-peer limits apply). Sized to our own downlink's
    /// bandwidth-delay product ([`crate::upload::pipeline_depth`]), it
    /// keeps requests from waiting in the queues of busy holders while
    /// other holders idle: the next request goes out when a chunk lands,
    /// to whichever holder is free then.
    pub fn set_total_limit(&mut self, limit: Option<usize>) {
        self.total_limit = limit.map(|l| l.max(1));
    }

    fn blob(&self, blob: &Digest) -> Result<&BlobState<P>, PickerError> {
        self.blobs.get(blob).ok_or(PickerError::UnknownBlob(*blob))
    }

    fn blob_mut(&mut self, blob: &Digest) -> Result<&mut BlobState<P>, PickerError> {
        self.blobs
            .get_mut(blob)
            .ok_or(PickerError::UnknownBlob(*blob))
    }

    /// Tells the picker how fast our chunks arrive (bytes per second, over
    /// all peers), so that endgame judges a request late against the time
    /// the requests outstanding take at that rate, and not only against
    /// `endgame_min_age_ms`: on a 10 Mbit/s link a 512 KiB chunk queued
    /// behind three others takes 1.7 s, and a fixed 750 ms made endgame
    /// duplicate requests that were on time (up to 1.4 MB of a 49 MB
    /// layer received twice per node).
    pub fn set_observed_rate(&mut self, bytes_per_second: Option<u64>) {
        self.observed_rate = bytes_per_second.filter(|r| *r > 0);
    }

    /// The first bytes of the answer to our request for chunk `index`
    /// from `peer` arrived at `now_ms`: while it keeps arriving, endgame
    /// leaves it alone for longer (see
    /// [`PickerConfig::endgame_begun_chunk_times`]). Unknown requests are
    /// ignored (the answer to a cancelled request, or to one given up).
    pub fn answer_began(&mut self, blob: &Digest, index: u32, peer: &P, now_ms: u64) {
        let Some(flights) = self
            .blobs
            .get_mut(blob)
            .and_then(|s| s.in_flight.get_mut(&index))
        else {
            return;
        };
        for f in flights.iter_mut().filter(|f| &f.peer == peer) {
            f.began_ms.get_or_insert(now_ms);
        }
    }

    /// How long an answer under way for a chunk of `len` bytes must have
    /// run before endgame duplicates it.
    fn begun_age_ms(&self, len: u64) -> u64 {
        let floor = self.config.endgame_min_age_ms;
        match self.observed_rate {
            Some(rate) => floor.max(
                len.saturating_mul(1000)
                    .saturating_mul(self.config.endgame_begun_chunk_times)
                    / rate,
            ),
            None => floor,
        }
    }

    /// How old an in-flight request must be before endgame duplicates it.
    fn endgame_age_ms(&self) -> u64 {
        let floor = self.config.endgame_min_age_ms;
        let Some(rate) = self.observed_rate else {
            return floor;
        };
        let outstanding: u64 = self
            .blobs
            .values()
            .map(|s| {
                s.in_flight
                    .iter()
                    .map(|(i, f)| s.chunk_len(*i) * f.len() as u64)
                    .sum::<u64>()
            })
            .sum();
        // Everything outstanding arrives in outstanding / rate at the
        // current rate; half as long again is late.
        let drain_ms = outstanding.saturating_mul(1500) / rate;
        floor.max(drain_ms)
    }

    /// Our requests outstanding at `peer`.
    pub fn in_flight(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |p| p.in_flight)
    }

    /// All outstanding requests, in (blob, index) order.
    pub fn outstanding(&self) -> Vec<Request<P>> {
        let mut all = Vec::new();
        for (blob, s) in &self.blobs {
            for (&index, flights) in &s.in_flight {
                for f in flights {
                    all.push(Request {
                        peer: f.peer.clone(),
                        blob: *blob,
                        index,
                        kind: f.kind,
                    });
                }
            }
        }
        all
    }

    /// How many chunks of `blob` we still lack (`None` if unknown).
    pub fn missing(&self, blob: &Digest) -> Option<u32> {
        self.blobs.get(blob).map(|s| s.missing)
    }

    /// Whether we hold every chunk of `blob`.
    pub fn is_complete(&self, blob: &Digest) -> bool {
        self.missing(blob) == Some(0)
    }

    /// Our bitfield of `blob`.
    pub fn local_bitfield(&self, blob: &Digest) -> Option<&Bitfield> {
        self.blobs.get(blob).map(|s| &s.have)
    }

    /// Whether chunk `index` of `blob` is one we would request now if a
    /// holder had room: missing, its digest known, and not requested yet.
    /// A `Have` for a chunk that is not wanted cannot make
    /// [`next_requests`](Self::next_requests) return anything new, so the
    /// caller may skip the call (BitTorrent's "interested").
    pub fn is_wanted(&self, blob: &Digest, index: u32) -> bool {
        self.blobs
            .get(blob)
            .is_some_and(|s| s.known.get(index) && !s.have.get(index) && !s.pending(index))
    }

    /// Whether `peer` may be sent another request at `now_ms` (below its
    /// pipelining limit and not backing off after `Busy`).
    pub fn peer_open(&self, peer: &P, now_ms: u64) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.open(self.config.max_in_flight_per_peer, now_ms))
    }

    /// How many known peers hold chunk `index` of `blob`.
    pub fn availability(&self, blob: &Digest, index: u32) -> u32 {
        self.blobs
            .get(blob)
            .and_then(|s| s.availability.get(index as usize).copied())
            .unwrap_or(0)
    }

    /// The timeout of a request for chunk `index` of `blob`.
    pub fn timeout_ms(&self, blob: &Digest, index: u32) -> Option<u64> {
        let s = self.blobs.get(blob)?;
        (index < s.count).then(|| {
            self.config.timeout_base_ms
                + s.chunk_len(index)
                    .saturating_mul(self.config.timeout_ms_per_mib)
                    / (1 << 20)
        })
    }
}

/// The state of `blob`, checked to have a chunk `index`.
fn chunk_state<'a, P>(
    blobs: &'a mut BTreeMap<Digest, BlobState<P>>,
    blob: &Digest,
    index: u32,
) -> Result<&'a mut BlobState<P>, PickerError> {
    let state = blobs.get_mut(blob).ok_or(PickerError::UnknownBlob(*blob))?;
    if index >= state.count {
        return Err(PickerError::IndexOutOfRange {
            blob: *blob,
            index,
            count: state.count,
        });
    }
    Ok(state)
}
