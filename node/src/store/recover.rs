//! Opening (with crash recovery) and creating blobs on disk. Everything
//! here runs on the blocking pool.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use edgeswarm_protocol::chunkmap::{chunk_count, MAX_CHUNKS};
use edgeswarm_protocol::{encoding, Bitfield, ChunkMap, ChunkSize, Digest};
use tokio::sync::broadcast;

use super::journal::{self, Record};
use super::{
    fsync_dir, io, map_of_file, read_small, Blob, BlobState, Inner, Meta, Phase, PinFile, State,
    StoreConfig, StoreError, StoreEvent, SyncState, EVENT_CAPACITY, IO_BUF, META_VERSION,
};

/// Opens the store in `dir`; returns it and the partial blobs whose every
/// chunk verified (they must be finished).
pub(super) fn open(
    dir: std::path::PathBuf,
    config: StoreConfig,
) -> Result<(Inner, Vec<Arc<Blob>>), StoreError> {
    for sub in ["blobs/sha256", "maps/sha256", "partial", "refs", "tmp"] {
        let p = dir.join(sub);
        fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, 0, e))?;
    }
    let (events, _) = broadcast::channel::<StoreEvent>(EVENT_CAPACITY);
    let recent = super::recent::RecentChunks::new(config.recent_chunks);
    let inner = Inner {
        dir,
        config,
        state: Mutex::new(State::default()),
        admin: tokio::sync::Mutex::new(()),
        events,
        closing: AtomicBool::new(false),
        tmp_seq: AtomicU64::new(0),
        buffers: super::buffers::ChunkBuffers::default(),
        recent,
        expected: Default::default(),
    };
    let tmp = inner.dir.join("tmp");
    for e in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
        let _ = fs::remove_file(e.path());
    }
    let mut blobs: HashMap<Digest, Arc<Blob>> = HashMap::new();

    // Complete blobs.
    let complete_dir = inner.dir.join("blobs/sha256");
    for e in fs::read_dir(&complete_dir)
        .map_err(io(&complete_dir))?
        .flatten()
    {
        let path = e.path();
        let Some(digest) = digest_of_name(&path) else {
            tracing::warn!(path = %path.display(), "ignoring stray file in blobs/");
            continue;
        };
        match open_complete(&inner, digest, &path) {
            Ok(b) => {
                blobs.insert(digest, b);
                // A crash after the final rename may leave the partial dir.
                let _ = fs::remove_dir_all(inner.partial_dir(&digest));
            }
            Err(err) => {
                tracing::error!(blob = %digest, error = %err, "dropping unreadable complete blob");
                inner.delete_files(&digest);
            }
        }
    }
    let maps_dir = inner.dir.join("maps/sha256");
    for e in fs::read_dir(&maps_dir).map_err(io(&maps_dir))?.flatten() {
        if digest_of_name(&e.path()).is_none_or(|d| !blobs.contains_key(&d)) {
            let _ = fs::remove_file(e.path());
        }
    }

    // Partial blobs.
    let mut finish = Vec::new();
    let partial_dir = inner.dir.join("partial");
    for e in fs::read_dir(&partial_dir)
        .map_err(io(&partial_dir))?
        .flatten()
    {
        let path = e.path();
        let Some(digest) = digest_of_name(&path) else {
            tracing::warn!(path = %path.display(), "ignoring stray entry in partial/");
            continue;
        };
        if blobs.contains_key(&digest) {
            continue;
        }
        match open_partial(&inner, digest, &path) {
            Ok(Some(b)) => {
                if b.lock().have.is_complete() {
                    b.lock().phase = Phase::Finishing;
                    finish.push(b.clone());
                }
                blobs.insert(digest, b);
            }
            Ok(None) => {
                let _ = fs::remove_dir_all(&path);
            }
            Err(err) => return Err(err),
        }
    }

    // Pins.
    let refs = inner.dir.join("refs");
    let mut pins = std::collections::BTreeMap::new();
    for e in fs::read_dir(&refs).map_err(io(&refs))?.flatten() {
        let path = e.path();
        let bytes = read_small(&path)?;
        match encoding::decode::<PinFile>("pin", &bytes, 64 << 20) {
            Ok((_, name, digests)) => {
                pins.insert(name, digests);
            }
            Err(err) => {
                return Err(StoreError::Io {
                    path,
                    source: std::io::Error::other(err),
                })
            }
        }
    }
    {
        let mut state = inner.lock();
        state.blobs = blobs;
        state.pins = pins;
    }
    tracing::info!(dir = %inner.dir.display(), blobs = inner.lock().blobs.len(), "store opened");
    Ok((inner, finish))
}

/// Parses a `<hex>` file name.
fn digest_of_name(path: &Path) -> Option<Digest> {
    Digest::parse_hex(path.file_name()?.to_str()?).ok()
}

/// Loads a complete blob and its chunk map (rebuilding a lost map).
fn open_complete(inner: &Inner, digest: Digest, path: &Path) -> Result<Arc<Blob>, StoreError> {
    let file = File::open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    let size = meta.len();
    let map_path = inner.map_path(&digest);
    let map = match read_small(&map_path)
        .ok()
        .and_then(|b| ChunkMap::decode(&b).ok())
    {
        Some(m) if m.blob_size() == size => m,
        _ => {
            tracing::warn!(blob = %digest, "chunk map missing; rebuilding it from the blob");
            let (m, whole) = map_of_file(&file, size, ChunkSize::DEFAULT, path)?;
            if whole != digest {
                return Err(StoreError::BlobCorrupt {
                    blob: digest,
                    actual: whole,
                });
            }
            inner.write_atomic(&map_path, &m.encode())?;
            m
        }
    };
    Ok(Arc::new(complete_blob(
        digest,
        map,
        Arc::new(file),
        meta.modified().unwrap_or(SystemTime::now()),
    )))
}

/// A blob entry in the Complete phase.
fn complete_blob(digest: Digest, map: ChunkMap, file: Arc<File>, created: SystemTime) -> Blob {
    let count = map.chunk_count();
    Blob {
        digest,
        size: map.blob_size(),
        chunk_size: map.chunk_size(),
        chunk_count: count,
        created,
        st: Mutex::new(BlobState {
            phase: Phase::Complete,
            file,
            journal: None,
            journal_len: 0,
            digests: map.digests().iter().copied().map(Some).collect(),
            from_peer: vec![None; count as usize],
            known: count,
            map: Some(Arc::new(map)),
            have: Bitfield::full(count),
            unconfirmed: Bitfield::new(count),
            cursor: 0,
            readers: 0,
        }),
        cond: Condvar::new(),
        sync: SyncState::default(),
        prefix: Default::default(),
    }
}

/// Loads a partial blob: replays its journal, re-hashes every chunk marked
/// present, clears failures and compacts the journal. `None`: debris.
fn open_partial(
    inner: &Inner,
    digest: Digest,
    dir: &Path,
) -> Result<Option<Arc<Blob>>, StoreError> {
    let meta_path = dir.join("meta");
    let Ok(meta_bytes) = read_small(&meta_path) else {
        tracing::warn!(blob = %digest, "partial blob without meta (crash during create); removing");
        return Ok(None);
    };
    let Ok((version, size, chunk_size)) = encoding::decode::<Meta>("store meta", &meta_bytes, 1024)
    else {
        tracing::warn!(blob = %digest, "unreadable partial meta; removing");
        return Ok(None);
    };
    let count = chunk_count(size, chunk_size);
    if version != META_VERSION || count > MAX_CHUNKS as u64 {
        tracing::warn!(blob = %digest, version, "unsupported partial meta; removing");
        return Ok(None);
    }
    let count = count as u32;
    let created = fs::metadata(&meta_path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::now());
    let data_path = dir.join("data");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&data_path)
        .map_err(io(&data_path))?;
    if file.metadata().map_err(io(&data_path))?.len() != size {
        file.set_len(size)
            .map_err(|e| StoreError::io(&data_path, 0, e))?;
    }
    let journal_path = dir.join("journal");
    let raw = read_small(&journal_path).unwrap_or_default();
    let (records, valid) = journal::replay(&raw);
    if valid < raw.len() {
        tracing::warn!(blob = %digest, dropped = raw.len() - valid, "dropping torn journal tail");
    }
    let mut digests: Vec<Option<Digest>> = vec![None; count as usize];
    let mut have = Bitfield::new(count);
    for rec in records {
        match rec {
            Record::Digests { first, digests: ds } => {
                for (i, d) in ds.into_iter().enumerate() {
                    if let Some(slot) = digests.get_mut(first as usize + i) {
                        slot.get_or_insert(d);
                    }
                }
            }
            Record::Verified(idx) => {
                for i in idx.into_iter().filter(|&i| i < count) {
                    have.set(i);
                }
            }
            Record::Cleared(idx) => idx.into_iter().for_each(|i| have.clear(i)),
        }
    }
    // Re-hash every chunk marked present: a torn or rotten write is cleared.
    let mut buf = vec![0u8; IO_BUF.min(chunk_size.get() as usize)];
    buf.resize(chunk_size.get() as usize, 0);
    let mut cleared = 0u32;
    let marked: Vec<u32> = have.iter_ones().collect();
    for i in marked {
        let start = i as u64 * chunk_size.get() as u64;
        let len = ((start + chunk_size.get() as u64).min(size) - start) as usize;
        let ok = match digests[i as usize] {
            Some(d) => {
                file.read_exact_at(&mut buf[..len], start)
                    .map_err(io(&data_path))?;
                Digest::of(&buf[..len]) == d
            }
            None => false,
        };
        if !ok {
            have.clear(i);
            cleared += 1;
        }
    }
    if cleared > 0 {
        tracing::warn!(blob = %digest, cleared, "chunks failed re-verification on open; they will be fetched again");
    }
    // Compact the journal.
    let mut compact = Vec::new();
    let mut i = 0usize;
    while i < digests.len() {
        if digests[i].is_none() {
            i += 1;
            continue;
        }
        let start = i;
        let mut run = Vec::new();
        while i < digests.len() {
            match digests[i] {
                Some(d) => run.push(d),
                None => break,
            }
            i += 1;
        }
        compact.extend(
            Record::Digests {
                first: start as u32,
                digests: run,
            }
            .encode(),
        );
    }
    let held: Vec<u32> = have.iter_ones().collect();
    if !held.is_empty() {
        compact.extend(Record::Verified(held).encode());
    }
    let journal_len = match inner.write_atomic(&journal_path, &compact) {
        Ok(()) => compact.len() as u64,
        Err(err) => {
            // A full disk must not stop the node from opening: keep the old
            // journal cut to its intact prefix. Cleared bits are not
            // recorded, but the next open re-hashes and clears them again.
            tracing::warn!(blob = %digest, error = %err, "could not compact the journal; keeping it");
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&journal_path)
                .map_err(io(&journal_path))?;
            f.set_len(valid as u64).map_err(io(&journal_path))?;
            valid as u64
        }
    };
    let journal = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&journal_path)
        .map_err(io(&journal_path))?;
    let known = digests.iter().filter(|d| d.is_some()).count() as u32;
    let map = (known == count)
        .then(|| {
            ChunkMap::new(
                size,
                chunk_size,
                digests.iter().map(|d| d.expect("known")).collect(),
            )
            .ok()
        })
        .flatten()
        .map(Arc::new);
    tracing::info!(blob = %digest, have = have.count_ones(), count, "resumed partial blob");
    Ok(Some(Arc::new(Blob {
        digest,
        size,
        chunk_size,
        chunk_count: count,
        created,
        st: Mutex::new(BlobState {
            phase: Phase::Partial,
            file: Arc::new(file),
            journal: Some(Arc::new(journal)),
            journal_len,
            from_peer: vec![None; digests.len()],
            digests,
            known,
            map,
            unconfirmed: Bitfield::new(have.len()),
            have,
            cursor: 0,
            readers: 0,
        }),
        cond: Condvar::new(),
        sync: SyncState::default(),
        prefix: Default::default(),
    })))
}

/// Creates a partial blob on disk: data (sparse), empty journal, then meta.
pub(super) fn create_partial(
    inner: &Inner,
    digest: Digest,
    size: u64,
    chunk_size: ChunkSize,
) -> Result<Arc<Blob>, StoreError> {
    let dir = inner.partial_dir(&digest);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, 0, e))?;
    let data_path = dir.join("data");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&data_path)
        .map_err(|e| StoreError::io(&data_path, 0, e))?;
    file.set_len(size)
        .map_err(|e| StoreError::io(&data_path, size, e))?;
    let journal_path = dir.join("journal");
    let journal = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&journal_path)
        .map_err(|e| StoreError::io(&journal_path, 0, e))?;
    let meta: Meta = (META_VERSION, size, chunk_size);
    inner.write_atomic(&dir.join("meta"), &encoding::encode(&meta))?;
    fsync_dir(&inner.dir.join("partial"))?;
    let count = chunk_count(size, chunk_size) as u32;
    Ok(Arc::new(Blob {
        digest,
        size,
        chunk_size,
        chunk_count: count,
        created: SystemTime::now(),
        st: Mutex::new(BlobState {
            phase: Phase::Partial,
            file: Arc::new(file),
            journal: Some(Arc::new(journal)),
            journal_len: 0,
            digests: vec![None; count as usize],
            from_peer: vec![None; count as usize],
            known: 0,
            map: None,
            have: Bitfield::new(count),
            unconfirmed: Bitfield::new(count),
            cursor: 0,
            readers: 0,
        }),
        cond: Condvar::new(),
        sync: SyncState::default(),
        prefix: Default::default(),
    }))
}

/// Stores a whole blob given in memory (small blobs), completing a partial
/// entry of the same digest if there is one.
pub(super) fn put_blob(
    inner: &Inner,
    digest: Digest,
    bytes: &[u8],
    existing: Option<Arc<Blob>>,
) -> Result<(), StoreError> {
    let actual = Digest::of(bytes);
    if actual != digest {
        return Err(StoreError::BlobCorrupt {
            blob: digest,
            actual,
        });
    }
    let chunk_size = existing
        .as_ref()
        .map_or(ChunkSize::DEFAULT, |b| b.chunk_size);
    let map = ChunkMap::from_bytes(bytes, chunk_size);
    inner.write_atomic(&inner.map_path(&digest), &map.encode())?;
    let dest = inner.blob_path(&digest);
    inner.write_atomic(&dest, bytes)?;
    let file = Arc::new(File::open(&dest).map_err(io(&dest))?);
    match existing {
        Some(b) => {
            {
                let mut st = b.lock();
                if st.phase != Phase::Partial {
                    return Ok(());
                }
                st.phase = Phase::Complete;
                st.file = file;
                st.journal = None;
                st.digests = map.digests().iter().copied().map(Some).collect();
                st.from_peer = vec![None; map.chunk_count() as usize];
                st.known = map.chunk_count();
                st.have = Bitfield::full(map.chunk_count());
                st.unconfirmed = Bitfield::new(map.chunk_count());
                st.map = Some(Arc::new(map));
            }
            b.cond.notify_all();
            let _ = fs::remove_dir_all(inner.partial_dir(&digest));
        }
        None => {
            let b = complete_blob(digest, map, file, SystemTime::now());
            inner.lock().blobs.insert(digest, Arc::new(b));
        }
    }
    inner.emit(StoreEvent::BlobComplete { blob: digest });
    Ok(())
}
