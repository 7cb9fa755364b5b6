//! A full file system (a real 1 MiB tmpfs) gives `DiskFull` naming the
//! file and the bytes needed; nothing is corrupted, the store still opens,
//! and once space is freed the blob completes.
//!
//! Needs root (to mount tmpfs); without it the test says so and skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use edgeswarm_node::store::{Store, StoreConfig, StoreError, WriteOutcome};
use edgeswarm_protocol::{ChunkMap, ChunkSize, Digest};

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn full_disk_gives_disk_full_and_corrupts_nothing() {
    let Some(fs) = Tmpfs::mount("1m") else {
        eprintln!("SKIPPED: cannot mount tmpfs (needs root); full-disk behaviour untested here");
        return;
    };
    let dir: PathBuf = fs.path().join("store");
    let bytes = data(2 << 20);
    let digest = Digest::of(&bytes);
    let map = ChunkMap::from_bytes(&bytes, ChunkSize::MIN);
    let chunk = |i: u32| {
        let r = map.chunk_range(i).unwrap();
        Bytes::copy_from_slice(&bytes[r.start as usize..r.end as usize])
    };
    let store = Store::open(dir.clone(), StoreConfig::default())
        .await
        .unwrap();
    store.put_chunk_map(digest, &map).await.unwrap();

    let mut stored = Vec::new();
    let mut failure = None;
    for i in 0..map.chunk_count() {
        match store.write_chunk(digest, i, chunk(i)).await {
            Ok(WriteOutcome::Stored) => stored.push(i),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                failure = Some((i, e));
                break;
            }
        }
    }
    let (failed_index, err) = failure.expect("a 2 MiB blob cannot fit a 1 MiB tmpfs");
    assert!(!stored.is_empty());
    let msg = err.to_string();
    match &err {
        StoreError::DiskFull { path, needed } => {
            assert!(path.starts_with(&dir), "{}", path.display());
            assert!(*needed > 0);
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&needed.to_string()), "{msg}");
        }
        other => panic!("expected DiskFull, got {other}"),
    }
    assert!(msg.contains("disk full"), "{msg}");
    assert!(err.is_local() && !err.is_bad_chunk());
    eprintln!("after {} chunks: {msg}", stored.len());
    // Nothing half-recorded: exactly the acknowledged chunks are held.
    let bits = store.bitfield(&digest).unwrap();
    assert_eq!(bits.iter_ones().collect::<Vec<_>>(), stored);
    assert!(!bits.get(failed_index));
    for &i in &stored {
        assert_eq!(store.read_chunk(digest, i).await.unwrap(), chunk(i));
    }
    // Still full: a retry fails the same way, the process carries on.
    assert!(matches!(
        store
            .write_chunk(digest, failed_index, chunk(failed_index))
            .await,
        Err(StoreError::DiskFull { .. })
    ));
    drop(store);

    // The store opens on a full disk with the same state.
    let store = Store::open(dir.clone(), StoreConfig::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .bitfield(&digest)
            .unwrap()
            .iter_ones()
            .collect::<Vec<_>>(),
        stored
    );

    // Free space: everything else lands and the blob verifies.
    fs.resize("8m");
    let mut last = None;
    for i in store
        .bitfield(&digest)
        .unwrap()
        .iter_zeros()
        .collect::<Vec<_>>()
    {
        last = Some(store.write_chunk(digest, i, chunk(i)).await.unwrap());
    }
    assert_eq!(last, Some(WriteOutcome::BlobComplete));
    assert_eq!(
        std::fs::read(store.blob_path(&digest).unwrap()).unwrap(),
        bytes
    );
    drop(store);
}
