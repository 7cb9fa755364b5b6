//! Twenty nodes and one seed on loopback TCP: everyone ends with the
//! verified blob, the seed uploads about once, chunks come from many peers.

use std::time::{Duration, Instant};

use crate::support::init_tracing;
use crate::support::swarm::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_and_a_seed_share_a_64_mib_blob() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(64 << 20, 20, 1 << 20);
    let seed_dir = tmp.path().join("seed");
    let s = start(&seed_dir, config(&seed_dir, "lab", &[])).await;
    seed(&s, &data, digest, &map).await;
    let mut nodes = Vec::new();
    for i in 0..20 {
        let d = tmp.path().join(format!("n{i}"));
        nodes.push(start(&d, config(&d, "lab", std::slice::from_ref(&s.addr))).await);
    }
    // Let the DHT settle a moment so nodes know each other, as a rollout
    // would find them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    fetch_all(
        &nodes.iter().collect::<Vec<_>>(),
        digest,
        &map,
        Duration::from_secs(600),
    )
    .await;
    let elapsed = t0.elapsed();
    let seed_up = s.client.stats().bytes_uploaded;
    let mut sources: Vec<usize> = nodes
        .iter()
        .map(|n| n.client.stats().distinct_sources)
        .collect();
    sources.sort_unstable();
    eprintln!(
        "20 nodes done in {elapsed:?}; seed uploaded {:.2}x the blob; distinct sources per node {sources:?}",
        seed_up as f64 / data.len() as f64
    );
    for n in &nodes {
        assert!(
            holds(&n.store, &digest, &data),
            "a node lacks the verified blob"
        );
    }
    assert!(
        seed_up as f64 <= 1.2 * data.len() as f64,
        "seed uploaded {seed_up} bytes for a {}-byte blob",
        data.len()
    );
    assert!(
        sources[sources.len() / 2] >= 4,
        "median node received from {} peers",
        sources[sources.len() / 2]
    );
    for n in nodes {
        n.stop().await;
    }
    s.stop().await;
}
