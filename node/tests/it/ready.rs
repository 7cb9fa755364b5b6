//! `/v1/ready` against real in-process nodes on loopback: ready with no
//! bootstrap peer, not ready until a configured bootstrap peer is
//! reached (and still ready once it is gone), not ready while a
//! component's gate (the mirror's) is not, and not ready once shutting
//! down; `/v1/health` stays 200 throughout.

use std::time::Duration;

use edgeswarm_node::daemon::{Daemon, Readiness};
use edgeswarm_node::import::ImportSinkKind;
use libp2p::Multiaddr;

use crate::support::eventually;

struct Node {
    daemon: Daemon,
    base: String,
    _dir: tempfile::TempDir,
}

async fn start(bootstrap: Vec<Multiaddr>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::daemon::config(dir.path(), "ready-test", false, bootstrap);
    config.import = Some(ImportSinkKind::None);
    let (daemon, _handle) = Daemon::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(edgeswarm_node::api::serve(
        daemon.clone(),
        listener,
        "token".into(),
        tokio_util::sync::CancellationToken::new(),
    ));
    Node {
        daemon,
        base,
        _dir: dir,
    }
}

impl Node {
    async fn ready(&self) -> (u16, Readiness) {
        let r = reqwest::get(format!("{}/v1/ready", self.base))
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn health(&self) -> u16 {
        reqwest::get(format!("{}/v1/health", self.base))
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn check(readiness: &Readiness, name: &str) -> bool {
    readiness
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {readiness:?}"))
        .ok
}

#[tokio::test]
async fn ready_without_bootstrap_and_not_ready_while_a_gate_is_closed() {
    let node = start(Vec::new()).await;
    let (status, r) = node.ready().await;
    assert_eq!(status, 200, "{r:?}");
    assert!(r.ready);
    for name in ["store", "swarm", "joined"] {
        assert!(check(&r, name), "{name}: {r:?}");
    }

    // The mirror's hook: a gate taken at its start holds readiness back
    // until its listener is up.
    let gate = node.daemon.readiness_gate("mirror");
    let (status, r) = node.ready().await;
    assert_eq!(status, 503, "{r:?}");
    assert!(!r.ready && !check(&r, "mirror"), "{r:?}");
    assert_eq!(node.health().await, 200);
    gate.set_ready(true);
    let (status, r) = node.ready().await;
    assert_eq!(status, 200, "{r:?}");
    assert!(check(&r, "mirror"));

    node.daemon.shutdown();
    let (status, r) = node.ready().await;
    assert_eq!(status, 503, "{r:?}");
    assert!(!check(&r, "store"), "{r:?}");
}

#[tokio::test]
async fn not_ready_until_a_bootstrap_peer_is_reached_and_ready_after_it_leaves() {
    // A bootstrap address where nothing listens: the node cannot join.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead: Multiaddr = format!(
        "/ip4/127.0.0.1/tcp/{dead_port}/p2p/{}",
        libp2p::PeerId::random()
    )
    .parse()
    .unwrap();
    let lonely = start(vec![dead]).await;
    let (status, r) = lonely.ready().await;
    assert_eq!(status, 503, "{r:?}");
    assert!(check(&r, "store") && check(&r, "swarm"), "{r:?}");
    assert!(!check(&r, "joined"), "{r:?}");
    assert_eq!(lonely.health().await, 200);

    // A reachable bootstrap peer: ready once connected.
    let first = start(Vec::new()).await;
    let addr = first.daemon.swarm().listen_addrs().await.unwrap()[0].clone();
    let second = start(vec![addr]).await;
    eventually(
        "the second node is ready",
        Duration::from_secs(20),
        async || match second.ready().await {
            (200, r) if r.ready => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    // Its only peer leaves: still joined (readiness does not flap).
    first.daemon.shutdown();
    eventually(
        "the peer is gone",
        Duration::from_secs(20),
        async || match second.daemon.swarm().connected_peers().await {
            Ok(p) if p.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let (status, r) = second.ready().await;
    assert_eq!(status, 200, "{r:?}");
}
