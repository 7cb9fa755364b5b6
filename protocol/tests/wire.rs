//! Wire format tests: golden bytes, property round-trips, and decoders fed
//! arbitrary or mutated bytes (typed errors, never panics).

use edgeswarm_protocol::encoding::DecodeError;
use edgeswarm_protocol::release::{Platform, Release, Removal, SignedRelease, SignedRemoval};
use edgeswarm_protocol::signing::{PublisherKey, Signable};
use edgeswarm_protocol::wire::*;
use edgeswarm_protocol::{Bitfield, ChunkSize, Digest};
use proptest::prelude::*;

fn key() -> PublisherKey {
    PublisherKey::from_secret_bytes([7u8; 32])
}

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn sample_release() -> Release {
    Release {
        image: "registry.local:5000/app:1.0".into(),
        manifest: d("manifest"),
        platform: Platform::parse("linux/arm/v7").unwrap(),
        created: 1_700_000_000,
        locality: "plant-a".into(),
        selector: vec![("role".into(), "camera".into())],
        seq: 0,
    }
}

fn sample_update() -> ChunkDigestUpdate {
    ChunkDigestUpdate {
        release_id: Some(d("release")),
        blob: d("blob"),
        blob_size: 3 * 65536 + 1,
        chunk_size: ChunkSize::MIN,
        first_index: 1,
        digests: vec![d("c1"), d("c2")],
        final_blob_digest_checked: false,
    }
}

fn sample_resolution() -> ReleaseResolution {
    ReleaseResolution {
        release_id: d("release"),
        manifest: BlobDescriptor {
            digest: d("manifest"),
            size: 100,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        },
        config: BlobDescriptor {
            digest: d("config"),
            size: 200,
            media_type: "application/vnd.oci.image.config.v1+json".into(),
        },
        layers: vec![BlobDescriptor {
            digest: d("layer"),
            size: 300,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }],
        // Pinned, not the default: the golden bytes must not move with it.
        chunk_size: ChunkSize::new(1 << 20).unwrap(),
    }
}

fn sample_removal() -> Removal {
    Removal {
        image: "registry.local:5000/app:1.0".into(),
        locality: "plant-a".into(),
        created: 1_700_000_000,
        seq: 0,
    }
}

fn sample_stream_messages() -> Vec<StreamMessage> {
    let mut bits = Bitfield::new(10);
    bits.set(0);
    bits.set(9);
    vec![
        StreamMessage::Hello(Hello {
            protocol_version: STREAM_VERSION,
            blobs: vec![d("blob")],
        }),
        StreamMessage::Bitfield(BitfieldMsg {
            blob: d("blob"),
            bitfield: bits,
        }),
        StreamMessage::Have(Have {
            blob: d("blob"),
            indices: vec![300, 7],
        }),
        StreamMessage::ChunkRequest(ChunkRequest {
            request_id: 1,
            blob: d("blob"),
            index: 2,
        }),
        StreamMessage::ChunkResponse(ChunkResponse {
            request_id: 1,
            status: ChunkStatus::Ok { len: 65536 },
        }),
        StreamMessage::ChunkResponse(ChunkResponse {
            request_id: 2,
            status: ChunkStatus::NotHave,
        }),
        StreamMessage::ChunkResponse(ChunkResponse {
            request_id: 3,
            status: ChunkStatus::Busy,
        }),
        StreamMessage::ChunkResponse(ChunkResponse {
            request_id: 4,
            status: ChunkStatus::Error {
                message: "disk".into(),
            },
        }),
        StreamMessage::ChunkResponse(ChunkResponse {
            request_id: 6,
            status: ChunkStatus::TryElsewhere,
        }),
        StreamMessage::ChunkMapRequest(ChunkMapRequest {
            request_id: 5,
            blob: d("blob"),
        }),
        StreamMessage::ChunkMapResponse(ChunkMapResponse {
            request_id: 5,
            blob: d("blob"),
            status: ChunkStatus::Ok { len: 42 },
        }),
        StreamMessage::Cancel(Cancel { request_id: 9 }),
        StreamMessage::Relaying(Relaying {
            blob: d("blob"),
            indices: vec![4, 300],
        }),
        StreamMessage::ChunkResponse(ChunkResponse {
            request_id: 10,
            status: ChunkStatus::Relay { len: 524288 },
        }),
    ]
}

fn sample_gossip_messages() -> Vec<GossipMessage> {
    let mut bits = Bitfield::new(3);
    bits.set(1);
    vec![
        GossipMessage::Release(SignedRelease::sign(sample_release(), &key())),
        GossipMessage::Availability(AvailabilityBatch {
            entries: vec![
                AvailabilityEntry {
                    blob: d("a"),
                    availability: Availability::Complete,
                },
                AvailabilityEntry {
                    blob: d("b"),
                    availability: Availability::Bitfield(bits),
                },
                AvailabilityEntry {
                    blob: d("c"),
                    availability: Availability::Have(vec![0, 7, 1000]),
                },
            ],
        }),
        GossipMessage::Status(NodeStatus {
            role: PeerRole::Gateway,
            gateway_capable: true,
            timestamp_ms: 1_700_000_000_123,
            releases: vec![ReleaseProgress {
                release_id: d("release"),
                state: ReleaseState::Fetching,
                bytes_total: 1000,
                bytes_done: 500,
                bytes_from_cloud: 100,
                bytes_from_peers: 400,
                error: None,
                waiting: None,
            }],
            desired: None,
        }),
        GossipMessage::ChunkDigests(SignedChunkDigestUpdate::sign(sample_update(), &key())),
        GossipMessage::Resolution(SignedReleaseResolution::sign(sample_resolution(), &key())),
        GossipMessage::Removal(SignedRemoval::sign(sample_removal(), &key())),
        // Sequenced (version 2) releases and removals, and a status with
        // its desired-state digest; the unsequenced ones above still decode.
        GossipMessage::Release(SignedRelease::sign(
            Release {
                seq: 7,
                ..sample_release()
            },
            &key(),
        )),
        GossipMessage::Removal(SignedRemoval::sign(
            Removal {
                seq: 8,
                ..sample_removal()
            },
            &key(),
        )),
        GossipMessage::Status(NodeStatus {
            role: PeerRole::Node,
            gateway_capable: false,
            timestamp_ms: 1_700_000_000_123,
            releases: vec![],
            desired: Some(DesiredDigest {
                count: 2,
                hash: d("desired"),
            }),
        }),
        // A progress with its waiting reason (an eighth element).
        GossipMessage::Status(NodeStatus {
            role: PeerRole::Gateway,
            gateway_capable: true,
            timestamp_ms: 1_700_000_000_123,
            releases: vec![ReleaseProgress {
                release_id: d("release"),
                state: ReleaseState::Announced,
                bytes_total: 0,
                bytes_done: 0,
                bytes_from_cloud: 0,
                bytes_from_peers: 0,
                error: None,
                waiting: Some("retrying".into()),
            }],
            desired: None,
        }),
    ]
}

/// Pinned encodings, one per message kind and status. Changing any of
/// them breaks interoperability with deployed nodes: bump the version.
const STREAM_GOLDEN: &[&str] = &[
    "000000288301008201815820fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b8",
    "0000002b830101825820fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b8820a428040",
    "0000002b830102825820fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b88219012c07",
    "0000002883010383015820fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b802",
    "0000000c830104820182001a00010000",
    "0000000783010482028101",
    "0000000783010482038102",
    "0000000c83010482048203646469736b",
    "0000000783010482068104",
    "0000002783010582055820fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b8",
    "0000002b83010683055820fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b88200182a",
    "000000058301078109",
    "0000002b830108825820fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b8820419012c",
    "0000000c830104820a82051a00080000",
];

const GOSSIP_GOLDEN: &[&str] = &[
    "83010084018701781b72656769737472792e6c6f63616c3a353030302f6170703a312e30582005b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f83656c696e75786361726d6276371a6553f10067706c616e742d61818264726f6c656663616d6572615820ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c58408359c56b839a98e1b19e9ffe2987e52a09196f409e8718b01d0b91b1b9f29f75614c16e8751f3a10d0ae8f91927016c62ee1bd496a5dd3389df13476b54a1309",
    "8301018183825820ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb81008258203e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d8201820341408258202e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc682028300071903e8",
    "8301028401f51b0000018bcfe5687b81875820a4d451ec23463726f72c43d64c710968f6b602cd653b4de8adee1b556240a829021903e81901f41864190190f6",
    "8301038401875820a4d451ec23463726f72c43d64c710968f6b602cd653b4de8adee1b556240a8295820fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b81a000300011a00010000015840d0f631ca1ddba8db3bcfcb9e057cdc98d0379f1bee00e75a545147a27dadd9829c0abe51c6e6655d81de2d044d4fb194931f058c0426c67c7285d8f5657ed64af45820ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c584000ea2084df07da0642113611b2fcafb75b0a529766523a31552b4416a76372d332dbf8bc3f2792728a891249e807c3dfe76f2f7715ae85bbc820ecaeae269001",
    "8301048401855820a4d451ec23463726f72c43d64c710968f6b602cd653b4de8adee1b556240a82983582005b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f1864782a6170706c69636174696f6e2f766e642e6f63692e696d6167652e6d616e69666573742e76312b6a736f6e835820b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e34391018c878286170706c69636174696f6e2f766e642e6f63692e696d6167652e636f6e6669672e76312b6a736f6e81835820dac1d7cfa95021764849fd102524e141488c5e3a90f861dbb5a12d9ac8584f8519012c782b6170706c69636174696f6e2f766e642e6f63692e696d6167652e6c617965722e76312e7461722b677a69701a001000005820ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c58404d7a0db5fb77038fa623565ee338d5d7bc272468b559845aaf6deb840f71af4b32760ee3a57cc648445e9fd96d46fc00356d329d9544d88234a794df97bf5b0c",
    // Kind 5: [1, 5, [1, [1, image, locality, created], signer, signature]].
    "83010584018401781b72656769737472792e6c6f63616c3a353030302f6170703a312e3067706c616e742d611a6553f1005820ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c5840a885066f8a367b15526f0a8c295a5b16bd1abcc12cef9502cfe83f012155d145e62a31923539c50a977ddd1a61844f09d43f2ccf9231df3abfc40f22c175e104",
    // Kind 0, sequenced: the release is [2, ..., seq 7].
    "83010084018802781b72656769737472792e6c6f63616c3a353030302f6170703a312e30582005b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f83656c696e75786361726d6276371a6553f10067706c616e742d61818264726f6c656663616d657261075820ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c58403a85012617a93582d7580b0f6a981a43c7eb8bf53b905d91d0a7f609f0f3c690f719056c49ce21530989f3ff7ea0b8d88a4ec1d78345b966cc2bf7fa77026702",
    // Kind 5, sequenced: [2, image, locality, created, seq 8].
    "83010584018502781b72656769737472792e6c6f63616c3a353030302f6170703a312e3067706c616e742d611a6553f100085820ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c58402e9d235de4cfb281001b7146510ac7331792b9a55ecdc095b961830d651619f6806e12c6e018a29ab02b1baadba7382fdc74d11a431dced18a0a22879ed76d00",
    // Kind 2 with a desired digest: [..., [], [2, hash]].
    "8301028500f41b0000018bcfe5687b8082025820b60b935389f7cf68e7877a80a4ded0dfc93e248b8807932536e1de0f771d259b",
    // Kind 2 with a progress that waits: [..., error null, "retrying"].
    "8301028401f51b0000018bcfe5687b81885820a4d451ec23463726f72c43d64c710968f6b602cd653b4de8adee1b556240a8290000000000f6687265747279696e67",
];

#[test]
fn a_progress_without_waiting_is_seven_elements_and_a_null_eighth_is_refused() {
    // The status of GOSSIP_GOLDEN[2]: its progress has seven elements.
    let seven = GOSSIP_GOLDEN[2];
    assert!(seven.contains("8187"), "{seven}");
    assert!(GossipMessage::decode(&hex::decode(seven).unwrap()).is_ok());
    // The same progress with a null eighth element: not canonical (it
    // would re-encode to seven), so refused.
    let null_eighth = format!("{}f6", seven.replace("8187", "8188"));
    assert!(GossipMessage::decode(&hex::decode(null_eighth).unwrap()).is_err());
}

#[test]
fn stream_messages_match_golden_bytes() {
    let msgs = sample_stream_messages();
    assert_eq!(msgs.len(), STREAM_GOLDEN.len());
    for (m, golden) in msgs.iter().zip(STREAM_GOLDEN) {
        assert_eq!(hex::encode(encode_frame(m)), *golden, "{m:?}");
        let bytes = hex::decode(golden).unwrap();
        let len = decode_frame_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(&StreamMessage::decode(&bytes[4..]).unwrap(), m);
    }
    // Every kind is covered.
    let kinds: std::collections::BTreeSet<u64> = msgs.iter().map(StreamMessage::kind).collect();
    assert_eq!(kinds, (0..9).collect());
}

#[test]
fn gossip_messages_match_golden_bytes() {
    let msgs = sample_gossip_messages();
    if std::env::var_os("PRINT_GOLDEN").is_some() {
        for m in &msgs {
            println!("GOLDEN {}", hex::encode(m.encode()));
        }
    }
    assert_eq!(msgs.len(), GOSSIP_GOLDEN.len());
    for (m, golden) in msgs.iter().zip(GOSSIP_GOLDEN) {
        assert_eq!(hex::encode(m.encode()), *golden, "{m:?}");
        let decoded = GossipMessage::decode(&hex::decode(golden).unwrap()).unwrap();
        assert_eq!(&decoded, m);
    }
    // The signed goldens verify against the fixed key, so the signing
    // input (context + canonical CBOR) is pinned too.
    let public = key().public();
    match GossipMessage::decode(&hex::decode(GOSSIP_GOLDEN[0]).unwrap()).unwrap() {
        GossipMessage::Release(r) => {
            assert_eq!(r.verify_signer(&public).unwrap(), &sample_release())
        }
        other => panic!("{other:?}"),
    }
    match GossipMessage::decode(&hex::decode(GOSSIP_GOLDEN[3]).unwrap()).unwrap() {
        GossipMessage::ChunkDigests(u) => {
            assert_eq!(u.verify_signer(&public).unwrap(), &sample_update())
        }
        other => panic!("{other:?}"),
    }
    match GossipMessage::decode(&hex::decode(GOSSIP_GOLDEN[4]).unwrap()).unwrap() {
        GossipMessage::Resolution(r) => {
            assert_eq!(r.verify_signer(&public).unwrap(), &sample_resolution())
        }
        other => panic!("{other:?}"),
    }
    match GossipMessage::decode(&hex::decode(GOSSIP_GOLDEN[5]).unwrap()).unwrap() {
        GossipMessage::Removal(r) => {
            assert_eq!(r.verify_signer(&public).unwrap(), &sample_removal())
        }
        other => panic!("{other:?}"),
    }
    // Every kind is covered.
    let kinds: std::collections::BTreeSet<u64> = msgs.iter().map(GossipMessage::kind).collect();
    assert_eq!(kinds, (0..6).collect());
}

#[test]
fn unknown_versions_are_typed_errors() {
    // [2, 7, [9]]: a version-2 Cancel.
    assert_eq!(
        StreamMessage::decode(&[0x83, 0x02, 0x07, 0x81, 0x09]),
        Err(WireError::Decode(DecodeError::UnsupportedVersion {
            what: "stream message",
            found: 2,
            supported: 1
        }))
    );
    let mut gossip = hex::decode(GOSSIP_GOLDEN[2]).unwrap();
    gossip[1] = 0x05;
    assert!(matches!(
        GossipMessage::decode(&gossip),
        Err(WireError::Decode(DecodeError::UnsupportedVersion {
            found: 5,
            ..
        }))
    ));
}

#[test]
fn unknown_kinds_are_typed_errors() {
    assert_eq!(
        StreamMessage::decode(&[0x83, 0x01, 0x09, 0x81, 0x09]),
        Err(WireError::UnknownKind {
            what: "stream message",
            kind: 9
        })
    );
    assert_eq!(
        GossipMessage::decode(&[0x83, 0x01, 0x18, 0x20, 0x80]),
        Err(WireError::UnknownKind {
            what: "gossip message",
            kind: 32
        })
    );
}

#[test]
fn oversize_inputs_are_rejected_before_parsing() {
    let big = vec![0u8; MAX_HEADER_BYTES + 1];
    assert!(matches!(
        StreamMessage::decode(&big),
        Err(WireError::Decode(DecodeError::TooLarge { len, max, .. })) if len == MAX_HEADER_BYTES + 1 && max == MAX_HEADER_BYTES
    ));
    let big = vec![0u8; MAX_GOSSIP_BYTES + 1];
    assert!(matches!(
        GossipMessage::decode(&big),
        Err(WireError::Decode(DecodeError::TooLarge { .. }))
    ));
    let too_long = (MAX_HEADER_BYTES as u32 + 1).to_be_bytes();
    assert_eq!(
        decode_frame_len(too_long),
        Err(WireError::HeaderTooLarge {
            len: MAX_HEADER_BYTES as u64 + 1,
            max: MAX_HEADER_BYTES
        })
    );
    // The incremental decoder refuses on the prefix alone, without waiting
    // for (or buffering) the announced bytes.
    let mut dec = FrameDecoder::new();
    dec.push(&u32::MAX.to_be_bytes());
    assert!(matches!(
        dec.next_frame(),
        Err(WireError::HeaderTooLarge { .. })
    ));
}

#[test]
fn oversize_payloads_are_rejected() {
    let m = StreamMessage::ChunkResponse(ChunkResponse {
        request_id: 1,
        status: ChunkStatus::Ok {
            len: MAX_PAYLOAD_BYTES + 1,
        },
    });
    assert_eq!(
        try_encode_frame(&m),
        Err(WireError::PayloadTooLarge {
            len: MAX_PAYLOAD_BYTES + 1,
            max: MAX_PAYLOAD_BYTES
        })
    );
    assert!(matches!(
        StreamMessage::decode(&m.encode()),
        Err(WireError::PayloadTooLarge { .. })
    ));
    let hello = StreamMessage::Hello(Hello {
        protocol_version: 1,
        blobs: vec![d("x"); 2000],
    });
    assert!(matches!(
        try_encode_frame(&hello),
        Err(WireError::HeaderTooLarge { .. })
    ));
}

#[test]
fn non_canonical_and_truncated_inputs_are_rejected() {
    // Have with index 300 written as a 4-byte integer instead of 2 bytes.
    let good = StreamMessage::Have(Have {
        blob: d("blob"),
        indices: vec![300],
    })
    .encode();
    let n = good.len();
    assert_eq!(&good[n - 3..], &[0x19, 0x01, 0x2c]);
    let mut long = good[..n - 3].to_vec();
    long.extend_from_slice(&[0x1a, 0x00, 0x00, 0x01, 0x2c]);
    assert_eq!(
        StreamMessage::decode(&long),
        Err(WireError::Decode(DecodeError::NonCanonical {
            what: "stream message"
        }))
    );
    assert!(matches!(
        StreamMessage::decode(&good[..n - 1]),
        Err(WireError::Decode(DecodeError::Malformed { .. }))
    ));
    // Trailing garbage after a valid message.
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(StreamMessage::decode(&trailing).is_err());
}

#[test]
fn chunk_digest_updates_are_validated() {
    let mut u = sample_update();
    u.first_index = 3; // 4 chunks: indices 3 and 4 do not both exist
    let m = GossipMessage::ChunkDigests(SignedChunkDigestUpdate::sign(u.clone(), &key()));
    assert!(matches!(
        GossipMessage::decode(&m.encode()),
        Err(WireError::Decode(DecodeError::Invalid {
            what: "chunk digest update",
            ..
        }))
    ));
    u.first_index = 2;
    assert!(u.validate().is_ok());
    let many = ChunkDigestUpdate {
        blob_size: 1 << 30,
        first_index: 0,
        digests: vec![d("x"); MAX_DIGESTS_PER_UPDATE + 1],
        ..sample_update()
    };
    assert!(many.validate().is_err());
}

#[test]
fn tampered_gateway_messages_fail_verification() {
    let signed = SignedChunkDigestUpdate::sign(sample_update(), &key());
    let mut body = signed.body_unverified().clone();
    body.final_blob_digest_checked = true;
    let forged = SignedChunkDigestUpdate::from_parts(body, *signed.signer(), *signed.signature());
    assert!(forged.verify_embedded().is_err());
    assert!(signed.verify_embedded().is_ok());
    let other = PublisherKey::from_secret_bytes([8u8; 32]).public();
    assert!(signed.verify_signer(&other).is_err());
    // The signature covers the domain separation context: it does not
    // verify over the bare CBOR body, and each signed type has its own
    // context, so a signature cannot be replayed as another message type.
    let bare = edgeswarm_protocol::encoding::encode(&sample_update());
    assert!(!signed.signer().verify(&bare, signed.signature()));
    let contexts = [
        <ChunkDigestUpdate as Signable>::CONTEXT,
        <ReleaseResolution as Signable>::CONTEXT,
        <Release as Signable>::CONTEXT,
    ];
    for (i, a) in contexts.iter().enumerate() {
        for b in &contexts[i + 1..] {
            assert!(!a.starts_with(b) && !b.starts_with(a));
        }
    }
}

#[test]
fn frame_decoder_handles_any_split_and_pipelining() {
    let msgs = sample_stream_messages();
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.relayed_len().is_some() {
            continue;
        }
        stream.extend(encode_frame(m));
        let payload: Vec<u8> = (0..m.payload_len()).map(|j| (i as u64 + j) as u8).collect();
        stream.extend(&payload);
        expected.push(Frame {
            message: m.clone(),
            payload,
            relay_aborted: false,
        });
    }
    // A relayed chunk in two pieces, then one aborted after a piece.
    let relayed: Vec<u8> = (0..300u32).map(|j| j as u8).collect();
    for (id, aborted) in [(20u64, false), (21, true)] {
        let m = StreamMessage::ChunkResponse(ChunkResponse {
            request_id: id,
            status: ChunkStatus::Relay { len: 300 },
        });
        stream.extend(encode_frame(&m));
        stream.extend(100u32.to_be_bytes());
        stream.extend(&relayed[..100]);
        if aborted {
            stream.extend(RELAY_ABORT.to_be_bytes());
        } else {
            stream.extend(200u32.to_be_bytes());
            stream.extend(&relayed[100..]);
        }
        expected.push(Frame {
            message: m,
            payload: if aborted { vec![] } else { relayed.clone() },
            relay_aborted: aborted,
        });
    }
    for step in [1usize, 3, 7, 64, 1000, stream.len()] {
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(step) {
            dec.push(piece);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, expected, "step {step}");
        assert_eq!(dec.buffered(), 0);
    }
}

// ---------------------------------------------------------------------------
// Property tests.

fn arb_digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

fn arb_bitfield() -> impl Strategy<Value = Bitfield> {
    proptest::collection::vec(any::<bool>(), 0..300).prop_map(|bits| {
        let mut b = Bitfield::new(bits.len() as u32);
        for (i, set) in bits.into_iter().enumerate() {
            if set {
                b.set(i as u32);
            }
        }
        b
    })
}

fn arb_status() -> impl Strategy<Value = ChunkStatus> {
    prop_oneof![
        (0..=MAX_PAYLOAD_BYTES).prop_map(|len| ChunkStatus::Ok { len }),
        Just(ChunkStatus::NotHave),
        Just(ChunkStatus::Busy),
        Just(ChunkStatus::TryElsewhere),
        ".{0,40}".prop_map(|message| ChunkStatus::Error { message }),
    ]
}

fn arb_stream_message() -> impl Strategy<Value = StreamMessage> {
    prop_oneof![
        (any::<u64>(), proptest::collection::vec(arb_digest(), 0..20)).prop_map(
            |(protocol_version, blobs)| StreamMessage::Hello(Hello {
                protocol_version,
                blobs
            })
        ),
        (arb_digest(), arb_bitfield())
            .prop_map(|(blob, bitfield)| StreamMessage::Bitfield(BitfieldMsg { blob, bitfield })),
        (arb_digest(), proptest::collection::vec(any::<u32>(), 0..50))
            .prop_map(|(blob, indices)| StreamMessage::Have(Have { blob, indices })),
        (any::<u64>(), arb_digest(), any::<u32>()).prop_map(|(request_id, blob, index)| {
            StreamMessage::ChunkRequest(ChunkRequest {
                request_id,
                blob,
                index,
            })
        }),
        (any::<u64>(), arb_status()).prop_map(|(request_id, status)| {
            StreamMessage::ChunkResponse(ChunkResponse { request_id, status })
        }),
        (any::<u64>(), arb_digest()).prop_map(|(request_id, blob)| {
            StreamMessage::ChunkMapRequest(ChunkMapRequest { request_id, blob })
        }),
        (any::<u64>(), arb_digest(), arb_status()).prop_map(|(request_id, blob, status)| {
            StreamMessage::ChunkMapResponse(ChunkMapResponse {
                request_id,
                blob,
                status,
            })
        }),
        any::<u64>().prop_map(|request_id| StreamMessage::Cancel(Cancel { request_id })),
        (arb_digest(), proptest::collection::vec(any::<u32>(), 0..50))
            .prop_map(|(blob, indices)| StreamMessage::Relaying(Relaying { blob, indices })),
    ]
}

fn arb_key() -> impl Strategy<Value = PublisherKey> {
    any::<[u8; 32]>().prop_map(PublisherKey::from_secret_bytes)
}

fn arb_release() -> impl Strategy<Value = Release> {
    (
        ".{0,60}",
        arb_digest(),
        (
            "[a-z]{1,8}",
            "[a-z0-9]{1,8}",
            proptest::option::of("v[0-9]"),
        ),
        any::<u64>(),
        ".{0,20}",
        proptest::collection::vec((".{0,10}", ".{0,10}"), 0..4),
    )
        .prop_map(
            |(image, manifest, (os, architecture, variant), created, locality, selector)| Release {
                image,
                manifest,
                platform: Platform {
                    os,
                    architecture,
                    variant,
                },
                created,
                locality,
                selector,
                // Both encodings: unsequenced (version 1) and sequenced.
                seq: created % 3,
            },
        )
}

fn arb_descriptor() -> impl Strategy<Value = BlobDescriptor> {
    (arb_digest(), any::<u64>(), ".{0,50}").prop_map(|(digest, size, media_type)| BlobDescriptor {
        digest,
        size,
        media_type,
    })
}

fn arb_chunk_size() -> impl Strategy<Value = ChunkSize> {
    (16u32..=24).prop_map(|shift| ChunkSize::new(1 << shift).unwrap())
}

fn arb_update() -> impl Strategy<Value = ChunkDigestUpdate> {
    (
        proptest::option::of(arb_digest()),
        arb_digest(),
        arb_chunk_size(),
        1u64..5000,
        proptest::collection::vec(arb_digest(), 0..40),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(
            |(release_id, blob, chunk_size, chunks, digests, fin, start)| {
                let chunks = chunks.max(digests.len() as u64);
                let blob_size = chunks * chunk_size.get() as u64;
                let first_index = (start as u64 % (chunks - digests.len() as u64 + 1)) as u32;
                ChunkDigestUpdate {
                    release_id,
                    blob,
                    blob_size,
                    chunk_size,
                    first_index,
                    digests,
                    final_blob_digest_checked: fin,
                }
            },
        )
}

fn arb_progress() -> impl Strategy<Value = ReleaseProgress> {
    (
        arb_digest(),
        (0u64..6).prop_map(|c| ReleaseState::from_code(c).unwrap()),
        any::<[u64; 4]>(),
        proptest::option::of(".{0,40}"),
        proptest::option::of(".{0,40}"),
    )
        .prop_map(|(release_id, state, b, error, waiting)| ReleaseProgress {
            release_id,
            state,
            bytes_total: b[0],
            bytes_done: b[1],
            bytes_from_cloud: b[2],
            bytes_from_peers: b[3],
            error,
            waiting,
        })
}

fn arb_availability() -> impl Strategy<Value = Availability> {
    prop_oneof![
        Just(Availability::Complete),
        arb_bitfield().prop_map(Availability::Bitfield),
        proptest::collection::vec(any::<u32>(), 0..30).prop_map(Availability::Have),
    ]
}

fn arb_gossip_message() -> impl Strategy<Value = GossipMessage> {
    prop_oneof![
        (arb_release(), arb_key())
            .prop_map(|(r, k)| GossipMessage::Release(SignedRelease::sign(r, &k))),
        proptest::collection::vec(
            (arb_digest(), arb_availability())
                .prop_map(|(blob, availability)| AvailabilityEntry { blob, availability }),
            0..8
        )
        .prop_map(|entries| GossipMessage::Availability(AvailabilityBatch { entries })),
        (
            (0u64..3).prop_map(|c| PeerRole::from_code(c).unwrap()),
            any::<bool>(),
            any::<u64>(),
            proptest::collection::vec(arb_progress(), 0..5)
        )
            .prop_map(|(role, gateway_capable, timestamp_ms, releases)| {
                GossipMessage::Status(NodeStatus {
                    role,
                    gateway_capable,
                    timestamp_ms,
                    // Both encodings: with and without a desired digest.
                    desired: (timestamp_ms % 2 == 1).then(|| DesiredDigest {
                        count: timestamp_ms % 7,
                        hash: Digest::of(&timestamp_ms.to_le_bytes()),
                    }),
                    releases,
                })
            }),
        (arb_update(), arb_key())
            .prop_map(|(u, k)| GossipMessage::ChunkDigests(SignedChunkDigestUpdate::sign(u, &k))),
        (
            arb_digest(),
            arb_descriptor(),
            arb_descriptor(),
            proptest::collection::vec(arb_descriptor(), 0..6),
            arb_chunk_size(),
            arb_key()
        )
            .prop_map(|(release_id, manifest, config, layers, chunk_size, k)| {
                GossipMessage::Resolution(SignedReleaseResolution::sign(
                    ReleaseResolution {
                        release_id,
                        manifest,
                        config,
                        layers,
                        chunk_size,
                    },
                    &k,
                ))
            }),
        (".{0,60}", ".{0,20}", any::<u64>(), arb_key()).prop_map(
            |(image, locality, created, k)| {
                GossipMessage::Removal(SignedRemoval::sign(
                    Removal {
                        image,
                        locality,
                        created,
                        seq: created % 3,
                    },
                    &k,
                ))
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn stream_messages_round_trip(m in arb_stream_message()) {
        let frame = encode_frame(&m);
        prop_assert_eq!(StreamMessage::decode(&frame[4..]).unwrap(), m.clone());
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        let payload = vec![0xab; m.payload_len().min(1 << 16) as usize];
        dec.push(&payload);
        if m.payload_len() <= 1 << 16 {
            let f = dec.next_frame().unwrap().unwrap();
            prop_assert_eq!(f.message, m);
            prop_assert_eq!(f.payload, payload);
        } else {
            // Payload still incomplete: the decoder waits.
            prop_assert_eq!(dec.next_frame().unwrap(), None);
        }
    }

    /// A pipelined stream of frames (with payloads) cut at random points
    /// decodes to exactly the frames sent, and nothing stays buffered.
    #[test]
    fn frame_streams_survive_any_split(
        msgs in proptest::collection::vec(arb_stream_message(), 1..12),
        cuts in proptest::collection::vec(1usize..300, 1..40),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (i, m) in msgs.into_iter().enumerate() {
            // Keep payloads small so the test stays fast.
            let m = match m {
                StreamMessage::ChunkResponse(r) if m.payload_len() > 0 => {
                    StreamMessage::ChunkResponse(ChunkResponse {
                        request_id: r.request_id,
                        status: ChunkStatus::Ok { len: (i as u64 * 37) % 500 },
                    })
                }
                StreamMessage::ChunkMapResponse(r) if m.payload_len() > 0 => {
                    StreamMessage::ChunkMapResponse(ChunkMapResponse {
                        status: ChunkStatus::Ok { len: (i as u64 * 11) % 300 },
                        ..r
                    })
                }
                other => other,
            };
            let payload: Vec<u8> = (0..m.payload_len()).map(|j| (j as u8) ^ (i as u8)).collect();
            stream.extend(encode_frame(&m));
            stream.extend(&payload);
            expected.push(Frame { message: m, payload, relay_aborted: false });
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut k = 0;
        while !rest.is_empty() {
            let n = cuts[k % cuts.len()].min(rest.len());
            k += 1;
            dec.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn gossip_messages_round_trip(m in arb_gossip_message()) {
        let bytes = m.encode();
        prop_assert!(bytes.len() <= MAX_GOSSIP_BYTES);
        let back = GossipMessage::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        match back {
            GossipMessage::Release(s) => { s.verify_embedded().unwrap(); }
            GossipMessage::ChunkDigests(s) => { s.verify_embedded().unwrap(); }
            GossipMessage::Resolution(s) => { s.verify_embedded().unwrap(); }
            GossipMessage::Removal(s) => { s.verify_embedded().unwrap(); }
            _ => {}
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = StreamMessage::decode(&bytes) {
            prop_assert_eq!(m.encode(), bytes.clone());
        }
        if let Ok(m) = GossipMessage::decode(&bytes) {
            prop_assert_eq!(m.encode(), bytes.clone());
        }
        let _ = SignedRelease::decode(&bytes);
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        while let Ok(Some(_)) = dec.next_frame() {}
        if bytes.len() >= 4 {
            let _ = decode_frame_len(bytes[..4].try_into().unwrap());
        }
    }

    /// Valid messages with one byte changed, or cut short: decoding either
    /// fails with an error or yields a message that re-encodes to exactly
    /// the input (canonical), and signed bodies that changed do not verify.
    #[test]
    fn mutated_messages_never_panic(
        m in arb_gossip_message(),
        s in arb_stream_message(),
        pos in any::<usize>(),
        xor in 1u8..,
        cut in any::<usize>(),
    ) {
        for bytes in [m.encode(), s.encode()] {
            let mut mutated = bytes.clone();
            let p = pos % mutated.len();
            mutated[p] ^= xor;
            if let Ok(back) = GossipMessage::decode(&mutated) {
                prop_assert_eq!(back.encode(), mutated.clone());
                let verified = match &back {
                    GossipMessage::Release(s) => s.verify_embedded().is_ok(),
                    GossipMessage::ChunkDigests(s) => s.verify_embedded().is_ok(),
                    GossipMessage::Resolution(s) => s.verify_embedded().is_ok(),
                    GossipMessage::Removal(s) => s.verify_embedded().is_ok(),
                    _ => false,
                };
                prop_assert!(!verified || back != m, "a changed signed message verified");
            }
            if let Ok(back) = StreamMessage::decode(&mutated) {
                prop_assert_eq!(back.encode(), mutated.clone());
            }
            let truncated = &bytes[..cut % bytes.len()];
            prop_assert!(GossipMessage::decode(truncated).is_err());
            prop_assert!(StreamMessage::decode(truncated).is_err());
        }
    }
}

#[test]
fn oversized_have_batches_are_rejected() {
    let m = StreamMessage::Have(Have {
        blob: d("blob"),
        indices: vec![1; MAX_HAVE_BATCH + 1],
    });
    assert!(matches!(
        StreamMessage::decode(&m.encode()),
        Err(WireError::Decode(DecodeError::Invalid { .. }))
    ));
}

#[test]
fn names_of_a_locality_are_pinned() {
    let l = Locality::new("plant-7").unwrap();
    assert_eq!(stream_protocol(&l), "/edgeswarm/plant-7/chunks/1.0.0");
    assert_eq!(kad_protocol(&l), "/edgeswarm/plant-7/kad/1.0.0");
    assert_eq!(identify_protocol(&l), "/edgeswarm/plant-7/id/1.0.0");
    assert_eq!(
        gossip_protocol_prefix(&l),
        "/edgeswarm/plant-7/meshsub-sealed"
    );
    assert_eq!(
        Topic::ALL.map(|t| topic_name(&l, t)),
        [
            "edgeswarm/plant-7/releases",
            "edgeswarm/plant-7/availability",
            "edgeswarm/plant-7/status",
        ]
    );
    assert!(Locality::new(&"x".repeat(MAX_LOCALITY_CHARS)).is_ok());
    assert_eq!(Locality::new("A-z_0.9").unwrap().as_str(), "A-z_0.9");
    let long = "x".repeat(MAX_LOCALITY_CHARS + 1);
    for bad in ["", "a/b", "a b", "plant-é", long.as_str()] {
        assert_eq!(
            Locality::new(bad),
            Err(WireError::InvalidLocality { name: bad.into() }),
            "{bad:?}"
        );
    }
}

/// The topic of every kind, as in docs/PROTOCOL.md §9.
const KIND_TOPICS: [Topic; 6] = [
    Topic::Releases,     // 0 release
    Topic::Availability, // 1 availability
    Topic::Status,       // 2 status
    Topic::Releases,     // 3 chunk digests
    Topic::Releases,     // 4 resolution
    Topic::Releases,     // 5 removal
];

#[test]
fn each_gossip_kind_travels_on_one_topic() {
    let msgs = sample_gossip_messages();
    let kinds: std::collections::BTreeSet<u64> = msgs.iter().map(GossipMessage::kind).collect();
    assert_eq!(kinds, (0..KIND_TOPICS.len() as u64).collect());
    for m in &msgs {
        let want = KIND_TOPICS[m.kind() as usize];
        assert_eq!(m.topic(), want, "kind {}", m.kind());
        for topic in Topic::ALL {
            let got = GossipMessage::decode_on(topic, &m.encode());
            if topic == want {
                assert_eq!(got.as_ref(), Ok(m));
            } else {
                assert_eq!(
                    got,
                    Err(WireError::WrongTopic {
                        kind: m.kind(),
                        topic
                    })
                );
            }
        }
    }
}

/// docs/PROTOCOL.md, the other half of the contract.
const SPEC: &str = include_str!("../../docs/PROTOCOL.md");

/// The text of the spec section whose heading starts with `heading`.
fn spec_section(heading: &str) -> &'static str {
    let start = SPEC.find(heading).expect("section exists");
    let rest = &SPEC[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn the_spec_states_the_golden_vectors() {
    let appendix = spec_section("## Appendix: test vectors");
    for golden in STREAM_GOLDEN.iter().chain(GOSSIP_GOLDEN) {
        assert!(appendix.contains(golden), "PROTOCOL.md lacks {golden}");
    }
}

#[test]
fn the_spec_states_the_names_and_the_topic_of_every_kind() {
    // §7: every name, for locality `L`.
    let names = spec_section("## 7.");
    let l = Locality::new("L").unwrap();
    let mut expected = vec![
        kad_protocol(&l),
        identify_protocol(&l),
        gossip_protocol_prefix(&l),
        stream_protocol(&l),
    ];
    expected.extend(Topic::ALL.map(|t| topic_name(&l, t)));
    for name in expected {
        assert!(names.contains(&format!("`{name}`")), "§7 lacks {name}");
    }
    // §9: the kind table's topic column is `GossipMessage::topic`.
    let rows: Vec<(u64, String)> = spec_section("## 9.")
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let kind = cells.get(1)?.parse().ok()?;
            Some((kind, cells[cells.len() - 2].to_owned()))
        })
        .collect();
    let want: Vec<(u64, String)> = KIND_TOPICS
        .iter()
        .enumerate()
        .map(|(kind, topic)| (kind as u64, topic.name().to_owned()))
        .collect();
    assert_eq!(rows, want);
}
