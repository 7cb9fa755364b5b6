//! The registry client's error type.

use edgeswarm_protocol::Digest;

use super::auth::CredentialError;
use super::platform::Platform;
use super::reference::ReferenceError;

/// Everything that can go wrong pulling from a registry. Every variant that
/// concerns a request names the image reference, so an operator reading a
/// status line knows which release failed and why.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference string does not parse.
    #[error("invalid image reference: {0}")]
    InvalidReference(#[from] ReferenceError),
    /// HTTP 401 after presenting whatever credentials we have.
    #[error("{reference}: unauthorized (HTTP 401) fetching {what}: {detail}")]
    Unauthorized {
        /// The image reference.
        reference: String,
        /// What was being fetched.
        what: String,
        /// Registry's error code/message, or a hint about credentials.
        detail: String,
    },
    /// HTTP 403: authenticated but not allowed.
    #[error("{reference}: access denied (HTTP 403) fetching {what}: {detail}")]
    Denied {
        /// The image reference.
        reference: String,
        /// What was being fetched.
        what: String,
        /// Registry's error code/message.
        detail: String,
    },
    /// HTTP 404: unknown repository, tag, manifest or blob.
    #[error("{reference}: {what} not found (HTTP 404): {detail}")]
    NotFound {
        /// The image reference.
        reference: String,
        /// What was being fetched.
        what: String,
        /// Registry's error code/message (`MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, ...).
        detail: String,
    },
    /// Another non-retryable HTTP status.
    #[error("{reference}: HTTP {status} fetching {what}: {detail}")]
    Http {
        /// The image reference.
        reference: String,
        /// What was being fetched.
        what: String,
        /// The status code.
        status: u16,
        /// Registry's error code/message.
        detail: String,
    },
    /// Transport failures, 5xx or 429 that persisted through every retry.
    #[error("{reference}: giving up on {what} after {attempts} attempts: {last}{hint}")]
    RetriesExhausted {
        /// The image reference.
        reference: String,
        /// What was being fetched.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
        /// A hint (e.g. about `--insecure-registry`), or empty.
        hint: &'static str,
    },
    /// Content did not hash to the digest it was requested by.
    #[error("{reference}: digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The image reference.
        reference: String,
        /// What was fetched.
        what: String,
        /// The digest asked for (or announced).
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// Content size differs from its descriptor.
    #[error("{reference}: size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The image reference.
        reference: String,
        /// What was fetched.
        what: String,
        /// Size announced by the descriptor or headers.
        expected: u64,
        /// Size received (so far).
        actual: u64,
    },
    /// A manifest or config exceeds the client's size limit.
    #[error("{reference}: {what} exceeds the {limit}-byte limit")]
    TooLarge {
        /// The image reference.
        reference: String,
        /// What was fetched.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// A manifest, index or config is malformed.
    #[error("{reference}: invalid {what}: {reason}")]
    Invalid {
        /// The image reference.
        reference: String,
        /// `manifest`, `index`, `config`.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A media type edgeswarm does not pull.
    #[error("{reference}: unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// The image reference.
        reference: String,
        /// What carried the media type.
        what: String,
        /// The media type.
        media_type: String,
    },
    /// A multi-arch index has no entry for the wanted platform.
    #[error("{reference}: no image for platform {wanted} (index offers: {available})")]
    NoMatchingPlatform {
        /// The image reference.
        reference: String,
        /// The platform asked for.
        wanted: Platform,
        /// The platforms the index lists.
        available: String,
    },
    /// Credentials could not be read or a helper failed.
    #[error("{reference}: {source}")]
    Credentials {
        /// The image reference.
        reference: String,
        /// The underlying error.
        source: CredentialError,
    },
    /// The bearer-token endpoint failed or answered nonsense.
    #[error("{reference}: token endpoint {realm}: {reason}")]
    Token {
        /// The image reference.
        reference: String,
        /// The token endpoint.
        realm: String,
        /// What went wrong.
        reason: String,
    },
    /// The registry's TLS certificate did not verify (unknown issuer, wrong
    /// name, expired): a configuration problem, so not retried.
    #[error(
        "{reference}: the registry's TLS certificate is not trusted ({reason}) fetching {what}; \
         if the registry uses an internal CA, pass its certificate with --registry-ca FILE \
         or add it to the system CA store"
    )]
    Tls {
        /// The image reference.
        reference: String,
        /// What was being fetched.
        what: String,
        /// What rustls reported.
        reason: String,
    },
    /// A `--registry-ca` file could not be used.
    #[error("--registry-ca {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A URL from the registry (redirect, realm, upload location, foreign URL) is unusable.
    #[error("{reference}: bad URL {url:?}: {reason}")]
    BadUrl {
        /// The image reference.
        reference: String,
        /// The URL text.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server answered a Range request inconsistently.
    #[error("{reference}: blob {digest}: bad range response: {reason}")]
    BadRange {
        /// The image reference.
        reference: String,
        /// The blob.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// Local I/O (test image builder, pushing files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl RegistryError {
    /// The HTTP status this error stands for, if any (for status reports).
    pub fn http_status(&self) -> Option<u16> {
        match self {
            RegistryError::Unauthorized { .. } => Some(401),
            RegistryError::Denied { .. } => Some(403),
            RegistryError::NotFound { .. } => Some(404),
            RegistryError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}
