//! Crash-safe file writes shared by every state file the node keeps.
//!
//! A state file is either its old contents or its new contents after a
//! crash at any instant, never a torn mix: the bytes go to a temporary file
//! in the same directory, which is fsynced, renamed over the destination,
//! and then the directory is fsynced so the rename itself survives power
//! loss. These are blocking calls: async callers run them under
//! `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes concurrent temporary files of one process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Replaces `dest` with `bytes` atomically and durably: temp file in the
/// same directory, fsync, rename, fsync the directory. On error the
/// temporary file is removed and `dest` is untouched.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(dest, bytes, 0o666)
}

/// [`write_atomic`] for a secret: the file is created with mode 0600, so
/// it is never readable by others, not even between create and rename.
pub fn write_atomic_private(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(dest, bytes, 0o600)
}

fn write_atomic_mode(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = parent_dir(dest);
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Fsyncs a directory so a create, rename or unlink in it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_contents_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("state.json");
        write_atomic(&dest, b"first").unwrap();
        write_atomic(&dest, b"second").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_private_write_is_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("secret");
        write_atomic_private(&dest, b"token").unwrap();
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&dest).unwrap(), b"token");
    }

    #[test]
    fn a_failed_write_keeps_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("state.json");
        write_atomic(&dest, b"kept").unwrap();
        // A directory where the destination's parent should be makes the
        // write fail without touching the destination.
        let bad = dir.path().join("state.json").join("child");
        assert!(write_atomic(&bad, b"lost").is_err());
        assert_eq!(fs::read(&dest).unwrap(), b"kept");
    }
}
