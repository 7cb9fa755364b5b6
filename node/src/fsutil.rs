//! Crash-safe file writes shared by every state file the node keeps, and
//! the lock that gives one process a data dir.
//!
//! A state file is either its old contents or its new contents after a
//! crash at any instant, never a torn mix: the bytes go to a temporary file
//! in the same directory, which is fsynced, renamed over the destination,
//! and then the directory is fsynced so the rename itself survives power
//! loss. These are blocking calls: async callers run them under
//! `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes concurrent temporary files of one process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Replaces `dest` with `bytes` atomically and durably: temp file in the
/// same directory, fsync, rename, fsync the directory. On error the
/// temporary file is removed and `dest` is untouched.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_name(dest)?;
    write_atomic_via(dest, bytes, &tmp).map_err(AtomicWriteError::into_io)
}

/// [`write_atomic`] for a secret that is replaced (the API token): the
/// temporary file is created with mode 0600, so the contents are never
/// readable by others, not even between create and rename.
pub fn write_atomic_private(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = temp_name(dest)?;
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        fsync_dir(parent_dir(dest))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Creates `dest` with `bytes` and permission `mode`, crash-safely and
/// never replacing an existing file (secret keys): temp file, fsync, hard
/// link to `dest` (fails with `AlreadyExists` when it exists), fsync the
/// directory. After a crash `dest` is absent or complete, never empty, so a
/// retry is not refused by a torn file.
pub fn write_new_atomic(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = parent_dir(dest);
    let tmp = temp_name(dest)?;
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::hard_link(&tmp, dest)
    })();
    let _ = fs::remove_file(&tmp);
    res?;
    fsync_dir(dir)
}

/// A fresh temporary name next to `dest`.
fn temp_name(dest: &Path) -> io::Result<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok(parent_dir(dest).join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Removes the temporary files that [`write_atomic`] and
/// [`write_new_atomic`] leave in `dir` when the process dies mid-write
/// (`.<name>.tmp-<pid>-<n>`); returns them. Call it only while no writer
/// runs there (at start, with the data dir locked). Blocking.
pub fn remove_temp_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Where [`write_atomic_via`] failed: callers that account for disk space
/// (the store) tell a failed temp write from a failed rename.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    /// Creating, writing or fsyncing the temporary file failed.
    #[error("writing temporary file: {0}")]
    Temp(#[source] io::Error),
    /// Renaming it over the destination or fsyncing the directory failed.
    #[error("replacing the file: {0}")]
    Publish(#[source] io::Error),
}

impl AtomicWriteError {
    /// The OS error, whichever step failed.
    pub fn into_io(self) -> io::Error {
        match self {
            AtomicWriteError::Temp(e) | AtomicWriteError::Publish(e) => e,
        }
    }
}

/// [`write_atomic`] with the temporary file at `tmp`, which must be on the
/// same filesystem as `dest` (the store keeps its own `tmp/` directory,
/// emptied when it opens, so a crash leaves nothing among its blobs).
pub fn write_atomic_via(dest: &Path, bytes: &[u8], tmp: &Path) -> Result<(), AtomicWriteError> {
    let res = (|| {
        let mut f = File::create(tmp).map_err(AtomicWriteError::Temp)?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(AtomicWriteError::Temp)?;
        fs::rename(tmp, dest).map_err(AtomicWriteError::Publish)?;
        fsync_dir(parent_dir(dest)).map_err(AtomicWriteError::Publish)
    })();
    if res.is_err() {
        let _ = fs::remove_file(tmp);
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

/// Name of the lock file in a data dir.
pub const LOCK_FILE: &str = "lock";

/// Why a data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("data dir {} is in use by {}", dir.display(), match pid { Some(p) => format!("pid {p}"), None => "another process".to_owned() })]
    InUse {
        /// The data dir.
        dir: PathBuf,
        /// The holder's pid, as it wrote it into the lock file.
        pid: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("locking data dir {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// An exclusive `flock` on `<data-dir>/lock`, held until dropped (or the
/// process dies, even by kill -9: the kernel releases it with the file).
/// The file holds the holder's pid, for the refusal message only; the
/// lock, not the file's existence, is what counts, so a stale file left
/// by a dead process never blocks a start.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `dir` (which must exist) for this process, or tells who holds
    /// it. Never blocks. Locks belong to the open file, so a second
    /// `acquire` in the same process is refused as well.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // No truncation before the lock is ours: the holder's pid stays
        // readable for the refusal.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::InUse {
                    dir: dir.to_owned(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(io_err)?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_write_is_owner_only_and_replaces() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("secret");
        write_atomic_private(&dest, b"old").unwrap();
        write_atomic_private(&dest, b"token").unwrap();
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&dest).unwrap(), b"token");
    }

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

    #[test]
    fn temp_files_of_a_dead_writer_are_removed_and_state_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("state.json"), b"kept").unwrap();
        let torn = dir.path().join(".state.json.tmp-4242-7");
        fs::write(&torn, b"torn").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), [torn]);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn write_new_atomic_never_replaces_and_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("secret.key");
        write_new_atomic(&dest, b"first", 0o600).unwrap();
        let err = write_new_atomic(&dest, b"second", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        let mode = fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_locked_data_dir_refuses_a_second_lock_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let expected = format!(
            "data dir {} is in use by pid {}",
            dir.path().display(),
            std::process::id()
        );
        assert_eq!(err.to_string(), expected);
        drop(first);
        // Released with the file; the stale pid in it blocks nothing.
        let again = DataDirLock::acquire(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(again.path()).unwrap().trim(),
            std::process::id().to_string()
        );
    }
}
