//! A fresh filesystem for one run's data dirs: a sparse file formatted as
//! ext4 (with its journal, as devices run it) and loop-mounted, removed
//! after the run.
//!
//! # Why
//! File creation costs depend on the filesystem's history, and on the
//! development machines badly: their root ext4 has no journal, and ext4
//! without a journal skips inodes freed in the last seconds (minutes while
//! their table block is dirty) when it allocates, reading each one's table
//! block to find out. Measured (2026-12-02, `tar -xf` of a 587 MB tar of
//! `/usr/share`, 50,721 files): 4.0 s of system time into the root
//! filesystem, then 18.4, 34.7 and 39.7 s for the same extraction after
//! each `rm -rf` of the previous one (the last two after `sync` and 7 s of
//! rest); on a fresh journaled ext4 on a loop device 1.94, 1.96 and 2.05 s.
//! In an experiment whose second method extracts right after the first
//! deleted its trees, the second paid that (`dir`, N=1: `tar -xf` took
//! 6.3 CPU-s after an edgeswarm run, 1.5 before one), so the order of the
//! methods decided the CPU comparison. A fresh filesystem per run gives
//! both methods the same start.
//!
//! # Non-goals
//! Emulating a device's storage speed: the loop file lives in the host's
//! page cache like any other file.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::cmd;
use crate::error::{Result, TestnetError};

/// Smallest scratch filesystem made, whatever the estimate (sparse: only
/// what is written takes space).
pub const MIN_SIZE: u64 = 4 << 30;

/// A loop-mounted ext4 at a directory; unmounted, and its backing file
/// removed, on drop.
#[derive(Debug)]
pub struct ScratchFs {
    /// Where it is mounted.
    mount: PathBuf,
    /// The sparse backing file (beside the mount point).
    image: PathBuf,
    /// Still mounted (cleared by [`Self::unmount`]).
    mounted: bool,
}

impl ScratchFs {
    /// Formats a sparse file of `size` bytes (at least [`MIN_SIZE`]) as
    /// ext4 and mounts it at `mount` (created; it must be empty or absent).
    pub fn mount(mount: &Path, size: u64) -> Result<ScratchFs> {
        cmd::require("mkfs.ext4", "apt-get install e2fsprogs")?;
        cmd::require("mount", "apt-get install mount")?;
        cmd::require("losetup", "apt-get install mount")?;
        if !cmd::is_root() {
            return Err(TestnetError::NotRoot);
        }
        if mount.exists() {
            let mut entries = std::fs::read_dir(mount)
                .map_err(|e| TestnetError::io(format!("reading {}", mount.display()), e))?;
            if entries.next().is_some() {
                return Err(TestnetError::Experiment(format!(
                    "{} is not empty: a scratch filesystem would hide its files",
                    mount.display()
                )));
            }
        }
        std::fs::create_dir_all(mount)
            .map_err(|e| TestnetError::io(format!("creating {}", mount.display()), e))?;
        let mut name = mount
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "scratch".into());
        name.push(".ext4");
        let image = mount.with_file_name(name);
        let file = std::fs::File::create(&image)
            .map_err(|e| TestnetError::io(format!("creating {}", image.display()), e))?;
        file.set_len(size.max(MIN_SIZE))
            .map_err(|e| TestnetError::io(format!("sizing {}", image.display()), e))?;
        drop(file);
        let made = cmd::run(
            "mkfs.ext4",
            &[OsStr::new("-q"), OsStr::new("-F"), image.as_os_str()],
        )
        .and_then(|_| {
            // Direct I/O on the backing file: the loop device then writes
            // through to the disk instead of copying every page into the
            // host's cache a second time, and its CPU is closer to a real
            // block device's. At 21 nodes on the 2 busy cores, single
            // layout: T(21) 12.91 and 13.04 s with direct I/O against
            // 14.88 and 14.81 s buffered, in the same hour
            // (testnet/results/sim-current-2026-12-03/).
            let dev = cmd::run(
                "losetup",
                &[
                    OsStr::new("--direct-io=on"),
                    OsStr::new("--find"),
                    OsStr::new("--show"),
                    image.as_os_str(),
                ],
            )?;
            let dev = dev.trim().to_string();
            let mounted = cmd::run("mount", &[OsStr::new(&dev), mount.as_os_str()]);
            // Detached now, the device is freed once unmounted (as
            // `mount -o loop` does), or at once if the mount failed.
            let _ = cmd::run("losetup", &[OsStr::new("-d"), OsStr::new(&dev)]);
            mounted
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&image);
            return Err(e);
        }
        Ok(ScratchFs {
            mount: mount.to_path_buf(),
            image,
            mounted: true,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Unmounts it and removes its backing file (and with it every file
    /// written there).
    pub fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            // Lazy: a process of the run still holding a file open (a
            // straggler being killed) must not leave the mount behind.
            cmd::run("umount", &[OsStr::new("-l"), self.mount.as_os_str()])?;
            self.mounted = false;
        }
        match std::fs::remove_file(&self.image) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TestnetError::io(
                format!("removing {}", self.image.display()),
                e,
            )),
        }
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(mount = %self.mount.display(), error = %e, "removing a scratch filesystem");
        }
    }
}

/// Whether `path` is a mount point (listed in `/proc/self/mounts`).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == want)
}
