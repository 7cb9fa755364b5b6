//! The experiment report's arithmetic on made-up runs: issue 11's targets
//! table (ratios, which runs they compare, pass/fail) and the per-run
//! links/CPU table. No testnet needed.

use edgeswarm_testnet::counters::Series;
use edgeswarm_testnet::experiment::{CpuUse, Method, NodeResult, RunResult};
use edgeswarm_testnet::measure::{LinkBytes, NodeMetrics, TcpSegments};
use edgeswarm_testnet::report::{self, ImageInfo, Setting, TargetRow};

const IMAGE: u64 = 48_700_000;

fn node(i: usize, seconds: f64, into: f64, out: f64) -> NodeResult {
    NodeResult {
        node: i,
        seconds: Some(seconds),
        bytes_from_cloud: 0,
        bytes_from_peers: 0,
        node_seconds: None,
        verified: true,
        link: LinkBytes {
            into_node: (into * IMAGE as f64) as u64,
            from_node: (out * IMAGE as f64) as u64,
        },
        cpu_seconds: Some(1.5 + i as f64),
        metrics: None,
        done_gap: Some(0.1),
        tcp: Some(TcpSegments {
            sent: 1_000,
            retransmitted: 10 * i as u64,
        }),
    }
}

/// A run whose gateway took `gw_in`/`gw_out` images over its link and
/// whose other nodes each took `in_each`.
struct Spec {
    method: Method,
    n: usize,
    last: f64,
    pull: f64,
    gw_in: f64,
    gw_out: f64,
    in_each: f64,
    gw_metrics: Option<NodeMetrics>,
    busy: f64,
}

fn run(s: Spec) -> RunResult {
    // The gateway finishes first, unless it is alone.
    let gw_done = if s.n == 1 { s.last } else { s.last - 0.5 };
    let mut per_node = vec![node(0, gw_done, s.gw_in, s.gw_out)];
    per_node[0].metrics = s.gw_metrics;
    for i in 1..s.n {
        per_node.push(node(i, s.last, s.in_each, 0.1));
    }
    RunResult {
        method: s.method,
        nodes: s.n,
        per_node,
        cloud_bytes: IMAGE,
        cloud_bytes_up: 0,
        series: Series::default(),
        cpu: CpuUse {
            busy: s.busy,
            iowait: 0.0,
        },
        pull_seconds: Some(s.pull),
        registry_cpu_seconds: Some(0.7),
        watcher_cpu_seconds: None,
    }
}

fn es(n: usize, last: f64, pull: f64, gw_out: f64, in_each: f64) -> RunResult {
    run(Spec {
        method: Method::Edgeswarm,
        n,
        last,
        pull,
        gw_in: 1.02,
        gw_out,
        in_each,
        gw_metrics: Some(NodeMetrics {
            bytes_uploaded: gw_out * IMAGE as f64,
            ..NodeMetrics::default()
        }),
        busy: 0.5,
    })
}

fn find<'a>(rows: &'a [TargetRow], target: &str) -> &'a TargetRow {
    rows.iter()
        .find(|r| r.target == target)
        .unwrap_or_else(|| panic!("no row {target:?} in {rows:#?}"))
}

fn image() -> ImageInfo {
    ImageInfo {
        reference: "r/single49:v1".into(),
        bytes: IMAGE,
    }
}

fn setting(import: &str) -> Setting {
    Setting {
        import: import.into(),
        ..Setting::default()
    }
}

fn runs() -> Vec<RunResult> {
    let mut n5 = es(5, 6.0, 4.0, 2.5, 1.10);
    // The gateway downloaded what it pulled: 35 chunks thrown away.
    n5.per_node[0].metrics = Some(NodeMetrics {
        duplicate_chunks: 35.0,
        bytes_uploaded: 2.5 * IMAGE as f64,
        ..NodeMetrics::default()
    });
    let naive21 = run(Spec {
        method: Method::Naive,
        n: 21,
        last: 43.0,
        pull: 42.9,
        gw_in: 1.0,
        gw_out: 0.02,
        in_each: 1.0,
        gw_metrics: None,
        busy: 0.9,
    });
    vec![
        es(1, 4.0, 3.9, 0.02, 0.0),
        es(2, 5.0, 4.4, 1.05, 1.03),
        n5,
        naive21,
        es(21, 14.0, 4.2, 1.08, 1.04),
    ]
}

#[test]
fn scaling_rows_compare_against_the_n1_run() {
    let rows = report::targets(&image(), &setting("none"), &runs());
    let r = find(&rows, "T(2)/T(1), `--import none`");
    assert!(r.measured.starts_with("1.25 "), "{r:?}");
    assert_eq!(r.pass, Some(true));
    let r = find(&rows, "T(5)/T(1), `--import none`");
    assert!(r.measured.starts_with("1.50 "), "{r:?}");
    assert_eq!(r.pass, Some(false));
    let r = find(&rows, "T(10)/T(1), `--import none`");
    assert_eq!(r.measured, "not run");
    assert_eq!(r.pass, None);
}

#[test]
fn gateway_rows_use_its_lone_pull_its_metrics_and_its_link() {
    let rows = report::targets(&image(), &setting("none"), &runs());
    // 4.4 / 3.9 = 1.128: over 1.1.
    let r = find(&rows, "gateway pull serving 1 peers / alone");
    assert!(r.measured.starts_with("1.13x"), "{r:?}");
    assert_eq!(r.pass, Some(false));
    // 4.0 / 3.9 = 1.026.
    let r = find(&rows, "gateway pull serving 4 peers / alone");
    assert_eq!(r.pass, Some(true), "{r:?}");
    let r = find(
        &rows,
        "N=2: bytes the gateway takes from peers for layers it pulls",
    );
    assert_eq!(r.pass, Some(true), "{r:?}");
    let r = find(
        &rows,
        "N=5: bytes the gateway takes from peers for layers it pulls",
    );
    assert_eq!(r.pass, Some(false), "{r:?}");
    assert!(r.measured.contains("35 duplicate chunks"), "{r:?}");
    let r = find(&rows, "N=2: gateway upload / image");
    assert!(r.measured.starts_with("1.050x"), "{r:?}");
    assert_eq!(r.pass, Some(true));
    let r = find(&rows, "N=5: gateway upload / image");
    assert_eq!(r.pass, Some(false));
}

#[test]
fn speedup_goal_depends_on_the_import_and_shows_the_machine_cpu() {
    // 43 / 14 = 3.07x: meets 3x (none) and 2.5x (dir).
    for (import, goal) in [("none", ">= 3x"), ("dir", ">= 2.5x")] {
        let rows = report::targets(&image(), &setting(import), &runs());
        let r = find(
            &rows,
            &format!("N=21: speed-up over naive in the same run, `--import {import}`"),
        );
        assert_eq!(r.goal, goal);
        assert!(r.measured.starts_with("3.07x"), "{r:?}");
        assert_eq!(r.pass, Some(true));
        assert_eq!(r.machine_cpu, "edgeswarm 50% / naive 90%");
    }
    let mut slow = runs();
    slow.last_mut().unwrap().per_node[20].seconds = Some(16.0);
    let rows = report::targets(&image(), &setting("none"), &slow);
    let r = find(
        &rows,
        "N=21: speed-up over naive in the same run, `--import none`",
    );
    assert!(r.measured.starts_with("2.69x"), "{r:?}");
    assert_eq!(r.pass, Some(false));
}

#[test]
fn links_in_ratio_is_over_n_times_the_image() {
    let rs = runs();
    let n5 = rs
        .iter()
        .find(|r| r.nodes == 5 && r.method == Method::Edgeswarm)
        .unwrap();
    // (1.02 + 4 x 1.10) / 5 = 1.084.
    let v = report::links_ratio(n5, IMAGE, true);
    assert!((v - 1.084).abs() < 1e-6, "{v}");
    let rows = report::targets(&image(), &setting("none"), &rs);
    let r = find(
        &rows,
        "N=5: bytes received over all node links / (N x image)",
    );
    assert_eq!(r.pass, Some(false));
    let r = find(
        &rows,
        "N=2: bytes received over all node links / (N x image)",
    );
    assert_eq!(r.pass, Some(true), "{r:?}");
    // (1.02 + 1.03) / 2 = 1.025.
    assert_eq!(r.measured, "1.025x");
}

#[test]
fn payload_ratio_counts_streams_gossip_and_the_gateways_registry_bytes() {
    // Two nodes: the gateway read the image from the registry and 0.01 of
    // it as gossip; the other node 1.02 images of chunk streams and 0.01
    // of gossip. Their links' counters (1.02 and 1.03) are not used.
    let mut r = es(2, 5.0, 4.4, 1.05, 1.03);
    r.per_node[0].bytes_from_cloud = IMAGE;
    r.per_node[0].metrics = Some(NodeMetrics {
        gossip_bytes_received: 0.01 * IMAGE as f64,
        ..NodeMetrics::default()
    });
    r.per_node[1].metrics = Some(NodeMetrics {
        stream_bytes_received: 1.02 * IMAGE as f64,
        gossip_bytes_received: 0.01 * IMAGE as f64,
        ..NodeMetrics::default()
    });
    let v = report::payload_ratio(&r, IMAGE).unwrap();
    // (1 + 0.01 + 1.02 + 0.01) / 2 = 1.02.
    assert!((v - 1.02).abs() < 1e-9, "{v}");
    let rows = report::targets(&image(), &setting("none"), &[r.clone()]);
    let row = find(
        &rows,
        "N=2: the same above TCP (chunk streams, gossip, registry blobs) / (N x image)",
    );
    assert_eq!((row.measured.as_str(), row.pass), ("1.020x", Some(true)));
    // A node without metrics: no figure, and no row.
    r.per_node[1].metrics = None;
    assert_eq!(report::payload_ratio(&r, IMAGE), None);
    let rows = report::targets(&image(), &setting("none"), &[r]);
    assert!(!rows.iter().any(|row| row.target.contains("above TCP")));
}

#[test]
fn summary_holds_the_run_table_and_the_targets_table() {
    let s = report::summary_markdown(&image(), &setting("none"), &runs());
    assert!(s.contains("## Links, pulls and CPU of every run"), "{s}");
    assert!(s.contains("## Issue 11 targets (edgeswarm)"), "{s}");
    // The N=2 run: gateway 1.020x in / 1.050x out, pull 4.40 s against 3.90 s alone.
    assert!(
        s.contains("| edgeswarm | 2 | 5.00 | 4.40 | 3.90 | 1.020x / 1.050x | 1.030x (1.030-1.030) | 0.100x | 1.025x / 0.575x |"),
        "{s}"
    );
    assert!(s.contains("**FAIL**") && s.contains("| pass |"), "{s}");
    assert!(s.contains("at most 100 ms"), "{s}");
    // CPU seconds (node i: 1.5 + i): gateway 1.50, nodes 1-4 mean 4.00 /
    // max 5.50 (N=5),
    // registry / watcher, then TCP segments resent (node i: 10 i of
    // 1,000): 100 of 5,000.
    assert!(
        s.contains("| 1.50 | 4.00 / 5.50 | 0.70 / - | 50% | 100 (2.00 %) |"),
        "{s}"
    );
    // A node whose counters could not be read leaves the column empty.
    let mut runs = runs();
    runs[2].per_node[1].tcp = None;
    let s = report::summary_markdown(&image(), &setting("none"), &runs);
    assert!(
        s.contains("| 1.50 | 4.00 / 5.50 | 0.70 / - | 50% | - |"),
        "{s}"
    );
}

#[test]
fn summary_says_what_was_done_to_the_hosts_memory_when_told() {
    let s = report::summary_markdown(&image(), &setting("dir"), &runs());
    assert!(!s.contains("Host memory"), "{s}");
    let mut told = setting("dir");
    told.host_memory = "free page reporting paused (order 9 -> 11)".into();
    let s = report::summary_markdown(&image(), &told, &runs());
    assert!(
        s.contains("Host memory: free page reporting paused (order 9 -> 11).\n"),
        "{s}"
    );
}

#[test]
fn cpu_rows_compare_the_mean_node_of_each_method_at_each_n_run_both_ways() {
    let mut runs = runs();
    // Edgeswarm at N=21: node i used 1.5 + i CPU-s, a mean of 11.5.
    // Naive nodes used 10 each: 1.15x, within 1.2x.
    for n in &mut runs[3].per_node {
        n.cpu_seconds = Some(10.0);
    }
    let rows = report::cpu_targets(&setting("dir"), &runs);
    // Only N=21 ran both ways.
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = find(
        &rows,
        "N=21: CPU per node, `--import dir`, over `skopeo copy` + `tar -xf` of the same bytes",
    );
    assert_eq!(row.goal, "<= 1.2x");
    assert!(
        row.measured
            .starts_with("1.150x (edgeswarm 11.50 CPU-s per node over 21 nodes / naive 10.00)"),
        "{row:?}"
    );
    assert_eq!(row.pass, Some(true));
    assert_eq!(row.machine_cpu, "edgeswarm 50% / naive 90%");

    // 9 CPU-s per naive node: 1.28x, over the goal.
    for n in &mut runs[3].per_node {
        n.cpu_seconds = Some(9.0);
    }
    let rows = report::cpu_targets(&setting("none"), &runs);
    assert_eq!(rows[0].pass, Some(false), "{rows:#?}");
    assert!(
        rows[0].target.contains("over `skopeo copy` of"),
        "{rows:#?}"
    );
    // No target for a sink the baseline does not do.
    let rows = report::cpu_targets(&setting("docker"), &runs);
    assert_eq!(rows[0].pass, None, "{rows:#?}");
    // A node whose CPU was not read leaves the row unmeasured, not judged.
    runs[3].per_node[4].cpu_seconds = None;
    let rows = report::cpu_targets(&setting("dir"), &runs);
    assert_eq!(
        (rows[0].measured.as_str(), rows[0].pass),
        ("not measured", None)
    );
    let s = report::summary_markdown(&image(), &setting("dir"), &runs);
    assert!(s.contains("## Issue 15 targets (CPU per node)"), "{s}");
}
