//! Helpers for the swarm integration tests: in-process nodes on loopback
//! TCP, each with its own temporary data directory and the node's real
//! chunk store (`node::store::Store`, as shipped).
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use edgeswarm_node::store::{Store, StoreConfig};
use edgeswarm_node::swarm::{Node, SwarmClient, SwarmConfig};
use edgeswarm_protocol::{ChunkMap, ChunkSize, Digest};
use libp2p::Multiaddr;
use rand::{RngCore, SeedableRng};
use tokio::task::JoinHandle;

pub struct TestNode {
    pub client: SwarmClient,
    pub store: Store,
    pub handle: JoinHandle<()>,
    pub addr: Multiaddr,
}

impl TestNode {
    pub async fn stop(self) {
        self.client.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

pub fn config(dir: &Path, locality: &str, bootstrap: &[Multiaddr]) -> SwarmConfig {
    let mut c = SwarmConfig::new(dir, locality);
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap = bootstrap.to_vec();
    c.mdns = false;
    c
}

pub async fn start(dir: &Path, config: SwarmConfig) -> TestNode {
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

/// Deterministic pseudo-random blob.
pub fn blob(size: usize, seed: u64, chunk: u32) -> (Vec<u8>, Digest, ChunkMap) {
    let mut data = vec![0u8; size];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    let digest = Digest::of(&data);
    let map = ChunkMap::from_bytes(&data, ChunkSize::new(chunk).unwrap());
    (data, digest, map)
}

/// Declares `map` in `store` and writes every chunk of `data`, verifying
/// each (how a seed gets a blob without the network).
pub async fn put_blob_chunks(store: &Store, data: &[u8], digest: Digest, map: &ChunkMap) {
    store.put_chunk_map(digest, map).await.unwrap();
    for index in 0..map.chunk_count() {
        let r = map.chunk_range(index).unwrap();
        let chunk = bytes::Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]);
        store.write_chunk(digest, index, chunk).await.unwrap();
    }
}

pub async fn seed(node: &TestNode, data: &[u8], digest: Digest, map: &ChunkMap) {
    put_blob_chunks(&node.store, data, digest, map).await;
    assert!(node.store.is_complete(&digest));
    node.client.provide(digest).await.unwrap();
}

/// Whether the store's copy of `digest` equals `data`.
pub fn holds(store: &Store, digest: &Digest, data: &[u8]) -> bool {
    store.is_complete(digest)
        && store
            .blob_path(digest)
            .and_then(|p| std::fs::read(p).ok())
            .is_some_and(|b| b == data)
}
