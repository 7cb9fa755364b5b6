//! Issue 12: the elected gateway killed -9 mid-pull and restarted, with
//! real `edgeswarm node` processes on loopback against a real
//! `docker-registry` behind a throttling proxy that counts the bytes it
//! delivers (the cloud link). The locality's only gateway-capable node
//! dies half way through the layer; the restarted process resumes the
//! release from its persisted desired state and the chunks it verified,
//! pulling only the rest (Range), and every node completes. No node stores
//! a verified chunk twice, and the cloud link carries the image about once.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_killed_mid_pull_and_restarted_resumes_the_release_everywhere() {
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(
        ImageSpec::random_layers(&[12 << 20], 21, Compression::None),
        build.path(),
    )
    .await
    .unwrap();
    push(&registry, "restart/app", "v1", &image).await;
    // The cloud link: 3 MiB/s, so the pull takes about 4 s.
    let cloud = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    serve_counted_proxy(listener, registry.addr(), 3 << 20, cloud.clone());
    let reference = format!("{proxy}/restart/app:v1");

    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let gateway_port = free_port();
    let mut gateway = start_node(&dirs[0], gateway_port, "n0-a.log", &["--gateway"]).await;
    let view = status(&gateway).await.unwrap();
    let boot = view.this.addresses[0].clone();
    let n1 = start_node(&dirs[1], free_port(), "n1.log", &["--bootstrap", &boot]).await;
    let n2 = start_node(&dirs[2], free_port(), "n2.log", &["--bootstrap", &boot]).await;
    eventually(
        "the gateway hears both nodes",
        Duration::from_secs(30),
        async || {
            let v = status(&gateway).await?;
            let live = v.nodes.iter().filter(|n| !n.gone).count();
            (live >= 2).then_some(()).ok_or(format!("{} heard", live))
        },
    )
    .await;

    let token = dirs[0].join(edgeswarm_node::api::TOKEN_FILE);
    let out = tokio::process::Command::new(BIN)
        .args(["deploy", &reference, "--api", &gateway.api])
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

    // Kill -9 half way through the layer.
    let layers = image.layers_size();
    eventually("the pull half done", Duration::from_secs(60), async || {
        let n = cloud.load(Ordering::Relaxed);
        (n >= layers / 2).then_some(()).ok_or(n)
    })
    .await;
    let gateway_view = status(&gateway).await.unwrap();
    let at_kill = release(&gateway_view, &reference).cloned();
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    let delivered_at_kill = cloud.load(Ordering::Relaxed);
    assert!(
        at_kill
            .as_ref()
            .is_some_and(|r| r.state != ReleasePhase::Done),
        "the gateway was done before the kill: {at_kill:?}"
    );
    assert!(
        delivered_at_kill < layers * 9 / 10,
        "killed too late: {delivered_at_kill} of {layers} bytes pulled"
    );
    let first_log = gateway.log.clone();
    drop(gateway);

    // Restarted 2 s later on the same data dir and port; it dials a node
    // too, in case the nodes' redials of its address lag.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n1_addr = status(&n1).await.unwrap().this.addresses[0].clone();
    let gateway = start_node(
        &dirs[0],
        gateway_port,
        "n0-b.log",
        &["--gateway", "--bootstrap", &n1_addr],
    )
    .await;
    let resumed = std::fs::read_to_string(&gateway.log).unwrap();
    assert!(
        resumed.contains("desired state loaded") && resumed.contains("resumed=1"),
        "the restarted gateway did not resume the release from its desired state: {resumed}"
    );

    let nodes = [&gateway, &n1, &n2];
    eventually(
        "every node done",
        Duration::from_secs(120),
        async || -> Result<(), String> {
            let mut states = Vec::new();
            for n in nodes {
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
    println!(
        "gateway killed at {delivered_at_kill} of {layers} layer bytes; \
         cloud link carried {total} bytes, {ratio:.3}x the image"
    );
    assert!(
        ratio <= 1.1,
        "the cloud link carried {ratio:.3}x the image ({total} bytes)"
    );
    for (i, logs) in [
        vec![first_log.as_path(), gateway.log.as_path()],
        vec![n1.log.as_path()],
        vec![n2.log.as_path()],
    ]
    .iter()
    .enumerate()
    {
        let twice = stored_twice(logs);
        assert!(twice.is_empty(), "n{i} stored chunks twice: {twice:?}");
    }
    let name = edgeswarm_node::import::image_dir_name(&reference);
    let file = |dir: &Path| std::fs::read(dir.join("rootfs").join(&name).join("data/layer0.bin"));
    let expected = file(&dirs[0]).expect("the gateway's rootfs");
    assert!(!expected.is_empty());
    for dir in &dirs[1..] {
        assert!(
            file(dir).expect("a node's rootfs") == expected,
            "{} differs",
            dir.display()
        );
    }
}
