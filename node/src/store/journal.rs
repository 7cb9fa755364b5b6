//! The per-blob append-only journal of a partial blob.
//!
//! Each record is
//!
//! ```text
//! [payload_len: u32 LE][kind: u8][payload][check: first 8 bytes of sha256(kind || payload)]
//! ```
//!
//! Kinds: `1` chunk digests (`first_index: u32 LE` then 32-byte digests),
//! `2` verified chunk indices (`u32 LE` each), `3` cleared chunk indices.
//! Replay stops at the first record that is short or fails its check: that
//! is a torn tail from a crash, and everything after it is dropped (the
//! store truncates the file there before appending again).

use edgeswarm_protocol::chunkmap::MAX_CHUNKS;
use edgeswarm_protocol::Digest;
use sha2::{Digest as _, Sha256};

/// Kind byte of a digests record.
const KIND_DIGESTS: u8 = 1;
/// Kind byte of a verified-indices record.
const KIND_VERIFIED: u8 = 2;
/// Kind byte of a cleared-indices record.
const KIND_CLEARED: u8 = 3;
/// Bytes of the check value after each payload.
const CHECK_LEN: usize = 8;
/// Header bytes: payload length and kind.
const HEADER_LEN: usize = 5;
/// Largest payload accepted on replay: every digest of the largest blob.
const MAX_PAYLOAD: usize = 4 + Digest::LEN * MAX_CHUNKS as usize;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// Digests of chunks `first..first + digests.len()` became known.
    Digests {
        /// Index of the first digest.
        first: u32,
        /// The digests in order.
        digests: Vec<Digest>,
    },
    /// These chunks were written durably and verified.
    Verified(Vec<u32>),
    /// These chunks failed re-verification and must be fetched again.
    Cleared(Vec<u32>),
}

impl Record {
    /// The record's bytes, ready to append.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Record::Digests { first, digests } => {
                let mut p = Vec::with_capacity(4 + digests.len() * Digest::LEN);
                p.extend_from_slice(&first.to_le_bytes());
                for d in digests {
                    p.extend_from_slice(d.as_bytes());
                }
                (KIND_DIGESTS, p)
            }
            Record::Verified(idx) => (KIND_VERIFIED, indices(idx)),
            Record::Cleared(idx) => (KIND_CLEARED, indices(idx)),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CHECK_LEN);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&check(kind, &payload));
        out
    }
}

/// Packs chunk indices as little-endian u32s.
fn indices(idx: &[u32]) -> Vec<u8> {
    idx.iter().flat_map(|i| i.to_le_bytes()).collect()
}

/// The check value of a record.
fn check(kind: u8, payload: &[u8]) -> [u8; CHECK_LEN] {
    let mut h = Sha256::new();
    h.update([kind]);
    h.update(payload);
    let full = h.finalize();
    full[..CHECK_LEN].try_into().expect("sha256 is 32 bytes")
}

/// Decodes every intact record from the start of `bytes`. Returns them and
/// the length of the intact prefix; anything after it is a torn tail.
pub(crate) fn replay(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some((rec, len)) = decode_one(&bytes[pos..]) {
        records.push(rec);
        pos += len;
    }
    (records, pos)
}

/// Decodes the record at the start of `bytes`, if it is complete and intact.
fn decode_one(bytes: &[u8]) -> Option<(Record, usize)> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let kind = bytes[4];
    let total = HEADER_LEN + len + CHECK_LEN;
    if bytes.len() < total {
        return None;
    }
    let payload = &bytes[HEADER_LEN..HEADER_LEN + len];
    if bytes[HEADER_LEN + len..total] != check(kind, payload) {
        return None;
    }
    let u32s = |p: &[u8]| -> Option<Vec<u32>> {
        if !p.len().is_multiple_of(4) {
            return None;
        }
        Some(
            p.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        )
    };
    let rec = match kind {
        KIND_DIGESTS => {
            if len < 4 || !(len - 4).is_multiple_of(Digest::LEN) {
                return None;
            }
            let first = u32::from_le_bytes(payload[..4].try_into().ok()?);
            let digests = payload[4..]
                .chunks_exact(Digest::LEN)
                .map(|c| Digest::from_bytes(c.try_into().expect("32 bytes")))
                .collect();
            Record::Digests { first, digests }
        }
        KIND_VERIFIED => Record::Verified(u32s(payload)?),
        KIND_CLEARED => Record::Cleared(u32s(payload)?),
        _ => return None,
    };
    Some((rec, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn replay_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (_, valid) = replay(&bytes);
            prop_assert!(valid <= bytes.len());
        }

        #[test]
        fn records_survive_any_truncation(idx in proptest::collection::vec(any::<u32>(), 1..50), cut in 0usize..400) {
            let recs: Vec<Record> = idx.chunks(7).map(|c| Record::Verified(c.to_vec())).collect();
            let bytes: Vec<u8> = recs.iter().flat_map(|r| r.encode()).collect();
            let cut = cut.min(bytes.len());
            let (got, valid) = replay(&bytes[..bytes.len() - cut]);
            // Exactly the records wholly inside the prefix come back.
            let mut end = 0;
            let mut whole = 0;
            for r in &recs {
                end += r.encode().len();
                if end <= bytes.len() - cut { whole += 1; }
            }
            prop_assert_eq!(&got[..], &recs[..whole]);
            prop_assert!(valid <= bytes.len() - cut);
        }
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let recs = vec![
            Record::Digests {
                first: 3,
                digests: vec![Digest::of(b"a"), Digest::of(b"b")],
            },
            Record::Verified(vec![3]),
            Record::Cleared(vec![3, 4]),
        ];
        let mut bytes: Vec<u8> = recs.iter().flat_map(|r| r.encode()).collect();
        let full = bytes.len();
        assert_eq!(replay(&bytes), (recs.clone(), full));
        // A torn last record is dropped, the rest kept.
        let last_len = recs[2].encode().len();
        for cut in 1..last_len {
            let (got, valid) = replay(&bytes[..full - cut]);
            assert_eq!(got, recs[..2].to_vec());
            assert_eq!(valid, full - last_len);
        }
        // A flipped bit in the middle record stops replay there.
        let first_len = recs[0].encode().len();
        bytes[first_len + 6] ^= 1;
        assert_eq!(replay(&bytes), (recs[..1].to_vec(), first_len));
    }
}
