//! Release announcements and removal requests, the two messages a
//! publisher signs (with the keys and envelope of [`crate::signing`]).
//!
//! A [`Release`] says "deploy this image (by manifest digest) to that
//! locality, on nodes matching these labels". A publisher signs it with an
//! ed25519 key ([`PublisherKey`](crate::signing::PublisherKey)); the result, a [`SignedRelease`], travels
//! over gossip and is accepted by a node only if the signature is valid and
//! the signer is trusted ([`TrustedKeys`](crate::signing::TrustedKeys)), or, in the open mode used when
//! no publisher key is configured, merely validly signed by the key it
//! carries ([`SignedRelease::verify_embedded`]).
//!
//! ## Encodings
//!
//! ```text
//! Release       = [2, image: text, manifest: bytes(32), platform, created: uint,
//!                  locality: text, selector: [[label: text, value: text]*], seq: uint]
//!               / [1, image, manifest, platform, created, locality, selector]   (seq 0)
//! platform      = [os: text, architecture: text, variant: text / null]
//! SignedRelease = [1, Release, signer: bytes(32), signature: bytes(64)]
//! ```
//!
//! `seq` is the publisher's sequence number: per image, a node keeps only
//! the release or removal with the largest `(seq, created, signer)` (see
//! [`Order`]), so a replayed older message never wins whatever the signer's
//! clock says. A sequence of 0 is the version 1 encoding, from before
//! sequences existed; it still decodes and orders below every sequenced
//! message.
//!
//! The release id ([`Release::id`], [`SignedRelease::release_id`]) is the
//! sha256 of the canonical CBOR of the *release body*, not of the signed
//! envelope: a release keeps its id whoever signs it, and it can be named
//! before it is signed.
//!
//! ## Non-goals
//!
//! Key revocation, expiry and rotation; deciding whether a release is meant
//! for this node's locality (the node compares [`Release::locality`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::address::Digest;
use crate::encoding::{self, check_leading_version, DecodeError};
use crate::signing::{Signable, Signed, SIGNED_VERSION};

/// Format version of [`Release`] with a sequence number; version 1 (no
/// sequence, `seq` 0) still decodes and is how `seq` 0 encodes.
pub const RELEASE_VERSION: u64 = 2;

/// Where a signed release or removal stands among the messages about one
/// image: compared as `(seq, created, signer)`, so every node picks the
/// same winner. `created` (the signer's clock) only breaks ties between
/// unsequenced (version 1) messages; the signer breaks the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Order {
    /// The publisher's sequence number.
    pub seq: u64,
    /// The signer's clock (tie-break of unsequenced messages).
    pub created: u64,
    /// The signer's public key bytes.
    pub signer: [u8; 32],
}

/// Largest encoded [`SignedRelease`] accepted: 16 KiB, far more than an
/// image reference, a locality and a few labels need, and well inside a
/// gossip message.
pub const MAX_RELEASE_BYTES: usize = 16 << 10;

/// Why a release or a removal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// The bytes are not a well-formed, canonical, bounded encoding.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A release field given as text (platform, selector term) is malformed.
    #[error("invalid release field: {0}")]
    InvalidField(String),
}

/// The platform an image is for, as in an OCI image index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// OCI architecture name: `amd64`, `arm64`, `arm`...
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform without variant.
    pub fn new(os: &str, architecture: &str) -> Self {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, ReleaseError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || ReleaseError::InvalidField(format!("platform {s:?} is not os/arch[/variant]"));
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform::new(os, arch)),
            [os, arch, variant] => Ok(Platform {
                variant: Some((*variant).into()),
                ..Platform::new(os, arch)
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A release announcement: deploy `image` (pinned by manifest digest) to
/// the nodes of `locality` matching `selector`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Release {
    /// The image reference as the publisher wrote it
    /// (`registry/repo:tag`); the node pulls from this repository.
    pub image: String,
    /// Digest of the exact manifest to deploy (of the platform-specific
    /// manifest, not an index), so a moved tag cannot change what runs.
    pub manifest: Digest,
    /// The platform the manifest is for.
    pub platform: Platform,
    /// When the release was made, in unix seconds (shown to operators;
    /// orders nothing except unsequenced releases, see [`Order`]).
    pub created: u64,
    /// The locality the release is for; nodes elsewhere ignore it.
    pub locality: String,
    /// `label=value` pairs a node must all carry to install the release;
    /// empty means every node of the locality.
    pub selector: Vec<(String, String)>,
    /// The publisher's sequence number (0: an unsequenced version 1
    /// release). Orders messages about one image: see [`Order`].
    pub seq: u64,
}

impl Release {
    /// The release id: sha256 of the canonical CBOR of this body.
    pub fn id(&self) -> Digest {
        Digest::of(&encoding::encode(self))
    }

    /// Whether a node with `labels` is targeted by the selector.
    pub fn selects<'a, I>(&self, labels: I) -> bool
    where
        I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
    {
        self.selector.iter().all(|(k, v)| {
            labels
                .clone()
                .into_iter()
                .any(|(lk, lv)| lk == k.as_str() && lv == v.as_str())
        })
    }

    /// Parses a `label=value` selector term.
    pub fn parse_selector_term(term: &str) -> Result<(String, String), ReleaseError> {
        match term.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(ReleaseError::InvalidField(format!(
                "selector term {term:?} is not label=value"
            ))),
        }
    }
}

impl Serialize for Release {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let platform = (
            &self.platform.os,
            &self.platform.architecture,
            &self.platform.variant,
        );
        if self.seq == 0 {
            (
                1u64,
                &self.image,
                &self.manifest,
                platform,
                self.created,
                &self.locality,
                &self.selector,
            )
                .serialize(serializer)
        } else {
            (
                RELEASE_VERSION,
                &self.image,
                &self.manifest,
                platform,
                self.created,
                &self.locality,
                &self.selector,
                self.seq,
            )
                .serialize(serializer)
        }
    }
}

/// The elements of a versioned array, read one at a time.
type Elements = std::vec::IntoIter<ciborium::Value>;

/// Reads the elements of a versioned array (version 1 without the trailing
/// sequence, version 2 with it) and hands them to `read`. Canonical
/// decoding then refuses a version 2 encoding of sequence 0, which encodes
/// as version 1.
struct VersionedSeq<T> {
    what: &'static str,
    read: fn(&mut Elements) -> Result<T, String>,
}

impl<'de, T> serde::de::Visitor<'de> for VersionedSeq<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} array", self.what)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<ciborium::Value>()? {
            if items.len() == 16 {
                return Err(serde::de::Error::custom("too many elements"));
            }
            items.push(v);
        }
        let mut items = items.into_iter();
        let value = (self.read)(&mut items).map_err(serde::de::Error::custom)?;
        if items.next().is_some() {
            return Err(serde::de::Error::custom("too many elements"));
        }
        Ok(value)
    }
}

/// Converts one element read by [`VersionedSeq`].
fn field<T: serde::de::DeserializeOwned>(
    v: Option<ciborium::Value>,
    name: &str,
) -> Result<T, String> {
    v.ok_or_else(|| format!("missing {name}"))?
        .deserialized()
        .map_err(|e| format!("bad {name}: {e}"))
}

/// Reads a sequenced message's version: 1 (unsequenced) or `current`.
fn read_version(items: &mut Elements, what: &str, current: u64) -> Result<u64, String> {
    let version: u64 = field(items.next(), "version")?;
    if version != 1 && version != current {
        return Err(format!("{what} version {version}, expected 1 or {current}"));
    }
    Ok(version)
}

/// A message's sequence number: absent, and 0, in version 1.
fn read_seq(items: &mut Elements, version: u64) -> Result<u64, String> {
    if version == 1 {
        Ok(0)
    } else {
        field(items.next(), "seq")
    }
}

impl<'de> Deserialize<'de> for Release {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fn read(items: &mut Elements) -> Result<Release, String> {
            let version = read_version(items, "release", RELEASE_VERSION)?;
            let image = field(items.next(), "image")?;
            let manifest = field(items.next(), "manifest")?;
            let (os, architecture, variant): (String, String, Option<String>) =
                field(items.next(), "platform")?;
            let created = field(items.next(), "created")?;
            let locality = field(items.next(), "locality")?;
            let selector = field(items.next(), "selector")?;
            let seq = read_seq(items, version)?;
            Ok(Release {
                image,
                manifest,
                platform: Platform {
                    os,
                    architecture,
                    variant,
                },
                created,
                locality,
                selector,
                seq,
            })
        }
        deserializer.deserialize_seq(VersionedSeq {
            what: "release",
            read,
        })
    }
}

impl Signable for Release {
    const CONTEXT: &'static [u8] = b"edgeswarm-release-v1\0";
    const WHAT: &'static str = "release";
}

/// A release signed by a publisher.
pub type SignedRelease = Signed<Release>;

impl Signed<Release> {
    /// The release id (of the body; see the module docs).
    pub fn release_id(&self) -> Digest {
        self.body_unverified().id()
    }

    /// Where this release stands among messages about its image.
    pub fn order(&self) -> Order {
        let body = self.body_unverified();
        Order {
            seq: body.seq,
            created: body.created,
            signer: *self.signer().as_bytes(),
        }
    }

    /// Decodes a signed release (bounded by [`MAX_RELEASE_BYTES`]), without
    /// verifying it.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReleaseError> {
        check_leading_version("signed release", bytes, SIGNED_VERSION)?;
        Ok(encoding::decode(
            "signed release",
            bytes,
            MAX_RELEASE_BYTES,
        )?)
    }
}

/// Format version of [`Removal`] with a sequence number; version 1 (no
/// sequence, `seq` 0) still decodes and is how `seq` 0 encodes.
pub const REMOVAL_VERSION: u64 = 2;

/// A request to remove an image from every node of a locality
/// (`edgeswarm rm --locality`), signed like a release and accepted under the
/// same trust policy.
///
/// Encoded as `[2, image: text, locality: text, created: uint, seq: uint]`
/// (or `[1, image, locality, created]` for `seq` 0). It applies only when it
/// is newer ([`Order`]) than the release of the image a node holds, so
/// replaying an old removal after a redeploy removes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Removal {
    /// The image reference, exactly as it was deployed.
    pub image: String,
    /// The locality the request is for; nodes elsewhere ignore it.
    pub locality: String,
    /// Unix seconds when the request was made.
    pub created: u64,
    /// The publisher's sequence number, as in [`Release::seq`].
    pub seq: u64,
}

impl Serialize for Removal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.seq == 0 {
            (1u64, &self.image, &self.locality, self.created).serialize(serializer)
        } else {
            (
                REMOVAL_VERSION,
                &self.image,
                &self.locality,
                self.created,
                self.seq,
            )
                .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Removal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fn read(items: &mut Elements) -> Result<Removal, String> {
            let version = read_version(items, "removal", REMOVAL_VERSION)?;
            let image = field(items.next(), "image")?;
            let locality = field(items.next(), "locality")?;
            let created = field(items.next(), "created")?;
            let seq = read_seq(items, version)?;
            Ok(Removal {
                image,
                locality,
                created,
                seq,
            })
        }
        deserializer.deserialize_seq(VersionedSeq {
            what: "removal",
            read,
        })
    }
}

impl Signable for Removal {
    const CONTEXT: &'static [u8] = b"edgeswarm-removal-v1\0";
    const WHAT: &'static str = "removal";
}

/// A removal signed by a publisher (or a node's identity).
pub type SignedRemoval = Signed<Removal>;

/// Largest encoded [`SignedRemoval`] accepted: 4 KiB (an image reference
/// and a locality are short), on the node's API and in gossip alike.
pub const MAX_REMOVAL_BYTES: usize = 4 << 10;

impl Signed<Removal> {
    /// Where this removal stands among messages about its image.
    pub fn order(&self) -> Order {
        let body = self.body_unverified();
        Order {
            seq: body.seq,
            created: body.created,
            signer: *self.signer().as_bytes(),
        }
    }

    /// Decodes a signed removal (bounded by [`MAX_REMOVAL_BYTES`]), without
    /// verifying it.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReleaseError> {
        check_leading_version("signed removal", bytes, SIGNED_VERSION)?;
        Ok(encoding::decode(
            "signed removal",
            bytes,
            MAX_REMOVAL_BYTES,
        )?)
    }
}
