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
