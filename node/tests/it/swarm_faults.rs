//! Integrity and liveness: corrupt peers are banned, killed nodes resume.

use std::time::Duration;

use crate::support::swarm::*;
use crate::support::{eventually, init_tracing, join};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_chunks_is_banned_and_everyone_ends_correct() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(8 << 20, 3, 256 << 10);
    let seed_dir = tmp.path().join("seed");
    let s = start(&seed_dir, config(&seed_dir, "lab", &[])).await;
    seed(&s, &data, digest, &map).await;
    // The liar declares the blob, then advertises every chunk and serves garbage.
    let bad_dir = tmp.path().join("bad");
    let mut bad_cfg = config(&bad_dir, "lab", std::slice::from_ref(&s.addr));
    bad_cfg.corrupt_uploads = true;
    let bad = start(&bad_dir, bad_cfg).await;
    bad.store.put_chunk_map(digest, &map).await.unwrap();
    bad.client.provide(digest).await.unwrap();
    let bad_id = bad.client.local_peer_id();
    let mut nodes = Vec::new();
    for i in 0..5 {
        let d = tmp.path().join(format!("n{i}"));
        nodes.push(start(&d, config(&d, "lab", &[s.addr.clone(), bad.addr.clone()])).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    fetch_all(
        &nodes.iter().collect::<Vec<_>>(),
        digest,
        &map,
        Duration::from_secs(180),
    )
    .await;
    let mut bad_chunks = 0;
    for n in &nodes {
        assert!(holds(&n.store, &digest, &data));
        let st = n.client.stats();
        bad_chunks += st.bad_chunks;
        if st.bad_chunks > 0 {
            assert!(
                st.bans >= 1,
                "a node that got a bad chunk must ban the sender"
            );
            assert!(
                !n.client.connected_peers().await.unwrap().contains(&bad_id),
                "banned peer still connected"
            );
        }
    }
    assert!(
        bad_chunks >= 1,
        "the liar was never asked: the test proves nothing"
    );
    for n in nodes {
        n.stop().await;
    }
    bad.stop().await;
    s.stop().await;
}

/// A member takes every chunk of an origin seed and then serves garbage:
/// the seed spares those chunks (it uploaded them moments ago, to a peer
/// still connected to it), and the victim bans the hoarder. The victim
/// must still get them from the seed, after the sparing retry
/// (`UploadConfig::spare_retry_ms`, 5 s), not after the 60 s sparing
/// period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_hoarding_the_seeds_chunks_does_not_hold_them_hostage() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(4 << 20, 7, 256 << 10);
    let seed_dir = tmp.path().join("seed");
    let s = start(&seed_dir, config(&seed_dir, "lab", &[])).await;
    seed(&s, &data, digest, &map).await;
    let hoarder_dir = tmp.path().join("hoarder");
    let mut hoarder_cfg = config(&hoarder_dir, "lab", std::slice::from_ref(&s.addr));
    hoarder_cfg.corrupt_uploads = true;
    let hoarder = start(&hoarder_dir, hoarder_cfg).await;
    hoarder
        .client
        .fetch_blob(digest, Some(map.clone()))
        .await
        .unwrap();
    let victim_dir = tmp.path().join("victim");
    let victim = start(
        &victim_dir,
        config(&victim_dir, "lab", &[s.addr.clone(), hoarder.addr.clone()]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(120),
        victim.client.fetch_blob(digest, Some(map.clone())),
    )
    .await
    .expect("fetch timed out")
    .unwrap();
    let took = started.elapsed();
    assert!(holds(&victim.store, &digest, &data));
    let st = victim.client.stats();
    assert!(
        st.bad_chunks >= 1 && st.bans >= 1,
        "the hoarder was never asked: the test proves nothing ({st:?})"
    );
    // Half the sparing period: the spared chunks came from the seed once
    // the victim asked again, not once the period ran out.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    victim.stop().await;
    hoarder.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_transfer_resumes_without_refetching() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(16 << 20, 4, 256 << 10);
    let chunks = map.chunk_count() as u64;
    let seed_dir = tmp.path().join("seed");
    // Slow uploads so the transfer is still running when the victim dies.
    let mut seed_cfg = config(&seed_dir, "lab", &[]);
    seed_cfg.max_upload_rate = Some(4 << 20);
    let s = start(&seed_dir, seed_cfg).await;
    seed(&s, &data, digest, &map).await;
    let slow = |d: &std::path::Path| {
        let mut c = config(d, "lab", std::slice::from_ref(&s.addr));
        c.max_upload_rate = Some(4 << 20);
        c
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        let d = tmp.path().join(format!("n{i}"));
        nodes.push(start(&d, slow(&d)).await);
    }
    let victim_dir = tmp.path().join("victim");
    let victim = start(&victim_dir, slow(&victim_dir)).await;
    let victim_id = victim.client.local_peer_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut fetches: Vec<_> = nodes
        .iter()
        .chain(std::iter::once(&victim))
        .map(|n| {
            let c = n.client.clone();
            let m = map.clone();
            tokio::spawn(async move { c.fetch_blob(digest, Some(m)).await })
        })
        .collect();
    let victim_fetch = fetches.pop().unwrap();
    // Kill the victim once it holds a quarter of the blob.
    eventually(
        "the victim holds a quarter of the blob",
        Duration::from_secs(120),
        async || {
            let held = victim.store.bitfield(&digest).map_or(0, |b| b.count_ones());
            (held as u64 >= chunks / 4).then_some(()).ok_or(held)
        },
    )
    .await;
    victim.client.shutdown();
    // The victim's own fetch fails once it is shut down (that is the
    // point); only a panic in its task or its node fails the test.
    let _ = join(victim_fetch).await;
    join(victim.handle).await;
    drop(victim.store);
    for f in fetches {
        tokio::time::timeout(Duration::from_secs(180), f)
            .await
            .expect("survivors did not finish")
            .unwrap()
            .unwrap();
    }
    for n in &nodes {
        assert!(holds(&n.store, &digest, &data));
    }
    // Restart from the same data dir: same identity, verified chunks kept.
    let victim = start(&victim_dir, slow(&victim_dir)).await;
    assert_eq!(
        victim.client.local_peer_id(),
        victim_id,
        "identity must persist"
    );
    let held = victim.store.bitfield(&digest).unwrap().count_ones() as u64;
    assert!(
        held >= chunks / 4 && held < chunks,
        "held {held} of {chunks}"
    );
    tokio::time::timeout(
        Duration::from_secs(180),
        victim.client.fetch_blob(digest, None),
    )
    .await
    .expect("restarted victim did not finish")
    .unwrap();
    assert!(holds(&victim.store, &digest, &data));
    let st = victim.client.stats();
    assert_eq!(
        st.chunks_downloaded,
        chunks - held,
        "verified chunks were fetched again"
    );
    assert!(
        st.duplicate_chunks <= 8,
        "{} duplicate chunks",
        st.duplicate_chunks
    );
    victim.stop().await;
    for n in nodes {
        n.stop().await;
    }
    s.stop().await;
}

/// A peer that advertises every chunk, accepts requests and never answers:
/// its requests are reassigned after the size-scaled timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_stalled_peer_are_reassigned() {
    use edgeswarm_node::swarm::behaviour::{build_swarm, NetConfig, Protocols};
    use edgeswarm_protocol::wire::{
        encode_frame, BitfieldMsg, Hello, StreamMessage, STREAM_VERSION,
    };
    use edgeswarm_protocol::Bitfield;
    use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};

    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(4 << 20, 9, 256 << 10);
    let seed_dir = tmp.path().join("seed");
    // A slow seed, so the transfer outlasts the stall timeout.
    let mut seed_cfg = config(&seed_dir, "lab", &[]);
    seed_cfg.max_upload_rate = Some(2 << 20);
    let s = start(&seed_dir, seed_cfg).await;
    seed(&s, &data, digest, &map).await;

    // The staller: a bare peer speaking the chunk protocol.
    let protocols = Protocols::new("lab").unwrap();
    let key = libp2p::identity::Keypair::generate_ed25519();
    let staller_id = key.public().to_peer_id();
    let mut swarm = build_swarm(
        key,
        &NetConfig {
            protocols: protocols.clone(),
            swarm_key: None,
            mdns: false,
            max_connections: 16,
            idle_timeout: Duration::from_secs(60),
        },
    )
    .unwrap();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let mut incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(protocols.chunks.clone())
        .unwrap();
    let count = map.chunk_count();
    let staller_streams = tokio::spawn(async move {
        while let Some((_peer, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let hello = encode_frame(&StreamMessage::Hello(Hello {
                    protocol_version: STREAM_VERSION,
                    blobs: vec![digest],
                }));
                let bits = encode_frame(&StreamMessage::Bitfield(BitfieldMsg {
                    blob: digest,
                    bitfield: Bitfield::full(count),
                }));
                let _ = stream.write_all(&hello).await;
                let _ = stream.write_all(&bits).await;
                let _ = stream.flush().await;
                // Swallow requests forever.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let mut addr = None;
    while addr.is_none() {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            swarm.select_next_some().await
        {
            addr = Some(address.with(libp2p::multiaddr::Protocol::P2p(staller_id)));
        }
    }
    let staller_addr = addr.unwrap();
    let staller_task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });

    let d = tmp.path().join("node");
    let mut c = config(&d, "lab", &[s.addr.clone(), staller_addr]);
    c.stall_base = Duration::from_millis(500);
    c.stall_min_rate = 4 << 20;
    let n = start(&d, c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        n.client.fetch_blob(digest, Some(map.clone())),
    )
    .await
    .expect("fetch timed out despite a healthy seed")
    .unwrap();
    assert!(holds(&n.store, &digest, &data));
    assert!(
        n.client.stats().stalls >= 1,
        "the staller was never detected: {:?}",
        n.client.stats()
    );
    staller_task.abort();
    staller_streams.abort();
    n.stop().await;
    s.stop().await;
}
