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
//! Release       = [1, image: text, manifest: bytes(32), platform, created: uint,
//!                  locality: text, selector: [[label: text, value: text]*]]
//! platform      = [os: text, architecture: text, variant: text / null]
//! SignedRelease = [1, Release, signer: bytes(32), signature: bytes(64)]
//! ```
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

/// Format version of [`Release`].
pub const RELEASE_VERSION: u64 = 1;

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
    /// When the release was made, in unix seconds; orders releases of the
    /// same image.
    pub created: u64,
    /// The locality the release is for; nodes elsewhere ignore it.
    pub locality: String,
    /// `label=value` pairs a node must all carry to install the release;
    /// empty means every node of the locality.
    pub selector: Vec<(String, String)>,
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
        (
            RELEASE_VERSION,
            &self.image,
            &self.manifest,
            (
                &self.platform.os,
                &self.platform.architecture,
                &self.platform.variant,
            ),
            self.created,
            &self.locality,
            &self.selector,
        )
            .serialize(serializer)
    }
}

/// Wire shape of [`Release`].
type WireRelease = (
    u64,
    String,
    Digest,
    (String, String, Option<String>),
    u64,
    String,
    Vec<(String, String)>,
);

impl<'de> Deserialize<'de> for Release {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (version, image, manifest, (os, architecture, variant), created, locality, selector): WireRelease =
            Deserialize::deserialize(deserializer)?;
        if version != RELEASE_VERSION {
            return Err(serde::de::Error::custom(format!(
                "release version {version}, expected {RELEASE_VERSION}"
            )));
        }
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

/// Format version of [`Removal`].
pub const REMOVAL_VERSION: u64 = 1;

/// A request to remove an image from every node of a locality
/// (`edgeswarm rm --locality`), signed like a release and accepted under the
/// same trust policy.
///
/// Encoded as `[1, image: text, locality: text, created: uint]`. It applies
/// only to releases of the image created no later than `created`, so
/// replaying an old removal after a redeploy removes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Removal {
    /// The image reference, exactly as it was deployed.
    pub image: String,
    /// The locality the request is for; nodes elsewhere ignore it.
    pub locality: String,
    /// Unix seconds when the request was made.
    pub created: u64,
}

impl Serialize for Removal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (REMOVAL_VERSION, &self.image, &self.locality, self.created).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Removal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (version, image, locality, created): (u64, String, String, u64) =
            Deserialize::deserialize(deserializer)?;
        if version != REMOVAL_VERSION {
            return Err(serde::de::Error::custom(format!(
                "removal version {version}, expected {REMOVAL_VERSION}"
            )));
        }
        Ok(Removal {
            image,
            locality,
            created,
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
