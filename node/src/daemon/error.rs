//! The daemon's errors.

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
