//! End-to-end chunk exchange between real nodes on loopback TCP.

use std::time::Duration;

use crate::support::swarm::*;
use crate::support::{eventually, init_tracing, join};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fetch_a_blob_from_a_seed_and_each_other() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(8 << 20, 1, 256 << 10);
    let seed_dir = tmp.path().join("seed");
    let s = start(&seed_dir, config(&seed_dir, "lab", &[])).await;
    seed(&s, &data, digest, &map).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let d = tmp.path().join(format!("n{i}"));
        nodes.push(start(&d, config(&d, "lab", std::slice::from_ref(&s.addr))).await);
    }
    let fetches: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let c = n.client.clone();
            // One node learns the chunk map from its peers.
            let m = (i != 0).then(|| map.clone());
            tokio::spawn(async move { c.fetch_blob(digest, m).await })
        })
        .collect();
    for f in fetches {
        tokio::time::timeout(Duration::from_secs(120), f)
            .await
            .expect("fetch timed out")
            .unwrap()
            .unwrap();
    }
    for n in &nodes {
        assert!(holds(&n.store, &digest, &data));
        assert_eq!(n.client.stats().bad_chunks, 0);
    }
    let total: u64 = nodes
        .iter()
        .map(|n| n.client.stats().bytes_downloaded)
        .sum();
    assert_eq!(
        total,
        3 * data.len() as u64,
        "every chunk fetched exactly once"
    );
    // "And each other": the seed did not upload every node's copy.
    let from_nodes: u64 = nodes.iter().map(|n| n.client.stats().bytes_uploaded).sum();
    assert!(from_nodes > 0, "every chunk came from the seed");
    for n in nodes {
        n.stop().await;
    }
    s.stop().await;
}

/// Nodes started by hand (`Node::start` over stores they open) fetch one
/// after the other; the second is given no chunk map and learns it from
/// its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_fetch_in_turn_and_one_learns_the_chunk_map_from_peers() {
    use edgeswarm_node::store::{Store, StoreConfig};
    use edgeswarm_node::swarm::Node;
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(6 << 20, 2, 256 << 10);
    let open = |name: &str| {
        let d = tmp.path().join(name);
        async move {
            let store = Store::open(d.join("store"), StoreConfig::default())
                .await
                .unwrap();
            (d, store)
        }
    };
    let (sd, seed_store) = open("seed").await;
    seed_store.put_chunk_map(digest, &map).await.unwrap();
    for i in 0..map.chunk_count() {
        let r = map.chunk_range(i).unwrap();
        seed_store
            .write_chunk(
                digest,
                i,
                bytes::Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]),
            )
            .await
            .unwrap();
    }
    assert!(seed_store.is_complete(&digest));
    let (seed, seed_task) = Node::start(config(&sd, "lab", &[]), seed_store.clone())
        .await
        .unwrap();
    seed.provide(digest).await.unwrap();
    let seed_addr = seed.listen_addrs().await.unwrap()[0].clone();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let (d, store) = open(&format!("n{i}")).await;
        let (c, t) = Node::start(
            config(&d, "lab", std::slice::from_ref(&seed_addr)),
            store.clone(),
        )
        .await
        .unwrap();
        nodes.push((c, t, store));
    }
    for (i, (c, _, store)) in nodes.iter().enumerate() {
        let m = (i == 0).then(|| map.clone());
        tokio::time::timeout(Duration::from_secs(120), c.fetch_blob(digest, m))
            .await
            .expect("fetch timed out")
            .unwrap();
        let path = store.blob_path(&digest).expect("blob complete");
        assert_eq!(std::fs::read(path).unwrap(), data);
    }
    for (c, t, _) in nodes {
        c.shutdown();
        join(t).await;
    }
    seed.shutdown();
    join(seed_task).await;
}

/// A gateway that is still streaming a blob in (digests learned chunk by
/// chunk) already serves its verified chunks: a node fetching the blob
/// holds chunks before the gateway has the whole blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_forwarded_while_the_gateway_still_streams_the_blob() {
    use edgeswarm_node::store::{Store, StoreConfig};
    use edgeswarm_node::swarm::Node;
    use edgeswarm_protocol::ChunkSize;
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(8 << 20, 11, 256 << 10);
    let cs = ChunkSize::new(256 << 10).unwrap();
    let gd = tmp.path().join("gw");
    let gw_store = Store::open(gd.join("store"), StoreConfig::default())
        .await
        .unwrap();
    let (gw, gw_task) = Node::start(config(&gd, "lab", &[]), gw_store.clone())
        .await
        .unwrap();
    let gw_addr = gw.listen_addrs().await.unwrap()[0].clone();
    let nd = tmp.path().join("node");
    let n_store = Store::open(nd.join("store"), StoreConfig::default())
        .await
        .unwrap();
    let (n, n_task) = Node::start(config(&nd, "lab", &[gw_addr]), n_store.clone())
        .await
        .unwrap();

    // Both learn the layout up front (the daemon does this from the
    // gateway's signed chunk-digest gossip), then digests one by one.
    gw_store
        .create_blob(digest, data.len() as u64, cs)
        .await
        .unwrap();
    n_store
        .create_blob(digest, data.len() as u64, cs)
        .await
        .unwrap();
    gw.provide(digest).await.unwrap();
    let fetch = {
        let n = n.clone();
        tokio::spawn(async move { n.fetch_blob(digest, None).await })
    };
    for i in 0..map.chunk_count() {
        let d = [map.digest(i).unwrap()];
        gw_store.add_chunk_digests(digest, i, &d).await.unwrap();
        n_store.add_chunk_digests(digest, i, &d).await.unwrap();
        let r = map.chunk_range(i).unwrap();
        gw_store
            .write_chunk(
                digest,
                i,
                bytes::Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held_when_gateway_done = n_store.bitfield(&digest).map_or(0, |b| b.count_ones());
    tokio::time::timeout(Duration::from_secs(60), fetch)
        .await
        .expect("fetch timed out")
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::read(n_store.blob_path(&digest).unwrap()).unwrap(),
        data
    );
    assert!(
        held_when_gateway_done >= map.chunk_count() / 2,
        "only {held_when_gateway_done} chunks forwarded while the gateway streamed"
    );
    n.shutdown();
    gw.shutdown();
    join(n_task).await;
    join(gw_task).await;
}

/// A node that missed some of the gateway's digest updates (it was down
/// while they were gossiped, or the gateway was killed before it sent
/// them) still fetches every chunk whose digest it has, after the gap as
/// before it; the gap waits for its digests. Before, a download requested
/// only the chunks below the first unknown digest, and such a node
/// fetched nothing until the gateway's whole blob was done and a peer's
/// chunk map filled the gap (10-15 s of `faults` seed 4, kill-gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_some_digests_fetches_the_chunks_after_the_gap() {
    use edgeswarm_protocol::ChunkSize;
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(4 << 20, 13, 256 << 10);
    let count = map.chunk_count();
    let cs = ChunkSize::new(256 << 10).unwrap();
    let gw = start_in(tmp.path(), "gw", &[]).await;
    let n = start_in(tmp.path(), "node", std::slice::from_ref(&gw.addr)).await;
    let chunk = |i: u32| {
        let r = map.chunk_range(i).unwrap();
        bytes::Bytes::copy_from_slice(&data[r.start as usize..r.end as usize])
    };
    let learn = async |node: &TestNode, indices: std::ops::Range<u32>| {
        for i in indices {
            node.store
                .add_chunk_digests(digest, i, &[map.digest(i).unwrap()])
                .await
                .unwrap();
        }
    };
    // The gateway is still streaming: it holds every chunk but the last.
    for node in [&gw, &n] {
        node.store
            .create_blob(digest, data.len() as u64, cs)
            .await
            .unwrap();
    }
    learn(&gw, 0..count - 1).await;
    for i in 0..count - 1 {
        gw.store.write_chunk(digest, i, chunk(i)).await.unwrap();
    }
    gw.client.provide(digest).await.unwrap();
    // The node missed the digests of chunks 0..4 and has those after.
    const GAP: u32 = 4;
    learn(&n, GAP..count - 1).await;
    assert_eq!(n.store.blob_info(&digest).unwrap().digests_known, 0);
    let fetch = {
        let client = n.client.clone();
        tokio::spawn(async move { client.fetch_blob(digest, None).await })
    };
    eventually(
        "the node holds every chunk after the gap whose digest it has",
        Duration::from_secs(30),
        async || {
            let held = n.store.bitfield(&digest).unwrap();
            let after_gap = (GAP..count - 1).filter(|&i| held.get(i)).count() as u32;
            if after_gap == count - 1 - GAP {
                Ok(())
            } else {
                Err(format!("{after_gap} of {} held", count - 1 - GAP))
            }
        },
    )
    .await;
    let held = n.store.bitfield(&digest).unwrap();
    assert!(
        (0..GAP).all(|i| !held.get(i)) && !held.get(count - 1),
        "chunks without a known digest were fetched"
    );
    // The gap's digests come (a peer's map, or the gateway again) and the
    // gateway's last chunk lands: the fetch completes.
    learn(&n, 0..GAP).await;
    learn(&n, count - 1..count).await;
    learn(&gw, count - 1..count).await;
    gw.store
        .write_chunk(digest, count - 1, chunk(count - 1))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), fetch)
        .await
        .expect("fetch timed out")
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::read(n.store.blob_path(&digest).unwrap()).unwrap(),
        data
    );
    n.stop().await;
    gw.stop().await;
}

/// Super-seeding while a blob streams in: the gateway, which holds chunks it
/// did not download from peers, hands each new chunk to one peer and sends
/// the others elsewhere, so its uploads stay near one copy of the blob
/// instead of one copy per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streaming_gateway_gives_different_peers_different_chunks() {
    use edgeswarm_node::store::{Store, StoreConfig};
    use edgeswarm_node::swarm::Node;
    use edgeswarm_protocol::ChunkSize;
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(8 << 20, 12, 256 << 10);
    let cs = ChunkSize::new(256 << 10).unwrap();
    let open = |dir: std::path::PathBuf| async move {
        Store::open(dir.join("store"), StoreConfig::default())
            .await
            .unwrap()
    };
    let gd = tmp.path().join("gw");
    let gw_store = open(gd.clone()).await;
    let (gw, gw_task) = Node::start(config(&gd, "lab", &[]), gw_store.clone())
        .await
        .unwrap();
    let gw_addr = gw.listen_addrs().await.unwrap()[0].clone();
    gw_store
        .create_blob(digest, data.len() as u64, cs)
        .await
        .unwrap();
    gw.provide(digest).await.unwrap();
    let mut nodes = Vec::new();
    for i in 0..4 {
        let nd = tmp.path().join(format!("n{i}"));
        let store = open(nd.clone()).await;
        let (n, task) = Node::start(
            config(&nd, "lab", std::slice::from_ref(&gw_addr)),
            store.clone(),
        )
        .await
        .unwrap();
        store
            .create_blob(digest, data.len() as u64, cs)
            .await
            .unwrap();
        nodes.push((n, task, store));
    }
    let fetches: Vec<_> = nodes
        .iter()
        .map(|(n, _, _)| {
            let n = n.clone();
            tokio::spawn(async move { n.fetch_blob(digest, None).await })
        })
        .collect();
    for i in 0..map.chunk_count() {
        let d = [map.digest(i).unwrap()];
        gw_store.add_chunk_digests(digest, i, &d).await.unwrap();
        for (_, _, store) in &nodes {
            store.add_chunk_digests(digest, i, &d).await.unwrap();
        }
        let r = map.chunk_range(i).unwrap();
        let chunk = bytes::Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]);
        gw_store.write_chunk(digest, i, chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for f in fetches {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("fetch timed out")
            .unwrap()
            .unwrap();
    }
    for (_, _, store) in &nodes {
        assert_eq!(
            std::fs::read(store.blob_path(&digest).unwrap()).unwrap(),
            data
        );
    }
    let uploaded = gw.stats().bytes_uploaded as f64 / data.len() as f64;
    println!("streaming gateway uploaded {uploaded:.2}x the blob to 4 nodes");
    assert!(
        uploaded <= 2.0,
        "the gateway uploaded {uploaded:.2}x the blob: peers were not sent elsewhere"
    );
    for (n, task, _) in nodes {
        n.shutdown();
        join(task).await;
    }
    gw.shutdown();
    join(gw_task).await;
}

/// A peer drops inbound streams it cannot take: libp2p-stream's one-slot
/// queue overflows whenever a release starts (each node opens a session
/// per blob to every peer at once), and a server at its inbound limit
/// drops the excess. Such a stream is opened again within moments, not
/// after the five seconds a failed peer is left alone. Here the seed serves
/// four streams at once, slowly (so the first four sessions hold their
/// slots), and twelve blobs are fetched from it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_busy_peer_drops_unread_are_opened_again_at_once() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let seed_dir = tmp.path().join("seed");
    let mut seed_cfg = config(&seed_dir, "lab", &[]);
    seed_cfg.max_inbound_streams = 4;
    seed_cfg.max_upload_rate = Some(2_000_000);
    let s = start(&seed_dir, seed_cfg).await;
    let mut blobs = Vec::new();
    for i in 0..12 {
        let (data, digest, map) = blob(128 << 10, 100 + i, 64 << 10);
        seed(&s, &data, digest, &map).await;
        blobs.push((data, digest, map));
    }
    let d = tmp.path().join("n");
    let n = start(&d, config(&d, "lab", std::slice::from_ref(&s.addr))).await;
    meets(&n, 1).await;
    let started = std::time::Instant::now();
    let fetches: Vec<_> = blobs
        .iter()
        .map(|(_, digest, map)| {
            let c = n.client.clone();
            let (digest, map) = (*digest, map.clone());
            tokio::spawn(async move { c.fetch_blob(digest, Some(map)).await })
        })
        .collect();
    for f in fetches {
        join(f).await.unwrap();
    }
    let took = started.elapsed();
    for (data, digest, _) in &blobs {
        assert!(holds(&n.store, digest, data));
    }
    let st = n.client.stats();
    assert!(
        st.streams_dropped > 0,
        "the seed dropped no stream: the case is not exercised ({st:?})"
    );
    // A dropped stream left to the failed-peer backoff costs 5 s.
    assert!(
        took < Duration::from_secs(4),
        "{} dropped streams delayed the fetches to {took:?}",
        st.streams_dropped
    );
    n.stop().await;
    s.stop().await;
}

/// A download looks holders up in the DHT only while this node may not be
/// connected to every member of the locality: a node connected to its
/// only peer answers its lookups at once, without a query; a node that
/// hears gossip from a member it is not connected to (its connection
/// limit keeps it to one peer) queries the DHT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_lookups_run_only_while_a_known_member_is_not_connected() {
    use edgeswarm_node::swarm::Topic;
    use edgeswarm_protocol::wire::{GossipMessage, NodeStatus, PeerRole};

    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    // Nobody holds this blob: each fetch keeps looking for holders until
    // its timeout.
    let absent = edgeswarm_protocol::Digest::of(b"held by no one");
    let look = async |node: &TestNode| {
        let r = tokio::time::timeout(Duration::from_secs(3), node.client.fetch_blob(absent, None))
            .await;
        assert!(r.is_err(), "a blob nobody holds was fetched: {r:?}");
        node.client.stats()
    };

    let s = start_in(tmp.path(), "s", &[]).await;
    let n = start_in(tmp.path(), "n", std::slice::from_ref(&s.addr)).await;
    meets_peer(&n, s.client.local_peer_id()).await;
    let st = look(&n).await;
    assert!(st.dht_lookups_skipped >= 1, "no lookup asked for: {st:?}");
    assert_eq!(
        st.dht_provider_lookups, 0,
        "a DHT query although every known peer is connected: {st:?}"
    );

    let d = tmp.path().join("far");
    let mut c = config(&d, "lab", std::slice::from_ref(&n.addr));
    c.max_connections = 1;
    let far = start(&d, c).await;
    meets_peer(&far, n.client.local_peer_id()).await;
    // `s` speaks on gossip until `far` hears it through `n`.
    let mut inbox = far.client.subscribe_gossip();
    let author = s.client.local_peer_id();
    let heard = async {
        for i in 0u64.. {
            let status = GossipMessage::Status(NodeStatus {
                role: PeerRole::Node,
                gateway_capable: false,
                timestamp_ms: i,
                releases: Vec::new(),
                desired: None,
            });
            let _ = s.client.publish(Topic::Status, status.encode()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            while let Ok(g) = inbox.try_recv() {
                if g.source == Some(author) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), heard)
        .await
        .expect("`far` never heard `s` through `n`");
    assert!(
        !far.client
            .connected_peers()
            .await
            .unwrap()
            .contains(&author),
        "the connection limit let `far` connect to `s`"
    );
    let st = look(&far).await;
    assert!(
        st.dht_provider_lookups >= 1,
        "no DHT query although `s` is a member `far` is not connected to: {st:?}"
    );
    for node in [far, n, s] {
        node.stop().await;
    }
}
