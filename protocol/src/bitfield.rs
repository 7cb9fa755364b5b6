//! Which chunks of a blob a node holds.
//!
//! Bit `i` is set when chunk `i` is held and verified. Bits are packed
//! most-significant first within each byte, as in BitTorrent, and the
//! unused bits of the last byte are always zero (that keeps the encoding
//! canonical).

use serde::{Deserialize, Serialize};

use crate::encoding::DecodeError;

/// A fixed-length set of chunk indices.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitfield {
    /// Number of chunks the bitfield covers.
    len: u32,
    /// `ceil(len / 8)` bytes, MSB first, unused trailing bits zero.
    bits: Vec<u8>,
}

impl Bitfield {
    /// An empty bitfield over `len` chunks.
    pub fn new(len: u32) -> Self {
        Bitfield {
            len,
            bits: vec![0; (len as usize).div_ceil(8)],
        }
    }

    /// A bitfield over `len` chunks with every bit set.
    pub fn full(len: u32) -> Self {
        Self::prefix(len, len)
    }

    /// A bitfield over `len` chunks with chunks `0..count` set (all of
    /// them if `count` is larger).
    pub fn prefix(len: u32, count: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..count.min(len) {
            b.set(i);
        }
        b
    }

    /// Rebuilds a bitfield from its packed bytes, checking that the length
    /// matches and that unused trailing bits are zero.
    pub fn from_bytes(len: u32, bits: Vec<u8>) -> Result<Self, DecodeError> {
        let expected = (len as usize).div_ceil(8);
        if bits.len() != expected {
            return Err(DecodeError::Invalid {
                what: "bitfield",
                reason: format!("{len} bits need {expected} bytes, found {}", bits.len()),
            });
        }
        let spare = (expected * 8) as u32 - len;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bits[expected - 1] & mask != 0 {
                return Err(DecodeError::Invalid {
                    what: "bitfield",
                    reason: "bits beyond the last chunk are set".into(),
                });
            }
        }
        Ok(Bitfield { len, bits })
    }

    /// The packed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Number of chunks covered.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the bitfield covers no chunk at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether chunk `index` is held. Out-of-range indices are not held.
    pub fn get(&self, index: u32) -> bool {
        index < self.len && self.bits[(index / 8) as usize] & (0x80 >> (index % 8)) != 0
    }

    /// Marks chunk `index` as held. Returns whether it was newly set.
    ///
    /// # Panics
    /// If `index` is out of range: that is a bug in the caller, which must
    /// check indices from the wire against the chunk map first.
    pub fn set(&mut self, index: u32) -> bool {
        assert!(
            index < self.len,
            "chunk index {index} out of range {}",
            self.len
        );
        let byte = &mut self.bits[(index / 8) as usize];
        let mask = 0x80 >> (index % 8);
        let was = *byte & mask != 0;
        *byte |= mask;
        !was
    }

    /// Marks chunk `index` as not held.
    pub fn clear(&mut self, index: u32) {
        if index < self.len {
            self.bits[(index / 8) as usize] &= !(0x80 >> (index % 8));
        }
    }

    /// Number of chunks held.
    pub fn count_ones(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.count_ones() == self.len
    }

    /// The held chunk indices in increasing order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }

    /// The missing chunk indices in increasing order.
    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(move |&i| !self.get(i))
    }

    /// The first missing chunk at or after `from`, if any.
    pub fn next_zero(&self, from: u32) -> Option<u32> {
        (from..self.len).find(|&i| !self.get(i))
    }
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.count_ones(), self.len)
    }
}

/// On the wire a bitfield is the CBOR array `[len, bytes]`.
impl Serialize for Bitfield {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.len, serde_bytes::Bytes::new(&self.bits)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Bitfield {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (len, bits): (u32, serde_bytes::ByteBuf) = Deserialize::deserialize(deserializer)?;
        Bitfield::from_bytes(len, bits.into_vec()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_sets_the_first_bits_only() {
        let b = Bitfield::prefix(10, 3);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(Bitfield::prefix(5, 9), Bitfield::full(5));
        assert_eq!(Bitfield::prefix(12, 0), Bitfield::new(12));
        // Unused trailing bits stay zero: it round-trips the wire check.
        let full = Bitfield::full(12);
        assert!(Bitfield::from_bytes(12, full.as_bytes().to_vec()).is_ok());
    }

    #[test]
    fn set_get_count() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0));
        assert!(!b.set(0));
        b.set(9);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count_ones(), 2);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(b.next_zero(0), Some(1));
        assert!(!b.get(10), "out of range is never held");
        assert!(Bitfield::full(10).is_complete());
    }

    #[test]
    fn trailing_bits_must_be_zero() {
        assert!(Bitfield::from_bytes(10, vec![0, 0x40]).is_ok());
        assert!(Bitfield::from_bytes(10, vec![0, 0x20]).is_err());
        assert!(Bitfield::from_bytes(10, vec![0]).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(len in 0u32..2000, seed in any::<u64>()) {
            let mut b = Bitfield::new(len);
            let mut x = seed;
            for i in 0..len {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                if x >> 63 == 1 { b.set(i); }
            }
            let bytes = crate::encoding::encode(&b);
            let back: Bitfield = crate::encoding::decode("bitfield", &bytes, 1 << 20).unwrap();
            prop_assert_eq!(back, b);
        }
    }
}
