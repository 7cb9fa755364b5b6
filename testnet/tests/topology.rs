//! Integration tests of the testnet topology against the real kernel: real
//! namespaces, veths, bridges, tbf shaping, iperf3 and docker-registry.
//!
//! They need root (as here and in CI). Without root they fail with a clear
//! message instead of passing silently. Each test uses its own testnet name
//! and state directory, so they run in parallel.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edgeswarm_testnet::counters::{Probe, Sampler};
use edgeswarm_testnet::process::SpawnSpec;
use edgeswarm_testnet::registry::{Registry, RegistryOptions};
use edgeswarm_testnet::topology::{self, CongestionControl, Topology, TopologySpec};
use edgeswarm_testnet::{Rate, TestnetError};

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap();
    assert_eq!(euid, "0", "these tests build network namespaces and need root: run them as root (sudo -E cargo test -p edgeswarm-testnet)");
}

/// A unique testnet name (<= 12 chars) and a private state dir.
fn setup(tag: &str, nodes: usize) -> (TopologySpec, tempfile::TempDir) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("t{}{}", std::process::id() % 100_000, tag);
    let mut spec = TopologySpec::new(name, nodes);
    spec.state_dir = dir.path().to_path_buf();
    (spec, dir)
}

fn namespaces() -> Vec<String> {
    topology::list_namespaces().unwrap()
}

/// Runs iperf3 between two namespaces of `topo` and returns what the
/// receiver measured in Mbit/s. `reverse`: the server sends.
fn iperf(
    topo: &Topology,
    log_dir: &Path,
    server_ns: &str,
    server: Ipv4Addr,
    client_ns: &str,
    args: &[&str],
) -> f64 {
    let port = "5201";
    let _srv = topo
        .spawn(
            server_ns,
            SpawnSpec::new("iperf3", log_dir.join(format!("iperf-{server_ns}.log"))).args([
                "-s",
                "-1",
                "-B",
                &server.to_string(),
                "-p",
                port,
            ]),
        )
        .unwrap();
    let addr = server.to_string();
    let mut full = vec!["-c", addr.as_str(), "-p", port, "-J"];
    full.extend_from_slice(args);
    for _ in 0..50 {
        let out = topo.exec_output(client_ns, "iperf3", &full).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // iperf3 3.12 with -J may exit 0 on "connection refused": trust the JSON.
        if out.status.success() && v["error"].is_null() {
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or_else(|| {
                    panic!(
                        "iperf3 JSON lacks end.sum_received: {}",
                        String::from_utf8_lossy(&out.stdout)
                    )
                });
            return bps / 1e6;
        }
        // The server may not listen yet: retry "connection refused" only.
        let err = v["error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains("refused") || err.contains("unable to connect"),
            "iperf3 failed: {err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("iperf3 server in {server_ns} never accepted");
}

/// Moves exactly `bytes` over one TCP connection from `from_ns` to a sink
/// at `to` in `to_ns`; returns once the sink has read them all.
fn tcp_transfer(
    topo: &Topology,
    log_dir: &Path,
    to_ns: &str,
    to: Ipv4Addr,
    from_ns: &str,
    bytes: u64,
) {
    let bin = env!("CARGO_BIN_EXE_edgeswarm-testnet");
    let listen = format!("{to}:6001");
    let log = log_dir.join(format!("sink-{to_ns}-{}.log", bytes));
    let mut sink = topo
        .spawn(
            to_ns,
            SpawnSpec::new(bin, &log).args(["probe", "tcp-sink", "--listen", &listen]),
        )
        .unwrap();
    let out = topo
        .exec_output(
            from_ns,
            bin,
            &[
                "probe",
                "tcp-send",
                "--to",
                &listen,
                "--bytes",
                &bytes.to_string(),
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{from_ns} -> {listen}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = sink
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("sink exits after the transfer");
    assert!(status.success());
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains(&format!("received {bytes} bytes")));
}

#[test]
fn up_gives_tcp_connectivity_node_to_node_and_node_to_cloud() {
    let (spec, dir) = setup("conn", 3);
    let topo = Topology::up(&spec).unwrap();
    assert_eq!(topo.nodes().count(), 3);
    let cloud = topo.cloud().clone();
    // Every node reaches the cloud address through the cloud link.
    for n in topo.nodes() {
        tcp_transfer(&topo, dir.path(), &cloud.ns, cloud.addr, &n.ns, 100_000);
    }
    // Node to node over the bridge, both ways round the ring.
    let nodes: Vec<_> = topo.nodes().cloned().collect();
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        tcp_transfer(
            &topo,
            dir.path(),
            &nodes[b].ns,
            nodes[b].addr,
            &nodes[a].ns,
            100_000,
        );
    }
    // Each node sees its own address and a default route via its router.
    let routes = topo.exec(&nodes[1].ns, "ip", &["-4", "route"]).unwrap();
    assert!(routes.contains("default via 10.77.1.1"), "{routes}");
    topo.down().unwrap();
}

#[test]
fn node_links_are_shaped_in_both_directions() {
    let (spec, dir) = setup("nrate", 2);
    let topo = Topology::up(&spec).unwrap(); // node 100mbit, cloud 200mbit
    let cloud = topo.cloud().clone();
    let n0 = topo.node(0, 0).unwrap().clone();
    let n1 = topo.node(0, 1).unwrap().clone();
    // Cloud link (200mbit) is faster: node->cloud is bounded by the node's upload shaper.
    let up = iperf(
        &topo,
        dir.path(),
        &cloud.ns,
        cloud.addr,
        &n0.ns,
        &["-t", "2"],
    );
    // cloud->node (-R) is bounded by the bridge port's shaper (the node's download).
    let down = iperf(
        &topo,
        dir.path(),
        &cloud.ns,
        cloud.addr,
        &n0.ns,
        &["-t", "2", "-R"],
    );
    let peer = iperf(&topo, dir.path(), &n1.ns, n1.addr, &n0.ns, &["-t", "2"]);
    eprintln!("100mbit node link: upload {up:.1} Mbit/s, download {down:.1} Mbit/s, node->node {peer:.1} Mbit/s");
    for (what, m) in [("upload", up), ("download", down), ("node->node", peer)] {
        assert!(
            (60.0..=110.0).contains(&m),
            "{what} over a 100mbit node link measured {m:.1} Mbit/s"
        );
    }
    topo.down().unwrap();
}

/// `(burst, latency_us)` of the tbf root qdisc on `dev` in `ns`, as the
/// kernel reports them (`tc -j qdisc show`).
fn tbf_options(ns: &str, dev: &str) -> (u64, u64) {
    let out = Command::new("tc")
        .args(["-n", ns, "-j", "qdisc", "show", "dev", dev])
        .output()
        .unwrap();
    assert!(out.status.success(), "tc qdisc show in {ns}: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = v
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["kind"] == "tbf" && q["root"] == true)
        .unwrap_or_else(|| panic!("no root tbf on {dev} in {ns}: {v}"));
    (
        q["options"]["burst"].as_u64().unwrap(),
        q["options"]["lat"].as_u64().unwrap(),
    )
}

/// The kernel keeps the bucket in time units at the rate: it reads back a
/// few bytes off what was asked.
fn assert_burst(what: &str, got: u64, want: u64) {
    assert!(
        got.abs_diff(want) <= want / 500,
        "{what}: tbf burst {got} bytes, asked for {want}"
    );
}

#[test]
fn burst_and_queue_reach_every_shaper() {
    let (mut spec, _dir) = setup("burst", 2);
    spec.queue_ms = 100;
    spec.burst = Some("256kb".parse().unwrap());
    let topo = Topology::up(&spec).unwrap();
    assert_eq!(
        topo.state().burst,
        spec.burst,
        "burst recorded in the state"
    );
    let loc = topo.locality(0).unwrap().clone();
    let mut shapers = vec![
        ("cloud end of the cloud link", loc.cloud_link.clone()),
        (
            "router end of the cloud link",
            loc.cloud_link_router_end.clone(),
        ),
    ];
    for n in &loc.nodes {
        shapers.push(("node end of a node link", n.link.clone()));
        shapers.push(("bridge end of a node link", n.bridge_port.clone()));
    }
    for (what, iface) in &shapers {
        let (burst, lat) = tbf_options(&iface.ns, &iface.name);
        assert_burst(what, burst, 262_144);
        assert_eq!(lat, 100_000, "{what}: tbf latency (us)");
    }
    topo.down().unwrap();

    // Without --burst: 10 ms at each link's rate, as before the option.
    let (spec, _dir) = setup("burstd", 1);
    let topo = Topology::up(&spec).unwrap();
    let loc = topo.locality(0).unwrap().clone();
    let (cloud, _) = tbf_options(&loc.cloud_link.ns, &loc.cloud_link.name);
    assert_burst("default cloud link", cloud, 250_000);
    let n0 = &loc.nodes[0].bridge_port;
    let (node, _) = tbf_options(&n0.ns, &n0.name);
    assert_burst("default node link", node, 125_000);
    topo.down().unwrap();

    // Out of range: refused before anything is built.
    let (mut spec, _dir) = setup("burstx", 1);
    spec.burst = Some(edgeswarm_testnet::ByteSize::bytes(100));
    assert!(matches!(
        Topology::up(&spec),
        Err(TestnetError::InvalidSpec(_))
    ));
}

#[test]
fn bridged_frames_skip_the_hosts_netfilter() {
    let (spec, _dir) = setup("brnf", 1);
    let topo = Topology::up(&spec).unwrap();
    let loc = topo.locality(0).unwrap().clone();
    let host_has_br_netfilter = Path::new(topology::BRIDGE_NETFILTER_SYSCTLS[0]).exists();
    for ns in [topo.state().cloud.ns.clone(), loc.lan_ns.clone()] {
        for sysctl in topology::BRIDGE_NETFILTER_SYSCTLS {
            let value = topo
                .exec(
                    &ns,
                    "sh",
                    &["-c", &format!("cat {sysctl} 2>/dev/null || echo absent")],
                )
                .unwrap();
            let want = if host_has_br_netfilter { "0" } else { "absent" };
            assert_eq!(value.trim(), want, "{sysctl} in {ns}");
        }
    }
    topo.down().unwrap();
}

#[test]
fn congestion_control_reaches_every_namespace() {
    let cc_of = |topo: &Topology, ns: &str| {
        topo.exec(ns, "cat", &["/proc/sys/net/ipv4/tcp_congestion_control"])
            .unwrap()
            .trim()
            .to_string()
    };
    let host = topology::host_congestion_control().expect("readable");
    // Reno is built into every kernel; pick it unless the host already
    // runs it, so that inheritance cannot pass for the setting.
    let (want, other) = if host == "reno" {
        (CongestionControl::Cubic, "cubic")
    } else {
        (CongestionControl::Reno, "reno")
    };
    let (mut spec, _dir) = setup("ccset", 1);
    spec.congestion_control = Some(want);
    let topo = Topology::up(&spec).unwrap();
    assert_eq!(topo.state().congestion_control, Some(want));
    let loc = topo.locality(0).unwrap().clone();
    for ns in [
        topo.state().cloud.ns.clone(),
        loc.router_ns.clone(),
        loc.nodes[0].ns.clone(),
    ] {
        assert_eq!(cc_of(&topo, &ns), other, "namespace {ns}");
    }
    topo.down().unwrap();

    // Without the option, namespaces inherit the host's.
    let (spec, _dir) = setup("ccdef", 1);
    let topo = Topology::up(&spec).unwrap();
    let n0 = topo.locality(0).unwrap().nodes[0].ns.clone();
    assert_eq!(cc_of(&topo, &n0), host);
    topo.down().unwrap();
}

#[test]
fn cloud_link_is_shaped_in_both_directions() {
    let (mut spec, dir) = setup("crate", 1);
    spec.cloud_rate = Rate::mbit(20);
    let topo = Topology::up(&spec).unwrap();
    let cloud = topo.cloud().clone();
    let n0 = topo.node(0, 0).unwrap().clone();
    let up = iperf(
        &topo,
        dir.path(),
        &cloud.ns,
        cloud.addr,
        &n0.ns,
        &["-t", "2"],
    );
    let down = iperf(
        &topo,
        dir.path(),
        &cloud.ns,
        cloud.addr,
        &n0.ns,
        &["-t", "2", "-R"],
    );
    eprintln!(
        "20mbit cloud link from a 100mbit node: upload {up:.1} Mbit/s, download {down:.1} Mbit/s"
    );
    for (what, m) in [("upload", up), ("download", down)] {
        assert!(
            (10.0..30.0).contains(&m),
            "{what} over a 20mbit cloud link measured {m:.1} Mbit/s"
        );
    }
    topo.down().unwrap();
}

#[test]
fn down_removes_everything_up_created_and_nothing_else() {
    let (spec, _dir) = setup("down", 3);
    let keep = format!("zz-keep-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &keep])
        .status()
        .unwrap()
        .success());
    // A neighbouring testnet whose name extends ours must survive too.
    let mut other_spec = spec.clone();
    other_spec.name = format!("{}x", spec.name);
    let other = Topology::up(&other_spec).unwrap();
    let topo = Topology::up(&spec).unwrap();
    let created = topo.state().namespaces.clone();
    assert_eq!(
        created.len(),
        1 + 2 + 3,
        "cloud, router, lan, 3 nodes: {created:?}"
    );
    let before = namespaces();
    for ns in &created {
        assert!(before.contains(ns), "{ns} missing after up");
    }
    // A process started outside the library, living in a node namespace.
    let mut stray = Command::new("ip")
        .args(["netns", "exec", &created[5], "sleep", "600"])
        .spawn()
        .unwrap();
    // Wait until it has entered the namespace.
    let pid = stray.id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["netns", "pids", &created[5]])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|p| p == pid)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stray process never entered {}",
            created[5]
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let state_file = topo.state_path().to_path_buf();
    assert!(state_file.exists());

    topology::down(&spec.state_dir, &spec.name).unwrap();
    // This handle's drop now finds nothing left to remove (and must not fail).
    drop(topo);

    let after = namespaces();
    for ns in &created {
        assert!(!after.contains(ns), "{ns} survived down");
    }
    assert!(
        after.contains(&keep),
        "pre-existing namespace {keep} was removed"
    );
    for ns in &other.state().namespaces {
        assert!(after.contains(ns), "other testnet's {ns} was removed");
    }
    assert!(!state_file.exists(), "state file survived down");
    let status = stray.wait_timeout_compat(Duration::from_secs(5));
    assert!(status, "process in a removed namespace still runs");
    assert!(Command::new("ip")
        .args(["netns", "del", &keep])
        .status()
        .unwrap()
        .success());
    other.down().unwrap();
}

trait WaitCompat {
    fn wait_timeout_compat(&mut self, d: Duration) -> bool;
}
impl WaitCompat for std::process::Child {
    fn wait_timeout_compat(&mut self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        while std::time::Instant::now() < deadline {
            if self.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.kill();
        false
    }
}

#[test]
fn up_refuses_a_name_in_use_and_touches_nothing() {
    let (spec, _dir) = setup("dup", 1);
    let topo = Topology::up(&spec).unwrap();
    let err = Topology::up(&spec).unwrap_err();
    assert!(matches!(err, TestnetError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("down --name"), "{err}");
    // The refused `up` removed nothing of the first one.
    let ns = namespaces();
    for n in &topo.state().namespaces {
        assert!(ns.contains(n), "{n} removed by a refused up");
    }
    // A stray namespace with the prefix (no state file) also blocks `up`.
    let (mut spec2, _dir2) = setup("dup2", 1);
    spec2.name = format!("{}s", spec.name);
    let stray = format!("es-{}-stray", spec2.name);
    assert!(Command::new("ip")
        .args(["netns", "add", &stray])
        .status()
        .unwrap()
        .success());
    let err = Topology::up(&spec2).unwrap_err();
    assert!(matches!(err, TestnetError::AlreadyExists { .. }), "{err}");
    assert!(namespaces().contains(&stray));
    assert!(Command::new("ip")
        .args(["netns", "del", &stray])
        .status()
        .unwrap()
        .success());
    topo.down().unwrap();
}

#[test]
fn cloud_link_counters_and_sampler_see_the_bytes_sent() {
    let (spec, dir) = setup("ctr", 2);
    let topo = Topology::up(&spec).unwrap();
    let cloud = topo.cloud().clone();
    let loc = topo.locality(0).unwrap().clone();
    let n0 = topo.node(0, 0).unwrap().clone();
    let n1 = topo.node(0, 1).unwrap().clone();
    let csv = dir.path().join("util.csv");
    let sampler = Sampler::start(
        vec![
            Probe::new("cloud", loc.cloud_link.clone()),
            Probe::new("node0", n0.link.clone()),
            Probe::new("node1", n1.link.clone()),
        ],
        Duration::from_millis(200),
        Some(csv.clone()),
    )
    .unwrap();
    let before = topo.counters(&loc.cloud_link).unwrap();
    // The cloud sends 20 MiB to node 0; returns once node 0 has read it all.
    tcp_transfer(&topo, dir.path(), &n0.ns, n0.addr, &cloud.ns, 20 << 20);
    let after = topo.counters(&loc.cloud_link).unwrap();
    let series = sampler.stop().unwrap();
    let direct = after.since(&before);
    let sampled = series.delta("cloud").unwrap();
    let node0 = series.delta("node0").unwrap();
    let node1 = series.delta("node1").unwrap();
    eprintln!(
        "cloud link tx {} B (sampled {} B), node0 rx {} B, node1 rx {} B",
        direct.tx_bytes, sampled.tx_bytes, node0.rx_bytes, node1.rx_bytes
    );
    // 20 MiB of payload plus TCP/IP headers (~3-5 %).
    let payload = 20 << 20;
    for (what, b) in [
        ("cloud tx", direct.tx_bytes),
        ("sampled cloud tx", sampled.tx_bytes),
        ("node0 rx", node0.rx_bytes),
    ] {
        assert!(
            b >= payload && b <= payload * 110 / 100,
            "{what} = {b}, expected about {payload}"
        );
    }
    assert!(
        node1.rx_bytes < 100_000,
        "node1 received {} B it was not sent",
        node1.rx_bytes
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("t_s,link,rx_bytes,tx_bytes,rx_mbit_s,tx_mbit_s,rx_packets,tx_packets\n")
    );
    let cloud_rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(1) == Some("cloud"))
        .map(|l| l.split(',').filter_map(|f| f.parse().ok()).collect())
        .collect();
    assert!(
        cloud_rows.len() >= 5,
        "only {} samples in {:.1} s",
        cloud_rows.len(),
        series.samples.last().unwrap().t_s
    );
    let peak = cloud_rows.iter().map(|r| r[4]).fold(0.0, f64::max);
    eprintln!(
        "cloud link peak {peak:.1} Mbit/s over 200 ms samples ({} rows)",
        cloud_rows.len()
    );
    assert!(
        peak > 40.0 && peak < 130.0,
        "peak cloud tx {peak:.1} Mbit/s; the transfer is bounded by the 100mbit node link"
    );
    topo.down().unwrap();
}

#[test]
fn registry_in_cloud_answers_from_a_node_namespace() {
    let (spec, _dir) = setup("reg", 3);
    let topo = Topology::up(&spec).unwrap();
    let n2 = topo.node(0, 2).unwrap().clone();
    let mut reg = Registry::start(&topo, RegistryOptions::default()).unwrap();
    assert_eq!(reg.url(), "http://10.77.250.1:5000");
    reg.wait_ready(&topo, &n2.ns, Duration::from_secs(15))
        .unwrap();
    let headers = topo
        .exec(
            &n2.ns,
            "curl",
            &[
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                &format!("{}/v2/", reg.url()),
            ],
        )
        .unwrap();
    assert!(headers.contains(" 200"), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("docker-distribution-api-version: registry/2.0"),
        "{headers}"
    );
    let pid = reg.process().pid();
    let root = reg.root_dir().to_path_buf();
    drop(reg);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "registry process survived drop"
    );
    assert!(!root.exists(), "temporary storage survived drop");
    topo.down().unwrap();
}

#[test]
fn host_link_reaches_the_registry_shaped_and_goes_away_on_drop() {
    let (spec, _dir) = setup("hl", 1);
    let topo = Topology::up(&spec).unwrap();
    let n0 = topo.node(0, 0).unwrap().clone();
    let mut reg = Registry::start(&topo, RegistryOptions::default()).unwrap();
    reg.wait_ready(&topo, &n0.ns, Duration::from_secs(15))
        .unwrap();
    let host_if = format!("esh-{}", spec.name);
    let link = topo.host_link(Rate::mbit(100), 50).unwrap();

    // Shaped both ways.
    let host_qdisc = run_ok("tc", &["qdisc", "show", "dev", &host_if]);
    assert!(
        host_qdisc.contains("tbf") && host_qdisc.contains("100Mbit"),
        "{host_qdisc}"
    );
    let cloud_qdisc = topo
        .exec(
            &link.cloud_end.ns,
            "tc",
            &["qdisc", "show", "dev", &link.cloud_end.name],
        )
        .unwrap();
    assert!(
        cloud_qdisc.contains("tbf") && cloud_qdisc.contains("100Mbit"),
        "{cloud_qdisc}"
    );

    // The host (this process, in the host's namespace) reaches the registry
    // over the link, and the link's counters see the answer.
    let before = topo.counters(&link.cloud_end).unwrap();
    let headers = run_ok(
        "curl",
        &[
            "-s",
            "--max-time",
            "10",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{}/v2/", reg.url()),
        ],
    );
    assert!(headers.contains(" 200"), "{headers}");
    let after = topo.counters(&link.cloud_end).unwrap();
    assert!(
        after.tx_bytes > before.tx_bytes,
        "the registry's answer did not cross the host link"
    );

    // Only one host link at a time: every registry has the same address.
    let second = topo.host_link(Rate::mbit(100), 50).unwrap_err();
    assert!(second.to_string().contains("host link"), "{second}");

    drop(link);
    let gone = Command::new("ip")
        .args(["link", "show", &host_if])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "host end survived drop");
    let route = run_ok("ip", &["route", "show", "10.77.250.1/32"]);
    assert!(route.trim().is_empty(), "route survived drop: {route}");
    drop(reg);
    topo.down().unwrap();
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn spawned_process_has_its_log_and_data_dir_and_dies_with_its_handle() {
    let (spec, dir) = setup("proc", 1);
    let topo = Topology::up(&spec).unwrap();
    let n0 = topo.node(0, 0).unwrap().clone();
    let data = dir.path().join("data0");
    let log = dir.path().join("logs/n0.log");
    let mut p = topo
        .spawn(&n0.ns, SpawnSpec::new("sh", &log).args(["-c", "echo hello from $EDGESWARM_TESTNET_NS in $(pwd); ip -4 -o addr show dev eth0; exec sleep 600"]).data_dir(&data))
        .unwrap();
    assert!(data.is_dir());
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("10.77.1.10") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        text.contains(&format!("hello from {} in {}", n0.ns, data.display())),
        "{text}"
    );
    assert!(
        text.contains("10.77.1.10/24"),
        "process not in the node namespace: {text}"
    );
    assert!(p.try_wait().unwrap().is_none());
    let pid = p.pid();
    drop(p);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process survived its handle"
    );
    // Namespaces outside the testnet are refused.
    let err = topo
        .spawn("some-other-ns", SpawnSpec::new("true", &log))
        .unwrap_err();
    assert!(matches!(err, TestnetError::InvalidSpec(_)), "{err}");
    topo.down().unwrap();
}

#[test]
fn dropping_a_topology_removes_it() {
    let (spec, _dir) = setup("drop", 2);
    let created = {
        let topo = Topology::up(&spec).unwrap();
        topo.state().namespaces.clone()
    };
    let after = namespaces();
    for ns in &created {
        assert!(!after.contains(ns), "{ns} survived drop");
    }
}

#[test]
fn cli_up_exec_down_and_refusals() {
    let (spec, dir) = setup("cli", 2);
    let bin = env!("CARGO_BIN_EXE_edgeswarm-testnet");
    let sd = dir.path().to_str().unwrap();
    let out = Command::new(bin)
        .args([
            "--state-dir",
            sd,
            "up",
            "--nodes",
            "2",
            "--name",
            &spec.name,
            "--json",
            "--registry",
            "--registry-dir",
            &format!("{sd}/reg"),
            "--burst",
            "200kb",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["localities"][0]["nodes"][1]["addr"], "10.77.1.11");
    assert_eq!(v["cloud"]["addr"], "10.77.250.1");
    assert_eq!(v["burst"], "200kb");
    let port = &v["localities"][0]["nodes"][1]["bridge_port"];
    let (burst, _) = tbf_options(port["ns"].as_str().unwrap(), port["name"].as_str().unwrap());
    assert_burst("--burst 200kb on a bridge port", burst, 204_800);
    let out = Command::new(bin)
        .args([
            "--state-dir",
            sd,
            "exec",
            "--name",
            &spec.name,
            "--node",
            "1",
            "--",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.1.11/24"));
    let out = Command::new(bin)
        .args([
            "--state-dir",
            sd,
            "exec",
            "--name",
            &spec.name,
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "exec must pass the exit code through"
    );
    // `sample` records every cloud and node link.
    let csv = dir.path().join("links.csv");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .arg("--state-dir")
            .arg(sd)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = run(&[
        "sample",
        "--name",
        &spec.name,
        "--interval-ms",
        "50",
        "--seconds",
        "0.3",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(
        printed.contains("cloud0") && printed.contains("n0-1"),
        "{printed}"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    for label in ["cloud0", "n0-0", "n0-1"] {
        let rows = text
            .lines()
            .filter(|l| l.split(',').nth(1) == Some(label))
            .count();
        assert!(rows >= 3, "{rows} rows for {label} in {text}");
    }
    // `up --registry` left a registry answering in the cloud namespace.
    let code = run(&[
        "exec",
        "--name",
        &spec.name,
        "--node",
        "1",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://10.77.250.1:5000/v2/",
    ]);
    assert_eq!(code, "200");
    assert!(Path::new(&format!("{sd}/reg/{}/registry/registry.yml", spec.name)).exists());
    // An orphaned namespace (state file lost) is listed and removable.
    let orphan_name = format!("{}o", spec.name);
    let orphan = format!("es-{orphan_name}-n0-0");
    assert!(Command::new("ip")
        .args(["netns", "add", &orphan])
        .status()
        .unwrap()
        .success());
    let listed = run(&["list"]);
    assert!(
        listed.contains(&format!("orphan namespace {orphan}")),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("{}: 1 localities x 2 nodes", spec.name)),
        "{listed}"
    );
    run(&["down", "--name", &orphan_name, "--orphans"]);
    assert!(!namespaces().contains(&orphan));
    let out = Command::new(bin)
        .args(["--state-dir", sd, "down", "--name", &spec.name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = namespaces();
    assert!(!ns
        .iter()
        .any(|n| n.starts_with(&format!("es-{}-", spec.name))));
    assert!(
        !Path::new(&format!("{sd}/reg/{}", spec.name)).exists(),
        "down left the registry dir"
    );
    // Refusals, with what to do about them.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin,
            "--state-dir",
            sd,
            "up",
            "--name",
            &spec.name,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .env("PATH", empty.path())
        .args(["--state-dir", sd, "up", "--name", &spec.name])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`ip` not found") && err.contains("apt-get install iproute2"),
        "{err}"
    );
    let out = Command::new(bin)
        .args(["--state-dir", sd, "up", "--name", "Bad-Name"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid testnet name"));
    let out = Command::new(bin)
        .args(["--state-dir", sd, "up", "--node-rate", "100mbps"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bit, kbit, mbit or gbit"));
    assert!(
        !namespaces()
            .iter()
            .any(|n| n.starts_with(&format!("es-{}-", spec.name))),
        "a refused up created namespaces"
    );
}

#[test]
fn multicast_floods_the_locality_bridge_and_localities_route_via_the_cloud() {
    let (mut spec, dir) = setup("mcast", 3);
    spec.localities = 2;
    let topo = Topology::up(&spec).unwrap();
    let bin = env!("CARGO_BIN_EXE_edgeswarm-testnet");
    let n = |l, i| topo.node(l, i).unwrap().clone();
    let (sender, same1, same2, other) = (n(0, 0), n(0, 1), n(0, 2), n(1, 0));
    // mDNS-style receivers: two in the sender's locality, one in the other.
    let mut receivers = Vec::new();
    for r in [&same1, &same2, &other] {
        let log = dir.path().join(format!("{}.log", r.ns));
        let p = topo
            .spawn(
                &r.ns,
                SpawnSpec::new(bin, &log).args([
                    "probe",
                    "mcast-recv",
                    "--iface",
                    &r.addr.to_string(),
                    "--timeout-ms",
                    "2500",
                ]),
            )
            .unwrap();
        receivers.push((r.ns.clone(), log, p));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for (ns, log, _) in &receivers {
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "receiver in {ns} never got ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let out = topo
        .exec_output(
            &sender.ns,
            bin,
            &[
                "probe",
                "mcast-send",
                "--message",
                "hello-mdns",
                "--count",
                "10",
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (ns, log, p) in &mut receivers {
        let status = p
            .wait_timeout(Duration::from_secs(5))
            .unwrap()
            .expect("receiver exits");
        let text = std::fs::read_to_string(&log).unwrap();
        if *ns == other.ns {
            assert_eq!(
                status.code(),
                Some(2),
                "multicast crossed into another locality: {text}"
            );
        } else {
            assert!(
                status.success()
                    && text.contains(&format!("from {}:", sender.addr))
                    && text.contains("hello-mdns"),
                "{ns}: {text}"
            );
        }
    }
    // Unicast between localities goes through both cloud links.
    let loc1 = topo.locality(1).unwrap().clone();
    let before = topo.counters(&loc1.cloud_link).unwrap();
    tcp_transfer(
        &topo,
        dir.path(),
        &other.ns,
        other.addr,
        &sender.ns,
        1 << 20,
    );
    let d = topo.counters(&loc1.cloud_link).unwrap().since(&before);
    assert!(
        d.tx_bytes >= 1 << 20,
        "locality 1's cloud link carried only {} B of a 1 MiB transfer",
        d.tx_bytes
    );
    topo.down().unwrap();
}

#[test]
fn a_locality_shares_one_cloud_link() {
    let (spec, dir) = setup("share", 3); // cloud 200mbit, nodes 100mbit
    let topo = Topology::up(&spec).unwrap();
    let cloud = topo.cloud().clone();
    let nodes: Vec<_> = topo.nodes().cloned().collect();
    // Three downloads at once: 3 x 100mbit of demand on a 200mbit link.
    let mut servers = Vec::new();
    for (i, _) in nodes.iter().enumerate() {
        let port = (5301 + i).to_string();
        let log = dir.path().join(format!("srv{i}.log"));
        servers.push(
            topo.spawn(
                &cloud.ns,
                SpawnSpec::new("iperf3", log).args([
                    "-s",
                    "-1",
                    "-B",
                    &cloud.addr.to_string(),
                    "-p",
                    &port,
                ]),
            )
            .unwrap(),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let clients: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let port = (5301 + i).to_string();
            topo.command(&n.ns, "iperf3")
                .unwrap()
                .args([
                    "-c",
                    &cloud.addr.to_string(),
                    "-p",
                    &port,
                    "-R",
                    "-t",
                    "3",
                    "-J",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let rates: Vec<f64> = clients
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or_else(|| panic!("{v}"))
                / 1e6
        })
        .collect();
    let total: f64 = rates.iter().sum();
    eprintln!("3 nodes downloading at once over a 200mbit cloud link: {rates:.1?} Mbit/s, total {total:.1}");
    assert!(
        (140.0..=210.0).contains(&total),
        "aggregate {total:.1} Mbit/s over a 200mbit cloud link"
    );
    for r in &rates {
        assert!(
            *r <= 110.0,
            "a node got {r:.1} Mbit/s over a 100mbit node link"
        );
    }
    topo.down().unwrap();
}

#[test]
fn a_blob_pulled_from_the_registry_crosses_the_cloud_link_once() {
    let (spec, dir) = setup("blob", 2);
    let topo = Topology::up(&spec).unwrap();
    let cloud = topo.cloud().clone();
    let loc = topo.locality(0).unwrap().clone();
    let n1 = topo.node(0, 1).unwrap().clone();
    let mut reg = Registry::start(&topo, RegistryOptions::default()).unwrap();
    reg.wait_ready(&topo, &n1.ns, Duration::from_secs(15))
        .unwrap();
    // 5 MiB of incompressible bytes, pushed from inside the cloud namespace
    // (so the push itself does not cross the cloud link).
    let blob = dir.path().join("blob");
    let data: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&blob, &data).unwrap();
    let push = format!(
        "set -e; d=sha256:$(sha256sum {b} | cut -d' ' -f1); \
         loc=$(curl -sf -D - -o /dev/null -X POST {u}/v2/t/blob/blobs/uploads/ | tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'); \
         case $loc in http*) ;; *) loc={u}$loc;; esac; \
         curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @{b} \"$loc&digest=$d\" >/dev/null; echo $d",
        b = blob.display(),
        u = reg.url()
    );
    let digest = topo
        .exec(&cloud.ns, "sh", &["-c", &push])
        .unwrap()
        .trim()
        .to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest:?}"
    );
    let before = topo.counters(&loc.cloud_link).unwrap();
    let out = dir.path().join("pulled");
    let url = format!("{}/v2/t/blob/blobs/{digest}", reg.url());
    topo.exec(&n1.ns, "curl", &["-sfL", "-o", out.to_str().unwrap(), &url])
        .unwrap();
    let d = topo.counters(&loc.cloud_link).unwrap().since(&before);
    assert_eq!(std::fs::read(&out).unwrap(), data, "pulled blob differs");
    let size = data.len() as u64;
    eprintln!(
        "5 MiB blob pull: {} B over the cloud link ({:.3}x)",
        d.tx_bytes,
        d.tx_bytes as f64 / size as f64
    );
    assert!(
        d.tx_bytes >= size && d.tx_bytes <= size * 105 / 100,
        "cloud link carried {} B for a {size} B blob",
        d.tx_bytes
    );
    drop(reg);
    topo.down().unwrap();
}

#[test]
fn a_failed_up_removes_what_it_created() {
    let (mut spec, _dir) = setup("fail", 2);
    // tc cannot parse this rate: `up` fails at the first node link, after the
    // cloud, router, bridge and first node namespaces exist.
    spec.node_rate = "100000gbit".parse().unwrap();
    let err = Topology::up(&spec).unwrap_err();
    let prefix = format!("es-{}-", spec.name);
    match &err {
        // The failing command ran inside the first node's namespace, so
        // the cloud, router, bridge and that node namespace had been made.
        TestnetError::Command { command, .. } => {
            assert!(
                command.starts_with(&format!("tc -n {prefix}n0-0 ")),
                "{err}"
            )
        }
        other => panic!("expected the tc failure, got {other}"),
    }
    let left: Vec<_> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "a failed up left {left:?}");
    assert!(
        !topology::state_path(&spec.state_dir, &spec.name).exists(),
        "a failed up left its state file"
    );
}
