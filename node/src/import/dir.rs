//! The `dir` sink: an extracted root filesystem per image.
//!
//! # Layout
//! `<root>/<name>` is the finished rootfs (ready for runc, crun or
//! `podman --rootfs`): a symlink to a complete version under
//! `<root>/.versions/`, replaced atomically by the next import of the same
//! reference (see `publish`). While importing, everything lives in
//! `<root>/.import-XXXX/`: `layer-<i>/` per layer and `rootfs/` for the
//! merged result, which is published only after every layer verified. A
//! failed import drops the work directory, so nothing is left.
//!
//! # How
//! Layers extract in parallel, each into its own empty staging directory
//! (so each layer's extraction overlaps its own download and the others').
//! Whiteouts and opaque markers are recorded, not written. Staged layers
//! are then merged in order into `rootfs/`: opaque dirs emptied, whiteouts
//! removed, then the staged entries *renamed* into place (cheap: same
//! filesystem, no copy). Directory modes and mtimes are applied last,
//! deepest first, so creating children cannot disturb them.
//!
//! # Safety against hostile tars
//! Entry paths must be relative without `..`; every parent component is
//! checked with `lstat` and must be a real directory (never a symlink), both
//! while staging and while merging; hard link targets obey the same rules;
//! GNU long names and PAX headers are size-capped before being read, so an
//! oversized header cannot exhaust memory. Symlinks themselves may point
//! anywhere (they are data) and are never followed while staging. When a
//! layer's path runs through a *lower* layer's symlink (e.g. `lib/x.so`
//! over `lib -> usr/lib`, or a whiteout there), the merge resolves it as a
//! chroot would, like Docker's layer application: absolute targets restart
//! at the rootfs and `..` stops there, so nothing lands outside.
//!
//! Measured on Docker 20.10/overlay2: a hard link to a file of a lower
//! layer fails there ("link ...: no such file or directory"); this sink
//! accepts it (deferred until the merge) but images built for Docker never
//! contain one.
//!
//! # Non-goals
//! Sparse files and PAX size overrides (files >8 GiB) are rejected; device
//! nodes are skipped (with a warning) unless [`DirPolicy::device_nodes`]
//! and root; setuid/setgid bits and `security.capability` xattrs are
//! stripped unless [`DirPolicy::keep_setid`]; the sink root is 0700; xattrs
//! of directories that already existed in a lower layer are not updated.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use super::layer::{stream_layer, LayerStats};
use super::publish::{publish, WORK_PREFIX};
use super::{
    image_dir_name, is_echo, DirPolicy, ImageImport, ImportError, ImportOptions, LayerAction,
    LayerInfo, LayerReport, ParsedImage,
};

/// Longest GNU long name / long link we accept (Linux PATH_MAX is 4096).
const MAX_LONG_NAME: u64 = 64 * 1024;
/// Largest PAX extension header we accept (xattrs included).
const MAX_PAX: u64 = 1024 * 1024;

/// Who extracts, and what the [`DirPolicy`] lets a layer create.
#[derive(Clone, Copy, Debug)]
struct Perms {
    /// The node runs as root (owners, device nodes possible).
    is_root: bool,
    /// What the operator allowed.
    policy: DirPolicy,
}

/// Metadata a tar gives a directory, applied after everything is in place.
#[derive(Clone, Copy, Debug)]
struct DirMeta {
    mode: u32,
    mtime: i64,
    uid: u64,
    gid: u64,
}

/// What extracting one layer into its staging dir leaves to the merge.
#[derive(Debug, Default)]
struct Staged {
    /// Paths whose lower-layer content the layer deletes (`.wh.<name>`).
    whiteouts: Vec<PathBuf>,
    /// Directories whose lower-layer content the layer hides (`.wh..wh..opq`).
    opaques: Vec<PathBuf>,
    /// Hard links whose target lives in a lower layer: (path, target).
    links: Vec<(PathBuf, PathBuf)>,
    /// Directories the tar names explicitly, with their metadata.
    dirs: Vec<(PathBuf, DirMeta)>,
}

pub(super) async fn import(
    root: &Path,
    image: ImageImport,
    parsed: ParsedImage,
    options: &ImportOptions,
) -> Result<(String, Vec<LayerReport>), ImportError> {
    let root = root.to_owned();
    let name = image_dir_name(&image.reference);
    let work = {
        let root = root.clone();
        blocking(move || {
            fs::create_dir_all(&root).map_err(|e| ImportError::io("create", &root, e))?;
            // Like Docker's 0710 data root: the trees below keep the
            // image's modes for the container, and local users cannot
            // reach them.
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
                .map_err(|e| ImportError::io("chmod", &root, e))?;
            let work = tempfile::Builder::new()
                .prefix(WORK_PREFIX)
                .tempdir_in(&root)
                .map_err(|e| ImportError::io("create temp dir in", &root, e))?;
            let merged = work.path().join("rootfs");
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&merged)
                .map_err(|e| ImportError::io("create", &merged, e))?;
            Ok(work)
        })
        .await?
    };
    let merged = work.path().join("rootfs");
    let is_root = rustix::process::geteuid().is_root();
    let perms = Perms {
        is_root,
        policy: options.dir,
    };
    let abort = Arc::new(AtomicBool::new(false));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        options.max_parallel_layers.max(1),
    ));

    // Spawn extraction tasks in layer order (permits are handed out FIFO,
    // so the lowest unfinished layer always runs) from a separate task, so
    // merging layer 0 can start while later layers wait for permits.
    let layer_count = image.layers.len();
    let (handles_tx, mut handles_rx) = tokio::sync::mpsc::channel(layer_count.max(1));
    let spawner = {
        let work_path = work.path().to_owned();
        let abort = abort.clone();
        let infos = parsed.layers.clone();
        let sources = image.layers;
        tokio::spawn(async move {
            for (index, (source, info)) in sources.into_iter().zip(infos).enumerate() {
                let Ok(permit) = semaphore.clone().acquire_owned().await else {
                    return;
                };
                if abort.load(Ordering::Relaxed) {
                    return; // a layer failed: leave the rest unread
                }
                let staging = work_path.join(format!("layer-{index}"));
                let abort = abort.clone();
                let handle = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let span = tracing::debug_span!("extract_layer", index);
                    let _enter = span.enter();
                    let mut reader = source.reader;
                    extract_layer(index, &mut *reader, &info, &staging, abort, perms)
                        .map(|(stats, staged)| (stats, staged, staging))
                });
                if handles_tx.send(handle).await.is_err() {
                    return;
                }
            }
        })
    };

    let mut reports = Vec::with_capacity(layer_count);
    let mut dir_meta: BTreeMap<PathBuf, DirMeta> = BTreeMap::new();
    let mut failure = None;
    while let Some(handle) = handles_rx.recv().await {
        let result = match handle.await {
            Ok(r) => r,
            Err(e) => Err(ImportError::Task(e.to_string())),
        };
        if failure.is_some() {
            // Draining: let every thread finish before cleanup, but report
            // the real cause rather than an echo of the abort.
            if let Err(e) = result {
                if failure.as_ref().is_some_and(is_echo) && !is_echo(&e) {
                    failure = Some(e);
                }
            }
            continue;
        }
        match result {
            Ok((stats, staged, staging)) => {
                let merged = merged.clone();
                let meta = std::mem::take(&mut dir_meta);
                let index = reports.len();
                match blocking(move || {
                    let mut meta = meta;
                    merge_layer(index, &merged, &staging, staged, &mut meta)?;
                    Ok(meta)
                })
                .await
                {
                    Ok(meta) => {
                        dir_meta = meta;
                        reports.push(LayerReport {
                            diff_id: stats.diff_id,
                            action: LayerAction::Imported,
                            stats: Some(stats),
                        });
                    }
                    Err(e) => {
                        abort.store(true, Ordering::Relaxed);
                        failure = Some(e);
                    }
                }
            }
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                failure = Some(e);
            }
        }
    }
    let _ = spawner.await;
    if let Some(e) = failure {
        // Dropping `work` removes every staged and merged file.
        let _ = blocking(move || {
            drop(work);
            Ok(())
        })
        .await;
        return Err(e);
    }

    let location = root.join(&name);
    blocking(move || {
        apply_dir_meta(&merged, &dir_meta, is_root)?;
        publish(&root, &name, &merged)?;
        drop(work);
        Ok(())
    })
    .await?;
    Ok((location.display().to_string(), reports))
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImportError> + Send + 'static,
) -> Result<T, ImportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImportError::Task(e.to_string()))?
}

fn extract_layer(
    index: usize,
    reader: &mut dyn Read,
    info: &LayerInfo,
    staging: &Path,
    abort: Arc<AtomicBool>,
    perms: Perms,
) -> Result<(LayerStats, Staged), ImportError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(staging)
        .map_err(|e| ImportError::io("create", staging, e))?;
    let mut staged = Staged::default();
    let stats = stream_layer(
        reader,
        info.compression,
        info.expected(index),
        None,
        Some(abort),
        &mut |plain| extract_tar(index, plain, staging, &mut staged, perms),
    )?;
    Ok((stats, staged))
}

/// A tar entry's path made relative and checked: no root, no `..`.
fn clean_path(index: usize, raw: &[u8]) -> Result<PathBuf, ImportError> {
    let unsafe_entry = |reason| ImportError::UnsafeEntry {
        index,
        path: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    if raw.contains(&0) {
        return Err(unsafe_entry("NUL byte in path"));
    }
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Prefix(_) | Component::RootDir => return Err(unsafe_entry("absolute path")),
            Component::ParentDir => return Err(unsafe_entry("path traversal (..)")),
            Component::CurDir => {}
            Component::Normal(c) => out.push(c),
        }
    }
    Ok(out)
}

/// Checks that every component of `rel` below `base` is a real directory
/// (not a symlink), creating missing ones when `create`. Returns false when
/// a component is missing and `create` is off.
fn walk_dirs(base: &Path, rel: &Path, create: bool) -> Result<bool, &'static str> {
    let mut current = base.to_owned();
    for component in rel.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => return Err("a parent directory is a symlink"),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err("a parent is not a directory"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(false);
                }
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&current)
                    .map_err(|_| "cannot create parent directory")?;
            }
            Err(_) => return Err("cannot inspect parent directory"),
        }
    }
    Ok(true)
}

/// Removes whatever is at `path` (never following a symlink).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Size of the buffer a regular file's data is written from. Every write
/// but a file's last is this full: a short write would leave each later one
/// straddling filesystem blocks, and ext4 zero-fills the uncovered part of
/// a new block before copying into it (`zero_user_segments` was 17 % of
/// the nodes' `write` time at N = 21, `dir`, with 8 KiB writes that a
/// decompressor's short reads had misaligned).
const WRITE_BUF: usize = 256 * 1024;

/// A directory tree this sink writes (a layer's staging dir, the merged
/// rootfs), reached through directory fds: each path is walked from its
/// parent rather than from `/` (these trees sit a dozen components deep),
/// and the directories found to be real are remembered, so an entry costs
/// a few single-component calls instead of an `lstat` per ancestor.
///
/// The memory is sound because nothing else writes the tree while it is
/// used (it lives in a private work dir), and the only way this code turns
/// a directory into anything else is [`Tree::remove`], which forgets
/// every directory when it removes one.
struct Tree {
    /// The tree's root, for error messages and the rare path-based call.
    path: PathBuf,
    /// The root, opened.
    root: Rc<OwnedFd>,
    /// Paths (relative to the root) checked to be real directories, not
    /// symlinks, since a directory was last removed.
    dirs: HashSet<PathBuf>,
    /// The last parent directory opened, and its fd: entries of one
    /// directory come together in a tar.
    parent: Option<(PathBuf, Rc<OwnedFd>)>,
}

/// Opens a directory (never through a symlink at its last component) for
/// use as the base of `*at` calls only.
fn open_dir(base: impl AsFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rustix::fs::openat(
        base,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Tree {
    /// Opens the tree rooted at `path`.
    fn open(path: &Path) -> io::Result<Tree> {
        Ok(Tree {
            path: path.to_owned(),
            root: Rc::new(open_dir(rustix::fs::CWD, path)?),
            dirs: HashSet::new(),
            parent: None,
        })
    }

    /// Checks that every component of `rel` is a real directory (not a
    /// symlink), creating missing ones when `create`. Returns false when
    /// a component is missing and `create` is off.
    fn check_dirs(&mut self, rel: &Path, create: bool) -> Result<bool, &'static str> {
        if self.dirs.contains(rel) {
            return Ok(true);
        }
        let mut current = PathBuf::new();
        for component in rel.components() {
            current.push(component);
            if self.dirs.contains(&current) {
                continue;
            }
            match rustix::fs::statat(&*self.root, &current, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Symlink => return Err("a parent directory is a symlink"),
                    FileType::Directory => {}
                    _ => return Err("a parent is not a directory"),
                },
                Err(Errno::NOENT) => {
                    if !create {
                        return Ok(false);
                    }
                    rustix::fs::mkdirat(&*self.root, &current, Mode::from_raw_mode(0o755))
                        .map_err(|_| "cannot create parent directory")?;
                }
                Err(_) => return Err("cannot inspect parent directory"),
            }
            self.dirs.insert(current.clone());
        }
        Ok(true)
    }

    /// The directory `rel` opened, after [`Tree::check_dirs`] (creating).
    fn parent(&mut self, rel: &Path) -> Result<Rc<OwnedFd>, &'static str> {
        if let Some((cached, fd)) = &self.parent {
            if cached == rel {
                return Ok(fd.clone());
            }
        }
        self.check_dirs(rel, true)?;
        let fd = Rc::new(open_dir(&*self.root, rel).map_err(|_| "cannot open parent directory")?);
        self.parent = Some((rel.to_owned(), fd.clone()));
        Ok(fd)
    }

    /// What is at `name` in `dir`, not following a symlink; `None` if
    /// nothing.
    fn kind_at(dir: &OwnedFd, name: impl AsRef<Path>) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(dir, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes whatever is at `name` in `dir` (the directory `rel_dir`),
    /// never following a symlink. Removing a directory forgets every
    /// directory known (it may have held some).
    fn remove(&mut self, dir: &OwnedFd, rel_dir: &Path, name: &OsStr) -> io::Result<()> {
        match Tree::kind_at(dir, name)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                self.dirs.clear();
                self.parent = None;
                fs::remove_dir_all(self.path.join(rel_dir).join(name))
            }
            Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
        }
    }

    /// Sets the owner (as root) and xattrs (best effort) of `name` in
    /// `dir`, never following a symlink.
    fn set_owner_xattrs(&self, dir: &OwnedFd, rel: &Path, name: &OsStr, owner: &Owner) {
        if owner.is_root {
            if let Err(e) = rustix::fs::chownat(
                dir,
                name,
                Some(raw_uid(owner.uid)),
                Some(raw_gid(owner.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                tracing::debug!(path = %rel.display(), error = %e, "lchown failed");
            }
        }
        if !owner.xattrs.is_empty() {
            // Rare (PAX xattr records): path-based, as xattr calls have no
            // `*at` form.
            let path = self.path.join(rel);
            for (key, value) in &owner.xattrs {
                if let Err(e) = xattr::set(&path, OsStr::from_bytes(key), value) {
                    tracing::debug!(path = %rel.display(), error = %e, "xattr not kept");
                }
            }
        }
    }
}

/// Who owns an entry, and its xattrs.
struct Owner {
    /// The node runs as root (owners can be set).
    is_root: bool,
    /// The entry's owner.
    uid: u64,
    /// The entry's group.
    gid: u64,
    /// The entry's xattrs (name, value).
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A tar's uid as the kernel takes it (a tar may hold any number; the
/// kernel, like `lchown`, truncates to 32 bits).
fn raw_uid(uid: u64) -> Uid {
    Uid::from_raw_unchecked(uid as u32)
}

/// A tar's gid as the kernel takes it (see [`raw_uid`]).
fn raw_gid(gid: u64) -> Gid {
    Gid::from_raw_unchecked(gid as u32)
}

/// Makes directory `name` in `dir`, keeping a directory already there and
/// replacing anything else.
fn make_dir_at(tree: &mut Tree, dir: &OwnedFd, rel_dir: &Path, name: &OsStr) -> io::Result<()> {
    let mode = Mode::from_raw_mode(0o755);
    match rustix::fs::mkdirat(dir, name, mode) {
        Err(Errno::EXIST) => {
            if Tree::kind_at(dir, name)? != Some(FileType::Directory) {
                tree.remove(dir, rel_dir, name)?;
                rustix::fs::mkdirat(dir, name, mode)?;
            }
            Ok(())
        }
        other => Ok(other?),
    }
}

/// An mtime as the `*at`/`f*` time calls take it (atime = mtime, as
/// extraction has always set it).
fn timestamps(mtime: i64) -> Timestamps {
    let at = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

/// Sets `name`'s mtime in `dir` (not following a symlink), best effort.
fn set_mtime_at(dir: &OwnedFd, rel: &Path, name: &OsStr, mtime: i64) {
    if let Err(e) = rustix::fs::utimensat(dir, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
    {
        tracing::debug!(path = %rel.display(), error = %e, "cannot set mtime");
    }
}

/// Creates `name` in `dir` with `create`; when something is already there,
/// removes it (never following a symlink) and creates once more.
fn create_replacing<T>(
    tree: &mut Tree,
    dir: &OwnedFd,
    rel_dir: &Path,
    name: &OsStr,
    mut create: impl FnMut() -> rustix::io::Result<T>,
) -> io::Result<T> {
    match create() {
        Err(Errno::EXIST) => {
            tree.remove(dir, rel_dir, name)?;
            Ok(create()?)
        }
        other => Ok(other?),
    }
}

/// Copies a tar entry's data into `file` in writes of a whole `buf` each
/// (see [`WRITE_BUF`]).
fn copy_in_full_writes(
    entry: &mut dyn Read,
    file: &mut fs::File,
    buf: &mut [u8],
) -> io::Result<()> {
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match entry.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        file.write_all(&buf[..filled])?;
        if filled < buf.len() {
            return Ok(());
        }
    }
}

/// Pending GNU/PAX extension data for the next entry.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

fn read_capped(
    index: usize,
    entry: &mut dyn Read,
    size: u64,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, ImportError> {
    if size > cap {
        return Err(ImportError::BadTar {
            index,
            reason: format!("{what} header of {size} bytes exceeds the {cap}-byte limit"),
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .take(cap)
        .read_to_end(&mut buf)
        .map_err(|source| ImportError::LayerStream { index, source })?;
    while buf.last() == Some(&0) {
        buf.pop();
    }
    Ok(buf)
}

fn parse_num<T: std::str::FromStr>(
    index: usize,
    key: &str,
    value: &[u8],
) -> Result<T, ImportError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ImportError::BadTar {
            index,
            reason: format!("bad PAX {key} value"),
        })
}

fn extract_tar(
    index: usize,
    plain: &mut dyn Read,
    staging: &Path,
    staged: &mut Staged,
    perms: Perms,
) -> Result<(), ImportError> {
    let is_root = perms.is_root;
    let bad = |reason: String| ImportError::BadTar { index, reason };
    let mut stripped = 0usize;
    let mut tree = Tree::open(staging).map_err(|e| ImportError::io("open", staging, e))?;
    let mut write_buf = vec![0u8; WRITE_BUF];
    let mut archive = tar::Archive::new(plain);
    // Raw mode: we handle long names and PAX ourselves, with size caps.
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?.raw(true);
    let mut ext = Extensions::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let kind = entry.header().entry_type();
        let size = entry
            .header()
            .entry_size()
            .map_err(|e| bad(e.to_string()))?;
        match kind {
            EntryType::GNULongName => {
                ext.long_name = Some(read_capped(
                    index,
                    &mut entry,
                    size,
                    MAX_LONG_NAME,
                    "GNU long name",
                )?);
                continue;
            }
            EntryType::GNULongLink => {
                ext.long_link = Some(read_capped(
                    index,
                    &mut entry,
                    size,
                    MAX_LONG_NAME,
                    "GNU long link",
                )?);
                continue;
            }
            EntryType::XHeader => {
                ext.pax = Some(read_capped(index, &mut entry, size, MAX_PAX, "PAX")?);
                continue;
            }
            EntryType::XGlobalHeader => {
                read_capped(index, &mut entry, size, MAX_PAX, "PAX global")?;
                continue;
            }
            EntryType::GNUSparse => return Err(bad("sparse files are not supported".into())),
            _ => {}
        }
        let header = entry.header().clone();
        let mut path_bytes = ext
            .long_name
            .take()
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let mut link_bytes = ext
            .long_link
            .take()
            .or_else(|| header.link_name_bytes().map(|c| c.into_owned()));
        let mut uid = header.uid().map_err(|e| bad(e.to_string()))?;
        let mut gid = header.gid().map_err(|e| bad(e.to_string()))?;
        let mut mtime = header.mtime().map_err(|e| bad(e.to_string()))? as i64;
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if let Some(pax) = ext.pax.take() {
            for record in tar::PaxExtensions::new(&pax) {
                let record = record.map_err(|e| bad(format!("bad PAX record: {e}")))?;
                let (key, value) = (record.key_bytes(), record.value_bytes());
                match key {
                    b"path" => path_bytes = value.to_vec(),
                    b"linkpath" => link_bytes = Some(value.to_vec()),
                    b"uid" => uid = parse_num(index, "uid", value)?,
                    b"gid" => gid = parse_num(index, "gid", value)?,
                    b"mtime" => mtime = parse_num(index, "mtime", value)?,
                    b"size" => {
                        let pax_size: u64 = parse_num(index, "size", value)?;
                        if pax_size != size {
                            return Err(bad(
                                "PAX size override (file > 8 GiB) not supported".into()
                            ));
                        }
                    }
                    k if k.starts_with(b"SCHILY.xattr.") => {
                        xattrs.push((k[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()));
                    }
                    _ => {}
                }
            }
        }
        let rel = clean_path(index, &path_bytes)?;
        let unsafe_entry = |reason| ImportError::UnsafeEntry {
            index,
            path: String::from_utf8_lossy(&path_bytes).into_owned(),
            reason,
        };
        let mut mode = header.mode().map_err(|e| bad(e.to_string()))? & 0o7777;
        if !perms.policy.keep_setid {
            // A setuid-root binary in a tree local users can reach is a
            // root shell for them; file capabilities likewise.
            let before = xattrs.len();
            xattrs.retain(|(name, _)| name.as_slice() != b"security.capability");
            if mode & 0o6000 != 0 || xattrs.len() != before {
                stripped += 1;
            }
            mode &= !0o6000;
        }
        let meta = DirMeta {
            mode,
            mtime,
            uid,
            gid,
        };
        let Some(file_name) = rel.file_name().map(|n| n.as_bytes().to_vec()) else {
            // The root itself ("./").
            if kind == EntryType::Directory {
                staged.dirs.push((PathBuf::new(), meta));
            }
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
        if file_name == b".wh..wh..opq" {
            staged.opaques.push(parent);
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(b".wh.") {
            if hidden.starts_with(b".wh.") {
                continue; // aufs bookkeeping (.wh..wh.plnk etc.)
            }
            let target = clean_path(index, hidden)?;
            if target.components().count() != 1 {
                return Err(unsafe_entry("whiteout names a path, not a name"));
            }
            staged.whiteouts.push(parent.join(target));
            continue;
        }
        let dir = tree.parent(&parent).map_err(unsafe_entry)?;
        let name = OsStr::from_bytes(&file_name);
        let owner = Owner {
            is_root,
            uid,
            gid,
            xattrs,
        };
        let io_err = |op, e| ImportError::io(op, &staging.join(&rel), e);
        match kind {
            EntryType::Directory => {
                make_dir_at(&mut tree, &dir, &parent, name).map_err(|e| io_err("mkdir", e))?;
                tree.dirs.insert(rel.clone());
                tree.set_owner_xattrs(&dir, &rel, name, &owner);
                staged.dirs.push((rel, meta));
            }
            EntryType::Regular | EntryType::Continuous => {
                let file = create_replacing(&mut tree, &dir, &parent, name, || {
                    rustix::fs::openat(
                        &*dir,
                        name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                })
                .map_err(|e| io_err("create", e))?;
                let mut file = fs::File::from(file);
                copy_in_full_writes(&mut entry, &mut file, &mut write_buf)
                    .map_err(|source| ImportError::LayerStream { index, source })?;
                // Through the open file: no path walked for any of these.
                if is_root {
                    if let Err(e) =
                        rustix::fs::fchown(&file, Some(raw_uid(uid)), Some(raw_gid(gid)))
                    {
                        tracing::debug!(path = %rel.display(), error = %e, "lchown failed");
                    }
                }
                for (key, value) in &owner.xattrs {
                    if let Err(e) = rustix::fs::fsetxattr(
                        &file,
                        OsStr::from_bytes(key),
                        value,
                        XattrFlags::empty(),
                    ) {
                        tracing::debug!(path = %rel.display(), error = %e, "xattr not kept");
                    }
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|e| io_err("chmod", e.into()))?;
                if let Err(e) = rustix::fs::futimens(&file, &timestamps(mtime)) {
                    tracing::debug!(path = %rel.display(), error = %e, "cannot set mtime");
                }
            }
            EntryType::Symlink => {
                let target = link_bytes.ok_or_else(|| unsafe_entry("symlink without target"))?;
                create_replacing(&mut tree, &dir, &parent, name, || {
                    rustix::fs::symlinkat(OsStr::from_bytes(&target), &*dir, name)
                })
                .map_err(|e| io_err("symlink", e))?;
                tree.set_owner_xattrs(&dir, &rel, name, &owner);
                set_mtime_at(&dir, &rel, name, mtime);
            }
            EntryType::Link => {
                let target = link_bytes.ok_or_else(|| unsafe_entry("hard link without target"))?;
                let target_rel = clean_path(index, &target)?;
                if target_rel.as_os_str().is_empty() {
                    return Err(unsafe_entry("hard link to the root"));
                }
                let target_parent = target_rel.parent().unwrap_or(Path::new(""));
                let target_kind = if tree
                    .check_dirs(target_parent, false)
                    .map_err(unsafe_entry)?
                {
                    Tree::kind_at(&tree.root, &target_rel).map_err(|e| io_err("stat", e))?
                } else {
                    None
                };
                match target_kind {
                    Some(FileType::Directory) => {
                        return Err(unsafe_entry("hard link to a directory"));
                    }
                    Some(_) => {
                        if target_rel != rel {
                            let root = tree.root.clone();
                            create_replacing(&mut tree, &dir, &parent, name, || {
                                rustix::fs::linkat(
                                    &*root,
                                    &target_rel,
                                    &*dir,
                                    name,
                                    AtFlags::empty(),
                                )
                            })
                            .map_err(|e| io_err("link", e))?;
                        }
                    }
                    // In a lower layer: linked at the merge.
                    None => staged.links.push((rel, target_rel)),
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if kind != EntryType::Fifo && !perms.policy.device_nodes {
                    tracing::warn!(index, path = %rel.display(), "skipping device node (allow with --dir-device-nodes)");
                    continue;
                }
                if kind != EntryType::Fifo && !is_root {
                    tracing::debug!(index, path = %rel.display(), "skipping device node (not root)");
                    continue;
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                create_replacing(&mut tree, &dir, &parent, name, || {
                    rustix::fs::mknodat(
                        &*dir,
                        name,
                        file_type,
                        Mode::from_raw_mode(mode),
                        rustix::fs::makedev(major, minor),
                    )
                })
                .map_err(|e| io_err("mknod", e))?;
                tree.set_owner_xattrs(&dir, &rel, name, &owner);
                let _ =
                    rustix::fs::chmodat(&*dir, name, Mode::from_raw_mode(mode), AtFlags::empty());
                set_mtime_at(&dir, &rel, name, mtime);
            }
            other => {
                tracing::debug!(index, path = %rel.display(), kind = ?other, "skipping tar entry type");
            }
        }
    }
    if stripped > 0 {
        tracing::warn!(
            index,
            entries = stripped,
            "setuid/setgid bits and file capabilities stripped (keep with --dir-keep-setid)"
        );
    }
    Ok(())
}

/// Applies one staged layer on top of `merged`.
fn merge_layer(
    index: usize,
    merged: &Path,
    staging: &Path,
    staged: Staged,
    dir_meta: &mut BTreeMap<PathBuf, DirMeta>,
) -> Result<(), ImportError> {
    let unsafe_entry = |path: &Path, reason| ImportError::UnsafeEntry {
        index,
        path: path.display().to_string(),
        reason,
    };
    // Lower layers' paths are resolved the way a chroot would (symlinks
    // followed but clamped to the rootfs), as Docker applies layers.
    for dir in &staged.opaques {
        let Some(resolved) = resolve_in_root(merged, dir) else {
            return Err(unsafe_entry(dir, "too many symlinks"));
        };
        let path = merged.join(&resolved);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            let children = fs::read_dir(&path).map_err(|e| ImportError::io("read", &path, e))?;
            for child in children {
                let child = child.map_err(|e| ImportError::io("read", &path, e))?.path();
                remove_any(&child).map_err(|e| ImportError::io("remove", &child, e))?;
            }
            dir_meta.retain(|p, _| p == &resolved || !p.starts_with(&resolved));
        }
    }
    for gone in &staged.whiteouts {
        let (Some(parent), Some(name)) = (gone.parent(), gone.file_name()) else {
            continue;
        };
        let Some(parent) = resolve_in_root(merged, parent) else {
            return Err(unsafe_entry(gone, "too many symlinks"));
        };
        let resolved = parent.join(name);
        let path = merged.join(&resolved);
        remove_any(&path).map_err(|e| ImportError::io("remove", &path, e))?;
        dir_meta.retain(|p, _| !p.starts_with(&resolved));
    }
    let explicit: HashSet<&Path> = staged.dirs.iter().map(|(p, _)| p.as_path()).collect();
    move_tree(staging, merged, Path::new(""), merged, &explicit)?;
    for (path_rel, target_rel) in &staged.links {
        let target = resolve_in_root(merged, target_rel)
            .map(|r| merged.join(r))
            .filter(|t| fs::symlink_metadata(t).is_ok_and(|m| !m.is_dir()))
            .ok_or_else(|| unsafe_entry(path_rel, "hard link target does not exist"))?;
        let (Some(parent), Some(name)) = (path_rel.parent(), path_rel.file_name()) else {
            return Err(unsafe_entry(path_rel, "hard link at the root"));
        };
        let parent = resolve_in_root(merged, parent)
            .ok_or_else(|| unsafe_entry(path_rel, "too many symlinks"))?;
        walk_dirs(merged, &parent, true).map_err(|r| unsafe_entry(path_rel, r))?;
        let path = merged.join(parent).join(name);
        remove_any(&path).map_err(|e| ImportError::io("replace", &path, e))?;
        fs::hard_link(&target, &path).map_err(|e| ImportError::io("link", &path, e))?;
    }
    for (rel, meta) in staged.dirs {
        dir_meta.insert(rel, meta);
    }
    fs::remove_dir_all(staging).map_err(|e| ImportError::io("remove", staging, e))
}

/// Renames every entry of `src` (the staged layer at `src_rel`) into
/// `dst`, descending where both are directories, replacing anything else.
/// A directory the layer did not name itself (an implicit parent) merges
/// into whatever a lower layer's symlink at that place resolves to inside
/// the rootfs, instead of replacing the symlink.
fn move_tree(
    src: &Path,
    dst: &Path,
    src_rel: &Path,
    merged: &Path,
    explicit: &HashSet<&Path>,
) -> Result<(), ImportError> {
    let entries = fs::read_dir(src).map_err(|e| ImportError::io("read", src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImportError::io("read", src, e))?;
        let from = entry.path();
        let rel = src_rel.join(entry.file_name());
        let to = dst.join(entry.file_name());
        let from_is_dir = entry
            .file_type()
            .map_err(|e| ImportError::io("stat", &from, e))?
            .is_dir();
        let to_meta = fs::symlink_metadata(&to).ok();
        if from_is_dir && to_meta.as_ref().is_some_and(|m| m.is_dir()) {
            move_tree(&from, &to, &rel, merged, explicit)?;
            continue;
        }
        if from_is_dir
            && !explicit.contains(rel.as_path())
            && to_meta.as_ref().is_some_and(|m| m.file_type().is_symlink())
        {
            let relative_to = to.strip_prefix(merged).unwrap_or(&to);
            if let Some(resolved) = resolve_in_root(merged, relative_to) {
                let target = merged.join(resolved);
                if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    move_tree(&from, &target, &rel, merged, explicit)?;
                    continue;
                }
            }
        }
        if to_meta.is_some() {
            remove_any(&to).map_err(|e| ImportError::io("replace", &to, e))?;
        }
        fs::rename(&from, &to).map_err(|e| ImportError::io("move", &to, e))?;
    }
    Ok(())
}

/// Resolves `rel` inside `root` as a chroot would: symlinks are followed,
/// absolute targets restart at `root`, `..` stops at `root`. The result is
/// relative to `root` and free of symlinks (its last components may not
/// exist). `None` after 40 symlinks (a loop).
fn resolve_in_root(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    let push_components = |pending: &mut VecDeque<std::ffi::OsString>, path: &Path| {
        let parts: Vec<std::ffi::OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        for part in parts.into_iter().rev() {
            pending.push_front(part);
        }
    };
    push_components(&mut pending, rel);
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = fs::read_link(root.join(&candidate)).ok()?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_components(&mut pending, &target);
            }
            _ => resolved = candidate,
        }
    }
    Some(resolved)
}

/// Applies directory owners, modes and mtimes, deepest first.
fn apply_dir_meta(
    merged: &Path,
    dir_meta: &BTreeMap<PathBuf, DirMeta>,
    is_root: bool,
) -> Result<(), ImportError> {
    let mut tree = Tree::open(merged).map_err(|e| ImportError::io("open", merged, e))?;
    let root = tree.root.clone();
    for (rel, meta) in dir_meta.iter().rev() {
        let path = || merged.join(rel);
        // The root itself ("./" in a tar) is "." of the tree.
        let (dir, name) = match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => {
                if tree.check_dirs(parent, false) != Ok(true) {
                    continue;
                }
                let Ok(dir) = tree.parent(parent) else {
                    continue;
                };
                (dir, name)
            }
            _ => (root.clone(), OsStr::new(".")),
        };
        if !Tree::kind_at(&dir, name).is_ok_and(|k| k == Some(FileType::Directory)) {
            continue;
        }
        if is_root {
            let _ = rustix::fs::chownat(
                &*dir,
                name,
                Some(raw_uid(meta.uid)),
                Some(raw_gid(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            );
        }
        rustix::fs::chmodat(
            &*dir,
            name,
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )
        .map_err(|e| ImportError::io("chmod", &path(), e.into()))?;
        set_mtime_at(&dir, rel, name, meta.mtime);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_rejects_escapes() {
        assert_eq!(clean_path(0, b"./a//b/").unwrap(), PathBuf::from("a/b"));
        assert!(matches!(
            clean_path(0, b"a/../../etc"),
            Err(ImportError::UnsafeEntry {
                reason: "path traversal (..)",
                ..
            })
        ));
        assert!(matches!(
            clean_path(0, b"/etc/passwd"),
            Err(ImportError::UnsafeEntry {
                reason: "absolute path",
                ..
            })
        ));
    }
}
