//! Framing of the chunk-exchange stream protocol
//! (`/edgeswarm/<locality>/chunks/1.0.0`).
//!
//! One stream carries one blob between a downloader (who opened it) and a
//! server. Every frame is `len: u32 BE | tag: u8 | body`, where `len`
//! counts the tag and body. Integers are big-endian.
//!
//! Downloader -> server:
//! - `GET_MAP (1)`: `blob[32]`. Answer: `MAP` or `NO_MAP`.
//! - `INTEREST (2)`: `blob[32]`. Binds the stream to the blob; answer: `BITFIELD`
//!   (possibly empty while the server has not heard of the blob), then `HAVE`
//!   frames as the server verifies more chunks.
//! - `REQUEST (3)`: `index u32`. Answer: `CHUNK` or `REJECT`. Several may be
//!   in flight; answers come in request order.
//!
//! Server -> downloader:
//! - `BITFIELD (10)`: `count u32 | bits` (the protocol `Bitfield` bytes).
//! - `HAVE (11)`: `index u32` repeated (at most [`MAX_HAVE_BATCH`]).
//! - `CHUNK (12)`: `index u32 | payload`; the payload is streamed, never
//!   buffered beyond one chunk, and must have exactly the chunk's length.
//! - `REJECT (13)`: `index u32 | reason u8` ([`RejectReason`]).
//! - `MAP (14)`: the canonical chunk map encoding.
//! - `NO_MAP (15)`: empty.
//!
//! Control frames are bounded by [`MAX_CONTROL_FRAME`], chunk frames by the
//! largest chunk size; anything else is a protocol violation that closes the
//! stream and penalises the sender. (This is the swarm's private wire until
//! `protocol::wire` defines the stream headers.)

use edgeswarm_protocol::chunkmap::MAX_CHUNK_MAP_BYTES;
use edgeswarm_protocol::{ChunkSize, Digest};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest non-chunk frame: a chunk map plus a little.
pub(crate) const MAX_CONTROL_FRAME: u32 = MAX_CHUNK_MAP_BYTES as u32 + 64;
/// Largest chunk frame: tag + index + the largest chunk.
pub(crate) const MAX_CHUNK_FRAME: u32 = ChunkSize::MAX.get() + 5;
/// Most indices in one `HAVE` frame.
pub(crate) const MAX_HAVE_BATCH: usize = 4096;

pub(crate) const GET_MAP: u8 = 1;
pub(crate) const INTEREST: u8 = 2;
pub(crate) const REQUEST: u8 = 3;
pub(crate) const BITFIELD: u8 = 10;
pub(crate) const HAVE: u8 = 11;
pub(crate) const CHUNK: u8 = 12;
pub(crate) const REJECT: u8 = 13;
pub(crate) const MAP: u8 = 14;
pub(crate) const NO_MAP: u8 = 15;

/// Why a server declined a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectReason {
    /// The server does not hold a verified copy of the chunk.
    NotHeld = 1,
    /// The server is a complete seed and uploaded this chunk very recently:
    /// get it from the peer that has it (seed sparing).
    RecentlyUploaded = 2,
    /// The index is out of range, or no blob is bound to the stream.
    Invalid = 3,
}

impl RejectReason {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::NotHeld),
            2 => Some(Self::RecentlyUploaded),
            3 => Some(Self::Invalid),
            _ => None,
        }
    }
}

/// A protocol violation or transport failure on a chunk stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The stream failed or closed.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the framing rules.
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

/// A decoded frame header: the tag and the body length still to be read.
pub(crate) struct Header {
    pub(crate) tag: u8,
    pub(crate) body_len: u32,
}

/// Reads a frame header, checking the length against the tag's limit.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len == 0 {
        return Err(FrameError::violation("empty frame"));
    }
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag).await?;
    let tag = tag[0];
    let max = if tag == CHUNK {
        MAX_CHUNK_FRAME
    } else {
        MAX_CONTROL_FRAME
    };
    if len > max {
        return Err(FrameError::violation(format!(
            "frame tag {tag} of {len} bytes exceeds {max}"
        )));
    }
    Ok(Header {
        tag,
        body_len: len - 1,
    })
}

/// Reads a control frame's body (bounded by [`MAX_CONTROL_FRAME`]).
pub(crate) async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    h: &Header,
) -> Result<Vec<u8>, FrameError> {
    let mut body = vec![0u8; h.body_len as usize];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes one frame with the given tag and body parts.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    tag: u8,
    parts: &[&[u8]],
) -> Result<(), FrameError> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let len =
        u32::try_from(body + 1).map_err(|_| FrameError::violation("frame too large to send"))?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4] = tag;
    w.write_all(&head).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    Ok(())
}

/// Parses a body that must be exactly a blob digest.
pub(crate) fn parse_digest(body: &[u8]) -> Result<Digest, FrameError> {
    let arr: [u8; 32] = body
        .try_into()
        .map_err(|_| FrameError::violation("digest body is not 32 bytes"))?;
    Ok(Digest::from_bytes(arr))
}

/// Parses a body that must be exactly one u32.
pub(crate) fn parse_u32(body: &[u8]) -> Result<u32, FrameError> {
    let arr: [u8; 4] = body
        .try_into()
        .map_err(|_| FrameError::violation("index body is not 4 bytes"))?;
    Ok(u32::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_and_empty_frames_are_violations() {
        futures::executor::block_on(async {
            let mut big: &[u8] = &[0xff, 0xff, 0xff, 0xff, REQUEST];
            assert!(read_header(&mut big).await.unwrap_err().is_violation());
            let mut empty: &[u8] = &[0, 0, 0, 0];
            assert!(read_header(&mut empty).await.unwrap_err().is_violation());
            let mut ok: Vec<u8> = Vec::new();
            write_frame(&mut ok, REQUEST, &[&7u32.to_be_bytes()])
                .await
                .unwrap();
            let mut r: &[u8] = &ok;
            let h = read_header(&mut r).await.unwrap();
            assert_eq!(h.tag, REQUEST);
            assert_eq!(parse_u32(&read_body(&mut r, &h).await.unwrap()).unwrap(), 7);
            let mut truncated: &[u8] = &ok[..3];
            assert!(!read_header(&mut truncated)
                .await
                .unwrap_err()
                .is_violation());
        });
    }
}
