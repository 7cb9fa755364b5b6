//! Issue 14's containerd experiment, small: 3 real `edgeswarm` nodes with
//! their registry mirror on, a private containerd 1.6 per node namespace,
//! a real `docker-registry` behind a shaped cloud link, a ~10 MB image
//! built from this machine's files. One node's containerd pulls from the
//! registry alone (the baseline), then all three pull through their own
//! node's mirror at once. Asserts that every containerd holds the pushed
//! image complete and unpacked, that the blobs came through the mirrors
//! (the gateway from the registry, the others from peers) and that the
//! cloud link carried about one copy of the image for the three.
//!
//! Needs root (as in CI), containerd and the `edgeswarm` binary (built
//! like `experiment_small`'s; `EDGESWARM_BIN` names another). Run one
//! testnet test at a time on a shared machine
//! (`flock /work/testnet.lock cargo test ...`).

use std::path::PathBuf;
use std::time::Duration;

use edgeswarm_testnet::experiment::{self, RunSpec, Tools};
use edgeswarm_testnet::images::Layout;
use edgeswarm_testnet::mirror_pull::{self, CtrSpec, Route, Setup};
use edgeswarm_testnet::registry::{Registry, RegistryOptions};
use edgeswarm_testnet::topology::{Topology, TopologySpec};

mod support;
use support::{edgeswarm_bin, require_root};

#[test]
fn containerd_pulls_through_every_nodes_mirror_with_one_copy_over_the_cloud_link() {
    require_root();
    let tools = Tools {
        edgeswarm: edgeswarm_bin(),
        testnet: PathBuf::from(env!("CARGO_BIN_EXE_edgeswarm-testnet")),
    };
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut spec = TopologySpec::new(format!("m{}", std::process::id() % 100_000), 3);
    spec.state_dir = state.path().to_path_buf();
    let topo = Topology::up(&spec).unwrap();
    let mut reg = Registry::start(&topo, RegistryOptions::default()).unwrap();
    reg.wait_ready(&topo, &topo.node(0, 0).unwrap().ns, Duration::from_secs(20))
        .unwrap();
    let image = experiment::push_images(
        &topo,
        &tools,
        &reg.host(),
        &[10],
        false,
        Layout::Base,
        work.path(),
    )
    .unwrap()
    .remove(0);
    let ctr = CtrSpec {
        run: RunSpec {
            image: image.reference.clone(),
            work: work.path().join("run"),
            timeout: Duration::from_secs(120),
            sample_interval: Duration::from_millis(100),
            // The mirror's requests at debug: a failure prints the nodes' log
            // tails, which then say what each containerd asked for.
            rust_log: "info,libp2p=warn,edgeswarm_node::mirror=debug".into(),
            chunk_size: None,
            pace_percent: experiment::DEFAULT_PACE_PERCENT,
            keep_data: false,
            import: "none".into(),
            registry_pid: Some(reg.process().pid()),
            image_bytes: image.layer_bytes,
            watch_slow: Duration::from_millis(500),
            budgeted: None,
            pnet: false,
        },
        manifest: image.manifest.clone(),
        cpu_per_node: None,
    };

    let baseline = mirror_pull::run_direct(&topo, &ctr, "baseline", 0, &[0])
        .unwrap_or_else(|e| panic!("baseline failed: {e}"));
    let mirror = mirror_pull::run_mirror(&topo, &tools, &reg.host(), &ctr, 0)
        .unwrap_or_else(|e| panic!("mirror run failed: {e}"));
    let size = image.total_bytes as f64;
    println!(
        "{} bytes image: baseline {:.2}s (fetched {:?}), 3 nodes through their mirrors: last {:.2}s (fetched {:?}), cloud {:.3}x",
        image.total_bytes,
        baseline.last_seconds(),
        baseline.last_fetched(),
        mirror.last_seconds(),
        mirror.last_fetched(),
        mirror.cloud_bytes as f64 / size
    );

    assert_eq!(baseline.route, Route::Registry);
    assert!(baseline.per_node[0].verified, "{baseline:?}");
    let ratio = baseline.cloud_bytes as f64 / size;
    assert!((0.99..=1.1).contains(&ratio), "baseline cloud {ratio:.3}x");

    assert_eq!(mirror.per_node.len(), 3);
    for n in &mirror.per_node {
        // Complete, unpacked, the pushed digest (`ctr images check`).
        assert!(n.verified, "node {} lacks the image: {n:?}", n.node);
        let fetched = n.fetched.expect("ctr printed `unpacking`");
        assert!(fetched > 0.0 && fetched <= n.seconds, "{n:?}");
        // The blobs came through the node's own mirror, not the fallback.
        let served = n.mirror_bytes_served.expect("mirror metrics scraped");
        assert!(
            served >= image.layer_bytes as f64,
            "node {} mirror served {served} of {} layer bytes",
            n.node,
            image.layer_bytes
        );
        assert!(n.link.into_node >= image.layer_bytes, "{n:?}");
    }
    for n in &mirror.per_node[1..] {
        let peers = n.peer_bytes.unwrap_or_default();
        assert!(
            peers >= image.layer_bytes as f64,
            "node {} took {peers} bytes from peers for {} layer bytes",
            n.node,
            image.layer_bytes
        );
    }
    // The kernel's count of the cloud link: one copy for three pulls
    // (the others' tag resolutions upstream are a few hundred bytes).
    let ratio = mirror.cloud_bytes as f64 / size;
    assert!(
        (0.99..=1.1).contains(&ratio),
        "the cloud link carried {} bytes for a {}-byte image ({ratio:.3}x)",
        mirror.cloud_bytes,
        image.total_bytes
    );

    // The outputs of the CLI.
    let runs = [baseline, mirror];
    let csv = mirror_pull::write_csv(work.path(), &runs).unwrap();
    assert_eq!(
        std::fs::read_to_string(csv).unwrap().lines().count(),
        1 + 1 + 3
    );
    let summary = mirror_pull::summary_markdown(
        &Setup {
            image: image.reference.clone(),
            image_bytes: image.total_bytes,
            layers: image.layers.clone(),
            links: "test".into(),
            command: "test".into(),
        },
        &runs,
    );
    assert!(summary.contains("## Issue 14 targets"), "{summary}");
    assert!(summary.contains("| 0 (gateway) |"), "{summary}");
    drop(reg);
    topo.down().unwrap();
}
