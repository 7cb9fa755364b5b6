//! The signed removal request (`edgeswarm rm --locality`) on the wire:
//! round trip, signature domain separation, and how it coexists with the
//! protocol's gossip messages on the releases topic.

use edgeswarm_node::daemon::{
    decode_removal, decode_removal_gossip, encode_removal_gossip, repository_of, Removal,
    SignedRemoval, REMOVAL_TAG,
};
use edgeswarm_protocol::encoding;
use edgeswarm_protocol::release::{PublisherKey, Release, SignedRelease};
use edgeswarm_protocol::wire::{GossipMessage, NodeStatus, PeerRole};

fn removal() -> Removal {
    Removal {
        image: "reg:5000/app:v1".into(),
        locality: "plant-7".into(),
        created: 1_700_000_000,
    }
}

fn key() -> PublisherKey {
    PublisherKey::generate(&mut rand::rngs::OsRng)
}

#[test]
fn gossip_round_trip_keeps_the_signature() {
    let key = key();
    let signed = SignedRemoval::sign(removal(), &key);
    let bytes = encode_removal_gossip(&signed);
    let back = decode_removal_gossip(&bytes)
        .expect("is a removal")
        .unwrap();
    assert_eq!(back.verify_signer(&key.public()).unwrap(), &removal());
    // The API form (the signed envelope alone) round-trips too.
    assert_eq!(decode_removal(&signed.encode()).unwrap(), signed);
}

#[test]
fn protocol_gossip_is_not_mistaken_for_a_removal_and_vice_versa() {
    let status = GossipMessage::Status(NodeStatus {
        role: PeerRole::Node,
        gateway_capable: false,
        timestamp_ms: 1,
        releases: vec![],
    });
    assert!(decode_removal_gossip(&status.encode()).is_none());
    assert!(decode_removal_gossip(b"not cbor").is_none());
    let removal = encode_removal_gossip(&SignedRemoval::sign(removal(), &key()));
    assert!(GossipMessage::decode(&removal).is_err());
}

#[test]
fn a_signature_does_not_carry_over_to_another_body_or_kind() {
    let key = key();
    let signed = SignedRemoval::sign(removal(), &key);
    let mut other = removal();
    other.image = "reg:5000/app:v2".into();
    let forged = SignedRemoval::from_parts(other, *signed.signer(), *signed.signature());
    let decoded = decode_removal_gossip(&encode_removal_gossip(&forged))
        .unwrap()
        .unwrap();
    assert!(decoded.verify_embedded().is_err());
    // A release signature over the same key is not a removal signature.
    let release = Release {
        image: "reg:5000/app:v1".into(),
        manifest: edgeswarm_protocol::Digest::of(b"m"),
        platform: edgeswarm_protocol::release::Platform::new("linux", "amd64"),
        created: 1_700_000_000,
        locality: "plant-7".into(),
        selector: vec![],
    };
    let signed_release = SignedRelease::sign(release, &key);
    let replayed = SignedRemoval::from_parts(
        removal(),
        *signed_release.signer(),
        *signed_release.signature(),
    );
    assert!(replayed.verify_embedded().is_err());
}

#[test]
fn malformed_removals_are_typed_errors() {
    let bytes = encoding::encode(&(REMOVAL_TAG, 7u64, "junk"));
    let err = decode_removal_gossip(&bytes).unwrap().unwrap_err();
    assert!(err.to_string().contains("removal refused"), "{err}");
    assert!(decode_removal(b"\x83\x01").is_err());
}

#[test]
fn repository_strips_tag_and_digest() {
    assert_eq!(
        repository_of("127.0.0.1:5000/e2e/app:v1"),
        "127.0.0.1:5000/e2e/app"
    );
    assert_eq!(
        repository_of("127.0.0.1:5000/e2e/app:v2"),
        repository_of("127.0.0.1:5000/e2e/app")
    );
}
