//! A small edgeswarm experiment as an integration test: 3 real `edgeswarm`
//! node processes in a shaped emulated locality (200/100 Mbit/s), a real
//! `docker-registry` in the cloud namespace, a realistic ~10 MB image built
//! from this machine's files. Asserts that every node imports the image
//! (release `done`, its files in each node's rootfs dir) and that the cloud
//! link, by kernel counters, carried about one copy of it.
//!
//! Needs root (as in CI) and the `edgeswarm` binary, which this test builds
//! with `cargo build -p edgeswarm-node --bin edgeswarm` into the target
//! directory it runs from (set `EDGESWARM_BIN` to use another binary).

use std::path::PathBuf;
use std::time::Duration;

use edgeswarm_testnet::experiment::{self, RunSpec, Tools};
use edgeswarm_testnet::images::Layout;
use edgeswarm_testnet::registry::{Registry, RegistryOptions};
use edgeswarm_testnet::topology::{Topology, TopologySpec};

mod support;
use support::{edgeswarm_bin, require_root};

#[test]
fn three_nodes_import_a_real_image_with_one_copy_over_the_cloud_link() {
    require_root();
    let tools = Tools {
        edgeswarm: edgeswarm_bin(),
        testnet: PathBuf::from(env!("CARGO_BIN_EXE_edgeswarm-testnet")),
    };
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut spec = TopologySpec::new(format!("x{}", std::process::id() % 100_000), 3);
    spec.state_dir = state.path().to_path_buf();
    let topo = Topology::up(&spec).unwrap();
    let mut reg = Registry::start(&topo, RegistryOptions::default()).unwrap();
    reg.wait_ready(&topo, &topo.node(0, 0).unwrap().ns, Duration::from_secs(20))
        .unwrap();

    let images = experiment::push_images(
        &topo,
        &tools,
        &reg.host(),
        &[10],
        false,
        Layout::Base,
        work.path(),
    )
    .unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    assert!(
        (7_000_000..14_000_000).contains(&image.total_bytes),
        "a ~10 MB image, got {image:?}"
    );
    assert!(image.layers.len() >= 3, "multi-layer image: {image:?}");

    let run = RunSpec {
        image: image.reference.clone(),
        work: work.path().join("run"),
        timeout: Duration::from_secs(180),
        sample_interval: Duration::from_millis(100),
        rust_log: "info,libp2p=warn".into(),
        chunk_size: None,
        pace_percent: experiment::DEFAULT_PACE_PERCENT,
        keep_data: true,
        import: "dir".into(),
        registry_pid: Some(reg.process().pid()),
        image_bytes: image.layer_bytes,
        watch_slow: Duration::from_millis(500),
        budgeted: None,
        pnet: false,
    };
    let result = experiment::run_edgeswarm(&topo, &tools, &reg.host(), &run, &mut |_| {})
        .unwrap_or_else(|e| panic!("edgeswarm run failed: {e}"));

    assert_eq!(result.per_node.len(), 3);
    let dir_name = edgeswarm_node::import::image_dir_name(&image.reference);
    for n in &result.per_node {
        assert!(
            n.seconds.is_some(),
            "node {} never reported done: {n:?}",
            n.node
        );
        assert!(n.verified, "node {} lacks the image's files: {n:?}", n.node);
        let run_sh = run
            .work
            .join(format!("es-data/n{}/rootfs/{dir_name}/app/run.sh", n.node));
        let text = std::fs::read_to_string(&run_sh).unwrap();
        assert!(
            text.contains("edgeswarm app v1"),
            "{}: {text:?}",
            run_sh.display()
        );
    }
    // Only the gateway (node 0) pulled from the registry; the others got
    // every layer byte from peers.
    assert_eq!(result.per_node[0].bytes_from_cloud, image.layer_bytes);
    for n in &result.per_node[1..] {
        assert_eq!(
            n.bytes_from_cloud, 0,
            "node {} pulled from the cloud",
            n.node
        );
        assert_eq!(n.bytes_from_peers, image.layer_bytes, "node {}", n.node);
    }
    // The kernel's count of the cloud link: about one copy of the image.
    let ratio = result.cloud_bytes as f64 / image.total_bytes as f64;
    println!(
        "3 nodes, {} bytes image: last node {:?} s, cloud link {} bytes ({ratio:.3}x)",
        image.total_bytes,
        result.last_seconds(),
        result.cloud_bytes
    );
    assert!(
        (0.99..=1.1).contains(&ratio),
        "cloud link carried {} bytes for a {}-byte image ({ratio:.3}x)",
        result.cloud_bytes,
        image.total_bytes
    );

    // What every run reports besides times (issue 11).
    let layers = image.layer_bytes;
    for n in &result.per_node {
        // Every node took the whole image in over its own link: the
        // bridge-port counters are wired to the right nodes.
        assert!(
            n.link.into_node >= layers,
            "node {} link in {} < layer bytes {layers}",
            n.node,
            n.link.into_node
        );
        let cpu = n.cpu_seconds.expect("node CPU seconds");
        assert!(cpu > 0.0, "node {} used no CPU?", n.node);
        let gap = n.done_gap.expect("poll gap at done");
        assert!(
            gap < 0.4,
            "node {} seen done {gap} s after the previous poll",
            n.node
        );
        assert!(n.metrics.is_some(), "node {} /metrics not scraped", n.node);
    }
    // The cloud link's bytes all went to the gateway, over its link.
    let gw = &result.per_node[0];
    assert!(gw.link.into_node >= result.cloud_bytes);
    // The other nodes stored every layer byte as verified peer chunks, and
    // the chunks they got were served by someone.
    let uploaded: f64 = result
        .per_node
        .iter()
        .map(|n| n.metrics.unwrap().bytes_uploaded)
        .sum();
    for n in &result.per_node[1..] {
        let m = n.metrics.unwrap();
        assert!(
            m.bytes_downloaded >= layers as f64,
            "node {}: {m:?}",
            n.node
        );
    }
    assert!(uploaded >= 2.0 * layers as f64, "uploaded {uploaded}");
    assert!(result.registry_cpu_seconds.expect("registry CPU") > 0.0);
    assert!(result.watcher_cpu_seconds.is_some(), "watcher CPU not read");
    let pull = result.pull_seconds.expect("gateway pull time");
    assert!(
        pull > 0.0 && pull <= result.last_seconds().unwrap() + 0.5,
        "pull {pull} s, last node {:?}",
        result.last_seconds()
    );
    let summary = edgeswarm_testnet::report::summary_markdown(
        &edgeswarm_testnet::report::ImageInfo {
            reference: image.reference.clone(),
            bytes: image.total_bytes,
        },
        &edgeswarm_testnet::report::Setting {
            import: "dir".into(),
            ..Default::default()
        },
        std::slice::from_ref(&result),
    );
    println!("{summary}");
    assert!(summary.contains("## Issue 11 targets"), "{summary}");
    assert!(summary.contains("| edgeswarm | 3 |"), "{summary}");
    assert!(
        summary.contains("N=3: bytes the gateway takes from peers for layers it pulls"),
        "{summary}"
    );

    // The same locality closed by a swarm key (pnet), as the node's
    // defaults require: it forms and delivers the image the same way.
    let pnet_spec = RunSpec {
        work: work.path().join("pnet"),
        import: "none".into(),
        keep_data: false,
        pnet: true,
        ..run.clone()
    };
    let pnet = experiment::run_edgeswarm(&topo, &tools, &reg.host(), &pnet_spec, &mut |_| {})
        .unwrap_or_else(|e| panic!("edgeswarm run with a swarm key failed: {e}"));
    assert!(pnet_spec.work.join("es-data/swarm.key").exists());
    for n in &pnet.per_node {
        assert!(n.seconds.is_some() && n.verified, "with pnet: {n:?}");
    }
    assert_eq!(pnet.per_node[1].bytes_from_peers, image.layer_bytes);

    // The naive baseline with `dir`: every node copies the image with
    // skopeo, then extracts its layers with tar (issue 15's CPU baseline).
    let naive_spec = RunSpec {
        work: work.path().join("naive"),
        ..run.clone()
    };
    let naive = experiment::run_naive(&topo, &naive_spec)
        .unwrap_or_else(|e| panic!("naive run failed: {e}"));
    let ratio = naive.cloud_bytes as f64 / image.total_bytes as f64;
    assert!(
        (2.9..=3.3).contains(&ratio),
        "3 naive pulls carried {ratio:.3}x the image over the cloud link"
    );
    for n in &naive.per_node {
        assert!(n.seconds.is_some() && n.verified, "naive node: {n:?}");
        let run_sh = naive_spec
            .work
            .join(format!("naive-data/n{}/rootfs/app/run.sh", n.node));
        let text = std::fs::read_to_string(&run_sh).unwrap();
        assert!(
            text.contains("edgeswarm app v1"),
            "{}: {text:?}",
            run_sh.display()
        );
        assert!(n.cpu_seconds.expect("naive CPU seconds") > 0.0, "{n:?}");
    }
    let both = [result.clone(), naive];
    let setting = edgeswarm_testnet::report::Setting {
        import: "dir".into(),
        ..Default::default()
    };
    let rows = edgeswarm_testnet::report::cpu_targets(&setting, &both);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert!(rows[0].target.starts_with("N=3: CPU per node"), "{rows:#?}");
    assert!(rows[0].pass.is_some(), "{rows:#?}");
    println!("{rows:#?}");
    drop(reg);
    topo.down().unwrap();
}
