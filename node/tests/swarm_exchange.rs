//! End-to-end chunk exchange between real nodes on loopback TCP.

mod swarm_util;

use std::time::Duration;

use swarm_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fetch_a_blob_from_a_seed_and_each_other() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").try_init();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(8 << 20, 1, 256 << 10);
    let seed_dir = tmp.path().join("seed");
    let s = start(&seed_dir, config(&seed_dir, "lab", &[])).await;
    seed(&s, &data, digest, &map).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let d = tmp.path().join(format!("n{i}"));
        nodes.push(start(&d, config(&d, "lab", &[s.addr.clone()])).await);
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
    for n in nodes {
        n.stop().await;
    }
    s.stop().await;
}
