//! The `dir` sink: layer semantics (whiteouts, opaque dirs, links, modes),
//! parallel streaming, verification failures and hostile tars.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::support::import::*;
use crate::support::{corrupt, eventually, join};
use edgeswarm_node::import::{
    import_image, Compression, DirPolicy, ImportError, ImportOptions, ImportSink, LayerAction,
};
use tar::EntryType;

fn dir_sink(root: &Path) -> ImportSink {
    ImportSink::Dir {
        root: root.join("rootfs"),
    }
}

/// Imports `image` as `reference` into a dir sink under `root`, read at
/// full speed with default options.
async fn import_plain(
    root: &Path,
    image: &TestImage,
    reference: &str,
) -> Result<edgeswarm_node::import::ImportReport, ImportError> {
    let probe = Arc::new(ReadProbe::default());
    import_image(
        &dir_sink(root),
        image.import(reference, Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
}

/// Nothing is left in the sink root but finished images.
fn assert_no_leftovers(root: &Path) {
    let rootfs = root.join("rootfs");
    if rootfs.exists() {
        let left: Vec<_> = std::fs::read_dir(&rootfs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_applies_whiteouts_opaque_dirs_links_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(
        &[
            (base_layer("dir-semantics"), Compression::Gzip),
            (overlay_layer(), Compression::Zstd),
        ],
        false,
        None,
    );
    let probe = Arc::new(ReadProbe::default());
    let report = import_image(
        &dir_sink(tmp.path()),
        image.import("local/dir-test:v1", Duration::from_millis(50), &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    assert!(report
        .layers
        .iter()
        .all(|l| l.action == LayerAction::Imported));
    // Both layers were mid-stream at the same time: parallel extraction.
    assert_eq!(probe.max_active.load(Ordering::SeqCst), 2);
    let root = tmp.path().join("rootfs/local_dir-test_v1");
    assert_eq!(report.location, root.display().to_string());

    assert_eq!(
        std::fs::read(root.join("etc/hello")).unwrap(),
        b"hello from the overlay\n"
    );
    assert_eq!(
        std::fs::read_link(root.join("etc/hello-sym")).unwrap(),
        Path::new("hello")
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/cat")).unwrap(),
        Path::new("/bin/busybox")
    );
    let ino = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().ino();
    assert_eq!(
        ino("etc/hello"),
        ino("etc/hello-link"),
        "hard link within a layer"
    );
    assert!(!root.join("etc/removeme").exists(), "whiteout applied");
    assert!(
        !root.join("etc/keepdir/old").exists(),
        "opaque dir hides lower content"
    );
    assert_eq!(
        std::fs::read(root.join("etc/keepdir/new")).unwrap(),
        b"new in opaque dir\n"
    );
    let mode = |p: &str| {
        std::fs::symlink_metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("etc/keepdir"), 0o750);
    assert_eq!(mode("etc/keepdir/new"), 0o600);
    assert_eq!(mode("opt"), 0o700);
    // setuid stripped by default (`DirPolicy::keep_setid`).
    assert_eq!(mode("opt/tool"), 0o755);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("bin/busybox"), 0o755);
    let mtime = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().mtime();
    assert_eq!(mtime("etc/hello"), 1_600_000_000);
    assert_eq!(mtime("etc"), 1_600_000_000, "directory mtimes applied last");
    assert!(!root.join("etc/.wh.removeme").exists());
    assert!(!root.join("etc/keepdir/.wh..wh..opq").exists());
    // The busybox from the rootfs runs.
    let out = std::process::Command::new(root.join("bin/busybox"))
        .args(["cat", root.join("etc/hello").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"hello from the overlay\n");
    // Only the finished rootfs remains: its link and its one version.
    assert_only_published(&tmp.path().join("rootfs"), &["local_dir-test_v1"], 0);
}

/// `rootfs` holds the links `names`, each to a version of its own under
/// `.versions`, plus `previous` replaced versions kept for readers, and
/// nothing else (no work dirs, no older versions).
#[track_caller]
pub(crate) fn assert_only_published(rootfs: &Path, names: &[&str], previous: usize) {
    let mut top: Vec<String> = std::fs::read_dir(rootfs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.push(".versions".into());
    expected.sort();
    assert_eq!(top, expected);
    let versions: Vec<String> = std::fs::read_dir(rootfs.join(".versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for n in names {
        let link = std::fs::read_link(rootfs.join(n)).expect("published as a link");
        let version = link
            .strip_prefix(".versions")
            .expect("a link into .versions")
            .to_string_lossy()
            .into_owned();
        assert!(versions.contains(&version), "{n} -> {version} missing");
    }
    assert_eq!(versions.len(), names.len() + previous, "{versions:?}");
}

#[tokio::test]
async fn dir_wrong_diff_id_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(
        &[
            (base_layer("dir-wrong"), Compression::Gzip),
            (overlay_layer(), Compression::Gzip),
        ],
        true,
        Some(1),
    );
    let err = import_plain(tmp.path(), &image, "local/wrong:v1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImportError::DiffIdMismatch { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("diff_id mismatch"), "{err}");
    assert_no_leftovers(tmp.path());
}

/// The daemon imports from the store, whose reader re-verifies each chunk
/// it returns and ends only after the whole-blob check: the import leaves
/// the blob digest to it instead of hashing the compressed bytes again.
/// Rot on disk under the complete blob is still caught (the reader clears
/// the chunk and waits for it), the import ends with the right files, and
/// a source that vouches for another digest than the manifest's is
/// hashed as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_leaves_the_blob_digest_to_the_store_reader_which_still_catches_rot() {
    use bytes::Bytes;
    use edgeswarm_node::import::{ImageImport, LayerSource};
    use edgeswarm_node::store::{Store, StoreConfig};
    use edgeswarm_protocol::address::Digest;
    use edgeswarm_protocol::chunkmap::{ChunkMap, ChunkSize};

    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(&[(base_layer("vouched"), Compression::Gzip)], false, None);
    let (media_type, blob, diff_id) = image.layers[0].clone();
    let digest = Digest::of(&blob);
    let map = ChunkMap::from_bytes(&blob, ChunkSize::MIN);
    assert!(map.chunk_count() > 2, "the layer spans several chunks");
    // Nothing kept in memory: every read goes to disk, where the rot is.
    let config = StoreConfig {
        recent_chunks: 0,
        ..StoreConfig::default()
    };
    let store = Store::open(tmp.path().join("store"), config).await.unwrap();
    store.put_chunk_map(digest, &map).await.unwrap();
    let chunk = |i: u32| {
        let r = map.chunk_range(i).unwrap();
        Bytes::copy_from_slice(&blob[r.start as usize..r.end as usize])
    };
    for i in 0..map.chunk_count() {
        store.write_chunk(digest, i, chunk(i)).await.unwrap();
    }
    assert!(store.is_complete(&digest));
    corrupt(
        &store.blob_path(&digest).unwrap(),
        map.chunk_range(1).unwrap().start + 100,
    );

    let import = |reference: &str, checked_blob: Option<Digest>| ImageImport {
        reference: reference.to_owned(),
        config_bytes: image.config.clone(),
        manifest_bytes: image.manifest.clone(),
        layers: vec![LayerSource {
            media_type: media_type.clone(),
            diff_id,
            reader: Box::new(store.reader(digest).unwrap()),
            checked_blob,
        }],
    };
    let sink = dir_sink(tmp.path());
    let running = tokio::spawn({
        let (sink, image) = (sink.clone(), import("local/vouched:v1", Some(digest)));
        async move { import_image(&sink, image, &ImportOptions::default()).await }
    });
    // The reader finds the rotten chunk and clears it; the import waits.
    eventually(
        "the reader clears the rotten chunk",
        Duration::from_secs(20),
        async || {
            if store.bitfield(&digest).unwrap().get(1) {
                Err("chunk 1 still held")
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert!(!store.is_complete(&digest));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!running.is_finished(), "the import waits for the chunk");
    store.write_chunk(digest, 1, chunk(1)).await.unwrap();
    let report = join(running).await.unwrap();
    let stats = report.layers[0].stats.expect("streamed");
    assert!(!stats.compressed_hashed, "the store vouched for the blob");
    assert_eq!(stats.compressed_digest, digest);
    assert_eq!(stats.compressed_bytes, blob.len() as u64);
    assert_eq!(stats.diff_id, diff_id);
    let root = tmp.path().join("rootfs/local_vouched_v1");
    assert!(root.join("bin/busybox").is_file());

    // Vouching for another blob than the manifest names counts for
    // nothing, and neither does not vouching.
    for (n, checked_blob) in [Some(Digest::of(b"another blob")), None]
        .into_iter()
        .enumerate()
    {
        let report = import_image(
            &sink,
            import(&format!("local/hashed:v{n}"), checked_blob),
            &ImportOptions::default(),
        )
        .await
        .unwrap();
        let stats = report.layers[0].stats.expect("streamed");
        assert!(stats.compressed_hashed, "{checked_blob:?}");
        assert_eq!(stats.compressed_digest, digest);
    }
}

#[tokio::test]
async fn dir_reimport_replaces_the_previous_rootfs() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = Arc::new(ReadProbe::default());
    let sink = dir_sink(tmp.path());
    let one = build_image(&[(base_layer("re"), Compression::Gzip)], false, None);
    import_image(
        &sink,
        one.import("re:v1", Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    let root = tmp.path().join("rootfs/re_v1");
    // A reader inside the first version: its working tree must survive
    // the next replacement.
    let held = std::fs::canonicalize(&root).unwrap();
    let mut open_file = std::fs::File::open(root.join("bin/busybox")).unwrap();
    let two = build_image(
        &[
            (base_layer("re"), Compression::Gzip),
            (extra_layer(), Compression::None),
        ],
        false,
        None,
    );
    import_image(
        &sink,
        two.import("re:v1", Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(root.join("etc/extra")).unwrap(),
        b"third layer\n"
    );
    // The first version is still whole for whoever holds it ...
    assert!(held.join("bin/busybox").is_file());
    assert!(!held.join("etc/extra").exists());
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_file, &mut bytes).unwrap();
    assert!(bytes.starts_with(b"\x7fELF"));
    assert_only_published(&tmp.path().join("rootfs"), &["re_v1"], 1);
    // ... until the next replacement, which drops it.
    import_image(
        &sink,
        one.import("re:v1", Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    assert!(!held.exists());
    assert!(!root.join("etc/extra").exists());
    assert_only_published(&tmp.path().join("rootfs"), &["re_v1"], 1);
}

/// Imports a single-layer image made of `tar` into a fresh dir sink.
async fn import_hostile(tar: Vec<u8>) -> (tempfile::TempDir, ImportError) {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(&[(tar, Compression::Gzip)], false, None);
    let err = import_plain(tmp.path(), &image, "hostile:v1")
        .await
        .expect_err("hostile tar must be rejected");
    assert_no_leftovers(tmp.path());
    (tmp, err)
}

/// `err` refuses a tar entry as unsafe, for `reason`.
fn assert_unsafe(err: &ImportError, reason: &str) {
    assert!(
        matches!(err, ImportError::UnsafeEntry { reason: r, .. } if *r == reason),
        "expected an unsafe entry ({reason}), got: {err}"
    );
}

#[tokio::test]
async fn dir_rejects_parent_traversal() {
    let (_tmp, err) = import_hostile(raw_tar(&[raw_entry(
        b"etc/../../escaped",
        EntryType::Regular,
        b"",
        b"owned",
    )]))
    .await;
    assert_unsafe(&err, "path traversal (..)");
}

#[tokio::test]
async fn dir_rejects_absolute_paths() {
    let (_tmp, err) = import_hostile(raw_tar(&[raw_entry(
        b"/tmp/edgeswarm-absolute",
        EntryType::Regular,
        b"",
        b"owned",
    )]))
    .await;
    assert_unsafe(&err, "absolute path");
    assert!(!Path::new("/tmp/edgeswarm-absolute").exists());
}

#[tokio::test]
async fn dir_rejects_writing_through_an_absolute_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().as_bytes().to_vec();
    let (_tmp, err) = import_hostile(raw_tar(&[
        raw_entry(b"evil", EntryType::Symlink, &target, b""),
        raw_entry(b"evil/pwned", EntryType::Regular, b"", b"owned"),
    ]))
    .await;
    assert_unsafe(&err, "a parent directory is a symlink");
    assert!(
        !outside.path().join("pwned").exists(),
        "wrote through the symlink"
    );
}

#[tokio::test]
async fn dir_rejects_writing_through_a_relative_symlink_escape() {
    let (_tmp, err) = import_hostile(raw_tar(&[
        raw_entry(b"up", EntryType::Symlink, b"../../../../../../tmp", b""),
        raw_entry(
            b"up/edgeswarm-rel-escape",
            EntryType::Regular,
            b"",
            b"owned",
        ),
    ]))
    .await;
    assert!(matches!(err, ImportError::UnsafeEntry { .. }), "{err}");
    assert!(!Path::new("/tmp/edgeswarm-rel-escape").exists());
}

/// The extraction remembers the directories it has checked; a directory
/// the tar itself later replaces by a symlink must not stay remembered,
/// whether it was the last parent used or an ancestor of it.
#[tokio::test]
async fn dir_rejects_writing_through_a_symlink_that_replaced_a_checked_directory() {
    for (replaced, write) in [
        (&b"evil"[..], &b"evil/pwned"[..]),
        (&b"evil"[..], &b"evil/deep/pwned"[..]),
    ] {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().as_bytes().to_vec();
        std::fs::create_dir(outside.path().join("deep")).unwrap();
        let (_tmp, err) = import_hostile(raw_tar(&[
            raw_entry(b"evil/", EntryType::Directory, b"", b""),
            raw_entry(b"evil/deep/", EntryType::Directory, b"", b""),
            raw_entry(b"evil/deep/before", EntryType::Regular, b"", b"fine"),
            raw_entry(replaced, EntryType::Symlink, &target, b""),
            raw_entry(write, EntryType::Regular, b"", b"owned"),
        ]))
        .await;
        assert_unsafe(&err, "a parent directory is a symlink");
        let written = Path::new(std::str::from_utf8(write).unwrap());
        let below = written.strip_prefix("evil").unwrap();
        assert!(
            !outside.path().join(below).exists(),
            "wrote through the symlink: {}",
            below.display()
        );
    }
}

/// Files are written in large full blocks; sizes around the write buffer
/// and a decompressor's short reads must still give back every byte, and
/// a file replacing a directory (or a directory a file) must work.
#[tokio::test]
async fn dir_writes_large_files_whole_and_replaces_entries_of_another_kind() {
    let patterned = |len: usize, seed: u32| -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    let sizes = [
        0,
        1,
        256 * 1024 - 1,
        256 * 1024,
        256 * 1024 + 1,
        3 * 1024 * 1024 + 17,
    ];
    let files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("data/f{i}"), patterned(len, i as u32 + 1)))
        .collect();
    // Directories a user can enter, whoever runs the test.
    let dir = |name: &[u8]| {
        let mut entry = raw_entry(name, EntryType::Directory, b"", b"");
        entry[100..108].copy_from_slice(b"0000755\0");
        fix_checksum(&mut entry[..512]);
        entry
    };
    let mut entries = vec![
        dir(b"data/"),
        raw_entry(b"swap", EntryType::Regular, b"", b"a file first"),
        dir(b"swap/"),
        raw_entry(b"swap/inside", EntryType::Regular, b"", b"then a directory"),
        dir(b"back/"),
        raw_entry(b"back/child", EntryType::Regular, b"", b"gone"),
        raw_entry(
            b"back",
            EntryType::Regular,
            b"",
            b"a directory, then a file",
        ),
    ];
    for (path, data) in &files {
        entries.push(raw_entry(path.as_bytes(), EntryType::Regular, b"", data));
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(&[(raw_tar(&entries), Compression::Gzip)], false, None);
    let report = import_plain(tmp.path(), &image, "big:v1").await.unwrap();
    let root = Path::new(&report.location);
    for (path, data) in &files {
        let got = std::fs::read(root.join(path)).unwrap();
        assert!(
            got == *data,
            "{path}: {} bytes back, {} written",
            got.len(),
            data.len()
        );
    }
    assert_eq!(
        std::fs::read(root.join("swap/inside")).unwrap(),
        b"then a directory"
    );
    assert_eq!(
        std::fs::read(root.join("back")).unwrap(),
        b"a directory, then a file"
    );
}

#[tokio::test]
async fn dir_rejects_hard_links_out_of_the_rootfs() {
    let (_tmp, err) = import_hostile(raw_tar(&[raw_entry(
        b"passwd",
        EntryType::Link,
        b"../../../../etc/passwd",
        b"",
    )]))
    .await;
    assert_unsafe(&err, "path traversal (..)");
}

#[tokio::test]
async fn dir_rejects_oversized_extension_headers() {
    // A GNU long-name header claiming 1 GiB: refused before allocating it.
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[b'a'; 4096]);
    let (_tmp, err) = import_hostile(tar).await;
    assert!(
        matches!(&err, ImportError::BadTar { reason, .. } if reason.contains("exceeds")),
        "{err}"
    );
    // Same for a PAX header.
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/x").unwrap();
    h.set_entry_type(EntryType::XHeader);
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[b'1'; 4096]);
    let (_tmp, err) = import_hostile(tar).await;
    assert!(
        matches!(&err, ImportError::BadTar { reason, .. } if reason.contains("PAX")),
        "{err}"
    );
}

#[tokio::test]
async fn dir_follows_lower_layer_symlinks_only_inside_the_rootfs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lower = LayerTar::default();
    lower
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/existing", 0o644, b"old\n")
        .symlink("lib", "usr/lib")
        .symlink("lib64", "/usr/lib")
        .dir("tmp", 0o1777)
        .symlink("esc", "../../../../../tmp");
    // The upper layer names paths through those symlinks without naming
    // the symlinked directories themselves (as non-Docker builders do).
    let upper = raw_tar(&[
        raw_entry(b"lib/libfoo.so", EntryType::Regular, b"", b"foo"),
        raw_entry(b"lib/.wh.existing", EntryType::Regular, b"", b""),
        raw_entry(b"lib64/libbar.so", EntryType::Regular, b"", b"bar"),
        raw_entry(b"esc/edgeswarm-clamped", EntryType::Regular, b"", b"inside"),
    ]);
    let image = build_image(
        &[
            (lower.finish(), Compression::Gzip),
            (upper, Compression::None),
        ],
        false,
        None,
    );
    let report = import_plain(tmp.path(), &image, "links:v1").await.unwrap();
    let root = Path::new(&report.location);
    assert_eq!(
        std::fs::read_link(root.join("lib")).unwrap(),
        Path::new("usr/lib")
    );
    assert_eq!(
        std::fs::read(root.join("usr/lib/libfoo.so")).unwrap(),
        b"foo"
    );
    assert_eq!(
        std::fs::read(root.join("usr/lib/libbar.so")).unwrap(),
        b"bar"
    );
    assert!(
        !root.join("usr/lib/existing").exists(),
        "whiteout through a symlink"
    );
    assert_eq!(
        std::fs::read(root.join("tmp/edgeswarm-clamped")).unwrap(),
        b"inside"
    );
    assert!(
        !Path::new("/tmp/edgeswarm-clamped").exists(),
        "escaped the rootfs"
    );
}

#[tokio::test]
async fn dir_handles_gnu_long_names_and_pax_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let long_link = format!("{long_dir}/{}", "l".repeat(140));
    // GNU long names and long link targets, written by the tar crate.
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o640);
    h.set_size(4);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    builder
        .append_data(&mut h, &long_file, &b"long"[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    builder
        .append_link(&mut h, &long_link, format!("/{long_file}"))
        .unwrap();
    let gnu = builder.into_inner().unwrap();
    // A PAX header overriding the path of the entry that follows it.
    let pax_path = format!("pax/{}", "p".repeat(200));
    let record = {
        let body = format!(" path={pax_path}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}")
    };
    let pax = raw_tar(&[
        raw_entry(b"PaxHeaders/x", EntryType::XHeader, b"", record.as_bytes()),
        raw_entry(b"short-name", EntryType::Regular, b"", b"pax"),
    ]);
    let image = build_image(
        &[(gnu, Compression::Gzip), (pax, Compression::Gzip)],
        false,
        None,
    );
    let report = import_plain(tmp.path(), &image, "long:v1").await.unwrap();
    let root = Path::new(&report.location);
    assert_eq!(std::fs::read(root.join(&long_file)).unwrap(), b"long");
    assert_eq!(
        std::fs::read_link(root.join(&long_link)).unwrap(),
        Path::new(&format!("/{long_file}"))
    );
    assert_eq!(std::fs::read(root.join(&pax_path)).unwrap(), b"pax");
    assert!(!root.join("short-name").exists());
}

/// A decompression bomb: a layer of a few hundred KiB holding a 160 MiB
/// file of zeros, with honest digests (so without a bound the import would
/// succeed, having written all of it). It fails with a clear error once
/// the layer expands past its bound (here 64 MiB: 100x its compressed
/// size is less than the floor), and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_refuses_a_decompression_bomb_before_filling_the_disk() {
    let zeros = vec![0u8; 160 << 20];
    let mut tar = LayerTar::default();
    tar.file("bomb", 0o644, &zeros);
    let tar = tar.finish();
    drop(zeros);
    for compression in [Compression::Gzip, Compression::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let image = build_image(&[(tar.clone(), compression)], false, None);
        let compressed = image.layers[0].1.len() as u64;
        assert!(compressed < 1 << 20, "{compressed}");
        let probe = Arc::new(ReadProbe::default());
        let options = ImportOptions::default();
        let limit = options.unpack.for_layer(Some(compressed));
        assert_eq!(limit, edgeswarm_node::import::UnpackLimit::FLOOR);
        let err = import_image(
            &dir_sink(tmp.path()),
            image.import("bomb:v1", Duration::ZERO, &probe),
            &options,
        )
        .await
        .expect_err("a bomb must not import");
        assert!(
            matches!(err, ImportError::LayerTooLarge { index: 0, limit: l, .. } if l == limit),
            "{compression:?}: {err}"
        );
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        assert_no_leftovers(tmp.path());
    }
}

/// A layer with a character device node (`dev/null`, 1:3), a setuid-root
/// shell and a setgid directory.
fn privileged_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Char);
    h.set_path("dev/null").unwrap();
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    for (path, kind, mode, data) in [
        ("shared", EntryType::Directory, 0o2775, &b""[..]),
        (
            "bin/rootsh",
            EntryType::Regular,
            0o4755,
            &b"#!/bin/sh\n"[..],
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// Imports [`privileged_layer`] into a fresh dir sink under `policy`.
async fn import_privileged(policy: DirPolicy) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(&[(privileged_layer(), Compression::Gzip)], false, None);
    let probe = Arc::new(ReadProbe::default());
    let report = import_image(
        &dir_sink(tmp.path()),
        image.import("priv:v1", Duration::ZERO, &probe),
        &ImportOptions {
            dir: policy,
            ..ImportOptions::default()
        },
    )
    .await
    .unwrap();
    let root = std::path::PathBuf::from(report.location);
    (tmp, root)
}

/// By default a dir import gives local users nothing: the rootfs root is
/// 0700, device nodes are skipped and setuid/setgid bits stripped. Each
/// is allowed only when the operator opts in.
#[tokio::test]
async fn dir_rootfs_is_private_and_devices_and_setuid_are_opt_in() {
    let mode =
        |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let (tmp, root) = import_privileged(DirPolicy::default()).await;
    assert_eq!(mode(&tmp.path().join("rootfs")), 0o700);
    assert!(!root.join("dev/null").exists(), "device node created");
    assert_eq!(mode(&root.join("bin/rootsh")), 0o755);
    assert_eq!(mode(&root.join("shared")), 0o775);

    let (tmp, root) = import_privileged(DirPolicy {
        device_nodes: true,
        keep_setid: true,
    })
    .await;
    assert_eq!(mode(&tmp.path().join("rootfs")), 0o700);
    assert_eq!(mode(&root.join("bin/rootsh")), 0o4755);
    assert_eq!(mode(&root.join("shared")), 0o2775);
    if running_as_root() {
        use std::os::unix::fs::FileTypeExt as _;
        let meta = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), std::fs::metadata("/dev/null").unwrap().rdev());
    }
}

/// Names a hostile layer's entries are drawn from: traversal, absolute
/// paths, paths through links, whiteouts, empty and dotted names.
const FUZZ_NAMES: &[&[u8]] = &[
    b"a",
    b"a/b",
    b"a/b/c",
    b"..",
    b"../x",
    b"a/../../x",
    b"./a",
    b"/abs",
    b"/tmp/edgeswarm-fuzz-escape/x",
    b"a/.wh.b",
    b".wh..wh..opq",
    b"a/.wh..wh..opq",
    b"link",
    b"link/x",
    b"link/../x",
    b"",
];
/// Link targets: inside, the root, outside by `..`, absolute.
const FUZZ_LINKS: &[&[u8]] = &[
    b"",
    b"a",
    b"a/b",
    b"link",
    b"/",
    b"/tmp",
    b"../../../../../../tmp/edgeswarm-fuzz-escape",
    b"/tmp/edgeswarm-fuzz-escape",
];
const FUZZ_KINDS: &[EntryType] = &[
    EntryType::Regular,
    EntryType::Directory,
    EntryType::Symlink,
    EntryType::Link,
    EntryType::Fifo,
    EntryType::Char,
];

/// Rewrites a tar header block's checksum field for its current bytes.
fn fix_checksum(header: &mut [u8]) {
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Stable fuzzing of the `dir` sink's tar entry checks (issue 13):
    /// layers of entries drawn from hostile names, kinds and link targets,
    /// with byte flips on top, imported for real. Whatever the layer, the
    /// import returns (an image or a clean error), writes nothing outside
    /// its sink, and leaves nothing behind when it fails.
    #[test]
    fn dir_import_of_hostile_layers_stays_inside_its_sink(
        entries in proptest::collection::vec(
            (0..FUZZ_NAMES.len(), 0..FUZZ_KINDS.len(), 0..FUZZ_LINKS.len(), 0usize..600),
            1..10,
        ),
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..4),
    ) {
        let escape = Path::new("/tmp/edgeswarm-fuzz-escape");
        // Left by a broken build's run, it would fail every case.
        let _ = std::fs::remove_dir_all(escape);
        let raw: Vec<Vec<u8>> = entries
            .iter()
            .map(|&(name, kind, link, len)| {
                let data = if FUZZ_KINDS[kind] == EntryType::Regular { vec![b'x'; len] } else { Vec::new() };
                raw_entry(FUZZ_NAMES[name], FUZZ_KINDS[kind], FUZZ_LINKS[link], &data)
            })
            .collect();
        // Headers sit at these offsets; a flip in one gets its checksum
        // fixed, so that the checks behind the tar reader's see it.
        let headers: Vec<usize> = raw.iter().scan(0, |at, e| { let h = *at; *at += e.len(); Some(h) }).collect();
        let mut tar = raw_tar(&raw);
        let body = tar.len() - 1024;
        for (at, byte) in &flips {
            tar[at % body] = *byte;
        }
        for h in headers {
            fix_checksum(&mut tar[h..h + 512]);
        }
        let tmp = tempfile::tempdir().unwrap();
        let image = build_image(&[(tar, Compression::Gzip)], false, None);
        let probe = Arc::new(ReadProbe::default());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcome = runtime.block_on(import_image(
            &dir_sink(tmp.path()),
            image.import("fuzz:v1", Duration::ZERO, &probe),
            &ImportOptions::default(),
        ));
        let outside: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "rootfs")
            .collect();
        proptest::prop_assert!(outside.is_empty(), "wrote beside the sink: {:?}", outside);
        proptest::prop_assert!(!escape.exists(), "wrote through an escape: {:?}", outcome);
        if outcome.is_err() {
            assert_no_leftovers(tmp.path());
        }
    }
}
