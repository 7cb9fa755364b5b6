//! Content addresses.
//!
//! Everything edgeswarm moves is named by the sha2-256 digest of its bytes.
//! The same digest has three spellings:
//!
//! - raw bytes ([`Digest`]), used inside wire messages;
//! - an OCI digest string, `sha256:` followed by 64 lowercase hex digits,
//!   as registries and image manifests write it;
//! - a CIDv1 with a sha2-256 multihash, used as the Kademlia key of a blob
//!   and in logs. Blobs and chunks use the `raw` codec (0x55); encoded
//!   chunk maps use `dag-cbor` (0x71).

use std::fmt;

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest as _, Sha256};

/// Multihash code of sha2-256.
pub const SHA2_256_CODE: u64 = 0x12;

/// The multicodec of the content a CID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opaque bytes: a layer blob, a config blob, a manifest or a chunk.
    Raw,
    /// A canonical-CBOR encoded edgeswarm structure, such as a chunk map.
    DagCbor,
}

impl Codec {
    /// The multicodec code.
    pub const fn code(self) -> u64 {
        match self {
            Codec::Raw => 0x55,
            Codec::DagCbor => 0x71,
        }
    }

    /// The codec for a multicodec code, if edgeswarm uses it.
    pub const fn from_code(code: u64) -> Option<Self> {
        match code {
            0x55 => Some(Codec::Raw),
            0x71 => Some(Codec::DagCbor),
            _ => None,
        }
    }
}

/// Why a content address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The string has no `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<hex>)")]
    MissingAlgorithm(String),
    /// The algorithm is not sha256.
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    UnsupportedAlgorithm(String),
    /// The hex part does not have 64 digits.
    #[error("sha256 digest must have 64 hex digits, found {0}")]
    WrongLength(usize),
    /// The hex part has a character other than `0-9a-f`.
    #[error("sha256 digest has a character that is not lowercase hex at position {0}")]
    NotLowercaseHex(usize),
    /// The CID could not be decoded.
    #[error("invalid CID: {0}")]
    InvalidCid(String),
    /// The CID is not version 1.
    #[error("CID version {0} is not supported (only CIDv1)")]
    UnsupportedCidVersion(u64),
    /// The CID's codec is neither raw nor dag-cbor.
    #[error("CID codec 0x{0:x} is not used by edgeswarm")]
    UnsupportedCodec(u64),
    /// The CID's multihash is not sha2-256.
    #[error("CID multihash 0x{0:x} is not sha2-256")]
    UnsupportedHash(u64),
    /// The multihash digest is not 32 bytes.
    #[error("sha2-256 multihash has {0} digest bytes, expected 32")]
    WrongDigestSize(usize),
}

/// A sha2-256 digest: the name of a blob, a chunk or a chunk map.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The length of a digest in bytes.
    pub const LEN: usize = 32;

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Hashes `data` in one go.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses an OCI digest string, `sha256:<64 lowercase hex digits>`.
    ///
    /// Uppercase hex is rejected: the OCI image spec requires lowercase for
    /// sha256, and accepting two spellings of one digest invites confusion
    /// between keys.
    pub fn parse_oci(s: &str) -> Result<Self, AddressError> {
        let (algorithm, encoded) = s
            .split_once(':')
            .ok_or_else(|| AddressError::MissingAlgorithm(s.to_owned()))?;
        if algorithm != "sha256" {
            return Err(AddressError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        Self::parse_hex(encoded)
    }

    /// Parses 64 lowercase hex digits.
    pub fn parse_hex(encoded: &str) -> Result<Self, AddressError> {
        if encoded.len() != 64 {
            return Err(AddressError::WrongLength(encoded.len()));
        }
        if let Some(position) = encoded
            .bytes()
            .position(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(AddressError::NotLowercaseHex(position));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(encoded, &mut bytes).map_err(|_| AddressError::NotLowercaseHex(0))?;
        Ok(Digest(bytes))
    }

    /// The OCI digest string, `sha256:<hex>`.
    pub fn to_oci(&self) -> String {
        format!("sha256:{}", self.to_hex())
    }

    /// The CIDv1 naming this digest's content, interpreted with `codec`.
    pub fn to_cid(&self, codec: Codec) -> Cid {
        let multihash = Multihash::<64>::wrap(SHA2_256_CODE, &self.0)
            .expect("a 32-byte digest always fits a 64-byte multihash");
        Cid::new_v1(codec.code(), multihash)
    }

    /// The digest and codec of a CIDv1 with a sha2-256 multihash.
    pub fn from_cid(cid: &Cid) -> Result<(Self, Codec), AddressError> {
        if cid.version() != cid::Version::V1 {
            return Err(AddressError::UnsupportedCidVersion(cid.version().into()));
        }
        let codec =
            Codec::from_code(cid.codec()).ok_or(AddressError::UnsupportedCodec(cid.codec()))?;
        let hash = cid.hash();
        if hash.code() != SHA2_256_CODE {
            return Err(AddressError::UnsupportedHash(hash.code()));
        }
        let digest: [u8; 32] = hash
            .digest()
            .try_into()
            .map_err(|_| AddressError::WrongDigestSize(hash.digest().len()))?;
        Ok((Digest(digest), codec))
    }

    /// Parses a CID from its string form (any multibase) or its bytes.
    pub fn parse_cid(s: &str) -> Result<(Self, Codec), AddressError> {
        let cid = Cid::try_from(s).map_err(|e| AddressError::InvalidCid(e.to_string()))?;
        Self::from_cid(&cid)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.to_hex()[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_oci())
    }
}

impl std::str::FromStr for Digest {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_oci(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = serde::Deserialize::deserialize(deserializer)?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            serde::de::Error::invalid_length(bytes.len(), &"32 bytes of sha2-256 digest")
        })?;
        Ok(Digest(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_known_value() {
        assert_eq!(Digest::of(b"").to_hex(), EMPTY_SHA256);
    }

    #[test]
    fn oci_round_trip() {
        let s = format!("sha256:{EMPTY_SHA256}");
        let d = Digest::parse_oci(&s).unwrap();
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.to_oci(), s);
        assert_eq!(d.to_string(), s);
    }

    #[test]
    fn cid_golden() {
        // Pinned: CIDv1, raw codec, sha2-256 of the empty string, base32.
        let cid = Digest::of(b"").to_cid(Codec::Raw);
        assert_eq!(
            cid.to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        let (digest, codec) = Digest::parse_cid(&cid.to_string()).unwrap();
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(codec, Codec::Raw);
    }

    #[test]
    fn malformed_oci_digests_are_typed_errors() {
        assert_eq!(
            Digest::parse_oci(EMPTY_SHA256),
            Err(AddressError::MissingAlgorithm(EMPTY_SHA256.into()))
        );
        assert_eq!(
            Digest::parse_oci(&format!("sha512:{EMPTY_SHA256}")),
            Err(AddressError::UnsupportedAlgorithm("sha512".into()))
        );
        assert_eq!(
            Digest::parse_oci("sha256:abc"),
            Err(AddressError::WrongLength(3))
        );
        assert_eq!(
            Digest::parse_oci(&format!("sha256:{}", EMPTY_SHA256.to_uppercase())),
            Err(AddressError::NotLowercaseHex(0))
        );
        let mut bad = EMPTY_SHA256.to_owned();
        bad.replace_range(10..11, "g");
        assert_eq!(
            Digest::parse_oci(&format!("sha256:{bad}")),
            Err(AddressError::NotLowercaseHex(10))
        );
    }

    #[test]
    fn foreign_cids_are_rejected() {
        let sha512 = Multihash::<64>::wrap(0x13, &[0u8; 64]).unwrap();
        let cid = Cid::new_v1(0x55, sha512);
        assert_eq!(
            Digest::from_cid(&cid),
            Err(AddressError::UnsupportedHash(0x13))
        );
        let mh = Multihash::<64>::wrap(SHA2_256_CODE, &[0u8; 32]).unwrap();
        assert_eq!(
            Digest::from_cid(&Cid::new_v1(0x70, mh)),
            Err(AddressError::UnsupportedCodec(0x70))
        );
        assert_eq!(
            Digest::from_cid(&Cid::new_v0(mh).unwrap()),
            Err(AddressError::UnsupportedCidVersion(0))
        );
        let short = Multihash::<64>::wrap(SHA2_256_CODE, &[0u8; 20]).unwrap();
        assert_eq!(
            Digest::from_cid(&Cid::new_v1(0x55, short)),
            Err(AddressError::WrongDigestSize(20))
        );
        assert!(matches!(
            Digest::parse_cid("not a cid"),
            Err(AddressError::InvalidCid(_))
        ));
    }

    proptest! {
        #[test]
        fn every_digest_round_trips_through_oci_and_cid(bytes in any::<[u8; 32]>(), dag in any::<bool>()) {
            let d = Digest::from_bytes(bytes);
            prop_assert_eq!(Digest::parse_oci(&d.to_oci()).unwrap(), d);
            let codec = if dag { Codec::DagCbor } else { Codec::Raw };
            let cid = d.to_cid(codec);
            prop_assert_eq!(Digest::from_cid(&cid).unwrap(), (d, codec));
            prop_assert_eq!(Digest::parse_cid(&cid.to_string()).unwrap(), (d, codec));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".*") {
            let _ = Digest::parse_oci(&s);
            let _ = Digest::parse_cid(&s);
        }
    }
}
