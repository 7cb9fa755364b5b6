//! Sealed gossip: every gossip payload travels inside a [`SealedGossip`],
//! signed once by its author's ed25519 libp2p identity key.
//!
//! ```text
//! SealedGossip = [1, author: bytes(32), seq: uint, body: bytes, signature: bytes(64)]
//! signed bytes = SEAL_CONTEXT || u32be(len(topic)) || topic || author || u64be(seq) || body
//! ```
//!
//! `body` is a [`GossipMessage`] encoding, `topic` the full topic name it
//! is published on ([`topic_name`]). The author's libp2p `PeerId` derives
//! from `author`, so a sealed message names its author as gossipsub's own
//! signed messages did.
//!
//! Why not gossipsub's signatures: libp2p-gossipsub 0.50 verifies the
//! signature of every copy of a message it receives, in its codec, before
//! it drops duplicates. In a locality's mesh each message arrives 2-4
//! times, and those checks cost a node 4.7 % of its CPU in an N = 5
//! deploy (`testnet/results/issue11-15-2026-12-05`). Sealed messages go
//! through gossipsub unsigned, with message ids that hash the whole
//! payload ([`SealedGossip::message_id`]), so copies are dropped as
//! duplicates before the node sees them, and the node checks each new
//! message's seal once ([`SealedGossip::open`]).
//!
//! `seq` makes each message unique: two equal bodies from one author are
//! two messages, not one id. Authors start it from the clock, so a
//! restarted node does not repeat an id still in its peers' caches. The
//! topic is signed, so a message cannot be replayed on another topic.
//!
//! ## Non-goals
//!
//! Replay protection beyond gossipsub's duplicate cache: the bodies that
//! need it carry their own (a release's `seq`, a status's timestamp).

use super::*;
use crate::signing::{PublicKey, PublisherKey, Signature};

/// Format version of [`SealedGossip`].
pub const SEALED_VERSION: u64 = 1;

/// Domain separation of seal signatures (no other signed edgeswarm
/// structure starts with these bytes).
pub const SEAL_CONTEXT: &[u8] = b"edgeswarm gossip seal v1\0";

/// Largest sealed message: a [`MAX_GOSSIP_BYTES`] body and its seal (the
/// seal adds at most [`SEAL_OVERHEAD`] bytes).
pub const MAX_SEALED_BYTES: usize = MAX_GOSSIP_BYTES + SEAL_OVERHEAD;

/// Bytes a seal adds to its body at most: the array and version (2), the
/// author (2 + 32), `seq` (9), the body's length head (5) and the
/// signature (2 + 64).
pub const SEAL_OVERHEAD: usize = 2 + 34 + 9 + 5 + 66;

/// A gossip message and its author's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedGossip {
    /// The author's ed25519 public key (its libp2p identity).
    pub author: PublicKey,
    /// Unique per author and message (see the module docs).
    pub seq: u64,
    /// The [`GossipMessage`] encoding.
    pub body: Vec<u8>,
    /// The author's signature of [`SealedGossip::signed_bytes`].
    pub signature: Signature,
}

impl SealedGossip {
    /// Seals `body` for `topic` (its full name) with the author's key.
    pub fn seal(key: &PublisherKey, topic: &str, seq: u64, body: Vec<u8>) -> Self {
        let author = key.public();
        let signature = key.sign_raw(&Self::signed_bytes(topic, &author, seq, &body));
        SealedGossip {
            author,
            seq,
            body,
            signature,
        }
    }

    /// What the signature covers.
    pub fn signed_bytes(topic: &str, author: &PublicKey, seq: u64, body: &[u8]) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(SEAL_CONTEXT.len() + 4 + topic.len() + 32 + 8 + body.len());
        out.extend_from_slice(SEAL_CONTEXT);
        out.extend_from_slice(&(topic.len() as u32).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(author.as_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Checks the seal for `topic` (its full name): the body, exactly as
    /// received, was published there by `author`.
    pub fn open(&self, topic: &str) -> Result<(), WireError> {
        let signed = Self::signed_bytes(topic, &self.author, self.seq, &self.body);
        if self.author.verify(&signed, &self.signature) {
            Ok(())
        } else {
            Err(SigningError::BadSignature {
                what: "gossip seal",
                signer: self.author,
            }
            .into())
        }
    }

    /// Canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes a sealed message, bounded by [`MAX_SEALED_BYTES`] (its body
    /// by [`MAX_GOSSIP_BYTES`]). The seal is *not* checked here: call
    /// [`SealedGossip::open`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "sealed gossip";
        if bytes.len() > MAX_SEALED_BYTES {
            return Err(DecodeError::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_SEALED_BYTES,
            }
            .into());
        }
        if let Some((_, found)) = encoding::peek_array_and_uint(bytes) {
            encoding::check_version(WHAT, found, SEALED_VERSION)?;
        }
        let sealed: SealedGossip = encoding::decode(WHAT, bytes, MAX_SEALED_BYTES)?;
        if sealed.body.len() > MAX_GOSSIP_BYTES {
            return Err(DecodeError::TooLarge {
                what: "sealed gossip body",
                len: sealed.body.len(),
                max: MAX_GOSSIP_BYTES,
            }
            .into());
        }
        Ok(sealed)
    }

    /// The gossipsub message id of a sealed message's bytes: the first 16
    /// bytes of their sha256. Every copy of one message has the same id
    /// (the bytes are canonical and signed), and two messages never do
    /// (`author` and `seq` differ).
    pub fn message_id(bytes: &[u8]) -> [u8; 16] {
        let digest = Digest::of(bytes);
        digest.as_bytes()[..16]
            .try_into()
            .expect("a digest has 32 bytes")
    }
}

impl Serialize for SealedGossip {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(5)?;
        t.serialize_element(&SEALED_VERSION)?;
        t.serialize_element(&self.author)?;
        t.serialize_element(&self.seq)?;
        t.serialize_element(serde_bytes::Bytes::new(&self.body))?;
        t.serialize_element(&self.signature)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for SealedGossip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SealedGossip;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("sealed gossip [version, author, seq, body, signature]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SealedGossip, A::Error> {
                let version: u64 = next(&mut seq, 0, &self)?;
                if version != SEALED_VERSION {
                    return Err(de::Error::custom(format!(
                        "sealed gossip version {version}"
                    )));
                }
                let author: PublicKey = next(&mut seq, 1, &self)?;
                let n: u64 = next(&mut seq, 2, &self)?;
                let body: serde_bytes::ByteBuf = next(&mut seq, 3, &self)?;
                let signature: Signature = next(&mut seq, 4, &self)?;
                end(&mut seq)?;
                Ok(SealedGossip {
                    author,
                    seq: n,
                    body: body.into_vec(),
                    signature,
                })
            }
        }
        deserializer.deserialize_tuple(5, V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublisherKey {
        PublisherKey::from_secret_bytes([seed; 32])
    }

    const TOPIC: &str = "edgeswarm/plant-7/status";

    #[test]
    fn a_seal_opens_on_its_topic_only() {
        let sealed = SealedGossip::seal(&key(1), TOPIC, 7, b"body".to_vec());
        sealed.open(TOPIC).unwrap();
        assert!(matches!(
            sealed.open("edgeswarm/plant-7/releases"),
            Err(WireError::Signature(SigningError::BadSignature { .. }))
        ));
    }

    #[test]
    fn every_field_is_covered_by_the_signature() {
        let sealed = SealedGossip::seal(&key(1), TOPIC, 7, b"body".to_vec());
        let mut other_body = sealed.clone();
        other_body.body = b"bodz".to_vec();
        let mut other_seq = sealed.clone();
        other_seq.seq = 8;
        let mut other_author = sealed.clone();
        other_author.author = key(2).public();
        let mut other_signature = sealed.clone();
        let mut sig = *sealed.signature.as_bytes();
        sig[0] ^= 1;
        other_signature.signature = Signature::from_bytes(sig);
        for forged in [other_body, other_seq, other_author, other_signature] {
            assert!(forged.open(TOPIC).is_err(), "{forged:?}");
        }
    }

    #[test]
    fn encoding_round_trips_and_is_pinned() {
        let sealed = SealedGossip::seal(&key(3), TOPIC, 0x0102_0304_0506_0708, vec![0xAB; 3]);
        let bytes = sealed.encode();
        assert_eq!(SealedGossip::decode(&bytes).unwrap(), sealed);
        // [1, h'author', seq, h'ABABAB', h'signature'] (ed25519 is
        // deterministic, so the whole encoding is fixed).
        let mut expected = vec![0x85, 0x01, 0x58, 0x20];
        expected.extend_from_slice(key(3).public().as_bytes());
        expected.extend_from_slice(&[0x1B, 1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&[0x43, 0xAB, 0xAB, 0xAB, 0x58, 0x40]);
        expected.extend_from_slice(sealed.signature.as_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(
            hex::encode(&sealed.signature.as_bytes()[..8]),
            GOLDEN_SIGNATURE_PREFIX,
            "the signed bytes changed"
        );
    }

    /// The first bytes of the golden seal's signature: pins
    /// [`SealedGossip::signed_bytes`] and [`SEAL_CONTEXT`].
    const GOLDEN_SIGNATURE_PREFIX: &str = "314d0a7fdd66011d";

    #[test]
    fn the_signed_bytes_are_context_topic_author_seq_body() {
        let author = key(3).public();
        let mut expected = b"edgeswarm gossip seal v1\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 24]);
        expected.extend_from_slice(b"edgeswarm/plant-7/status");
        expected.extend_from_slice(author.as_bytes());
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
        expected.extend_from_slice(b"xyz");
        assert_eq!(
            SealedGossip::signed_bytes(TOPIC, &author, 9, b"xyz"),
            expected
        );
    }

    #[test]
    fn the_seal_overhead_bound_holds_for_the_largest_fields() {
        let sealed = SealedGossip::seal(&key(4), TOPIC, u64::MAX, vec![0; MAX_GOSSIP_BYTES]);
        let bytes = sealed.encode();
        assert_eq!(bytes.len(), MAX_GOSSIP_BYTES + SEAL_OVERHEAD);
        assert_eq!(SealedGossip::decode(&bytes).unwrap(), sealed);
    }

    #[test]
    fn oversize_wrong_version_and_garbage_are_typed_errors() {
        let big = vec![0u8; MAX_SEALED_BYTES + 1];
        assert!(matches!(
            SealedGossip::decode(&big),
            Err(WireError::Decode(DecodeError::TooLarge { .. }))
        ));
        let mut v2 = SealedGossip::seal(&key(1), TOPIC, 1, vec![1]).encode();
        v2[1] = 0x02;
        assert!(matches!(
            SealedGossip::decode(&v2),
            Err(WireError::Decode(DecodeError::UnsupportedVersion { .. }))
        ));
        assert!(SealedGossip::decode(b"not cbor").is_err());
        let body = vec![0u8; MAX_GOSSIP_BYTES + 1];
        let over = SealedGossip::seal(&key(1), TOPIC, 1, body).encode();
        assert!(SealedGossip::decode(&over).is_err());
    }

    #[test]
    fn message_ids_differ_by_seq_and_match_across_copies() {
        let a = SealedGossip::seal(&key(1), TOPIC, 1, b"same".to_vec()).encode();
        let b = SealedGossip::seal(&key(1), TOPIC, 2, b"same".to_vec()).encode();
        assert_ne!(SealedGossip::message_id(&a), SealedGossip::message_id(&b));
        assert_eq!(
            SealedGossip::message_id(&a),
            SealedGossip::message_id(&a.clone())
        );
    }
}
