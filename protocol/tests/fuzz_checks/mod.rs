//! The properties the fuzz targets check, one function per target, shared
//! by the cargo-fuzz targets (`protocol/fuzz/fuzz_targets/*.rs`, nightly)
//! and their stable proptest equivalents (`tests/fuzz.rs`), so both drive
//! the same decoders with the same assertions.
//!
//! Each function takes arbitrary bytes. Decoders must return errors, never
//! panic, never allocate more than their limits allow, and whatever they
//! accept must be the canonical encoding of what they return.

// Each fuzz target uses one of these.
#![allow(dead_code)]

use edgeswarm_protocol::release::{Platform, SignedRelease, SignedRemoval, MAX_REMOVAL_BYTES};
use edgeswarm_protocol::signing::{PublicKey, PublisherKey};
use edgeswarm_protocol::wire::{
    check_relay_piece, decode_frame_len, topic_name, FrameDecoder, GossipMessage, Locality,
    SealedGossip, StreamMessage, Topic, WireError, FRAME_PREFIX_BYTES, MAX_GOSSIP_BYTES,
    MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES,
};
use edgeswarm_protocol::{encoding, Bitfield, ChunkMap};

/// Sealed gossip: errors, never panics; what decodes is canonical with a
/// bounded body; opening a seal on any topic returns, and the body goes
/// through the gossip message checks.
pub(crate) fn sealed_gossip(data: &[u8]) {
    let Ok(sealed) = SealedGossip::decode(data) else {
        return;
    };
    assert_eq!(sealed.encode(), data, "decoded input must be canonical");
    assert!(sealed.body.len() <= MAX_GOSSIP_BYTES);
    let locality = Locality::new("lab").expect("valid locality");
    let opened: Vec<bool> = Topic::ALL
        .into_iter()
        .map(|t| sealed.open(&topic_name(&locality, t)).is_ok())
        .collect();
    // A seal covers one topic: it cannot open on two.
    assert!(opened.iter().filter(|o| **o).count() <= 1);
    gossip_message(&sealed.body);
}

/// Chunk maps and bitfields.
pub(crate) fn chunk_map(data: &[u8]) {
    if let Ok(map) = ChunkMap::decode(data) {
        assert_eq!(map.encode(), data, "decoded input must be canonical");
    }
    let _ = encoding::decode::<Bitfield>("bitfield", data, 1 << 16);
}

/// Stream frame headers.
pub(crate) fn stream_message(data: &[u8]) {
    if let Ok(msg) = StreamMessage::decode(data) {
        assert_eq!(msg.encode(), data, "decoded input must be canonical");
        assert!(msg.payload_len() <= MAX_PAYLOAD_BYTES);
    }
}

/// A frame read by the node's receiver, with its payload.
type NodeFrame<'a> = (StreamMessage, std::borrow::Cow<'a, [u8]>);

/// How a read of a whole byte stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The bytes ran out (possibly in the middle of a frame).
    Eof,
    /// The peer broke the protocol: the node drops the stream and bans it.
    Violation,
}

/// Reads `stream` frame by frame the way the node does
/// (`node/src/swarm/frame.rs` `read_message`, then the caller reads
/// exactly `payload_len()` bytes into a buffer of the size it expects):
/// 4 prefix bytes, [`decode_frame_len`], that many header bytes,
/// [`StreamMessage::decode`], the payload. Asserts that nothing is
/// allocated before its length was checked against its limit.
fn read_like_the_node(mut stream: &[u8]) -> (Vec<NodeFrame<'_>>, End) {
    let mut frames = Vec::new();
    loop {
        let Some((prefix, rest)) = stream.split_first_chunk::<FRAME_PREFIX_BYTES>() else {
            return (frames, End::Eof);
        };
        let len = match decode_frame_len(*prefix) {
            Ok(len) => len,
            Err(_) => return (frames, End::Violation),
        };
        // The node allocates the header buffer only now.
        assert!(len <= MAX_HEADER_BYTES);
        let Some((header, rest)) = rest.split_at_checked(len) else {
            return (frames, End::Eof);
        };
        let message = match StreamMessage::decode(header) {
            Ok(m) => m,
            Err(_) => return (frames, End::Violation),
        };
        if let Some(mut left) = message.relayed_len() {
            // A `Relay` answer: its chunk follows in length-prefixed
            // pieces, or ends early with the abort marker (the node's
            // session reads it so; the payload is then empty).
            let mut joined = Vec::new();
            let mut rest = rest;
            while left > 0 {
                let Some((piece, after)) = rest.split_first_chunk::<4>() else {
                    return (frames, End::Eof);
                };
                let n = match check_relay_piece(*piece, left) {
                    Ok(Some(n)) => n,
                    Ok(None) => {
                        joined.clear();
                        rest = after;
                        break;
                    }
                    Err(_) => return (frames, End::Violation),
                };
                let Some((bytes, after)) = after.split_at_checked(n as usize) else {
                    return (frames, End::Eof);
                };
                joined.extend_from_slice(bytes);
                left -= u64::from(n);
                rest = after;
            }
            frames.push((message, std::borrow::Cow::Owned(joined)));
            stream = rest;
            continue;
        }
        let payload_len = message.payload_len();
        // The payload buffer is at most one chunk.
        assert!(payload_len <= MAX_PAYLOAD_BYTES);
        let Some((payload, rest)) = rest.split_at_checked(payload_len as usize) else {
            return (frames, End::Eof);
        };
        frames.push((message, std::borrow::Cow::Borrowed(payload)));
        stream = rest;
    }
}

/// A chunk stream as the node reads it, and the sans-IO [`FrameDecoder`]
/// fed the same bytes in pieces of the first byte's size: both accept the
/// same frames, in order, and refuse at the same frame; the decoder never
/// buffers more than one maximal frame plus the last piece.
pub(crate) fn frame_reader(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = step.max(1) as usize;
    let (node_frames, node_end) = read_like_the_node(stream);

    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut end = End::Eof;
    'feed: for piece in stream.chunks(step) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert_eq!(frame.payload.len() as u64, frame.message.payload_len());
                    assert!(frame.message.payload_len() <= MAX_PAYLOAD_BYTES);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => {
                    end = End::Violation;
                    break 'feed;
                }
            }
        }
        assert!(
            dec.buffered()
                <= FRAME_PREFIX_BYTES + MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES as usize + step,
            "decoder buffered {} bytes",
            dec.buffered()
        );
    }
    assert_eq!(
        end, node_end,
        "the decoders disagree on where the stream breaks"
    );
    assert_eq!(frames.len(), node_frames.len());
    for (f, (message, payload)) in frames.iter().zip(&node_frames) {
        assert_eq!(&f.message, message);
        assert_eq!(f.payload.as_slice(), payload.as_ref());
    }
}

/// Gossip messages: canonical, accepted only on their kind's topic, and
/// their signatures check without panics.
pub(crate) fn gossip_message(data: &[u8]) {
    let Ok(msg) = GossipMessage::decode(data) else {
        for topic in Topic::ALL {
            assert!(GossipMessage::decode_on(topic, data).is_err());
        }
        return;
    };
    assert_eq!(msg.encode(), data, "decoded input must be canonical");
    for topic in Topic::ALL {
        let on = GossipMessage::decode_on(topic, data);
        if topic == msg.topic() {
            assert_eq!(on.as_ref(), Ok(&msg));
        } else {
            assert_eq!(
                on,
                Err(WireError::WrongTopic {
                    kind: msg.kind(),
                    topic
                })
            );
        }
    }
    match &msg {
        GossipMessage::Release(s) => drop(s.verify_embedded()),
        GossipMessage::ChunkDigests(s) => drop(s.verify_embedded()),
        GossipMessage::Resolution(s) => drop(s.verify_embedded()),
        GossipMessage::Removal(s) => {
            assert!(s.encode().len() <= MAX_REMOVAL_BYTES);
            drop(s.verify_embedded())
        }
        GossipMessage::Availability(_) | GossipMessage::Status(_) => {}
    }
}

/// Signed releases and removals, decoded alone (the node's API).
pub(crate) fn signed_messages(data: &[u8]) {
    if let Ok(signed) = SignedRelease::decode(data) {
        assert_eq!(signed.encode(), data, "decoded input must be canonical");
        let _ = signed.verify_embedded();
        let _ = signed.release_id();
    }
    if let Ok(signed) = SignedRemoval::decode(data) {
        assert_eq!(signed.encode(), data, "decoded input must be canonical");
        assert!(data.len() <= MAX_REMOVAL_BYTES);
        let _ = signed.verify_embedded();
    }
}

/// Text parsers: key files, platforms, locality names.
pub(crate) fn text_parsers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = PublisherKey::from_file_contents(text) {
        let again = PublisherKey::from_file_contents(&key.to_file_contents()).unwrap();
        assert_eq!(again.public(), key.public());
    }
    if let Ok(key) = PublicKey::from_file_contents(text) {
        assert_eq!(
            PublicKey::from_file_contents(&key.to_file_contents()),
            Ok(key)
        );
    }
    if let Ok(platform) = Platform::parse(text) {
        assert_eq!(Platform::parse(&platform.to_string()), Ok(platform));
    }
    if let Ok(locality) = Locality::new(text) {
        assert_eq!(locality.as_str(), text);
        assert!(!text.contains('/'));
    }
}
