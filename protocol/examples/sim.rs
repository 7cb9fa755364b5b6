//! Prints the swarm simulator's figures (`edgeswarm_protocol::sim`):
//! T(N), the last node's completion, and T(N)/T(1) for a list of swarm
//! sizes, the bytes each node received and the gateway's upload as ratios
//! to the image; or, with `--ablate N`, what each mechanism buys at N.
//!
//! ```text
//! cargo run --release -p edgeswarm-protocol --example sim -- [flags]
//!   --nodes 1,2,5,10,21,100,1000,10000   swarm sizes (gateway included)
//!   --preset node|current|tuned   node: the node calibrated against the
//!                          testnet (the default); current: the node now
//!                          (paced uploads, 512 KiB chunks, cut-through
//!                          relay); tuned: every mechanism the simulator
//!                          found (then flags override)
//!   --calibrate            the calibration table: the preset on the
//!                          testnet's 2-core machine against every
//!                          measured T(N), with the error (`current`:
//!                          against today's node's runs)
//!   --layout single|base|spread   issue 11's image (48.3 MB, one 46 MB
//!                          layer), the testnet's own (54.1 MB), or four
//!                          12 MB layers
//!   --mbit 100 --cloud-mbit 200 --slow-mbit 10 --slow-fraction 0.1
//!   --slow-slots 0         upload slots of slow nodes (0: as all nodes)
//!   --rtt-ms 0.2 --cloud-rtt-ms 1 --queue-ms 80 --cpu-ms 4
//!   --cloud-queue-ms 80    the registry flow's queue at the gateway
//!   --backlog-queues on    a queue holds at most what its flows have left
//!   --efficiency 0.95      payload share of a shaped link's rate
//!   --chunk-kib 1024       chunk size (the calibration runs' 1 MiB; the
//!                          node's default is 512 since)
//!   --gateway-start-ms 85 --gateway-tail-ms 200 --start-ms 300-400
//!   --digest-tick-ms 250   digests learnt on this tick (0: with the Have)
//!   --offers-ms 1000       super-seeding offers' lapse (0: no offers)
//!   --stream-order on      one requester's requests answered in order
//!   --endgame-age-ms 750
//!   --machine-cores 0 --cpu-s-per-mb 0.0205   cores shared by all nodes
//!                          (0: each node its own core)
//!   --have-ms 0            Have batching (0: immediate)
//!   --slots 3 --queue 0    upload slots, requests waiting before Busy
//!   --origin-queue 0       requests waiting for an origin's chunks (current: 3)
//!   --sparing-ms 60000     seed sparing period (0: off)
//!   --depth 2 | bdp:4      requests per peer, fixed or BDP-sized (max)
//!   --total 3              requests outstanding over all peers (0: no cap)
//!   --peers 32 --gateway-peers 256
//!   --cut-through on|off --cancel on|off --window 8 --endgame 8
//!   --elsewhere-backoff on|off   TryElsewhere: back off that chunk
//!   --churn 0.05 --churn-ms 1000-3000
//!   --seed 1 --limit-s 600
//!   --ablate N             mechanisms one by one at N nodes: each added to
//!                          the node preset, each removed from tuned
//!   --ablate-tuned-only    only the removals
//! ```

use std::time::Instant;

use edgeswarm_protocol::sim::{calibration as cal, layouts, run, Depth, Report, SimConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = SimConfig::default();
    let mut nodes: Vec<usize> = vec![1, 2, 5, 10, 21, 100, 1_000, 10_000];
    let mut ablate: Option<usize> = None;
    let mut from_node = true;
    let mut calibrate = false;
    // The testnet measurements a preset is checked against.
    let mut measured: &[(&str, usize, f64)] = &cal::MEASURED;
    let mut start_21 = cal::START_US_21;
    // The preset first, so that other flags override it.
    if let Some(i) = args.iter().position(|a| a == "--preset") {
        match args.get(i + 1).map(String::as_str) {
            Some("node") => {}
            Some("tuned") => cfg = cfg.tuned(),
            Some("current") => {
                cfg = cfg.current();
                measured = &cal::MEASURED_CURRENT;
                start_21 = cal::START_US_21_CURRENT;
            }
            other => die(&format!("unknown preset {other:?}")),
        }
    }
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        let mbit = |v: String| num(&v) * 1e6 / 8.0;
        let us = |v: String| (num(&v) * 1000.0).round() as u64;
        match flag.as_str() {
            "--preset" => {
                val();
            }
            "--nodes" => nodes = val().split(',').map(|n| num(n) as usize).collect(),
            "--layout" => {
                cfg.layers = match val().as_str() {
                    "single" => layouts::single(),
                    "base" => layouts::base(),
                    "spread" => layouts::spread(),
                    other => die(&format!("unknown layout {other}")),
                }
            }
            "--mbit" => cfg.node_rate = mbit(val()),
            "--cloud-mbit" => cfg.cloud_rate = mbit(val()),
            "--slow-mbit" => cfg.slow_rate = mbit(val()),
            "--slow-fraction" => cfg.slow_fraction = num(&val()),
            "--slow-slots" => {
                let v = num(&val()) as usize;
                cfg.slow_slots = (v > 0).then_some(v);
            }
            "--rtt-ms" => cfg.rtt_us = us(val()),
            "--cloud-rtt-ms" => cfg.cloud_rtt_us = us(val()),
            "--queue-ms" => cfg.queue_us = us(val()),
            "--cloud-queue-ms" => cfg.cloud_queue_us = us(val()),
            "--cpu-ms" => cfg.cpu_us_per_chunk = us(val()),
            "--have-ms" => cfg.have_interval_us = us(val()),
            "--slots" => cfg.upload.slots = num(&val()) as usize,
            "--queue" => cfg.upload.queue = num(&val()) as usize,
            "--origin-queue" => cfg.upload.origin_queue = num(&val()) as usize,
            "--sparing-ms" => {
                let v = num(&val()) as u64;
                cfg.upload.sparing_ms = (v > 0).then_some(v);
            }
            "--depth" => {
                let v = val();
                cfg.depth = match v.strip_prefix("bdp:") {
                    Some(max) => Depth::Bdp(num(max) as usize),
                    None => Depth::Fixed(num(&v) as usize),
                }
            }
            "--total" => {
                let v = num(&val()) as usize;
                cfg.total_requests = (v > 0).then_some(v);
            }
            "--peers" => cfg.max_download_peers = num(&val()) as usize,
            "--gateway-peers" => cfg.gateway_peers = num(&val()) as usize,
            "--cut-through" => cfg.cut_through = on(&val()),
            "--cancel" => cfg.cancel = on(&val()),
            "--elsewhere-backoff" => cfg.elsewhere_backoff = on(&val()),
            "--window" => cfg.window_chunks = num(&val()) as u32,
            "--endgame" => cfg.endgame_chunks = num(&val()) as u32,
            "--churn" => cfg.churn_fraction = num(&val()),
            "--churn-ms" => {
                let v = val();
                let (a, b) = v
                    .split_once('-')
                    .unwrap_or_else(|| die("--churn-ms takes FROM-TO"));
                cfg.churn_window_us = (us(a.into()), us(b.into()));
            }
            "--efficiency" => cfg.wire_efficiency = num(&val()),
            "--chunk-kib" => cfg.chunk_bytes = (num(&val()) as u64) << 10,
            "--gateway-start-ms" => cfg.gateway_start_us = us(val()),
            "--gateway-tail-ms" => cfg.gateway_tail_us = us(val()),
            "--start-ms" => {
                let v = val();
                let (a, b) = v
                    .split_once('-')
                    .unwrap_or_else(|| die("--start-ms takes FROM-TO"));
                cfg.start_us = (us(a.into()), us(b.into()));
            }
            "--digest-tick-ms" => cfg.digest_tick_us = us(val()),
            "--offers-ms" => {
                let v = num(&val());
                cfg.offer_timeout_us = (v > 0.0).then_some((v * 1000.0) as u64);
            }
            "--stream-order" => cfg.stream_order = on(&val()),
            "--backlog-queues" => cfg.backlog_queues = on(&val()),
            "--endgame-age-ms" => cfg.endgame_min_age_ms = num(&val()) as u64,
            "--machine-cores" => {
                let v = num(&val());
                cfg.machine_cores = (v > 0.0).then_some(v);
            }
            "--cpu-s-per-mb" => cfg.cpu_s_per_mb = num(&val()),
            "--calibrate" => calibrate = true,
            "--seed" => cfg.seed = num(&val()) as u64,
            "--limit-s" => cfg.time_limit_us = (num(&val()) * 1e6) as u64,
            "--ablate" => ablate = Some(num(&val()) as usize),
            "--ablate-tuned-only" => from_node = false,
            other => die(&format!("unknown flag {other}")),
        }
    }
    println!("{}", describe(&cfg));
    if calibrate {
        return calibration(&cfg, measured, start_21);
    }
    match ablate {
        Some(n) => ablation(&cfg, n, from_node),
        None => scaling(&cfg, &nodes),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("sim: {msg} (see the doc comment of protocol/examples/sim.rs)");
    std::process::exit(2)
}

fn num(s: &str) -> f64 {
    s.trim()
        .replace('_', "")
        .parse()
        .unwrap_or_else(|_| die(&format!("not a number: {s}")))
}

fn on(s: &str) -> bool {
    match s {
        "on" | "true" | "1" => true,
        "off" | "false" | "0" => false,
        other => die(&format!("on or off, not {other}")),
    }
}

fn describe(c: &SimConfig) -> String {
    format!(
        "# image {:.1} MB in {} layers; links {} Mbit/s ({}% at {} Mbit/s), cloud {} Mbit/s; \
         rtt {} ms, queue {} ms, cpu {} ms/chunk; slots {}, queue {} (origin {}), sparing {:?} ms; \
         Have every {} ms; depth {:?}, total {:?}; peers {}, gateway peers {}; cut-through {}, cancel {}, \
         elsewhere backoff {}; window {}, endgame {} (after {} ms); churn {}% in {}-{} ms; seed {}; \
         efficiency {}, gateway start {} ms, tail {} ms, nodes start {}-{} ms, digest tick {} ms, \
         offers {:?} µs, stream order {}, cores {:?} at {} CPU-s/MB",
        c.image_bytes() as f64 / 1e6,
        c.layers.len(),
        c.node_rate * 8.0 / 1e6,
        c.slow_fraction * 100.0,
        c.slow_rate * 8.0 / 1e6,
        c.cloud_rate * 8.0 / 1e6,
        c.rtt_us as f64 / 1000.0,
        c.queue_us as f64 / 1000.0,
        c.cpu_us_per_chunk as f64 / 1000.0,
        c.upload.slots,
        c.upload.queue,
        c.upload.origin_queue,
        c.upload.sparing_ms,
        c.have_interval_us as f64 / 1000.0,
        c.depth,
        c.total_requests,
        c.max_download_peers,
        c.gateway_peers,
        c.cut_through,
        c.cancel,
        c.elsewhere_backoff,
        c.window_chunks,
        c.endgame_chunks,
        c.endgame_min_age_ms,
        c.churn_fraction * 100.0,
        c.churn_window_us.0 / 1000,
        c.churn_window_us.1 / 1000,
        c.seed,
        c.wire_efficiency,
        c.gateway_start_us / 1000,
        c.gateway_tail_us / 1000,
        c.start_us.0 / 1000,
        c.start_us.1 / 1000,
        c.digest_tick_us / 1000,
        c.offer_timeout_us,
        c.stream_order,
        c.machine_cores,
        c.cpu_s_per_mb,
    )
}

fn secs(us: Option<u64>) -> String {
    us.map_or("-".into(), |t| format!("{:.2}", t as f64 / 1e6))
}

fn timed(cfg: &SimConfig) -> (Report, f64) {
    let start = Instant::now();
    let r = run(cfg);
    (r, start.elapsed().as_secs_f64())
}

fn scaling(cfg: &SimConfig, nodes: &[usize]) {
    let t1 = run(&SimConfig {
        nodes: 1,
        churn_fraction: 0.0,
        ..cfg.clone()
    })
    .t_last()
    .expect("the gateway alone completes");
    println!(
        "| N | T(N) s | T(N)/T(1) | gateway s | last fast s | last slow s | \
         in/node mean | in/node max | gateway out | dup chunks | Busy | TryElsewhere | left | events | wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in nodes {
        let (r, wall) = timed(&SimConfig {
            nodes: n,
            ..cfg.clone()
        });
        if std::env::var_os("SIM_DEBUG").is_some() {
            let mut d: Vec<u64> = r.done_us.iter().flatten().copied().collect();
            d.sort_unstable();
            let q: Vec<String> = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
                .iter()
                .map(|f| secs(Some(d[((d.len() - 1) as f64 * f) as usize])))
                .collect();
            eprintln!(
                "completion quantiles 0,10,25,50,75,90,100%: {}",
                q.join(" ")
            );
        }
        let (mean, max) = r.bytes_in_ratio();
        let ratio = r
            .t_last()
            .map_or("-".into(), |t| format!("{:.2}", t as f64 / t1 as f64));
        println!(
            "| {n} | {} | {ratio} | {} | {} | {} | {mean:.3} | {max:.3} | {:.2} | {} | {} | {} | {} | {} | {wall:.1} |",
            secs(r.t_last()),
            secs(r.done_us[0]),
            secs(r.last_done(|i, slow| i > 0 && !slow)),
            secs(r.last_done(|_, slow| slow)),
            r.gateway_out_ratio(),
            r.duplicates,
            r.refusals[1],
            r.refusals[2],
            r.left.iter().filter(|l| **l).count(),
            r.events,
        );
    }
}

/// The calibration table: the preset on the testnet's 2-core machine
/// against every measured T(N), with the error.
fn calibration(cfg: &SimConfig, table: &[(&str, usize, f64)], start_21: (u64, u64)) {
    println!(
        "| layout | N | testnet T s | sim T s (mean of {} seeds) | error | sim machine CPU-s |",
        cal::SEEDS
    );
    println!("|---|---|---|---|---|---|");
    for &(layout, n, measured) in table {
        let c = cal::testnet_run_starting(cfg, layout, n, start_21);
        let t = cal::mean_t(&c);
        let cpu = run(&c).cpu_seconds;
        let (t, err) = match t {
            Some(t) => (
                format!("{t:.2}"),
                format!("{:+.1} %", (t / measured - 1.0) * 100.0),
            ),
            None => ("-".into(), "-".into()),
        };
        println!("| {layout} | {n} | {measured:.2} | {t} | {err} | {cpu:.1} |");
    }
}

fn ablation(base: &SimConfig, n: usize, from_node: bool) {
    let node = SimConfig {
        nodes: n,
        ..base.clone()
    };
    let tuned = node.clone().tuned();
    let t1 = run(&SimConfig {
        nodes: 1,
        churn_fraction: 0.0,
        ..node.clone()
    })
    .t_last()
    .expect("the gateway alone completes");
    type Edit = fn(&mut SimConfig);
    let mechanisms: [(&str, Edit, Edit); 6] = [
        (
            "cut-through relay",
            |c| c.cut_through = true,
            |c| c.cut_through = false,
        ),
        (
            "low-delay uploads (5 ms standing queue, LEDBAT-like)",
            |c| c.queue_us = 5_000,
            |c| c.queue_us = cal::QUEUE_US,
        ),
        (
            "digests with the Have (no gossip, no 250 ms tick)",
            |c| c.digest_tick_us = 0,
            |c| c.digest_tick_us = 250_000,
        ),
        (
            "requests sized to the BDP (per peer <= 4, all: downlink BDP + 1)",
            |c| {
                c.depth = Depth::Bdp(4);
                c.total_requests = None;
            },
            |c| {
                c.depth = Depth::Fixed(2);
                c.total_requests = Some(3);
            },
        ),
        (
            "no super-seeding offers (seed sparing alone)",
            |c| c.offer_timeout_us = None,
            |c| c.offer_timeout_us = Some(1_000_000),
        ),
        (
            "endgame duplicates at once (no 750 ms wait)",
            |c| c.endgame_min_age_ms = 0,
            |c| c.endgame_min_age_ms = 750,
        ),
    ];
    println!("T(1) = {:.2} s; N = {n}", t1 as f64 / 1e6);
    println!(
        "| configuration | T(N) s | T(N)/T(1) | in/node mean | gateway out | dup chunks | wall s |"
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |name: &str, c: &SimConfig| {
        let (r, wall) = timed(c);
        let (mean, _) = r.bytes_in_ratio();
        println!(
            "| {name} | {} | {} | {mean:.3} | {:.2} | {} | {wall:.1} |",
            secs(r.t_last()),
            r.t_last()
                .map_or("-".into(), |t| format!("{:.2}", t as f64 / t1 as f64)),
            r.gateway_out_ratio(),
            r.duplicates,
        );
    };
    if from_node {
        row("node defaults", &node);
        for (name, add, _) in &mechanisms {
            let mut c = node.clone();
            add(&mut c);
            row(&format!("node + {name}"), &c);
        }
    }
    row("tuned (all)", &tuned);
    for (name, _, remove) in &mechanisms {
        let mut c = tuned.clone();
        remove(&mut c);
        row(&format!("tuned - {name}"), &c);
    }
}
