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
//! Node 0 is the gateway: after `gateway_start_us` it streams the image's
//! layers from the cloud registry in order, one 1 MiB chunk after the
//! other, at the smaller of the cloud link's rate and its own downlink's
//! share, and serves only chunks it already has (with cut-through: has
//! begun to receive). It never downloads from peers (the node marks its
//! whole registry-pull plan as held), and reports done `gateway_tail_us`
//! after its last chunk. Every other node starts at a random time in
//! `start_us` and downloads from a bounded random set of peers
//! (`max_download_peers`, as the node's `SwarmConfig`); the gateway
//! accepts at most `gateway_peers` of them (the node's `max_connections`).
//! With super-seeding offers the gateway advertises each chunk to one
//! started requester in turn, and to all once the offer lapsed unfetched.
//! Chunk digests reach downloaders by gossip (through the gateway's uplink
//! queue, plus mesh hops beyond its peers) and are read on a coordinator
//! tick (`digest_tick_us`). Messages (requests, refusals, `Have`,
//! `Cancel`) take half the RTT plus the queue of every busy link they
//! cross (what its flows have left to send, at most `queue_us`); a
//! server answers one requester's requests in order (`stream_order`); a
//! chunk takes its flow's transfer time plus half the RTT, then
//! `cpu_us_per_chunk` to be verified before it is held, advertised and
//! served. Link rates carry payload at `wire_efficiency`. With
//! `machine_cores`, all nodes share one machine's CPU: the sum of all
//! flow rates is capped at cores / `cpu_s_per_mb`. With cut-through relay
//! a node advertises and serves a chunk as soon as it starts to arrive; a
//! relayed copy cannot complete before the relay's own copy has. Stalls
//! expire requests as in the node (the peer is dropped for 30 s).
//! docs/SIMULATOR.md lists each calibrated figure and where it came from.
//!
//! ## Non-goals
//!
//! Packet-level TCP (slow start, loss, ACK clocking), discovery and
//! connection set-up (peer sets exist when a node starts), one picker per
//! layer (the node runs a download, with its own request limits, per
//! blob; here one picker spans the image), import/decompression
//! (`--import none`), replacing peers lost to churn.

pub mod link;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::rc::Rc;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::address::Digest;
use crate::bitfield::Bitfield;
use crate::chunkmap::ChunkSize;
use crate::picker::{FailReason, Picker, PickerConfig};
use crate::upload::{pipeline_depth, Action, Ask, Refusal, UploadConfig, Uploader};

use link::{FlowId, Network};

/// 1 MiB, the node's chunk size.
/// The chunk size of the calibration runs.
const CHUNK: u64 = 1 << 20;
/// How often the gateway re-checks its offers without a store event (the
/// node's `HAVE_RECHECK`).
const OFFER_RECHECK_US: u64 = 1_000_000;

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
    /// Chunk size in bytes (a power of two, 64 KiB to 16 MiB). The
    /// calibration runs used 1 MiB; the node's default is 512 KiB since.
    pub chunk_bytes: u64,
    /// Node link rate (both directions), bytes per second.
    pub node_rate: f64,
    /// Link rate of the slow nodes, bytes per second.
    pub slow_rate: f64,
    /// Fraction of non-gateway nodes on slow links.
    pub slow_fraction: f64,
    /// Upload slots of the slow nodes (`None`: as every node's), so that
    /// each of their uploads runs at a useful rate.
    pub slow_slots: Option<usize>,
    /// Cloud link (registry to gateway) rate, bytes per second.
    pub cloud_rate: f64,
    /// Round trip between two nodes without queueing, microseconds.
    pub rtt_us: u64,
    /// Round trip from the gateway to the registry (per layer request).
    pub cloud_rtt_us: u64,
    /// The standing queue the registry's flow keeps on the gateway's
    /// downlink (loss-based TCP from outside; the nodes' own congestion
    /// control cannot shrink it).
    pub cloud_queue_us: u64,
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

    // ------------------------------------------------ calibration costs
    /// The share of a shaped link's rate that carries payload: `tbf` counts
    /// every frame's Ethernet, IP and TCP headers (66 B per 1448 B
    /// segment), noise and yamux add a little. Applied to every link rate.
    pub wire_efficiency: f64,
    /// Deploy to the gateway's first registry request (µs): the release
    /// gossiped and accepted, the gateway elected, the manifest resolved
    /// (also the testnet watcher's lag in seeing a node done).
    pub gateway_start_us: u64,
    /// The gateway's last chunk held to its release reported done (µs).
    pub gateway_tail_us: u64,
    /// Every other node starts downloading at a uniformly random time in
    /// this range after deploy (µs): release gossip, manifest and chunk
    /// map fetched, sessions opened.
    pub start_us: (u64, u64),
    /// A downloader learns the digests the gateway announces (gossip, one
    /// per chunk it pulled) on its coordinator's tick of this period, after
    /// the gossip's hops; 0: every node learns a digest the moment the
    /// gateway has it (digests travel with `Have`).
    pub digest_tick_us: u64,
    /// Super-seeding offers (the node's `exchange/offers.rs`): the gateway
    /// advertises each chunk of a layer it pulls to one started requester,
    /// in turn, and to everyone once the offer is this old (µs) and the
    /// chunk still unfetched. `None`: every chunk to everyone.
    pub offer_timeout_us: Option<u64>,
    /// Requests from one requester are answered in order on its stream (as
    /// the node's `serve.rs`): the next one reaches the upload policy only
    /// when the previous upload ended, and is then started or refused.
    /// Off, it reaches the [`Uploader`] at once (which refuses it `Busy`
    /// while that requester's upload runs, with no waiting queue).
    pub stream_order: bool,
    /// The picker's `endgame_min_age_ms`.
    pub endgame_min_age_ms: u64,
    /// A busy link's FIFO queue holds only what its flows still have to
    /// send, at most `queue_us` ([`Network::set_backlog_queues`]); off, it
    /// is always full.
    pub backlog_queues: bool,
    /// Cores shared by every node of the locality (the testnet runs all
    /// nodes on one machine); `None`: every node has a core of its own.
    pub machine_cores: Option<f64>,
    /// CPU-seconds the machine spends per MB delivered into a node (both
    /// ends' processes and the kernel's network path); with
    /// `machine_cores`, it caps the sum of all flow rates.
    pub cpu_s_per_mb: f64,
}

/// The images of the testnet's measurements (layer sizes from the
/// gateway's `blob complete` log lines, testnet/results/issue11-2026-11-30).
pub mod layouts {
    /// Issue 11's image, `testnet/single49`: 48.3 MB, one 46.4 MB layer,
    /// then the small ones in pull order (`--layout single`).
    pub fn single() -> Vec<u64> {
        vec![46_359_476, 877_759, 1_058_495, 193]
    }

    /// The testnet's own image, `testnet/img49` (`--layout base`): 54.1 MB,
    /// a 53.0 MB library layer, then busybox and the app.
    pub fn base() -> Vec<u64> {
        vec![53_039_692, 1_058_495, 193]
    }

    /// Four base layers of about equal size (`--layout spread`).
    pub fn spread() -> Vec<u64> {
        vec![
            12_000_000, 12_000_000, 12_000_000, 12_000_000, 700_000, 1_000,
        ]
    }
}

impl Default for SimConfig {
    /// Today's node (`SwarmConfig::default` and `node/src/swarm/exchange/`,
    /// main at 54b43a1) in the testnet's locality, calibrated
    /// (docs/SIMULATOR.md, "Calibration"): 100 Mbit/s node links, a
    /// 200 Mbit/s cloud link, `tbf` queues of 100 ms; three upload slots,
    /// none waiting, requests answered in order per stream; two requests
    /// per peer and three in all; `Have` at once; `Cancel`; endgame
    /// duplicates after 750 ms; super-seeding offers; digests learnt by
    /// gossip on a 250 ms tick; no cut-through. Each node has its own core
    /// ([`SimConfig::testnet_machine`] shares two).
    fn default() -> Self {
        SimConfig {
            nodes: 21,
            layers: layouts::single(),
            chunk_bytes: CHUNK,
            node_rate: 12_500_000.0,
            slow_rate: 1_250_000.0,
            slow_fraction: 0.0,
            slow_slots: None,
            cloud_rate: 25_000_000.0,
            // Two veths and a bridge on one host.
            rtt_us: 200,
            cloud_rtt_us: 1_000,
            cloud_queue_us: calibration::QUEUE_US,
            queue_us: calibration::QUEUE_US,
            // sha256 of 1 MiB (~3 ms on the testnet's cores) and a write.
            cpu_us_per_chunk: 4_000,
            // The node's `Have`s go out on every store event.
            have_interval_us: 0,
            upload: UploadConfig {
                slots: 3,
                queue: 0,
                origin_queue: 0,
                sparing_ms: Some(60_000),
                spare_retry_ms: None,
                spare_min_len: 0,
            },
            depth: Depth::Fixed(2),
            total_requests: Some(3),
            max_download_peers: 32,
            gateway_peers: 256,
            cut_through: false,
            cancel: true,
            // The session maps `TryElsewhere` to `FailReason::TryElsewhere`.
            elsewhere_backoff: true,
            window_chunks: 8,
            endgame_chunks: 8,
            churn_fraction: 0.0,
            churn_window_us: (1_000_000, 3_000_000),
            time_limit_us: 600_000_000,
            seed: 1,
            wire_efficiency: calibration::WIRE_EFFICIENCY,
            gateway_start_us: calibration::GATEWAY_START_US,
            gateway_tail_us: calibration::GATEWAY_TAIL_US,
            start_us: calibration::START_US,
            digest_tick_us: 250_000,
            offer_timeout_us: Some(1_000_000),
            stream_order: true,
            endgame_min_age_ms: 750,
            backlog_queues: true,
            machine_cores: None,
            cpu_s_per_mb: calibration::CPU_S_PER_MB,
        }
    }
}

/// The fitted costs of the testnet (docs/SIMULATOR.md, "Calibration", says
/// where each figure comes from).
pub mod calibration {
    /// Payload share of a `tbf` rate: the gateway's lone pulls moved
    /// 48.30 MB in 4.056 s and 54.10 MB in 4.545 s, a marginal 94.9 Mbit/s
    /// of payload on a 100 Mbit/s shaper; TCP/IP/Ethernet headers alone
    /// leave 1448/1514 = 95.6 %.
    pub const WIRE_EFFICIENCY: f64 = 0.95;
    /// Deploy to the gateway's first registry byte: `seconds -
    /// node_seconds` of the lone gateway, 66-75 ms (deploy to the release
    /// accepted, plus the watcher's lag), and 17 ms from the release
    /// accepted to `gateway pulling` in its log.
    pub const GATEWAY_START_US: u64 = 85_000;
    /// The gateway's last layer verified to `release done`: 155 ms
    /// (single) and 255 ms (base) in its N = 1 logs.
    pub const GATEWAY_TAIL_US: u64 = 200_000;
    /// When the other nodes start to download: their logs put the
    /// manifest and config blobs at 0.18-0.26 s after the gateway accepted
    /// the release (N = 2-10, both layouts), which is 0.07 s after deploy;
    /// the big layer's download follows within a chunk-map poll (50 ms).
    pub const START_US: (u64, u64) = (300_000, 400_000);
    /// The same at N = 21 on the 2-core machine: manifests at 0.84-1.12 s
    /// after the gateway's acceptance (`single-21-none` logs).
    pub const START_US_21: (u64, u64) = (1_000_000, 1_200_000);
    /// The same for today's node (`current`): the first blob verified
    /// 0.22-0.65 s (base, 2 runs) and 0.59-1.0 s (single, 1 run) after the
    /// gateway accepted the release (testnet/results/sim-current-2026-12-03,
    /// `*-shared*` logs), plus the deploy's 0.07 s.
    pub const START_US_21_CURRENT: (u64, u64) = (300_000, 1_000_000);
    /// The standing queue of a saturated 100 ms `tbf` FIFO (fitted, 70-90
    /// ms all within 15 %): a CUBIC flow backs off to 70 % of its window at
    /// each loss, so the queue swings between 70 and 100 ms. A request
    /// behind the registry's flow at the gateway waits this long; with
    /// two requests per peer, a lone peer then gets 1 MiB per ~95 ms
    /// (measured: 45 chunks in 4.26 s), not per 88 ms.
    pub const QUEUE_US: u64 = 80_000;
    /// Machine CPU-seconds per MB delivered into a node: 21 nodes, 100 %
    /// of 2 cores for 11.0 s (22 CPU-s, 18.3 of them in the processes)
    /// for 21 x 51 MB received.
    pub const CPU_S_PER_MB: f64 = 0.0205;
    /// The testnet machine's cores.
    pub const TESTNET_CORES: f64 = 2.0;

    /// T(N) measured in the testnet, seconds: (layout, N, T), from
    /// testnet/results/issue11-2026-11-30 (`single-none`, `base-none`,
    /// `single-21-none`; the last node's `seconds`, which include up to
    /// one watcher poll gap, 100-220 ms). No N = 21 run of `base` exists.
    pub const MEASURED: [(&str, usize, f64); 9] = [
        ("single", 1, 4.28),
        ("single", 2, 4.60),
        ("single", 5, 5.53),
        ("single", 10, 6.59),
        ("single", 21, 11.00),
        ("base", 1, 4.89),
        ("base", 2, 5.00),
        ("base", 5, 6.33),
        ("base", 10, 7.01),
    ];

    /// T(N) of today's node (the `current` preset: paced uploads, 512 KiB
    /// chunks, cut-through relay, 4 requests, the origin's queue), seconds,
    /// measured 2026-12-03 with the same shaping: means of the runs in
    /// testnet/results/gateway-busy-2026-12-03 and
    /// testnet/results/sim-current-2026-12-03 (single: N = 1 over 17
    /// runs, 2 over 2, 5 over 7, 10 over 17, 21 over 3; base: 3, 1, 3, 1
    /// and 2 runs). The N = 21 runs kept the nodes' data on the host's
    /// root filesystem (`--shared-data-fs`), as the runs [`MEASURED`]
    /// comes from did: on the loop-mounted ext4 the testnet gives each run
    /// by default, the loop device's own CPU (buffered, as it was then)
    /// took T(21) to 14.8-17.7 s (single) and 17.6-20.5 s (base) on the 2
    /// busy cores, a cost of the emulation this model leaves out. With
    /// direct I/O (the testnet's loop device since) single took 12.9-13.0 s.
    pub const MEASURED_CURRENT: [(&str, usize, f64); 10] = [
        ("single", 1, 4.30),
        ("single", 2, 4.66),
        ("single", 5, 4.75),
        ("single", 10, 5.54),
        ("single", 21, 11.74),
        ("base", 1, 4.90),
        ("base", 2, 5.10),
        ("base", 5, 5.09),
        ("base", 10, 5.91),
        ("base", 21, 10.99),
    ];

    /// The runs averaged per calibration point (seeds 1..=SEEDS): one
    /// testnet run is one draw, the sim's spread over seeds is ~5 %.
    pub const SEEDS: u64 = 3;

    /// The simulated counterpart of a measurement: `base` (today's node,
    /// calibrated) with the layout's image, on the testnet's machine.
    pub fn testnet_run(base: &super::SimConfig, layout: &str, nodes: usize) -> super::SimConfig {
        testnet_run_starting(base, layout, nodes, START_US_21)
    }

    /// [`testnet_run`] with the nodes' start window at N >= 21 given
    /// ([`START_US_21`] or [`START_US_21_CURRENT`]).
    pub fn testnet_run_starting(
        base: &super::SimConfig,
        layout: &str,
        nodes: usize,
        start_21: (u64, u64),
    ) -> super::SimConfig {
        let layers = match layout {
            "base" => super::layouts::base(),
            _ => super::layouts::single(),
        };
        let start_us = if nodes >= 21 { start_21 } else { base.start_us };
        super::SimConfig {
            nodes,
            layers,
            start_us,
            ..base.clone()
        }
        .testnet_machine()
    }

    /// Mean T(N) in seconds over [`SEEDS`] seeds, `None` if a run did not
    /// complete.
    pub fn mean_t(cfg: &super::SimConfig) -> Option<f64> {
        let mut sum = 0.0;
        for seed in 1..=SEEDS {
            let r = super::run(&super::SimConfig {
                seed,
                ..cfg.clone()
            });
            sum += r.t_last()? as f64 / 1e6;
        }
        Some(sum / SEEDS as f64)
    }
}

impl SimConfig {
    /// Today's node with every mechanism this simulator found to reach
    /// the physical limit (docs/SIMULATOR.md says what each buys):
    /// cut-through relay, low-delay (LEDBAT-like) uploads that keep the
    /// standing queue near 5 ms, requests sized to the bandwidth-delay
    /// product (per peer from its rate, over all peers the downlink's plus
    /// one), digests that travel with the `Have`, seed sparing without
    /// offers, endgame duplicates at once. Calibrated costs are kept.
    pub fn tuned(self) -> Self {
        SimConfig {
            upload: UploadConfig {
                slots: 3,
                queue: 0,
                origin_queue: 0,
                sparing_ms: Some(60_000),
                spare_retry_ms: None,
                spare_min_len: 0,
            },
            have_interval_us: 0,
            depth: Depth::Bdp(4),
            total_requests: None,
            cut_through: true,
            cancel: true,
            elsewhere_backoff: true,
            queue_us: 5_000,
            // Digests travel with the `Have` (or the chunk map), not by
            // gossip read on a tick.
            digest_tick_us: 0,
            // Seed sparing alone spreads the gateway's chunks.
            offer_timeout_us: None,
            endgame_min_age_ms: 0,
            ..self
        }
    }

    /// The node as it is now, from the calibrated one: uploads paced a
    /// little under the uplink (`--max-upload-rate`, the testnet passes
    /// 92 %), so a node's uplink keeps only a few ms of standing queue
    /// (the registry's flow into the gateway keeps its calibrated queue);
    /// 512 KiB chunks; cut-through relay (`node/src/swarm/exchange/relay.rs`:
    /// a chunk advertised and served as soon as its answer begins to
    /// arrive, no relayed copy complete before the relay's own); since
    /// 2026-12-03, four requests per download, digests read as the store
    /// learns them (no tick), and up to three requests waiting for a
    /// super-seeding origin's chunks; the node's upload policy exactly
    /// ([`UploadConfig::default`], which the node serves by since
    /// 2026-12-03: the origin queue, the sparing retry, small chunks never
    /// spared). Checked against the testnet in docs/SIMULATOR.md.
    pub fn current(self) -> Self {
        SimConfig {
            queue_us: 5_000,
            chunk_bytes: 512 << 10,
            cut_through: true,
            total_requests: Some(4),
            digest_tick_us: 0,
            // The node's own upload policy (`SwarmConfig::upload_policy`).
            upload: UploadConfig::default(),
            ..self
        }
    }

    /// All nodes on the testnet's 2-core machine.
    pub fn testnet_machine(self) -> Self {
        SimConfig {
            machine_cores: Some(calibration::TESTNET_CORES),
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
    /// When the gateway held the whole image (its registry pull ended), µs.
    pub gateway_pull_us: Option<u64>,
    /// The machine's CPU-seconds for the bytes moved, at
    /// [`SimConfig::cpu_s_per_mb`].
    pub cpu_seconds: f64,
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
    /// A node begins to download (the gateway: to pull).
    Start(u32),
    /// A downloader's coordinator reads the digests gossip brought.
    DigestTick(u32),
    /// The gateway re-checks its super-seeding offers.
    OfferTick,
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
    /// Digests known per blob (with a digest tick).
    digests: Vec<u32>,
    /// On a slow link.
    slow: bool,
    /// Started downloading (sessions open, requests may go out).
    started: bool,
    /// Extra digest gossip delay for this node (relay hops), µs.
    digest_extra_us: u64,
    /// Stream order: requesters whose upload from this node runs now.
    streaming: BTreeSet<u32>,
    /// Stream order: requests behind that upload, per requester.
    stream_q: BTreeMap<u32, VecDeque<(u64, u32)>>,
}

/// The gateway's super-seeding offers (the node's `exchange/offers.rs`).
#[derive(Default)]
struct Offers {
    /// Started requesters that have not finished or left, sorted.
    bound: Vec<u32>,
    /// Chunk → the requester it was offered to, and when.
    assigned: Vec<Option<(u32, u64)>>,
    /// Round-robin position in `bound`.
    next: usize,
    /// Chunks advertised to each requester.
    sent: BTreeMap<u32, Vec<bool>>,
    /// Chunks the gateway uploaded to anyone.
    fetched: Vec<bool>,
    /// The recheck tick is scheduled.
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
    /// Per chunk: when its digest's gossip reaches the gateway's own
    /// peers (`u64::MAX`: not yet announced).
    digest_at: Vec<u64>,
    offers: Offers,
    gateway_pull_us: Option<u64>,
    cloud_bytes: u64,
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
        let chunk = cfg.chunk_bytes;
        let chunk_size = ChunkSize::new(chunk as u32).expect("a valid chunk size");
        let mut blobs = Vec::new();
        let mut blob_of = Vec::new();
        let mut first = 0u32;
        for (i, &size) in cfg.layers.iter().enumerate() {
            let count = size.div_ceil(chunk) as u32;
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
            .map(|s| cfg.wire_efficiency * if *s { cfg.slow_rate } else { cfg.node_rate })
            .collect();
        let mut net = Network::new(&rates, &rates, cfg.queue_us);
        net.set_cpu_budget(cfg.machine_cores.map(|c| c / cfg.cpu_s_per_mb * 1e6));
        net.set_backlog_queues(cfg.backlog_queues);
        net.set_external_queue_us(cfg.cloud_queue_us);
        // Digest gossip: the gateway publishes to every peer it is
        // connected to (gossipsub's flood publishing); the rest hear it
        // through the mesh (degree 6), one busy relay per hop.
        let far_hops = if n - 1 > cfg.gateway_peers {
            let fan = (n - 1) as f64 / cfg.gateway_peers as f64;
            fan.log(6.0).ceil() as u64
        } else {
            0
        };
        let far_extra_us = far_hops * (cfg.rtt_us / 2 + cfg.queue_us);

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
        let mut starts: Vec<u64> = Vec::with_capacity(n);
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let picker = (i > 0).then(|| {
                    let mut p = Picker::new(PickerConfig {
                        max_in_flight_per_peer: max_depth,
                        window_chunks: cfg.window_chunks,
                        endgame_threshold: cfg.endgame_chunks,
                        max_requests_per_chunk: 2,
                        endgame_min_age_ms: cfg.endgame_min_age_ms,
                        endgame_begun_chunk_times: PickerConfig::default()
                            .endgame_begun_chunk_times,
                        seed: cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        // The node's defaults: 10 s + 1 MiB per 4 s.
                        timeout_base_ms: 10_000,
                        timeout_ms_per_mib: 4_000,
                        busy_backoff_ms: 250,
                        spare_patience_ms: PickerConfig::default().spare_patience_ms,
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
                            Some(pipeline_depth(rates[i] as u64, rtt_ms, chunk, 1, max) + 1)
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
                let mut upload = cfg.upload.clone();
                if slow[i] {
                    upload.slots = cfg.slow_slots.unwrap_or(upload.slots);
                }
                let uploader = Uploader::new(upload);
                let start_at = if i == 0 {
                    0
                } else if cfg.start_us.1 > cfg.start_us.0 {
                    rng.gen_range(cfg.start_us.0..cfg.start_us.1)
                } else {
                    cfg.start_us.0
                };
                starts.push(start_at);
                let digest_extra_us = if peers[i].contains(&0) {
                    0
                } else {
                    far_extra_us
                };
                Node {
                    alive: true,
                    slow: slow[i],
                    started: i == 0,
                    digest_extra_us,
                    streaming: BTreeSet::new(),
                    stream_q: BTreeMap::new(),
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
                    digests: vec![0; blobs.len()],
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
            digest_at: vec![u64::MAX; total as usize],
            offers: Offers {
                assigned: vec![None; total as usize],
                fetched: vec![false; total as usize],
                ..Offers::default()
            },
            gateway_pull_us: None,
            cloud_bytes: 0,
            cfg,
        };
        for (i, at) in starts.into_iter().enumerate().skip(1) {
            sim.push(at, Event::Start(i as u32));
        }
        // Churn.
        if n > 1 {
            let leave = ((n - 1) as f64 * sim.cfg.churn_fraction).round() as usize;
            let (a, b) = sim.cfg.churn_window_us;
            for i in sample(&mut rng, n - 1, leave.min(n - 1)) {
                let at = if b > a { rng.gen_range(a..b) } else { a };
                sim.push(at, Event::Leave(i as u32 + 1));
            }
        }
        let at = sim.cfg.gateway_start_us + sim.cfg.cloud_rtt_us;
        sim.push(at, Event::CloudLayer);
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
        let delay = self.one_way() + self.net.queueing_us(self.now, from as usize, to as usize);
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
            Event::Start(node) => self.start(node),
            Event::DigestTick(node) => self.digest_tick(node),
            Event::OfferTick => {
                self.offers.ticking = false;
                if self.nodes[0].alive && !self.offers.bound.is_empty() {
                    self.gateway_haves(None);
                    self.offers.ticking = true;
                    self.push(self.now + OFFER_RECHECK_US, Event::OfferTick);
                }
            }
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

    // ------------------------------------------------- start and digests

    fn start(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        if !n.alive || n.started {
            return;
        }
        n.started = true;
        if self.cfg.digest_tick_us > 0 {
            self.digest_tick(node);
        }
        if self.cfg.offer_timeout_us.is_some()
            && self.nodes[0].alive
            && self.nodes[node as usize].peers.contains(&0)
        {
            // Its `Hello` binds it to the gateway's offers.
            if let Err(at) = self.offers.bound.binary_search(&node) {
                self.offers.bound.insert(at, node);
            }
            self.offers
                .sent
                .insert(node, vec![false; self.total as usize]);
            self.gateway_haves(Some(node));
            if !self.offers.ticking {
                self.offers.ticking = true;
                self.push(self.now + OFFER_RECHECK_US, Event::OfferTick);
            }
        }
        self.pick(node);
    }

    /// The coordinator's tick: digests whose gossip has arrived become
    /// requestable.
    fn digest_tick(&mut self, node: u32) {
        let n = &self.nodes[node as usize];
        if !n.alive || n.done_us.is_some() {
            return;
        }
        let extra = n.digest_extra_us;
        let mut changed = false;
        let mut all = true;
        for b in 0..self.blobs.len() {
            let (first, count, digest) = (
                self.blobs[b].first,
                self.blobs[b].count,
                self.blobs[b].digest,
            );
            let mut k = self.nodes[node as usize].digests[b];
            while k < count
                && self.digest_at[(first + k) as usize].saturating_add(extra) <= self.now
            {
                k += 1;
            }
            all &= k == count;
            let n = &mut self.nodes[node as usize];
            if k > n.digests[b] {
                n.digests[b] = k;
                changed = true;
                if let Some(p) = n.picker.as_mut() {
                    let _ = p.set_digests_known(&digest, k);
                }
            }
        }
        if !all {
            self.push(self.now + self.cfg.digest_tick_us, Event::DigestTick(node));
        }
        if changed {
            self.pick(node);
        }
    }

    /// The gateway's super-seeding: advertises to `only` (or every bound
    /// requester) the chunks offered to it and those whose offer lapsed,
    /// assigning chunks not offered yet in turn (`offers::Offers::visible`).
    fn gateway_haves(&mut self, only: Option<u32>) {
        let Some(timeout) = self.cfg.offer_timeout_us else {
            return;
        };
        if self.offers.bound.is_empty() || !self.nodes[0].alive {
            return;
        }
        let now = self.now;
        let held: Vec<u32> = (0..self.total).filter(|c| self.advertises(0, *c)).collect();
        let o = &mut self.offers;
        for &c in &held {
            let live = matches!(o.assigned[c as usize], Some((to, _)) if o.bound.binary_search(&to).is_ok());
            if !live {
                let to = o.bound[o.next % o.bound.len()];
                o.next = o.next.wrapping_add(1);
                o.assigned[c as usize] = Some((to, now));
            }
        }
        let targets: Vec<u32> = match only {
            Some(w) => vec![w],
            None => o.bound.clone(),
        };
        let mut out = Vec::new();
        for w in targets {
            let Some(sent) = o.sent.get_mut(&w) else {
                continue;
            };
            let mut list = Vec::new();
            for &c in &held {
                let (to, at) = o.assigned[c as usize].expect("assigned above");
                let lapsed = now.saturating_sub(at) >= timeout && !o.fetched[c as usize];
                if (to == w || lapsed) && !sent[c as usize] {
                    sent[c as usize] = true;
                    list.push(c);
                }
            }
            if !list.is_empty() {
                out.push((w, list));
            }
        }
        for (w, list) in out {
            self.send(0, w, Msg::Have(list.into()));
        }
    }

    /// A requester's streams to the gateway ended (it finished or left).
    fn unbind(&mut self, node: u32) {
        if let Ok(at) = self.offers.bound.binary_search(&node) {
            self.offers.bound.remove(at);
            self.offers.sent.remove(&node);
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
        let c = self.cfg.chunk_bytes;
        (b.size - i * c).min(c)
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
                self.announce(node, chunk);
            }
        }
    }

    /// Every node learns that `chunk`'s digest is known (the gateway read
    /// it); the chunk becomes requestable.
    fn digest_known(&mut self, chunk: u32) {
        if self.cfg.digest_tick_us > 0 {
            // Gossiped: it leaves through the gateway's uplink queue.
            let c = chunk as usize;
            if self.digest_at[c] == u64::MAX {
                let queue = self.net.up_queue_us(self.now, 0);
                self.digest_at[c] = self.now + self.one_way() + queue;
            }
            return;
        }
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
                self.cloud_bytes += self.chunk_len(chunk);
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
        self.nodes[from as usize].streaming.remove(&to);
        self.drain_uploader(from);
        self.stream_next(from, to);
    }

    /// Stream order: `peer`'s next queued request at `node` reaches the
    /// upload policy, and the ones after it while each is refused.
    fn stream_next(&mut self, node: u32, peer: u32) {
        loop {
            let n = &mut self.nodes[node as usize];
            if n.streaming.contains(&peer) {
                return;
            }
            let Some((id, chunk)) = n.stream_q.get_mut(&peer).and_then(|q| q.pop_front()) else {
                n.stream_q.remove(&peer);
                return;
            };
            self.submit_request(node, peer, id, chunk);
        }
    }

    /// A request reaches `node`'s upload policy.
    fn submit_request(&mut self, node: u32, from: u32, id: u64, chunk: u32) {
        let held = self.advertises(node, chunk);
        let (blob, index) = self.locate(chunk);
        let now_ms = self.now_ms();
        let len = self.chunk_len(chunk);
        let n = &mut self.nodes[node as usize];
        n.inbound.insert((from, id), chunk);
        // The gateway (node 0) holds every blob without downloading it.
        let ask = Ask {
            requester: from,
            request: id,
            blob,
            index,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            held,
            origin: node == 0,
        };
        n.uploader.request(now_ms, ask);
        self.drain_uploader(node);
    }

    fn drain_uploader(&mut self, node: u32) {
        while let Some(a) = self.nodes[node as usize].uploader.poll_action() {
            match a {
                Action::Send {
                    requester: peer,
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
                    if self.cfg.stream_order {
                        self.nodes[node as usize].streaming.insert(peer);
                    }
                    if node == 0 {
                        self.offers.fetched[chunk as usize] = true;
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
                    // The requester sees its answer begin (a one-way delay
                    // early: close enough for endgame's patience).
                    let now_ms = self.now_ms();
                    if let Some(p) = self.nodes[peer as usize].picker.as_mut() {
                        p.answer_began(&blob, index, &node, now_ms);
                    }
                }
                Action::Reply {
                    requester: peer,
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
                let n = &mut self.nodes[to as usize];
                if self.cfg.stream_order
                    && (n.streaming.contains(&from) || n.stream_q.contains_key(&from))
                {
                    // Behind the upload this stream is writing.
                    n.stream_q.entry(from).or_default().push_back((id, chunk));
                    return;
                }
                self.submit_request(to, from, id, chunk);
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
                if let Some(q) = n.stream_q.get_mut(&from) {
                    // Skipped when its turn comes, without an answer.
                    q.retain(|(r, _)| *r != id);
                }
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
                    + self.net.queueing_us(self.now, node as usize, src as usize)
                    + self.net.queueing_us(self.now, src as usize, node as usize);
                let n = &mut self.nodes[node as usize];
                let est = n.peer_rate.entry(src).or_default();
                est.sample(len, elapsed_ms);
                if let (Depth::Bdp(max), Some(rate), Some(p)) =
                    (self.cfg.depth, est.rate(), n.picker.as_mut())
                {
                    let d =
                        pipeline_depth(rate, rtt_us.div_ceil(1000), self.cfg.chunk_bytes, 1, max);
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
        // A CPU-bound machine verifies slower too.
        let cpu = (self.cfg.cpu_us_per_chunk as f64 / self.net.cpu_scale()) as u64;
        self.push(self.now + cpu, Event::Verified { node, from, chunk });
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
            if node == 0 {
                self.gateway_pull_us = Some(self.now);
                n.done_us = Some(self.now + self.cfg.gateway_tail_us);
            } else {
                n.done_us = Some(self.now);
            }
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
            self.announce(node, chunk);
        }
        if done && node != 0 {
            self.unbind(node);
        }
        self.pick(node);
    }

    /// `node` has `chunk` to offer: `Have` to its downloaders (the gateway
    /// with offers: to the requester it offers the chunk to).
    fn announce(&mut self, node: u32, chunk: u32) {
        if node == 0 && self.cfg.offer_timeout_us.is_some() {
            self.gateway_haves(None);
        } else {
            self.queue_have(node, chunk);
        }
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
                let delay =
                    self.one_way() + self.net.queueing_us(self.now, node as usize, w as usize);
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
        if !n.alive || !n.started || n.done_us.is_some() {
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
        self.unbind(node);
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
                    self.nodes[from as usize].streaming.remove(&to);
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
                s.streaming.remove(&node);
                s.stream_q.remove(&node);
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
                        self.nodes[node as usize].streaming.remove(&to);
                        failed.push((to, req));
                    }
                }
            }
            self.drain_uploader(node);
            for (to, _) in &failed {
                self.stream_next(node, *to);
            }
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
            slow: self.nodes.iter().map(|n| n.slow).collect(),
            left,
            bytes_in: self.nodes.iter().map(|n| n.bytes_in).collect(),
            bytes_out: self.nodes.iter().map(|n| n.bytes_out).collect(),
            duplicates: self.duplicates,
            refusals: self.refusals,
            events: self.processed,
            image_bytes: self.cfg.image_bytes(),
            complete,
            gateway_pull_us: self.gateway_pull_us,
            cpu_seconds: (self.cloud_bytes + self.nodes.iter().map(|n| n.bytes_in).sum::<u64>())
                as f64
                / 1e6
                * self.cfg.cpu_s_per_mb,
        }
    }
}
