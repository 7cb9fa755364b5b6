//! The chunk-exchange stream protocol, spoken over `libp2p-stream` under
//! the name [`stream_protocol`] of the locality.
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
//! | 8 | [`Relaying`] `[blob, [index*]]` | the sender is receiving these chunks and relays them as they arrive |
//!
//! `status` is `[0, payload_len]` (Ok), `[1]` (NotHave), `[2]` (Busy: try
//! later or elsewhere), `[3, message: text]` (Error), `[4]` (TryElsewhere:
//! a seed sparing its upload for a chunk it sent very recently), `[5, len]`
//! (Relay: a chunk of `len` bytes follows in relay pieces, and may be
//! aborted).
//!
//! ## Cut-through relay
//!
//! A node receiving a chunk can pass it on while it arrives, so a chunk
//! crosses a relay tree in about one chunk time rather than one per hop.
//! Only peers whose `Hello` says [`HELLO_VERSION_RELAY`] or later are sent
//! [`Relaying`] or a `Relay` answer. After a `Relay` header come relay
//! pieces, each `n: u32 big-endian` then `n` raw bytes (1 ≤ `n` ≤
//! [`MAX_RELAY_PIECE`], never past `len`), until `len` bytes have come; or
//! the 4 bytes of [`RELAY_ABORT`], after which the answer is over without
//! the chunk (the relay lost its source or its copy failed verification,
//! or the requester had sent [`Cancel`] for it).
//!
//! A responder may also answer such a peer with `Relay` for a chunk it
//! holds, so that a [`Cancel`] arriving while the answer is under way stops
//! it at the next piece rather than after the whole chunk (an endgame
//! duplicate otherwise crossed the requester's link whole).
//! A relay sends the last byte of a chunk only after its own copy
//! verified, so a complete relayed chunk that fails verification is the
//! relay's fault, and the receiver bans it as it would any sender.
//!
//! A blob no larger than its chunk size is a single chunk whose digest is
//! the blob digest, so small blobs (manifests, configs) can be fetched with
//! a [`ChunkRequest`] for index 0 and verified without a chunk map.

use super::*;

/// Format version of [`StreamMessage`] frames.
pub const STREAM_VERSION: u64 = 1;

/// Largest CBOR header of a stream frame: 64 KiB (a bitfield of the
/// largest blob, 131 072 chunks, is 16 KiB).
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// The `Hello.protocol_version` from which a peer understands [`Relaying`]
/// and `Relay` answers (1: the exchange without cut-through). The frame
/// envelope keeps [`STREAM_VERSION`], so older peers still parse every
/// frame they are sent.
pub const HELLO_VERSION_RELAY: u64 = 2;

/// The `Hello.protocol_version` this implementation sends.
pub const HELLO_VERSION: u64 = HELLO_VERSION_RELAY;

/// Largest relay piece: a bound on what a receiver reads before it checks
/// the next piece header.
pub const MAX_RELAY_PIECE: u32 = 1 << 20;

/// The relay piece length that ends a `Relay` answer without the chunk.
pub const RELAY_ABORT: u32 = u32::MAX;

/// Largest raw payload after a header: the largest chunk size, 16 MiB
/// (also larger than any encoded chunk map).
pub const MAX_PAYLOAD_BYTES: u64 = ChunkSize::MAX.get() as u64;

/// Length of the big-endian frame length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

const _: () = assert!(MAX_PAYLOAD_BYTES >= MAX_CHUNK_MAP_BYTES as u64);

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
    /// The sender is receiving these chunks (their answers have begun) and
    /// serves them as they arrive, as `Relay` answers: a receiver may
    /// request them as if they were held. Not a claim of verified data; a
    /// [`Have`] follows once they verify.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Relaying {
        /// The blob.
        pub blob: Digest,
        /// The chunk indices, at most [`MAX_HAVE_BATCH`].
        pub indices: Vec<u32>,
    }
}

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
    /// `len` bytes follow in relay pieces (see the module docs), or an
    /// abort: a chunk the responder is still receiving and relays, or one
    /// it holds, sent so that a `Cancel` can stop it.
    Relay {
        /// The chunk's length in bytes.
        len: u64,
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
            ChunkStatus::Relay { len } => (5u64, len).serialize(serializer),
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
                    5 => ChunkStatus::Relay {
                        len: next(&mut seq, 1, &self)?,
                    },
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
    /// Kind 8.
    Relaying(Relaying),
}

/// Number of stream message kinds.
const STREAM_KINDS: u64 = 9;

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
            StreamMessage::Relaying(_) => 8,
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

    /// The chunk length a `Relay` answer announces (its bytes follow in
    /// relay pieces, not as a payload).
    pub fn relayed_len(&self) -> Option<u64> {
        match self {
            StreamMessage::ChunkResponse(ChunkResponse {
                status: ChunkStatus::Relay { len },
                ..
            }) => Some(*len),
            _ => None,
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
        let listed = match &msg {
            StreamMessage::Have(Have { indices, .. })
            | StreamMessage::Relaying(Relaying { indices, .. }) => indices.len(),
            _ => 0,
        };
        if listed > MAX_HAVE_BATCH {
            return Err(DecodeError::Invalid {
                what: WHAT,
                reason: format!("{listed} chunk indices, at most {MAX_HAVE_BATCH}"),
            }
            .into());
        }
        let len = msg.payload_len().max(msg.relayed_len().unwrap_or(0));
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
            StreamMessage::Relaying(m) => (STREAM_VERSION, kind, m).serialize(serializer),
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
                    8 => StreamMessage::Relaying(next(&mut seq, 2, &self)?),
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
    let len = msg.payload_len().max(msg.relayed_len().unwrap_or(0));
    if len > MAX_PAYLOAD_BYTES {
        return Err(WireError::PayloadTooLarge {
            len,
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
    /// The raw payload, `message.payload_len()` bytes; for a `Relay`
    /// answer, the relayed chunk joined from its pieces (empty if aborted).
    pub payload: Vec<u8>,
    /// A `Relay` answer that ended with [`RELAY_ABORT`] instead of the chunk.
    pub relay_aborted: bool,
}

/// Checks a relay piece header against what the chunk has left: `Ok(None)`
/// for an abort, the piece length otherwise.
pub fn check_relay_piece(prefix: [u8; 4], left: u64) -> Result<Option<u32>, WireError> {
    let len = u32::from_be_bytes(prefix);
    if len == RELAY_ABORT {
        return Ok(None);
    }
    if len == 0 || len > MAX_RELAY_PIECE || u64::from(len) > left {
        return Err(WireError::BadRelayPiece { len, left });
    }
    Ok(Some(len))
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
    /// The pieces of a `Relay` answer joined so far, and the bytes left.
    relayed: Option<(Vec<u8>, u64)>,
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
            if let Some(len) = message.relayed_len() {
                self.relayed = Some((Vec::new(), len));
            }
            self.pending = Some(message);
        }
        let (payload, relay_aborted) = match self.relayed.take() {
            Some((mut joined, mut left)) => {
                let mut aborted = false;
                while left > 0 {
                    let avail = &self.buf[self.start..];
                    if avail.len() < 4 {
                        break;
                    }
                    let Some(n) = check_relay_piece(avail[..4].try_into().expect("4 bytes"), left)?
                    else {
                        self.start += 4;
                        aborted = true;
                        joined.clear();
                        break;
                    };
                    if avail.len() < 4 + n as usize {
                        break;
                    }
                    joined.extend_from_slice(&avail[4..4 + n as usize]);
                    self.start += 4 + n as usize;
                    left -= u64::from(n);
                }
                if left > 0 && !aborted {
                    self.relayed = Some((joined, left));
                    return Ok(None);
                }
                (joined, aborted)
            }
            None => {
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
                (payload, false)
            }
        };
        // Compact once the consumed prefix dominates, to keep memory bounded.
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let message = self.pending.take().expect("pending set above");
        Ok(Some(Frame {
            message,
            payload,
            relay_aborted,
        }))
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
