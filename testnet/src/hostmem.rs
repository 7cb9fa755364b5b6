//! The host's memory during an experiment: a virtual machine's free page
//! reporting paused, and the memory the runs will fill touched once
//! beforehand, so that what a run costs does not depend on which of the
//! guest's free pages the hypervisor has taken back.
//!
//! # Why
//! A guest with free page reporting (virtio-balloon; the development
//! machines are Firecracker guests with it on) tells the host which free
//! blocks (2 MiB, `page_reporting_order` 9) it may reclaim, and the host
//! unmaps them. Using such a page again faults in the host, and the guest
//! sees that as time spent in whatever instruction touched the page first:
//! for the page cache, the kernel's copy of written data
//! (`copy_folio_from_iter_atomic`). Measured here on 2026-12-07 (2-core
//! Xeon guest, 24 GB, kernel 6.18), `tar -xf` of the 126.7 MB tree of
//! issue 11's `single` layer into a fresh ext4: 0.08-0.12 s of system time
//! into pages the guest had used and freed moments before, 0.40-0.50 s
//! (and 0.46 s into tmpfs) once those ran out, after about 1.7 GB. An
//! N = 21 `dir` run writes about 3.7 GB of page cache (every node's store
//! and tree), so up to 11 CPU-s of a run was the host handing pages back,
//! more or less of it depending on how long ago the runs before it freed
//! theirs: the same build cost 1.63-2.37 CPU-s per node from run to run.
//! With reporting paused (`page_reporting_order` 11, which this kernel
//! takes and which no block reaches) and 6 GB touched and freed first,
//! 30 such extractions in a row (3.8 GB) cost 0.07-0.10 s each. A real
//! device pays the cheap figure: its free memory is its own.
//!
//! The same reasoning as [`crate::scratch`] (a fresh filesystem per run)
//! and the bridges kept out of netfilter: costs no real device has are
//! taken out of the emulation, for both methods alike.
//!
//! Stock kernels take orders only up to their highest page order, so
//! there reporting goes on for blocks of that order (4 MiB on x86-64);
//! the order written is compared with the kernel's number of page orders
//! (`/proc/buddyinfo`), and the summary says "paused" only when no block
//! can reach it.
//!
//! # Non-goals
//! Pausing reporting for good: the previous order is written back when
//! the [`QuietMemory`] is dropped (a killed experiment leaves it paused,
//! and says how to restore it when it starts). Machines without free page
//! reporting are left alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The kernel parameter: free blocks of this order and above are reported
/// to the host.
pub const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// A counter of the KiB reported so far, where the kernel has one (the
/// Firecracker guests' kernels do; stock kernels do not).
pub const REPORTED_KIB: &str = "/sys/module/page_reporting/parameters/reported_kib";

/// The highest order tried when pausing: above any kernel's page orders.
/// The kernel refuses orders it cannot have, so the first one accepted
/// counting down from here is the highest it takes.
const HIGHEST_ORDER_TRIED: u32 = 20;

/// Memory left free whatever the estimate asks to warm.
pub const WARM_HEADROOM: u64 = 1 << 30;

/// How much memory to touch before an experiment whose largest run has
/// `nodes` nodes and an image of `image_bytes` compressed bytes: every
/// node's page cache (its store's compressed copy and its extracted tree,
/// about 2.6x the compressed bytes for `single`) and its process, 4x the
/// image each, plus 1 GB for the registry, the testnet and the kernel;
/// never more than what leaves [`WARM_HEADROOM`] of `available`.
pub fn warm_bytes(nodes: usize, image_bytes: u64, available: u64) -> u64 {
    let wanted = (nodes as u64)
        .saturating_mul(image_bytes)
        .saturating_mul(4)
        .saturating_add(1_000_000_000);
    wanted.min(available.saturating_sub(WARM_HEADROOM))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// The `MemAvailable:` line of a `/proc/meminfo` text, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Free page reporting paused (and restored on drop), and what was done,
/// for the experiment's summary.
#[derive(Debug)]
pub struct QuietMemory {
    /// The parameter written and the order to write back; `None` when
    /// nothing was changed.
    restore: Option<(PathBuf, u32)>,
    /// The reported-KiB counter at the start, where there is one.
    reported_at_start: Option<u64>,
    /// One line for the summary: what was paused and warmed.
    description: String,
}

impl QuietMemory {
    /// Leaves the host's memory as it is (`--keep-page-reporting`, or a
    /// machine without free page reporting).
    pub fn untouched(why: &str) -> QuietMemory {
        QuietMemory {
            restore: None,
            reported_at_start: None,
            description: why.to_string(),
        }
    }

    /// Pauses free page reporting through `param` (the kernel's
    /// [`PAGE_REPORTING_ORDER`]; tests pass a file of their own) and then
    /// touches and frees `warm` bytes of memory, so that the pages the
    /// runs take are the guest's own. Without `param`, or when it cannot
    /// be written (no root, a read-only `/sys` in a container), nothing
    /// is changed and the description says why.
    ///
    /// `page_orders` is the kernel's number of page orders (the columns
    /// of `/proc/buddyinfo`, [`page_orders`]): reporting is paused only
    /// when the order written reaches it. Kernels that take no order that
    /// high (stock ones stop at the highest page order) keep reporting
    /// blocks of that order, and the description says so.
    pub fn pause(
        param: &Path,
        reported_kib: &Path,
        page_orders: Option<u32>,
        warm: u64,
    ) -> QuietMemory {
        let Some(previous) = read_order(param) else {
            return QuietMemory::untouched("free page reporting: none on this machine");
        };
        let off = |order: u32| page_orders.is_some_and(|n| order >= n);
        let (raised, restore) = if off(previous) {
            (previous, None)
        } else {
            let Some(raised) = (previous + 1..=HIGHEST_ORDER_TRIED)
                .rev()
                .find(|order| fs::write(param, order.to_string()).is_ok())
            else {
                return QuietMemory::untouched(&format!(
                    "free page reporting left on (order {previous}; {} not writable)",
                    param.display()
                ));
            };
            eprintln!(
                "   free page reporting raised from order {previous} to {raised} for the experiment; \
                 if this process is killed, restore it with `echo {previous} > {}`",
                param.display()
            );
            (raised, Some((param.to_path_buf(), previous)))
        };
        let state = match (restore.is_some(), off(raised), page_orders) {
            (false, _, _) => format!("free page reporting already off (order {previous})"),
            (true, true, _) => {
                format!("free page reporting paused (order {previous} -> {raised})")
            }
            (true, false, Some(n)) => format!(
                "free page reporting raised from order {previous} to {raised}, the highest this \
                 kernel takes (of {n} page orders: blocks of order {raised} are still reported)"
            ),
            (true, false, None) => format!(
                "free page reporting raised from order {previous} to {raised} (the kernel's page \
                 orders unknown: it may still report)"
            ),
        };
        let reported_at_start = read_u64(reported_kib);
        let (touched, took) = touch_and_free(warm);
        QuietMemory {
            restore,
            reported_at_start,
            description: format!(
                "{state}, and {:.1} GB of memory touched and freed in {:.1} s before the runs \
                 (`--keep-page-reporting` leaves both alone)",
                touched as f64 / 1e9,
                took.as_secs_f64()
            ),
        }
    }

    /// What was done, for the summary (with the KiB reported since the
    /// pause where the kernel counts them: 0 when the pause held).
    pub fn describe(&self, reported_kib: &Path) -> String {
        match (self.reported_at_start, read_u64(reported_kib)) {
            (Some(start), Some(now)) => format!(
                "{}; {} KiB reported to the host since",
                self.description,
                now.saturating_sub(start)
            ),
            _ => self.description.clone(),
        }
    }

    /// Writes the previous order back (once).
    pub fn restore(&mut self) {
        if let Some((param, previous)) = self.restore.take() {
            if let Err(e) = fs::write(&param, previous.to_string()) {
                eprintln!(
                    "could not restore {} to {previous}: {e}; free page reporting stays paused",
                    param.display()
                );
            }
        }
    }
}

impl Drop for QuietMemory {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The kernel's number of page orders, from `/proc/buddyinfo`.
pub fn page_orders() -> Option<u32> {
    parse_page_orders(&fs::read_to_string("/proc/buddyinfo").ok()?)
}

/// The number of free-block counts on the first zone line of a
/// `/proc/buddyinfo` text (`Node 0, zone   Normal  8567  6452 ...`): one
/// per page order.
pub fn parse_page_orders(buddyinfo: &str) -> Option<u32> {
    let line = buddyinfo.lines().next()?;
    let (_, counts) = line.split_once("zone")?;
    let n = counts
        .split_whitespace()
        .skip(1)
        .take_while(|c| c.parse::<u64>().is_ok())
        .count();
    (n > 0).then_some(n as u32)
}

fn read_order(param: &Path) -> Option<u32> {
    fs::read_to_string(param).ok()?.trim().parse().ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Touches `bytes` of fresh memory, all held at once (freed and taken
/// again, a block would get the same pages back), then frees it. Returns
/// the bytes touched and the time it took.
fn touch_and_free(bytes: u64) -> (u64, Duration) {
    const BLOCK: usize = 64 << 20;
    let started = Instant::now();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut touched = 0u64;
    while touched < bytes {
        let len = BLOCK.min((bytes - touched) as usize);
        let mut block = Vec::new();
        if block.try_reserve_exact(len).is_err() {
            break;
        }
        // Written, not zeroed by the allocator: a calloc'd block would
        // leave its pages untouched.
        block.resize(len, 0xa5);
        touched += len as u64;
        held.push(block);
    }
    drop(held);
    (touched, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_bytes_covers_every_node_and_keeps_headroom() {
        // 21 nodes, 50 MB image: 4.2 GB for the nodes + 1 GB.
        assert_eq!(warm_bytes(21, 50_000_000, 64 << 30), 5_200_000_000);
        // A small machine: all but the headroom.
        assert_eq!(warm_bytes(21, 50_000_000, 3 << 30), 2 << 30);
        assert_eq!(warm_bytes(21, 50_000_000, 512 << 20), 0);
    }

    #[test]
    fn mem_available_is_parsed_in_bytes() {
        let meminfo = "MemTotal:       24558596 kB\nMemFree:        22953284 kB\n\
                       MemAvailable:   23412180 kB\nBuffers:           12 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(23412180 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn pause_raises_the_order_and_drop_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let param = dir.path().join("page_reporting_order");
        let counter = dir.path().join("reported_kib");
        fs::write(&param, "9\n").unwrap();
        fs::write(&counter, "1000\n").unwrap();
        let quiet = QuietMemory::pause(&param, &counter, Some(11), 3 << 20);
        // A plain file takes any order: the highest tried.
        assert_eq!(read_order(&param), Some(HIGHEST_ORDER_TRIED));
        fs::write(&counter, "1512\n").unwrap();
        let text = quiet.describe(&counter);
        assert!(text.contains("paused (order 9 -> 20)"), "{text}");
        assert!(text.contains("512 KiB reported"), "{text}");
        drop(quiet);
        assert_eq!(read_order(&param), Some(9));
    }

    #[test]
    fn an_order_below_the_kernels_page_orders_is_not_called_a_pause() {
        let dir = tempfile::tempdir().unwrap();
        let param = dir.path().join("page_reporting_order");
        fs::write(&param, "9\n").unwrap();
        // As if the kernel had 32 page orders: order 20 is still reported.
        let quiet = QuietMemory::pause(&param, &dir.path().join("c"), Some(32), 0);
        let text = quiet.describe(&dir.path().join("c"));
        assert!(!text.contains("paused"), "{text}");
        assert!(
            text.contains("blocks of order 20 are still reported"),
            "{text}"
        );
        drop(quiet);
        assert_eq!(read_order(&param), Some(9));
        // Already off: nothing written, nothing to restore.
        fs::write(&param, "11\n").unwrap();
        let quiet = QuietMemory::pause(&param, &dir.path().join("c"), Some(11), 0);
        assert!(quiet.describe(&param).contains("already off (order 11)"));
        fs::write(&param, "7\n").unwrap();
        drop(quiet);
        assert_eq!(read_order(&param), Some(7));
    }

    #[test]
    fn page_orders_are_the_columns_of_buddyinfo() {
        let buddyinfo = "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n\
                         Node 0, zone   Normal   8567   6452   6021   2886   2824    824    266   1225    346    454   1696 \n";
        assert_eq!(parse_page_orders(buddyinfo), Some(11));
        assert_eq!(parse_page_orders(""), None);
        assert_eq!(parse_page_orders("Node 0, zone DMA\n"), None);
    }

    #[test]
    fn no_reporting_means_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let param = dir.path().join("absent");
        let quiet = QuietMemory::pause(&param, &dir.path().join("c"), Some(11), 1 << 20);
        assert!(quiet.describe(&param).contains("none on this machine"));
        drop(quiet);
        assert!(!param.exists());
    }
}
