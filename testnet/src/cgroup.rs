//! A device budget for one process tree: a CPU quota and a memory limit in
//! a cgroup of its own, and what the tree used under it.
//!
//! # Versions
//! Detected at run time ([`Hierarchy::detect`]):
//! - **v2** (one unified mount with the `cpu` and `memory` controllers at
//!   `/sys/fs/cgroup`): `cpu.max`, `memory.max`; usage from `cpu.stat`
//!   (`usage_usec`, `throttled_usec`), `memory.peak` and `memory.stat`.
//!   The budget cgroup is a child of the root, whose `subtree_control` gets
//!   `+cpu +memory` (a non-root cgroup holding processes cannot delegate).
//! - **v1** (one mount per controller, as on a hybrid systemd host, where
//!   `/sys/fs/cgroup/unified` has no controllers): `cpu.cfs_quota_us` of
//!   `cpu.cfs_period_us`, `memory.limit_in_bytes`; usage from
//!   `cpuacct.usage`, `cpu.stat` (`throttled_time`),
//!   `memory.max_usage_in_bytes` and `memory.stat`. The budget cgroup is
//!   made inside the caller's own cgroup of each controller, so that it
//!   stays within whatever limits and accounting the caller is under.
//!
//! # Memory figures
//! The cgroup's peak (`memory.max_usage_in_bytes` / `memory.peak`) counts
//! the page cache of the files the process writes, which the kernel
//! reclaims under the limit: with a big image it sits near the limit
//! whatever the process holds. The process's own peak resident set
//! (`VmHWM` of `/proc/PID/status`) and the cgroup's anonymous memory are
//! what the "peak RSS" target is about; [`Usage`] carries all three.
//!
//! Processes join the cgroup before they exec (see
//! [`crate::process::SpawnSpec::cgroup_procs`]), so nothing they allocate
//! escapes the budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Result, TestnetError};

/// Where cgroup file systems are mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// A Raspberry-Pi-class budget: a share of one core and a memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// CPU time the group may use per period, in microseconds.
    pub cpu_quota_us: u64,
    /// The scheduler period, in microseconds.
    pub cpu_period_us: u64,
    /// Memory limit in bytes (page cache included, as the kernel counts it).
    pub memory_bytes: u64,
}

impl Budget {
    /// The period the budget's quota is expressed in (the kernel default).
    pub const PERIOD_US: u64 = 100_000;

    /// `cores` of CPU (0.25: a quarter of one core) and `memory_bytes`.
    pub fn new(cores: f64, memory_bytes: u64) -> Result<Budget> {
        // The kernel refuses quotas under 1 ms.
        if !(0.01..=1024.0).contains(&cores) {
            return Err(TestnetError::InvalidSpec(format!(
                "CPU budget {cores} cores: use 0.01 to 1024"
            )));
        }
        if memory_bytes < 16 << 20 {
            return Err(TestnetError::InvalidSpec(format!(
                "memory budget {memory_bytes} bytes: use at least 16 MiB"
            )));
        }
        Ok(Budget {
            cpu_quota_us: (cores * Self::PERIOD_US as f64).round() as u64,
            cpu_period_us: Self::PERIOD_US,
            memory_bytes,
        })
    }

    /// The device: a quarter of one core, 256 MiB.
    pub fn pi() -> Budget {
        Budget {
            cpu_quota_us: 25_000,
            cpu_period_us: Self::PERIOD_US,
            memory_bytes: 256 << 20,
        }
    }

    /// The CPU share in cores.
    pub fn cores(&self) -> f64 {
        self.cpu_quota_us as f64 / self.cpu_period_us as f64
    }

    /// The v2 `cpu.max` line: `QUOTA PERIOD`.
    pub fn cpu_max(&self) -> String {
        format!("{} {}", self.cpu_quota_us, self.cpu_period_us)
    }
}

/// Which cgroup interface this machine offers, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified hierarchy; budget cgroups go under `root`.
    V2 {
        /// The unified mount (`/sys/fs/cgroup`).
        root: PathBuf,
    },
    /// One hierarchy per controller; budget cgroups go under each parent.
    V1 {
        /// The caller's own cgroup in the `cpu` hierarchy.
        cpu: PathBuf,
        /// The caller's own cgroup in the `cpuacct` hierarchy (the same
        /// directory as `cpu` where both are mounted together).
        cpuacct: PathBuf,
        /// The caller's own cgroup in the `memory` hierarchy.
        memory: PathBuf,
    },
}

impl Hierarchy {
    /// Detects the interface under `root` for a process whose
    /// `/proc/self/cgroup` reads `self_cgroup`.
    pub fn detect_in(root: &Path, self_cgroup: &str) -> Result<Hierarchy> {
        let unavailable = |why: String| TestnetError::KernelLacks {
            feature: "cgroup cpu and memory controllers",
            detail: why,
            hint: "mount cgroup v2 with the cpu and memory controllers at /sys/fs/cgroup, \
                   or cgroup v1 cpu, cpuacct and memory hierarchies under it",
        };
        if let Ok(controllers) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if has("cpu") && has("memory") {
                return Ok(Hierarchy::V2 {
                    root: root.to_path_buf(),
                });
            }
            return Err(unavailable(format!(
                "{} lists {:?}",
                root.join("cgroup.controllers").display(),
                controllers.trim()
            )));
        }
        let mount = |controller: &str, file: &str| -> Result<PathBuf> {
            // `cpu` and `cpuacct` may be one mount (`cpu,cpuacct`, with
            // `cpu` and `cpuacct` symlinks to it) or two.
            let base = root.join(controller);
            if !base.join(file).is_file() {
                return Err(unavailable(format!(
                    "no {} (cgroup v1 {controller} hierarchy)",
                    base.join(file).display()
                )));
            }
            let own = own_cgroup_v1(self_cgroup, controller).unwrap_or_default();
            Ok(base.join(own.trim_start_matches('/')))
        };
        Ok(Hierarchy::V1 {
            cpu: mount("cpu", "cpu.cfs_quota_us")?,
            cpuacct: mount("cpuacct", "cpuacct.usage")?,
            memory: mount("memory", "memory.limit_in_bytes")?,
        })
    }

    /// Detects the interface of this machine for this process.
    pub fn detect() -> Result<Hierarchy> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| TestnetError::io("reading /proc/self/cgroup", e))?;
        Hierarchy::detect_in(Path::new(DEFAULT_ROOT), &own)
    }

    /// `v1` or `v2`.
    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::V1 { .. } => "v1",
        }
    }
}

/// The path of the caller's cgroup in the v1 hierarchy of `controller`,
/// from the text of `/proc/self/cgroup` (`ID:CONTROLLERS:PATH` lines, where
/// CONTROLLERS may list several, comma-separated).
pub fn own_cgroup_v1(self_cgroup: &str, controller: &str) -> Option<String> {
    self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_id, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// `KEY VALUE` lines (`cpu.stat`, `memory.stat`) as a map; lines whose
/// value is not an integer are skipped.
pub fn parse_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let k = f.next()?;
            let v = f.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// The `VmHWM` (peak resident set) of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix("VmHWM:")?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Bytes a process caused to be written to storage so far, from its
/// `/proc/PID/io` text: `write_bytes` (pages it dirtied, counted when it
/// dirtied them, so writeback by the kernel's flusher threads is still
/// charged to it) less `cancelled_write_bytes` (dirty pages dropped before
/// they reached the disk: a file truncated or deleted first).
pub fn parse_io_written(io: &str) -> Option<u64> {
    let field = |name: &str| {
        io.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let written = field("write_bytes")?;
    Some(written.saturating_sub(field("cancelled_write_bytes").unwrap_or(0)))
}

/// [`parse_io_written`] of a running process (`None` once it is gone, or
/// without the permission to read another user's `/proc/PID/io`).
pub fn process_written(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| parse_io_written(&t))
}

/// The pids listed in a `cgroup.procs` text.
pub fn parse_procs(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// What a budget cgroup's processes used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time of the group, in seconds.
    pub cpu_seconds: f64,
    /// Time the group was held back by its quota, in seconds.
    pub throttled_seconds: f64,
    /// The cgroup's peak memory (page cache included), in bytes.
    pub memory_peak: u64,
    /// The cgroup's anonymous memory now (heap, stacks), in bytes.
    pub anon_bytes: u64,
}

impl Usage {
    /// `self - earlier` for the cumulative CPU figures; memory figures are
    /// `self`'s (a peak is not a difference).
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu_seconds: (self.cpu_seconds - earlier.cpu_seconds).max(0.0),
            throttled_seconds: (self.throttled_seconds - earlier.throttled_seconds).max(0.0),
            ..*self
        }
    }
}

/// A budget cgroup: created with its limits, removed on drop (once its
/// processes are gone).
#[derive(Debug)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    /// One directory per hierarchy (one for v2).
    dirs: Vec<PathBuf>,
    name: String,
    budget: Budget,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| TestnetError::io(format!("writing {value:?} to {}", path.display()), e))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| TestnetError::io(format!("reading {}", path.display()), e))
}

impl Cgroup {
    /// Creates cgroup `name` with `budget` under `hierarchy` (a leftover
    /// of the same name, without processes, is reused).
    pub fn create(hierarchy: &Hierarchy, name: &str, budget: Budget) -> Result<Cgroup> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(TestnetError::InvalidSpec(format!("cgroup name {name:?}")));
        }
        let mkdir = |d: &Path| {
            std::fs::create_dir_all(d)
                .map_err(|e| TestnetError::io(format!("creating cgroup {}", d.display()), e))
        };
        let dirs = match hierarchy {
            Hierarchy::V2 { root } => {
                // Only the root may both hold processes and delegate.
                write(&root.join("cgroup.subtree_control"), "+cpu +memory")?;
                let d = root.join(name);
                mkdir(&d)?;
                write(&d.join("cpu.max"), &budget.cpu_max())?;
                write(&d.join("memory.max"), &budget.memory_bytes.to_string())?;
                // No swap: a device's budget is RAM (swap would hide the
                // limit, and most of these devices run without it).
                let _ = write(&d.join("memory.swap.max"), "0");
                vec![d]
            }
            Hierarchy::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                let mut dirs = vec![cpu.join(name)];
                if cpuacct != cpu {
                    dirs.push(cpuacct.join(name));
                }
                dirs.push(memory.join(name));
                for d in &dirs {
                    mkdir(d)?;
                }
                let c = cpu.join(name);
                write(
                    &c.join("cpu.cfs_period_us"),
                    &budget.cpu_period_us.to_string(),
                )?;
                write(
                    &c.join("cpu.cfs_quota_us"),
                    &budget.cpu_quota_us.to_string(),
                )?;
                let m = memory.join(name);
                write(
                    &m.join("memory.limit_in_bytes"),
                    &budget.memory_bytes.to_string(),
                )?;
                let _ = write(&m.join("memory.swappiness"), "0");
                // A reused leftover starts from zero.
                let _ = write(&m.join("memory.max_usage_in_bytes"), "0");
                let _ = write(&cpuacct.join(name).join("cpuacct.usage"), "0");
                dirs
            }
        };
        Ok(Cgroup {
            hierarchy: hierarchy.clone(),
            dirs,
            name: name.to_string(),
            budget,
        })
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The budget it enforces.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its hierarchy.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The pids in it now.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.procs_files()[0])
            .map(|t| parse_procs(&t))
            .unwrap_or_default()
    }

    /// What its processes used so far.
    pub fn usage(&self) -> Result<Usage> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => {
                let d = root.join(&self.name);
                let cpu = parse_keyed(&read(&d.join("cpu.stat"))?);
                let mem = parse_keyed(&read(&d.join("memory.stat"))?);
                // memory.peak arrived in Linux 5.19; before it, the current
                // figure is the best there is.
                let peak =
                    read(&d.join("memory.peak")).or_else(|_| read(&d.join("memory.current")))?;
                Ok(Usage {
                    cpu_seconds: cpu.get("usage_usec").copied().unwrap_or(0) as f64 / 1e6,
                    throttled_seconds: cpu.get("throttled_usec").copied().unwrap_or(0) as f64 / 1e6,
                    memory_peak: peak.trim().parse().unwrap_or(0),
                    anon_bytes: mem.get("anon").copied().unwrap_or(0),
                })
            }
            Hierarchy::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                let usage_ns: u64 = read(&cpuacct.join(&self.name).join("cpuacct.usage"))?
                    .trim()
                    .parse()
                    .unwrap_or(0);
                let stat = parse_keyed(&read(&cpu.join(&self.name).join("cpu.stat"))?);
                let m = memory.join(&self.name);
                let mem = parse_keyed(&read(&m.join("memory.stat"))?);
                Ok(Usage {
                    cpu_seconds: usage_ns as f64 / 1e9,
                    throttled_seconds: stat.get("throttled_time").copied().unwrap_or(0) as f64
                        / 1e9,
                    memory_peak: read(&m.join("memory.max_usage_in_bytes"))?
                        .trim()
                        .parse()
                        .unwrap_or(0),
                    anon_bytes: mem.get("rss").copied().unwrap_or(0),
                })
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            // A cgroup is removable once its last process is reaped, which
            // may lag a kill by a moment.
            for attempt in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy && attempt < 49 => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        tracing::warn!(dir = %d.display(), error = %e, "cgroup left behind");
                        break;
                    }
                }
            }
        }
    }
}

/// Polls a cgroup's processes for their peak resident set (`VmHWM`) and
/// the cgroup's anonymous memory, on a thread, until stopped.
#[derive(Debug)]
pub struct PeakWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Peaks>>,
}

/// What a [`PeakWatch`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peaks {
    /// Largest `VmHWM` of any process of the cgroup, bytes.
    pub vm_hwm: u64,
    /// Largest anonymous memory of the cgroup, bytes.
    pub anon: u64,
    /// Bytes the cgroup's processes caused to be written to storage
    /// ([`parse_io_written`]), each process as last read while it ran.
    pub written: u64,
}

impl PeakWatch {
    /// Starts polling `procs_file` (a `cgroup.procs`) and `memory_stat`
    /// every `interval`.
    pub fn start(cgroup: &Cgroup, interval: Duration) -> PeakWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let procs = cgroup.procs_files()[0].clone();
        let mem_stat = cgroup
            .dirs
            .last()
            .expect("a cgroup has a directory")
            .join("memory.stat");
        let anon_key = match cgroup.hierarchy {
            Hierarchy::V2 { .. } => "anon",
            Hierarchy::V1 { .. } => "rss",
        };
        let thread = std::thread::spawn(move || {
            let (mut hwm, mut anon) = (0u64, 0u64);
            // Per process, its last reading: a process that ended keeps
            // what it had written by then.
            let mut written = std::collections::HashMap::<u32, u64>::new();
            loop {
                let done = stopping.load(std::sync::atomic::Ordering::Relaxed);
                for pid in std::fs::read_to_string(&procs)
                    .map(|t| parse_procs(&t))
                    .unwrap_or_default()
                {
                    if let Some(h) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        .ok()
                        .and_then(|s| parse_vm_hwm(&s))
                    {
                        hwm = hwm.max(h);
                    }
                    if let Some(w) = process_written(pid) {
                        written.insert(pid, w);
                    }
                }
                if let Ok(t) = std::fs::read_to_string(&mem_stat) {
                    anon = anon.max(parse_keyed(&t).get(anon_key).copied().unwrap_or(0));
                }
                if done {
                    return Peaks {
                        vm_hwm: hwm,
                        anon,
                        written: written.values().sum(),
                    };
                }
                std::thread::sleep(interval);
            }
        });
        PeakWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops polling and returns what it saw.
    pub fn stop(mut self) -> Peaks {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for PeakWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pi_budget_is_a_quarter_core_and_256_mib() {
        let b = Budget::pi();
        assert_eq!((b.cpu_quota_us, b.cpu_period_us), (25_000, 100_000));
        assert_eq!(b.memory_bytes, 268_435_456);
        assert_eq!(b.cpu_max(), "25000 100000");
        assert_eq!(Budget::new(0.25, 256 << 20).unwrap(), b);
        assert_eq!(Budget::new(1.5, 1 << 30).unwrap().cpu_quota_us, 150_000);
        assert!((b.cores() - 0.25).abs() < 1e-9);
        assert!(Budget::new(0.0, 256 << 20).is_err());
        assert!(Budget::new(f64::NAN, 256 << 20).is_err());
        assert!(Budget::new(0.25, 1 << 20).is_err());
    }

    #[test]
    fn finds_its_own_cgroup_per_controller() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n\
                    3:cpu,cpuacct:/user.slice\n0::/\n";
        assert_eq!(
            own_cgroup_v1(text, "memory").as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(own_cgroup_v1(text, "cpu").as_deref(), Some("/user.slice"));
        assert_eq!(
            own_cgroup_v1(text, "cpuacct").as_deref(),
            Some("/user.slice")
        );
        assert_eq!(own_cgroup_v1(text, "pids"), None);
    }

    #[test]
    fn parses_stat_files_status_and_procs() {
        let cpu_v1 = "nr_periods 40\nnr_throttled 12\nthrottled_time 812345678\n";
        assert_eq!(parse_keyed(cpu_v1)["throttled_time"], 812_345_678);
        let cpu_v2 = "usage_usec 1500000\nuser_usec 1000000\nthrottled_usec 250\n";
        assert_eq!(parse_keyed(cpu_v2)["usage_usec"], 1_500_000);
        assert!(!parse_keyed("weird line\n").contains_key("weird"));
        let status = "Name:\tedgeswarm\nVmPeak:\t  900000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(40 << 20));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert_eq!(parse_procs("12\n345\n\n"), vec![12, 345]);
    }

    #[test]
    fn written_bytes_are_write_bytes_less_the_cancelled() {
        let io = "rchar: 100\nwchar: 9000\nsyscr: 3\nsyscw: 4\nread_bytes: 0\n\
                  write_bytes: 8192\ncancelled_write_bytes: 4096\n";
        assert_eq!(parse_io_written(io), Some(4096));
        assert_eq!(parse_io_written("write_bytes: 12288\n"), Some(12288));
        // `wchar` (bytes passed to write(2), page cache included) is not it.
        assert_eq!(parse_io_written("wchar: 9000\n"), None);
        assert_eq!(
            parse_io_written("write_bytes: 4096\ncancelled_write_bytes: 8192\n"),
            Some(0)
        );
    }

    /// A fake mount tree in a temporary directory.
    fn fake_v1(root: &Path, merged_cpuacct: bool) {
        let own = "process_api/abc";
        for (c, file) in [
            ("cpu", "cpu.cfs_quota_us"),
            ("cpuacct", "cpuacct.usage"),
            ("memory", "memory.limit_in_bytes"),
        ] {
            if merged_cpuacct && c == "cpuacct" {
                continue;
            }
            std::fs::create_dir_all(root.join(c).join(own)).unwrap();
            std::fs::write(root.join(c).join(file), "-1").unwrap();
        }
        if merged_cpuacct {
            std::os::unix::fs::symlink(root.join("cpu"), root.join("cpuacct")).unwrap();
            std::fs::write(root.join("cpu/cpuacct.usage"), "0").unwrap();
        }
    }

    #[test]
    fn detects_v1_and_nests_under_its_own_cgroups() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        // A hybrid host: the unified mount has no controllers.
        std::fs::create_dir_all(t.path().join("unified")).unwrap();
        std::fs::write(t.path().join("unified/cgroup.controllers"), "").unwrap();
        let own = "4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let h = Hierarchy::detect_in(t.path(), own).unwrap();
        assert_eq!(h.version(), "v1");
        assert_eq!(
            h,
            Hierarchy::V1 {
                cpu: t.path().join("cpu"),
                cpuacct: t.path().join("cpuacct"),
                memory: t.path().join("memory/process_api/abc"),
            }
        );
        let cg = Cgroup::create(&h, "budget", Budget::pi()).unwrap();
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(read("cpu/budget/cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu/budget/cpu.cfs_period_us"), "100000");
        assert_eq!(
            read("memory/process_api/abc/budget/memory.limit_in_bytes"),
            "268435456"
        );
        assert_eq!(
            cg.procs_files(),
            vec![
                t.path().join("cpu/budget/cgroup.procs"),
                t.path().join("cpuacct/budget/cgroup.procs"),
                t.path().join("memory/process_api/abc/budget/cgroup.procs"),
            ]
        );
        // What the kernel would show after a run.
        std::fs::write(t.path().join("cpuacct/budget/cpuacct.usage"), "2500000000").unwrap();
        std::fs::write(
            t.path().join("cpu/budget/cpu.stat"),
            "nr_periods 100\nnr_throttled 80\nthrottled_time 7000000000\n",
        )
        .unwrap();
        let m = t.path().join("memory/process_api/abc/budget");
        std::fs::write(m.join("memory.max_usage_in_bytes"), "200000000\n").unwrap();
        std::fs::write(m.join("memory.stat"), "cache 150000000\nrss 30000000\n").unwrap();
        let u = cg.usage().unwrap();
        assert_eq!(
            u,
            Usage {
                cpu_seconds: 2.5,
                throttled_seconds: 7.0,
                memory_peak: 200_000_000,
                anon_bytes: 30_000_000,
            }
        );
        let later = Usage {
            cpu_seconds: 4.0,
            ..u
        };
        assert!((later.since(&u).cpu_seconds - 1.5).abs() < 1e-9);
    }

    #[test]
    fn detects_v1_with_cpu_and_cpuacct_mounted_together() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), true);
        let own = "4:memory:/\n1:cpu,cpuacct:/\n";
        let h = Hierarchy::detect_in(t.path(), own).unwrap();
        let Hierarchy::V1 { cpu, cpuacct, .. } = &h else {
            panic!("not v1: {h:?}")
        };
        assert_eq!(cpuacct.canonicalize().unwrap(), cpu.canonicalize().unwrap());
    }

    #[test]
    fn detects_v2_and_writes_its_limits() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let h = Hierarchy::detect_in(t.path(), "0::/init.scope\n").unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                root: t.path().to_path_buf()
            }
        );
        let cg = Cgroup::create(&h, "budget", Budget::pi()).unwrap();
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory");
        assert_eq!(read("budget/cpu.max"), "25000 100000");
        assert_eq!(read("budget/memory.max"), "268435456");
        assert_eq!(cg.procs_files(), vec![t.path().join("budget/cgroup.procs")]);
        std::fs::write(
            t.path().join("budget/cpu.stat"),
            "usage_usec 3000000\nthrottled_usec 500000\n",
        )
        .unwrap();
        std::fs::write(t.path().join("budget/memory.stat"), "anon 42\nfile 7\n").unwrap();
        std::fs::write(t.path().join("budget/memory.peak"), "99\n").unwrap();
        assert_eq!(
            cg.usage().unwrap(),
            Usage {
                cpu_seconds: 3.0,
                throttled_seconds: 0.5,
                memory_peak: 99,
                anon_bytes: 42,
            }
        );
    }

    #[test]
    fn refuses_a_machine_without_controllers() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), "pids\n").unwrap();
        assert!(Hierarchy::detect_in(t.path(), "0::/\n").is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(Hierarchy::detect_in(empty.path(), "0::/\n").is_err());
    }
}
