//! Publishing a finished image directory in one atomic step (the `dir` and
//! `oci` sinks), and removing it again.
//!
//! # Layout
//! `<root>/<name>` is a symlink to `.versions/<name>@<16 hex>`, a complete
//! tree. A new version is made durable (`syncfs`), moved into `.versions/`,
//! linked under a temporary name and renamed over `<root>/<name>`:
//! rename(2) replaces the link atomically, so at any instant, crash
//! included, the path resolves to the old or the new complete tree, never
//! to nothing or a mix. The replaced version stays until the next
//! replacement of the same name, so a reader that resolved the path before
//! a swap (a shell in it, a container started from it, a copy under way)
//! keeps a complete tree for a whole generation; older versions are
//! deleted at each publish, by removal, and at start.
//!
//! A real directory at `<root>/<name>` (published before this layout)
//! is exchanged for the link with `renameat2(RENAME_EXCHANGE)`, also one
//! step, and kept as the previous version: the migration happens at the
//! image's next import.
//!
//! # Leftovers
//! A crash can leave `.import-*` work dirs, `.link-*` temporary links (or
//! an exchanged old tree) and versions no link points to.
//! [`remove_leftovers`] deletes them at start, before any import runs.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::fsutil::fsync_dir;

use super::ImportError;

/// Directory under the sink root holding the published trees.
pub(crate) const VERSIONS: &str = ".versions";
/// Prefix of an import's work directory under the sink root.
pub(crate) const WORK_PREFIX: &str = ".import-";
/// Prefix of a link before it is renamed into place.
const LINK_PREFIX: &str = ".link-";

/// Makes the complete tree `staged` (on the filesystem of `root`) the
/// content of `<root>/<name>` in one atomic step, durably; keeps the
/// version it replaced and deletes older ones. Blocking.
pub(crate) fn publish(root: &Path, name: &str, staged: &Path) -> Result<(), ImportError> {
    // Extracted files were written without fsync (one per file would cost
    // seconds on a large rootfs): one syncfs makes the whole tree durable
    // before anything points at it.
    let dir = fs::File::open(staged).map_err(|e| ImportError::io("open", staged, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| ImportError::io("syncfs", staged, e.into()))?;
    drop(dir);
    install(root, name, staged)
}

/// [`publish`] of a tree already durable.
fn install(root: &Path, name: &str, staged: &Path) -> Result<(), ImportError> {
    let versions = root.join(VERSIONS);
    fs::create_dir_all(&versions).map_err(|e| ImportError::io("create", &versions, e))?;
    let unique = format!("{:016x}", rand::random::<u64>());
    let version = format!("{name}@{unique}");
    let target = versions.join(&version);
    // Not named after the image: a name near the 255-byte limit still fits.
    let link_tmp = root.join(format!("{LINK_PREFIX}{unique}"));
    let dest = root.join(name);
    let staged_in = (|| {
        fs::rename(staged, &target).map_err(|e| ImportError::io("move into", &target, e))?;
        fsync_dir(&versions).map_err(|e| ImportError::io("fsync", &versions, e))?;
        std::os::unix::fs::symlink(Path::new(VERSIONS).join(&version), &link_tmp)
            .map_err(|e| ImportError::io("link", &link_tmp, e))?;
        swap_in(root, &link_tmp, &dest)
    })();
    let old = match staged_in {
        Ok(old) => old,
        Err(e) => {
            // Not published (the link, if any, still points at the old
            // version): drop what was moved or linked.
            let _ = fs::remove_file(&link_tmp);
            let _ = fs::remove_dir_all(&target);
            return Err(e);
        }
    };
    fsync_dir(root).map_err(|e| ImportError::io("fsync", root, e))?;
    // The replaced version stays until the next replacement, so a reader
    // that resolved the path just before this swap keeps a complete tree;
    // older ones go now. A failure here only costs disk until the next
    // start.
    let keep: Vec<OsString> = [Some(OsString::from(&version)), old]
        .into_iter()
        .flatten()
        .collect();
    if let Err(e) = prune_versions(root, name, &keep) {
        tracing::warn!(root = %root.display(), %name, error = %e, "old versions not removed");
    }
    Ok(())
}

/// Removes the versions of `name` under `<root>/.versions` but `keep`.
fn prune_versions(root: &Path, name: &str, keep: &[OsString]) -> io::Result<()> {
    let versions = root.join(VERSIONS);
    let entries = match fs::read_dir(&versions) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        if version_of(&file_name) == Some(name) && !keep.contains(&file_name) {
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// The image name of a version (`<name>@<hex>`); names never hold `@`.
fn version_of(version: &OsStr) -> Option<&str> {
    version.to_str()?.rsplit_once('@').map(|(name, _)| name)
}

/// Puts the link `link_tmp` at `dest` atomically; returns the version it
/// replaced, if edgeswarm made one.
fn swap_in(root: &Path, link_tmp: &Path, dest: &Path) -> Result<Option<OsString>, ImportError> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let old = fs::read_link(dest).ok().and_then(|t| own_version(&t));
            fs::rename(link_tmp, dest).map_err(|e| ImportError::io("replace", dest, e))?;
            Ok(old)
        }
        Ok(_) => {
            // A real tree published before versions existed: exchanged in
            // one step, after which it sits at the temporary link's name
            // and becomes the previous version.
            let aside = link_tmp.to_owned();
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                link_tmp,
                rustix::fs::CWD,
                dest,
                rustix::fs::RenameFlags::EXCHANGE,
            ) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                    // A filesystem without RENAME_EXCHANGE: two renames,
                    // once per image; a crash in between leaves the tree at
                    // the temporary name, which the next start deletes.
                    tracing::warn!(path = %dest.display(), "no RENAME_EXCHANGE here; migrating in two steps");
                    let link = fs::read_link(link_tmp)
                        .map_err(|e| ImportError::io("read link", link_tmp, e))?;
                    fs::remove_file(link_tmp)
                        .map_err(|e| ImportError::io("remove", link_tmp, e))?;
                    fs::rename(dest, &aside).map_err(|e| ImportError::io("move aside", dest, e))?;
                    std::os::unix::fs::symlink(&link, dest)
                        .map_err(|e| ImportError::io("link", dest, e))?;
                }
                Err(e) => return Err(ImportError::io("exchange", dest, e.into())),
            }
            tracing::info!(path = %dest.display(), "migrated a directory to an atomically replaceable link");
            let name = dest.file_name().unwrap_or_default().to_string_lossy();
            let version = OsString::from(format!("{name}@{:016x}", rand::random::<u64>()));
            let previous = root.join(VERSIONS).join(&version);
            match fs::rename(&aside, &previous) {
                Ok(()) => Ok(Some(version)),
                Err(e) => {
                    // Published all the same; the old tree is a leftover.
                    tracing::warn!(path = %aside.display(), error = %e, "old tree not kept");
                    Ok(None)
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(link_tmp, dest).map_err(|e| ImportError::io("rename into", dest, e))?;
            Ok(None)
        }
        Err(e) => Err(ImportError::io("inspect", dest, e)),
    }
}

/// The version name of a link target edgeswarm made
/// (`.versions/<version>`), and nothing for a link someone else made.
fn own_version(target: &Path) -> Option<OsString> {
    let mut parts = target.components();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Component::Normal(dir)), Some(Component::Normal(v)), None) if dir == VERSIONS => {
            Some(v.to_owned())
        }
        _ => None,
    }
}

/// Removes `<root>/<name>` and its versions (the current and the kept
/// previous one); true when there was something. Blocking.
pub fn remove_published(root: &Path, name: &str) -> io::Result<bool> {
    let dest = root.join(name);
    let meta = match fs::symlink_metadata(&dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        let version = fs::read_link(&dest).ok().and_then(|t| own_version(&t));
        // The link first: the path never resolves to a half-deleted tree.
        fs::remove_file(&dest)?;
        fsync_dir(root)?;
        if version.is_some() {
            prune_versions(root, name, &[])?;
        }
    } else {
        remove_tree(&dest)?;
    }
    Ok(true)
}

/// Deletes what interrupted imports and publishes left under `root`:
/// `.import-*` work dirs, `.link-*` temporary links or exchanged trees,
/// and versions no published link points to. Returns what it removed.
/// Must not run while an import into `root` runs. Blocking.
pub(crate) fn remove_leftovers(root: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    let mut live: HashSet<OsString> = HashSet::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        if starts_with(&name, WORK_PREFIX) || starts_with(&name, LINK_PREFIX) {
            remove_tree(&path)?;
            removed.push(path);
        } else if entry.file_type()?.is_symlink() {
            if let Some(v) = fs::read_link(&path).ok().and_then(|t| own_version(&t)) {
                live.insert(v);
            }
        }
    }
    let versions = root.join(VERSIONS);
    match fs::read_dir(&versions) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if !live.contains(&entry.file_name()) {
                    remove_tree(&entry.path())?;
                    removed.push(entry.path());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if !removed.is_empty() {
        fsync_dir(root)?;
    }
    Ok(removed)
}

fn starts_with(name: &OsStr, prefix: &str) -> bool {
    name.as_encoded_bytes().starts_with(prefix.as_bytes())
}

/// Removes a file, link or whole directory tree (never following links).
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const FILES: [&str; 3] = ["a", "b", "c"];

    /// A complete tree of generation `gen`, staged like an import's.
    fn staged(root: &Path, gen: u32) -> PathBuf {
        let dir = root.join(format!("{WORK_PREFIX}{gen}"));
        fs::create_dir_all(&dir).unwrap();
        for f in FILES {
            fs::write(dir.join(f), gen.to_string()).unwrap();
        }
        dir
    }

    fn versions(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(root.join(VERSIONS))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_published_path_always_resolves_to_a_complete_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        install(&root, "img", &staged(&root, 0)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (root, stop) = (root.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut reads, mut failures) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    for f in FILES {
                        match fs::read(root.join("img").join(f)) {
                            Ok(bytes) if !bytes.is_empty() => reads += 1,
                            Ok(_) => failures.push(format!("{f} empty")),
                            Err(e) => failures.push(format!("{f}: {e}")),
                        }
                    }
                }
                (reads, failures)
            })
        };
        // Spaced like (much faster than) real releases: a reader only
        // needs to finish one lookup within a generation.
        for gen in 1..=100 {
            let dir = staged(&root, gen);
            install(&root, "img", &dir).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let (reads, failures) = reader.join().unwrap();
        assert!(reads > 0);
        assert!(
            failures.is_empty(),
            "{} of {} reads failed, e.g. {:?}",
            failures.len(),
            reads + failures.len() as u64,
            failures.first()
        );
        assert_eq!(fs::read(root.join("img/a")).unwrap(), b"100");
        // The current and the one replaced version, no more.
        assert_eq!(versions(&root).len(), 2);
    }

    #[test]
    fn a_real_directory_is_migrated_in_one_step_and_kept_as_previous() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // What earlier releases published: a plain directory.
        let legacy = staged(root, 1);
        fs::rename(&legacy, root.join("img")).unwrap();
        let held = fs::File::open(root.join("img/a")).unwrap();
        install(root, "img", &staged(root, 2)).unwrap();
        assert!(fs::symlink_metadata(root.join("img"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(root.join("img/a")).unwrap(), b"2");
        let previous: Vec<_> = versions(root)
            .into_iter()
            .filter(|v| fs::read(root.join(VERSIONS).join(v).join("a")).unwrap() == b"1")
            .collect();
        assert_eq!(
            previous.len(),
            1,
            "the old tree is kept as the previous version"
        );
        assert_eq!(
            std::io::read_to_string(held).unwrap(),
            "1",
            "an open file of the old tree still reads"
        );
        install(root, "img", &staged(root, 3)).unwrap();
        assert_eq!(versions(root).len(), 2);
        assert!(!root.join(VERSIONS).join(&previous[0]).exists());
    }

    #[test]
    fn removal_drops_the_link_and_every_version_of_that_name_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        install(root, "img", &staged(root, 1)).unwrap();
        install(root, "img", &staged(root, 2)).unwrap();
        install(root, "other", &staged(root, 3)).unwrap();
        // A name that extends another must not lose its versions.
        install(root, "img_x", &staged(root, 4)).unwrap();
        assert!(remove_published(root, "img").unwrap());
        assert!(!remove_published(root, "img").unwrap());
        assert!(fs::symlink_metadata(root.join("img")).is_err());
        let left = versions(root);
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(fs::read(root.join("other/a")).unwrap(), b"3");
        assert_eq!(fs::read(root.join("img_x/a")).unwrap(), b"4");
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_and_published_trees_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        install(root, "img", &staged(root, 1)).unwrap();
        install(root, "img", &staged(root, 2)).unwrap();
        // Killed mid-import, mid-publish (moved but not linked, linked but
        // not renamed into place).
        staged(root, 3);
        fs::rename(staged(root, 4), root.join(VERSIONS).join("img@dead")).unwrap();
        std::os::unix::fs::symlink(".versions/img@dead", root.join(".link-00000000deadbeef"))
            .unwrap();
        let removed = remove_leftovers(root).unwrap();
        // Work dir, link, unlinked version, and the previous version.
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(removed.contains(&root.join(format!("{WORK_PREFIX}3"))));
        assert!(removed.contains(&root.join(VERSIONS).join("img@dead")));
        assert_eq!(fs::read(root.join("img/a")).unwrap(), b"2");
        let mut top: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(top, [VERSIONS, "img"]);
        assert_eq!(versions(root).len(), 1);
        assert!(remove_leftovers(root).unwrap().is_empty());
    }
}
