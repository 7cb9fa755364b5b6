//! Gossip: one message per gossipsub publish, at most [`MAX_GOSSIP_BYTES`].
//!
//! ```text
//! GossipMessage = [1, kind: uint, body]
//! ```
//!
//! | kind | body | topic |
//! |---|---|---|
//! | 0 | [`crate::release::SignedRelease`] | releases |
//! | 1 | [`AvailabilityBatch`] `[[[blob, availability]*]]` | availability |
//! | 2 | [`NodeStatus`] `[role, gateway_capable, timestamp_ms, [progress*], desired?]` | status |
//! | 3 | signed [`ChunkDigestUpdate`] `[1, update, signer, signature]` | releases |
//! | 4 | signed [`ReleaseResolution`] `[1, resolution, signer, signature]` | releases |
//! | 5 | [`crate::release::SignedRemoval`] | releases |
//!
//! Each kind travels on exactly one [`Topic`] ([`GossipMessage::topic`]);
//! a receiver refuses a message on any other ([`GossipMessage::decode_on`]).
//! The signed messages (kinds 0, 3, 4, 5) share the releases topic; the
//! periodic reports that replace their sender's previous one (kinds 1, 2)
//! have a topic each.
//!
//! The two gateway messages are signed with the gateway's ed25519 libp2p
//! identity key (see [`crate::signing::Signed`]); the signer's public key
//! identifies the gateway (its libp2p `PeerId` derives from it).

use super::*;

/// Format version of [`GossipMessage`].
pub const GOSSIP_VERSION: u64 = 1;

/// Largest gossip message: 64 KiB, gossipsub's default maximum.
pub const MAX_GOSSIP_BYTES: usize = 64 << 10;

/// Most digests in one [`ChunkDigestUpdate`] (32 KiB of digests, so a
/// signed update fits a gossip message with room to spare).
pub const MAX_DIGESTS_PER_UPDATE: usize = 1024;

const _: () = assert!(MAX_RELEASE_BYTES < MAX_GOSSIP_BYTES);
const _: () = assert!(MAX_REMOVAL_BYTES < MAX_GOSSIP_BYTES);

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

/// Progress of one release on the reporting node.
///
/// Encoded as `[release_id, state, bytes_total, bytes_done,
/// bytes_from_cloud, bytes_from_peers, error / null]`, with an eighth
/// element, `waiting`, only while the sender has a reason to report (nodes
/// before it send seven, and so does every node whose release is not
/// waiting).
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
    /// Why the release is waiting, while it is (a gateway retrying its
    /// registry pull: the cause, the attempt, the next one's delay), at
    /// most [`MAX_MESSAGE_CHARS`]. Not a failure.
    pub waiting: Option<String>,
}

impl Serialize for ReleaseProgress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = if self.waiting.is_some() { 8 } else { 7 };
        let mut t = serializer.serialize_tuple(len)?;
        t.serialize_element(&self.release_id)?;
        t.serialize_element(&self.state)?;
        t.serialize_element(&self.bytes_total)?;
        t.serialize_element(&self.bytes_done)?;
        t.serialize_element(&self.bytes_from_cloud)?;
        t.serialize_element(&self.bytes_from_peers)?;
        t.serialize_element(&self.error)?;
        if let Some(w) = &self.waiting {
            t.serialize_element(w)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for ReleaseProgress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReleaseProgress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a release progress [release_id, state, bytes_total, bytes_done, \
                     bytes_from_cloud, bytes_from_peers, error, waiting?]",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ReleaseProgress, A::Error> {
                let release_id = next(&mut seq, 0, &self)?;
                let state = next(&mut seq, 1, &self)?;
                let bytes_total = next(&mut seq, 2, &self)?;
                let bytes_done = next(&mut seq, 3, &self)?;
                let bytes_from_cloud = next(&mut seq, 4, &self)?;
                let bytes_from_peers = next(&mut seq, 5, &self)?;
                let error = next(&mut seq, 6, &self)?;
                // Present only when set: a null here would not re-encode
                // to the same bytes.
                let waiting: Option<String> = seq.next_element()?;
                end(&mut seq)?;
                Ok(ReleaseProgress {
                    release_id,
                    state,
                    bytes_total,
                    bytes_done,
                    bytes_from_cloud,
                    bytes_from_peers,
                    error,
                    waiting,
                })
            }
        }
        deserializer.deserialize_seq(V)
    }
}

cbor_tuple_struct! {
    /// A compact summary of a node's desired state (the newest release or
    /// removal it holds per image): nodes whose digests differ exchange the
    /// signed messages (anti-entropy).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DesiredDigest {
        /// Images in the desired state.
        pub count: u64,
        /// sha256 over the sorted `(image, signer, seq)` entries (how it is
        /// computed is the node's business: only equality matters).
        pub hash: Digest,
    }
}

/// A node's periodic status report; the operator CLI aggregates these
/// to answer "is P2P even working?".
///
/// Encoded as `[role, gateway_capable, timestamp_ms, [progress*]]`, with a
/// fifth element, the [`DesiredDigest`], when the sender has one (nodes
/// before anti-entropy send four).
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
    /// The sender's desired-state digest.
    pub desired: Option<DesiredDigest>,
}

impl Serialize for NodeStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let head = (
            &self.role,
            self.gateway_capable,
            self.timestamp_ms,
            &self.releases,
        );
        match &self.desired {
            None => head.serialize(serializer),
            Some(d) => (head.0, head.1, head.2, head.3, d).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for NodeStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeStatus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a node status [role, gateway_capable, timestamp_ms, releases, desired?]",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeStatus, A::Error> {
                let role = next(&mut seq, 0, &self)?;
                let gateway_capable = next(&mut seq, 1, &self)?;
                let timestamp_ms = next(&mut seq, 2, &self)?;
                let releases = next(&mut seq, 3, &self)?;
                let desired = seq.next_element()?;
                end(&mut seq)?;
                Ok(NodeStatus {
                    role,
                    gateway_capable,
                    timestamp_ms,
                    releases,
                    desired,
                })
            }
        }
        deserializer.deserialize_seq(V)
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

    /// The one topic this kind of message travels on.
    pub fn topic(&self) -> Topic {
        match self {
            GossipMessage::Release(_)
            | GossipMessage::ChunkDigests(_)
            | GossipMessage::Resolution(_)
            | GossipMessage::Removal(_) => Topic::Releases,
            GossipMessage::Availability(_) => Topic::Availability,
            GossipMessage::Status(_) => Topic::Status,
        }
    }

    /// Canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes a message received on `topic`, like [`Self::decode`], and
    /// refuses it with [`WireError::WrongTopic`] unless its kind travels on
    /// that topic.
    pub fn decode_on(topic: Topic, bytes: &[u8]) -> Result<Self, WireError> {
        let msg = Self::decode(bytes)?;
        if msg.topic() != topic {
            return Err(WireError::WrongTopic {
                kind: msg.kind(),
                topic,
            });
        }
        Ok(msg)
    }

    /// Decodes a gossip message, bounded by [`MAX_GOSSIP_BYTES`], and
    /// checks field consistency: a signed release or removal is bounded as
    /// when decoded alone ([`MAX_RELEASE_BYTES`], [`MAX_REMOVAL_BYTES`]),
    /// chunk digests must fit their blob. Signatures are *not* verified
    /// here (that needs the node's trust policy): call `verify_*` on signed
    /// bodies.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "gossip message";
        precheck_envelope(WHAT, bytes, MAX_GOSSIP_BYTES, GOSSIP_VERSION, GOSSIP_KINDS)?;
        let msg: GossipMessage = encoding::decode(WHAT, bytes, MAX_GOSSIP_BYTES)?;
        let bounded = |what: &'static str, len: usize, max: usize| {
            if len > max {
                Err(DecodeError::TooLarge { what, len, max })
            } else {
                Ok(())
            }
        };
        match &msg {
            GossipMessage::ChunkDigests(signed) => signed.body_unverified().validate()?,
            GossipMessage::Release(signed) => {
                bounded("signed release", signed.encode().len(), MAX_RELEASE_BYTES)?
            }
            GossipMessage::Removal(signed) => {
                bounded("signed removal", signed.encode().len(), MAX_REMOVAL_BYTES)?
            }
            _ => {}
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
