//! Removal requests (gossip kind 5): pinned encoding, round trip, bounded
//! decoding.

use edgeswarm_protocol::release::{Removal, SignedRemoval};
use edgeswarm_protocol::signing::PublisherKey;
use edgeswarm_protocol::wire::GossipMessage;

fn removal() -> Removal {
    Removal {
        image: "r:5000/a:v1".into(),
        locality: "L".into(),
        created: 1,
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
