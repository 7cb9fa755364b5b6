//! Cut-through relay over real libp2p connections: chunks pass on while
//! they arrive, and a relay whose source lies aborts without being blamed.

use std::time::Duration;

use crate::support::swarm::*;
use crate::support::{eventually, init_tracing};

/// A slow origin seed spares its uplink (each chunk goes to one requester),
/// so the other requesters take each chunk from the peer receiving it,
/// while it arrives: relayed chunks show in the counters, every copy
/// verifies, and the seed uploads each chunk about once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_relayed_while_they_arrive_and_every_copy_verifies() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(4 << 20, 11, 256 << 10);
    let seed_dir = tmp.path().join("seed");
    let mut seed_cfg = config(&seed_dir, "lab", &[]);
    // 256 KiB chunks take ~170 ms each: long enough for peers to learn of
    // a chunk in flight and ask for it.
    seed_cfg.max_upload_rate = Some(1_500_000);
    let s = start(&seed_dir, seed_cfg).await;
    seed(&s, &data, digest, &map).await;
    let mut nodes = Vec::new();
    for i in 0..4 {
        let d = tmp.path().join(format!("n{i}"));
        nodes.push(start(&d, config(&d, "lab", std::slice::from_ref(&s.addr))).await);
    }
    for n in &nodes {
        meets(n, 4).await;
    }
    fetch_all(
        &nodes.iter().collect::<Vec<_>>(),
        digest,
        &map,
        Duration::from_secs(120),
    )
    .await;
    let mut relayed = 0;
    for n in &nodes {
        assert!(holds(&n.store, &digest, &data));
        let st = n.client.stats();
        assert_eq!(st.bad_chunks, 0, "{st:?}");
        assert_eq!(st.bans, 0, "nobody lied: {st:?}");
        relayed += st.chunks_relayed;
    }
    assert!(relayed >= 1, "no chunk was relayed while it arrived");
    // Sparing plus relay: the seed's uplink carried the blob about once.
    let chunks = u64::from(map.chunk_count());
    let uploaded = s.client.stats().chunks_uploaded;
    assert!(
        uploaded <= chunks + chunks / 4,
        "the seed uploaded {uploaded} chunks for {chunks}"
    );
    for n in nodes {
        n.stop().await;
    }
    s.stop().await;
}

/// A relay's source serves garbage: the relay's own copy fails, it bans
/// the source and aborts what it relayed; its requesters ask again and do
/// not blame it (they stay connected), and everyone ends with the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_source_lies_aborts_and_is_not_blamed() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(4 << 20, 12, 256 << 10);
    let seed_dir = tmp.path().join("seed");
    let mut seed_cfg = config(&seed_dir, "lab", &[]);
    seed_cfg.max_upload_rate = Some(2_000_000);
    let s = start(&seed_dir, seed_cfg).await;
    seed(&s, &data, digest, &map).await;
    // The liar advertises every chunk and serves garbage, slowly, so the
    // relay has relayed most of a chunk before its copy fails.
    let liar_dir = tmp.path().join("liar");
    let mut liar_cfg = config(&liar_dir, "lab", std::slice::from_ref(&s.addr));
    liar_cfg.corrupt_uploads = true;
    liar_cfg.max_upload_rate = Some(1_000_000);
    let liar = start(&liar_dir, liar_cfg).await;
    liar.store.put_chunk_map(digest, &map).await.unwrap();
    liar.client.provide(digest).await.unwrap();
    let liar_id = liar.client.local_peer_id();
    let relay_dir = tmp.path().join("relay");
    let relay = start(
        &relay_dir,
        config(&relay_dir, "lab", &[s.addr.clone(), liar.addr.clone()]),
    )
    .await;
    let relay_id = relay.client.local_peer_id();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let d = tmp.path().join(format!("n{i}"));
        nodes.push(start(&d, config(&d, "lab", std::slice::from_ref(&relay.addr))).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut fetches = vec![{
        let c = relay.client.clone();
        let m = map.clone();
        tokio::spawn(async move { c.fetch_blob(digest, Some(m)).await })
    }];
    // The others start once the relay has chunks in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in &nodes {
        let c = n.client.clone();
        let m = map.clone();
        fetches.push(tokio::spawn(
            async move { c.fetch_blob(digest, Some(m)).await },
        ));
    }
    for f in fetches {
        tokio::time::timeout(Duration::from_secs(180), f)
            .await
            .expect("fetch timed out")
            .unwrap()
            .unwrap();
    }
    assert!(holds(&relay.store, &digest, &data));
    let rs = relay.client.stats();
    assert!(rs.bad_chunks >= 1, "the liar was never asked: {rs:?}");
    assert!(!relay
        .client
        .connected_peers()
        .await
        .unwrap()
        .contains(&liar_id));
    let mut aborted = 0;
    for n in &nodes {
        assert!(holds(&n.store, &digest, &data));
        aborted += n.client.metrics().relays_aborted.get();
        assert!(
            n.client
                .connected_peers()
                .await
                .unwrap()
                .contains(&relay_id),
            "an honest relay was blamed for its source's garbage"
        );
    }
    assert!(
        aborted >= 1,
        "no relay of the liar's garbage was aborted: the test proves nothing"
    );
    for n in nodes {
        n.stop().await;
    }
    relay.stop().await;
    liar.stop().await;
    s.stop().await;
}

/// A hostile member advertises every chunk as relaying and answers each
/// request with all but the last byte of garbage, then aborts. The victim
/// stops taking its relays after a few aborts and gets the blob from an
/// honest seed; aborting is not a ban, so the attacker is merely ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_relays_always_abort_is_ignored_not_followed() {
    use edgeswarm_node::swarm::behaviour::{build_swarm, NetConfig, Protocols};
    use edgeswarm_protocol::wire::{
        encode_frame, ChunkResponse, ChunkStatus, Hello, Relaying, StreamMessage, HELLO_VERSION,
        RELAY_ABORT,
    };
    use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};

    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(4 << 20, 13, 256 << 10);
    let count = map.chunk_count();
    let seed_dir = tmp.path().join("seed");
    let mut seed_cfg = config(&seed_dir, "lab", &[]);
    seed_cfg.max_upload_rate = Some(4_000_000);
    let s = start(&seed_dir, seed_cfg).await;
    seed(&s, &data, digest, &map).await;

    let key = libp2p::identity::Keypair::generate_ed25519();
    let attacker = key.public().to_peer_id();
    let net = NetConfig {
        protocols: Protocols::new("lab").unwrap(),
        swarm_key: None,
        mdns: false,
        max_connections: 16,
        idle_timeout: Duration::from_secs(60),
    };
    let mut swarm = build_swarm(key, &net).unwrap();
    let mut incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(net.protocols.chunks.clone())
        .unwrap();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            swarm.select_next_some().await
        {
            break address;
        }
    };
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let served_by_attacker = served.clone();
    let attacker_map = map.clone();
    let server = tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let served = served_by_attacker.clone();
            let map = attacker_map.clone();
            tokio::spawn(async move {
                let frame = |m: &StreamMessage| encode_frame(m);
                let mut out = frame(&StreamMessage::Hello(Hello {
                    protocol_version: HELLO_VERSION,
                    blobs: vec![digest],
                }));
                out.extend(frame(&StreamMessage::Relaying(Relaying {
                    blob: digest,
                    indices: (0..count).collect(),
                })));
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                loop {
                    let mut prefix = [0u8; 4];
                    if stream.read_exact(&mut prefix).await.is_err() {
                        return;
                    }
                    let mut header = vec![0u8; u32::from_be_bytes(prefix) as usize];
                    if stream.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let Ok(StreamMessage::ChunkRequest(q)) = StreamMessage::decode(&header) else {
                        continue;
                    };
                    let len = map.chunk_len(q.index).unwrap();
                    let mut out = frame(&StreamMessage::ChunkResponse(ChunkResponse {
                        request_id: q.request_id,
                        status: ChunkStatus::Relay { len: len as u64 },
                    }));
                    out.extend((len - 1).to_be_bytes());
                    out.extend(vec![0xA5u8; len as usize - 1]);
                    out.extend(RELAY_ABORT.to_be_bytes());
                    served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    let victim_dir = tmp.path().join("victim");
    let victim = start(
        &victim_dir,
        config(&victim_dir, "lab", &[s.addr.clone(), addr]),
    )
    .await;
    eventually("victim meets both", Duration::from_secs(20), async || {
        let peers = victim.client.connected_peers().await.unwrap();
        (peers.contains(&attacker) && peers.contains(&s.client.local_peer_id()))
            .then_some(())
            .ok_or(format!("{peers:?}"))
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(120),
        victim.client.fetch_blob(digest, Some(map.clone())),
    )
    .await
    .expect("fetch timed out")
    .unwrap();
    assert!(holds(&victim.store, &digest, &data));
    let aborted = victim.client.metrics().relays_aborted.get();
    let asked = served.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        aborted >= 1,
        "the attacker was never asked: the test proves nothing"
    );
    // A few aborts per session, then its Relaying is ignored (a session
    // may be re-opened once after the download backs off the peer).
    assert!(
        asked <= 8,
        "the attacker was asked {asked} times for {count} chunks"
    );
    assert_eq!(victim.client.stats().bans, 0, "an abort is not a ban");
    server.abort();
    driver.abort();
    victim.stop().await;
    s.stop().await;
}

/// A bare libp2p peer speaking our protocols, listening on loopback and
/// dialing `dial` if given; its swarm is driven in the background. Returns
/// its id, address, stream control and the driver task.
async fn bare_peer(
    dial: Option<libp2p::Multiaddr>,
) -> (
    libp2p::PeerId,
    libp2p::Multiaddr,
    libp2p_stream::Control,
    tokio::task::JoinHandle<()>,
) {
    use edgeswarm_node::swarm::behaviour::{build_swarm, NetConfig, Protocols};
    use futures::StreamExt as _;
    let key = libp2p::identity::Keypair::generate_ed25519();
    let id = key.public().to_peer_id();
    let net = NetConfig {
        protocols: Protocols::new("lab").unwrap(),
        swarm_key: None,
        mdns: false,
        max_connections: 16,
        idle_timeout: Duration::from_secs(60),
    };
    let mut swarm = build_swarm(key, &net).unwrap();
    let control = swarm.behaviour().stream.new_control();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            swarm.select_next_some().await
        {
            break address;
        }
    };
    if let Some(target) = dial {
        swarm.dial(target).unwrap();
    }
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (id, addr, control, driver)
}

/// A relay's own copy ends early because its download completed from
/// another source (the session still reading the first copy is closed):
/// it completes what it relays from the verified chunk in its store, so
/// its requester gets the whole chunk instead of an abort near its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_copy_is_closed_by_a_completed_download_finishes_from_the_store() {
    relay_closed_by_a_completed_download(false).await;
}

/// As above, but the bytes already relayed came from a lying source: they
/// do not match the verified chunk, so the relay aborts rather than
/// complete a chunk that would not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_closed_copy_differs_from_the_stored_chunk_aborts() {
    relay_closed_by_a_completed_download(true).await;
}

async fn relay_closed_by_a_completed_download(lying_source: bool) {
    use edgeswarm_protocol::wire::{
        encode_frame, BitfieldMsg, ChunkRequest, ChunkResponse, ChunkStatus, FrameDecoder, Hello,
        StreamMessage, HELLO_VERSION,
    };
    use edgeswarm_protocol::Bitfield;
    use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};

    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    // One chunk of 256 KiB.
    let (data, digest, map) = blob(256 << 10, 14, 256 << 10);
    assert_eq!(map.chunk_count(), 1);
    let len = data.len();

    // The slow source: serves the right bytes, half at once, then 1 KiB
    // every 100 ms (the relay stays alive; its requester waits).
    let (_, slow_addr, mut slow_control, slow_driver) = bare_peer(None).await;
    let mut incoming = slow_control
        .accept(
            edgeswarm_node::swarm::behaviour::Protocols::new("lab")
                .unwrap()
                .chunks,
        )
        .unwrap();
    let mut slow_data = data.clone();
    if lying_source {
        slow_data[10] ^= 0xFF;
    }
    let slow = tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let data = slow_data.clone();
            tokio::spawn(async move {
                let mut out = encode_frame(&StreamMessage::Hello(Hello {
                    protocol_version: HELLO_VERSION,
                    blobs: vec![digest],
                }));
                out.extend(encode_frame(&StreamMessage::Bitfield(BitfieldMsg {
                    blob: digest,
                    bitfield: Bitfield::full(1),
                })));
                if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                loop {
                    let mut prefix = [0u8; 4];
                    if stream.read_exact(&mut prefix).await.is_err() {
                        return;
                    }
                    let mut header = vec![0u8; u32::from_be_bytes(prefix) as usize];
                    if stream.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let Ok(StreamMessage::ChunkRequest(q)) = StreamMessage::decode(&header) else {
                        continue;
                    };
                    let mut out = encode_frame(&StreamMessage::ChunkResponse(ChunkResponse {
                        request_id: q.request_id,
                        status: ChunkStatus::Relay { len: len as u64 },
                    }));
                    let half = len / 2;
                    out.extend((half as u32).to_be_bytes());
                    out.extend_from_slice(&data[..half]);
                    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                    // Never quite finishes: 1 KiB per 100 ms, stopping
                    // short of the last byte.
                    let mut at = half;
                    while at + 1024 < len {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let mut piece = (1024u32).to_be_bytes().to_vec();
                        piece.extend_from_slice(&data[at..at + 1024]);
                        if stream.write_all(&piece).await.is_err() || stream.flush().await.is_err()
                        {
                            return;
                        }
                        at += 1024;
                    }
                    std::future::pending::<()>().await;
                }
            });
        }
    });

    // The relay fetches the chunk from the slow source alone, for now.
    let relay_dir = tmp.path().join("relay");
    let relay = start(&relay_dir, config(&relay_dir, "lab", &[slow_addr])).await;
    meets(&relay, 1).await;
    let fetch = {
        let client = relay.client.clone();
        let map = map.clone();
        tokio::spawn(async move { client.fetch_blob(digest, Some(map)).await })
    };

    // A requester asks the relay for the chunk once the relay says it is
    // receiving it.
    let (_, _, mut requester, requester_driver) = bare_peer(Some(relay.addr.clone())).await;
    let relay_id = relay.client.local_peer_id();
    let chunks = edgeswarm_node::swarm::behaviour::Protocols::new("lab")
        .unwrap()
        .chunks;
    let mut stream = loop {
        match requester.open_stream(relay_id, chunks.clone()).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let hello = encode_frame(&StreamMessage::Hello(Hello {
        protocol_version: HELLO_VERSION,
        blobs: vec![digest],
    }));
    stream.write_all(&hello).await.unwrap();
    stream.flush().await.unwrap();
    'relaying: loop {
        while let Some(frame) = decoder.next_frame().unwrap() {
            if let StreamMessage::Relaying(r) = frame.message {
                if r.indices.contains(&0) {
                    break 'relaying;
                }
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the relay never said it receives the chunk")
            .unwrap();
        assert!(n > 0, "the relay closed the stream");
        decoder.push(&buf[..n]);
    }
    let request = encode_frame(&StreamMessage::ChunkRequest(ChunkRequest {
        request_id: 1,
        blob: digest,
        index: 0,
    }));
    stream.write_all(&request).await.unwrap();
    stream.flush().await.unwrap();
    // Wait until the relay passes on at least a quarter of the chunk.
    let mut received = 0usize;
    while received < len / 4 {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the relay never began its answer")
            .unwrap();
        assert!(n > 0, "the relay closed the stream");
        decoder.push(&buf[..n]);
        received += n;
    }

    // An honest seed appears: the relay's download completes from it and
    // closes the session still reading the slow copy.
    let seed_dir = tmp.path().join("seed");
    let s = start(
        &seed_dir,
        config(&seed_dir, "lab", std::slice::from_ref(&relay.addr)),
    )
    .await;
    seed(&s, &data, digest, &map).await;
    tokio::time::timeout(Duration::from_secs(60), fetch)
        .await
        .expect("the relay's download never completed")
        .unwrap()
        .unwrap();
    assert!(holds(&relay.store, &digest, &data));

    // The requester gets the whole, right chunk, not an abort.
    let frame = loop {
        if let Some(frame) = decoder.next_frame().unwrap() {
            if matches!(frame.message, StreamMessage::ChunkResponse(_)) {
                break frame;
            }
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the relayed answer neither ended nor aborted")
            .unwrap();
        assert!(n > 0, "the relay closed the stream");
        decoder.push(&buf[..n]);
    };
    if lying_source {
        assert!(
            frame.relay_aborted,
            "a relay completed bytes it did not verify"
        );
        assert_eq!(relay.client.metrics().relays_completed_from_store.get(), 0);
    } else {
        assert!(
            !frame.relay_aborted,
            "the relay aborted instead of finishing from its store"
        );
        assert_eq!(frame.payload, data);
        assert!(relay.client.metrics().relays_completed_from_store.get() >= 1);
    }

    drop(stream);
    slow.abort();
    slow_driver.abort();
    requester_driver.abort();
    relay.stop().await;
    s.stop().await;
}
