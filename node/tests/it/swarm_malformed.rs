//! Malformed and oversize input on the chunk stream protocol and on gossip:
//! the node survives and the offender is penalised.

use std::time::Duration;

use crate::support::swarm::*;
use crate::support::{eventually, init_tracing};
use edgeswarm_node::swarm::behaviour::{build_swarm, BehaviourEvent, NetConfig, Protocols, Topic};
use futures::{AsyncWriteExt as _, StreamExt as _};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, Multiaddr, PeerId};

fn attacker_config() -> NetConfig {
    NetConfig {
        protocols: Protocols::new("lab").unwrap(),
        swarm_key: None,
        mdns: false,
        max_connections: 16,
        idle_timeout: Duration::from_secs(60),
    }
}

/// What an attacker publishes on gossip.
#[derive(Clone, Copy, PartialEq)]
enum Gossip {
    /// Nothing.
    Quiet,
    /// Bytes that are no sealed message at all.
    Garbage,
    /// Well-formed status reports whose seals do not verify: one claims
    /// another author, one was sealed for another locality's topic.
    ForgedSeals,
}

/// Starts a bare attacker peer speaking our protocols, connected to
/// `target`, publishing `gossip` once the target subscribes to the
/// availability topic.
fn attacker(
    target: Multiaddr,
    gossip: Gossip,
) -> (PeerId, libp2p_stream::Control, tokio::task::JoinHandle<()>) {
    use edgeswarm_node::swarm::behaviour::{gossip_key, seal_gossip};
    use edgeswarm_protocol::wire::{GossipMessage, NodeStatus, PeerRole, SealedGossip};
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id();
    let seal_key = gossip_key(&key).unwrap();
    let victim = gossip_key(&Keypair::generate_ed25519()).unwrap().public();
    let mut swarm = build_swarm(key, &attacker_config()).unwrap();
    let control = swarm.behaviour().stream.new_control();
    swarm.dial(target).unwrap();
    let protocols = attacker_config().protocols;
    let elsewhere = Protocols::new("elsewhere").unwrap();
    let availability = protocols.topic(Topic::Availability);
    let status = protocols.topic(Topic::Status);
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        let mut ready = false;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic: t, .. })) = ev {
                        if t == availability.hash() { ready = true; }
                    }
                }
                _ = tick.tick() => {
                    if !ready {
                        continue;
                    }
                    seq += 1;
                    match gossip {
                        Gossip::Quiet => {}
                        Gossip::Garbage => {
                            let junk = format!("not cbor {}", rand::random::<u64>()).into_bytes();
                            let _ = swarm.behaviour_mut().gossipsub.publish(availability.clone(), junk);
                        }
                        Gossip::ForgedSeals => {
                            let body = GossipMessage::Status(NodeStatus {
                                role: PeerRole::Node,
                                gateway_capable: true,
                                timestamp_ms: seq,
                                releases: Vec::new(),
                                desired: None,
                            })
                            .encode();
                            let sealed = seal_gossip(&seal_key, &protocols, Topic::Status, seq, body.clone());
                            let mut impostor = SealedGossip::decode(&sealed).unwrap();
                            impostor.author = victim;
                            let _ = swarm.behaviour_mut().gossipsub.publish(status.clone(), impostor.encode());
                            // Sealed for another locality's status topic,
                            // replayed here.
                            let replayed = seal_gossip(&seal_key, &elsewhere, Topic::Status, seq, body);
                            let _ = swarm.behaviour_mut().gossipsub.publish(status.clone(), replayed);
                        }
                    }
                }
            }
        }
    });
    (id, control, handle)
}

/// An attacker (see [`attacker`]) that `s` reports connected.
async fn connected_attacker(
    s: &TestNode,
) -> (PeerId, libp2p_stream::Control, tokio::task::JoinHandle<()>) {
    let (id, control, task) = attacker(s.addr.clone(), Gossip::Quiet);
    eventually(
        &format!("attacker {id} connected"),
        Duration::from_secs(20),
        async || {
            let peers = s.client.connected_peers().await.unwrap();
            peers
                .contains(&id)
                .then_some(())
                .ok_or("not among the peers")
        },
    )
    .await;
    (id, control, task)
}

/// Opens a chunk-protocol stream to `s`.
async fn open_chunk_stream(control: &mut libp2p_stream::Control, s: &TestNode) -> libp2p::Stream {
    let chunks = Protocols::new("lab").unwrap().chunks;
    tokio::time::timeout(
        Duration::from_secs(20),
        control.open_stream(s.client.local_peer_id(), chunks),
    )
    .await
    .expect("open timed out")
    .expect("open failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stream_frames_get_the_sender_banned_and_the_node_keeps_serving() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(2 << 20, 7, 256 << 10);
    let d = tmp.path().join("seed");
    let s = start(&d, config(&d, "lab", &[])).await;
    seed(&s, &data, digest, &map).await;

    // Four attackers, four kinds of garbage.
    use edgeswarm_protocol::wire::{encode_frame, ChunkResponse, ChunkStatus, StreamMessage};
    let wrong_direction = encode_frame(&StreamMessage::ChunkResponse(ChunkResponse {
        request_id: 1,
        status: ChunkStatus::NotHave,
    }));
    let cases: [&[u8]; 4] = [
        &[0xff, 0xff, 0xff, 0xff, 3],  // oversize header length
        &[0, 0, 0, 5, 99, 1, 2, 3, 4], // not CBOR
        &[0, 0, 0, 3, 0x83, 1, 2],     // truncated CBOR array
        &wrong_direction,              // a response sent by a requester
    ];
    for (n, junk) in cases.iter().enumerate() {
        let (id, mut control, task) = connected_attacker(&s).await;
        let mut stream = open_chunk_stream(&mut control, &s).await;
        stream.write_all(junk).await.unwrap();
        stream.flush().await.unwrap();
        eventually(
            &format!("attacker {n} banned"),
            Duration::from_secs(10),
            async || {
                let bans = s.client.stats().bans;
                (bans as usize > n).then_some(()).ok_or(bans)
            },
        )
        .await;
        eventually(
            &format!("banned attacker {n} disconnected"),
            Duration::from_secs(10),
            async || {
                let peers = s.client.connected_peers().await.unwrap();
                (!peers.contains(&id))
                    .then_some(())
                    .ok_or("still connected")
            },
        )
        .await;
        task.abort();
    }
    assert!(s.client.stats().protocol_violations >= 4);

    // The node survived and still serves honest peers.
    let d = tmp.path().join("honest");
    let honest = start(&d, config(&d, "lab", std::slice::from_ref(&s.addr))).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        honest.client.fetch_blob(digest, None),
    )
    .await
    .expect("honest fetch timed out")
    .unwrap();
    assert!(holds(&honest.store, &digest, &data));
    honest.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_gossip_is_rejected_and_lowers_the_sender_score() {
    invalid_gossip_is_rejected_and_lowers_the_sender_score_with(Gossip::Garbage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_whose_seal_does_not_verify_is_rejected_and_lowers_the_sender_score() {
    invalid_gossip_is_rejected_and_lowers_the_sender_score_with(Gossip::ForgedSeals).await;
}

async fn invalid_gossip_is_rejected_and_lowers_the_sender_score_with(gossip: Gossip) {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("a");
    let a = start(&d, config(&d, "lab", &[])).await;
    let d = tmp.path().join("b");
    let b = start(&d, config(&d, "lab", std::slice::from_ref(&a.addr))).await;
    let mut inbox = a.client.subscribe_gossip();
    let (bad_id, _control, task) = attacker(a.addr.clone(), gossip);

    eventually(
        "garbage gossip rejected (twice)",
        Duration::from_secs(20),
        async || {
            let rejected = a.client.stats().gossip_rejected;
            (rejected >= 2).then_some(()).ok_or(rejected)
        },
    )
    .await;
    eventually(
        "sender score dropped below zero",
        Duration::from_secs(20),
        async || {
            let score = a.client.gossip_score(bad_id).await.unwrap();
            match score {
                Some(s) if s < 0.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // Positive control: valid messages from an honest peer still arrive.
    use edgeswarm_protocol::wire::{GossipMessage, NodeStatus, PeerRole};
    let valid = GossipMessage::Status(NodeStatus {
        role: PeerRole::Node,
        gateway_capable: false,
        timestamp_ms: 1,
        releases: Vec::new(),
        desired: None,
    })
    .encode();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let _ = b.client.publish(Topic::Status, valid.clone()).await;
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), inbox.recv()).await
            {
                if m.message.topic() == Topic::Status && m.message.encode() == valid {
                    return m;
                }
            }
        }
    })
    .await
    .expect("valid gossip never arrived");
    assert_eq!(got.source, Some(b.client.local_peer_id()));
    // Our own publish path refuses garbage, and messages on the wrong topic,
    // with a typed error.
    assert!(b
        .client
        .publish(Topic::Status, b"junk".to_vec())
        .await
        .is_err());
    assert!(b
        .client
        .publish(Topic::Releases, valid.clone())
        .await
        .is_err());
    task.abort();
    a.stop().await;
    b.stop().await;
}

/// Reads frames from `stream` until a `ChunkResponse` arrives.
async fn next_chunk_response(
    stream: &mut libp2p::Stream,
) -> edgeswarm_protocol::wire::ChunkResponse {
    use edgeswarm_protocol::wire::{FrameDecoder, StreamMessage};
    use futures::AsyncReadExt as _;
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while let Some(frame) = decoder.next_frame().unwrap() {
            if let StreamMessage::ChunkResponse(r) = frame.message {
                return r;
            }
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream closed before a chunk response");
        decoder.push(&buf[..n]);
    }
}

/// Opens `count` chunk streams to `s`; on the `i`th, binds `blob` and
/// requests its chunk `i` (request id `i`). `gap` apart, so that each
/// request reaches the server before the next.
async fn request_chunks_each_on_a_stream(
    control: &mut libp2p_stream::Control,
    s: &TestNode,
    blob: edgeswarm_protocol::Digest,
    count: u32,
    gap: Duration,
) -> Vec<libp2p::Stream> {
    use edgeswarm_protocol::wire::{encode_frame, ChunkRequest, Hello, StreamMessage};
    let mut streams = Vec::new();
    for i in 0..count {
        let mut stream = open_chunk_stream(control, s).await;
        let mut bytes = encode_frame(&StreamMessage::Hello(Hello {
            protocol_version: edgeswarm_protocol::wire::STREAM_VERSION,
            blobs: vec![blob],
        }));
        bytes.extend(encode_frame(&StreamMessage::ChunkRequest(ChunkRequest {
            request_id: u64::from(i),
            blob,
            index: i,
        })));
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(gap).await;
        streams.push(stream);
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_its_slots_and_queue_full_answers_busy_at_once() {
    use edgeswarm_protocol::wire::ChunkStatus;
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(2 << 20, 9, 256 << 10);
    let d = tmp.path().join("seed");
    let mut c = config(&d, "lab", &[]);
    // One slot, 64 KiB/s: a 256 KiB chunk holds the slot for about 4 s.
    c.upload_slots = 1;
    c.upload_queue = 4;
    c.max_upload_rate = Some(64 << 10);
    c.seed_sparing = None;
    let s = start(&d, c).await;
    seed(&s, &data, digest, &map).await;
    let (_, mut control, task) = connected_attacker(&s).await;

    // Six requests on six streams: one is served, four wait for the slot,
    // the sixth finds slot and queue full.
    let mut streams =
        request_chunks_each_on_a_stream(&mut control, &s, digest, 6, Duration::from_millis(200))
            .await;
    let busy = tokio::time::timeout(Duration::from_secs(2), next_chunk_response(&mut streams[5]))
        .await
        .expect("the sixth request was queued instead of refused");
    assert_eq!(busy.request_id, 5);
    assert_eq!(busy.status, ChunkStatus::Busy);
    // The first is served, not refused.
    let served = tokio::time::timeout(
        Duration::from_secs(20),
        next_chunk_response(&mut streams[0]),
    )
    .await
    .expect("the first request was never answered");
    assert_eq!(served.request_id, 0);
    assert!(
        matches!(served.status, ChunkStatus::Ok { .. }),
        "{:?}",
        served.status
    );
    drop(streams);
    task.abort();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_seeding_origin_queues_requests_for_its_chunks_instead_of_answering_busy() {
    use edgeswarm_protocol::wire::ChunkStatus;
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(2 << 20, 9, 256 << 10);
    let d = tmp.path().join("seed");
    let mut c = config(&d, "lab", &[]);
    // One slot and no queue for other requests; a 256 KiB chunk holds the
    // slot for about 1 s. The seed spares (super-seeds) its blob.
    c.upload_slots = 1;
    c.upload_queue = 0;
    c.max_upload_rate = Some(256 << 10);
    c.seed_sparing = Some(Duration::from_secs(60));
    let s = start(&d, c).await;
    seed(&s, &data, digest, &map).await;
    let (_, mut control, task) = connected_attacker(&s).await;

    // Five requests for five chunks on five streams while the slot is
    // held: the origin's only copies, so three wait rather than bounce;
    // the fifth finds the origin's queue full.
    let mut streams =
        request_chunks_each_on_a_stream(&mut control, &s, digest, 5, Duration::from_millis(100))
            .await;
    let busy = tokio::time::timeout(Duration::from_secs(2), next_chunk_response(&mut streams[4]))
        .await
        .expect("the fifth request was queued past the origin's queue");
    assert_eq!(busy.request_id, 4);
    assert_eq!(busy.status, ChunkStatus::Busy);
    for (i, stream) in streams.iter_mut().take(4).enumerate() {
        let answer = tokio::time::timeout(Duration::from_secs(20), next_chunk_response(stream))
            .await
            .expect("a request was never answered");
        assert_eq!(answer.request_id, i as u64);
        assert!(
            matches!(answer.status, ChunkStatus::Ok { .. }),
            "request {i}: {:?}",
            answer.status
        );
    }
    drop(streams);
    task.abort();
    s.stop().await;
}

/// Reads `ChunkResponse`s from one stream, keeping the decoder (and so
/// payloads and frames already received) across calls.
#[derive(Default)]
struct Responses(edgeswarm_protocol::wire::FrameDecoder);

impl Responses {
    async fn next(
        &mut self,
        stream: &mut libp2p::Stream,
    ) -> edgeswarm_protocol::wire::ChunkResponse {
        use edgeswarm_protocol::wire::StreamMessage;
        use futures::AsyncReadExt as _;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            while let Some(frame) = self.0.next_frame().unwrap() {
                if let StreamMessage::ChunkResponse(r) = frame.message {
                    return r;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream closed before a chunk response");
            self.0.push(&buf[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_queued_requests_are_skipped_and_the_stream_goes_on() {
    use edgeswarm_protocol::wire::{
        encode_frame, Cancel, ChunkRequest, ChunkStatus, Hello, StreamMessage,
    };
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest, map) = blob(6 << 20, 11, 1 << 20);
    let d = tmp.path().join("seed");
    let mut c = config(&d, "lab", &[]);
    // 1 MiB of burst, then 512 KiB/s: chunk 0 leaves at once, chunk 1
    // about 2 s later, so requests 2 and 3 are still queued when their
    // Cancel arrives.
    c.max_upload_rate = Some(512 << 10);
    c.seed_sparing = None;
    let s = start(&d, c).await;
    seed(&s, &data, digest, &map).await;
    let (_, mut control, task) = connected_attacker(&s).await;
    let mut stream = open_chunk_stream(&mut control, &s).await;
    let mut responses = Responses::default();
    let mut bytes = encode_frame(&StreamMessage::Hello(Hello {
        protocol_version: edgeswarm_protocol::wire::STREAM_VERSION,
        blobs: vec![digest],
    }));
    for id in 0..4u64 {
        bytes.extend(encode_frame(&StreamMessage::ChunkRequest(ChunkRequest {
            request_id: id,
            blob: digest,
            index: id as u32,
        })));
    }
    for id in [2u64, 3] {
        bytes.extend(encode_frame(&StreamMessage::Cancel(Cancel {
            request_id: id,
        })));
    }
    stream.write_all(&bytes).await.unwrap();
    stream.flush().await.unwrap();

    for id in [0u64, 1] {
        let r = tokio::time::timeout(Duration::from_secs(20), responses.next(&mut stream))
            .await
            .expect("an uncancelled request was never answered");
        assert_eq!(r.request_id, id);
        assert!(matches!(r.status, ChunkStatus::Ok { .. }), "{:?}", r.status);
    }
    // Requests 2 and 3 were cancelled while queued: no answer comes, and
    // the next request on the same stream is answered first.
    let more = encode_frame(&StreamMessage::ChunkRequest(ChunkRequest {
        request_id: 4,
        blob: digest,
        index: 4,
    }));
    stream.write_all(&more).await.unwrap();
    stream.flush().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), responses.next(&mut stream))
        .await
        .expect("the request after the cancelled ones was never answered");
    assert_eq!(r.request_id, 4, "a cancelled request was answered");
    assert!(matches!(r.status, ChunkStatus::Ok { .. }), "{:?}", r.status);
    drop(stream);
    task.abort();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_an_answer_under_way_and_the_stream_goes_on() {
    use edgeswarm_protocol::wire::{
        encode_frame, Cancel, ChunkRequest, ChunkStatus, FrameDecoder, Hello, StreamMessage,
        HELLO_VERSION,
    };
    use futures::AsyncReadExt as _;
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let chunk = 1usize << 20;
    let (data, digest, map) = blob(2 * chunk + (64 << 10), 12, chunk as u32);
    let d = tmp.path().join("seed");
    let mut c = config(&d, "lab", &[]);
    // 64 KiB of burst, then 128 KiB/s: chunk 0 takes about 8 s whole.
    c.max_upload_rate = Some(128 << 10);
    c.seed_sparing = None;
    let s = start(&d, c).await;
    seed(&s, &data, digest, &map).await;
    let (_, mut control, task) = connected_attacker(&s).await;
    let mut stream = open_chunk_stream(&mut control, &s).await;
    let mut bytes = encode_frame(&StreamMessage::Hello(Hello {
        protocol_version: HELLO_VERSION,
        blobs: vec![digest],
    }));
    bytes.extend(encode_frame(&StreamMessage::ChunkRequest(ChunkRequest {
        request_id: 0,
        blob: digest,
        index: 0,
    })));
    stream.write_all(&bytes).await.unwrap();
    stream.flush().await.unwrap();

    // Once the answer is under way, cancel it.
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut received = 0usize;
    while received < 32 << 10 {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the answer never began")
            .unwrap();
        assert!(n > 0, "stream closed before the answer");
        decoder.push(&buf[..n]);
        received += n;
    }
    let cancel_at = std::time::Instant::now();
    let received_at_cancel = received;
    let cancel = encode_frame(&StreamMessage::Cancel(Cancel { request_id: 0 }));
    stream.write_all(&cancel).await.unwrap();
    stream.flush().await.unwrap();
    let answer = loop {
        if let Some(frame) = decoder.next_frame().unwrap() {
            if let StreamMessage::ChunkResponse(r) = frame.message {
                break (r, frame.relay_aborted, frame.payload.len());
            }
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the cancelled answer neither ended nor aborted")
            .unwrap();
        assert!(n > 0, "stream closed before the answer ended");
        decoder.push(&buf[..n]);
        received += n;
    };
    let (response, aborted, payload) = answer;
    assert_eq!(response.request_id, 0);
    assert_eq!(
        response.status,
        ChunkStatus::Relay { len: chunk as u64 },
        "a held chunk goes in pieces to a requester that reads them"
    );
    assert!(
        aborted,
        "the answer ran to its end ({payload} bytes) after the Cancel"
    );
    // Stopped at the next paced piece: far less than the chunk crossed.
    assert!(
        received < chunk / 2,
        "{received} bytes arrived ({received_at_cancel} before the Cancel)"
    );
    assert!(
        cancel_at.elapsed() < Duration::from_secs(4),
        "the abort took {:?}",
        cancel_at.elapsed()
    );
    assert!(s.client.metrics().cancelled_requests.get() >= 1);

    // The stream goes on: the next request is answered whole and right.
    let more = encode_frame(&StreamMessage::ChunkRequest(ChunkRequest {
        request_id: 1,
        blob: digest,
        index: 2,
    }));
    stream.write_all(&more).await.unwrap();
    stream.flush().await.unwrap();
    let next = loop {
        if let Some(frame) = decoder.next_frame().unwrap() {
            if let StreamMessage::ChunkResponse(r) = &frame.message {
                break (r.clone(), frame);
            }
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the request after the cancelled one was never answered")
            .unwrap();
        assert!(n > 0, "stream closed before the next answer");
        decoder.push(&buf[..n]);
    };
    let (response, frame) = next;
    assert_eq!(response.request_id, 1);
    assert!(!frame.relay_aborted);
    assert_eq!(frame.payload, data[2 * chunk..]);
    drop(stream);
    task.abort();
    s.stop().await;
}
