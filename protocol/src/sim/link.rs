//! The link model: every node has an uplink and a downlink of fixed rate;
//! a transfer (a *flow*) crosses its sender's uplink and its receiver's
//! downlink, and gets an equal share of each, the smaller of the two
//! (`min(up / flows_up, down / flows_down)`, and an optional cap such as
//! the cloud link's rate). A saturated link (its flows add up to its rate)
//! has a standing FIFO queue of [`Network::queue_us`] (a loss-based TCP
//! flow fills a `tc tbf` queue until it drops; that is what a cheap switch
//! or home router does), which every small message crossing it waits
//! behind. Delay-based congestion control (LEDBAT, RFC 6817) keeps that
//! queue near its target instead: model it by a smaller `queue_us`.
//!
//! Bandwidth a flow cannot use because its other end holds it back goes to
//! its link-mates (one round of max-min fairness, see `share`). Rates
//! change only when a flow starts or ends near a flow, so a change
//! recomputes only the flows within two links of it,
//! and completions are kept in a binary heap with lazy invalidation
//! (each flow carries a version): the cost of an event does not grow with
//! the number of nodes.
//!
//! A machine-wide CPU budget ([`Network::set_cpu_budget`]) models many
//! emulated nodes sharing a few cores (the testnet: 21 nodes on 2 cores):
//! moving a byte into a node costs CPU (both ends' processes, the kernel's
//! TCP, veth, bridge and `tbf` work), so the sum of all flow rates cannot
//! exceed cores / (CPU-s per byte). When it would, every flow is slowed by
//! the same factor, as time-sharing slows every process alike. With a
//! budget, every change recomputes every flow (fine at the N where a
//! budget is used, tens of nodes); without one, the model stays local.
//!
//! ## Non-goals
//!
//! Exact max-min fairness across the whole network (one round is
//! slightly pessimistic on chains of mixed links), TCP slow start and
//! loss, queue
//! delay that grows with the backlog (a busy link's queue is simply full).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Identifies a flow while it exists.
pub type FlowId = usize;

#[derive(Debug, Clone)]
struct Flow {
    src: Option<usize>,
    dst: usize,
    remaining: f64,
    /// Bytes per microsecond.
    rate: f64,
    cap: f64,
    last_us: u64,
    version: u32,
}

/// Flows sharing the links of a set of nodes.
#[derive(Debug, Clone)]
pub struct Network {
    /// Uplink and downlink rates, bytes per microsecond.
    up: Vec<f64>,
    down: Vec<f64>,
    up_flows: Vec<Vec<FlowId>>,
    down_flows: Vec<Vec<FlowId>>,
    flows: Vec<Option<Flow>>,
    versions: Vec<u32>,
    free: Vec<FlowId>,
    heap: BinaryHeap<Reverse<(u64, FlowId, u32)>>,
    queue_us: u64,
    /// Sum of all flow rates at most (bytes per microsecond), `None`: no
    /// machine-wide CPU limit.
    cpu_cap: Option<f64>,
    /// The factor the CPU budget slows every flow by now (1: not bound).
    cpu_scale: f64,
    /// Queues hold only the bytes their flows have left.
    backlog_queues: bool,
    /// The standing queue a flow from outside (the registry's loss-based
    /// TCP) keeps on the link it crosses, whatever the nodes' own uploads
    /// do.
    external_queue_us: u64,
}

impl Network {
    /// Nodes with the given uplink and downlink rates in bytes per second,
    /// and a standing queue of `queue_us` on every busy link.
    pub fn new(up: &[f64], down: &[f64], queue_us: u64) -> Self {
        assert_eq!(up.len(), down.len(), "one uplink and one downlink per node");
        Network {
            up: up.iter().map(|r| r / 1e6).collect(),
            down: down.iter().map(|r| r / 1e6).collect(),
            up_flows: vec![Vec::new(); up.len()],
            down_flows: vec![Vec::new(); up.len()],
            flows: Vec::new(),
            versions: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
            queue_us,
            cpu_cap: None,
            cpu_scale: 1.0,
            backlog_queues: false,
            external_queue_us: queue_us,
        }
    }

    /// Limits the sum of all flow rates to `bytes_per_sec` (a machine's
    /// cores over its CPU cost per byte moved); `None` lifts the limit.
    /// Set it before starting flows.
    pub fn set_cpu_budget(&mut self, bytes_per_sec: Option<f64>) {
        self.cpu_cap = bytes_per_sec.map(|r| r / 1e6);
    }

    /// The factor the CPU budget slows every flow (and every node's work)
    /// by now: 1 when the budget does not bind.
    pub fn cpu_scale(&self) -> f64 {
        self.cpu_scale
    }

    /// The standing queue delay of a busy link.
    pub fn queue_us(&self) -> u64 {
        self.queue_us
    }

    /// Starts a flow of `bytes` from `src`'s uplink (`None`: from outside,
    /// such as the cloud registry) to `dst`'s downlink, never faster than
    /// `cap` bytes per second.
    pub fn start(
        &mut self,
        now_us: u64,
        src: Option<usize>,
        dst: usize,
        bytes: u64,
        cap: f64,
    ) -> FlowId {
        let id = self.free.pop().unwrap_or_else(|| {
            self.flows.push(None);
            self.versions.push(0);
            self.flows.len() - 1
        });
        self.flows[id] = Some(Flow {
            src,
            dst,
            remaining: bytes as f64,
            rate: 0.0,
            cap: cap / 1e6,
            last_us: now_us,
            version: self.versions[id],
        });
        if let Some(s) = src {
            self.up_flows[s].push(id);
        }
        self.down_flows[dst].push(id);
        self.reshare(now_us, src, dst);
        id
    }

    /// Ends a flow (finished or aborted), sharing its links among the rest.
    /// Returns its sender and receiver; `None` if it did not exist.
    pub fn remove(&mut self, now_us: u64, id: FlowId) -> Option<(Option<usize>, usize)> {
        let f = self.flows.get_mut(id)?.take()?;
        self.versions[id] = self.versions[id].wrapping_add(1);
        self.free.push(id);
        if let Some(s) = f.src {
            self.up_flows[s].retain(|x| *x != id);
        }
        self.down_flows[f.dst].retain(|x| *x != id);
        self.reshare(now_us, f.src, f.dst);
        Some((f.src, f.dst))
    }

    /// When the next flow finishes, if any.
    pub fn next_finish(&mut self) -> Option<u64> {
        while let Some(Reverse((t, id, v))) = self.heap.peek().copied() {
            if self.flows[id].as_ref().is_some_and(|f| f.version == v) {
                return Some(t);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns a flow finishing at or before `now_us`.
    pub fn pop_finished(&mut self, now_us: u64) -> Option<FlowId> {
        let t = self.next_finish()?;
        if t > now_us {
            return None;
        }
        let Reverse((_, id, _)) = self.heap.pop().expect("peeked");
        self.remove(now_us, id);
        Some(id)
    }

    /// Flows leaving `node`'s uplink.
    pub fn uploads(&self, node: usize) -> &[FlowId] {
        &self.up_flows[node]
    }

    /// Flows entering `node`'s downlink.
    pub fn downloads(&self, node: usize) -> &[FlowId] {
        &self.down_flows[node]
    }

    /// A flow's current rate in bytes per second.
    pub fn rate(&self, id: FlowId) -> Option<f64> {
        self.flows.get(id)?.as_ref().map(|f| f.rate * 1e6)
    }

    /// How long a small message from `src` to `dst` sent at `now_us`
    /// waits in queues: on each saturated link it crosses, a full queue,
    /// or with [`Network::set_backlog_queues`] the bytes its flows still
    /// have to send (at most a full queue).
    pub fn queueing_us(&self, now_us: u64, src: usize, dst: usize) -> u64 {
        self.link_queue_us(now_us, &self.up_flows[src], self.up[src])
            + self.link_queue_us(now_us, &self.down_flows[dst], self.down[dst])
    }

    /// A FIFO queue holds at most what its senders have left to send: a
    /// request-driven flow with one chunk outstanding cannot fill a 100 ms
    /// queue once less than 100 ms of its chunk is left. Off, a saturated
    /// link's queue is always full. (A flow from outside, the registry
    /// streaming a whole layer, always fills it.)
    pub fn set_backlog_queues(&mut self, on: bool) {
        self.backlog_queues = on;
    }

    /// The standing queue a flow from outside keeps (default: the same as
    /// any saturated link's). Low-delay uploads shrink the nodes' queues,
    /// not the registry's.
    pub fn set_external_queue_us(&mut self, us: u64) {
        self.external_queue_us = us;
    }

    fn link_queue_us(&self, now_us: u64, flows: &[FlowId], capacity: f64) -> u64 {
        if !self.saturated(flows, capacity) {
            return 0;
        }
        let live = || flows.iter().filter_map(|f| self.flows[*f].as_ref());
        if live().any(|f| f.src.is_none()) {
            return self.external_queue_us.max(self.queue_us);
        }
        if !self.backlog_queues {
            return self.queue_us;
        }
        let mut backlog = 0.0;
        for f in live() {
            backlog += (f.remaining - f.rate * now_us.saturating_sub(f.last_us) as f64).max(0.0);
        }
        // Bytes over bytes per µs; the CPU budget drains it slower too.
        let drain = capacity * self.cpu_scale;
        ((backlog / drain) as u64).min(self.queue_us)
    }

    /// How long a message leaving `node` at `now_us` waits in its uplink's
    /// queue.
    pub fn up_queue_us(&self, now_us: u64, node: usize) -> u64 {
        self.link_queue_us(now_us, &self.up_flows[node], self.up[node])
    }

    /// Whether `node`'s uplink is saturated.
    pub fn up_saturated(&self, node: usize) -> bool {
        self.saturated(&self.up_flows[node], self.up[node])
    }

    fn saturated(&self, flows: &[FlowId], capacity: f64) -> bool {
        // Within 1 % of the rate: a flow held back elsewhere leaves the
        // link (and its queue) partly idle.
        let sum: f64 = flows
            .iter()
            .filter_map(|f| self.flows[*f].as_ref())
            .map(|f| f.rate)
            .sum();
        // A CPU-bound machine slows every flow alike; its links still
        // carry all their flows can send, and queue as much.
        sum >= capacity * 0.99 * self.cpu_scale
    }

    fn reshare(&mut self, now_us: u64, src: Option<usize>, dst: usize) {
        if self.cpu_cap.is_some() {
            self.reshare_all(now_us);
            return;
        }
        // A flow's rate depends on the flow counts of its two links and of
        // the links its link-mates cross (see `share`): recompute the flows
        // within that distance of the two links that changed.
        let mut touched: Vec<FlowId> = Vec::new();
        if let Some(s) = src {
            for &g in &self.up_flows[s] {
                let d = self.flows[g].as_ref().expect("listed flows exist").dst;
                touched.extend_from_slice(&self.down_flows[d]);
            }
        }
        for &h in &self.down_flows[dst] {
            if let Some(u) = self.flows[h].as_ref().expect("listed flows exist").src {
                touched.extend_from_slice(&self.up_flows[u]);
            } else {
                touched.push(h);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            let rate = self.share(id);
            // Unchanged, its scheduled finish still holds.
            self.set_rate(now_us, id, rate);
        }
    }

    /// Every flow's rate from the links, then all slowed alike to fit the
    /// CPU budget.
    fn reshare_all(&mut self, now_us: u64) {
        let ids: Vec<FlowId> = (0..self.flows.len())
            .filter(|i| self.flows[*i].is_some())
            .collect();
        let raw: Vec<f64> = ids.iter().map(|id| self.share(*id)).collect();
        let sum: f64 = raw.iter().sum();
        let cap = self.cpu_cap.unwrap_or(f64::INFINITY);
        self.cpu_scale = if sum > cap { cap / sum } else { 1.0 };
        for (id, raw) in ids.into_iter().zip(raw) {
            self.set_rate(now_us, id, raw * self.cpu_scale);
        }
    }

    /// Sets a flow's rate from `now_us`, rescheduling its finish.
    fn set_rate(&mut self, now_us: u64, id: FlowId, rate: f64) {
        let f = self.flows[id].as_mut().expect("listed flows exist");
        f.remaining = (f.remaining - f.rate * now_us.saturating_sub(f.last_us) as f64).max(0.0);
        f.last_us = now_us;
        if rate == f.rate && rate > 0.0 {
            return;
        }
        f.rate = rate;
        self.versions[id] = self.versions[id].wrapping_add(1);
        f.version = self.versions[id];
        let finish = if rate > 0.0 {
            now_us + (f.remaining / rate).ceil() as u64
        } else {
            u64::MAX
        };
        self.heap.push(Reverse((finish, id, f.version)));
    }

    /// A flow's rate, two rounds of max-min fairness: first its sender's
    /// uplink is water-filled among its flows, each capped by its equal
    /// share of its receiver's downlink; then the receiver's downlink is
    /// water-filled among its flows, each capped by what the first round
    /// gave it. A flow held back at one end leaves its share to its
    /// link-mates, as TCP flows do. (Flows three links away are
    /// recomputed only when something near them changes.)
    fn share(&self, id: FlowId) -> f64 {
        let f = self.flows[id].as_ref().expect("listed flows exist");
        let mut rate = self.up_share(id).min(f.cap);
        rate = rate.min(
            self.water_fill(self.down[f.dst], &self.down_flows[f.dst], id, |g| {
                self.up_share(g)
            }),
        );
        rate
    }

    /// The first round: flow `id`'s share of its sender's uplink.
    fn up_share(&self, id: FlowId) -> f64 {
        let f = self.flows[id].as_ref().expect("listed flows exist");
        let Some(s) = f.src else {
            return f.cap;
        };
        let equal_down = |g: FlowId| {
            let g = self.flows[g].as_ref().expect("listed flows exist");
            g.cap
                .min(self.down[g.dst] / self.down_flows[g.dst].len() as f64)
        };
        self.water_fill(self.up[s], &self.up_flows[s], id, equal_down)
    }

    /// The share of `capacity` flow `id` gets among `flows`, each capped by
    /// `cap`: flows capped below the fair share keep their cap, the rest
    /// split what is left evenly.
    fn water_fill(
        &self,
        capacity: f64,
        flows: &[FlowId],
        id: FlowId,
        cap: impl Fn(FlowId) -> f64,
    ) -> f64 {
        let mut caps: Vec<f64> = flows.iter().map(|g| cap(*g)).collect();
        let own = cap(id);
        caps.sort_unstable_by(f64::total_cmp);
        let mut left = capacity;
        let mut n = caps.len() as f64;
        for c in caps {
            if c * n >= left {
                break;
            }
            left -= c;
            n -= 1.0;
        }
        if n == 0.0 {
            // Every flow is held back elsewhere: each keeps its cap.
            return own;
        }
        own.min(left / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT100: f64 = 12_500_000.0;

    fn run_all(net: &mut Network) -> Vec<(u64, FlowId)> {
        let mut done = Vec::new();
        while let Some(t) = net.next_finish() {
            let id = net.pop_finished(t).expect("due");
            done.push((t, id));
        }
        done
    }

    #[test]
    fn one_flow_takes_size_over_rate() {
        let mut net = Network::new(&[MBIT100; 2], &[MBIT100; 2], 100_000);
        let f = net.start(0, Some(0), 1, 1_250_000, f64::INFINITY);
        assert_eq!(run_all(&mut net), vec![(100_000, f)]);
    }

    #[test]
    fn the_slower_end_sets_the_rate() {
        let mut net = Network::new(&[MBIT100, MBIT100 / 10.0], &[MBIT100, MBIT100 / 10.0], 0);
        net.start(0, Some(0), 1, 1_250_000, f64::INFINITY);
        assert_eq!(run_all(&mut net)[0].0, 1_000_000);
        // A cap (the cloud link) applies too.
        net.start(0, None, 0, 1_250_000, MBIT100 / 2.0);
        assert_eq!(run_all(&mut net)[0].0, 200_000);
    }

    #[test]
    fn two_uploads_share_an_uplink_fairly() {
        let mut net = Network::new(&[MBIT100; 3], &[MBIT100; 3], 0);
        let a = net.start(0, Some(0), 1, 1_250_000, f64::INFINITY);
        let b = net.start(0, Some(0), 2, 1_250_000, f64::INFINITY);
        assert_eq!(net.rate(a), Some(MBIT100 / 2.0));
        let done = run_all(&mut net);
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|(t, _)| *t == 200_000), "{done:?}");
        assert!(done.iter().any(|(_, id)| *id == b));
    }

    #[test]
    fn bandwidth_a_flow_cannot_use_goes_to_its_link_mates() {
        // Node 0 uploads to 1 and 2; node 1 also downloads from 3 and 4,
        // so 0->1 gets a third of node 1's downlink and 0->2 takes the
        // other two thirds of node 0's uplink.
        let mut net = Network::new(&[MBIT100; 5], &[MBIT100; 5], 0);
        let a = net.start(0, Some(0), 1, 1 << 30, f64::INFINITY);
        let b = net.start(0, Some(0), 2, 1 << 30, f64::INFINITY);
        net.start(0, Some(3), 1, 1 << 30, f64::INFINITY);
        net.start(0, Some(4), 1, 1 << 30, f64::INFINITY);
        let third = MBIT100 / 3.0;
        assert!((net.rate(a).unwrap() - third).abs() < 1.0);
        assert!((net.rate(b).unwrap() - 2.0 * third).abs() < 1.0);
    }

    #[test]
    fn a_flow_speeds_up_when_its_neighbour_ends() {
        // Two downloads into node 2: the short one ends at 100 ms (half of
        // 1.25 MB at half rate), then the long one runs at full rate.
        let mut net = Network::new(&[MBIT100; 3], &[MBIT100; 3], 0);
        net.start(0, Some(0), 2, 625_000, f64::INFINITY);
        net.start(0, Some(1), 2, 1_875_000, f64::INFINITY);
        let done = run_all(&mut net);
        assert_eq!(done[0].0, 100_000);
        // 1.25 MB left after 100 ms, at full rate: 100 ms more.
        assert_eq!(done[1].0, 200_000);
    }

    #[test]
    fn aborted_flows_never_finish() {
        let mut net = Network::new(&[MBIT100; 2], &[MBIT100; 2], 0);
        let f = net.start(0, Some(0), 1, 1_000, f64::INFINITY);
        assert!(net.remove(10, f).is_some());
        assert!(net.remove(10, f).is_none());
        assert_eq!(net.next_finish(), None);
    }

    #[test]
    fn messages_wait_behind_busy_links_fifo_queues() {
        let mut net = Network::new(&[MBIT100; 3], &[MBIT100; 3], 100_000);
        assert_eq!(net.queueing_us(0, 0, 1), 0);
        let f = net.start(0, Some(0), 2, 1_250_000, f64::INFINITY);
        // Node 0's uplink is busy: 100 ms; node 2's downlink too.
        assert_eq!(net.queueing_us(0, 0, 1), 100_000);
        assert_eq!(net.queueing_us(0, 1, 2), 100_000);
        assert_eq!(net.queueing_us(0, 0, 2), 200_000);
        assert_eq!(net.queueing_us(0, 1, 0), 0);
        net.remove(50_000, f);
        assert_eq!(net.queueing_us(0, 0, 2), 0);
    }

    #[test]
    fn with_backlog_queues_a_queue_holds_only_what_is_left_to_send() {
        let mut net = Network::new(&[MBIT100; 3], &[MBIT100; 3], 100_000);
        net.set_backlog_queues(true);
        // 1.25 MB at 12.5 MB/s: 100 ms left at first, 40 ms at 60 ms.
        net.start(0, Some(0), 2, 1_250_000, f64::INFINITY);
        assert_eq!(net.queueing_us(0, 0, 1), 100_000);
        assert_eq!(net.queueing_us(60_000, 0, 1), 40_000);
        // Never more than a full queue.
        net.start(60_000, Some(1), 0, 10_000_000, f64::INFINITY);
        assert_eq!(net.up_queue_us(60_000, 1), 100_000);
        // The registry streams a whole layer: the gateway's downlink
        // queue is full however little of the current chunk is left.
        let mut net = Network::new(&[MBIT100; 2], &[MBIT100; 2], 100_000);
        net.set_backlog_queues(true);
        net.start(0, None, 1, 1_000, MBIT100);
        assert_eq!(net.queueing_us(0, 0, 1), 100_000);
    }

    #[test]
    fn a_cpu_budget_slows_every_flow_alike_and_only_when_it_binds() {
        // Two disjoint 100 Mbit/s transfers need 25 MB/s; a budget of
        // 12.5 MB/s halves both.
        let mut net = Network::new(&[MBIT100; 4], &[MBIT100; 4], 0);
        net.set_cpu_budget(Some(MBIT100));
        let a = net.start(0, Some(0), 1, 1_250_000, f64::INFINITY);
        assert_eq!(net.rate(a), Some(MBIT100), "one flow fits the budget");
        assert_eq!(net.cpu_scale(), 1.0);
        let b = net.start(0, Some(2), 3, 1_250_000, f64::INFINITY);
        assert!((net.rate(a).unwrap() - MBIT100 / 2.0).abs() < 1.0);
        assert!((net.rate(b).unwrap() - MBIT100 / 2.0).abs() < 1.0);
        assert!((net.cpu_scale() - 0.5).abs() < 1e-9);
        let done = run_all(&mut net);
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|(t, _)| *t == 200_000), "{done:?}");
        // Saturated links still queue while the CPU holds them back.
        let mut net = Network::new(&[MBIT100; 4], &[MBIT100; 4], 100_000);
        net.set_cpu_budget(Some(MBIT100));
        net.start(0, Some(0), 1, 1 << 30, f64::INFINITY);
        net.start(0, Some(2), 3, 1 << 30, f64::INFINITY);
        assert_eq!(net.queueing_us(0, 0, 3), 200_000);
    }

    #[test]
    fn low_delay_uploads_do_not_shrink_the_registry_flows_queue() {
        let mut net = Network::new(&[MBIT100; 3], &[MBIT100; 3], 5_000);
        net.set_external_queue_us(80_000);
        net.start(0, None, 0, 1 << 30, MBIT100);
        net.start(0, Some(1), 2, 1 << 30, f64::INFINITY);
        // Into the gateway: behind the registry's flow; into node 2:
        // behind node 1's low-delay upload.
        assert_eq!(net.queueing_us(0, 2, 0), 80_000);
        assert_eq!(net.queueing_us(0, 0, 2), 5_000);
    }

    #[test]
    fn links_that_are_not_saturated_do_not_queue() {
        // Node 1 is slow: node 0's upload to it uses a tenth of node 0's
        // uplink, so only node 1's downlink queues.
        let mut net = Network::new(
            &[MBIT100, MBIT100 / 10.0, MBIT100],
            &[MBIT100, MBIT100 / 10.0, MBIT100],
            100_000,
        );
        net.start(0, Some(0), 1, 1_250_000, f64::INFINITY);
        assert!(!net.up_saturated(0));
        assert_eq!(net.queueing_us(0, 0, 2), 0);
        assert_eq!(net.queueing_us(0, 2, 1), 100_000);
    }
}
