//! A deterministic discrete-event simulator of one locality's swarm,
//! driving the node's own decision logic: every simulated node runs a
//! [`Picker`] to choose requests and an
//! [`Uploader`] to serve them, over the link model
//! of [`link`]. It answers "how long until the last of N nodes holds the
//! image, and who sent how many bytes" at N up to 10,000 in seconds.
//!
//! ## Layout
//!
//! - [`link`]: per-node uplink and downlink rates, flows sharing links,
//!   standing FIFO queues on busy links.
//! - [`SimConfig`]: every parameter of the model (rates, queue, RTT, CPU per
//!   chunk, image layout, peer sets, churn) and every mechanism switch
//!   (upload slots, `Have` interval, pipelining depth, cut-through relay,
//!   `Cancel`), so that calibration against the testnet and back-to-back
//!   comparisons are a matter of setting fields (or command-line flags of
//!   `examples/sim.rs`).
//! - [`run`]: one rollout; [`Report`]: its figures.
//!
//! ## What is modelled
//!
//! Node 0 is the gateway: it streams the image's layers from the cloud
//! registry in order, one 1 MiB chunk after the other, at the smaller of the
//! cloud link's rate and its own downlink's share, and serves only chunks
//! it already has (with cut-through: has begun to receive). It never
//! downloads from peers (the node marks its whole registry-pull plan as
//! held). Every other node downloads from a bounded random set of peers
//! (`max_download_peers`, as the node's `SwarmConfig`); the gateway accepts
//! at most `gateway_peers` of them (the node's `max_connections`).
//! Messages (requests, refusals, `Have`, `Cancel`) take half the RTT plus
//! the standing queue of every busy link they cross; a chunk takes its
//! flow's transfer time plus half the RTT, then `cpu_us_per_chunk` to be
//! verified before it is held, advertised (`Have` to every peer that
//! downloads from this node, batched every `have_interval_us`) and served.
//! With cut-through relay a node advertises and serves a chunk as soon as
//! it starts to arrive; a relayed copy cannot complete before the relay's
//! own copy has. Stalls expire requests as in the node (the peer is dropped
//! for 30 s).
//!
//! ## Non-goals
//!
//! Packet-level TCP (slow start, loss, ACK clocking), discovery and
//! connection set-up (peer sets exist at time zero), chunk maps (digests
//! become known as the gateway reads the chunks), import/decompression
//! (`--import none`), replacing peers lost to churn.

pub mod link;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::address::Digest;
use crate::bitfield::Bitfield;
use crate::chunkmap::ChunkSize;
use crate::picker::{FailReason, Picker, PickerConfig};
use crate::upload::{pipeline_depth, Action, Refusal, UploadConfig, Uploader};

use link::{FlowId, Network};

/// 1 MiB, the node's chunk size.
const CHUNK: u64 = 1 << 20;

/// How many requests a downloader keeps outstanding at one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// A fixed number (the node's `requests_per_peer`, 4).
    Fixed(usize),
    /// Sized to the bandwidth-delay product with [`pipeline_depth`]: per
    /// peer from its measured rate and the RTT including queueing (at most
    /// this many), and over all peers (unless
    /// [`SimConfig::total_requests`] is set) from the node's own downlink
    /// rate, plus one request to cover a `Busy` round trip.
    Bdp(usize),
}

/// Every parameter of a simulated rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Nodes, the gateway included.
    pub nodes: usize,
    /// Layer sizes in bytes, streamed by the gateway in this order.
    pub layers: Vec<u64>,
    /// Node link rate (both directions), bytes per second.
    pub node_rate: f64,
    /// Link rate of the slow nodes, bytes per second.
    pub slow_rate: f64,
    /// Fraction of non-gateway nodes on slow links.
    pub slow_fraction: f64,
    /// Cloud link (registry to gateway) rate, bytes per second.
    pub cloud_rate: f64,
    /// Round trip between two nodes without queueing, microseconds.
    pub rtt_us: u64,
    /// Round trip from the gateway to the registry (per layer request).
    pub cloud_rtt_us: u64,
    /// Standing queue of a saturated link (`tbf ... latency`, 100 ms in
    /// the testnet), microseconds. Delay-based uploads (LEDBAT) would keep
    /// it near their target: model them with a small value.
    pub queue_us: u64,
    /// Verifying and storing one chunk, microseconds.
    pub cpu_us_per_chunk: u64,
    /// `Have` batching period; 0 sends each `Have` at once.
    pub have_interval_us: u64,
    /// The serving side's policy.
    pub upload: UploadConfig,
    /// Request pipelining per peer.
    pub depth: Depth,
    /// Requests outstanding over all peers at most (`None`: only the
    /// per-peer depth limits, as the node today).
    pub total_requests: Option<usize>,
    /// Peers one node downloads from at most.
    pub max_download_peers: usize,
    /// Nodes the gateway serves at most.
    pub gateway_peers: usize,
    /// Relay a chunk while it still arrives.
    pub cut_through: bool,
    /// Cancel endgame duplicates once a copy arrived.
    pub cancel: bool,
    /// `TryElsewhere` keeps the requester off that peer for that chunk for
    /// a while ([`FailReason::TryElsewhere`]); off, it counts as an error,
    /// as the node does today.
    pub elsewhere_backoff: bool,
    /// The picker's deadline window, in chunks.
    pub window_chunks: u32,
    /// The picker's endgame threshold, in chunks.
    pub endgame_chunks: u32,
    /// Fraction of non-gateway nodes that leave mid-transfer.
    pub churn_fraction: f64,
    /// Leaving nodes go at uniformly random times in this range (µs).
    pub churn_window_us: (u64, u64),
    /// Stop after this much simulated time (µs).
    pub time_limit_us: u64,
    /// Seed of every random choice.
    pub seed: u64,
}

/// The image used in the testnet's measurements, 48.7 MB.
pub mod layouts {
    /// One 46 MB base layer, then the small ones (`--layout base`).
    pub fn base() -> Vec<u64> {
        vec![46_000_000, 2_000_000, 700_000, 1_000]
    }

    /// Four base layers of about equal size (`--layout spread`).
    pub fn spread() -> Vec<u64> {
        vec![
            12_000_000, 12_000_000, 12_000_000, 12_000_000, 700_000, 1_000,
        ]
    }
}

impl Default for SimConfig {
    /// The testnet's locality with the node's defaults as of 2026-11-30:
    /// 100 Mbit/s node links, 200 Mbit/s cloud link, `tbf` queues of
    /// 100 ms, eight upload slots and four waiting, `Have` every 200 ms,
    /// four requests per peer, 32 download peers, no cut-through, no
    /// `Cancel`.
    fn default() -> Self {
        SimConfig {
            nodes: 21,
            layers: layouts::base(),
            node_rate: 12_500_000.0,
            slow_rate: 1_250_000.0,
            slow_fraction: 0.0,
            cloud_rate: 25_000_000.0,
            // Two veths and a bridge on one host.
            rtt_us: 200,
            cloud_rtt_us: 1_000,
            queue_us: 100_000,
            // sha256 of 1 MiB (~3 ms on the testnet's cores) and a write.
            cpu_us_per_chunk: 4_000,
            have_interval_us: 200_000,
            upload: UploadConfig {
                slots: 8,
                queue: 4,
                sparing_ms: Some(60_000),
            },
            depth: Depth::Fixed(4),
            total_requests: None,
            max_download_peers: 32,
            gateway_peers: 256,
            cut_through: false,
            cancel: false,
            elsewhere_backoff: false,
            window_chunks: 8,
            endgame_chunks: 8,
            churn_fraction: 0.0,
            churn_window_us: (1_000_000, 3_000_000),
            time_limit_us: 600_000_000,
            seed: 1,
        }
    }
}

impl SimConfig {
    /// The mechanisms this simulator found to reach the physical limit
    /// (see the README's evaluation for what each buys): three upload slots
    /// and no waiting queue (a request finds a free uploader or hears
    /// `Busy` at once), requests capped at the downlink's bandwidth-delay
    /// product plus one over all peers, immediate `Have`, cut-through
    /// relay, `Cancel`, backing off a chunk a seed spared, and low-delay
    /// (LEDBAT-like) uploads that keep the standing queue near 5 ms.
    pub fn tuned(self) -> Self {
        SimConfig {
            upload: UploadConfig {
                slots: 3,
                queue: 0,
                sparing_ms: Some(60_000),
            },
            have_interval_us: 0,
            depth: Depth::Bdp(4),
            total_requests: None,
            cut_through: true,
            cancel: true,
            elsewhere_backoff: true,
            queue_us: 5_000,
            ..self
        }
    }

    /// The image size.
    pub fn image_bytes(&self) -> u64 {
        self.layers.iter().sum()
    }
}

/// Figures of one rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// When each node held the whole image (µs), `None` if it never did
    /// (left, or the time limit); index 0 is the gateway.
    pub done_us: Vec<Option<u64>>,
    /// Whether each node was on a slow link.
    pub slow: Vec<bool>,
    /// Whether each node left mid-transfer.
    pub left: Vec<bool>,
    /// Bytes each node received (duplicates included).
    pub bytes_in: Vec<u64>,
    /// Bytes each node uploaded.
    pub bytes_out: Vec<u64>,
    /// Chunks received that were already held.
    pub duplicates: u64,
    /// Refusals sent, by kind: `NotHave`, `Busy`, `TryElsewhere`.
    pub refusals: [u64; 3],
    /// Events processed.
    pub events: u64,
    /// The image size.
    pub image_bytes: u64,
    /// Whether every remaining node completed.
    pub complete: bool,
}

impl Report {
    /// When the last remaining node completed (µs), over nodes matching
    /// `filter` (index, slow); `None` if one did not, or none matched.
    pub fn last_done(&self, filter: impl Fn(usize, bool) -> bool) -> Option<u64> {
        let mut last = None;
        for (i, d) in self.done_us.iter().enumerate() {
            if self.left[i] || !filter(i, self.slow[i]) {
                continue;
            }
            last = last.max(Some((*d)?));
        }
        last
    }

    /// T(N): the last remaining node's completion.
    pub fn t_last(&self) -> Option<u64> {
        self.last_done(|_, _| true)
    }

    /// Mean and maximum bytes received per non-gateway node that stayed,
    /// as a ratio to the image.
    pub fn bytes_in_ratio(&self) -> (f64, f64) {
        let v: Vec<f64> = (1..self.bytes_in.len())
            .filter(|i| !self.left[*i])
            .map(|i| self.bytes_in[i] as f64 / self.image_bytes as f64)
            .collect();
        if v.is_empty() {
            return (0.0, 0.0);
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (mean, v.iter().cloned().fold(0.0, f64::max))
    }

    /// The gateway's upload as a ratio to the image.
    pub fn gateway_out_ratio(&self) -> f64 {
        self.bytes_out[0] as f64 / self.image_bytes as f64
    }
}

/// A message between nodes.
#[derive(Debug, Clone)]
enum Msg {
    Request { id: u64, chunk: u32 },
    Refuse { chunk: u32, refusal: Refusal },
    Have(Rc<[u32]>),
    Cancel { id: u64 },
}

#[derive(Debug, Clone)]
enum Event {
    /// The gateway asks the registry for the next layer.
    CloudLayer,
    Deliver {
        from: u32,
        to: u32,
        msg: Msg,
    },
    /// The same `Have` to several peers (one event, not one per peer).
    Haves {
        from: u32,
        to: Vec<u32>,
        list: Rc<[u32]>,
    },
    /// A chunk's last byte reached `node` (from a peer, or the cloud).
    Arrive {
        node: u32,
        from: Option<u32>,
        chunk: u32,
    },
    /// `node` verified and stored a chunk.
    Verified {
        node: u32,
        from: Option<u32>,
        chunk: u32,
    },
    HaveFlush(u32),
    Tick(u32),
    Leave(u32),
    /// A peer dropped after a stall may be asked again.
    Readd {
        node: u32,
        peer: u32,
    },
}

/// An event in the queue, earliest first, then in order of scheduling
/// (which makes equal times deterministic).
struct Queued {
    at: u64,
    seq: u64,
    ev: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What a flow carries.
#[derive(Debug, Clone, Copy)]
enum Carry {
    Cloud {
        chunk: u32,
    },
    Peer {
        from: u32,
        to: u32,
        id: u64,
        chunk: u32,
    },
}

/// An upload whose bytes are all sent but whose source copy is still
/// arriving (cut-through).
#[derive(Debug, Clone, Copy)]
struct Held {
    to: u32,
    id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Missing,
    Arriving,
    /// Every byte in, being verified.
    Received,
    Held,
}

struct Node {
    alive: bool,
    rate: f64,
    chunks: Vec<Chunk>,
    /// Incoming flows per arriving chunk.
    arriving: BTreeMap<u32, u32>,
    held_count: u32,
    picker: Option<Picker<u32>>,
    uploader: Uploader<u32>,
    /// Peers it downloads from.
    peers: Vec<u32>,
    /// Peers that download from it (receive its `Have`s).
    watchers: Vec<u32>,
    pending_have: Vec<u32>,
    flush_at: Option<u64>,
    have_phase_us: u64,
    /// Requests sent and not answered: id → (peer, chunk, sent at).
    requests: BTreeMap<u64, (u32, u32, u64)>,
    next_id: u64,
    /// Uploads sent whose source copy is still arriving, per chunk.
    held_uploads: BTreeMap<u32, Vec<Held>>,
    /// Requests received and not yet started or refused: (peer, id) → chunk.
    inbound: BTreeMap<(u32, u64), u32>,
    /// Measured per-peer rate (bytes/s) for BDP pipelining.
    peer_rate: BTreeMap<u32, crate::upload::RateEstimate>,
    done_us: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
    cursors: Vec<u32>,
    /// Peers dropped (stalled, or gone): their `Have`s are ignored.
    dropped: BTreeSet<u32>,
    /// A stall check is scheduled.
    ticking: bool,
}

struct Blob {
    digest: Digest,
    size: u64,
    first: u32,
    count: u32,
}

struct Sim {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    net: Network,
    carry: Vec<Option<Carry>>,
    nodes: Vec<Node>,
    blobs: Vec<Blob>,
    /// Chunk → blob index.
    blob_of: Vec<u32>,
    total: u32,
    cloud_next: u32,
    /// Chunks whose digests the gateway has computed (or, cut-through,
    /// is computing).
    known: Vec<u32>,
    duplicates: u64,
    refusals: [u64; 3],
    processed: u64,
    remaining: usize,
}

/// Runs one rollout.
pub fn run(cfg: &SimConfig) -> Report {
    let mut sim = Sim::new(cfg.clone());
    sim.run();
    sim.report()
}

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        assert!(cfg.nodes >= 1, "a swarm has at least its gateway");
        let n = cfg.nodes;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let chunk_size = ChunkSize::new(CHUNK as u32).expect("1 MiB is a valid chunk size");
        let mut blobs = Vec::new();
        let mut blob_of = Vec::new();
        let mut first = 0u32;
        for (i, &size) in cfg.layers.iter().enumerate() {
            let count = size.div_ceil(CHUNK) as u32;
            blobs.push(Blob {
                digest: Digest::of(format!("sim layer {i}").as_bytes()),
                size,
                first,
                count,
            });
            blob_of.extend(std::iter::repeat_n(i as u32, count as usize));
            first += count;
        }
        let total = first;

        // Link rates: a fraction of the non-gateway nodes is slow.
        let slow_count = ((n.saturating_sub(1)) as f64 * cfg.slow_fraction).round() as usize;
        let mut slow = vec![false; n];
        if n > 1 {
            for i in sample(&mut rng, n - 1, slow_count.min(n - 1)) {
                slow[i + 1] = true;
            }
        }
        let rates: Vec<f64> = slow
            .iter()
            .map(|s| if *s { cfg.slow_rate } else { cfg.node_rate })
            .collect();
        let net = Network::new(&rates, &rates, cfg.queue_us);

        // Peer sets: the gateway serves `gateway_peers` random nodes; every
        // node downloads from `max_download_peers` random others.
        let mut peers: Vec<Vec<u32>> = vec![Vec::new(); n];
        if n > 1 {
            let with_gateway = cfg.gateway_peers.min(n - 1);
            let mut gw = vec![false; n];
            for i in sample(&mut rng, n - 1, with_gateway) {
                gw[i + 1] = true;
            }
            for (i, set) in peers.iter_mut().enumerate().skip(1) {
                let others = n - 2; // non-gateway nodes other than i
                let want = cfg.max_download_peers.max(1);
                let mut k = want.min(others);
                if gw[i] {
                    set.push(0);
                    k = (want - 1).min(others);
                }
                for j in sample(&mut rng, others, k) {
                    // Map 0..others onto 1..n without i.
                    let mut p = j + 1;
                    if p >= i {
                        p += 1;
                    }
                    set.push(p as u32);
                }
                set.sort_unstable();
            }
        }
        let mut watchers: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, set) in peers.iter().enumerate() {
            for p in set {
                watchers[*p as usize].push(i as u32);
            }
        }

        let max_depth = match cfg.depth {
            Depth::Fixed(d) | Depth::Bdp(d) => d.max(1),
        };
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let picker = (i > 0).then(|| {
                    let mut p = Picker::new(PickerConfig {
                        max_in_flight_per_peer: max_depth,
                        window_chunks: cfg.window_chunks,
                        endgame_threshold: cfg.endgame_chunks,
                        max_requests_per_chunk: 2,
                        // Not modelled yet: the node waits 750 ms before an
                        // endgame duplicate; the simulator duplicates at once.
                        endgame_min_age_ms: 0,
                        seed: cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        // The node's defaults: 10 s + 1 MiB per 4 s.
                        timeout_base_ms: 10_000,
                        timeout_ms_per_mib: 4_000,
                        busy_backoff_ms: 250,
                    });
                    for b in &blobs {
                        p.add_blob(b.digest, b.size, chunk_size, Bitfield::new(b.count))
                            .expect("bitfield sized to the blob");
                        p.set_digests_known(&b.digest, 0).expect("added");
                    }
                    let total = match (cfg.total_requests, cfg.depth) {
                        (Some(t), _) => Some(t),
                        (None, Depth::Bdp(max)) => {
                            let rtt_ms = (cfg.rtt_us + 2 * cfg.queue_us).div_ceil(1000);
                            Some(pipeline_depth(rates[i] as u64, rtt_ms, CHUNK, 1, max) + 1)
                        }
                        (None, Depth::Fixed(_)) => None,
                    };
                    p.set_total_limit(total);
                    for peer in &peers[i] {
                        p.add_peer(*peer);
                        if let Depth::Bdp(_) = cfg.depth {
                            p.set_peer_limit(peer, Some(1));
                        }
                    }
                    p
                });
                let mut uploader = Uploader::new(cfg.upload.clone());
                if i == 0 {
                    for b in &blobs {
                        uploader.set_origin(b.digest, true);
                    }
                }
                Node {
                    alive: true,
                    rate: rates[i],
                    chunks: vec![Chunk::Missing; total as usize],
                    arriving: BTreeMap::new(),
                    held_count: 0,
                    picker,
                    uploader,
                    peers: std::mem::take(&mut peers[i]),
                    watchers: std::mem::take(&mut watchers[i]),
                    pending_have: Vec::new(),
                    flush_at: None,
                    have_phase_us: if cfg.have_interval_us > 0 {
                        rng.gen_range(0..cfg.have_interval_us)
                    } else {
                        0
                    },
                    requests: BTreeMap::new(),
                    next_id: 0,
                    held_uploads: BTreeMap::new(),
                    inbound: BTreeMap::new(),
                    peer_rate: BTreeMap::new(),
                    done_us: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    cursors: vec![0; blobs.len()],
                    dropped: BTreeSet::new(),
                    ticking: false,
                }
            })
            .collect();

        let mut sim = Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            net,
            carry: Vec::new(),
            nodes,
            known: vec![0; blobs.len()],
            blobs,
            blob_of,
            total,
            cloud_next: 0,
            duplicates: 0,
            refusals: [0; 3],
            processed: 0,
            remaining: n,
            cfg,
        };
        // Churn.
        if n > 1 {
            let leave = ((n - 1) as f64 * sim.cfg.churn_fraction).round() as usize;
            let (a, b) = sim.cfg.churn_window_us;
            for i in sample(&mut rng, n - 1, leave.min(n - 1)) {
                let at = if b > a { rng.gen_range(a..b) } else { a };
                sim.push(at, Event::Leave(i as u32 + 1));
            }
        }
        let rtt = sim.cfg.cloud_rtt_us;
        sim.push(rtt, Event::CloudLayer);
        sim
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn one_way(&self) -> u64 {
        self.cfg.rtt_us / 2
    }

    fn send(&mut self, from: u32, to: u32, msg: Msg) {
        let delay = self.one_way() + self.net.queueing_us(from as usize, to as usize);
        self.push(self.now + delay, Event::Deliver { from, to, msg });
    }

    fn run(&mut self) {
        loop {
            if self.remaining == 0 {
                break;
            }
            let next_ev = self.queue.peek().map(|q| q.at);
            let next_flow = self.net.next_finish();
            let t = match (next_ev, next_flow) {
                (None, None) => break,
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (Some(a), Some(b)) => a.min(b),
            };
            if t > self.cfg.time_limit_us {
                break;
            }
            self.now = t;
            self.processed += 1;
            if next_flow == Some(t) {
                let id = self.net.pop_finished(t).expect("due now");
                self.flow_done(id);
                continue;
            }
            let q = self.queue.pop().expect("peeked");
            self.handle(q.ev);
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::CloudLayer => self.cloud_next_chunk(),
            Event::Deliver { from, to, msg } => {
                if self.nodes[to as usize].alive && self.nodes[from as usize].alive {
                    self.deliver(from, to, msg);
                }
            }
            Event::Haves { from, to, list } => {
                if self.nodes[from as usize].alive {
                    for w in to {
                        if self.nodes[w as usize].alive {
                            self.deliver(from, w, Msg::Have(list.clone()));
                        }
                    }
                }
            }
            Event::Arrive { node, from, chunk } => self.arrive(node, from, chunk),
            Event::Verified { node, from, chunk } => self.verified(node, from, chunk),
            Event::HaveFlush(node) => {
                self.nodes[node as usize].flush_at = None;
                self.flush_haves(node);
            }
            Event::Tick(node) => self.tick(node),
            Event::Leave(node) => self.leave(node),
            Event::Readd { node, peer } => {
                if !self.nodes[node as usize].alive || !self.nodes[peer as usize].alive {
                    return;
                }
                let bits: Vec<Bitfield> = self
                    .blobs
                    .iter()
                    .map(|b| {
                        let mut f = Bitfield::new(b.count);
                        for i in 0..b.count {
                            if self.advertises(peer, b.first + i) {
                                f.set(i);
                            }
                        }
                        f
                    })
                    .collect();
                let digests: Vec<Digest> = self.blobs.iter().map(|b| b.digest).collect();
                if let Some(p) = self.nodes[node as usize].picker.as_mut() {
                    p.add_peer(peer);
                    for (d, f) in digests.iter().zip(bits) {
                        let _ = p.peer_bitfield(&peer, d, f);
                    }
                }
                self.pick(node);
            }
        }
    }

    /// Whether `node` tells peers it has `chunk`.
    fn advertises(&self, node: u32, chunk: u32) -> bool {
        match self.nodes[node as usize].chunks[chunk as usize] {
            Chunk::Held => true,
            Chunk::Arriving | Chunk::Received => self.cfg.cut_through,
            Chunk::Missing => false,
        }
    }

    // ----------------------------------------------------------- gateway

    fn cloud_next_chunk(&mut self) {
        if self.cloud_next >= self.total || !self.nodes[0].alive {
            return;
        }
        let chunk = self.cloud_next;
        self.cloud_next += 1;
        let len = self.chunk_len(chunk);
        let id = self.net.start(self.now, None, 0, len, self.cfg.cloud_rate);
        self.set_carry(id, Carry::Cloud { chunk });
        self.begin_arrival(0, chunk);
    }

    fn chunk_len(&self, chunk: u32) -> u64 {
        let b = &self.blobs[self.blob_of[chunk as usize] as usize];
        let i = (chunk - b.first) as u64;
        (b.size - i * CHUNK).min(CHUNK)
    }

    fn set_carry(&mut self, id: FlowId, c: Carry) {
        if self.carry.len() <= id {
            self.carry.resize(id + 1, None);
        }
        self.carry[id] = Some(c);
    }

    /// The first byte of `chunk` is on its way into `node`.
    fn begin_arrival(&mut self, node: u32, chunk: u32) {
        let n = &mut self.nodes[node as usize];
        *n.arriving.entry(chunk).or_default() += 1;
        if n.chunks[chunk as usize] == Chunk::Missing {
            n.chunks[chunk as usize] = Chunk::Arriving;
            if self.cfg.cut_through {
                if node == 0 {
                    self.digest_known(chunk);
                }
                self.queue_have(node, chunk);
            }
        }
    }

    /// Every node learns that `chunk`'s digest is known (the gateway read
    /// it); the chunk becomes requestable.
    fn digest_known(&mut self, chunk: u32) {
        let b = self.blob_of[chunk as usize] as usize;
        let idx = chunk - self.blobs[b].first + 1;
        if idx <= self.known[b] {
            return;
        }
        self.known[b] = idx;
        let digest = self.blobs[b].digest;
        for n in self.nodes.iter_mut().skip(1) {
            if let Some(p) = n.picker.as_mut() {
                let _ = p.set_digests_known(&digest, idx);
            }
        }
    }

    // ------------------------------------------------------------- flows

    fn flow_done(&mut self, id: FlowId) {
        let Some(c) = self.carry.get_mut(id).and_then(|c| c.take()) else {
            return;
        };
        match c {
            Carry::Cloud { chunk } => {
                self.push(
                    self.now,
                    Event::Arrive {
                        node: 0,
                        from: None,
                        chunk,
                    },
                );
                // The registry streams the layer on; a new layer costs a
                // request round trip.
                let next = chunk + 1;
                if next < self.total {
                    let new_layer = self.blob_of[next as usize] != self.blob_of[chunk as usize];
                    if new_layer {
                        self.push(self.now + self.cfg.cloud_rtt_us, Event::CloudLayer);
                    } else {
                        self.cloud_next_chunk();
                    }
                }
            }
            Carry::Peer {
                from,
                to,
                id: req,
                chunk,
            } => {
                let len = self.chunk_len(chunk);
                self.nodes[from as usize].bytes_out += len;
                self.upload_finished(from, to, req);
                if matches!(
                    self.nodes[from as usize].chunks[chunk as usize],
                    Chunk::Held | Chunk::Received
                ) {
                    let at = self.now + self.one_way();
                    self.push(
                        at,
                        Event::Arrive {
                            node: to,
                            from: Some(from),
                            chunk,
                        },
                    );
                } else {
                    // Cut-through: sent as fast as it came; the last bytes
                    // follow the relay's own copy.
                    self.nodes[from as usize]
                        .held_uploads
                        .entry(chunk)
                        .or_default()
                        .push(Held { to, id: req });
                }
            }
        }
    }

    fn upload_finished(&mut self, from: u32, to: u32, req: u64) {
        self.nodes[from as usize].uploader.finished(&to, req);
        self.drain_uploader(from);
    }

    fn drain_uploader(&mut self, node: u32) {
        while let Some(a) = self.nodes[node as usize].uploader.poll_action() {
            match a {
                Action::Send {
                    peer,
                    request,
                    index,
                    blob,
                } => {
                    let b = self
                        .blobs
                        .iter()
                        .position(|x| x.digest == blob)
                        .expect("our blob");
                    let chunk = self.blobs[b].first + index;
                    self.nodes[node as usize].inbound.remove(&(peer, request));
                    if !self.nodes[peer as usize].alive {
                        self.nodes[node as usize].uploader.peer_left(&peer);
                        continue;
                    }
                    let len = self.chunk_len(chunk);
                    let id = self.net.start(
                        self.now,
                        Some(node as usize),
                        peer as usize,
                        len,
                        f64::INFINITY,
                    );
                    self.set_carry(
                        id,
                        Carry::Peer {
                            from: node,
                            to: peer,
                            id: request,
                            chunk,
                        },
                    );
                    self.begin_arrival(peer, chunk);
                }
                Action::Reply {
                    peer,
                    request,
                    refusal,
                } => {
                    // The requester maps the refusal to its chunk by the
                    // request id, as the node does.
                    let Some(chunk) = self.nodes[node as usize].inbound.remove(&(peer, request))
                    else {
                        continue;
                    };
                    self.refusals[match refusal {
                        Refusal::NotHave => 0,
                        Refusal::Busy => 1,
                        Refusal::TryElsewhere => 2,
                    }] += 1;
                    self.send(node, peer, Msg::Refuse { chunk, refusal });
                }
            }
        }
    }
}

impl Sim {
    fn now_ms(&self) -> u64 {
        self.now / 1000
    }

    fn locate(&self, chunk: u32) -> (Digest, u32) {
        let b = &self.blobs[self.blob_of[chunk as usize] as usize];
        (b.digest, chunk - b.first)
    }

    /// Forgets our request for `chunk` at `peer`, returning when it was sent.
    fn take_request(&mut self, node: u32, peer: u32, chunk: u32) -> Option<u64> {
        let n = &mut self.nodes[node as usize];
        let id = n
            .requests
            .iter()
            .find(|(_, (p, c, _))| *p == peer && *c == chunk)
            .map(|(id, _)| *id)?;
        n.requests.remove(&id).map(|(_, _, at)| at)
    }

    fn deliver(&mut self, from: u32, to: u32, msg: Msg) {
        match msg {
            Msg::Request { id, chunk } => {
                let held = self.advertises(to, chunk);
                let (blob, index) = self.locate(chunk);
                let now_ms = self.now_ms();
                let n = &mut self.nodes[to as usize];
                n.inbound.insert((from, id), chunk);
                n.uploader.request(now_ms, from, id, blob, index, held);
                self.drain_uploader(to);
            }
            Msg::Refuse { chunk, refusal } => {
                self.take_request(to, from, chunk);
                let (blob, index) = self.locate(chunk);
                let reason = match refusal {
                    Refusal::NotHave => FailReason::NotHave,
                    Refusal::Busy => FailReason::Busy,
                    Refusal::TryElsewhere if self.cfg.elsewhere_backoff => FailReason::TryElsewhere,
                    // As the node does: ask another holder of this chunk.
                    Refusal::TryElsewhere => FailReason::Error,
                };
                let now_ms = self.now_ms();
                if let Some(p) = self.nodes[to as usize].picker.as_mut() {
                    p.request_failed(&from, &blob, index, reason, now_ms);
                }
                self.pick(to);
            }
            Msg::Have(list) => {
                if self.nodes[to as usize].dropped.contains(&from) {
                    return;
                }
                let located: Vec<(Digest, u32)> = list.iter().map(|c| self.locate(*c)).collect();
                let now_ms = self.now_ms();
                let Some(p) = self.nodes[to as usize].picker.as_mut() else {
                    return;
                };
                let mut interesting = false;
                for (blob, index) in located {
                    let _ = p.peer_has(&from, &blob, index);
                    interesting |= p.is_wanted(&blob, index);
                }
                if interesting && p.peer_open(&from, now_ms) {
                    self.pick(to);
                }
            }
            Msg::Cancel { id } => {
                let n = &mut self.nodes[to as usize];
                if n.uploader.cancel(&from, id) {
                    n.inbound.remove(&(from, id));
                }
            }
        }
    }

    fn arrive(&mut self, node: u32, from: Option<u32>, chunk: u32) {
        if !self.nodes[node as usize].alive {
            return;
        }
        if let Some(src) = from {
            if !self.nodes[src as usize].alive {
                // Its last bytes never came; `leave` accounted for it.
                return;
            }
        }
        let len = self.chunk_len(chunk);
        let one_way = self.one_way();
        let n = &mut self.nodes[node as usize];
        let was = n.chunks[chunk as usize];
        if let Some(c) = n.arriving.get_mut(&chunk) {
            *c -= 1;
            if *c == 0 {
                n.arriving.remove(&chunk);
            }
        }
        if n.chunks[chunk as usize] == Chunk::Arriving {
            n.chunks[chunk as usize] = Chunk::Received;
        }
        // Copies relayed while this one arrived complete now.
        for h in n.held_uploads.remove(&chunk).unwrap_or_default() {
            self.push(
                self.now + one_way,
                Event::Arrive {
                    node: h.to,
                    from: Some(node),
                    chunk,
                },
            );
            let _ = h.id;
        }
        if let Some(src) = from {
            self.nodes[node as usize].bytes_in += len;
            if let Some(sent) = self.take_request(node, src, chunk) {
                let elapsed_ms = (self.now - sent).div_ceil(1000);
                let rtt_us = self.cfg.rtt_us
                    + self.net.queueing_us(node as usize, src as usize)
                    + self.net.queueing_us(src as usize, node as usize);
                let n = &mut self.nodes[node as usize];
                let est = n.peer_rate.entry(src).or_default();
                est.sample(len, elapsed_ms);
                if let (Depth::Bdp(max), Some(rate), Some(p)) =
                    (self.cfg.depth, est.rate(), n.picker.as_mut())
                {
                    let d = pipeline_depth(rate, rtt_us.div_ceil(1000), CHUNK, 1, max);
                    p.set_peer_limit(&src, Some(d));
                }
            }
            let now_ms = self.now_ms();
            if let Some(p) = self.nodes[node as usize].picker.as_mut() {
                p.peer_progressed(&src, now_ms);
            }
        }
        if matches!(was, Chunk::Held | Chunk::Received) {
            self.duplicates += 1;
            self.pick(node);
            return;
        }
        self.push(
            self.now + self.cfg.cpu_us_per_chunk,
            Event::Verified { node, from, chunk },
        );
    }

    fn verified(&mut self, node: u32, from: Option<u32>, chunk: u32) {
        let b = self.blob_of[chunk as usize] as usize;
        let (blob, index) = self.locate(chunk);
        let first = self.blobs[b].first;
        let count = self.blobs[b].count;
        let n = &mut self.nodes[node as usize];
        if !n.alive || n.chunks[chunk as usize] == Chunk::Held {
            return;
        }
        n.chunks[chunk as usize] = Chunk::Held;
        n.held_count += 1;
        // The consume cursor: how far in-order reading (import) could go.
        let mut cursor = n.cursors[b];
        while cursor < count && n.chunks[(first + cursor) as usize] == Chunk::Held {
            cursor += 1;
        }
        n.cursors[b] = cursor;
        let mut others = Vec::new();
        if let Some(p) = n.picker.as_mut() {
            others = p
                .chunk_received(&blob, index, from.as_ref())
                .unwrap_or_default();
            let _ = p.set_cursor(&blob, cursor);
        }
        let done = n.held_count == self.total;
        if done {
            n.done_us = Some(self.now);
            self.remaining -= 1;
        }
        if node == 0 {
            self.digest_known(chunk);
        }
        if self.cfg.cancel {
            for r in others {
                let id = self.nodes[node as usize]
                    .requests
                    .iter()
                    .find(|(_, (p, c, _))| *p == r.peer && *c == chunk)
                    .map(|(id, _)| *id);
                if let Some(id) = id {
                    self.nodes[node as usize].requests.remove(&id);
                    self.send(node, r.peer, Msg::Cancel { id });
                }
            }
        }
        if !self.cfg.cut_through {
            self.queue_have(node, chunk);
        }
        self.pick(node);
    }

    fn queue_have(&mut self, node: u32, chunk: u32) {
        if self.nodes[node as usize].watchers.is_empty() {
            return;
        }
        let interval = self.cfg.have_interval_us;
        if interval == 0 {
            self.nodes[node as usize].pending_have.push(chunk);
            self.flush_haves(node);
            return;
        }
        let n = &mut self.nodes[node as usize];
        n.pending_have.push(chunk);
        if n.flush_at.is_none() {
            // The node's per-stream 200 ms ticker, at this node's phase.
            let phase = n.have_phase_us;
            let k = (self.now.saturating_sub(phase)) / interval + 1;
            let at = phase + k * interval;
            n.flush_at = Some(at);
            self.push(at, Event::HaveFlush(node));
        }
    }

    fn flush_haves(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        if !n.alive || n.pending_have.is_empty() {
            return;
        }
        let list: Rc<[u32]> = std::mem::take(&mut n.pending_have).into();
        // Grouped by delay: one event per group rather than per peer.
        let mut groups: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for &w in &self.nodes[node as usize].watchers {
            let peer = &self.nodes[w as usize];
            if peer.alive && peer.done_us.is_none() {
                let delay = self.one_way() + self.net.queueing_us(node as usize, w as usize);
                groups.entry(delay).or_default().push(w);
            }
        }
        for (delay, to) in groups {
            self.push(
                self.now + delay,
                Event::Haves {
                    from: node,
                    to,
                    list: list.clone(),
                },
            );
        }
    }

    fn pick(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        if !n.alive || n.done_us.is_some() {
            return;
        }
        let now_ms = self.now / 1000;
        let Some(p) = n.picker.as_mut() else {
            return;
        };
        let reqs = p.next_requests(now_ms);
        if !n.ticking && !reqs.is_empty() {
            n.ticking = true;
            self.push(self.now + 250_000, Event::Tick(node));
        }
        for r in reqs {
            let b = self
                .blobs
                .iter()
                .position(|x| x.digest == r.blob)
                .expect("our blob");
            let chunk = self.blobs[b].first + r.index;
            let n = &mut self.nodes[node as usize];
            n.next_id += 1;
            let id = n.next_id;
            n.requests.insert(id, (r.peer, chunk, self.now));
            self.send(node, r.peer, Msg::Request { id, chunk });
        }
    }

    fn tick(&mut self, node: u32) {
        let now_ms = self.now_ms();
        let n = &mut self.nodes[node as usize];
        n.ticking = false;
        if !n.alive || n.done_us.is_some() {
            return;
        }
        let Some(p) = n.picker.as_mut() else {
            return;
        };
        let mut stalled: Vec<u32> = p.expire(now_ms).into_iter().map(|r| r.peer).collect();
        stalled.sort_unstable();
        stalled.dedup();
        for peer in stalled {
            // As the node: drop the peer for 30 s.
            self.drop_peer(node, peer);
            self.push(self.now + 30_000_000, Event::Readd { node, peer });
        }
        let n = &mut self.nodes[node as usize];
        n.ticking = true;
        self.push(self.now + 250_000, Event::Tick(node));
        self.pick(node);
    }

    fn drop_peer(&mut self, node: u32, peer: u32) {
        let n = &mut self.nodes[node as usize];
        n.dropped.insert(peer);
        if let Some(p) = n.picker.as_mut() {
            p.remove_peer(&peer);
        }
        n.requests.retain(|_, (p, _, _)| *p != peer);
    }

    fn leave(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        if !n.alive || node == 0 {
            return;
        }
        n.alive = false;
        if n.done_us.is_none() {
            self.remaining -= 1;
        }
        let mut flows: Vec<FlowId> = self.net.uploads(node as usize).to_vec();
        flows.extend_from_slice(self.net.downloads(node as usize));
        let mut lost = Vec::new();
        for id in flows {
            self.net.remove(self.now, id);
            if let Some(Carry::Peer {
                from,
                to,
                id,
                chunk,
            }) = self.carry.get_mut(id).and_then(|c| c.take())
            {
                if from == node {
                    lost.push((to, chunk));
                } else {
                    self.nodes[from as usize].uploader.finished(&to, id);
                }
            }
        }
        let held = std::mem::take(&mut self.nodes[node as usize].held_uploads);
        for (chunk, hs) in held {
            for h in hs {
                lost.push((h.to, chunk));
            }
        }
        for (to, chunk) in lost {
            self.lose_arrival(to, chunk);
        }
        // Its downloaders notice the closed connection.
        let watchers = self.nodes[node as usize].watchers.clone();
        for w in watchers {
            if self.nodes[w as usize].alive {
                self.drop_peer(w, node);
                self.pick(w);
            }
        }
        // Its servers free whatever it had queued or running.
        let peers = self.nodes[node as usize].peers.clone();
        for p in peers {
            let s = &mut self.nodes[p as usize];
            if s.alive {
                s.uploader.peer_left(&node);
                s.inbound.retain(|(q, _), _| *q != node);
                self.drain_uploader(p);
            }
        }
    }

    /// An incoming copy of `chunk` at `node` will never complete; if it was
    /// the only one, copies `node` relays from it fail too (cut-through).
    fn lose_arrival(&mut self, node: u32, chunk: u32) {
        let mut work = vec![node];
        while let Some(node) = work.pop() {
            let n = &mut self.nodes[node as usize];
            if let Some(c) = n.arriving.get_mut(&chunk) {
                *c -= 1;
                if *c == 0 {
                    n.arriving.remove(&chunk);
                }
            }
            if n.arriving.contains_key(&chunk) || n.chunks[chunk as usize] != Chunk::Arriving {
                continue;
            }
            n.chunks[chunk as usize] = Chunk::Missing;
            let mut failed: Vec<(u32, u64)> = n
                .held_uploads
                .remove(&chunk)
                .unwrap_or_default()
                .into_iter()
                .map(|h| (h.to, h.id))
                .collect();
            let ups: Vec<FlowId> = self.net.uploads(node as usize).to_vec();
            for id in ups {
                if let Some(Carry::Peer {
                    to,
                    id: req,
                    chunk: c,
                    ..
                }) = self.carry.get(id).copied().flatten()
                {
                    if c == chunk {
                        self.carry[id] = None;
                        self.net.remove(self.now, id);
                        self.nodes[node as usize].uploader.finished(&to, req);
                        failed.push((to, req));
                    }
                }
            }
            self.drain_uploader(node);
            let (blob, index) = self.locate(chunk);
            let now_ms = self.now_ms();
            for (to, _) in failed {
                if !self.nodes[to as usize].alive {
                    continue;
                }
                self.take_request(to, node, chunk);
                if let Some(p) = self.nodes[to as usize].picker.as_mut() {
                    p.request_failed(&node, &blob, index, FailReason::NotHave, now_ms);
                }
                work.push(to);
                self.pick(to);
            }
        }
    }

    fn report(&self) -> Report {
        let left: Vec<bool> = self.nodes.iter().map(|n| !n.alive).collect();
        let complete = self.nodes.iter().all(|n| !n.alive || n.done_us.is_some());
        Report {
            done_us: self.nodes.iter().map(|n| n.done_us).collect(),
            slow: self
                .nodes
                .iter()
                .map(|n| n.rate < self.cfg.node_rate)
                .collect(),
            left,
            bytes_in: self.nodes.iter().map(|n| n.bytes_in).collect(),
            bytes_out: self.nodes.iter().map(|n| n.bytes_out).collect(),
            duplicates: self.duplicates,
            refusals: self.refusals,
            events: self.processed,
            image_bytes: self.cfg.image_bytes(),
            complete,
        }
    }
}
