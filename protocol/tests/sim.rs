//! Scenario tests of the swarm simulator (`edgeswarm_protocol::sim`): the
//! calibration against the testnet, each calibrated cost, sane bounds at
//! small N, determinism, churn and slow links. The figures at scale are
//! printed by `examples/sim.rs`, not asserted here.

use edgeswarm_protocol::sim::{calibration as cal, run, Report, SimConfig};

/// The physical floor: issue 11's 48.3 MB image over one 100 Mbit/s link
/// at the calibrated payload share of the shaped rate.
const FLOOR_US: u64 = 4_067_000;

fn at(nodes: usize, cfg: SimConfig) -> SimConfig {
    SimConfig { nodes, ..cfg }
}

fn t1(cfg: &SimConfig) -> u64 {
    run(&at(1, cfg.clone()))
        .t_last()
        .expect("the gateway completes")
}

fn assert_sane(r: &Report, what: &str) {
    assert!(r.complete, "{what}: every remaining node completes");
    let t = r.t_last().expect("complete");
    assert!(t >= FLOOR_US, "{what}: {t} µs beats the link");
    let (mean, max) = r.bytes_in_ratio();
    assert!(mean >= 1.0, "{what}: a node received {mean} images");
    assert!(max <= 1.5, "{what}: a node received {max} images");
    // Seed sparing: the gateway uploads each chunk about once.
    assert!(
        r.gateway_out_ratio() <= 1.1,
        "{what}: the gateway uploaded {} images",
        r.gateway_out_ratio()
    );
    for (i, d) in r.done_us.iter().enumerate() {
        if !r.left[i] {
            assert!(d.is_some(), "{what}: node {i} never completed");
        }
    }
}

/// The largest relative error of the simulator against `measured` at
/// issue 11's calibration points (N = 1, 5 and 21), each simulated by
/// `simulate(layout, n)`; prints the table.
fn worst_calibration_error(
    measured: &[(&str, usize, f64)],
    simulate: impl Fn(&str, usize) -> SimConfig,
) -> f64 {
    let mut worst: f64 = 0.0;
    println!("| layout | N | testnet s | sim s | error |");
    for &(layout, n, measured) in measured {
        if ![1, 5, 21].contains(&n) {
            continue;
        }
        let t = cal::mean_t(&simulate(layout, n)).expect("every run completes");
        let err = t / measured - 1.0;
        println!(
            "| {layout} | {n} | {measured:.2} | {t:.2} | {:+.1} % |",
            err * 100.0
        );
        worst = worst.max(err.abs());
    }
    worst
}

#[test]
fn the_calibrated_node_preset_is_within_15_percent_of_the_testnet() {
    // Issue 11's calibration points: N = 1, 5 and 21 of both layouts that
    // were measured (no N = 21 run of `base` exists).
    let worst = worst_calibration_error(&cal::MEASURED, |layout, n| {
        cal::testnet_run(&SimConfig::default(), layout, n)
    });
    assert!(worst <= 0.15, "worst error {:.1} %", worst * 100.0);
}

#[test]
fn the_lone_gateway_pays_headers_its_start_and_its_tail() {
    // Measured 4.28 s; the payload floor alone is 4.07 s, 3.86 s at the
    // shaper's nominal rate. Without the start (85 ms) or the tail
    // (200 ms) or the header overhead (5 %) it would end before 4.30 s.
    let r = run(&at(1, SimConfig::default()));
    let t = r.t_last().unwrap();
    assert!((4_300_000..4_420_000).contains(&t), "{t}");
    let pull = r.gateway_pull_us.unwrap();
    assert_eq!(t - pull, cal::GATEWAY_TAIL_US);
    assert!(pull >= FLOOR_US + cal::GATEWAY_START_US, "{pull}");
    assert_eq!(r.bytes_out[0], 0);
}

#[test]
fn a_node_downloads_only_after_its_start_delay() {
    let cfg = SimConfig {
        start_us: (3_000_000, 3_000_000),
        ..at(2, SimConfig::default())
    };
    let t = run(&cfg).done_us[1].unwrap();
    // It cannot beat its own link from its start.
    assert!(t >= 3_000_000 + FLOOR_US, "{t}");
}

#[test]
fn gossiped_digests_wait_for_the_coordinator_tick() {
    // With a 3 s tick the peer reads digests at its start and at 3.3 s
    // (33 chunks known by then), then at 6.3 s: it cannot end before.
    let cfg = SimConfig {
        digest_tick_us: 3_000_000,
        ..at(2, SimConfig::default())
    };
    let t = run(&cfg).done_us[1].unwrap();
    assert!(t >= 6_300_000, "{t}");
    let at_once = run(&SimConfig {
        digest_tick_us: 0,
        ..cfg
    });
    assert!(at_once.done_us[1].unwrap() < 5_000_000);
}

#[test]
fn super_seeding_offers_keep_requesters_off_chunks_offered_to_others() {
    // Offers that never lapse: each gateway chunk is seen by one requester
    // only, so none is asked of the gateway twice and refused
    // TryElsewhere (seed sparing); without offers many are.
    let cfg = SimConfig {
        offer_timeout_us: Some(600_000_000),
        ..at(10, SimConfig::default())
    };
    let with = run(&cfg);
    let without = run(&SimConfig {
        offer_timeout_us: None,
        ..cfg
    });
    assert_sane(&with, "offers, N=10");
    assert_eq!(with.refusals[2], 0, "TryElsewhere with offers");
    assert!(without.refusals[2] > 50, "{}", without.refusals[2]);
    assert!(with.gateway_out_ratio() <= 1.01);
}

#[test]
fn requests_on_one_stream_wait_for_the_upload_ahead_of_them() {
    // The lone peer keeps two requests at the gateway: in stream order the
    // second waits for the first upload; without it, the upload policy
    // refuses it Busy (one upload per peer, no waiting queue).
    let cfg = at(2, SimConfig::default());
    let ordered = run(&cfg);
    assert_eq!(ordered.refusals[1], 0, "Busy in stream order");
    let unordered = run(&SimConfig {
        stream_order: false,
        ..cfg
    });
    assert!(unordered.refusals[1] > 10, "{}", unordered.refusals[1]);
    let t = ordered.t_last().unwrap();
    assert!(t < 5_000_000, "{t}");
    assert!(unordered.t_last().unwrap() > t + 1_000_000);
}

#[test]
fn twenty_one_nodes_on_two_cores_are_cpu_bound() {
    let cfg = at(21, SimConfig::default());
    let own_cores = run(&cfg).t_last().unwrap();
    let shared = run(&cfg.clone().testnet_machine());
    let t = shared.t_last().unwrap();
    // Measured 11.0 s with the machine 100 % busy (22 CPU-s).
    assert!((9_500_000..13_000_000).contains(&t), "{t}");
    assert!(t > own_cores + 2_000_000, "{t} vs {own_cores}");
    assert!(
        (19.0..24.0).contains(&shared.cpu_seconds),
        "{}",
        shared.cpu_seconds
    );
}

#[test]
fn node_defaults_complete_within_sane_bounds() {
    let cfg = at(21, SimConfig::default());
    let r = run(&cfg);
    assert_sane(&r, "node defaults, N=21");
    // Today's node is far from the limit; it must stay under 4x T(1)
    // (the testnet measured 17-22 s, about 4x, with CPU-bound nodes).
    assert!(r.t_last().unwrap() < 4 * t1(&cfg));
}

#[test]
fn tuned_mechanisms_reach_the_target_at_21_nodes() {
    let cfg = at(21, SimConfig::default().tuned());
    let r = run(&cfg);
    assert_sane(&r, "tuned, N=21");
    let ratio = r.t_last().unwrap() as f64 / t1(&cfg) as f64;
    assert!(ratio <= 1.3, "T(21)/T(1) = {ratio}");
    let (mean, _) = r.bytes_in_ratio();
    assert!(mean <= 1.05, "{mean} images received per node");
}

#[test]
fn same_seed_same_result_other_seed_other_result() {
    let cfg = at(21, SimConfig::default().tuned());
    let a = run(&cfg);
    assert_eq!(a, run(&cfg));
    let b = run(&SimConfig { seed: 2, ..cfg });
    assert_ne!(a.done_us, b.done_us);
}

#[test]
fn survivors_complete_when_five_percent_leave() {
    let cfg = SimConfig {
        churn_fraction: 0.05,
        ..at(60, SimConfig::default().tuned())
    };
    let r = run(&cfg);
    assert_eq!(r.left.iter().filter(|l| **l).count(), 3);
    assert_sane(&r, "tuned, N=60, churn");
    assert!(r.t_last().unwrap() < 2 * t1(&cfg));
}

#[test]
fn slow_links_set_their_own_pace_only() {
    let cfg = SimConfig {
        slow_fraction: 0.1,
        ..at(21, SimConfig::default().tuned())
    };
    let r = run(&cfg);
    assert_sane(&r, "tuned, N=21, slow links");
    assert_eq!(r.slow.iter().filter(|s| **s).count(), 2);
    // A 10 Mbit/s node cannot beat its own link, and should come close.
    let slow = r.last_done(|_, slow| slow).unwrap();
    assert!((10 * FLOOR_US..11 * FLOOR_US).contains(&slow), "{slow}");
    // Fast nodes are not held back by slow peers.
    let fast = r.last_done(|i, slow| i > 0 && !slow).unwrap();
    assert!(fast < 2 * t1(&cfg), "{fast}");
}

#[test]
fn smaller_chunks_are_relayed_sooner() {
    // Each relay hop waits for a whole chunk: with the uplinks' queues kept
    // short (paced uploads), 512 KiB chunks reach 10 nodes sooner than
    // 1 MiB ones, and the image still arrives once per node.
    let paced = SimConfig {
        queue_us: 5_000,
        ..at(10, SimConfig::default())
    };
    let mib = run(&paced);
    let half = run(&SimConfig {
        chunk_bytes: 512 << 10,
        ..paced
    });
    assert_sane(&mib, "1 MiB chunks");
    assert_sane(&half, "512 KiB chunks");
    let (a, b) = (mib.t_last().unwrap(), half.t_last().unwrap());
    println!("T(10): 1 MiB {a} µs, 512 KiB {b} µs");
    assert!(b < a, "512 KiB {b} µs, 1 MiB {a} µs");
}

#[test]
fn cut_through_relay_keeps_a_hundred_nodes_near_one_link() {
    // Today's node (paced uploads, 512 KiB chunks) with and without
    // cut-through relay: relaying a chunk while it arrives saves a chunk
    // time per hop of the relay tree, which is what keeps T(N)/T(1) under
    // issue 11's 1.5 as N grows; every node still receives the image once.
    let current = at(100, SimConfig::default().current());
    let relay = run(&current);
    let whole = run(&SimConfig {
        cut_through: false,
        ..current.clone()
    });
    assert_sane(&relay, "current, N=100");
    assert_sane(&whole, "current without relay, N=100");
    let t1 = t1(&current) as f64;
    let (a, b) = (
        relay.t_last().unwrap() as f64,
        whole.t_last().unwrap() as f64,
    );
    assert!(a / t1 <= 1.5, "T(100)/T(1) = {:.2} with relay", a / t1);
    assert!(a < b, "relay {a} µs, whole chunks {b} µs");
    let (mean, max) = relay.bytes_in_ratio();
    assert!(
        mean <= 1.01 && max <= 1.05,
        "{mean} / {max} images per node"
    );
}

#[test]
fn the_current_preset_is_within_15_percent_of_todays_testnet() {
    // Issue 11's calibration points (N = 1, 5 and 21, both layouts)
    // against today's node in the testnet (`cal::MEASURED_CURRENT`).
    let worst = worst_calibration_error(&cal::MEASURED_CURRENT, |layout, n| {
        cal::testnet_run_starting(
            &SimConfig::default().current(),
            layout,
            n,
            cal::START_US_21_CURRENT,
        )
    });
    assert!(worst <= 0.15, "worst error {:.1} %", worst * 100.0);
}
