//! Helpers for the swarm integration tests: in-process nodes on loopback
//! TCP, each with its own temporary data directory and the node's real
//! chunk store (`node::store::Store`, as shipped).

use std::path::Path;
use std::time::Duration;

use edgeswarm_node::store::{Store, StoreConfig};
use edgeswarm_node::swarm::{Node, SwarmClient, SwarmConfig};
use edgeswarm_protocol::{ChunkMap, ChunkSize, Digest};
use libp2p::Multiaddr;
use rand::{RngCore, SeedableRng};
use tokio::task::JoinHandle;

pub(crate) struct TestNode {
    pub(crate) client: SwarmClient,
    pub(crate) store: Store,
    pub(crate) handle: JoinHandle<()>,
    pub(crate) addr: Multiaddr,
}

impl TestNode {
    pub(crate) async fn stop(self) {
        self.client.shutdown();
        // A slow stop is tolerated (as before); a panic of the node task is
        // raised here and fails the test.
        let _ = tokio::time::timeout(Duration::from_secs(10), super::join(self.handle)).await;
    }
}

pub(crate) fn config(dir: &Path, locality: &str, bootstrap: &[Multiaddr]) -> SwarmConfig {
    let mut c = SwarmConfig::new(dir, locality);
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap = bootstrap.to_vec();
    c.mdns = false;
    c
}

pub(crate) async fn start(dir: &Path, config: SwarmConfig) -> TestNode {
    let store = Store::open(dir.join("store"), StoreConfig::default())
        .await
        .unwrap();
    let (client, handle) = Node::start(config, store.clone()).await.unwrap();
    let addr = client.listen_addrs().await.unwrap()[0].clone();
    TestNode {
        client,
        store,
        handle,
        addr,
    }
}

/// Starts a node of locality "lab" whose data dir is `name` under `root`.
pub(crate) async fn start_in(root: &Path, name: &str, bootstrap: &[Multiaddr]) -> TestNode {
    let dir = root.join(name);
    start(&dir, config(&dir, "lab", bootstrap)).await
}

/// Waits (up to 10 s) until `node` is connected to `peer`.
pub(crate) async fn meets_peer(node: &TestNode, peer: libp2p::PeerId) {
    super::eventually(
        "the node meets the peer",
        Duration::from_secs(10),
        async || {
            let peers = node
                .client
                .connected_peers()
                .await
                .map_err(|e| e.to_string())?;
            if peers.contains(&peer) {
                Ok(())
            } else {
                Err(format!("{peers:?}"))
            }
        },
    )
    .await;
}

/// Waits (up to 20 s) until `node` is connected to at least `peers` peers.
pub(crate) async fn meets(node: &TestNode, peers: usize) {
    super::eventually(
        "the node meets its peers",
        Duration::from_secs(20),
        async || {
            let connected = node
                .client
                .connected_peers()
                .await
                .map_err(|e| e.to_string())?;
            if connected.len() >= peers {
                Ok(())
            } else {
                Err(format!("{} peers of {peers}", connected.len()))
            }
        },
    )
    .await;
}

/// Deterministic pseudo-random blob.
pub(crate) fn blob(size: usize, seed: u64, chunk: u32) -> (Vec<u8>, Digest, ChunkMap) {
    let mut data = vec![0u8; size];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    let digest = Digest::of(&data);
    let map = ChunkMap::from_bytes(&data, ChunkSize::new(chunk).unwrap());
    (data, digest, map)
}

/// Declares `map` in `store` and writes every chunk of `data`, verifying
/// each (how a seed gets a blob without the network).
pub(crate) async fn put_blob_chunks(store: &Store, data: &[u8], digest: Digest, map: &ChunkMap) {
    store.put_chunk_map(digest, map).await.unwrap();
    for index in 0..map.chunk_count() {
        let r = map.chunk_range(index).unwrap();
        let chunk = bytes::Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]);
        store.write_chunk(digest, index, chunk).await.unwrap();
    }
}

pub(crate) async fn seed(node: &TestNode, data: &[u8], digest: Digest, map: &ChunkMap) {
    put_blob_chunks(&node.store, data, digest, map).await;
    assert!(node.store.is_complete(&digest));
    node.client.provide(digest).await.unwrap();
}

/// Whether the store's copy of `digest` equals `data`.
pub(crate) fn holds(store: &Store, digest: &Digest, data: &[u8]) -> bool {
    store.is_complete(digest)
        && store
            .blob_path(digest)
            .and_then(|p| std::fs::read(p).ok())
            .is_some_and(|b| b == data)
}

/// Every node fetches `digest` at once; panics unless all succeed within
/// `timeout`.
pub(crate) async fn fetch_all(
    nodes: &[&TestNode],
    digest: Digest,
    map: &ChunkMap,
    timeout: Duration,
) {
    let fetches: Vec<_> = nodes
        .iter()
        .map(|n| {
            let c = n.client.clone();
            let m = map.clone();
            tokio::spawn(async move { c.fetch_blob(digest, Some(m)).await })
        })
        .collect();
    for f in fetches {
        tokio::time::timeout(timeout, f)
            .await
            .expect("fetch timed out")
            .unwrap()
            .unwrap();
    }
}
