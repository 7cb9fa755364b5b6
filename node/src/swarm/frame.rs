//! Framing of the chunk-exchange stream protocol (`wire::stream_protocol`,
//! `/edgeswarm/<locality>/chunks/1.0.0`): the frames of
//! `edgeswarm_protocol::wire` (u32 big-endian header length, canonical CBOR
//! `StreamMessage` header of at most 64 KiB, then the raw payload the
//! header announces) read and written on async streams. Every decoding rule
//! is the protocol crate's (`wire::decode_frame_len`,
//! `StreamMessage::decode`); this module only moves bytes.
//!
//! Payloads are never buffered here: the caller reads exactly
//! `payload_len()` bytes into a buffer of the size it expects (a chunk's
//! length from its chunk map), so a peer cannot make us allocate more
//! than one chunk per stream.

use edgeswarm_protocol::wire::{self, StreamMessage};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// A protocol violation or transport failure on a chunk stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The stream failed or closed.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Violation(String),
}

impl FrameError {
    pub(crate) fn violation(s: impl Into<String>) -> Self {
        FrameError::Violation(s.into())
    }
    /// Whether the peer misbehaved (as opposed to the connection dropping).
    pub(crate) fn is_violation(&self) -> bool {
        matches!(self, FrameError::Violation(_))
    }
}

impl From<wire::WireError> for FrameError {
    fn from(e: wire::WireError) -> Self {
        FrameError::Violation(e.to_string())
    }
}

/// Reads one frame header. The caller then reads `payload_len()` bytes.
pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<StreamMessage, FrameError> {
    let mut prefix = [0u8; wire::FRAME_PREFIX_BYTES];
    r.read_exact(&mut prefix).await?;
    let len = wire::decode_frame_len(prefix)?;
    let mut header = vec![0u8; len];
    r.read_exact(&mut header).await?;
    Ok(StreamMessage::decode(&header)?)
}

/// Writes one frame: header, then `payload` (whose length the header must
/// announce).
pub(crate) async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &StreamMessage,
    payload: &[u8],
) -> Result<(), FrameError> {
    debug_assert_eq!(msg.payload_len(), payload.len() as u64);
    let frame = wire::try_encode_frame(msg)?;
    w.write_all(&frame).await?;
    if !payload.is_empty() {
        w.write_all(payload).await?;
    }
    Ok(())
}

/// Writes `msg`'s frame only; the caller writes its `payload_len()` bytes
/// of payload next (paced uploads write it piece by piece).
pub(crate) async fn write_head<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &StreamMessage,
) -> Result<(), FrameError> {
    let frame = wire::try_encode_frame(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeswarm_protocol::wire::{ChunkRequest, Hello};
    use edgeswarm_protocol::Digest;

    #[test]
    fn oversize_truncated_and_garbage_frames_are_refused() {
        futures::executor::block_on(async {
            let mut big: &[u8] = &[0xff, 0xff, 0xff, 0xff, 3];
            assert!(read_message(&mut big).await.unwrap_err().is_violation());
            let mut junk: &[u8] = &[0, 0, 0, 3, 0xff, 0x00, 0x13];
            assert!(read_message(&mut junk).await.unwrap_err().is_violation());
            let mut ok: Vec<u8> = Vec::new();
            let req = StreamMessage::ChunkRequest(ChunkRequest {
                request_id: 9,
                blob: Digest::of(b"x"),
                index: 7,
            });
            write_message(&mut ok, &req, &[]).await.unwrap();
            let mut r: &[u8] = &ok;
            assert_eq!(read_message(&mut r).await.unwrap(), req);
            let mut truncated: &[u8] = &ok[..ok.len() - 1];
            assert!(!read_message(&mut truncated)
                .await
                .unwrap_err()
                .is_violation());
            let hello = StreamMessage::Hello(Hello {
                protocol_version: wire::STREAM_VERSION,
                blobs: vec![],
            });
            let mut buf = Vec::new();
            write_message(&mut buf, &hello, &[]).await.unwrap();
            let mut r: &[u8] = &buf;
            assert_eq!(read_message(&mut r).await.unwrap(), hello);
        });
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The node's own frame reader (`read_message`, as every chunk
        /// stream uses it) on arbitrary bytes: an error or a message,
        /// never a panic, and never a header read past the 64 KiB bound.
        #[test]
        fn read_message_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            valid_prefix in proptest::prelude::any::<bool>(),
        ) {
            let mut input = Vec::new();
            if valid_prefix {
                // A plausible length prefix, so the decoder gets past it.
                input.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            }
            input.extend_from_slice(&bytes);
            futures::executor::block_on(async {
                let mut r: &[u8] = &input;
                while let Ok(msg) = read_message(&mut r).await {
                    // Whatever decodes re-encodes to the same message.
                    let mut buf = Vec::new();
                    let payload = vec![0u8; msg.payload_len().min(1 << 16) as usize];
                    if payload.len() as u64 == msg.payload_len() {
                        write_message(&mut buf, &msg, &payload).await.unwrap();
                        let mut again: &[u8] = &buf;
                        assert_eq!(read_message(&mut again).await.unwrap(), msg);
                    }
                    // Skip the payload as a caller would.
                    let skip = (msg.payload_len() as usize).min(r.len());
                    r = &r[skip..];
                }
            });
        }
    }
}
