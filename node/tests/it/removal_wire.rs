//! The signed removal request (`edgeswarm rm --locality`) on the wire:
//! round trip as gossip kind 5, signature domain separation, typed errors.

use edgeswarm_node::daemon::{
    decode_removal, encode_removal_gossip, repository_of, Removal, SignedRemoval,
};
use edgeswarm_protocol::release::{Release, SignedRelease};
use edgeswarm_protocol::signing::PublisherKey;
use edgeswarm_protocol::wire::GossipMessage;

/// Decodes gossip bytes that must be a removal.
fn decode_removal_gossip(bytes: &[u8]) -> SignedRemoval {
    match GossipMessage::decode(bytes).expect("valid gossip") {
        GossipMessage::Removal(signed) => signed,
        other => panic!("not a removal: kind {}", other.kind()),
    }
}

fn removal() -> Removal {
    Removal {
        image: "reg:5000/app:v1".into(),
        locality: "plant-7".into(),
        created: 1_700_000_000,
        seq: 0,
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
    assert_eq!(bytes[..2], [0x83, 0x01], "a versioned gossip message");
    assert_eq!(bytes[2], 0x05, "kind 5");
    let back = decode_removal_gossip(&bytes);
    assert_eq!(back.verify_signer(&key.public()).unwrap(), &removal());
    // The API form (the signed envelope alone) round-trips too.
    assert_eq!(decode_removal(&signed.encode()).unwrap(), signed);
}

#[test]
fn a_signature_does_not_carry_over_to_another_body_or_kind() {
    let key = key();
    let signed = SignedRemoval::sign(removal(), &key);
    let mut other = removal();
    other.image = "reg:5000/app:v2".into();
    let forged = SignedRemoval::from_parts(other, *signed.signer(), *signed.signature());
    let decoded = decode_removal_gossip(&encode_removal_gossip(&forged));
    assert!(decoded.verify_embedded().is_err());
    // A release signature over the same key is not a removal signature.
    let release = Release {
        image: "reg:5000/app:v1".into(),
        manifest: edgeswarm_protocol::Digest::of(b"m"),
        platform: edgeswarm_protocol::release::Platform::new("linux", "amd64"),
        created: 1_700_000_000,
        locality: "plant-7".into(),
        selector: vec![],
        seq: 0,
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
    // A removal of an unknown version inside a gossip envelope.
    let bytes = edgeswarm_protocol::encoding::encode(&(1u64, 5u64, (7u64, "a", "b", 1u64)));
    assert!(GossipMessage::decode(&bytes).is_err());
    let err = decode_removal(b"\x83\x01").unwrap_err();
    assert!(err.to_string().contains("malformed removal"), "{err}");
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
