//! The serving side's upload policy, as a sans-IO state machine: which
//! chunk requests get an upload now, which wait, which are answered `Busy`
//! or `TryElsewhere`; and how deep a requester pipelines its requests.
//!
//! A node keeps one [`Uploader`] for everything it serves. The I/O code
//! feeds it events ([`Uploader::request`], [`Uploader::finished`],
//! [`Uploader::cancel`], [`Uploader::closed`], [`Uploader::peer_left`])
//! with the time in milliseconds, then drains [`Uploader::poll_action`]
//! and performs each [`Action`]: write a chunk (`Send`) or a refusal
//! (`Reply`). The same state machine runs in the node
//! (`node/src/swarm/exchange/uploads.rs`) and in the simulator
//! ([`crate::sim`]), so a policy judged at 10,000 simulated nodes is the
//! policy deployed.
//!
//! Requests come from a [`Requester`]: one ordered stream of requests (a
//! node's chunk stream; a simulated node), which belongs to a peer. Slots
//! are per requester (a stream answers in order), seed sparing per peer
//! (a peer holds a chunk whichever of its streams fetched it).
//!
//! ## Rules
//!
//! 1. **Choking: a few uploads at full rate.** At most
//!    [`UploadConfig::slots`] uploads run at once, and at most one per peer
//!    (a chunk stream answers in order). Few slots beat many: with 8 slots
//!    sharing a 100 Mbit/s uplink every 1 MiB chunk takes up to 8 × 84 ms
//!    to arrive, and a chunk is relayed only once whole, so each hop of the
//!    swarm's relay tree costs that much more. Not one slot either: a flow
//!    held back at its receiver's downlink leaves a lone slot's uplink
//!    partly idle. In the simulator (`examples/sim.rs`, 100 nodes, all
//!    other mechanisms of `SimConfig::tuned`, requesters keeping 3
//!    requests outstanding) 3 slots gave T(N)/T(1) = 1.23, 2 or 4 slots
//!    1.35, 8 slots 2.03; with 4 outstanding, 4 slots matched 3.
//! 2. **Busy.** A request that would wait behind [`UploadConfig::queue`]
//!    others is answered `Busy` at once, so the requester asks a less
//!    loaded holder instead of waiting. With requesters that keep only
//!    their downlink's bandwidth-delay product outstanding, a queue of 0
//!    (no waiting at all) was best in the simulator: a request waiting
//!    behind others is a downlink idling while another holder is free.
//!    Except at a super-seeding origin ([`UploadConfig::origin_queue`]):
//!    its offered chunk has no other holder, so a few requests wait.
//! 3. **Seed sparing (super-seeding).** For a chunk of an *origin* blob
//!    ([`Ask::origin`]: held without downloading it from peers, a seed or
//!    a gateway streaming from the registry), a chunk already given to
//!    another peer that is still connected within
//!    [`UploadConfig::sparing_ms`] is answered `TryElsewhere`: the origin's
//!    uplink carries each chunk about once, and peers trade the rest. The
//!    check comes before the slot, so a request that will be sent
//!    elsewhere never waits for one. Two exceptions:
//!    - chunks of at most [`UploadConfig::spare_min_len`] bytes (a
//!      manifest, a config) are never spared: they cost the origin little,
//!      and each extra hop delays every node's start;
//!    - a peer that asks again [`UploadConfig::spare_retry_ms`] or more
//!      after its first `TryElsewhere` for a chunk is served: it has no
//!      usable holder (the peer the origin fed may refuse it, lie and be
//!      banned, or be too slow).
//! 4. **Cancel.** A waiting request the requester cancels (it got the chunk
//!    elsewhere, an endgame duplicate) is dropped without a reply; an
//!    upload already running completes.
//!
//! [`pipeline_depth`] sizes a requester's per-peer pipelining to the
//! bandwidth-delay product, and [`RateEstimate`] measures the rate it needs.
//!
//! ## Non-goals
//!
//! Reciprocity (tit-for-tat: the nodes of a locality cooperate), rate
//! limiting (the node's token bucket), the bytes themselves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::address::Digest;

/// One ordered stream of requests, and the peer it belongs to. `Ord` so
/// that every decision is deterministic.
pub trait Requester: Ord + Clone {
    /// The peer (the holder of what this requester fetched).
    type Peer: Ord + Clone;
    /// The peer this requester belongs to.
    fn peer(&self) -> Self::Peer;
}

/// A simulated node is one requester of its own.
impl Requester for u32 {
    type Peer = u32;
    fn peer(&self) -> u32 {
        *self
    }
}

/// Seed sparing records kept at most (given chunks, refusals); beyond it
/// records older than their period are dropped first, then all. At 512 KiB
/// chunks 65,536 records cover a 32 GiB origin blob.
pub const MAX_SPARING_RECORDS: usize = 1 << 16;

/// Tuning of an [`Uploader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// Uploads running at once at most (unchoked peers).
    pub slots: usize,
    /// Requests waiting for a slot at most; more are answered `Busy`.
    pub queue: usize,
    /// Requests waiting for a slot at most when the request is for an
    /// origin blob's chunk and seed sparing is on (the larger of this and
    /// `queue` applies). A super-seeding origin offers each chunk to one
    /// requester, which has no other holder to ask: `Busy` would send it
    /// away from its only source.
    pub origin_queue: usize,
    /// Seed sparing period for origin blobs (`None`: off).
    pub sparing_ms: Option<u64>,
    /// A peer told `TryElsewhere` for a chunk that asks again this long
    /// after the first refusal is served (`None`: spared for the whole
    /// period).
    pub spare_retry_ms: Option<u64>,
    /// Chunks of at most this many bytes are never spared.
    pub spare_min_len: u32,
}

impl Default for UploadConfig {
    /// Three slots and none waiting (the simulator's best with 100 Mbit/s
    /// links, see the module docs), except 3 for a super-seeding origin's
    /// chunks, sparing for 60 s with a retry after 5 s, chunks up to
    /// 64 KiB never spared: the node's defaults.
    ///
    /// The origin queue: testnet, 10 nodes, one 46 MB layer, 100 Mbit/s
    /// links, 100 ms queues, interleaved runs
    /// (`testnet/results/gateway-busy-2026-12-03/`):
    /// - none waiting (`Busy` at once): some of the gateway's first chunks
    ///   were served 0.9-1.2 s after it stored them, and its uploads ended
    ///   0.6-1.1 s after its pull;
    /// - 32 waiting: they ended 0.4-0.7 s after, but a request waiting
    ///   there held one of its requester's few requests, and the nodes'
    ///   exchange slowed: T(10) 5.7-7.0 s against 5.6-6.7 s (10 runs each);
    /// - 3 waiting, with 4 requests per download: uploads ended 0.3-0.5 s
    ///   after the pull, T(10) 5.16-5.53 s against 5.43-5.60 s (6 pairs).
    ///
    /// The retry: at 2 s the gateway served 2.2-3.3 % of a 49 MB layer
    /// twice at N = 5 and 10 (testnet, 100 Mbit/s): a requester whose chunk
    /// was still on its way to the peer the seed fed asked again before
    /// that peer had it. Without a retry a member that hoarded the seed's
    /// chunks held the rest of the locality back 57 s.
    fn default() -> Self {
        UploadConfig {
            slots: 3,
            queue: 0,
            origin_queue: 3,
            sparing_ms: Some(60_000),
            spare_retry_ms: Some(5_000),
            spare_min_len: 64 << 10,
        }
    }
}

/// A refusal sent instead of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// We do not hold the chunk.
    NotHave,
    /// Every slot is taken and the queue is full: ask someone else.
    Busy,
    /// Seed sparing: another peer got this chunk moments ago; ask it.
    TryElsewhere,
}

/// What the I/O side should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<R> {
    /// Start uploading a chunk at full rate; report
    /// [`Uploader::finished`] when it is written or failed.
    Send {
        /// The requester.
        requester: R,
        /// The requester's request id.
        request: u64,
        /// The blob.
        blob: Digest,
        /// The chunk index.
        index: u32,
    },
    /// Answer a request with a refusal.
    Reply {
        /// The requester.
        requester: R,
        /// The requester's request id.
        request: u64,
        /// Why.
        refusal: Refusal,
    },
}

/// A chunk request, as the uploader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask<R> {
    /// Who asks.
    pub requester: R,
    /// The requester's request id (unique among its requests in flight).
    pub request: u64,
    /// The blob.
    pub blob: Digest,
    /// The chunk index.
    pub index: u32,
    /// The chunk's length in bytes.
    pub len: u32,
    /// Whether we can serve the chunk now (verified, or, with cut-through
    /// relay, arriving).
    pub held: bool,
    /// Whether the blob is origin-held here: held without downloading it
    /// from peers (seed sparing and the origin queue apply).
    pub origin: bool,
}

/// A request waiting for a slot.
#[derive(Debug, Clone)]
struct Waiting<R> {
    requester: R,
    request: u64,
    blob: Digest,
    index: u32,
}

/// The upload policy state machine.
#[derive(Debug, Clone)]
pub struct Uploader<R: Requester> {
    config: UploadConfig,
    /// Running uploads: requester → request id (at most one each).
    active: BTreeMap<R, u64>,
    waiting: VecDeque<Waiting<R>>,
    /// Seed sparing: last upload of each origin chunk, and to which peer.
    given: BTreeMap<(Digest, u32), (u64, R::Peer)>,
    /// Seed sparing: when each peer was first told `TryElsewhere` for a
    /// chunk (for [`UploadConfig::spare_retry_ms`]).
    refused: BTreeMap<(Digest, u32, R::Peer), u64>,
    actions: VecDeque<Action<R>>,
}

impl<R: Requester> Uploader<R> {
    /// An idle uploader.
    pub fn new(config: UploadConfig) -> Self {
        Uploader {
            config,
            active: BTreeMap::new(),
            waiting: VecDeque::new(),
            given: BTreeMap::new(),
            refused: BTreeMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &UploadConfig {
        &self.config
    }

    /// A chunk request arrived.
    pub fn request(&mut self, now_ms: u64, ask: Ask<R>) {
        if !ask.held {
            self.reply(ask.requester, ask.request, Refusal::NotHave);
            return;
        }
        let sparing = self.config.sparing_ms.is_some() && ask.origin;
        if sparing && self.spared(now_ms, &ask) {
            self.reply(ask.requester, ask.request, Refusal::TryElsewhere);
            return;
        }
        let startable =
            self.active.len() < self.config.slots && !self.active.contains_key(&ask.requester);
        let queue = if sparing {
            self.config.queue.max(self.config.origin_queue)
        } else {
            self.config.queue
        };
        if !startable && self.waiting.len() >= queue {
            self.reply(ask.requester, ask.request, Refusal::Busy);
            return;
        }
        if sparing && ask.len > self.config.spare_min_len {
            self.note_given(now_ms, &ask);
        }
        self.waiting.push_back(Waiting {
            requester: ask.requester,
            request: ask.request,
            blob: ask.blob,
            index: ask.index,
        });
        self.schedule();
    }

    /// An upload started by [`Action::Send`] was written (or failed): its
    /// slot goes to the next waiting request.
    pub fn finished(&mut self, requester: &R, request: u64) {
        if self.active.get(requester) == Some(&request) {
            self.active.remove(requester);
            self.schedule();
        }
    }

    /// The requester cancelled a request. Returns whether it was still
    /// waiting (and is now dropped, without a reply); a running upload is
    /// not interrupted.
    pub fn cancel(&mut self, requester: &R, request: u64) -> bool {
        let before = self.waiting.len();
        self.waiting
            .retain(|w| !(&w.requester == requester && w.request == request));
        before != self.waiting.len()
    }

    /// The requester's stream ended: its waiting requests are dropped and
    /// its running upload (if any) frees its slot. Seed sparing of what
    /// its peer got stays (the peer still holds it).
    pub fn closed(&mut self, requester: &R) {
        self.waiting.retain(|w| &w.requester != requester);
        if self.active.remove(requester).is_some() {
            self.schedule();
        }
    }

    /// The peer disconnected: every requester of it is closed, and seed
    /// sparing of the chunks it got ends (nobody can fetch them from it).
    pub fn peer_left(&mut self, peer: &R::Peer) {
        self.waiting.retain(|w| &w.requester.peer() != peer);
        self.given.retain(|_, (_, to)| to != peer);
        self.refused.retain(|(_, _, p), _| p != peer);
        let before = self.active.len();
        self.active.retain(|r, _| &r.peer() != peer);
        if self.active.len() != before {
            self.schedule();
        }
    }

    /// Calls [`Uploader::peer_left`] for every peer known here (running,
    /// waiting, or holding a spared chunk) for which `connected` is false.
    pub fn retain_peers(&mut self, connected: impl Fn(&R::Peer) -> bool) {
        let known: BTreeSet<R::Peer> = self
            .active
            .keys()
            .map(Requester::peer)
            .chain(self.waiting.iter().map(|w| w.requester.peer()))
            .chain(self.given.values().map(|(_, p)| p.clone()))
            .collect();
        for peer in known.into_iter().filter(|p| !connected(p)) {
            self.peer_left(&peer);
        }
    }

    /// Whether this origin chunk was given to some peer (super-seeding
    /// keeps an offered chunk with its assignee once fetched).
    pub fn given(&self, blob: &Digest, index: u32) -> bool {
        self.given.contains_key(&(*blob, index))
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action<R>> {
        self.actions.pop_front()
    }

    /// Uploads running now.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn reply(&mut self, requester: R, request: u64, refusal: Refusal) {
        self.actions.push_back(Action::Reply {
            requester,
            request,
            refusal,
        });
    }

    /// Whether an origin chunk's request is sent elsewhere; records the
    /// first refusal for the retry.
    fn spared(&mut self, now_ms: u64, ask: &Ask<R>) -> bool {
        let Some(period) = self.config.sparing_ms else {
            return false;
        };
        if ask.len <= self.config.spare_min_len {
            return false;
        }
        let peer = ask.requester.peer();
        let recently = match self.given.get(&(ask.blob, ask.index)) {
            Some((at, to)) => *to != peer && now_ms.saturating_sub(*at) < period,
            None => false,
        };
        if !recently {
            return false;
        }
        let Some(retry) = self.config.spare_retry_ms else {
            return true;
        };
        let key = (ask.blob, ask.index, peer);
        match self.refused.get(&key) {
            Some(first) if now_ms.saturating_sub(*first) >= retry => {
                self.refused.remove(&key);
                false
            }
            Some(_) => true,
            None => {
                if self.refused.len() >= MAX_SPARING_RECORDS {
                    self.refused
                        .retain(|_, t| now_ms.saturating_sub(*t) < retry.saturating_mul(4));
                    if self.refused.len() >= MAX_SPARING_RECORDS {
                        self.refused.clear();
                    }
                }
                self.refused.insert(key, now_ms);
                true
            }
        }
    }

    fn note_given(&mut self, now_ms: u64, ask: &Ask<R>) {
        let key = (ask.blob, ask.index);
        if self.given.len() >= MAX_SPARING_RECORDS && !self.given.contains_key(&key) {
            let period = self.config.sparing_ms.unwrap_or(0);
            self.given
                .retain(|_, (t, _)| now_ms.saturating_sub(*t) < period);
            if self.given.len() >= MAX_SPARING_RECORDS {
                self.given.clear();
            }
        }
        self.given.insert(key, (now_ms, ask.requester.peer()));
    }

    /// Starts waiting requests, oldest first, while slots are free; a
    /// requester with a running upload waits for it (its stream answers in
    /// order).
    fn schedule(&mut self) {
        while self.active.len() < self.config.slots {
            let Some(pos) = self
                .waiting
                .iter()
                .position(|w| !self.active.contains_key(&w.requester))
            else {
                return;
            };
            let w = self.waiting.remove(pos).expect("position is in range");
            self.active.insert(w.requester.clone(), w.request);
            self.actions.push_back(Action::Send {
                requester: w.requester,
                request: w.request,
                blob: w.blob,
                index: w.index,
            });
        }
    }
}

/// Requests to keep outstanding at one peer so its link never idles
/// between chunks: the bandwidth-delay product in chunks, rounded up, plus
/// one being transferred, clamped to `min..=max`. `rate` is the peer's
/// delivery rate in bytes per second, `rtt_ms` the request round trip
/// (including queueing). At 100 Mbit/s and 1 ms that is 2 (one in
/// transfer, one on its way); behind a 100 ms standing queue it is 3.
pub fn pipeline_depth(rate: u64, rtt_ms: u64, chunk_len: u64, min: usize, max: usize) -> usize {
    let bdp = (rate as u128 * rtt_ms as u128).div_ceil(1000);
    let chunks = bdp.div_ceil(chunk_len.max(1) as u128) as usize;
    (chunks + 1).clamp(min.max(1), max.max(min.max(1)))
}

/// An exponentially weighted estimate of a peer's delivery rate, fed
/// with each chunk's size and the time it took from request to arrival
/// minus the time it waited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateEstimate {
    rate: Option<f64>,
}

impl Default for RateEstimate {
    fn default() -> Self {
        Self::new()
    }
}

impl RateEstimate {
    /// Weight of a new sample: a quarter, so that a peer's rate settles
    /// within a handful of 1 MiB chunks (well under a second at 100 Mbit/s)
    /// yet one slow chunk does not halve it.
    const GAIN: f64 = 0.25;

    /// No samples yet.
    pub fn new() -> Self {
        RateEstimate { rate: None }
    }

    /// A chunk of `bytes` arrived `elapsed_ms` after its transfer began.
    pub fn sample(&mut self, bytes: u64, elapsed_ms: u64) {
        let r = bytes as f64 * 1000.0 / elapsed_ms.max(1) as f64;
        self.rate = Some(match self.rate {
            Some(old) => old + Self::GAIN * (r - old),
            None => r,
        });
    }

    /// Bytes per second, if any sample was taken.
    pub fn rate(&self) -> Option<u64> {
        self.rate.map(|r| r as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob() -> Digest {
        Digest::of(b"upload test")
    }

    const CHUNK: u32 = 512 << 10;

    /// A request for chunk `index` of [`blob`], held, of a downloaded blob.
    fn ask(requester: u32, request: u64, index: u32) -> Ask<u32> {
        Ask {
            requester,
            request,
            blob: blob(),
            index,
            len: CHUNK,
            held: true,
            origin: false,
        }
    }

    /// The same, of an origin blob.
    fn origin_ask(requester: u32, request: u64, index: u32) -> Ask<u32> {
        Ask {
            origin: true,
            ..ask(requester, request, index)
        }
    }

    fn drain<R: Requester>(u: &mut Uploader<R>) -> Vec<Action<R>> {
        std::iter::from_fn(|| u.poll_action()).collect()
    }

    fn send(requester: u32, request: u64, index: u32) -> Action<u32> {
        Action::Send {
            requester,
            request,
            blob: blob(),
            index,
        }
    }

    fn reply(requester: u32, request: u64, refusal: Refusal) -> Action<u32> {
        Action::Reply {
            requester,
            request,
            refusal,
        }
    }

    fn config(slots: usize, queue: usize, sparing_ms: Option<u64>) -> UploadConfig {
        UploadConfig {
            slots,
            queue,
            origin_queue: 0,
            sparing_ms,
            spare_retry_ms: None,
            spare_min_len: 0,
        }
    }

    #[test]
    fn requests_for_an_origins_chunks_wait_in_the_origin_queue_others_get_busy() {
        let mut cfg = config(1, 0, Some(60_000));
        cfg.origin_queue = 2;
        let mut u = Uploader::new(cfg);
        // Peer 0 takes the one slot; two requests for origin chunks wait,
        // the third is Busy; a request for a downloaded blob's chunk is
        // Busy at once (queue 0).
        for p in 0..4 {
            u.request(0, origin_ask(p, 1, p));
        }
        u.request(0, ask(9, 1, 0));
        assert_eq!(
            drain(&mut u),
            vec![
                send(0, 1, 0),
                reply(3, 1, Refusal::Busy),
                reply(9, 1, Refusal::Busy)
            ]
        );
        assert_eq!((u.active(), u.waiting()), (1, 2));
        u.finished(&0, 1);
        assert_eq!(drain(&mut u), vec![send(1, 1, 1)]);
        // Without seed sparing the origin's queue does not apply.
        let mut cfg = config(1, 0, None);
        cfg.origin_queue = 2;
        let mut u = Uploader::new(cfg);
        u.request(0, origin_ask(0, 1, 0));
        u.request(0, origin_ask(1, 1, 1));
        assert_eq!(
            drain(&mut u),
            vec![send(0, 1, 0), reply(1, 1, Refusal::Busy)]
        );
    }

    #[test]
    fn slots_bound_concurrent_uploads_and_fifo_fills_them() {
        let mut u = Uploader::new(config(2, 8, None));
        for p in 0..4 {
            u.request(0, ask(p, 1, p));
        }
        assert_eq!(drain(&mut u), vec![send(0, 1, 0), send(1, 1, 1)]);
        assert_eq!((u.active(), u.waiting()), (2, 2));
        u.finished(&1, 1);
        assert_eq!(drain(&mut u), vec![send(2, 1, 2)]);
        // A finish for a request that is not running changes nothing.
        u.finished(&1, 1);
        assert!(drain(&mut u).is_empty());
    }

    #[test]
    fn one_upload_per_requester_at_a_time() {
        let mut u = Uploader::new(config(2, 8, None));
        u.request(0, ask(7, 1, 0));
        u.request(0, ask(7, 2, 1));
        u.request(0, ask(8, 1, 2));
        // Requester 8 overtakes requester 7's second request: 7's stream
        // is busy.
        assert_eq!(drain(&mut u), vec![send(7, 1, 0), send(8, 1, 2)]);
        u.finished(&7, 1);
        assert_eq!(drain(&mut u), vec![send(7, 2, 1)]);
    }

    #[test]
    fn busy_when_slots_and_queue_are_full() {
        let mut u = Uploader::new(config(1, 2, None));
        for p in 0..3 {
            u.request(0, ask(p, 1, p));
        }
        drain(&mut u);
        u.request(0, ask(3, 1, 3));
        assert_eq!(drain(&mut u), vec![reply(3, 1, Refusal::Busy)]);
        u.finished(&0, 1);
        drain(&mut u);
        u.request(0, ask(3, 2, 3));
        assert!(drain(&mut u).is_empty(), "queued again once room was made");
    }

    #[test]
    fn not_held_is_not_have() {
        let mut u = Uploader::new(config(1, 2, None));
        u.request(
            0,
            Ask {
                held: false,
                ..ask(1, 9, 0)
            },
        );
        assert_eq!(drain(&mut u), vec![reply(1, 9, Refusal::NotHave)]);
    }

    #[test]
    fn seed_sparing_sends_others_elsewhere_for_a_period() {
        let mut u = Uploader::new(config(4, 8, Some(1_000)));
        u.request(0, origin_ask(1, 1, 5));
        u.request(10, origin_ask(2, 1, 5));
        // The same peer asking again (a retry) is served.
        u.request(20, origin_ask(1, 2, 5));
        assert_eq!(
            drain(&mut u),
            vec![send(1, 1, 5), reply(2, 1, Refusal::TryElsewhere)]
        );
        // A period after the last give (the retry at 20 ms), it is given
        // again.
        u.request(1_019, origin_ask(3, 1, 5));
        assert_eq!(drain(&mut u), vec![reply(3, 1, Refusal::TryElsewhere)]);
        u.request(1_020, origin_ask(3, 2, 5));
        assert_eq!(drain(&mut u), vec![send(3, 2, 5)]);
        assert!(u.given(&blob(), 5));
        assert!(!u.given(&blob(), 6));
    }

    #[test]
    fn sparing_comes_before_the_slot() {
        // Every slot is taken and the origin queue is full: a request for
        // a chunk already given is still answered TryElsewhere (not Busy),
        // so the requester goes to the peer that holds it at once.
        let mut cfg = config(1, 0, Some(60_000));
        cfg.origin_queue = 1;
        let mut u = Uploader::new(cfg);
        u.request(0, origin_ask(1, 1, 0));
        u.request(0, origin_ask(2, 1, 1));
        u.request(0, origin_ask(3, 1, 0));
        assert_eq!(
            drain(&mut u),
            vec![send(1, 1, 0), reply(3, 1, Refusal::TryElsewhere)]
        );
        assert_eq!(u.waiting(), 1);
    }

    #[test]
    fn a_peer_that_asks_again_after_the_retry_time_is_served() {
        let mut cfg = config(4, 8, Some(60_000));
        cfg.spare_retry_ms = Some(5_000);
        let mut u = Uploader::new(cfg);
        u.request(0, origin_ask(1, 1, 5));
        u.request(100, origin_ask(2, 1, 5));
        // Asking again within 5 s of the first refusal: still elsewhere.
        u.request(5_099, origin_ask(2, 2, 5));
        u.request(5_100, origin_ask(2, 3, 5));
        assert_eq!(
            drain(&mut u),
            vec![
                send(1, 1, 5),
                reply(2, 1, Refusal::TryElsewhere),
                reply(2, 2, Refusal::TryElsewhere),
                send(2, 3, 5)
            ]
        );
        // The give to peer 2 restarts the period and the refusal record is
        // gone: peer 1 (the first holder) is now sent to peer 2, with a
        // fresh retry clock.
        u.request(5_200, origin_ask(1, 2, 5));
        u.request(10_199, origin_ask(1, 3, 5));
        u.request(10_200, origin_ask(1, 4, 5));
        assert_eq!(
            drain(&mut u),
            vec![
                reply(1, 2, Refusal::TryElsewhere),
                reply(1, 3, Refusal::TryElsewhere)
            ]
        );
        u.finished(&1, 1);
        assert_eq!(drain(&mut u), vec![send(1, 4, 5)]);
    }

    #[test]
    fn small_chunks_are_never_spared() {
        let mut cfg = config(4, 8, Some(60_000));
        cfg.spare_min_len = 64 << 10;
        let mut u = Uploader::new(cfg);
        let small = |requester| Ask {
            len: 64 << 10,
            ..origin_ask(requester, 1, 0)
        };
        u.request(0, small(1));
        u.request(1, small(2));
        u.request(2, origin_ask(3, 1, 1));
        u.request(3, origin_ask(4, 1, 1));
        assert_eq!(
            drain(&mut u),
            vec![
                send(1, 1, 0),
                send(2, 1, 0),
                send(3, 1, 1),
                reply(4, 1, Refusal::TryElsewhere)
            ]
        );
        assert!(!u.given(&blob(), 0), "a small chunk's give is not kept");
    }

    #[test]
    fn sparing_ends_when_the_recipient_leaves_and_skips_non_origin_blobs() {
        let mut u = Uploader::new(config(4, 8, Some(60_000)));
        u.request(0, origin_ask(1, 1, 5));
        u.peer_left(&1);
        u.request(5, origin_ask(2, 1, 5));
        assert_eq!(drain(&mut u), vec![send(1, 1, 5), send(2, 1, 5)]);
        u.request(6, ask(3, 1, 5));
        assert_eq!(drain(&mut u), vec![send(3, 1, 5)]);
    }

    /// A requester of the node's kind: one of several streams of a peer.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    struct Stream {
        peer: u8,
        stream: u8,
    }

    impl Requester for Stream {
        type Peer = u8;
        fn peer(&self) -> u8 {
            self.peer
        }
    }

    #[test]
    fn slots_are_per_stream_and_sparing_per_peer() {
        let s = |peer, stream| Stream { peer, stream };
        let a = |requester: Stream, request, index| Ask {
            requester,
            request,
            blob: blob(),
            index,
            len: CHUNK,
            held: true,
            origin: true,
        };
        let mut u = Uploader::new(config(4, 0, Some(60_000)));
        // Two streams of peer 1 upload at once; peer 1's second stream is
        // served a chunk its first stream got (same holder); peer 2 is
        // sent elsewhere.
        u.request(0, a(s(1, 0), 1, 0));
        u.request(0, a(s(1, 1), 1, 1));
        u.request(1, a(s(1, 1), 2, 0));
        u.request(1, a(s(2, 0), 1, 0));
        let sent = |requester, request, index| Action::Send {
            requester,
            request,
            blob: blob(),
            index,
        };
        assert_eq!(
            drain(&mut u),
            vec![
                sent(s(1, 0), 1, 0),
                sent(s(1, 1), 1, 1),
                Action::Reply {
                    requester: s(1, 1),
                    request: 2,
                    refusal: Refusal::Busy
                },
                Action::Reply {
                    requester: s(2, 0),
                    request: 1,
                    refusal: Refusal::TryElsewhere
                },
            ]
        );
        // A stream that ends frees its slot but keeps the sparing: peer 1
        // still holds chunk 0.
        u.closed(&s(1, 0));
        assert_eq!(u.active(), 1);
        u.request(2, a(s(2, 0), 2, 0));
        assert_eq!(
            drain(&mut u),
            vec![Action::Reply {
                requester: s(2, 0),
                request: 2,
                refusal: Refusal::TryElsewhere
            }]
        );
        // Peer 1 disconnects: its other stream's slot frees and chunk 0
        // is given again.
        u.retain_peers(|p| *p != 1);
        assert_eq!(u.active(), 0);
        u.request(3, a(s(2, 0), 3, 0));
        assert_eq!(drain(&mut u), vec![sent(s(2, 0), 3, 0)]);
    }

    #[test]
    fn sparing_records_stay_bounded() {
        let mut u = Uploader::new(config(1, 0, Some(1_000)));
        let n = MAX_SPARING_RECORDS as u32 + 10;
        for i in 0..n {
            // One slot, queue 0: each give is recorded, then finished.
            u.request(u64::from(i / 1_000), origin_ask(1, u64::from(i), i));
            u.finished(&1, u64::from(i));
        }
        assert!(u.given.len() <= MAX_SPARING_RECORDS);
        // The newest gives survive the pruning.
        assert!(u.given(&blob(), n - 1));
    }

    #[test]
    fn cancel_drops_only_waiting_requests() {
        let mut u = Uploader::new(config(1, 4, None));
        u.request(0, ask(1, 1, 0));
        u.request(0, ask(2, 1, 1));
        drain(&mut u);
        assert!(!u.cancel(&1, 1), "running uploads complete");
        assert!(u.cancel(&2, 1));
        u.finished(&1, 1);
        assert!(drain(&mut u).is_empty());
    }

    #[test]
    fn a_departed_peer_or_closed_stream_frees_its_slot_and_drops_its_waiting_requests() {
        let ends: [fn(&mut Uploader<u32>); 2] = [|u| u.peer_left(&1), |u| u.closed(&1)];
        for end in ends {
            let mut u = Uploader::new(config(1, 4, None));
            u.request(0, ask(1, 1, 0));
            u.request(0, ask(1, 2, 1));
            u.request(0, ask(2, 1, 2));
            drain(&mut u);
            end(&mut u);
            assert_eq!(drain(&mut u), vec![send(2, 1, 2)]);
            assert_eq!(u.waiting(), 0);
        }
    }

    #[test]
    fn depth_follows_the_bandwidth_delay_product() {
        let mib = 1 << 20;
        // 100 Mbit/s, 1 ms: far less than a chunk in flight.
        assert_eq!(pipeline_depth(12_500_000, 1, mib, 1, 16), 2);
        // 100 Mbit/s behind a 100 ms queue: 1.25 MB in flight.
        assert_eq!(pipeline_depth(12_500_000, 100, mib, 1, 16), 3);
        // 1 Gbit/s, 50 ms: 6.25 MB.
        assert_eq!(pipeline_depth(125_000_000, 50, mib, 1, 16), 7);
        assert_eq!(pipeline_depth(125_000_000, 50, mib, 1, 4), 4);
        assert_eq!(pipeline_depth(0, 0, mib, 3, 8), 3);
    }

    #[test]
    fn rate_estimate_converges() {
        let mut r = RateEstimate::new();
        assert_eq!(r.rate(), None);
        r.sample(1_000_000, 100);
        assert_eq!(r.rate(), Some(10_000_000));
        for _ in 0..40 {
            r.sample(1_000_000, 50);
        }
        let rate = r.rate().unwrap();
        assert!((19_900_000..=20_000_000).contains(&rate), "{rate}");
    }
}
