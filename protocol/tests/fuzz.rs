//! Stable equivalents of the cargo-fuzz targets (`protocol/fuzz`, which
//! needs nightly): every target's check (`fuzz_checks`) driven by proptest
//! with arbitrary bytes, and with valid encodings that were cut, spliced
//! or had bytes flipped, which reach deeper into the decoders than random
//! bytes do.

mod fuzz_checks;

use edgeswarm_protocol::release::{Platform, Release, Removal, SignedRelease, SignedRemoval};
use edgeswarm_protocol::signing::PublisherKey;
use edgeswarm_protocol::wire::{
    encode_frame, Availability, AvailabilityBatch, AvailabilityEntry, Cancel, ChunkRequest,
    ChunkResponse, ChunkStatus, GossipMessage, Have, Hello, SealedGossip, StreamMessage,
    STREAM_VERSION,
};
use edgeswarm_protocol::{ChunkMap, ChunkSize, Digest};
use proptest::prelude::*;

/// Arbitrary bytes, mostly short.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..600)
}

/// `valid` with a few bytes flipped, then cut to `cut` bytes (modulo its
/// length + 2, so sometimes not cut at all).
fn mutate(mut valid: Vec<u8>, flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let n = valid.len();
    if n > 0 {
        for (pos, xor) in flips {
            valid[pos % n] ^= xor;
        }
    }
    valid.truncate(cut % (n + 2));
    valid
}

fn flips() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3)
}

fn key(seed: u8) -> PublisherKey {
    PublisherKey::from_secret_bytes([seed; 32])
}

/// A few valid gossip messages of every signed kind and the reports.
fn valid_gossip(n: u32) -> Vec<u8> {
    let d = Digest::of(&n.to_be_bytes());
    let msg = match n % 4 {
        0 => GossipMessage::Release(SignedRelease::sign(
            Release {
                image: format!("r:5000/app:{n}"),
                manifest: d,
                platform: Platform::new("linux", "arm64"),
                created: n as u64,
                locality: "L".into(),
                selector: vec![("role".into(), "cam".into())],
                seq: 0,
            },
            &key(n as u8),
        )),
        1 => GossipMessage::Removal(SignedRemoval::sign(
            Removal {
                image: format!("r:5000/app:{n}"),
                locality: "L".into(),
                created: n as u64,
                seq: 0,
            },
            &key(n as u8),
        )),
        2 => GossipMessage::Availability(AvailabilityBatch {
            entries: vec![
                AvailabilityEntry {
                    blob: d,
                    availability: Availability::Complete,
                },
                AvailabilityEntry {
                    blob: d,
                    availability: Availability::Have(vec![n, 3]),
                },
            ],
        }),
        _ => GossipMessage::Status(edgeswarm_protocol::wire::NodeStatus {
            role: edgeswarm_protocol::wire::PeerRole::Node,
            gateway_capable: n.is_multiple_of(2),
            timestamp_ms: n as u64,
            releases: vec![],
            desired: None,
        }),
    };
    msg.encode()
}

/// A valid chunk stream: `n` frames, some with payloads.
fn valid_stream(n: u32) -> Vec<u8> {
    let blob = Digest::of(b"blob");
    let mut out = Vec::new();
    for i in 0..n {
        let msg = match i % 5 {
            0 => StreamMessage::Hello(Hello {
                protocol_version: STREAM_VERSION,
                blobs: vec![blob],
            }),
            1 => StreamMessage::ChunkRequest(ChunkRequest {
                request_id: i as u64,
                blob,
                index: i,
            }),
            2 => StreamMessage::ChunkResponse(ChunkResponse {
                request_id: i as u64,
                status: ChunkStatus::Ok { len: 7 + i as u64 },
            }),
            3 => StreamMessage::Have(Have {
                blob,
                indices: vec![i, 1000],
            }),
            _ => StreamMessage::Cancel(Cancel {
                request_id: i as u64,
            }),
        };
        out.extend(encode_frame(&msg));
        out.extend((0..msg.payload_len()).map(|j| j as u8));
    }
    out
}

fn valid_chunk_map(len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
    ChunkMap::from_bytes(&data, ChunkSize::MIN).encode()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunk_map_target(data in bytes(), len in 0usize..200_000, f in flips(), cut in any::<usize>()) {
        fuzz_checks::chunk_map(&data);
        fuzz_checks::chunk_map(&mutate(valid_chunk_map(len), &f, cut));
    }

    #[test]
    fn stream_message_target(data in bytes(), n in 1u32..6, f in flips(), cut in any::<usize>()) {
        fuzz_checks::stream_message(&data);
        let stream = valid_stream(n);
        fuzz_checks::stream_message(&mutate(stream[4..].to_vec(), &f, cut));
    }

    /// The node's frame reader against the incremental decoder, on
    /// garbage and on damaged valid streams cut into random pieces.
    #[test]
    fn frame_reader_target(
        data in bytes(),
        step in 1u8..=255,
        n in 0u32..12,
        f in flips(),
        cut in any::<usize>(),
    ) {
        fuzz_checks::frame_reader(&data);
        let mut input = vec![step];
        input.extend(mutate(valid_stream(n), &f, cut));
        fuzz_checks::frame_reader(&input);
    }

    #[test]
    fn gossip_message_target(data in bytes(), n in any::<u32>(), f in flips(), cut in any::<usize>()) {
        fuzz_checks::gossip_message(&data);
        fuzz_checks::gossip_message(&valid_gossip(n));
        fuzz_checks::gossip_message(&mutate(valid_gossip(n), &f, cut));
    }

    #[test]
    fn sealed_gossip_target(data in bytes(), n in any::<u32>(), f in flips(), cut in any::<usize>()) {
        fuzz_checks::sealed_gossip(&data);
        let sealed = SealedGossip::seal(&key(9), "edgeswarm/lab/status", u64::from(n), valid_gossip(n)).encode();
        fuzz_checks::sealed_gossip(&sealed);
        fuzz_checks::sealed_gossip(&mutate(sealed, &f, cut));
    }

    #[test]
    fn signed_messages_target(data in bytes(), n in any::<u32>(), f in flips(), cut in any::<usize>()) {
        fuzz_checks::signed_messages(&data);
        // The signed body of a gossip message starts after [1, kind, ...
        let gossip = valid_gossip(n - n % 4 + (n % 2));
        fuzz_checks::signed_messages(&gossip[3..]);
        fuzz_checks::signed_messages(&mutate(gossip[3..].to_vec(), &f, cut));
    }

    #[test]
    fn text_parsers_target(data in bytes(), text in "\\PC{0,120}") {
        fuzz_checks::text_parsers(&data);
        fuzz_checks::text_parsers(text.as_bytes());
        let key = key(data.first().copied().unwrap_or(1));
        fuzz_checks::text_parsers(key.to_file_contents().as_bytes());
        fuzz_checks::text_parsers(key.public().to_file_contents().as_bytes());
        fuzz_checks::text_parsers(b"linux/arm/v7");
        fuzz_checks::text_parsers(b"plant-7");
    }
}

/// The input proptest found (CI, 2026-12-01): a flipped byte turns a
/// chunk answer's `Ok` status into `Relay`, whose chunk follows in
/// length-prefixed pieces. The decoder read pieces; the test's model of
/// the node read a bare payload, and the two disagreed on the frames.
#[test]
fn frame_reader_agrees_on_a_relay_answer_made_by_a_flipped_status() {
    let mut input = vec![1u8];
    input.extend(mutate(
        valid_stream(11),
        &[(3763650614518254642, 5)],
        273969186114425566,
    ));
    fuzz_checks::frame_reader(&input);
}
