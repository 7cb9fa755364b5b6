//! The fresh filesystem each experiment run gets for its data dirs: a real
//! loop-mounted ext4 (needs root, as in CI).

use edgeswarm_testnet::scratch::{is_mount_point, ScratchFs, MIN_SIZE};

#[allow(dead_code)] // only require_root is used here
mod support;
use support::require_root;

#[test]
fn a_scratch_filesystem_is_mounted_fresh_and_gone_after_unmount_or_drop() {
    require_root();
    let base = tempfile::tempdir_in("/var/tmp").unwrap();
    let mount = base.path().join("es-data");
    let image = base.path().join("es-data.ext4");

    let mut fs = ScratchFs::mount(&mount, 1 << 20).unwrap();
    assert!(is_mount_point(&mount), "not mounted at {}", mount.display());
    // Sparse, and at least MIN_SIZE whatever was asked.
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), MIN_SIZE);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < MIN_SIZE / 8);
    // A fresh ext4 holds only lost+found.
    let names: Vec<_> = std::fs::read_dir(&mount)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["lost+found"]);
    // Its loop device reads and writes the backing file with direct I/O.
    let devices = loops_of(&image);
    assert_eq!(devices.len(), 1, "loop devices of the image: {devices:?}");
    assert_eq!(devices[0].1, "1", "{} without direct I/O", devices[0].0);
    std::fs::write(mount.join("n0"), b"data").unwrap();
    fs.unmount().unwrap();
    assert!(!is_mount_point(&mount));
    assert!(!image.exists(), "backing file left behind");
    // The loop device was freed with the mount (lazily: give it a moment).
    let mut left = loops_of(&image);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = loops_of(&image);
    }
    assert!(left.is_empty(), "loop devices left behind: {left:?}");
    // What was written went with it.
    assert!(!mount.join("n0").exists());
    fs.unmount().unwrap();

    // A directory with files in it is refused: mounting would hide them.
    std::fs::write(mount.join("kept"), b"x").unwrap();
    let err = ScratchFs::mount(&mount, 0).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert!(mount.join("kept").exists() && !image.exists());
    std::fs::remove_file(mount.join("kept")).unwrap();

    // Dropped: unmounted and removed too.
    let fs = ScratchFs::mount(&mount, 0).unwrap();
    assert!(is_mount_point(fs.path()));
    drop(fs);
    assert!(!is_mount_point(&mount) && !image.exists());
}

/// Loop devices backed by `image`, with their `loop/dio` flag, from sysfs.
fn loops_of(image: &std::path::Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap() {
        let dir = entry.unwrap().path();
        let Ok(backing) = std::fs::read_to_string(dir.join("loop/backing_file")) else {
            continue;
        };
        // A removed backing file reads as "PATH (deleted)".
        if backing.trim().trim_end_matches(" (deleted)") == image.to_str().unwrap() {
            let dio = std::fs::read_to_string(dir.join("loop/dio")).unwrap_or_default();
            found.push((dir.display().to_string(), dio.trim().to_string()));
        }
    }
    found
}
