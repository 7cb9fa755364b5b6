//! The daemon's errors: [`DaemonError`] for what its callers asked
//! (start, deploy, remove), [`ReleaseError`] for why a release failed on
//! this node (shown in status as its error).

use std::path::PathBuf;

use edgeswarm_protocol::{AddressError, Digest};

use crate::import::ImportError;
use crate::registry::manifest::ManifestParseError;
use crate::registry::{ReferenceError, RegistryError};
use crate::store::StoreError;

/// Why the daemon could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error("chunk store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The network layer could not start.
    #[error("swarm: {0}")]
    Swarm(#[from] crate::swarm::SwarmError),
    /// The registry client could not be built.
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The import sink could not be set up.
    #[error("import: {0}")]
    Import(#[from] crate::import::ImportError),
    /// A release was refused.
    #[error("release refused: {0}")]
    Refused(String),
    /// The node's identity key cannot sign (it must be ed25519).
    #[error("node identity: {0}")]
    Identity(String),
    /// The request conflicts with work in progress (retry later).
    #[error("{0}")]
    Conflict(String),
    /// A removal request was refused (untrusted, other locality, malformed).
    #[error("removal refused: {0}")]
    RemovalRefused(String),
    /// Removing an image's files failed.
    #[error("removing the image: {0}")]
    Remove(String),
}

/// Why a release failed on this node: the gateway's registry pull or the
/// fetch-and-import pipeline. Its text is the release's `error` in status,
/// on this node and, through status gossip, on every other.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReleaseError {
    /// The node is shutting down; the release is left unfinished.
    #[error("node shutting down")]
    ShuttingDown,
    /// Another gateway acts on the release now (see
    /// `election::elect_acting`): this node's pull stops, not failed.
    #[error("another gateway acts on the release")]
    NotElected,
    /// This node was elected gateway but has no registry client.
    #[error("elected as gateway without registry access")]
    NoRegistry,
    /// The release's image reference does not parse.
    #[error("bad image reference {image:?}: {source}")]
    Reference {
        /// The reference as the release names it.
        image: String,
        /// Why it does not parse.
        source: ReferenceError,
    },
    /// The registry failed (resolve or layer stream).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry served another manifest than the release pins.
    #[error("registry served manifest {served} for {image}, the release pins {pinned}")]
    ManifestMismatch {
        /// What the registry served.
        served: Digest,
        /// The image reference.
        image: String,
        /// What the release pins.
        pinned: Digest,
    },
    /// The store refused a blob, chunk, digest or pin.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A registry stream ended before the layer's last chunk.
    #[error("registry stream for layer {blob} ended at chunk {index} of {end}")]
    StreamEnded {
        /// The layer.
        blob: Digest,
        /// The first chunk not received.
        index: u32,
        /// The end of the run of chunks asked for.
        end: u32,
    },
    /// A layer too large to chunk (over 2 TiB: more than `MAX_CHUNKS`
    /// chunks even at the largest chunk size).
    #[error("layer {blob} of {size} bytes is too large to chunk")]
    LayerTooLarge {
        /// The layer.
        blob: Digest,
        /// Its size.
        size: u64,
    },
    /// The store holds every chunk of a layer but did not complete it.
    #[error("layer {0} holds every chunk but did not complete")]
    Incomplete(Digest),
    /// A task of the release panicked or was cancelled.
    #[error("{what} task failed: {source}")]
    Task {
        /// Which task (`hashing`, `fetch`).
        what: &'static str,
        /// What happened to it.
        source: tokio::task::JoinError,
    },
    /// The release pins an index, where a platform manifest is needed.
    #[error("the release pins an index, not a platform manifest")]
    PinsIndex,
    /// The pinned manifest does not parse.
    #[error("manifest {digest}: {source}")]
    Manifest {
        /// The manifest digest.
        digest: Digest,
        /// Why it does not parse.
        source: ManifestParseError,
    },
    /// A digest in the manifest or config does not parse.
    #[error("{what}: {source}")]
    Digest {
        /// Which digest (`manifest config digest`, `layer digest ...`).
        what: String,
        /// Why it does not parse.
        source: AddressError,
    },
    /// The image config is not the JSON expected.
    #[error("image config: {0}")]
    Config(serde_json::Error),
    /// The manifest and the config disagree on the number of layers.
    #[error("manifest lists {layers} layers, config {diff_ids} diff_ids")]
    LayerCount {
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
    /// A blob fetched into the store is no longer there.
    #[error("blob {0} vanished from the store")]
    Vanished(Digest),
    /// Reading a blob's file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A manifest or config is larger than the daemon reads into memory.
    #[error("document {digest} is {len} bytes, too large")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        len: u64,
    },
    /// The release was superseded, removed or failed while this node
    /// waited for its blobs: nothing will complete it any more.
    #[error("gave up waiting for the release: {0}")]
    Abandoned(String),
    /// No peer delivered a blob of a registry-mirror pull before the
    /// deadline.
    #[error("blob {blob} not available in the locality after {secs}s: {last_error}")]
    Unavailable {
        /// The blob.
        blob: Digest,
        /// The deadline, in seconds.
        secs: u64,
        /// The last attempt's error, as the swarm reported it (attempts
        /// fail in different ways; the last one is the telling one).
        last_error: String,
    },
    /// The import into the sink failed.
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl ReleaseError {
    /// Whether a gateway pull that failed with this may succeed later
    /// unchanged: the registry unreachable or failing (connection errors,
    /// 5xx, retries exhausted, a stream cut short, a token endpoint down).
    /// Answers that will not change without a new release (not found,
    /// denied, a digest that does not match, a malformed image) are final.
    pub(super) fn is_transient(&self) -> bool {
        use crate::registry::RegistryError as R;
        match self {
            ReleaseError::Registry(e) => matches!(
                e,
                R::RetriesExhausted { .. } | R::Http { .. } | R::Io { .. } | R::Token { .. }
            ),
            ReleaseError::StreamEnded { .. } | ReleaseError::Incomplete(_) => true,
            _ => false,
        }
    }

    /// Why a transient failure happened, in a few words, for the retry
    /// reason status shows on every node (at most [`RETRY_CAUSE_CHARS`]
    /// characters).
    pub(super) fn retry_cause(&self) -> String {
        use crate::registry::RegistryError as R;
        let cause = match self {
            ReleaseError::Registry(R::RetriesExhausted { last, .. }) => {
                format!("registry unreachable ({last})")
            }
            ReleaseError::Registry(R::Http { status, .. }) => {
                format!("registry answered HTTP {status}")
            }
            ReleaseError::Registry(R::Token { reason, .. }) => {
                format!("registry token endpoint failing ({reason})")
            }
            ReleaseError::StreamEnded { .. } | ReleaseError::Incomplete(_) => {
                "registry stream cut short".to_owned()
            }
            other => other.to_string(),
        };
        if cause.chars().count() > RETRY_CAUSE_CHARS {
            let mut short: String = cause.chars().take(RETRY_CAUSE_CHARS - 1).collect();
            short.push('…');
            short
        } else {
            cause
        }
    }
}

/// Longest retry cause ([`ReleaseError::retry_cause`]): the reason must
/// fit a status line, and travel in status gossip for every release.
pub(super) const RETRY_CAUSE_CHARS: usize = 160;
