//! Node identity and locality membership keys.
//!
//! - The node's ed25519 identity lives in `<data-dir>/identity.key` as the
//!   libp2p protobuf encoding, created on first start, so the PeerId is
//!   stable across restarts (peers' bans, provider records and bitfields
//!   stay meaningful).
//! - A swarm key is the go-ipfs `swarm.key` pre-shared key
//!   (`/key/swarm/psk/1.0.0/\n/base16/\n<64 hex>`), used with libp2p pnet:
//!   a node without the key cannot complete a TCP handshake with the locality.

use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use rand::RngCore as _;

use super::SwarmError;

/// File name of the identity key inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Loads the ed25519 identity at `path`, or creates it (mode 0600) if the
/// file does not exist.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, SwarmError> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| SwarmError::Identity {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| SwarmError::Identity {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            write_secret(path, &bytes)?;
            Ok(key)
        }
        Err(source) => Err(SwarmError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a go-ipfs format swarm key file.
pub fn read_swarm_key(path: &Path) -> Result<PreSharedKey, SwarmError> {
    let text = std::fs::read_to_string(path).map_err(|source| SwarmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim_end()
        .parse::<PreSharedKey>()
        .map_err(|e| SwarmError::SwarmKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Generates a fresh random swarm key and writes it to `path` (mode 0600)
/// in the go-ipfs format. Refuses to overwrite an existing file, so an
/// operator cannot lock a locality out by accident.
pub fn generate_swarm_key(path: &Path) -> Result<PreSharedKey, SwarmError> {
    if path.exists() {
        return Err(SwarmError::SwarmKey {
            path: path.to_path_buf(),
            reason: "file exists; refusing to overwrite".into(),
        });
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = PreSharedKey::new(bytes);
    write_secret(path, format!("{key}\n").as_bytes())?;
    Ok(key)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), SwarmError> {
    let io_err = |source| SwarmError::Io {
        path: PathBuf::from(path),
        source,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
    }
    // Crash-safe and never over an existing key (a torn identity would
    // change the PeerId or stop the node from starting).
    crate::fsutil::write_new_atomic(path, bytes, 0o600).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(IDENTITY_FILE);
        let a = load_or_create_identity(&p).unwrap();
        let b = load_or_create_identity(&p).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    }

    #[test]
    fn corrupt_identity_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(IDENTITY_FILE);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(
            load_or_create_identity(&p),
            Err(SwarmError::Identity { .. })
        ));
    }

    #[test]
    fn swarm_key_roundtrips_in_go_ipfs_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("swarm.key");
        let k = generate_swarm_key(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
            "{text:?}"
        );
        assert_eq!(
            read_swarm_key(&p).unwrap().fingerprint().to_string(),
            k.fingerprint().to_string()
        );
        assert!(generate_swarm_key(&p).is_err(), "must not overwrite");
        std::fs::write(&p, "/key/swarm/psk/1.0.0/\n/base16/\nzz\n").unwrap();
        assert!(matches!(
            read_swarm_key(&p),
            Err(SwarmError::SwarmKey { .. })
        ));
    }
}
