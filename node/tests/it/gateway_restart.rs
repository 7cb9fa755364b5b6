//! Issue 12: the elected gateway killed -9 mid-pull and restarted, with
//! real `edgeswarm node` processes on loopback against a real
//! `docker-registry` behind a throttling proxy that counts the bytes it
//! delivers (the cloud link). The locality's only gateway-capable node
//! dies half way through the layer; the restarted process resumes the
//! release from its persisted desired state and the chunks it verified,
//! pulling only the rest (Range), and every node completes. No node stores
//! a verified chunk twice, and the cloud link carries the image about once.
//! The same with the killed gateway's data dir wiped: it learns the
//! release again from its peers, and defers to the runner-up as well.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeswarm_node::daemon::{ReleasePhase, ReleaseView, StatusView};
use edgeswarm_node::registry::testing::{build_image, ImageSpec, TestRegistry};
use edgeswarm_node::registry::Compression;
use tokio::net::TcpListener;

use crate::failover::serve_counted_proxy;
use crate::support::daemon::image_bytes;
use crate::support::{eventually, push};

const BIN: &str = env!("CARGO_BIN_EXE_edgeswarm");

/// One `edgeswarm node` process; killed (-9) on drop.
struct NodeProc {
    child: Child,
    api: String,
    dir: PathBuf,
    /// The log of this incarnation.
    log: PathBuf,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port below the kernel's ephemeral range, for a node that is
/// started again on the port it had. A port from that range (what binding
/// port 0 gives) can be taken by any outbound connection on the machine
/// while the node is down: this file's status polls alone leave hundreds
/// of client sockets in TIME_WAIT (802 at once, measured), and one holding
/// the node's port makes its bind fail even with SO_REUSEADDR, so the
/// restarted node exits at start. Ports are handed out in turn from a
/// random start, so the tests of this process never pick the same one.
fn restartable_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = range.saturating_sub(10_000).max(1024);
    let span = range.saturating_sub(low);
    assert!(span > 1, "no ports below the ephemeral range ({range})");
    let _ = NEXT.compare_exchange(
        0,
        rand::Rng::gen_range(&mut rand::thread_rng(), 1..span),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = low + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{range}");
}

/// Starts a node on `dir` listening on `port`, logging to
/// `dir/../<log_name>` with each stored chunk (the store's debug lines),
/// and waits for its API.
async fn start_node(dir: &Path, port: u16, log_name: &str, extra: &[&str]) -> NodeProc {
    let api = format!("127.0.0.1:{}", free_port());
    let log = dir.parent().unwrap().join(log_name);
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["node", "--data-dir", dir.to_str().unwrap(), "--api", &api])
        .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
        .args(["--no-mdns", "--import", "dir", "--locality", "gw-restart"])
        .args(["--chunk-size", "256K"])
        .args(["--allow-any-publisher", "--open-locality"])
        .args(extra)
        .env(
            "RUST_LOG",
            "info,libp2p=warn,edgeswarm_node::store=debug,edgeswarm_node::daemon=debug",
        )
        .env("NO_COLOR", "1")
        .env_remove("EDGESWARM_API")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn edgeswarm node");
    let node = NodeProc {
        child,
        api,
        dir: dir.to_path_buf(),
        log,
    };
    eventually("the node's API", Duration::from_secs(30), async || {
        status(&node).await.map(drop)
    })
    .await;
    node
}

/// The node's `/v1/status`.
async fn status(node: &NodeProc) -> Result<StatusView, String> {
    let token = std::fs::read_to_string(node.dir.join(edgeswarm_node::api::TOKEN_FILE))
        .map_err(|e| format!("token: {e}"))?;
    let response = reqwest::Client::new()
        .get(format!("http://{}/v1/status", node.api))
        .bearer_auth(token.trim())
        .send()
        .await
        .map_err(|e| format!("{e}; log: {}", tail(&node.log)))?;
    response.json().await.map_err(|e| e.to_string())
}

fn release<'a>(view: &'a StatusView, image: &str) -> Option<&'a ReleaseView> {
    view.this.releases.iter().find(|r| r.image == image)
}

fn tail(log: &Path) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = bytes.len().saturating_sub(3000);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Chunks each `(blob, index)` stored more than once across `logs` (one
/// node's incarnations): the store logs "chunk stored" once the chunk is
/// verified and journaled.
fn stored_twice(logs: &[&Path]) -> Vec<String> {
    let mut seen: BTreeMap<(String, String), u32> = BTreeMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("chunk stored")) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            if let (Some(blob), Some(index)) = (field("blob="), field("index=")) {
                *seen.entry((blob, index)).or_default() += 1;
            }
        }
    }
    assert!(!seen.is_empty(), "no chunk stored in {logs:?}");
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((b, i), n)| format!("{b} {i}: {n} times"))
        .collect()
}

/// What one kill-and-restart run measured.
struct Outcome {
    delivered_at_kill: u64,
    /// Cloud bytes delivered when the killed gateway's first pull of a
    /// resumed release could start (its settle hold over).
    delivered_at_settle: Option<u64>,
    layers: u64,
    cloud: u64,
    ratio: f64,
    /// The restarted gateway's log.
    restarted_log: String,
}

/// When the killed gateway is started again.
#[derive(Clone, Copy)]
enum Restart {
    /// This long after the kill.
    After(Duration),
    /// As soon as the runner-up has pulled `bytes` more from the registry
    /// after the kill (it took the release over and is pulling).
    WhenRunnerUpPulled(u64),
}

/// One kill-and-restart scenario.
struct Scenario {
    /// Nodes in the locality.
    nodes: usize,
    /// How many of them (the first ones) are gateway-capable.
    gateways: usize,
    /// The image's one layer, bytes.
    layer: u64,
    /// The cloud link's rate, bytes/s (per connection).
    rate: u64,
    /// The gateway is killed once this fraction (percent) of the layer
    /// crossed the cloud link.
    kill_at_percent: u64,
    restart: Restart,
    /// Whether the killed gateway's data dir is wiped before it starts
    /// again (all but its identity key: the same peer, with no store and
    /// no desired state, which it learns again from its peers).
    wipe: bool,
}

/// A locality of `nodes` `edgeswarm node` processes, the first
/// `gateways` of them gateway-capable, deploys a one-layer image over a
/// throttled cloud link; the elected gateway is killed -9 part way
/// through the layer and started again (see [`Restart`]) on its data dir
/// and port. Checks that every node completes, that the restarted
/// gateway resumed the release from its persisted desired state, that no
/// node stored a chunk twice and that every rootfs holds the same layer.
async fn kill_the_gateway_mid_pull(gateways: usize, restart_after: Duration) -> Outcome {
    run_scenario(Scenario {
        nodes: 3,
        gateways,
        layer: 12 << 20,
        rate: 3 << 20,
        kill_at_percent: 50,
        restart: Restart::After(restart_after),
        wipe: false,
    })
    .await
}

async fn run_scenario(sc: Scenario) -> Outcome {
    let n = sc.nodes;
    let gateways = sc.gateways;
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(
        ImageSpec::random_layers(&[sc.layer], 21, Compression::None),
        build.path(),
    )
    .await
    .unwrap();
    push(&registry, "restart/app", "v1", &image).await;
    // The cloud link: the proxy counts every byte it delivers.
    let cloud = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    serve_counted_proxy(listener, registry.addr(), sc.rate, cloud.clone());
    let reference = format!("{proxy}/restart/app:v1");

    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let ports: Vec<u16> = (0..n).map(|_| restartable_port()).collect();
    let role = |i: usize| {
        if i < gateways {
            vec!["--gateway"]
        } else {
            vec![]
        }
    };
    let mut nodes = vec![start_node(&dirs[0], ports[0], "n0-a.log", &role(0)).await];
    let boot = status(&nodes[0]).await.unwrap().this.addresses[0].clone();
    for i in 1..n {
        let mut args = role(i);
        args.extend(["--bootstrap", boot.as_str()]);
        nodes.push(start_node(&dirs[i], ports[i], &format!("n{i}-a.log"), &args).await);
    }
    let hearing_since = tokio::time::Instant::now();
    eventually(
        "the first node hears every other",
        Duration::from_secs(30),
        async || {
            let v = status(&nodes[0]).await?;
            let live = v.nodes.iter().filter(|n| !n.gone).count();
            if live + 1 >= n {
                return Ok(());
            }
            let mut seen = format!("{live} heard, {} connected", v.this.connected_peers);
            // About to fail: say what each node did (the data dirs and
            // logs go with the panic).
            if hearing_since.elapsed() > Duration::from_secs(25) {
                for node in &nodes {
                    seen += &format!("\n--- {}:\n{}", node.log.display(), tail(&node.log));
                }
            }
            Err(seen)
        },
    )
    .await;

    let token = dirs[0].join(edgeswarm_node::api::TOKEN_FILE);
    let out = tokio::process::Command::new(BIN)
        .args(["deploy", &reference, "--api", &nodes[0].api])
        .arg("--token-file")
        .arg(&token)
        .env_remove("EDGESWARM_API")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Kill -9 the elected gateway part way through the layer.
    let layers = image.layers_size();
    let kill_at = layers * sc.kill_at_percent / 100;
    eventually("the pull under way", Duration::from_secs(60), async || {
        let n = cloud.load(Ordering::Relaxed);
        (n >= kill_at).then_some(()).ok_or(n)
    })
    .await;
    let view = status(&nodes[0]).await.unwrap();
    let at_kill = release(&view, &reference).cloned();
    let elected = at_kill
        .as_ref()
        .and_then(|r| r.gateway.clone())
        .expect("a gateway elected");
    let mut peer_ids = Vec::new();
    for n in &nodes {
        peer_ids.push(status(n).await.unwrap().this.peer_id);
    }
    let victim = peer_ids.iter().position(|p| *p == elected).unwrap();
    assert!(victim < gateways, "only gateway-capable nodes are elected");
    nodes[victim].child.kill().unwrap();
    nodes[victim].child.wait().unwrap();
    let delivered_at_kill = cloud.load(Ordering::Relaxed);
    assert!(
        at_kill
            .as_ref()
            .is_some_and(|r| r.state != ReleasePhase::Done),
        "done before the kill: {at_kill:?}"
    );
    assert!(
        delivered_at_kill < layers * 9 / 10,
        "killed too late: {delivered_at_kill} of {layers} bytes pulled"
    );
    let mut logs: Vec<Vec<PathBuf>> = nodes.iter().map(|n| vec![n.log.clone()]).collect();

    // Restarted on the same data dir and port; it dials another node too,
    // in case the others' redials of its address lag.
    match sc.restart {
        Restart::After(delay) => tokio::time::sleep(delay).await,
        Restart::WhenRunnerUpPulled(bytes) => {
            eventually(
                "the runner-up pulling",
                Duration::from_secs(60),
                async || {
                    let n = cloud.load(Ordering::Relaxed);
                    (n >= delivered_at_kill + bytes).then_some(()).ok_or(n)
                },
            )
            .await;
            let n = cloud.load(Ordering::Relaxed);
            assert!(
                n < layers * 8 / 10,
                "the runner-up pulled too fast: {n} of {layers} bytes before the restart"
            );
        }
    }
    if sc.wipe {
        let dir = &dirs[victim];
        let key = std::fs::read(dir.join("identity.key")).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("identity.key"), key).unwrap();
        // What it stored before is gone: only its new chunks count.
        logs[victim].clear();
    }
    let other = (victim + 1) % n;
    let other_addr = status(&nodes[other]).await.unwrap().this.addresses[0].clone();
    let mut args = role(victim);
    args.extend(["--bootstrap", other_addr.as_str()]);
    let log_name = format!("n{victim}-b.log");
    nodes[victim] = start_node(&dirs[victim], ports[victim], &log_name, &args).await;
    logs[victim].push(nodes[victim].log.clone());
    let restarted_at = tokio::time::Instant::now();
    let resumed = std::fs::read_to_string(&nodes[victim].log).unwrap();
    let expected = if sc.wipe { "resumed=0" } else { "resumed=1" };
    assert!(
        resumed.contains("desired state loaded") && resumed.contains(expected),
        "the restarted gateway's desired state: {expected} expected: {resumed}"
    );
    // The restarted gateway may pull a resumed release once its settle
    // hold (5 s) is over: what the cloud link had carried by then tells
    // whether the runner-up was still pulling.
    let mut delivered_at_settle = None;

    eventually(
        "every node done",
        Duration::from_secs(120),
        async || -> Result<(), String> {
            if delivered_at_settle.is_none() && restarted_at.elapsed() >= Duration::from_secs(6) {
                delivered_at_settle = Some(cloud.load(Ordering::Relaxed));
            }
            let mut states = Vec::new();
            for n in &nodes {
                let v = status(n).await?;
                let r = release(&v, &reference);
                if let Some(r) = r.filter(|r| r.state == ReleasePhase::Failed) {
                    panic!("failed on {}: {r:?}; log: {}", n.api, tail(&n.log));
                }
                states.push(r.map(|r| r.state));
            }
            states
                .iter()
                .all(|s| *s == Some(ReleasePhase::Done))
                .then_some(())
                .ok_or(format!("{states:?}"))
        },
    )
    .await;

    let total = cloud.load(Ordering::Relaxed);
    let ratio = total as f64 / image_bytes(&image) as f64;
    for (i, node_logs) in logs.iter().enumerate() {
        let paths: Vec<&Path> = node_logs.iter().map(PathBuf::as_path).collect();
        let twice = stored_twice(&paths);
        assert!(twice.is_empty(), "n{i} stored chunks twice: {twice:?}");
    }
    let name = edgeswarm_node::import::image_dir_name(&reference);
    let file = |dir: &Path| std::fs::read(dir.join("rootfs").join(&name).join("data/layer0.bin"));
    let expected = file(&dirs[0]).expect("n0's rootfs");
    assert!(!expected.is_empty());
    for dir in &dirs[1..] {
        assert!(
            file(dir).expect("a node's rootfs") == expected,
            "{} differs",
            dir.display()
        );
    }
    Outcome {
        delivered_at_kill,
        delivered_at_settle,
        layers,
        cloud: total,
        ratio,
        restarted_log: std::fs::read_to_string(&nodes[victim].log).unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_killed_mid_pull_and_restarted_resumes_the_release_everywhere() {
    // The only gateway-capable node, back within the 8 s a peer is
    // considered live: nobody takes over; it resumes.
    let o = kill_the_gateway_mid_pull(1, Duration::from_secs(2)).await;
    println!(
        "gateway killed at {} of {} layer bytes; cloud link carried {} bytes, {:.3}x the image",
        o.delivered_at_kill, o.layers, o.cloud, o.ratio
    );
    assert!(
        o.ratio <= 1.1,
        "the cloud link carried {:.3}x the image",
        o.ratio
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_gateway_takes_over_and_the_killed_one_rejoins_without_a_second_pull() {
    // Two gateway-capable nodes; the killed one is back only after the
    // other took the release over (a peer is gone after 8 s), and is
    // elected again when it returns.
    let o = kill_the_gateway_mid_pull(2, Duration::from_secs(12)).await;
    println!(
        "gateway killed at {} of {} layer bytes, the other took over, the first rejoined; \
         cloud link carried {} bytes, {:.3}x the image",
        o.delivered_at_kill, o.layers, o.cloud, o.ratio
    );
    assert!(
        o.ratio <= 1.1,
        "the cloud link carried {:.3}x the image",
        o.ratio
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_back_while_the_runner_up_pulls_defers_to_it() {
    // Four nodes, two gateway-capable; a 40 MiB layer over a 2 MiB/s
    // cloud link (per connection: two gateways pulling at once each get
    // it). The elected gateway is killed a quarter of the way through;
    // the runner-up takes the release over after the 8 s peer timeout and
    // the killed one is back as soon as the runner-up has pulled 2 MiB,
    // with most of the layer still to come. Ranked first again, it must
    // leave the release to the runner-up, which is acting on it (signing
    // chunk digests), and fetch the layer from the swarm: without
    // incumbency both pulled the rest of the layer (1.3-1.5x).
    back_while_the_runner_up_pulls(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_back_wiped_while_the_runner_up_pulls_defers_to_it() {
    // As above, but the killed gateway's data dir is wiped (its identity
    // kept, so it is ranked first again): it has no desired state to
    // resume and learns the release from its peers' anti-entropy push,
    // before it has heard who pulls it. Held like a resumed release, it
    // defers to the runner-up; treated as a fresh release it elected
    // itself at once and pulled the rest of the layer again (1.370x the
    // image; 1.016x with the hold).
    back_while_the_runner_up_pulls(true).await;
}

/// The killed gateway back (wiped or not) while the runner-up pulls: it
/// defers, the cloud link carries the image about once and every node
/// completes.
async fn back_while_the_runner_up_pulls(wipe: bool) {
    let o = run_scenario(Scenario {
        nodes: 4,
        gateways: 2,
        layer: 40 << 20,
        rate: 2 << 20,
        kill_at_percent: 25,
        restart: Restart::WhenRunnerUpPulled(2 << 20),
        wipe,
    })
    .await;
    println!(
        "gateway killed at {} of {} layer bytes, back (wiped: {wipe}) while the runner-up \
         pulled ({:?} bytes delivered when its settle hold ended); cloud link carried {} \
         bytes, {:.3}x the image",
        o.delivered_at_kill, o.layers, o.delivered_at_settle, o.cloud, o.ratio
    );
    let settle = o.delivered_at_settle.expect("done before the hold ended");
    assert!(
        settle < o.layers * 9 / 10,
        "the runner-up had nearly finished when the restarted gateway could pull: \
         {settle} of {} bytes",
        o.layers
    );
    assert!(
        o.ratio <= 1.1,
        "the cloud link carried {:.3}x the image",
        o.ratio
    );
    // It deferred: it never pulled the layer from the registry.
    let pulled = o
        .restarted_log
        .lines()
        .filter(|l| l.contains("gateway pulling missing layers") && !l.contains("pulling=0"))
        .collect::<Vec<_>>();
    assert!(
        pulled.is_empty(),
        "the restarted gateway pulled: {pulled:?}"
    );
}
