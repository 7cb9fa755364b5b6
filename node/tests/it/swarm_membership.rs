//! Membership: a wrong swarm key, no key, or another locality cannot join.

use std::time::Duration;

use crate::support::init_tracing;
use crate::support::swarm::*;
use edgeswarm_node::swarm::keys::generate_swarm_key;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_swarm_key_join() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let k1 = tmp.path().join("k1.key");
    let k2 = tmp.path().join("k2.key");
    generate_swarm_key(&k1).unwrap();
    generate_swarm_key(&k2).unwrap();
    let (data, digest, map) = blob(1 << 20, 5, 256 << 10);
    let keyed = |name: &str, key: Option<&std::path::Path>, boot: &[libp2p::Multiaddr]| {
        let d = tmp.path().join(name);
        let mut c = config(&d, "lab", boot);
        c.swarm_key = key.map(|k| k.to_path_buf());
        (d, c)
    };
    let (d, c) = keyed("seed", Some(&k1), &[]);
    let s = start(&d, c).await;
    seed(&s, &data, digest, &map).await;
    let (d, c) = keyed("member", Some(&k1), std::slice::from_ref(&s.addr));
    let member = start(&d, c).await;
    let (d, c) = keyed("wrong", Some(&k2), std::slice::from_ref(&s.addr));
    let wrong = start(&d, c).await;
    let (d, c) = keyed("keyless", None, std::slice::from_ref(&s.addr));
    let keyless = start(&d, c).await;

    // The member (positive control) fetches; the others cannot even connect.
    tokio::time::timeout(
        Duration::from_secs(60),
        member.client.fetch_blob(digest, Some(map.clone())),
    )
    .await
    .expect("member fetch timed out")
    .unwrap();
    assert!(holds(&member.store, &digest, &data));
    for outsider in [&wrong, &keyless] {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            outsider.client.fetch_blob(digest, Some(map.clone())),
        )
        .await;
        assert!(r.is_err(), "an outsider fetched the blob");
        assert!(outsider.client.connected_peers().await.unwrap().is_empty());
        let id = outsider.client.local_peer_id();
        assert!(!s.client.connected_peers().await.unwrap().contains(&id));
        assert_eq!(outsider.client.stats().chunks_downloaded, 0);
    }
    for n in [member, wrong, keyless, s] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_locality_cannot_join() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(1 << 20, 6, 256 << 10);
    let d = tmp.path().join("seed");
    let s = start(&d, config(&d, "lab", &[])).await;
    seed(&s, &data, digest, &map).await;
    let d = tmp.path().join("local");
    let local = start(&d, config(&d, "lab", std::slice::from_ref(&s.addr))).await;
    let d = tmp.path().join("foreign");
    let foreign = start(&d, config(&d, "plant-2", std::slice::from_ref(&s.addr))).await;

    tokio::time::timeout(
        Duration::from_secs(60),
        local.client.fetch_blob(digest, Some(map.clone())),
    )
    .await
    .expect("same-locality fetch timed out")
    .unwrap();
    assert!(holds(&local.store, &digest, &data));
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        foreign.client.fetch_blob(digest, Some(map.clone())),
    )
    .await;
    assert!(r.is_err(), "a node of another locality fetched the blob");
    assert_eq!(foreign.client.stats().chunks_downloaded, 0);
    let fid = foreign.client.local_peer_id();
    assert!(!s.client.routing_table_peers().await.unwrap().contains(&fid));
    assert!(!local
        .client
        .routing_table_peers()
        .await
        .unwrap()
        .contains(&fid));
    assert!(foreign
        .client
        .routing_table_peers()
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .client
        .routing_table_peers()
        .await
        .unwrap()
        .contains(&local.client.local_peer_id()));
    for n in [local, foreign, s] {
        n.stop().await;
    }
}
