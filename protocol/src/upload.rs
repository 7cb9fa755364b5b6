//! The serving side's upload policy, as a sans-IO state machine: which
//! chunk requests get an upload now, which wait, which are answered `Busy`
//! or `TryElsewhere`; and how deep a requester pipelines its requests.
//!
//! A node keeps one [`Uploader`] for everything it serves. The I/O code
//! feeds it events ([`Uploader::request`], [`Uploader::finished`],
//! [`Uploader::cancel`], [`Uploader::peer_left`]) with the time in
//! milliseconds, then drains [`Uploader::poll_action`] and performs each
//! [`Action`]: write a chunk (`Send`) or a refusal (`Reply`). The same
//! state machine runs in the node and in the simulator ([`crate::sim`]),
//! so a policy judged at 10,000 simulated nodes is the policy deployed.
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
//! 3. **Seed sparing (super-seeding).** For a blob marked as *origin*
//!    ([`Uploader::set_origin`]: held without downloading it from peers, a
//!    seed or a gateway streaming from the registry), a chunk already
//!    given to another peer that is still connected within
//!    [`UploadConfig::sparing_ms`] is answered `TryElsewhere`: the origin's
//!    uplink carries each chunk about once, and peers trade the rest.
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

use std::collections::{BTreeMap, VecDeque};

use crate::address::Digest;

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
    /// away from its only source. The node's `ORIGIN_UPLOAD_QUEUE`.
    pub origin_queue: usize,
    /// Seed sparing period for origin blobs (`None`: off).
    pub sparing_ms: Option<u64>,
}

impl Default for UploadConfig {
    /// Three slots and none waiting (the simulator's best with 100 Mbit/s
    /// links, see the module docs), except 3 for a super-seeding origin's
    /// chunks, sparing for 60 s: the node's defaults.
    fn default() -> Self {
        UploadConfig {
            slots: 3,
            queue: 0,
            origin_queue: 3,
            sparing_ms: Some(60_000),
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
pub enum Action<P> {
    /// Start uploading a chunk at full rate; report
    /// [`Uploader::finished`] when it is written or failed.
    Send {
        /// The requester.
        peer: P,
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
        peer: P,
        /// The requester's request id.
        request: u64,
        /// Why.
        refusal: Refusal,
    },
}

/// A request waiting for a slot.
#[derive(Debug, Clone)]
struct Waiting<P> {
    peer: P,
    request: u64,
    blob: Digest,
    index: u32,
}

/// The upload policy state machine. `P` identifies a peer and must be
/// `Ord` so that every decision is deterministic.
#[derive(Debug, Clone)]
pub struct Uploader<P: Ord + Clone> {
    config: UploadConfig,
    /// Running uploads: peer → request ids (at most one per peer).
    active: BTreeMap<P, u64>,
    waiting: VecDeque<Waiting<P>>,
    /// Origin blobs.
    origin: BTreeMap<Digest, ()>,
    /// Seed sparing: last upload of each origin chunk, and to whom.
    given: BTreeMap<(Digest, u32), (u64, P)>,
    actions: VecDeque<Action<P>>,
}

impl<P: Ord + Clone> Uploader<P> {
    /// An idle uploader.
    pub fn new(config: UploadConfig) -> Self {
        Uploader {
            config,
            active: BTreeMap::new(),
            waiting: VecDeque::new(),
            origin: BTreeMap::new(),
            given: BTreeMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &UploadConfig {
        &self.config
    }

    /// Marks `blob` as origin-held (seed sparing applies) or not.
    pub fn set_origin(&mut self, blob: Digest, origin: bool) {
        if origin {
            self.origin.insert(blob, ());
        } else {
            self.origin.remove(&blob);
            self.given.retain(|(b, _), _| *b != blob);
        }
    }

    /// A chunk request arrived. `held` says whether we can serve the chunk
    /// now (verified, or, with cut-through relay, arriving).
    pub fn request(
        &mut self,
        now_ms: u64,
        peer: P,
        request: u64,
        blob: Digest,
        index: u32,
        held: bool,
    ) {
        if !held {
            self.reply(peer, request, Refusal::NotHave);
            return;
        }
        if self.spared(now_ms, &peer, &blob, index) {
            self.reply(peer, request, Refusal::TryElsewhere);
            return;
        }
        let startable = self.active.len() < self.config.slots && !self.active.contains_key(&peer);
        let queue = if self.config.sparing_ms.is_some() && self.origin.contains_key(&blob) {
            self.config.queue.max(self.config.origin_queue)
        } else {
            self.config.queue
        };
        if !startable && self.waiting.len() >= queue {
            self.reply(peer, request, Refusal::Busy);
            return;
        }
        self.note_given(now_ms, &peer, &blob, index);
        self.waiting.push_back(Waiting {
            peer,
            request,
            blob,
            index,
        });
        self.schedule();
    }

    /// An upload started by [`Action::Send`] was written (or failed): its
    /// slot goes to the next waiting request.
    pub fn finished(&mut self, peer: &P, request: u64) {
        if self.active.get(peer) == Some(&request) {
            self.active.remove(peer);
            self.schedule();
        }
    }

    /// The requester cancelled a request. Returns whether it was still
    /// waiting (and is now dropped, without a reply); a running upload is
    /// not interrupted.
    pub fn cancel(&mut self, peer: &P, request: u64) -> bool {
        let before = self.waiting.len();
        self.waiting
            .retain(|w| !(&w.peer == peer && w.request == request));
        before != self.waiting.len()
    }

    /// The peer disconnected: its waiting requests are dropped, its running
    /// upload (if any) frees its slot, and seed sparing of the chunks it
    /// got ends (nobody else can fetch them from it).
    pub fn peer_left(&mut self, peer: &P) {
        self.waiting.retain(|w| &w.peer != peer);
        self.given.retain(|_, (_, to)| to != peer);
        if self.active.remove(peer).is_some() {
            self.schedule();
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
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

    fn reply(&mut self, peer: P, request: u64, refusal: Refusal) {
        self.actions.push_back(Action::Reply {
            peer,
            request,
            refusal,
        });
    }

    fn spared(&self, now_ms: u64, peer: &P, blob: &Digest, index: u32) -> bool {
        let Some(period) = self.config.sparing_ms else {
            return false;
        };
        if !self.origin.contains_key(blob) {
            return false;
        }
        match self.given.get(&(*blob, index)) {
            Some((at, to)) => to != peer && now_ms.saturating_sub(*at) < period,
            None => false,
        }
    }

    fn note_given(&mut self, now_ms: u64, peer: &P, blob: &Digest, index: u32) {
        if self.config.sparing_ms.is_some() && self.origin.contains_key(blob) {
            self.given.insert((*blob, index), (now_ms, peer.clone()));
        }
    }

    /// Starts waiting requests, oldest first, while slots are free; a peer
    /// with a running upload waits for it (its stream answers in order).
    fn schedule(&mut self) {
        while self.active.len() < self.config.slots {
            let Some(pos) = self
                .waiting
                .iter()
                .position(|w| !self.active.contains_key(&w.peer))
            else {
                return;
            };
            let w = self.waiting.remove(pos).expect("position is in range");
            self.active.insert(w.peer.clone(), w.request);
            self.actions.push_back(Action::Send {
                peer: w.peer,
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

    fn drain(u: &mut Uploader<u32>) -> Vec<Action<u32>> {
        std::iter::from_fn(|| u.poll_action()).collect()
    }

    fn send(peer: u32, request: u64, index: u32) -> Action<u32> {
        Action::Send {
            peer,
            request,
            blob: blob(),
            index,
        }
    }

    fn reply(peer: u32, request: u64, refusal: Refusal) -> Action<u32> {
        Action::Reply {
            peer,
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
        }
    }

    #[test]
    fn requests_for_an_origins_chunks_wait_in_the_origin_queue_others_get_busy() {
        let mut cfg = config(1, 0, Some(60_000));
        cfg.origin_queue = 2;
        let mut u = Uploader::new(cfg);
        let other = Digest::of(b"downloaded blob");
        u.set_origin(blob(), true);
        // Peer 0 takes the one slot; two requests for origin chunks wait,
        // the third is Busy; a request for a downloaded blob's chunk is
        // Busy at once (queue 0).
        for p in 0..4 {
            u.request(0, p, 1, blob(), p, true);
        }
        u.request(0, 9, 1, other, 0, true);
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
        u.set_origin(blob(), true);
        u.request(0, 0, 1, blob(), 0, true);
        u.request(0, 1, 1, blob(), 1, true);
        assert_eq!(
            drain(&mut u),
            vec![send(0, 1, 0), reply(1, 1, Refusal::Busy)]
        );
    }

    #[test]
    fn slots_bound_concurrent_uploads_and_fifo_fills_them() {
        let mut u = Uploader::new(config(2, 8, None));
        for p in 0..4 {
            u.request(0, p, 1, blob(), p, true);
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
    fn one_upload_per_peer_at_a_time() {
        let mut u = Uploader::new(config(2, 8, None));
        u.request(0, 7, 1, blob(), 0, true);
        u.request(0, 7, 2, blob(), 1, true);
        u.request(0, 8, 1, blob(), 2, true);
        // Peer 8 overtakes peer 7's second request: 7's stream is busy.
        assert_eq!(drain(&mut u), vec![send(7, 1, 0), send(8, 1, 2)]);
        u.finished(&7, 1);
        assert_eq!(drain(&mut u), vec![send(7, 2, 1)]);
    }

    #[test]
    fn busy_when_slots_and_queue_are_full() {
        let mut u = Uploader::new(config(1, 2, None));
        for p in 0..3 {
            u.request(0, p, 1, blob(), p, true);
        }
        drain(&mut u);
        u.request(0, 3, 1, blob(), 3, true);
        assert_eq!(drain(&mut u), vec![reply(3, 1, Refusal::Busy)]);
        u.finished(&0, 1);
        drain(&mut u);
        u.request(0, 3, 2, blob(), 3, true);
        assert!(drain(&mut u).is_empty(), "queued again once room was made");
    }

    #[test]
    fn not_held_is_not_have() {
        let mut u = Uploader::new(config(1, 2, None));
        u.request(0, 1, 9, blob(), 0, false);
        assert_eq!(drain(&mut u), vec![reply(1, 9, Refusal::NotHave)]);
    }

    #[test]
    fn seed_sparing_sends_others_elsewhere_for_a_period() {
        let mut u = Uploader::new(config(4, 8, Some(1_000)));
        u.set_origin(blob(), true);
        u.request(0, 1, 1, blob(), 5, true);
        u.request(10, 2, 1, blob(), 5, true);
        // The same peer asking again (a retry) is served.
        u.request(20, 1, 2, blob(), 5, true);
        assert_eq!(
            drain(&mut u),
            vec![send(1, 1, 5), reply(2, 1, Refusal::TryElsewhere)]
        );
        // A period after the last give (the retry at 20 ms), it is given
        // again.
        u.request(1_019, 3, 1, blob(), 5, true);
        assert_eq!(drain(&mut u), vec![reply(3, 1, Refusal::TryElsewhere)]);
        u.request(1_020, 3, 2, blob(), 5, true);
        assert_eq!(drain(&mut u), vec![send(3, 2, 5)]);
    }

    #[test]
    fn sparing_ends_when_the_recipient_leaves_and_skips_non_origin_blobs() {
        let mut u = Uploader::new(config(4, 8, Some(60_000)));
        u.set_origin(blob(), true);
        u.request(0, 1, 1, blob(), 5, true);
        u.peer_left(&1);
        u.request(5, 2, 1, blob(), 5, true);
        assert_eq!(drain(&mut u), vec![send(1, 1, 5), send(2, 1, 5)]);
        u.set_origin(blob(), false);
        u.request(6, 3, 1, blob(), 5, true);
        assert_eq!(drain(&mut u), vec![send(3, 1, 5)]);
    }

    #[test]
    fn cancel_drops_only_waiting_requests() {
        let mut u = Uploader::new(config(1, 4, None));
        u.request(0, 1, 1, blob(), 0, true);
        u.request(0, 2, 1, blob(), 1, true);
        drain(&mut u);
        assert!(!u.cancel(&1, 1), "running uploads complete");
        assert!(u.cancel(&2, 1));
        u.finished(&1, 1);
        assert!(drain(&mut u).is_empty());
    }

    #[test]
    fn peer_left_frees_its_slot() {
        let mut u = Uploader::new(config(1, 4, None));
        u.request(0, 1, 1, blob(), 0, true);
        u.request(0, 1, 2, blob(), 1, true);
        u.request(0, 2, 1, blob(), 2, true);
        drain(&mut u);
        u.peer_left(&1);
        assert_eq!(drain(&mut u), vec![send(2, 1, 2)]);
        assert_eq!(u.waiting(), 0);
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
