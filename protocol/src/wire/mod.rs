//! Versioned swarm wire messages: the chunk-exchange stream protocol and
//! the gossip messages of a locality.
//!
//! Everything here is canonical CBOR produced by [`crate::encoding`], and
//! every decoder is bounded: it rejects inputs over a fixed maximum before
//! parsing, rejects unknown versions and unknown message kinds with typed
//! errors, rejects non-canonical encodings, and never panics on arbitrary
//! bytes (property-tested and fuzzed).
//!
//! ## Stream protocol ([`STREAM_PROTOCOL`], over `libp2p-stream`)
//!
//! A stream carries frames in both directions:
//!
//! ```text
//! frame   = length: u32 big-endian, header: `length` bytes of CBOR StreamMessage,
//!           then, only if the header announces a payload, `payload_len` raw bytes
//! StreamMessage = [1, kind: uint, body]
//! ```
//!
//! `length` is at most [`MAX_HEADER_BYTES`]; a payload (a chunk, or an
//! encoded chunk map) is at most [`MAX_PAYLOAD_BYTES`]. Only
//! [`ChunkResponse`] and [`ChunkMapResponse`] with status
//! [`ChunkStatus::Ok`] carry a payload, of exactly the announced length;
//! keeping bulk bytes out of the CBOR header means a chunk can be read
//! straight from the socket into its buffer and hashed without copying.
//!
//! | kind | body | meaning |
//! |---|---|---|
//! | 0 | [`Hello`] `[protocol_version, [blob*]]` | first frame each way: blobs the sender wants or serves |
//! | 1 | [`BitfieldMsg`] `[blob, [chunk_count, bits]]` | the sender's verified chunks of a blob |
//! | 2 | [`Have`] `[blob, [index*]]` | the sender verified more chunks |
//! | 3 | [`ChunkRequest`] `[request_id, blob, index]` | please send chunk |
//! | 4 | [`ChunkResponse`] `[request_id, status]` | answer; payload follows if `Ok` |
//! | 5 | [`ChunkMapRequest`] `[request_id, blob]` | please send the blob's complete chunk map |
//! | 6 | [`ChunkMapResponse`] `[request_id, blob, status]` | answer; encoded [`crate::ChunkMap`] follows if `Ok` |
//! | 7 | [`Cancel`] `[request_id]` | the sender no longer wants an answer (endgame) |
//!
//! `status` is `[0, payload_len]` (Ok), `[1]` (NotHave), `[2]` (Busy: try
//! later or elsewhere), `[3, message: text]` (Error), `[4]` (TryElsewhere:
//! a seed sparing its upload for a chunk it sent very recently).
//!
//! A blob no larger than its chunk size is a single chunk whose digest is
//! the blob digest, so small blobs (manifests, configs) can be fetched with
//! a [`ChunkRequest`] for index 0 and verified without a chunk map.
//!
//! ## Gossip (one message per gossipsub publish, at most [`MAX_GOSSIP_BYTES`])
//!
//! ```text
//! GossipMessage = [1, kind: uint, body]
//! ```
//!
//! | kind | body |
//! |---|---|
//! | 0 | [`crate::release::SignedRelease`] |
//! | 1 | [`AvailabilityBatch`] `[[[blob, availability]*]]` |
//! | 2 | [`NodeStatus`] `[role, gateway_capable, timestamp_ms, [progress*]]` |
//! | 3 | signed [`ChunkDigestUpdate`] `[1, update, signer, signature]` |
//! | 4 | signed [`ReleaseResolution`] `[1, resolution, signer, signature]` |
//! | 5 | [`crate::release::SignedRemoval`] |
//!
//! The two gateway messages are signed with the gateway's ed25519 libp2p
//! identity key (see [`crate::release::Signed`]); the signer's public key
//! identifies the gateway (its libp2p `PeerId` derives from it).
//!
//! ## Non-goals
//!
//! Transport, topic names and peer discovery (node's swarm module); what a
//! node does with a message (trust decisions, storage).

use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::Digest;
use crate::bitfield::Bitfield;
use crate::chunkmap::{chunk_count, ChunkSize, MAX_CHUNK_MAP_BYTES};
use crate::encoding::{self, DecodeError};
use crate::release::{
    ReleaseError, Signable, Signed, SignedRelease, SignedRemoval, MAX_RELEASE_BYTES,
};

/// The libp2p stream protocol name of chunk exchange.
pub const STREAM_PROTOCOL: &str = "/edgeswarm/chunks/1";

/// Format version of [`StreamMessage`] frames.
pub const STREAM_VERSION: u64 = 1;

/// Format version of [`GossipMessage`].
pub const GOSSIP_VERSION: u64 = 1;

/// Largest CBOR header of a stream frame: 64 KiB (a bitfield of the
/// largest blob, 131 072 chunks, is 16 KiB).
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// Largest raw payload after a header: the largest chunk size, 16 MiB
/// (also larger than any encoded chunk map).
pub const MAX_PAYLOAD_BYTES: u64 = ChunkSize::MAX.get() as u64;

/// Largest gossip message: 64 KiB, gossipsub's default maximum.
pub const MAX_GOSSIP_BYTES: usize = 64 << 10;

/// Most digests in one [`ChunkDigestUpdate`] (32 KiB of digests, so a
/// signed update fits a gossip message with room to spare).
pub const MAX_DIGESTS_PER_UPDATE: usize = 1024;

/// Longest error text in a [`ChunkStatus::Error`] or [`ReleaseProgress`]
/// that senders should produce; [`truncate_message`] enforces it.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// Length of the big-endian frame length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

const _: () = assert!(MAX_PAYLOAD_BYTES >= MAX_CHUNK_MAP_BYTES as u64);
const _: () = assert!(MAX_RELEASE_BYTES < MAX_GOSSIP_BYTES);

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
    /// A signed message's signature or signer was refused.
    #[error(transparent)]
    Signature(#[from] ReleaseError),
}

/// Truncates `message` to at most [`MAX_MESSAGE_CHARS`] characters.
pub fn truncate_message(message: &str) -> String {
    message.chars().take(MAX_MESSAGE_CHARS).collect()
}

// ---------------------------------------------------------------------------
// CBOR helpers.

/// Reads one CBOR head (major type, argument) at `bytes[*pos..]`.
/// Indefinite lengths and reserved values give `None`.
fn read_head(bytes: &[u8], pos: &mut usize) -> Option<(u8, u64)> {
    let initial = *bytes.get(*pos)?;
    *pos += 1;
    let major = initial >> 5;
    let info = initial & 0x1f;
    let n = match info {
        0..=23 => return Some((major, info as u64)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return None,
    };
    let arg = bytes.get(*pos..*pos + n)?;
    *pos += n;
    Some((
        major,
        arg.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64),
    ))
}

/// If `bytes` start with a CBOR array whose first element is an unsigned
/// integer, returns (array length, that integer).
pub(crate) fn peek_array_and_uint(bytes: &[u8]) -> Option<(u64, u64)> {
    let mut pos = 0;
    let (major, len) = read_head(bytes, &mut pos)?;
    if major != 4 || len == 0 {
        return None;
    }
    let (major, value) = read_head(bytes, &mut pos)?;
    (major == 0).then_some((len, value))
}

/// If `bytes` start with `[uint, uint, ...`, returns the two integers.
fn peek_envelope(bytes: &[u8]) -> Option<(u64, u64)> {
    let mut pos = 0;
    let (major, len) = read_head(bytes, &mut pos)?;
    if major != 4 || len < 2 {
        return None;
    }
    let (m1, version) = read_head(bytes, &mut pos)?;
    let (m2, kind) = read_head(bytes, &mut pos)?;
    (m1 == 0 && m2 == 0).then_some((version, kind))
}

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

// ---------------------------------------------------------------------------
// Stream protocol.

cbor_tuple_struct! {
    /// First frame in each direction of a chunk stream.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Hello {
        /// The stream protocol version the sender speaks
        /// ([`STREAM_VERSION`]); lets a peer log a clear mismatch.
        pub protocol_version: u64,
        /// Blobs the sender wants (requester) or can serve (responder); the
        /// peer answers with a [`BitfieldMsg`] for each it holds chunks of.
        pub blobs: Vec<Digest>,
    }
}

cbor_tuple_struct! {
    /// The sender's verified chunks of one blob.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BitfieldMsg {
        /// The blob.
        pub blob: Digest,
        /// One bit per chunk, set when verified and servable.
        pub bitfield: Bitfield,
    }
}

cbor_tuple_struct! {
    /// The sender verified more chunks (batched: a sender collects the
    /// chunks verified since its last `Have`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Have {
        /// The blob.
        pub blob: Digest,
        /// The chunk indices, at most [`MAX_HAVE_BATCH`].
        pub indices: Vec<u32>,
    }
}

/// Most indices in one [`Have`] (20 KiB of CBOR at most).
pub const MAX_HAVE_BATCH: usize = 4096;

cbor_tuple_struct! {
    /// A request for one chunk.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ChunkRequest {
        /// Chosen by the requester, echoed in the response; lets requests be
        /// pipelined and cancelled.
        pub request_id: u64,
        /// The blob.
        pub blob: Digest,
        /// The chunk index.
        pub index: u32,
    }
}

/// Outcome of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkStatus {
    /// Success: exactly `len` payload bytes follow the header.
    Ok {
        /// Payload length in bytes.
        len: u64,
    },
    /// The responder does not hold the chunk (its availability was stale).
    NotHave,
    /// The responder is at its upload limit; ask again later or elsewhere.
    Busy,
    /// The responder is a seed that uploaded this chunk very recently:
    /// ask a peer that got it from there (seed sparing).
    TryElsewhere,
    /// The responder failed (for example its copy no longer verifies).
    Error {
        /// Human-readable reason, at most [`MAX_MESSAGE_CHARS`].
        message: String,
    },
}

impl Serialize for ChunkStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ChunkStatus::Ok { len } => (0u64, len).serialize(serializer),
            ChunkStatus::NotHave => (1u64,).serialize(serializer),
            ChunkStatus::Busy => (2u64,).serialize(serializer),
            ChunkStatus::Error { message } => (3u64, message).serialize(serializer),
            ChunkStatus::TryElsewhere => (4u64,).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ChunkStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ChunkStatus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chunk status [code, ...]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ChunkStatus, A::Error> {
                let code: u64 = next(&mut seq, 0, &self)?;
                let status = match code {
                    0 => ChunkStatus::Ok {
                        len: next(&mut seq, 1, &self)?,
                    },
                    1 => ChunkStatus::NotHave,
                    2 => ChunkStatus::Busy,
                    3 => ChunkStatus::Error {
                        message: next(&mut seq, 1, &self)?,
                    },
                    4 => ChunkStatus::TryElsewhere,
                    other => {
                        return Err(de::Error::custom(format!("unknown chunk status {other}")))
                    }
                };
                end(&mut seq)?;
                Ok(status)
            }
        }
        deserializer.deserialize_seq(V)
    }
}

cbor_tuple_struct! {
    /// The answer to a [`ChunkRequest`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ChunkResponse {
        /// The request answered.
        pub request_id: u64,
        /// The outcome; `Ok { len }` means `len` raw bytes follow.
        pub status: ChunkStatus,
    }
}

cbor_tuple_struct! {
    /// A request for a blob's complete chunk map.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ChunkMapRequest {
        /// Echoed in the response.
        pub request_id: u64,
        /// The blob.
        pub blob: Digest,
    }
}

cbor_tuple_struct! {
    /// The answer to a [`ChunkMapRequest`]. With `Ok { len }`, `len` bytes
    /// of an encoded [`crate::ChunkMap`] follow; the requester checks it
    /// against what it knows (the blob digest, gateway-signed digests).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ChunkMapResponse {
        /// The request answered.
        pub request_id: u64,
        /// The blob (so a response is self-describing in logs).
        pub blob: Digest,
        /// The outcome. `NotHave` while the map is still incomplete.
        pub status: ChunkStatus,
    }
}

cbor_tuple_struct! {
    /// The sender no longer wants the answer to a request (an endgame
    /// duplicate arrived elsewhere). The responder may still answer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cancel {
        /// The request to drop.
        pub request_id: u64,
    }
}

/// One frame header on a chunk stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// Kind 0.
    Hello(Hello),
    /// Kind 1.
    Bitfield(BitfieldMsg),
    /// Kind 2.
    Have(Have),
    /// Kind 3.
    ChunkRequest(ChunkRequest),
    /// Kind 4.
    ChunkResponse(ChunkResponse),
    /// Kind 5.
    ChunkMapRequest(ChunkMapRequest),
    /// Kind 6.
    ChunkMapResponse(ChunkMapResponse),
    /// Kind 7.
    Cancel(Cancel),
}

/// Number of stream message kinds.
const STREAM_KINDS: u64 = 8;

impl StreamMessage {
    /// The kind number on the wire.
    pub fn kind(&self) -> u64 {
        match self {
            StreamMessage::Hello(_) => 0,
            StreamMessage::Bitfield(_) => 1,
            StreamMessage::Have(_) => 2,
            StreamMessage::ChunkRequest(_) => 3,
            StreamMessage::ChunkResponse(_) => 4,
            StreamMessage::ChunkMapRequest(_) => 5,
            StreamMessage::ChunkMapResponse(_) => 6,
            StreamMessage::Cancel(_) => 7,
        }
    }

    /// How many raw payload bytes follow this header on the stream.
    pub fn payload_len(&self) -> u64 {
        match self {
            StreamMessage::ChunkResponse(ChunkResponse {
                status: ChunkStatus::Ok { len },
                ..
            })
            | StreamMessage::ChunkMapResponse(ChunkMapResponse {
                status: ChunkStatus::Ok { len },
                ..
            }) => *len,
            _ => 0,
        }
    }

    /// The canonical CBOR header (without length prefix).
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes a header (without length prefix), bounded by
    /// [`MAX_HEADER_BYTES`]; also rejects payload lengths over
    /// [`MAX_PAYLOAD_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "stream message";
        precheck_envelope(WHAT, bytes, MAX_HEADER_BYTES, STREAM_VERSION, STREAM_KINDS)?;
        let msg: StreamMessage = encoding::decode(WHAT, bytes, MAX_HEADER_BYTES)?;
        if let StreamMessage::Have(have) = &msg {
            if have.indices.len() > MAX_HAVE_BATCH {
                return Err(DecodeError::Invalid {
                    what: WHAT,
                    reason: format!(
                        "Have lists {} indices, at most {MAX_HAVE_BATCH}",
                        have.indices.len()
                    ),
                }
                .into());
            }
        }
        let len = msg.payload_len();
        if len > MAX_PAYLOAD_BYTES {
            return Err(WireError::PayloadTooLarge {
                len,
                max: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(msg)
    }
}

impl Serialize for StreamMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        match self {
            StreamMessage::Hello(m) => (STREAM_VERSION, kind, m).serialize(serializer),
            StreamMessage::Bitfield(m) => (STREAM_VERSION, kind, m).serialize(serializer),
            StreamMessage::Have(m) => (STREAM_VERSION, kind, m).serialize(serializer),
            StreamMessage::ChunkRequest(m) => (STREAM_VERSION, kind, m).serialize(serializer),
            StreamMessage::ChunkResponse(m) => (STREAM_VERSION, kind, m).serialize(serializer),
            StreamMessage::ChunkMapRequest(m) => (STREAM_VERSION, kind, m).serialize(serializer),
            StreamMessage::ChunkMapResponse(m) => (STREAM_VERSION, kind, m).serialize(serializer),
            StreamMessage::Cancel(m) => (STREAM_VERSION, kind, m).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for StreamMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamMessage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a stream message [version, kind, body]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StreamMessage, A::Error> {
                let version: u64 = next(&mut seq, 0, &self)?;
                if version != STREAM_VERSION {
                    return Err(de::Error::custom(format!(
                        "stream message version {version}"
                    )));
                }
                let kind: u64 = next(&mut seq, 1, &self)?;
                let msg = match kind {
                    0 => StreamMessage::Hello(next(&mut seq, 2, &self)?),
                    1 => StreamMessage::Bitfield(next(&mut seq, 2, &self)?),
                    2 => StreamMessage::Have(next(&mut seq, 2, &self)?),
                    3 => StreamMessage::ChunkRequest(next(&mut seq, 2, &self)?),
                    4 => StreamMessage::ChunkResponse(next(&mut seq, 2, &self)?),
                    5 => StreamMessage::ChunkMapRequest(next(&mut seq, 2, &self)?),
                    6 => StreamMessage::ChunkMapResponse(next(&mut seq, 2, &self)?),
                    7 => StreamMessage::Cancel(next(&mut seq, 2, &self)?),
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown stream message kind {other}"
                        )))
                    }
                };
                end(&mut seq)?;
                Ok(msg)
            }
        }
        deserializer.deserialize_seq(V)
    }
}

/// Encodes `msg` as a frame: the 4-byte big-endian header length, then the
/// header. The caller writes the payload (if `msg.payload_len() > 0`)
/// right after.
///
/// # Panics
/// If the header exceeds [`MAX_HEADER_BYTES`]: a caller bug (a `Hello`
/// listing thousands of blobs, an over-long error text). Use
/// [`try_encode_frame`] to get an error instead.
pub fn encode_frame(msg: &StreamMessage) -> Vec<u8> {
    try_encode_frame(msg).expect("stream message header exceeds MAX_HEADER_BYTES")
}

/// Like [`encode_frame`], but returns [`WireError::HeaderTooLarge`] or
/// [`WireError::PayloadTooLarge`] for a message no peer would accept.
pub fn try_encode_frame(msg: &StreamMessage) -> Result<Vec<u8>, WireError> {
    let header = msg.encode();
    if header.len() > MAX_HEADER_BYTES {
        return Err(WireError::HeaderTooLarge {
            len: header.len() as u64,
            max: MAX_HEADER_BYTES,
        });
    }
    if msg.payload_len() > MAX_PAYLOAD_BYTES {
        return Err(WireError::PayloadTooLarge {
            len: msg.payload_len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let mut frame = Vec::with_capacity(FRAME_PREFIX_BYTES + header.len());
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(&header);
    Ok(frame)
}

/// Interprets a frame's 4-byte length prefix, for callers reading a stream
/// directly: read 4 bytes, call this, read that many header bytes, call
/// [`StreamMessage::decode`], then read `payload_len()` bytes.
pub fn decode_frame_len(prefix: [u8; FRAME_PREFIX_BYTES]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as u64;
    if len > MAX_HEADER_BYTES as u64 {
        return Err(WireError::HeaderTooLarge {
            len,
            max: MAX_HEADER_BYTES,
        });
    }
    Ok(len as usize)
}

/// A decoded frame: the header and its payload (empty when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub message: StreamMessage,
    /// The raw payload, `message.payload_len()` bytes.
    pub payload: Vec<u8>,
}

/// Incremental sans-IO frame decoder: feed it bytes as they arrive with
/// [`push`](Self::push), take complete frames with
/// [`next_frame`](Self::next_frame).
///
/// It buffers at most one incomplete frame plus what the caller pushes;
/// lengths are checked as soon as they are known, before buffering the
/// data they announce. After an error the stream is out of sync and must be
/// closed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Received bytes not yet returned as frames.
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    start: usize,
    /// The header of a frame whose payload is still incomplete.
    pending: Option<StreamMessage>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned in a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are
    /// needed, or an error if the peer sent something invalid.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.pending.is_none() {
            let avail = &self.buf[self.start..];
            if avail.len() < FRAME_PREFIX_BYTES {
                return Ok(None);
            }
            let len = decode_frame_len(avail[..FRAME_PREFIX_BYTES].try_into().expect("4 bytes"))?;
            if avail.len() < FRAME_PREFIX_BYTES + len {
                return Ok(None);
            }
            let message =
                StreamMessage::decode(&avail[FRAME_PREFIX_BYTES..FRAME_PREFIX_BYTES + len])?;
            self.start += FRAME_PREFIX_BYTES + len;
            self.pending = Some(message);
        }
        let need = self
            .pending
            .as_ref()
            .map(StreamMessage::payload_len)
            .unwrap_or(0) as usize;
        if self.buffered() < need {
            return Ok(None);
        }
        let payload = self.buf[self.start..self.start + need].to_vec();
        self.start += need;
        // Compact once the consumed prefix dominates, to keep memory bounded.
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let message = self.pending.take().expect("pending set above");
        Ok(Some(Frame { message, payload }))
    }
}

// ---------------------------------------------------------------------------
// Gossip.

/// What a node holds of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Every chunk (compact for seeds and gateways). `[0]`
    Complete,
    /// These chunks, as a bitfield. `[1, bitfield]`
    Bitfield(Bitfield),
    /// These chunk indices (compact when few are held). `[2, [index*]]`
    Have(Vec<u32>),
}

impl Serialize for Availability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Availability::Complete => (0u64,).serialize(serializer),
            Availability::Bitfield(b) => (1u64, b).serialize(serializer),
            Availability::Have(v) => (2u64, v).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Availability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Availability;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an availability [code, ...]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Availability, A::Error> {
                let code: u64 = next(&mut seq, 0, &self)?;
                let a = match code {
                    0 => Availability::Complete,
                    1 => Availability::Bitfield(next(&mut seq, 1, &self)?),
                    2 => Availability::Have(next(&mut seq, 1, &self)?),
                    other => {
                        return Err(de::Error::custom(format!("unknown availability {other}")))
                    }
                };
                end(&mut seq)?;
                Ok(a)
            }
        }
        deserializer.deserialize_seq(V)
    }
}

cbor_tuple_struct! {
    /// One blob's entry in an [`AvailabilityBatch`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AvailabilityEntry {
        /// The blob.
        pub blob: Digest,
        /// What the sender holds of it.
        pub availability: Availability,
    }
}

cbor_tuple_struct! {
    /// What the sender holds, for several blobs; published periodically and
    /// when chunks complete (batched, so gossip does not carry one message
    /// per chunk).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AvailabilityBatch {
        /// One entry per blob.
        pub entries: Vec<AvailabilityEntry>,
    }
}

/// A node's role in its locality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// An ordinary edge device. Code 0.
    Node,
    /// The node currently pulling from the cloud registry. Code 1.
    Gateway,
    /// A bootstrap/rendezvous node holding no images. Code 2.
    Bootstrap,
}

/// Phase of a release on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseState {
    /// Announcement accepted, nothing fetched. Code 0.
    Announced,
    /// Waiting for the manifest/config/layer list. Code 1.
    Resolving,
    /// Fetching layer chunks. Code 2.
    Fetching,
    /// Layers complete, importing into the runtime. Code 3.
    Importing,
    /// Installed. Code 4.
    Done,
    /// Gave up; see the error. Code 5.
    Failed,
}

/// Serialises a C-like enum as its code and back.
macro_rules! code_enum {
    ($name:ident { $($variant:ident = $code:expr),* $(,)? }) => {
        impl $name {
            /// The code on the wire.
            pub fn code(self) -> u64 {
                match self { $($name::$variant => $code),* }
            }

            /// The value for a wire code, if known.
            pub fn from_code(code: u64) -> Option<Self> {
                match code { $($code => Some($name::$variant),)* _ => None }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_u64(self.code())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let code = u64::deserialize(deserializer)?;
                $name::from_code(code).ok_or_else(|| {
                    de::Error::custom(format!(concat!("unknown ", stringify!($name), " code {}"), code))
                })
            }
        }
    };
}

code_enum!(PeerRole {
    Node = 0,
    Gateway = 1,
    Bootstrap = 2
});
code_enum!(ReleaseState {
    Announced = 0,
    Resolving = 1,
    Fetching = 2,
    Importing = 3,
    Done = 4,
    Failed = 5
});

cbor_tuple_struct! {
    /// Progress of one release on the reporting node.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ReleaseProgress {
        /// The release.
        pub release_id: Digest,
        /// Its phase.
        pub state: ReleaseState,
        /// Bytes of all layers to fetch.
        pub bytes_total: u64,
        /// Bytes verified so far.
        pub bytes_done: u64,
        /// Of those, fetched from the cloud registry (gateway only).
        pub bytes_from_cloud: u64,
        /// Of those, fetched from peers.
        pub bytes_from_peers: u64,
        /// Why the release failed, at most [`MAX_MESSAGE_CHARS`].
        pub error: Option<String>,
    }
}

cbor_tuple_struct! {
    /// A node's periodic status report; the operator CLI aggregates these
    /// to answer "is P2P even working?".
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NodeStatus {
        /// The node's role.
        pub role: PeerRole,
        /// Whether the node can reach the registry and act as gateway.
        pub gateway_capable: bool,
        /// The sender's clock at sending, unix milliseconds (ordering only).
        pub timestamp_ms: u64,
        /// One entry per release the node is working on or has done.
        pub releases: Vec<ReleaseProgress>,
    }
}

/// Chunk digests of a blob as the gateway learns them while the blob
/// streams in from the registry; signed by the gateway.
///
/// Digests for `first_index..first_index + digests.len()`. Until
/// `final_blob_digest_checked`, they are only as good as the gateway's
/// word; once the gateway has hashed the whole blob and it matched the
/// OCI digest, it may republish with the flag set.
///
/// Encoded as `[release_id / null, blob, blob_size, chunk_size,
/// first_index, digests: bytes(32 * n), final_blob_digest_checked]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkDigestUpdate {
    /// The release this blob belongs to, when known (for progress).
    pub release_id: Option<Digest>,
    /// The blob (its OCI digest).
    pub blob: Digest,
    /// The blob's size from the manifest.
    pub blob_size: u64,
    /// The chunk size the gateway cuts this blob in.
    pub chunk_size: ChunkSize,
    /// Index of the first digest.
    pub first_index: u32,
    /// Consecutive chunk digests, at most [`MAX_DIGESTS_PER_UPDATE`].
    pub digests: Vec<Digest>,
    /// Whether the whole blob was hashed and matched `blob`.
    pub final_blob_digest_checked: bool,
}

impl Serialize for ChunkDigestUpdate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            &self.release_id,
            &self.blob,
            self.blob_size,
            self.chunk_size,
            self.first_index,
            DigestList(self.digests.clone()),
            self.final_blob_digest_checked,
        )
            .serialize(serializer)
    }
}

/// Wire shape of [`ChunkDigestUpdate`].
type WireChunkDigestUpdate = (
    Option<Digest>,
    Digest,
    u64,
    ChunkSize,
    u32,
    DigestList,
    bool,
);

impl<'de> Deserialize<'de> for ChunkDigestUpdate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (
            release_id,
            blob,
            blob_size,
            chunk_size,
            first_index,
            digests,
            final_blob_digest_checked,
        ): WireChunkDigestUpdate = Deserialize::deserialize(deserializer)?;
        Ok(ChunkDigestUpdate {
            release_id,
            blob,
            blob_size,
            chunk_size,
            first_index,
            digests: digests.0,
            final_blob_digest_checked,
        })
    }
}

impl ChunkDigestUpdate {
    /// Checks the fields against each other: the range fits the blob and
    /// the batch is not too large.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            what: "chunk digest update",
            reason,
        };
        if self.digests.len() > MAX_DIGESTS_PER_UPDATE {
            return Err(invalid(format!(
                "{} digests, at most {MAX_DIGESTS_PER_UPDATE}",
                self.digests.len()
            )));
        }
        let count = chunk_count(self.blob_size, self.chunk_size);
        let end = self.first_index as u64 + self.digests.len() as u64;
        if end > count {
            return Err(invalid(format!(
                "digests up to index {end} but the blob has {count} chunks"
            )));
        }
        Ok(())
    }
}

impl Signable for ChunkDigestUpdate {
    const CONTEXT: &'static [u8] = b"edgeswarm-chunk-digests-v1\0";
    const WHAT: &'static str = "chunk digest update";
}

cbor_tuple_struct! {
    /// A blob named by an image manifest.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub struct BlobDescriptor {
        /// Its digest.
        pub digest: Digest,
        /// Its size in bytes.
        pub size: u64,
        /// Its OCI media type (selects the decompressor).
        pub media_type: String,
    }
}

cbor_tuple_struct! {
    /// What a release's manifest resolves to, as read by the gateway from
    /// the registry; signed by the gateway so nodes without registry access
    /// can start fetching layers. A node with the manifest bytes can check
    /// it independently (their digest is signed by the publisher).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ReleaseResolution {
        /// The release.
        pub release_id: Digest,
        /// The manifest (digest as in the release).
        pub manifest: BlobDescriptor,
        /// The image config.
        pub config: BlobDescriptor,
        /// The layers in manifest order.
        pub layers: Vec<BlobDescriptor>,
        /// The chunk size the gateway uses for the layers.
        pub chunk_size: ChunkSize,
    }
}

impl Signable for ReleaseResolution {
    const CONTEXT: &'static [u8] = b"edgeswarm-release-resolution-v1\0";
    const WHAT: &'static str = "release resolution";
}

/// A gateway-signed [`ChunkDigestUpdate`].
pub type SignedChunkDigestUpdate = Signed<ChunkDigestUpdate>;

/// A gateway-signed [`ReleaseResolution`].
pub type SignedReleaseResolution = Signed<ReleaseResolution>;

/// One gossip message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipMessage {
    /// Kind 0: a publisher-signed release announcement.
    Release(SignedRelease),
    /// Kind 1: chunk availability.
    Availability(AvailabilityBatch),
    /// Kind 2: node status.
    Status(NodeStatus),
    /// Kind 3: gateway-signed chunk digests.
    ChunkDigests(SignedChunkDigestUpdate),
    /// Kind 4: gateway-signed release resolution.
    Resolution(SignedReleaseResolution),
    /// Kind 5: a publisher-signed removal request.
    Removal(SignedRemoval),
}

/// Number of gossip message kinds.
const GOSSIP_KINDS: u64 = 6;

impl GossipMessage {
    /// The kind number on the wire.
    pub fn kind(&self) -> u64 {
        match self {
            GossipMessage::Release(_) => 0,
            GossipMessage::Availability(_) => 1,
            GossipMessage::Status(_) => 2,
            GossipMessage::ChunkDigests(_) => 3,
            GossipMessage::Resolution(_) => 4,
            GossipMessage::Removal(_) => 5,
        }
    }

    /// Canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes a gossip message, bounded by [`MAX_GOSSIP_BYTES`], and
    /// checks field consistency. Signatures are *not* verified here (that
    /// needs the node's trust policy): call `verify_*` on signed bodies.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "gossip message";
        precheck_envelope(WHAT, bytes, MAX_GOSSIP_BYTES, GOSSIP_VERSION, GOSSIP_KINDS)?;
        let msg: GossipMessage = encoding::decode(WHAT, bytes, MAX_GOSSIP_BYTES)?;
        if let GossipMessage::ChunkDigests(signed) = &msg {
            signed.body_unverified().validate()?;
        }
        Ok(msg)
    }
}

impl Serialize for GossipMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        match self {
            GossipMessage::Release(m) => (GOSSIP_VERSION, kind, m).serialize(serializer),
            GossipMessage::Availability(m) => (GOSSIP_VERSION, kind, m).serialize(serializer),
            GossipMessage::Status(m) => (GOSSIP_VERSION, kind, m).serialize(serializer),
            GossipMessage::ChunkDigests(m) => (GOSSIP_VERSION, kind, m).serialize(serializer),
            GossipMessage::Resolution(m) => (GOSSIP_VERSION, kind, m).serialize(serializer),
            GossipMessage::Removal(m) => (GOSSIP_VERSION, kind, m).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for GossipMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = GossipMessage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gossip message [version, kind, body]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GossipMessage, A::Error> {
                let version: u64 = next(&mut seq, 0, &self)?;
                if version != GOSSIP_VERSION {
                    return Err(de::Error::custom(format!(
                        "gossip message version {version}"
                    )));
                }
                let kind: u64 = next(&mut seq, 1, &self)?;
                let msg = match kind {
                    0 => GossipMessage::Release(next(&mut seq, 2, &self)?),
                    1 => GossipMessage::Availability(next(&mut seq, 2, &self)?),
                    2 => GossipMessage::Status(next(&mut seq, 2, &self)?),
                    3 => GossipMessage::ChunkDigests(next(&mut seq, 2, &self)?),
                    4 => GossipMessage::Resolution(next(&mut seq, 2, &self)?),
                    5 => GossipMessage::Removal(next(&mut seq, 2, &self)?),
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown gossip message kind {other}"
                        )))
                    }
                };
                end(&mut seq)?;
                Ok(msg)
            }
        }
        deserializer.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_with_payload() {
        let blob = Digest::of(b"blob");
        let msgs = [
            StreamMessage::Hello(Hello {
                protocol_version: STREAM_VERSION,
                blobs: vec![blob],
            }),
            StreamMessage::ChunkResponse(ChunkResponse {
                request_id: 7,
                status: ChunkStatus::Ok { len: 5 },
            }),
        ];
        let mut bytes = encode_frame(&msgs[0]);
        bytes.extend(encode_frame(&msgs[1]));
        bytes.extend_from_slice(b"hello");
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in &bytes {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].message, msgs[0]);
        assert!(frames[0].payload.is_empty());
        assert_eq!(frames[1].message, msgs[1]);
        assert_eq!(frames[1].payload, b"hello");
        assert_eq!(dec.buffered(), 0);
    }
}
