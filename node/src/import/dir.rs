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
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use filetime::FileTime;
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
        walk_dirs(staging, &parent, true).map_err(unsafe_entry)?;
        let path = staging.join(&rel);
        let io_err = |op, e| ImportError::io(op, &path, e);
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&path).map_err(|e| io_err("replace", e))?;
                        make_dir(&path)?;
                    }
                    Err(_) => make_dir(&path)?,
                }
                set_owner_xattrs(&path, uid, gid, &xattrs, is_root);
                staged.dirs.push((rel, meta));
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_any(&path).map_err(|e| io_err("replace", e))?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| io_err("create", e))?;
                io::copy(&mut entry, &mut file)
                    .map_err(|source| ImportError::LayerStream { index, source })?;
                drop(file);
                set_owner_xattrs(&path, uid, gid, &xattrs, is_root);
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err("chmod", e))?;
                set_mtime(&path, mtime);
            }
            EntryType::Symlink => {
                let target = link_bytes.ok_or_else(|| unsafe_entry("symlink without target"))?;
                remove_any(&path).map_err(|e| io_err("replace", e))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| io_err("symlink", e))?;
                set_owner_xattrs(&path, uid, gid, &xattrs, is_root);
                set_mtime(&path, mtime);
            }
            EntryType::Link => {
                let target = link_bytes.ok_or_else(|| unsafe_entry("hard link without target"))?;
                let target_rel = clean_path(index, &target)?;
                if target_rel.as_os_str().is_empty() {
                    return Err(unsafe_entry("hard link to the root"));
                }
                let target_parent = target_rel.parent().unwrap_or(Path::new(""));
                let in_layer = walk_dirs(staging, target_parent, false).map_err(unsafe_entry)?
                    && fs::symlink_metadata(staging.join(&target_rel)).is_ok();
                if in_layer {
                    let target_path = staging.join(&target_rel);
                    if fs::symlink_metadata(&target_path).is_ok_and(|m| m.is_dir()) {
                        return Err(unsafe_entry("hard link to a directory"));
                    }
                    if target_path != path {
                        remove_any(&path).map_err(|e| io_err("replace", e))?;
                        fs::hard_link(&target_path, &path).map_err(|e| io_err("link", e))?;
                    }
                } else {
                    staged.links.push((rel, target_rel));
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    EntryType::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
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
                remove_any(&path).map_err(|e| io_err("replace", e))?;
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    file_type,
                    rustix::fs::Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| io_err("mknod", e.into()))?;
                set_owner_xattrs(&path, uid, gid, &xattrs, is_root);
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
                set_mtime(&path, mtime);
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

fn make_dir(path: &Path) -> Result<(), ImportError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|e| ImportError::io("mkdir", path, e))
}

/// Ownership (only as root) and xattrs (best effort), never following a
/// symlink.
fn set_owner_xattrs(path: &Path, uid: u64, gid: u64, xattrs: &[(Vec<u8>, Vec<u8>)], is_root: bool) {
    if is_root {
        if let Err(e) = std::os::unix::fs::lchown(path, Some(uid as u32), Some(gid as u32)) {
            tracing::debug!(path = %path.display(), error = %e, "lchown failed");
        }
    }
    for (name, value) in xattrs {
        if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
            tracing::debug!(path = %path.display(), error = %e, "xattr not kept");
        }
    }
}

fn set_mtime(path: &Path, mtime: i64) {
    let t = FileTime::from_unix_time(mtime, 0);
    if let Err(e) = filetime::set_symlink_file_times(path, t, t) {
        tracing::debug!(path = %path.display(), error = %e, "cannot set mtime");
    }
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
    for (rel, meta) in dir_meta.iter().rev() {
        let path = merged.join(rel);
        let parent = rel.parent().unwrap_or(Path::new(""));
        let real_dir = walk_dirs(merged, parent, false).unwrap_or(false)
            && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !real_dir {
            continue;
        }
        if is_root {
            let _ = std::os::unix::fs::lchown(&path, Some(meta.uid as u32), Some(meta.gid as u32));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| ImportError::io("chmod", &path, e))?;
        set_mtime(&path, meta.mtime);
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
