//! Canonical, size-bounded CBOR.
//!
//! Every edgeswarm structure on the wire or on disk is CBOR (RFC 8949) as
//! produced by [`encode`]: structures are CBOR arrays whose first element is
//! a format version, integers use their shortest form, byte strings are
//! definite-length. Since signatures and content addresses are computed
//! over encoded bytes, a value must have exactly one encoding: [`decode`]
//! re-encodes what it decoded and rejects the input unless the two are
//! byte-identical. It also refuses inputs larger than a caller-given bound
//! before parsing anything, so a peer cannot make us allocate without limit.

use serde::{de::DeserializeOwned, Serialize};

/// Why bytes could not be decoded into an edgeswarm structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than the structure may ever be.
    #[error("{what} is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// The input length.
        len: usize,
        /// The limit for this structure.
        max: usize,
    },
    /// The bytes are not valid CBOR of the expected shape.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The parser's explanation.
        reason: String,
    },
    /// The bytes decode, but are not the canonical encoding of their value.
    #[error("{what} is not canonically encoded")]
    NonCanonical {
        /// What was being decoded.
        what: &'static str,
    },
    /// The format version is not one this implementation speaks.
    #[error("{what} has format version {found}, this node speaks version {supported}")]
    UnsupportedVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version found in the input.
        found: u64,
        /// The version this implementation speaks.
        supported: u64,
    },
    /// The structure decoded but its fields contradict each other.
    #[error("{what} is invalid: {reason}")]
    Invalid {
        /// What was being decoded.
        what: &'static str,
        /// Which rule the value breaks.
        reason: String,
    },
}

/// Encodes `value` as canonical CBOR.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out)
        .expect("serialising into a Vec cannot fail for edgeswarm types");
    out
}

/// Decodes `bytes` as the canonical CBOR encoding of a `T` of at most `max`
/// bytes. `what` names the structure in errors.
pub fn decode<T: Serialize + DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    let value: T = ciborium::from_reader(bytes).map_err(|e| DecodeError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if encode(&value) != bytes {
        return Err(DecodeError::NonCanonical { what });
    }
    Ok(value)
}

/// Checks a decoded format version.
pub fn check_version(what: &'static str, found: u64, supported: u64) -> Result<(), DecodeError> {
    if found == supported {
        Ok(())
    } else {
        Err(DecodeError::UnsupportedVersion {
            what,
            found,
            supported,
        })
    }
}

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
pub(crate) fn peek_envelope(bytes: &[u8]) -> Option<(u64, u64)> {
    let mut pos = 0;
    let (major, len) = read_head(bytes, &mut pos)?;
    if major != 4 || len < 2 {
        return None;
    }
    let (m1, version) = read_head(bytes, &mut pos)?;
    let (m2, kind) = read_head(bytes, &mut pos)?;
    (m1 == 0 && m2 == 0).then_some((version, kind))
}

/// Rejects an input whose leading `[version, ...` is a version other than
/// `supported` with a typed error before shape errors can mask it.
pub(crate) fn check_leading_version(
    what: &'static str,
    bytes: &[u8],
    supported: u64,
) -> Result<(), DecodeError> {
    if let Some((_, version)) = peek_array_and_uint(bytes) {
        check_version(what, version, supported)?;
    }
    Ok(())
}
