//! The Streamed Deployment paper's evaluation on an emulated locality:
//! provisioning one image to N nodes, naively and with edgeswarm.
//!
//! # Methods
//! - **Naive baseline** ([`run_naive`]): every node runs `skopeo copy
//!   docker://REGISTRY/IMAGE dir:DIR` at the same moment, i.e. pulls every
//!   blob from the registry itself and verifies its digest, as `docker pull`
//!   does on each device. When the edgeswarm nodes extract (`--import
//!   dir`), each naive node then extracts its layers with `tar -xf`, so that
//!   both methods do the same work (and issue 15 compares their CPU); with
//!   `none` neither extracts.
//! - **edgeswarm** ([`run_edgeswarm`]): node 0 runs `edgeswarm node
//!   --gateway`, nodes 1..N run `edgeswarm node` bootstrapped from it (mDNS
//!   on too), all with the run's `--import` sink. The gateway is **one of the N nodes**
//!   (it imports the image like every other node), so both methods provision
//!   exactly N devices. After every node is up and the gateway hears every
//!   other node's status reports, the release is deployed through node 0's
//!   API; a watcher in the router namespace polls every node's API (every
//!   100 ms while the node may finish before a 500 ms poll would see it,
//!   else every 500 ms: [`crate::watch::PollPolicy`]; once the node knows
//!   the release, a long poll it answers at each phase change) and a node's
//!   time is when the watcher first sees it `done`, within the recorded
//!   poll gap.
//!
//! # What is recorded
//! Per node: completion time (seconds since the deploy/pull started), the
//! bytes it reports from cloud and peers, the bytes into and out of it over
//! its link (kernel counters of its bridge port), the CPU seconds of its
//! process (`/proc/PID/stat`), and for edgeswarm its `/metrics` counters at
//! the end (bytes from peers, duplicate chunks, bytes uploaded). Per run:
//! the last node's time, the bytes the cloud link carried into the locality
//! (kernel counters of the cloud end of the link: retransmissions and
//! HTTP/TCP overhead included, whatever nodes claim), when the cloud link
//! had carried 99.5 % of them (the gateway's pull; for the naive baseline
//! the last pull), the registry's CPU seconds, the machine's CPU use, and a
//! time series of every link ([`crate::counters::Sampler`], 100 ms).

use std::fmt::Write as _;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::counters::{Sampler, Series};
use crate::error::{Result, TestnetError};
use crate::measure::{self, LinkBytes, NodeMetrics, TcpSegments};
use crate::process::{NetnsProcess, SpawnSpec};
use crate::rate::Rate;
use crate::topology::Topology;
use crate::watch::WatchLine;

/// TCP port every node listens on for libp2p.
pub const P2P_PORT: u16 = 4001;
/// TCP port of every node's API (on the node's testnet address).
pub const API_PORT: u16 = 7465;

/// Programs the experiment runs inside namespaces.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `edgeswarm` node binary.
    pub edgeswarm: PathBuf,
    /// The `edgeswarm-testnet` binary (for its `helper` subcommands).
    pub testnet: PathBuf,
}

/// How to run one method at one N.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Image reference to provision (`10.77.250.1:5000/testnet/img50:v1`).
    pub image: String,
    /// Where logs, node data dirs and CSVs of this run go.
    pub work: PathBuf,
    /// Give up after this long.
    pub timeout: Duration,
    /// Sampling interval of the link counters.
    pub sample_interval: Duration,
    /// `RUST_LOG` of the edgeswarm nodes.
    pub rust_log: String,
    /// `--chunk-size` of the nodes (`None`: the node's default, 512K).
    pub chunk_size: Option<String>,
    /// Paces every node's uploads at this percent of its link rate
    /// (`--max-upload-rate`), so its uplink's queue stays short; 0 leaves
    /// uploads unpaced.
    pub pace_percent: u32,
    /// Keep node data dirs after the run (they hold N copies of the image).
    pub keep_data: bool,
    /// The nodes' `--import` sink (`dir`; `none` measures distribution
    /// without extraction).
    pub import: String,
    /// The registry's pid, to report its CPU seconds (`None`: not
    /// reported).
    pub registry_pid: Option<u32>,
    /// Layer bytes of the image (0: unknown). The watcher polls a node
    /// slowly while the node still needs more of them than its link can
    /// bring before the next slow poll.
    pub image_bytes: u64,
    /// The watcher's poll interval while a node cannot finish before the
    /// next poll (100 ms gives the old fixed polling, for comparison).
    pub watch_slow: Duration,
    /// Runs one node inside a device budget: `(node index, the budget
    /// cgroup's cgroup.procs files)` ([`crate::cgroup::Cgroup`]); `None`:
    /// no node is budgeted.
    pub budgeted: Option<(usize, Vec<PathBuf>)>,
    /// Give the locality a swarm key (`--swarm-key`: pnet, every byte
    /// encrypted a second time), as a node's defaults require; `false`
    /// runs it open (`--open-locality`), comparable with earlier runs.
    pub pnet: bool,
}

/// Which provisioning method a result is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every node pulls from the registry (skopeo).
    Naive,
    /// edgeswarm.
    Edgeswarm,
}

impl Method {
    /// Lower-case name used in file names and tables.
    pub fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive",
            Method::Edgeswarm => "edgeswarm",
        }
    }
}

/// One node's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    /// Node index in the locality (0 = the gateway for edgeswarm).
    pub node: usize,
    /// Seconds from the start of the run to the node being done.
    pub seconds: Option<f64>,
    /// Bytes the node reports from the registry (edgeswarm only).
    pub bytes_from_cloud: u64,
    /// Bytes the node reports from peers (edgeswarm only).
    pub bytes_from_peers: u64,
    /// The node's own accept-to-done time (edgeswarm only).
    pub node_seconds: Option<f64>,
    /// Whether the image's files were found where the node put them.
    pub verified: bool,
    /// Bytes over the node's link during the run (kernel counters).
    pub link: LinkBytes,
    /// CPU seconds (user + system) of the node's process during the run.
    pub cpu_seconds: Option<f64>,
    /// The node's `/metrics` counters at the end (edgeswarm only).
    pub metrics: Option<NodeMetrics>,
    /// How long before the watcher saw the node done it had last seen it
    /// not done, in seconds: the uncertainty of `seconds` (edgeswarm only).
    pub done_gap: Option<f64>,
    /// TCP segments the node's namespace sent, and sent again, during the
    /// run (`None` if unreadable).
    pub tcp: Option<TcpSegments>,
}

/// One method at one N.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The method.
    pub method: Method,
    /// Number of nodes provisioned.
    pub nodes: usize,
    /// Per node.
    pub per_node: Vec<NodeResult>,
    /// Bytes the cloud link carried into the locality during the run.
    pub cloud_bytes: u64,
    /// Bytes the cloud link carried out of the locality (requests, acks).
    pub cloud_bytes_up: u64,
    /// Every link's counters over the run.
    pub series: Series,
    /// Machine-wide CPU use during the run (all processes, not only the
    /// testnet's: other work on the machine shows here too).
    pub cpu: CpuUse,
    /// Seconds until the cloud link had carried 99.5 % of its bytes: the
    /// gateway's pull for edgeswarm, the last node's pull for naive.
    pub pull_seconds: Option<f64>,
    /// CPU seconds of the registry during the run.
    pub registry_cpu_seconds: Option<f64>,
    /// CPU seconds of the watcher from the deploy to the last node done
    /// (edgeswarm only): what timing the nodes costs.
    pub watcher_cpu_seconds: Option<f64>,
}

/// Machine-wide CPU time split over an interval, from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    /// Fraction of all cores' time spent running (user, system, irq).
    pub busy: f64,
    /// Fraction spent idle waiting for disk I/O.
    pub iowait: f64,
}

/// Cumulative CPU jiffies: (busy, iowait, total).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes(u64, u64, u64);

impl CpuTimes {
    /// Reads the `cpu` line of `/proc/stat` (zeros if unreadable).
    pub fn now() -> CpuTimes {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 5 {
            return CpuTimes::default();
        }
        let total: u64 = f.iter().take(8).sum();
        let (idle, iowait) = (f[3], f[4]);
        CpuTimes(total - idle - iowait, iowait, total)
    }

    /// Use between `self` (earlier) and `later`.
    pub fn until(self, later: CpuTimes) -> CpuUse {
        let total = later.2.saturating_sub(self.2).max(1) as f64;
        CpuUse {
            busy: later.0.saturating_sub(self.0) as f64 / total,
            iowait: later.1.saturating_sub(self.1) as f64 / total,
        }
    }
}

impl RunResult {
    /// The last node's completion time (`None` unless every node finished).
    pub fn last_seconds(&self) -> Option<f64> {
        self.per_node
            .iter()
            .map(|n| n.seconds)
            .try_fold(0.0f64, |m, s| s.map(|s| m.max(s)))
    }

    /// Mean completion time of the nodes that finished.
    pub fn mean_seconds(&self) -> f64 {
        let done: Vec<f64> = self.per_node.iter().filter_map(|n| n.seconds).collect();
        done.iter().sum::<f64>() / done.len().max(1) as f64
    }

    /// Writes `nodes-<method>-<N>.csv` (node, seconds, bytes_from_cloud,
    /// bytes_from_peers, node_seconds, verified, link_in_bytes,
    /// link_out_bytes, cpu_seconds, done_gap_s, then the `/metrics`
    /// counters: release_peer_bytes, bytes_downloaded, duplicate_chunks,
    /// bytes_uploaded, stream_bytes_received, stream_bytes_sent,
    /// gossip_bytes_received, gossip_bytes_published, rejected_requests,
    /// chunks_relayed, relays_aborted, relay_bytes_aborted, stalls,
    /// cancelled_answers_cut, cancelled_bytes_read,
    /// relays_completed_from_store, then the namespace's TCP segments:
    /// tcp_segments_sent, tcp_segments_retransmitted; empty where not
    /// measured).
    pub fn write_nodes_csv(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("nodes-{}-{}.csv", self.method.name(), self.nodes));
        let mut s = String::from(
            "node,seconds,bytes_from_cloud,bytes_from_peers,node_seconds,verified,\
             link_in_bytes,link_out_bytes,cpu_seconds,done_gap_s,\
             release_peer_bytes,bytes_downloaded,duplicate_chunks,bytes_uploaded,\
             stream_bytes_received,stream_bytes_sent,gossip_bytes_received,\
             gossip_bytes_published,rejected_requests,chunks_relayed,relays_aborted,\
             relay_bytes_aborted,stalls,cancelled_answers_cut,cancelled_bytes_read,\
             relays_completed_from_store,tcp_segments_sent,tcp_segments_retransmitted\n",
        );
        let f3 = |x: Option<f64>| x.map(|x| format!("{x:.3}")).unwrap_or_default();
        for n in &self.per_node {
            let m = |f: fn(&NodeMetrics) -> f64| {
                n.metrics
                    .as_ref()
                    .map(|m| format!("{}", f(m)))
                    .unwrap_or_default()
            };
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                n.node,
                f3(n.seconds),
                n.bytes_from_cloud,
                n.bytes_from_peers,
                f3(n.node_seconds),
                n.verified,
                n.link.into_node,
                n.link.from_node,
                f3(n.cpu_seconds),
                f3(n.done_gap),
                m(|m| m.release_peer_bytes),
                m(|m| m.bytes_downloaded),
                m(|m| m.duplicate_chunks),
                m(|m| m.bytes_uploaded),
                m(|m| m.stream_bytes_received),
                m(|m| m.stream_bytes_sent),
                m(|m| m.gossip_bytes_received),
                m(|m| m.gossip_bytes_published),
                m(|m| m.rejected_requests),
                m(|m| m.chunks_relayed),
                m(|m| m.relays_aborted),
                m(|m| m.relay_bytes_aborted),
                m(|m| m.stalls),
                m(|m| m.cancelled_answers_cut),
                m(|m| m.cancelled_bytes_read),
                m(|m| m.relays_completed_from_store),
                n.tcp.map(|t| t.sent.to_string()).unwrap_or_default(),
                n.tcp
                    .map(|t| t.retransmitted.to_string())
                    .unwrap_or_default(),
            ));
        }
        std::fs::write(&path, s)
            .map_err(|e| TestnetError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }
}

/// Where node `i`'s API listens.
pub fn api_addr(addr: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((addr, API_PORT))
}

/// Kills a child (the watcher) on drop.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sampler(topo: &Topology, spec: &RunSpec, csv: PathBuf) -> Result<Sampler> {
    Sampler::start(topo.probes(), spec.sample_interval, Some(csv))
}

/// The naive baseline: every node of locality 0 runs `skopeo copy` from the
/// registry at once. With `--import dir` each node then extracts the layers
/// it copied, in manifest order, with `tar -xf` into a rootfs of its own
/// (GNU tar runs `gzip -d` for gzip layers): what a device without a
/// container engine would do, and the CPU baseline of issue 15's `dir`
/// target ("`skopeo copy` + `tar xzf` of the same layers"). A node is done,
/// and its CPU seconds counted, when both steps have ended.
pub fn run_naive(topo: &Topology, spec: &RunSpec) -> Result<RunResult> {
    crate::cmd::require("skopeo", "apt-get install skopeo")?;
    let extract = spec.import == "dir";
    if extract {
        crate::cmd::require("tar", "apt-get install tar")?;
    }
    std::fs::create_dir_all(&spec.work)
        .map_err(|e| TestnetError::io(format!("creating {}", spec.work.display()), e))?;
    let loc = topo.locality(0)?.clone();
    let nodes = loc.nodes.clone();
    let n = nodes.len();
    let sampler = start_sampler(topo, spec, spec.work.join(format!("links-naive-{n}.csv")))?;
    let ports0 = measure::read_bridge_ports(&loc)?;
    let registry_cpu0 = spec.registry_pid.and_then(measure::proc_cpu_seconds);
    let tcp0 = measure::read_tcp_segments_all(topo, &loc);
    let cpu0 = CpuTimes::now();
    let start = Instant::now();
    let dest_of = |index: usize| spec.work.join(format!("naive-data/n{index}"));
    let mut procs = Vec::with_capacity(n);
    for node in &nodes {
        let dest = dest_of(node.index);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir_all(&dest)
            .map_err(|e| TestnetError::io(format!("creating {}", dest.display()), e))?;
        let log = spec.work.join(format!("logs/naive-n{}.log", node.index));
        procs.push(topo.spawn(
            &node.ns,
            SpawnSpec::new("skopeo", log).args([
                "copy".to_string(),
                "--quiet".to_string(),
                "--src-tls-verify=false".to_string(),
                format!("docker://{}", spec.image),
                format!("dir:{}", dest.display()),
            ]),
        )?);
    }
    let mut extracting = vec![false; n];
    let mut done: Vec<Option<f64>> = vec![None; n];
    // CPU seconds of the steps that ended (`None` once one step's could
    // not be read), and of the running step.
    let mut cpu_ended: Vec<Option<f64>> = vec![Some(0.0); n];
    let mut cpu_running: Vec<Option<f64>> = vec![None; n];
    while done.iter().any(Option::is_none) {
        for (i, p) in procs.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            // Read before reaping: an exited process keeps its final CPU
            // times until it is waited for (at worst this misses the last
            // 10 ms before exit). The extraction's shell holds its tar and
            // gzip children's times once it has waited for them.
            let c = if extracting[i] {
                measure::proc_cpu_seconds_with_children(p.pid())
            } else {
                measure::proc_cpu_seconds(p.pid())
            };
            if c.is_some() {
                cpu_running[i] = c;
            }
            let Some(status) = p.try_wait()? else {
                continue;
            };
            let step = if extracting[i] { "tar -xf" } else { "skopeo" };
            if !status.success() {
                return Err(TestnetError::Experiment(format!(
                    "naive node {i}: {step} failed ({status}): {}",
                    p.log_tail(800)
                )));
            }
            cpu_ended[i] = cpu_ended[i].zip(cpu_running[i].take()).map(|(a, b)| a + b);
            if extract && !extracting[i] {
                let node = &nodes[i];
                let dest = dest_of(node.index);
                let log = spec
                    .work
                    .join(format!("logs/naive-n{}-tar.log", node.index));
                *p = topo.spawn(
                    &node.ns,
                    SpawnSpec::new("sh", log).args(["-c".to_string(), extract_script(&dest)?]),
                )?;
                extracting[i] = true;
            } else {
                done[i] = Some(start.elapsed().as_secs_f64());
            }
        }
        if start.elapsed() > spec.timeout {
            return Err(TestnetError::Timeout {
                what: format!("naive pulls of {} by {n} nodes", spec.image),
                after: spec.timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu_seconds = cpu_ended;
    let cpu = cpu0.until(CpuTimes::now());
    let ports1 = measure::read_bridge_ports(&loc)?;
    let tcp = measure::tcp_segments_since(&tcp0, &measure::read_tcp_segments_all(topo, &loc));
    let registry_cpu_seconds = registry_cpu(spec, registry_cpu0);
    let series = sampler.stop()?;
    let cloud = series.delta("cloud0").unwrap_or_default();
    let links = measure::link_bytes(&ports0, &ports1);
    let per_node = nodes
        .iter()
        .zip(&done)
        .enumerate()
        .map(|(i, (node, s))| {
            let dest = dest_of(node.index);
            let verified = dest.join("manifest.json").is_file()
                && (!extract
                    || std::fs::read_dir(dest.join("rootfs"))
                        .is_ok_and(|mut d| d.next().is_some()));
            if !spec.keep_data {
                let _ = std::fs::remove_dir_all(&dest);
            }
            NodeResult {
                node: node.index,
                seconds: *s,
                bytes_from_cloud: 0,
                bytes_from_peers: 0,
                node_seconds: None,
                verified,
                link: links[i],
                cpu_seconds: cpu_seconds[i],
                metrics: None,
                done_gap: None,
                tcp: tcp[i],
            }
        })
        .collect();
    Ok(RunResult {
        method: Method::Naive,
        nodes: n,
        per_node,
        cloud_bytes: cloud.tx_bytes,
        cloud_bytes_up: cloud.rx_bytes,
        pull_seconds: measure::tx_done_seconds(&series, "cloud0", measure::PULL_DONE_FRACTION),
        series,
        cpu,
        registry_cpu_seconds,
        watcher_cpu_seconds: None,
    })
}

/// The shell script extracting, in manifest order, the layers `skopeo copy`
/// put in `dest` (a `dir:` copy: `manifest.json` plus one file per blob,
/// named by its hex digest) into `dest/rootfs`.
fn extract_script(dest: &Path) -> Result<String> {
    let manifest = dest.join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| TestnetError::io(format!("reading {}", manifest.display()), e))?;
    let layers = layer_files(&text).map_err(|reason| TestnetError::Parse {
        command: format!("skopeo copy's {}", manifest.display()),
        reason,
    })?;
    if dest.to_string_lossy().contains('\'') {
        return Err(TestnetError::Experiment(format!(
            "cannot quote {} for the extraction script",
            dest.display()
        )));
    }
    let rootfs = dest.join("rootfs");
    let mut script = format!("set -e\nmkdir -p '{}'\n", rootfs.display());
    for hex in layers {
        let _ = writeln!(
            script,
            "tar -xf '{}' -C '{}'",
            dest.join(hex).display(),
            rootfs.display()
        );
    }
    Ok(script)
}

/// The blob file names (hex digests) of a manifest's layers, base first.
fn layer_files(manifest: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(manifest).map_err(|e| e.to_string())?;
    let layers = v["layers"].as_array().ok_or("no `layers` array")?;
    layers
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().ok_or("a layer without a digest")?;
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("not a sha256 digest: {digest}"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("not a sha256 digest: {digest}"));
            }
            Ok(hex.to_string())
        })
        .collect()
}

/// The registry's CPU seconds since `before` (`None` without its pid).
fn registry_cpu(spec: &RunSpec, before: Option<f64>) -> Option<f64> {
    let now = spec.registry_pid.and_then(measure::proc_cpu_seconds)?;
    Some(now - before?)
}

/// Every node's `/metrics`, scraped from the router namespace (the host
/// has no route to the nodes), picked for `image`.
fn scrape_metrics(topo: &Topology, tools: &Tools, image: &str) -> Result<Vec<Option<NodeMetrics>>> {
    Ok(scrape_raw(topo, tools)?
        .iter()
        .map(|m| m.as_ref().map(|m| NodeMetrics::from_scrape(m, image)))
        .collect())
}

/// Every node's parsed `/metrics` (`series -> value`), scraped from the
/// router namespace; `None` for a node that did not answer.
pub(crate) fn scrape_raw(
    topo: &Topology,
    tools: &Tools,
) -> Result<Vec<Option<std::collections::BTreeMap<String, f64>>>> {
    let loc = topo.locality(0)?;
    let mut cmd = topo.command(&loc.router_ns, &tools.testnet)?;
    cmd.args(["helper", "scrape"]);
    for n in &loc.nodes {
        cmd.arg("--api").arg(api_addr(n.addr).to_string());
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestnetError::io("running helper scrape", e))?;
    if !out.status.success() {
        return Err(TestnetError::Experiment(format!(
            "helper scrape failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut metrics = vec![None; loc.nodes.len()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        #[derive(serde::Deserialize)]
        struct Scraped {
            node: usize,
            #[serde(default)]
            metrics: Option<std::collections::BTreeMap<String, f64>>,
            #[serde(default)]
            error: Option<String>,
        }
        let s: Scraped = serde_json::from_str(line).map_err(|e| TestnetError::Parse {
            command: "helper scrape".into(),
            reason: format!("{e}: {line:?}"),
        })?;
        match (s.metrics, s.error) {
            (Some(m), _) if s.node < metrics.len() => metrics[s.node] = Some(m),
            (_, e) => tracing::warn!(node = s.node, error = ?e, "no metrics from a node"),
        }
    }
    Ok(metrics)
}

/// Progress of an edgeswarm run, for live displays.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Nodes are starting.
    Starting {
        /// How many.
        nodes: usize,
    },
    /// Every node is up and the gateway hears them all.
    Ready {
        /// Seconds the locality took to form.
        seconds: f64,
    },
    /// The release was deployed.
    Deployed,
    /// A node's state changed.
    Node {
        /// Seconds since the deploy.
        t: f64,
        /// The node's state.
        line: WatchLine,
    },
}

/// The API token file a node writes in its data dir
/// (`edgeswarm_node::api::TOKEN_FILE`; the testnet does not build the API).
pub const NODE_TOKEN_FILE: &str = "api.token";

/// A running edgeswarm locality: one process per node, killed on drop.
pub(crate) struct Locality {
    pub(crate) procs: Vec<NetnsProcess>,
    pub(crate) data_dirs: Vec<PathBuf>,
}

/// Percent of a node's link rate its uploads are paced at by default.
/// Measured (issue 11 shaping, 10 nodes, one 46 MB layer, back to back):
/// unpaced uploads fill the uplink's 100 ms FIFO, and every request and
/// `Have` crossing it waits there: T(10) 6.4-6.7 s unpaced, 6.0 s at 92 %
/// with 1 MiB chunks, 5.6 s with 256 KiB chunks (7.7 s unpaced). Above
/// ~95 % of the link, TCP/IP overhead makes the pace exceed the link's
/// payload rate and the queue builds again.
pub const DEFAULT_PACE_PERCENT: u32 = 92;

/// The `--max-upload-rate` (bytes per second) that paces a node at
/// `percent` of its link rate, `None` for 0 (unpaced).
pub fn upload_pace(link: Rate, percent: u32) -> Option<u64> {
    (percent > 0).then(|| link.bits_per_sec() / 8 * u64::from(percent) / 100)
}

/// The run's publisher secret key (`<work>/es-data/publisher.key`; its
/// public half beside it, `.key.pub`).
fn publisher_key_path(spec: &RunSpec) -> PathBuf {
    spec.work.join("es-data/publisher.key")
}

fn swarm_key_path(spec: &RunSpec) -> PathBuf {
    spec.work.join("es-data/swarm.key")
}

/// Writes a fresh publisher key pair for one run with `edgeswarm keygen`,
/// and its swarm key with `edgeswarm swarm-key` if the run has one.
pub(crate) fn write_run_keys(tools: &Tools, spec: &RunSpec) -> Result<PathBuf> {
    let key = publisher_key_path(spec);
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| TestnetError::io(format!("creating {}", dir.display()), e))?;
    }
    let program = tools.edgeswarm.display().to_string();
    let mut commands = vec![[
        "keygen".to_string(),
        "--out".into(),
        key.display().to_string(),
    ]];
    if spec.pnet {
        let swarm_key = swarm_key_path(spec);
        let _ = std::fs::remove_file(&swarm_key);
        commands.push([
            "swarm-key".to_string(),
            "--out".into(),
            swarm_key.display().to_string(),
        ]);
    }
    for args in commands {
        let out = crate::cmd::output(&program, &args)?;
        crate::cmd::check(&program, &args, &out)?;
    }
    Ok(key)
}

#[allow(clippy::too_many_arguments)]
fn node_spec(
    tools: &Tools,
    spec: &RunSpec,
    node_rate: Rate,
    addr: Ipv4Addr,
    index: usize,
    gateway: bool,
    registry_host: &str,
    bootstrap: Option<&str>,
) -> (SpawnSpec, PathBuf) {
    let data = spec.work.join(format!("es-data/n{index}"));
    let log = spec.work.join(format!("logs/edgeswarm-n{index}.log"));
    let mut s = SpawnSpec::new(tools.edgeswarm.clone(), log)
        .env("RUST_LOG", &spec.rust_log)
        .env("NO_COLOR", "1")
        .args([
            "node".to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--locality".into(),
            "testnet".into(),
            "--listen".into(),
            format!("/ip4/{addr}/tcp/{P2P_PORT}"),
            "--api".into(),
            api_addr(addr).to_string(),
            "--import".into(),
            spec.import.clone(),
            // Every node trusts the run's publisher key and nothing else.
            "--trust".into(),
            publisher_key_path(spec)
                .with_extension("key.pub")
                .display()
                .to_string(),
        ]);
    // The namespaces reach nothing but each other; a swarm key adds pnet's
    // second encryption to every byte measured, so it is the run's choice
    // (open by default: comparable with earlier runs).
    s = if spec.pnet {
        s.args([
            "--swarm-key".to_string(),
            swarm_key_path(spec).display().to_string(),
        ])
    } else {
        s.args(["--open-locality"])
    };
    if gateway {
        s = s.args(["--gateway", "--insecure-registry", registry_host]);
    }
    if let Some(b) = bootstrap {
        s = s.args(["--bootstrap", b]);
    }
    if let Some(c) = &spec.chunk_size {
        s = s.args(["--chunk-size", c.as_str()]);
    }
    if let Some(rate) = upload_pace(node_rate, spec.pace_percent) {
        s = s.args(["--max-upload-rate".to_string(), rate.to_string()]);
    }
    if let Some((i, procs)) = &spec.budgeted {
        if *i == index {
            s = s.cgroup(procs.clone());
        }
    }
    (s, data)
}

/// Starts the watcher in locality 0's router namespace, returning its
/// lines on a channel.
fn start_watcher(
    topo: &Topology,
    tools: &Tools,
    spec: &RunSpec,
) -> Result<(KillOnDrop, mpsc::Receiver<WatchLine>)> {
    let loc = topo.locality(0)?;
    let mut cmd = topo.command(&loc.router_ns, &tools.testnet)?;
    cmd.args(["helper", "watch", "--image", &spec.image])
        .args(["--interval-ms", "100", "--slow-interval-ms"])
        .arg(spec.watch_slow.as_millis().to_string())
        .args(["--link-rate", &topo.state().node_rate.to_string()])
        .args(["--expect-bytes", &spec.image_bytes.to_string()]);
    for n in &loc.nodes {
        cmd.arg("--api").arg(api_addr(n.addr).to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| TestnetError::io("starting the watcher", e))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::sync_channel(1024);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            match serde_json::from_str::<WatchLine>(&line) {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(%line, error = %e, "bad watcher line"),
            }
        }
    });
    Ok((KillOnDrop(child), rx))
}

/// A locality of running edgeswarm nodes whose APIs answer and whose
/// gateway hears every other node, with the watcher that saw it form.
pub(crate) struct Formed {
    pub(crate) loc: Locality,
    pub(crate) watcher: KillOnDrop,
    pub(crate) rx: mpsc::Receiver<WatchLine>,
    pub(crate) latest: Vec<WatchLine>,
}

/// Starts a gateway-capable node 0 and N-1 nodes bootstrapped from it in
/// locality 0 (each with `extra` arguments on its command line), and waits
/// until every API answers and the gateway hears every other node.
pub(crate) fn form_locality(
    topo: &Topology,
    tools: &Tools,
    registry_host: &str,
    spec: &RunSpec,
    extra: &[String],
) -> Result<Formed> {
    let nodes: Vec<_> = topo.locality(0)?.nodes.clone();
    let n = nodes.len();
    let node_rate = topo.state().node_rate;
    let mut loc = Locality {
        procs: Vec::new(),
        data_dirs: Vec::new(),
    };
    // Node 0, the gateway, first: the others bootstrap from it.
    let (s, d) = node_spec(
        tools,
        spec,
        node_rate,
        nodes[0].addr,
        0,
        true,
        registry_host,
        None,
    );
    loc.procs.push(topo.spawn(&nodes[0].ns, s.args(extra))?);
    loc.data_dirs.push(d);
    let (watcher, rx) = start_watcher(topo, tools, spec)?;
    let mut latest: Vec<WatchLine> = (0..n)
        .map(|i| WatchLine {
            node: i,
            ..WatchLine::default()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let gateway_id = loop {
        check_alive(&mut loc)?;
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let i = l.node;
                latest[i] = l;
                if i == 0 && latest[0].up && !latest[0].peer_id.is_empty() {
                    break latest[0].peer_id.clone();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => return Err(TestnetError::Experiment(format!("watcher: {e}"))),
        }
        if Instant::now() > deadline {
            return Err(TestnetError::Timeout {
                what: format!("gateway API; log: {}", loc.procs[0].log_tail(1500)),
                after: Duration::from_secs(30),
            });
        }
    };
    let bootstrap = format!("/ip4/{}/tcp/{P2P_PORT}/p2p/{gateway_id}", nodes[0].addr);
    for node in &nodes[1..] {
        let (s, d) = node_spec(
            tools,
            spec,
            node_rate,
            node.addr,
            node.index,
            false,
            registry_host,
            Some(&bootstrap),
        );
        loc.procs.push(topo.spawn(&node.ns, s.args(extra))?);
        loc.data_dirs.push(d);
    }
    // Ready: every API answers, and the gateway hears every other node.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready =
            latest.iter().all(|l| l.up && (n == 1 || l.peers >= 1)) && latest[0].seen + 1 >= n;
        if ready {
            break;
        }
        check_alive(&mut loc)?;
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let i = l.node;
                latest[i] = l;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => return Err(TestnetError::Experiment(format!("watcher: {e}"))),
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = latest
                .iter()
                .map(|l| format!("n{}: up={} peers={} seen={}", l.node, l.up, l.peers, l.seen))
                .collect();
            return Err(TestnetError::Timeout {
                what: format!("the locality forming ({})", summary.join(", ")),
                after: Duration::from_secs(60),
            });
        }
    }
    Ok(Formed {
        loc,
        watcher,
        rx,
        latest,
    })
}

/// edgeswarm: a gateway-capable node 0 plus N-1 nodes in locality 0;
/// deploys `spec.image` through node 0 and times every node.
pub fn run_edgeswarm(
    topo: &Topology,
    tools: &Tools,
    registry_host: &str,
    spec: &RunSpec,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunResult> {
    let nodes: Vec<_> = topo.locality(0)?.nodes.clone();
    let n = nodes.len();
    let _ = std::fs::remove_dir_all(spec.work.join("es-data"));
    let publisher_key = write_run_keys(tools, spec)?;
    progress(&Progress::Starting { nodes: n });
    let formed = Instant::now();
    let Formed {
        mut loc,
        watcher,
        rx,
        mut latest,
    } = form_locality(topo, tools, registry_host, spec, &[])?;
    progress(&Progress::Ready {
        seconds: formed.elapsed().as_secs_f64(),
    });
    let sampler = start_sampler(
        topo,
        spec,
        spec.work.join(format!("links-edgeswarm-{n}.csv")),
    )?;
    let loc0 = topo.locality(0)?.clone();
    let ports0 = measure::read_bridge_ports(&loc0)?;
    let node_cpu0: Vec<Option<f64>> = loc
        .procs
        .iter()
        .map(|p| measure::proc_cpu_seconds(p.pid()))
        .collect();
    let registry_cpu0 = spec.registry_pid.and_then(measure::proc_cpu_seconds);
    let watcher_cpu0 = measure::proc_cpu_seconds(watcher.0.id());
    let tcp0 = measure::read_tcp_segments_all(topo, &loc0);
    let cpu0 = CpuTimes::now();
    // The node writes its API token at start; deploy, like any change,
    // must present it.
    let token_file = loc.data_dirs[0].join(NODE_TOKEN_FILE);
    let start = Instant::now();
    let out = topo.exec_output(
        &nodes[0].ns,
        &tools.edgeswarm.display().to_string(),
        &[
            "deploy",
            &spec.image,
            "--api",
            &api_addr(nodes[0].addr).to_string(),
            "--token-file",
            &token_file.display().to_string(),
            "--key",
            &publisher_key.display().to_string(),
            "--json",
        ],
    )?;
    if !out.status.success() {
        return Err(TestnetError::Experiment(format!(
            "edgeswarm deploy {} failed: {}",
            spec.image,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    progress(&Progress::Deployed);
    let mut done: Vec<Option<f64>> = vec![None; n];
    let mut done_gap: Vec<Option<f64>> = vec![None; n];
    while done.iter().any(Option::is_none) {
        check_alive(&mut loc)?;
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let t = start.elapsed().as_secs_f64();
                let i = l.node;
                if let Some(e) = &l.error {
                    return Err(TestnetError::Experiment(format!(
                        "node {i} failed the release: {e}; log tail: {}",
                        loc.procs[i].log_tail(1500)
                    )));
                }
                if l.state == "done" && done[i].is_none() {
                    done[i] = Some(t);
                    done_gap[i] = Some(l.poll_gap_ms as f64 / 1000.0);
                }
                progress(&Progress::Node { t, line: l.clone() });
                latest[i] = l;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => return Err(TestnetError::Experiment(format!("watcher: {e}"))),
        }
        if start.elapsed() > spec.timeout {
            let pending: Vec<String> = latest
                .iter()
                .filter(|l| done[l.node].is_none())
                .map(|l| format!("n{} {} {}/{}", l.node, l.state, l.bytes_done, l.bytes_total))
                .collect();
            return Err(TestnetError::Timeout {
                what: format!("edgeswarm provisioning ({})", pending.join(", ")),
                after: spec.timeout,
            });
        }
    }
    let cpu = cpu0.until(CpuTimes::now());
    let ports1 = measure::read_bridge_ports(&loc0)?;
    let tcp = measure::tcp_segments_since(&tcp0, &measure::read_tcp_segments_all(topo, &loc0));
    let node_cpu: Vec<Option<f64>> = loc
        .procs
        .iter()
        .zip(&node_cpu0)
        .map(|(p, c0)| Some(measure::proc_cpu_seconds(p.pid())? - (*c0)?))
        .collect();
    let registry_cpu_seconds = registry_cpu(spec, registry_cpu0);
    // The watcher exits once every node is done; read before reaping it.
    let watcher_cpu_seconds =
        measure::proc_cpu_seconds(watcher.0.id()).and_then(|c| Some(c - watcher_cpu0?));
    let series = sampler.stop()?;
    drop(watcher);
    // After the measurement window: the scrape's own traffic and CPU stay
    // out of the figures.
    let metrics = scrape_metrics(topo, tools, &spec.image)?;
    let links = measure::link_bytes(&ports0, &ports1);
    let cloud = series.delta("cloud0").unwrap_or_default();
    let dir_name = edgeswarm_node::import::image_dir_name(&spec.image);
    let per_node: Vec<NodeResult> = (0..n)
        .map(|i| {
            let rootfs = loc.data_dirs[i].join("rootfs").join(&dir_name);
            NodeResult {
                node: i,
                seconds: done[i],
                bytes_from_cloud: latest[i].bytes_from_cloud,
                bytes_from_peers: latest[i].bytes_from_peers,
                node_seconds: latest[i].seconds,
                verified: if spec.import == "dir" {
                    rootfs.join("app/run.sh").is_file() && rootfs.join("bin/busybox").is_file()
                } else {
                    // Other sinks are checked by the node itself (digests,
                    // diff_ids); only `dir` leaves files to look at here.
                    latest[i].state == "done"
                },
                link: links[i],
                cpu_seconds: node_cpu[i],
                metrics: metrics[i],
                done_gap: done_gap[i],
                tcp: tcp[i],
            }
        })
        .collect();
    // Stop the nodes before removing their data.
    let data_dirs = std::mem::take(&mut loc.data_dirs);
    drop(loc);
    if !spec.keep_data {
        for d in data_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    Ok(RunResult {
        method: Method::Edgeswarm,
        nodes: n,
        per_node,
        cloud_bytes: cloud.tx_bytes,
        cloud_bytes_up: cloud.rx_bytes,
        pull_seconds: measure::tx_done_seconds(&series, "cloud0", measure::PULL_DONE_FRACTION),
        series,
        cpu,
        registry_cpu_seconds,
        watcher_cpu_seconds,
    })
}

/// Fails when a node process has exited.
pub(crate) fn check_alive(loc: &mut Locality) -> Result<()> {
    for (i, p) in loc.procs.iter_mut().enumerate() {
        if let Some(status) = p.try_wait()? {
            return Err(TestnetError::Experiment(format!(
                "edgeswarm node {i} exited ({status}); log tail: {}",
                p.log_tail(1500)
            )));
        }
    }
    Ok(())
}

/// Throughput of `label` over time from a series, in Mbit/s per interval:
/// `(t_s, rx_mbit_s, tx_mbit_s)`.
pub fn throughput(series: &Series, label: &str) -> Vec<(f64, f64, f64)> {
    let s: Vec<_> = series.of(label).collect();
    s.windows(2)
        .filter(|w| w[1].t_s > w[0].t_s)
        .map(|w| {
            let d = w[1].counters.since(&w[0].counters);
            let dt = w[1].t_s - w[0].t_s;
            (
                w[1].t_s,
                d.rx_bytes as f64 * 8.0 / dt / 1e6,
                d.tx_bytes as f64 * 8.0 / dt / 1e6,
            )
        })
        .collect()
}

/// Builds and pushes test images of `sizes_mb` into the testnet's registry
/// at `registry_host` by running `edgeswarm-testnet helper push-images`
/// inside the cloud namespace (so no push crosses a shaped link). Build
/// files go to a temporary directory under `work`.
pub fn push_images(
    topo: &Topology,
    tools: &Tools,
    registry_host: &str,
    sizes_mb: &[u64],
    versions: bool,
    layout: crate::images::Layout,
    work: &Path,
) -> Result<Vec<crate::images::TestImage>> {
    let sizes = sizes_mb
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = topo.command(&topo.cloud().ns, &tools.testnet)?;
    cmd.args([
        "helper",
        "push-images",
        "--registry",
        registry_host,
        "--sizes",
        &sizes,
        "--layout",
        layout.name(),
    ])
    .arg("--work")
    .arg(work);
    if versions {
        cmd.arg("--versions");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestnetError::io("running helper push-images", e))?;
    if !out.status.success() {
        return Err(TestnetError::Image {
            what: format!("helper push-images --sizes {sizes}"),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| TestnetError::Parse {
                command: "helper push-images".into(),
                reason: format!("{e}: {l:?}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_pace_is_a_percent_of_the_link_in_bytes() {
        // 100 Mbit/s is 12.5 MB/s; 92 % of it is 11.5 MB/s.
        assert_eq!(upload_pace(Rate::mbit(100), 92), Some(11_500_000));
        assert_eq!(upload_pace(Rate::mbit(20), 50), Some(1_250_000));
        assert_eq!(upload_pace(Rate::mbit(100), 0), None);
    }

    const BASE: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const APP: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn naive_extraction_untars_the_copied_layers_in_manifest_order() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{APP}ff"}},
               "layers":[{{"digest":"sha256:{BASE}","size":1}},{{"digest":"sha256:{APP}","size":2}}]}}"#
        );
        assert_eq!(layer_files(&manifest).unwrap(), vec![BASE, APP]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), &manifest).unwrap();
        let script = extract_script(dir.path()).unwrap();
        let d = dir.path().display();
        assert_eq!(
            script,
            format!(
                "set -e\nmkdir -p '{d}/rootfs'\ntar -xf '{d}/{BASE}' -C '{d}/rootfs'\n\
                 tar -xf '{d}/{APP}' -C '{d}/rootfs'\n"
            )
        );
    }

    #[test]
    fn naive_extraction_refuses_manifests_it_cannot_name_files_from() {
        assert!(layer_files("{}").is_err());
        assert!(layer_files("not json").is_err());
        assert!(layer_files(r#"{"layers":[{"size":1}]}"#).is_err());
        // A digest is used as a file name: nothing but 64 hex digits passes.
        let sneaky = r#"{"layers":[{"digest":"sha256:../../etc/passwd"}]}"#;
        assert!(layer_files(sneaky).unwrap_err().contains("not a sha256"));
        assert!(layer_files(r#"{"layers":[{"digest":"sha512:ab"}]}"#).is_err());
        assert_eq!(
            layer_files(r#"{"layers":[]}"#).unwrap(),
            Vec::<String>::new()
        );
    }
}
