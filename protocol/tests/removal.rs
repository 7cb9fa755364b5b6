//! Removal requests (gossip kind 5): pinned encoding, round trip, bounded
//! decoding (alone and in gossip).

use edgeswarm_protocol::encoding::DecodeError;
use edgeswarm_protocol::release::{
    Platform, Release, ReleaseError, Removal, SignedRelease, SignedRemoval, MAX_RELEASE_BYTES,
    MAX_REMOVAL_BYTES,
};
use edgeswarm_protocol::signing::PublisherKey;
use edgeswarm_protocol::wire::{GossipMessage, WireError, MAX_GOSSIP_BYTES};

fn removal() -> Removal {
    Removal {
        image: "r:5000/a:v1".into(),
        locality: "L".into(),
        created: 1,
        seq: 0,
    }
}

#[test]
fn removal_body_encoding_is_pinned() {
    // [1, "r:5000/a:v1", "L", 1]
    let body = edgeswarm_protocol::encoding::encode(&removal());
    assert_eq!(
        hex(&body),
        "84016b723a353030302f613a7631614c01",
        "changing this breaks interoperability"
    );
}

#[test]
fn removal_gossip_round_trips_and_verifies() {
    let key = PublisherKey::from_secret_bytes([7; 32]);
    let signed = SignedRemoval::sign(removal(), &key);
    let bytes = GossipMessage::Removal(signed.clone()).encode();
    assert_eq!(&bytes[..3], &[0x83, 0x01, 0x05]);
    match GossipMessage::decode(&bytes).unwrap() {
        GossipMessage::Removal(back) => {
            assert_eq!(back, signed);
            assert_eq!(back.verify_signer(&key.public()).unwrap(), &removal());
        }
        other => panic!("decoded as kind {}", other.kind()),
    }
    // Truncations are errors, never panics.
    for cut in 0..bytes.len() {
        assert!(GossipMessage::decode(&bytes[..cut]).is_err());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn signed_removals_decode_alone_within_4_kib() {
    let key = PublisherKey::from_secret_bytes([7; 32]);
    let signed = SignedRemoval::sign(removal(), &key);
    assert_eq!(SignedRemoval::decode(&signed.encode()).unwrap(), signed);
    // The limit is pinned: 4 KiB on the API and in gossip alike.
    assert_eq!(MAX_REMOVAL_BYTES, 4096);
    let mut big = removal();
    big.image = "r".repeat(MAX_REMOVAL_BYTES);
    let big = SignedRemoval::sign(big, &key);
    let bytes = big.encode();
    assert!(matches!(
        SignedRemoval::decode(&bytes),
        Err(ReleaseError::Decode(DecodeError::TooLarge {
            max: 4096,
            ..
        }))
    ));
    let gossip = GossipMessage::Removal(big).encode();
    assert!(gossip.len() <= MAX_GOSSIP_BYTES);
    assert!(matches!(
        GossipMessage::decode(&gossip),
        Err(WireError::Decode(DecodeError::TooLarge {
            what: "signed removal",
            max: 4096,
            ..
        }))
    ));
    // Unknown envelope versions are typed errors.
    let mut other = signed.encode();
    other[1] = 0x02;
    assert!(matches!(
        SignedRemoval::decode(&other),
        Err(ReleaseError::Decode(DecodeError::UnsupportedVersion {
            found: 2,
            ..
        }))
    ));
    // Arbitrary bytes are errors, never panics.
    for cut in 0..bytes.len().min(200) {
        assert!(SignedRemoval::decode(&bytes[..cut]).is_err());
    }
}

#[test]
fn gossiped_releases_are_bounded_as_when_decoded_alone() {
    let key = PublisherKey::from_secret_bytes([7; 32]);
    let release = Release {
        image: "r".repeat(MAX_RELEASE_BYTES),
        manifest: edgeswarm_protocol::Digest::of(b"m"),
        platform: Platform::new("linux", "amd64"),
        created: 1,
        locality: "L".into(),
        selector: vec![],
        seq: 0,
    };
    let gossip = GossipMessage::Release(SignedRelease::sign(release, &key)).encode();
    assert!(gossip.len() <= MAX_GOSSIP_BYTES);
    assert!(matches!(
        GossipMessage::decode(&gossip),
        Err(WireError::Decode(DecodeError::TooLarge {
            what: "signed release",
            ..
        }))
    ));
}
