//! Issue 14's containerd experiment: `ctr images pull` through each node's
//! registry mirror, against the same pull straight from the registry.
//!
//! # Set-up
//! Every node namespace of locality 0 runs its own containerd 1.6 (own
//! root, state and socket under the run's work dir, the CRI plugin off).
//! `ctr` does the registry transfers itself (containerd 1.6 has no transfer
//! service: the client fetches and writes into the daemon's content store),
//! so each `ctr images pull` runs in its node's namespace too, and reaches
//! the registry over the node's link and the cloud link, or its node's
//! mirror on the namespace's loopback.
//!
//! # What a run measures
//! - **`registry`** ([`run_direct`]): containerds on the given nodes pull
//!   `REF` from the registry with `--plain-http` and no mirror. With one
//!   node this is the baseline the mirror is judged against (a single
//!   node's pull from the registry, over the same shaped links, in the same
//!   invocation); with every node it is the naive rollout.
//! - **`mirror`** ([`run_mirror`]): an edgeswarm locality (node 0 the
//!   gateway, as in [`crate::experiment`]) whose nodes serve the mirror on
//!   [`MIRROR_ADDR`]; every node's containerd pulls `REF` with a
//!   `--hosts-dir` whose `hosts.toml` puts the node's mirror before the
//!   registry (`capabilities = ["pull", "resolve"]`), all pulls started
//!   together once the locality has formed and every mirror answers.
//!
//! Per node: seconds until `ctr` printed `unpacking` (every blob fetched)
//! and until it exited (fetched and unpacked into the overlayfs
//! snapshotter), the bytes over its link (kernel counters of its bridge
//! port) and, for the mirror, its `/metrics` (bytes the mirror served,
//! chunk bytes from and to peers). Per run: the bytes the cloud link
//! carried into the locality (kernel counters of its cloud end), the
//! machine's CPU use, and every link sampled every 100 ms. Each pull is
//! checked with `ctr images check`: the manifest digest pushed, every blob
//! present, the image unpacked.
//!
//! # Non-goals
//! Kubelet/CRI pulls (the CRI plugin reads the same `hosts.toml`; k3s and
//! kubeadm are not run here), Docker (it ignores mirrors for registries
//! other than Docker Hub), pulls by several clients on one node.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::counters::{Sampler, Series};
use crate::error::{Result, TestnetError};
use crate::experiment::{self, CpuTimes, CpuUse, KillOnDrop, RunSpec, Tools};
use crate::measure::{self, LinkBytes};
use crate::process::{NetnsProcess, SpawnSpec};
use crate::topology::Topology;

/// Where every node serves its mirror: its namespace's loopback, as on a
/// real node (`edgeswarm node --mirror 127.0.0.1:5050`).
pub const MIRROR_ADDR: &str = "127.0.0.1:5050";
/// The containerd namespace images are pulled into.
pub const CTR_NAMESPACE: &str = "testnet";

/// How a run's clients reach the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Straight from the registry.
    Registry,
    /// Through each node's edgeswarm mirror.
    Mirror,
}

impl Route {
    /// Lower-case name used in file names and tables.
    pub fn name(self) -> &'static str {
        match self {
            Route::Registry => "registry",
            Route::Mirror => "mirror",
        }
    }
}

/// What to pull, and how the run is set up.
#[derive(Debug, Clone)]
pub struct CtrSpec {
    /// The edgeswarm side (image reference, work dir, timeout, sampling,
    /// node log level, chunk size, upload pace, keep data, registry pid).
    pub run: RunSpec,
    /// The manifest digest pushed (`sha256:...`): what every containerd
    /// must end up with.
    pub manifest: String,
    /// CPU cores each emulated device may use (a cgroup v1 CPU quota
    /// over its containerd, `ctr` and edgeswarm node), so that N devices
    /// do not share the machine's cores unevenly against the baseline's
    /// one; `None`: no quota (all processes share the machine).
    pub cpu_per_node: Option<f64>,
}

/// A CPU quota (cgroup v1 `cpu` controller) for one emulated device's
/// processes, removed on drop (once they are gone).
#[derive(Debug)]
pub struct CpuCap {
    dir: PathBuf,
}

/// Parent of the testnet's CPU cgroups.
const CPU_CGROUP_ROOT: &str = "/sys/fs/cgroup/cpu/edgeswarm-testnet";

impl CpuCap {
    /// A cgroup `name` limited to `cores` (0.3: 30 ms of CPU per 100 ms).
    pub fn new(name: &str, cores: f64) -> Result<CpuCap> {
        let dir = Path::new(CPU_CGROUP_ROOT).join(name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            TestnetError::io(
                format!(
                    "creating the CPU cgroup {} (cgroup v1 `cpu` controller)",
                    dir.display()
                ),
                e,
            )
        })?;
        let period = 100_000u64;
        let quota = ((cores * period as f64) as u64).max(1000);
        for (file, value) in [("cpu.cfs_period_us", period), ("cpu.cfs_quota_us", quota)] {
            std::fs::write(dir.join(file), value.to_string()).map_err(|e| {
                TestnetError::io(format!("writing {}", dir.join(file).display()), e)
            })?;
        }
        Ok(CpuCap { dir })
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| TestnetError::io(format!("writing {}", procs.display()), e))
    }

    /// Seconds its processes were held back by the quota so far
    /// (`throttled_time` of `cpu.stat`).
    pub fn throttled_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("throttled_time "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|ns| ns / 1e9)
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // Fails while a process is still in it (a later run reuses it),
        // and for the parent while another cap lives.
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_dir(CPU_CGROUP_ROOT);
    }
}

/// One cap per node of `nodes` when the spec asks for them.
fn cpu_caps(topo: &Topology, spec: &CtrSpec, nodes: &[usize]) -> Result<Vec<Option<CpuCap>>> {
    nodes
        .iter()
        .map(|&i| {
            spec.cpu_per_node
                .map(|cores| CpuCap::new(&format!("{}-n{i}", topo.state().name), cores))
                .transpose()
        })
        .collect()
}

/// One node's pull.
#[derive(Debug, Clone, Serialize)]
pub struct CtrNode {
    /// Node index in the locality (0 is the edgeswarm gateway).
    pub node: usize,
    /// Seconds from the start until `ctr` printed `unpacking` (every blob
    /// fetched); `None` if that line was not seen.
    pub fetched: Option<f64>,
    /// Seconds from the start until `ctr` exited successfully.
    pub seconds: f64,
    /// `ctr images check`: the pushed digest, complete, unpacked.
    pub verified: bool,
    /// Bytes over the node's link during the run (kernel counters).
    pub link: LinkBytes,
    /// `edgeswarm_mirror_bytes_served_total` (mirror runs).
    pub mirror_bytes_served: Option<f64>,
    /// `edgeswarm_bytes_downloaded_total`: chunk bytes from peers (mirror
    /// runs).
    pub peer_bytes: Option<f64>,
    /// `edgeswarm_bytes_uploaded_total`: chunk bytes served to peers
    /// (mirror runs).
    pub uploaded: Option<f64>,
    /// Seconds the device's processes were held back by its CPU quota
    /// during the pulls (`--cpu-per-node` only).
    pub throttled: Option<f64>,
}

/// One route on a set of nodes.
#[derive(Debug, Clone)]
pub struct CtrRun {
    /// Label in the outputs (`baseline`, `mirror`, `naive`).
    pub label: String,
    /// Route of the pulls.
    pub route: Route,
    /// Repetition number (0-based).
    pub round: usize,
    /// Per pulling node.
    pub per_node: Vec<CtrNode>,
    /// Bytes the cloud link carried into the locality during the pulls.
    pub cloud_bytes: u64,
    /// Bytes the cloud link carried out of the locality.
    pub cloud_bytes_up: u64,
    /// Machine-wide CPU use during the pulls.
    pub cpu: CpuUse,
    /// Every link's counters during the pulls.
    pub series: Series,
}

impl CtrRun {
    /// The last node's pull (fetched and unpacked).
    pub fn last_seconds(&self) -> f64 {
        self.per_node.iter().map(|n| n.seconds).fold(0.0, f64::max)
    }

    /// The last node's fetch (`None` if a node's was not seen).
    pub fn last_fetched(&self) -> Option<f64> {
        self.per_node
            .iter()
            .map(|n| n.fetched)
            .try_fold(0.0f64, |m, s| s.map(|s| m.max(s)))
    }

    /// Mean of the nodes' pulls.
    pub fn mean_seconds(&self) -> f64 {
        self.per_node.iter().map(|n| n.seconds).sum::<f64>() / self.per_node.len().max(1) as f64
    }
}

/// A private containerd in a node's namespace (own root, state and socket;
/// the CRI plugin off), terminated on drop.
#[derive(Debug)]
pub struct Containerd {
    proc: NetnsProcess,
    socket: PathBuf,
    dir: PathBuf,
}

impl Containerd {
    /// Starts one under `dir` (created; it must not hold another's socket)
    /// in namespace `ns` and waits until it answers.
    pub fn start(topo: &Topology, ns: &str, dir: &Path) -> Result<Containerd> {
        crate::cmd::require("containerd", "apt-get install containerd")?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| TestnetError::io(format!("creating {}", dir.display()), e))?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
            ),
        )
        .map_err(|e| TestnetError::io(format!("writing {}", config.display()), e))?;
        let proc = topo.spawn(
            ns,
            SpawnSpec::new("containerd", dir.join("containerd.log"))
                .arg("--config")
                .arg(&config),
        )?;
        let mut c = Containerd {
            proc,
            socket,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.proc.try_wait()? {
                return Err(TestnetError::Experiment(format!(
                    "containerd in {ns} exited ({status}): {}",
                    c.proc.log_tail(1500)
                )));
            }
            if c.ctr(&["version"])?.status.success() {
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(TestnetError::Timeout {
                    what: format!("containerd in {ns} answering"),
                    after: Duration::from_secs(30),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr --address SOCKET -n testnet ARGS...`, run to completion (from
    /// the host's namespace: it talks to the socket only).
    pub fn ctr(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut all = vec![
            "--address".to_string(),
            self.socket.display().to_string(),
            "-n".into(),
            CTR_NAMESPACE.into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        crate::cmd::output("ctr", &all)
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether `reference` is held complete, unpacked and as `manifest`
    /// (`ctr images check`: `REF TYPE DIGEST STATUS SIZE UNPACKED`).
    pub fn holds(&self, reference: &str, manifest: &str) -> Result<bool> {
        let out = self.ctr(&["images", "check"])?;
        Ok(check_says_held(
            &String::from_utf8_lossy(&out.stdout),
            reference,
            manifest,
        ))
    }
}

/// Whether `ctr images check` output lists `reference` as `manifest`,
/// complete and unpacked.
pub fn check_says_held(output: &str, reference: &str, manifest: &str) -> bool {
    output.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.first() == Some(&reference)
            && fields.get(2) == Some(&manifest)
            && fields.get(3) == Some(&"complete")
            && fields.last() == Some(&"true")
    })
}

/// Writes `hosts.toml` for `registry_host` in a fresh hosts dir under
/// `dir`: the node's mirror first, the registry (plain HTTP) as the
/// fallback containerd goes to on a 404 or 5xx.
pub fn write_hosts_dir(dir: &Path, registry_host: &str) -> Result<PathBuf> {
    let host_dir = dir.join(registry_host);
    std::fs::create_dir_all(&host_dir)
        .map_err(|e| TestnetError::io(format!("creating {}", host_dir.display()), e))?;
    let path = host_dir.join("hosts.toml");
    std::fs::write(
        &path,
        format!(
            "server = \"http://{registry_host}\"\n\n[host.\"http://{MIRROR_ADDR}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .map_err(|e| TestnetError::io(format!("writing {}", path.display()), e))?;
    Ok(dir.to_path_buf())
}

/// Starts a containerd in each of `nodes`' namespaces, under `dir/n<i>`.
fn start_containerds(
    topo: &Topology,
    nodes: &[usize],
    dir: &Path,
    caps: &[Option<CpuCap>],
) -> Result<Vec<Containerd>> {
    let loc = topo.locality(0)?;
    nodes
        .iter()
        .zip(caps)
        .map(|(&i, cap)| {
            let node = loc.nodes.get(i).ok_or_else(|| {
                TestnetError::Experiment(format!(
                    "no node {i} in a locality of {}",
                    loc.nodes.len()
                ))
            })?;
            let c = Containerd::start(topo, &node.ns, &dir.join(format!("n{i}")))?;
            if let Some(cap) = cap {
                cap.add(c.proc.pid())?;
            }
            Ok(c)
        })
        .collect()
}

/// One `ctr images pull` per containerd, started together; returns per node
/// (fetched, done) seconds from the start. `hosts_dir`: the mirror's
/// `hosts.toml`, or `None` for the registry.
fn timed_pulls(
    topo: &Topology,
    spec: &CtrSpec,
    nodes: &[usize],
    daemons: &[Containerd],
    hosts_dir: Option<&Path>,
    logs: &Path,
    caps: &[Option<CpuCap>],
) -> Result<Vec<(Option<f64>, f64)>> {
    let loc = topo.locality(0)?;
    std::fs::create_dir_all(logs)
        .map_err(|e| TestnetError::io(format!("creating {}", logs.display()), e))?;
    let (tx, rx) = mpsc::channel::<(usize, Instant)>();
    let mut children = Vec::with_capacity(nodes.len());
    let mut readers = Vec::with_capacity(nodes.len());
    let start = Instant::now();
    for (k, (&i, d)) in nodes.iter().zip(daemons).enumerate() {
        let log_path = logs.join(format!("ctr-n{i}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| TestnetError::io(format!("creating {}", log_path.display()), e))?;
        let err = log
            .try_clone()
            .map_err(|e| TestnetError::io("duplicating a log handle", e))?;
        let mut cmd = topo.command(&loc.nodes[i].ns, "ctr")?;
        cmd.arg("--address").arg(d.socket()).args([
            "-n",
            CTR_NAMESPACE,
            "images",
            "pull",
            "--plain-http",
        ]);
        if let Some(h) = hosts_dir {
            cmd.arg("--hosts-dir").arg(h);
        }
        cmd.arg(&spec.run.image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = cmd
            .spawn()
            .map_err(|e| TestnetError::io("starting ctr images pull", e))?;
        // `ip netns exec` remounts /sys, so the process cannot join its
        // cgroup itself; `ip` execs ctr with the same pid, and the few
        // milliseconds before this write are all that escape the quota.
        if let Some(cap) = &caps[k] {
            cap.add(child.id())?;
        }
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        // ctr prints `unpacking <platform> <digest>...` once every blob is
        // in the content store, then `done: <elapsed>` after the unpack.
        readers.push(std::thread::spawn(move || {
            let mut log = log;
            let mut seen = false;
            for line in std::io::BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { return };
                if !seen && line.windows(10).any(|w| w == b"unpacking ") {
                    seen = true;
                    let _ = tx.send((k, Instant::now()));
                }
                let _ = log.write_all(&line);
                let _ = log.write_all(b"\n");
            }
        }));
        children.push(KillOnDrop(child));
    }
    drop(tx);
    let mut done: Vec<Option<f64>> = vec![None; nodes.len()];
    while done.iter().any(Option::is_none) {
        for (k, c) in children.iter_mut().enumerate() {
            if done[k].is_some() {
                continue;
            }
            let status =
                c.0.try_wait()
                    .map_err(|e| TestnetError::io("waiting for ctr", e))?;
            if let Some(status) = status {
                let t = start.elapsed().as_secs_f64();
                if !status.success() {
                    return Err(TestnetError::Experiment(format!(
                        "ctr images pull on node {} failed ({status}) after {t:.1}s: {}",
                        nodes[k],
                        ctr_log_tail(logs, nodes[k])
                    )));
                }
                done[k] = Some(t);
            }
        }
        if start.elapsed() > spec.run.timeout {
            // ctr prints each blob's progress: the tails say which blob
            // each unfinished pull was waiting for.
            let tails: String = nodes
                .iter()
                .zip(&done)
                .filter(|(_, d)| d.is_none())
                .map(|(i, _)| {
                    format!(
                        "\n--- ctr on node {i} (tail) ---\n{}",
                        ctr_log_tail(logs, *i)
                    )
                })
                .collect();
            return Err(TestnetError::Timeout {
                what: format!(
                    "ctr images pull of {} on nodes {nodes:?}{tails}",
                    spec.run.image
                ),
                after: spec.run.timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for r in readers {
        let _ = r.join();
    }
    let mut fetched: Vec<Option<f64>> = vec![None; nodes.len()];
    for (k, at) in rx.try_iter() {
        fetched[k] = Some(at.duration_since(start).as_secs_f64());
    }
    Ok(fetched
        .into_iter()
        .zip(done)
        .map(|(f, d)| (f, d.unwrap_or_default()))
        .collect())
}

/// The last 1500 bytes of node `node`'s `ctr` log under `logs` (empty
/// when it cannot be read).
fn ctr_log_tail(logs: &Path, node: usize) -> String {
    let log = std::fs::read(logs.join(format!("ctr-n{node}.log"))).unwrap_or_default();
    String::from_utf8_lossy(&log[log.len().saturating_sub(1500)..]).into_owned()
}

/// Times the pulls on `nodes` with link counters, CPU and checks.
#[allow(clippy::too_many_arguments)]
fn measured_pulls(
    topo: &Topology,
    spec: &CtrSpec,
    label: &str,
    route: Route,
    round: usize,
    nodes: &[usize],
    daemons: &[Containerd],
    hosts_dir: Option<&Path>,
    caps: &[Option<CpuCap>],
) -> Result<CtrRun> {
    let loc = topo.locality(0)?.clone();
    let work = &spec.run.work;
    let sampler = Sampler::start(
        topo.probes(),
        spec.run.sample_interval,
        Some(work.join(format!("links-{label}-r{round}.csv"))),
    )?;
    let ports0 = measure::read_bridge_ports(&loc)?;
    let throttled = |caps: &[Option<CpuCap>]| -> Vec<Option<f64>> {
        caps.iter()
            .map(|c| c.as_ref().and_then(CpuCap::throttled_seconds))
            .collect()
    };
    let throttled0 = throttled(caps);
    let cpu0 = CpuTimes::now();
    let times = timed_pulls(
        topo,
        spec,
        nodes,
        daemons,
        hosts_dir,
        &work.join(format!("logs/{label}-r{round}")),
        caps,
    )?;
    let cpu = cpu0.until(CpuTimes::now());
    let throttled1 = throttled(caps);
    let ports1 = measure::read_bridge_ports(&loc)?;
    let series = sampler.stop()?;
    let links = measure::link_bytes(&ports0, &ports1);
    let cloud = series.delta("cloud0").unwrap_or_default();
    let per_node = nodes
        .iter()
        .zip(daemons)
        .zip(times)
        .enumerate()
        .map(|(k, ((&i, d), (fetched, seconds)))| {
            Ok(CtrNode {
                throttled: throttled1[k].zip(throttled0[k]).map(|(b, a)| b - a),
                node: i,
                fetched,
                seconds,
                verified: d.holds(&spec.run.image, &spec.manifest)?,
                link: links[i],
                mirror_bytes_served: None,
                peer_bytes: None,
                uploaded: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CtrRun {
        label: label.to_string(),
        route,
        round,
        per_node,
        cloud_bytes: cloud.tx_bytes,
        cloud_bytes_up: cloud.rx_bytes,
        cpu,
        series,
    })
}

/// Stops containerds and removes their dirs unless data is kept.
fn finish(daemons: Vec<Containerd>, keep: bool) {
    let dirs: Vec<PathBuf> = daemons.iter().map(|d| d.dir.clone()).collect();
    drop(daemons);
    if !keep {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `ctr images pull` straight from the registry on `nodes` at once (one
/// node: the baseline; all: the naive rollout).
pub fn run_direct(
    topo: &Topology,
    spec: &CtrSpec,
    label: &str,
    round: usize,
    nodes: &[usize],
) -> Result<CtrRun> {
    let caps = cpu_caps(topo, spec, nodes)?;
    let daemons = start_containerds(
        topo,
        nodes,
        &spec.run.work.join(format!("containerd/{label}-r{round}")),
        &caps,
    )?;
    let run = measured_pulls(
        topo,
        spec,
        label,
        Route::Registry,
        round,
        nodes,
        &daemons,
        None,
        &caps,
    );
    finish(daemons, spec.run.keep_data);
    drop(caps);
    run
}

/// Every node of locality 0 runs edgeswarm with its mirror on
/// [`MIRROR_ADDR`] (node 0 the gateway), and its containerd pulls through
/// it; all pulls start together once every mirror answers.
pub fn run_mirror(
    topo: &Topology,
    tools: &Tools,
    registry_host: &str,
    spec: &CtrSpec,
    round: usize,
) -> Result<CtrRun> {
    let label = "mirror";
    let loc = topo.locality(0)?.clone();
    let nodes: Vec<usize> = (0..loc.nodes.len()).collect();
    let mut run = spec.run.clone();
    run.work = spec.run.work.join(format!("es-r{round}"));
    let _ = std::fs::remove_dir_all(run.work.join("es-data"));
    // Nodes trust the run's publisher key (nothing is deployed: mirror
    // releases are signed by the nodes themselves).
    experiment::write_run_keys(tools, &run)?;
    let hosts = write_hosts_dir(&spec.run.work.join("hosts-mirror"), registry_host)?;
    let caps = cpu_caps(topo, spec, &nodes)?;
    let daemons = start_containerds(
        topo,
        &nodes,
        &spec.run.work.join(format!("containerd/{label}-r{round}")),
        &caps,
    )?;
    let extra = ["--mirror".to_string(), MIRROR_ADDR.to_string()];
    let mut formed = experiment::form_locality(topo, tools, registry_host, &run, &extra)?;
    for (p, cap) in formed.loc.procs.iter().zip(&caps) {
        if let Some(cap) = cap {
            cap.add(p.pid())?;
        }
    }
    // The watcher follows deployments, of which there are none: stop its
    // polling before the measurement.
    drop(formed.watcher);
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &loc.nodes {
        let url = format!("http://{MIRROR_ADDR}/v2/");
        while !topo
            .exec_output(&n.ns, "curl", &["-sf", "-m", "2", &url])?
            .status
            .success()
        {
            if Instant::now() > deadline {
                return Err(TestnetError::Timeout {
                    what: format!("the mirror of {} answering", n.ns),
                    after: Duration::from_secs(30),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let result = measured_pulls(
        topo,
        spec,
        label,
        Route::Mirror,
        round,
        &nodes,
        &daemons,
        Some(&hosts),
        &caps,
    );
    experiment::check_alive(&mut formed.loc)?;
    let mut result = result.map_err(|e| with_log_tails(e, &formed.loc.procs, &daemons))?;
    // After the measurement window: the scrape's traffic stays out of it.
    let metrics = experiment::scrape_raw(topo, tools)?;
    for n in &mut result.per_node {
        if let Some(Some(m)) = metrics.get(n.node) {
            let get = |name: &str| measure::metric(m, name, &[]);
            n.mirror_bytes_served = get("edgeswarm_mirror_bytes_served_total");
            n.peer_bytes = get("edgeswarm_bytes_downloaded_total");
            n.uploaded = get("edgeswarm_bytes_uploaded_total");
        }
    }
    let data_dirs = std::mem::take(&mut formed.loc.data_dirs);
    drop(formed.loc);
    if !spec.run.keep_data {
        for d in data_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    finish(daemons, spec.run.keep_data);
    drop(caps);
    Ok(result)
}

/// Appends the tails of the nodes' and containerds' logs to a failed
/// mirror run's error: the run's work directory is usually a test's
/// temporary directory, gone by the time anyone reads the failure.
fn with_log_tails(e: TestnetError, nodes: &[NetnsProcess], daemons: &[Containerd]) -> TestnetError {
    let mut text = e.to_string();
    for (i, p) in nodes.iter().enumerate() {
        text.push_str(&format!(
            "\n--- edgeswarm node {i} (tail) ---\n{}",
            p.log_tail(4000)
        ));
    }
    for (i, d) in daemons.iter().enumerate() {
        text.push_str(&format!(
            "\n--- containerd on node {i} (tail) ---\n{}",
            d.proc.log_tail(1500)
        ));
    }
    TestnetError::Experiment(text)
}

/// Writes `mirror-pull.csv`: one row per node and run (round, label,
/// route, nodes, node, fetched_s, seconds, verified, link_in_bytes,
/// link_out_bytes, mirror_bytes_served, peer_bytes, uploaded_bytes,
/// throttled_s, cloud_bytes, cloud_up_bytes, cpu_busy; empty where not
/// measured).
pub fn write_csv(dir: &Path, runs: &[CtrRun]) -> Result<PathBuf> {
    let path = dir.join("mirror-pull.csv");
    let mut s = String::from(
        "round,label,route,nodes,node,fetched_s,seconds,verified,link_in_bytes,link_out_bytes,\
         mirror_bytes_served,peer_bytes,uploaded_bytes,throttled_s,cloud_bytes,cloud_up_bytes,\
         cpu_busy\n",
    );
    let opt = |x: Option<f64>| x.map(|x| format!("{x}")).unwrap_or_default();
    for r in runs {
        for n in &r.per_node {
            s.push_str(&format!(
                "{},{},{},{},{},{},{:.3},{},{},{},{},{},{},{},{},{},{:.3}\n",
                r.round,
                r.label,
                r.route.name(),
                r.per_node.len(),
                n.node,
                n.fetched.map(|x| format!("{x:.3}")).unwrap_or_default(),
                n.seconds,
                n.verified,
                n.link.into_node,
                n.link.from_node,
                opt(n.mirror_bytes_served),
                opt(n.peer_bytes),
                opt(n.uploaded),
                n.throttled.map(|x| format!("{x:.3}")).unwrap_or_default(),
                r.cloud_bytes,
                r.cloud_bytes_up,
                r.cpu.busy,
            ));
        }
    }
    std::fs::write(&path, s)
        .map_err(|e| TestnetError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// What the summary says about the set-up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Image reference.
    pub image: String,
    /// Every byte of a full pull (manifest, config, layers).
    pub image_bytes: u64,
    /// Its layers' compressed sizes.
    pub layers: Vec<u64>,
    /// Cloud link, node links, shaping.
    pub links: String,
    /// The command line that made it.
    pub command: String,
}

/// The mirror's targets of issue 14 for one round: (last node over the
/// baseline, cloud bytes over the image), if both runs are there.
pub fn targets(runs: &[CtrRun], round: usize, image_bytes: u64) -> Option<(f64, f64)> {
    let base = runs
        .iter()
        .find(|r| r.round == round && r.label == "baseline")?;
    let mirror = runs
        .iter()
        .find(|r| r.round == round && r.label == "mirror")?;
    Some((
        mirror.last_seconds() / base.last_seconds(),
        mirror.cloud_bytes as f64 / image_bytes as f64,
    ))
}

/// The Markdown summary: every run, the targets per round, and each
/// mirror run's nodes.
pub fn summary_markdown(setup: &Setup, runs: &[CtrRun]) -> String {
    let mb = |b: f64| format!("{:.1}", b / 1e6);
    let img = setup.image_bytes as f64;
    let mut s = format!(
        "# containerd through the edgeswarm mirror\n\n\
         Image `{}` ({} MB per full pull; layers {} MB); {}.\n\
         Every node runs its own containerd 1.6 and `ctr images pull --plain-http`; \
         `baseline`: one node pulls from the registry alone; `mirror`: every node pulls \
         through its own node's mirror ({MIRROR_ADDR}, `hosts.toml` with the registry as \
         the fallback), all at once, node 0 being the edgeswarm gateway; `naive`: every node \
         pulls from the registry at once. Times are from the start of the pulls to `ctr` \
         printing `unpacking` (fetched) and to its exit (fetched and unpacked). Cloud bytes: \
         kernel counters of the cloud link (into the locality).\n\nCommand: `{}`\n\n",
        setup.image,
        mb(img),
        setup
            .layers
            .iter()
            .map(|b| mb(*b as f64))
            .collect::<Vec<_>>()
            .join(" + "),
        setup.links,
        setup.command,
    );
    s.push_str(
        "| round | run | nodes | last done (s) | last fetched (s) | mean done (s) | cloud (MB) | cloud x image | all verified | machine CPU |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {:.2} | {} | {:.3} | {} | {:.0}% |\n",
            r.round,
            r.label,
            r.per_node.len(),
            r.last_seconds(),
            r.last_fetched().map_or("-".into(), |x| format!("{x:.2}")),
            r.mean_seconds(),
            mb(r.cloud_bytes as f64),
            r.cloud_bytes as f64 / img,
            if r.per_node.iter().all(|n| n.verified) {
                "yes"
            } else {
                "NO"
            },
            r.cpu.busy * 100.0
        ));
    }
    s.push_str(
        "\n## Issue 14 targets\n\n\
         | round | last mirror node / baseline (goal <= 1.3) | same, fetch only | cloud bytes / image (goal <= 1.05) | result |\n\
         |---|---|---|---|---|\n",
    );
    let rounds = runs.iter().map(|r| r.round).max().map_or(0, |m| m + 1);
    for round in 0..rounds {
        let Some((time, cloud)) = targets(runs, round, setup.image_bytes) else {
            continue;
        };
        let fetch = runs
            .iter()
            .find(|r| r.round == round && r.label == "baseline")
            .and_then(CtrRun::last_fetched)
            .zip(
                runs.iter()
                    .find(|r| r.round == round && r.label == "mirror")
                    .and_then(CtrRun::last_fetched),
            )
            .map_or("-".into(), |(b, m)| format!("{:.2}", m / b));
        s.push_str(&format!(
            "| {round} | {time:.2} | {fetch} | {cloud:.3} | {} |\n",
            if time <= 1.3 && cloud <= 1.05 {
                "pass"
            } else {
                "MISSED"
            }
        ));
    }
    for r in runs.iter().filter(|r| r.route == Route::Mirror) {
        s.push_str(&format!(
            "\n## Mirror run, round {}: per node\n\n\
             Link bytes: kernel counters of the node's bridge port; metrics: the node's `/metrics` after the pulls.\n\n\
             | node | fetched (s) | done (s) | link in (MB) | link out (MB) | mirror served (MB) | from peers (MB) | to peers (MB) | CPU-quota throttled (s) | verified |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            r.round
        ));
        for n in &r.per_node {
            let m = |x: Option<f64>| x.map_or("-".into(), mb);
            s.push_str(&format!(
                "| {}{} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |\n",
                n.node,
                if n.node == 0 { " (gateway)" } else { "" },
                n.fetched.map_or("-".into(), |x| format!("{x:.2}")),
                n.seconds,
                mb(n.link.into_node as f64),
                mb(n.link.from_node as f64),
                m(n.mirror_bytes_served),
                m(n.peer_bytes),
                m(n.uploaded),
                n.throttled.map_or("-".into(), |x| format!("{x:.2}")),
                if n.verified { "yes" } else { "NO" },
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_check_output_is_read_by_column() {
        let out = "REF                     TYPE                                                 DIGEST                                                                  STATUS           SIZE            UNPACKED \n\
                   10.77.250.1:5000/a:v1 application/vnd.docker.distribution.manifest.v2+json sha256:abc complete (4/4) 9.1 MiB/9.1 MiB true\n";
        assert!(check_says_held(out, "10.77.250.1:5000/a:v1", "sha256:abc"));
        assert!(!check_says_held(out, "10.77.250.1:5000/a:v1", "sha256:abd"));
        let incomplete = out.replace("complete (4/4)", "incomplete (3/4)");
        assert!(!check_says_held(
            &incomplete,
            "10.77.250.1:5000/a:v1",
            "sha256:abc"
        ));
        let packed = out.replace(" true", " false");
        assert!(!check_says_held(
            &packed,
            "10.77.250.1:5000/a:v1",
            "sha256:abc"
        ));
    }

    fn run(label: &str, round: usize, seconds: &[f64], cloud: u64) -> CtrRun {
        CtrRun {
            label: label.into(),
            route: if label == "mirror" {
                Route::Mirror
            } else {
                Route::Registry
            },
            round,
            per_node: seconds
                .iter()
                .enumerate()
                .map(|(node, &s)| CtrNode {
                    node,
                    fetched: Some(s / 2.0),
                    seconds: s,
                    verified: true,
                    link: LinkBytes::default(),
                    mirror_bytes_served: None,
                    peer_bytes: None,
                    uploaded: None,
                    throttled: None,
                })
                .collect(),
            cloud_bytes: cloud,
            cloud_bytes_up: 0,
            cpu: CpuUse::default(),
            series: Series::default(),
        }
    }

    #[test]
    fn targets_compare_the_last_mirror_node_with_the_same_rounds_baseline() {
        let runs = [
            run("baseline", 0, &[4.0], 100),
            run("mirror", 0, &[4.4, 5.0, 4.8], 104),
            run("baseline", 1, &[5.0], 100),
            run("mirror", 1, &[7.0, 6.0], 120),
        ];
        assert_eq!(targets(&runs, 0, 100), Some((1.25, 1.04)));
        assert_eq!(targets(&runs, 1, 100), Some((1.4, 1.2)));
        assert_eq!(targets(&runs, 2, 100), None);
        let setup = Setup {
            image: "r/i:v1".into(),
            image_bytes: 100,
            layers: vec![90, 10],
            links: "l".into(),
            command: "c".into(),
        };
        let md = summary_markdown(&setup, &runs);
        assert!(md.contains("| 0 | 1.25 | 1.25 | 1.040 | pass |"), "{md}");
        assert!(md.contains("| 1 | 1.40 | 1.40 | 1.200 | MISSED |"), "{md}");
    }
}
