//! ed25519 keys and signed envelopes: how every signed edgeswarm message
//! (releases and removals from a publisher, the gateway's chunk digests and
//! resolutions) is signed and checked.
//!
//! This module depends only on [`crate::encoding`]: the signed bodies
//! ([`crate::release`], [`crate::wire`]) implement [`Signable`] where they
//! are defined.
//!
//! ## Layout
//!
//! - [`PublicKey`], [`Signature`], [`PublisherKey`]: ed25519 (RFC 8032,
//!   `ed25519-dalek` 2, strict verification). The same types sign the
//!   gateway's messages in [`crate::wire`]: the libp2p identity key of a
//!   node is ed25519 too, so its 32 secret bytes load with
//!   [`PublisherKey::from_secret_bytes`].
//! - [`Signed`]: any signable body plus the signer's public key and the
//!   signature. The signature covers `context || canonical CBOR(body)`,
//!   where `context` is a per-type domain separation string
//!   ([`Signable::CONTEXT`]) so that a signature over one kind of message
//!   can never be replayed as another.
//! - Key files: the protocol crate does no I/O; [`PublisherKey::to_file_contents`]
//!   and [`PublicKey::to_file_contents`] give the text the node writes to
//!   `FILE` and `FILE.pub`:
//!
//! ```text
//! edgeswarm-publisher-secret-v1 <64 lowercase hex digits>
//! edgeswarm-publisher-public-v1 <64 lowercase hex digits>
//! ```
//!
//! ## Encoding
//!
//! ```text
//! Signed<T> = [1, body: T, signer: bytes(32), signature: bytes(64)]
//! signature = ed25519(T::CONTEXT || canonical CBOR(body))
//! ```

use std::collections::BTreeSet;
use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::encoding;

/// Format version of the [`Signed`] envelope.
pub const SIGNED_VERSION: u64 = 1;

/// First word of a secret key file.
pub const SECRET_KEY_FILE_TAG: &str = "edgeswarm-publisher-secret-v1";
/// First word of a public key file.
pub const PUBLIC_KEY_FILE_TAG: &str = "edgeswarm-publisher-public-v1";

/// Why a signature or a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The signature does not verify against the signer key.
    #[error("{what} signature does not verify against signer {signer}")]
    BadSignature {
        /// What was signed.
        what: &'static str,
        /// The key the message claims to be signed by.
        signer: PublicKey,
    },
    /// The signature is valid but the signer is not a trusted key.
    #[error("{what} is signed by {signer}, which is not a trusted key")]
    UntrustedKey {
        /// What was signed.
        what: &'static str,
        /// The signer.
        signer: PublicKey,
    },
    /// A key file or key string could not be parsed.
    #[error("invalid key: {0}")]
    InvalidKey(String),
}

/// An ed25519 public key (32 bytes, a valid curve point).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Checks that `bytes` are a valid ed25519 public key (as found in a
    /// libp2p ed25519 identity).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, SigningError> {
        VerifyingKey::from_bytes(&bytes)
            .map_err(|e| SigningError::InvalidKey(format!("not an ed25519 public key: {e}")))?;
        Ok(PublicKey(bytes))
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex of the key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, SigningError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes)
            .map_err(|e| SigningError::InvalidKey(format!("public key hex: {e}")))?;
        Self::from_bytes(bytes)
    }

    /// The text of a `FILE.pub` key file.
    pub fn to_file_contents(&self) -> String {
        format!("{PUBLIC_KEY_FILE_TAG} {}\n", self.to_hex())
    }

    /// Parses the text of a `FILE.pub` key file (blank lines and lines
    /// starting with `#` are ignored).
    pub fn from_file_contents(text: &str) -> Result<Self, SigningError> {
        Self::from_hex(&key_file_body(text, PUBLIC_KEY_FILE_TAG)?)
    }

    /// Checks `signature` over `message` (strict RFC 8032 verification:
    /// rejects small-order keys and non-canonical signatures).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature.0))
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            serde::de::Error::invalid_length(bytes.len(), &"32 bytes of ed25519 public key")
        })?;
        PublicKey::from_bytes(bytes).map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Wraps raw signature bytes (for example from a libp2p
    /// `Keypair::sign`).
    pub const fn from_bytes(bytes: [u8; 64]) -> Self {
        Signature(bytes)
    }

    /// The 64 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..8]))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
        let bytes: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
            serde::de::Error::invalid_length(bytes.len(), &"64 bytes of ed25519 signature")
        })?;
        Ok(Signature(bytes))
    }
}

/// An ed25519 secret key that signs releases (a publisher) or gateway
/// messages (a node's identity key).
#[derive(Clone)]
pub struct PublisherKey(SigningKey);

impl PublisherKey {
    /// A fresh key from a cryptographically secure generator (the node
    /// passes `OsRng`; tests pass a seeded ChaCha).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        PublisherKey(SigningKey::from_bytes(&secret))
    }

    /// The key with these 32 secret bytes (an RFC 8032 seed, which is also
    /// what libp2p's `ed25519::SecretKey` holds).
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        PublisherKey(SigningKey::from_bytes(&secret))
    }

    /// The 32 secret bytes. Handle with care.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs raw bytes. Prefer [`Signed::sign`], which adds the domain
    /// separation context.
    pub fn sign_raw(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }

    /// The text of the secret key file `FILE` (the node writes it with mode
    /// 0600).
    pub fn to_file_contents(&self) -> String {
        format!(
            "{SECRET_KEY_FILE_TAG} {}\n",
            hex::encode(self.secret_bytes())
        )
    }

    /// Parses the text of a secret key file.
    pub fn from_file_contents(text: &str) -> Result<Self, SigningError> {
        let body = key_file_body(text, SECRET_KEY_FILE_TAG)?;
        let mut secret = [0u8; 32];
        hex::decode_to_slice(body.trim(), &mut secret)
            .map_err(|e| SigningError::InvalidKey(format!("secret key hex: {e}")))?;
        Ok(Self::from_secret_bytes(secret))
    }
}

impl fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "PublisherKey(public {})", self.public())
    }
}

/// Extracts the hex body of the single `TAG <hex>` line of a key file.
fn key_file_body(text: &str, tag: &str) -> Result<String, SigningError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines
        .next()
        .ok_or_else(|| SigningError::InvalidKey("key file is empty".into()))?;
    if lines.next().is_some() {
        return Err(SigningError::InvalidKey(
            "key file has more than one key line".into(),
        ));
    }
    let (found, body) = line
        .split_once(char::is_whitespace)
        .ok_or_else(|| SigningError::InvalidKey(format!("expected `{tag} <hex>`")))?;
    if found != tag {
        return Err(SigningError::InvalidKey(format!(
            "key file starts with {found:?}, expected {tag:?}"
        )));
    }
    Ok(body.trim().to_owned())
}

/// The set of publisher keys whose releases this node accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys(BTreeSet<PublicKey>);

impl TrustedKeys {
    /// No trusted key yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; returns whether it was new.
    pub fn insert(&mut self, key: PublicKey) -> bool {
        self.0.insert(key)
    }

    /// Whether `key` is trusted.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.0.contains(key)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The trusted keys in order.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.0.iter()
    }
}

impl FromIterator<PublicKey> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(iter: I) -> Self {
        TrustedKeys(iter.into_iter().collect())
    }
}

/// A body that can be signed: it names its domain separation context.
pub trait Signable: Serialize + serde::de::DeserializeOwned + Clone {
    /// Bytes prepended to the canonical CBOR of the body before signing.
    const CONTEXT: &'static [u8];
    /// Name used in errors.
    const WHAT: &'static str;
}

/// A body, the key that signed it, and the signature over
/// `T::CONTEXT || canonical CBOR(body)`.
///
/// Encoded as `[1, body, signer: bytes(32), signature: bytes(64)]`. Having
/// a `Signed<T>` says nothing about validity: call a `verify` method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<T> {
    /// The signed content.
    body: T,
    /// Who signed it.
    signer: PublicKey,
    /// The signature.
    signature: Signature,
}

impl<T: Signable> Signed<T> {
    /// The exact bytes a signature over `body` covers.
    pub fn signing_bytes(body: &T) -> Vec<u8> {
        let mut bytes = T::CONTEXT.to_vec();
        bytes.extend_from_slice(&encoding::encode(body));
        bytes
    }

    /// Signs `body` with `key`.
    pub fn sign(body: T, key: &PublisherKey) -> Self {
        let signature = key.sign_raw(&Self::signing_bytes(&body));
        Signed {
            body,
            signer: key.public(),
            signature,
        }
    }

    /// Assembles a signature made elsewhere (for example by a libp2p
    /// `Keypair::sign` over [`Self::signing_bytes`]). Not verified yet.
    pub fn from_parts(body: T, signer: PublicKey, signature: Signature) -> Self {
        Signed {
            body,
            signer,
            signature,
        }
    }

    /// The body, *unverified*. Use only for logging or after a `verify`.
    pub fn body_unverified(&self) -> &T {
        &self.body
    }

    /// The key the message claims to be signed by.
    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }

    /// The signature bytes.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Checks the signature against the embedded signer key only (the open
    /// mode: any validly self-signed message). Returns the body.
    pub fn verify_embedded(&self) -> Result<&T, SigningError> {
        if self
            .signer
            .verify(&Self::signing_bytes(&self.body), &self.signature)
        {
            Ok(&self.body)
        } else {
            Err(SigningError::BadSignature {
                what: T::WHAT,
                signer: self.signer,
            })
        }
    }

    /// Checks that the signer is `expected` and the signature is valid.
    pub fn verify_signer(&self, expected: &PublicKey) -> Result<&T, SigningError> {
        if &self.signer != expected {
            return Err(SigningError::UntrustedKey {
                what: T::WHAT,
                signer: self.signer,
            });
        }
        self.verify_embedded()
    }

    /// Checks that the signer is trusted and the signature is valid.
    pub fn verify_trusted(&self, trusted: &TrustedKeys) -> Result<&T, SigningError> {
        if !trusted.contains(&self.signer) {
            return Err(SigningError::UntrustedKey {
                what: T::WHAT,
                signer: self.signer,
            });
        }
        self.verify_embedded()
    }

    /// Canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }
}

impl<T: Signable> Serialize for Signed<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (SIGNED_VERSION, &self.body, &self.signer, &self.signature).serialize(serializer)
    }
}

impl<'de, T: Signable> Deserialize<'de> for Signed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (version, body, signer, signature): (u64, T, PublicKey, Signature) =
            Deserialize::deserialize(deserializer)?;
        if version != SIGNED_VERSION {
            return Err(serde::de::Error::custom(format!(
                "signed envelope version {version}, expected {SIGNED_VERSION}"
            )));
        }
        Ok(Signed {
            body,
            signer,
            signature,
        })
    }
}
