//! Versioned swarm wire messages: the chunk-exchange stream protocol and
//! the gossip messages of a locality.
//!
//! Everything here is canonical CBOR produced by [`crate::encoding`], and
//! every decoder is bounded: it rejects inputs over a fixed maximum before
//! parsing, rejects unknown versions and unknown message kinds with typed
//! errors, rejects non-canonical encodings, and never panics on arbitrary
//! bytes (property-tested and fuzzed).
//!
//! ## Layout
//!
//! - `stream`: the chunk-exchange stream protocol: frames, [`StreamMessage`]
//!   and its bodies, the incremental [`FrameDecoder`].
//! - `gossip`: [`GossipMessage`] and its bodies (availability, status, the
//!   gateway's signed chunk digests and resolutions), and the topic each
//!   kind travels on ([`GossipMessage::topic`]).
//! - `sealed`: [`SealedGossip`], the author's signature every gossip
//!   message travels in (checked once per message, not per copy).
//! - `names`: the [`Locality`] rule and every name derived from it: the
//!   libp2p protocol names ([`stream_protocol`] and others) and the gossip
//!   [`Topic`]s.
//! - here: [`WireError`], and the CBOR helpers both share (tuple structs,
//!   the envelope pre-check, digest lists).
//!
//! Both modules are re-exported: every item is named `wire::Item`.
//!
//! ## Non-goals
//!
//! Transport and peer discovery (node's swarm module); what a node does
//! with a message (trust decisions, storage).

use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::Digest;
use crate::bitfield::Bitfield;
use crate::chunkmap::{chunk_count, ChunkSize, MAX_CHUNK_MAP_BYTES};
use crate::encoding::{self, peek_envelope, DecodeError};
use crate::release::{SignedRelease, SignedRemoval, MAX_RELEASE_BYTES, MAX_REMOVAL_BYTES};
use crate::signing::{Signable, Signed, SigningError};

/// Longest error text in a [`ChunkStatus::Error`] or [`ReleaseProgress`]
/// that senders should produce; [`truncate_message`] enforces it.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a bounded, canonical, well-formed encoding of a known version.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message kind is not one this implementation knows.
    #[error("{what} has unknown kind {kind}")]
    UnknownKind {
        /// What was being decoded.
        what: &'static str,
        /// The kind number found.
        kind: u64,
    },
    /// A frame header length prefix exceeds [`MAX_HEADER_BYTES`].
    #[error("frame header of {len} bytes exceeds the {max}-byte limit")]
    HeaderTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A response announces a payload over [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A relay piece header announces an empty piece, one over
    /// [`MAX_RELAY_PIECE`], or more than the chunk has left.
    #[error("relay piece of {len} bytes with {left} bytes of the chunk left")]
    BadRelayPiece {
        /// The announced piece length.
        len: u32,
        /// Bytes of the relayed chunk still to come.
        left: u64,
    },
    /// A gossip message arrived on a topic its kind does not travel on.
    #[error("gossip message kind {kind} does not belong on topic {topic}")]
    WrongTopic {
        /// The message kind.
        kind: u64,
        /// The topic it arrived on.
        topic: Topic,
    },
    /// A locality name breaks the rule of [`Locality`].
    #[error("invalid locality {name:?}: use 1-64 of [A-Za-z0-9._-]")]
    InvalidLocality {
        /// The refused name.
        name: String,
    },
    /// A signed message's signature or signer was refused.
    #[error(transparent)]
    Signature(#[from] SigningError),
}

/// Truncates `message` to at most [`MAX_MESSAGE_CHARS`] characters.
pub fn truncate_message(message: &str) -> String {
    message.chars().take(MAX_MESSAGE_CHARS).collect()
}

// ---------------------------------------------------------------------------
// CBOR helpers.

/// Checks size, version and kind of an envelope `[version, kind, body]`
/// before the full decode, so these failures get typed errors.
fn precheck_envelope(
    what: &'static str,
    bytes: &[u8],
    max: usize,
    version: u64,
    kinds: u64,
) -> Result<(), WireError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            what,
            len: bytes.len(),
            max,
        }
        .into());
    }
    if let Some((found, kind)) = peek_envelope(bytes) {
        encoding::check_version(what, found, version)?;
        if kind >= kinds {
            return Err(WireError::UnknownKind { what, kind });
        }
    }
    Ok(())
}

/// Defines a struct with documented named fields whose CBOR form is the
/// array of its fields in declaration order.
macro_rules! cbor_tuple_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let fields = [$(stringify!($field)),*].len();
                let mut t = serializer.serialize_tuple(fields)?;
                $( t.serialize_element(&self.$field)?; )*
                t.end()
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a CBOR array encoding ", stringify!($name)))
                    }
                    #[allow(unused_mut, unused_assignments)]
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$name, A::Error> {
                        let mut i = 0usize;
                        $(
                            let $field: $ty = seq
                                .next_element()?
                                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                            i += 1;
                        )*
                        if seq.next_element::<IgnoredAny>()?.is_some() {
                            return Err(de::Error::custom(concat!(
                                "too many elements in ",
                                stringify!($name)
                            )));
                        }
                        Ok($name { $($field),* })
                    }
                }
                let fields = [$(stringify!($field)),*].len();
                deserializer.deserialize_tuple(fields, V)
            }
        }
    };
}

/// Reads the next element of a tagged array or fails with `invalid_length`.
fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    i: usize,
    exp: &dyn de::Expected,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(i, exp))
}

/// Fails if a tagged array has elements left.
fn end<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<(), A::Error> {
    if seq.next_element::<IgnoredAny>()?.is_some() {
        return Err(de::Error::custom("too many elements"));
    }
    Ok(())
}

/// A list of digests, on the wire as one byte string of 32-byte digests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct DigestList(Vec<Digest>);

impl Serialize for DigestList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * Digest::LEN);
        for d in &self.0 {
            bytes.extend_from_slice(d.as_bytes());
        }
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for DigestList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
        if !bytes.len().is_multiple_of(Digest::LEN) {
            return Err(de::Error::custom(format!(
                "digest list of {} bytes is not a multiple of 32",
                bytes.len()
            )));
        }
        Ok(DigestList(
            bytes
                .chunks_exact(Digest::LEN)
                .map(|c| Digest::from_bytes(c.try_into().expect("chunks_exact yields 32 bytes")))
                .collect(),
        ))
    }
}

mod gossip;
mod names;
mod sealed;
mod stream;

pub use gossip::*;
pub use names::*;
pub use sealed::*;
pub use stream::*;
