//! A bootstrap peer (DHT + gossip only) is enough for nodes that know
//! nothing but its address to find each other and trade chunks.

use std::time::Duration;

use crate::support::swarm::*;
use crate::support::{init_tracing, join};
use edgeswarm_node::swarm::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_meet_through_a_bootstrap_peer() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("boot").join("bootstrap.key");
    let bcfg = config(&tmp.path().join("boot"), "lab", &[]);
    let (boot, boot_task) = Node::start_bootstrap(bcfg.clone(), key.clone())
        .await
        .unwrap();
    let boot_id = boot.local_peer_id();
    let boot_addr = boot.listen_addrs().await.unwrap()[0].clone();

    let (data, digest, map) = blob(2 << 20, 8, 256 << 10);
    let d = tmp.path().join("seed");
    let s = start(&d, config(&d, "lab", std::slice::from_ref(&boot_addr))).await;
    seed(&s, &data, digest, &map).await;
    let d = tmp.path().join("node");
    let n = start(&d, config(&d, "lab", std::slice::from_ref(&boot_addr))).await;
    // The node learns the chunk map and the seed from the DHT alone.
    tokio::time::timeout(Duration::from_secs(90), n.client.fetch_blob(digest, None))
        .await
        .expect("fetch through bootstrap timed out")
        .unwrap();
    assert!(holds(&n.store, &digest, &data));
    assert_eq!(
        boot.stats().bytes_uploaded,
        0,
        "the bootstrap peer serves no chunks"
    );
    assert!(boot.fetch_blob(digest, None).await.is_err());

    // Fixed identity: a restart from the same key file keeps the PeerId.
    boot.shutdown();
    join(boot_task).await;
    let (boot2, t2) = Node::start_bootstrap(bcfg, key).await.unwrap();
    assert_eq!(boot2.local_peer_id(), boot_id);
    boot2.shutdown();
    join(t2).await;
    n.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_bootstrap_peer_joins_once_it_is_up() {
    // The bootstrap peer is down when the node starts (compose or systemd
    // may start them in either order): the node's first dial is refused.
    // It dials again while it has no connection, so it joins once the
    // bootstrap peer is up, well before Kademlia's periodic bootstrap (60 s).
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("boot").join("bootstrap.key");
    let mut bcfg = config(&tmp.path().join("boot"), "lab", &[]);
    // Learn the bootstrap peer's fixed address, then take it down.
    let (boot, boot_task) = Node::start_bootstrap(bcfg.clone(), key.clone())
        .await
        .unwrap();
    let boot_id = boot.local_peer_id();
    let boot_addr = boot.listen_addrs().await.unwrap()[0].clone();
    boot.shutdown();
    join(boot_task).await;

    let d = tmp.path().join("node");
    let n = start(&d, config(&d, "lab", std::slice::from_ref(&boot_addr))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        n.client.connected_peers().await.unwrap().is_empty(),
        "connected with the bootstrap peer down"
    );

    // Up again on the same address and identity.
    bcfg.listen = vec![boot_addr
        .iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()];
    let (boot, boot_task) = Node::start_bootstrap(bcfg, key).await.unwrap();
    let up = tokio::time::Instant::now();
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        while !n.client.connected_peers().await.unwrap().contains(&boot_id) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "not connected to the bootstrap peer 30 s after it came up"
    );
    println!("joined {:?} after the bootstrap peer came up", up.elapsed());
    boot.shutdown();
    join(boot_task).await;
    n.stop().await;
}
