//! Emulated localities in Linux network namespaces, shaped with `tc tbf`.
//!
//! # Layout
//!
//! For a testnet named `NAME` with `K` localities of `N` nodes each (`L` is
//! the 0-based locality index, `i` the 0-based node index in it):
//!
//! ```text
//!  es-NAME-cloud            br0 10.77.250.1/24  (the registry listens here)
//!     | l<L>  tbf cloud_rate (cloud -> locality)
//!     |                                   \__ the "cloud link" of locality L
//!     | cloud tbf cloud_rate (locality -> cloud)  10.77.250.(10+L)/24
//!  es-NAME-r<L>             router: forwards between its two links
//!     | lan  10.77.(L+1).1/24  (unshaped: the router is not a bottleneck)
//!     | rtr
//!  es-NAME-lan<L>           br0 (bridge, multicast snooping off so mDNS floods)
//!     | n<i>  tbf node_rate (bridge -> node: the node's download)
//!     | eth0  tbf node_rate (node -> bridge: the node's upload)
//!  es-NAME-n<L>-<i>         10.77.(L+1).(10+i)/24, default route via .1
//! ```
//!
//! Every veth is created directly inside its namespaces (`ip -n A link add
//! name X type veth peer name Y netns B`), so nothing is ever created in the
//! host namespace and interface names cannot collide with the host's or with
//! another testnet's. Nodes of one locality reach each other over the bridge
//! (each transfer crosses two node links); nodes reach the cloud address
//! through their router and the one shaped cloud link; localities reach each
//! other through the cloud (two cloud links).
//!
//! Every namespace is recorded in a JSON state file
//! (`/run/edgeswarm-testnet/NAME.json` by default) as soon as it is created,
//! so [`down`] removes exactly what [`Topology::up`] created, even after a
//! crash half-way through `up`: it kills the processes living in those namespaces
//! and deletes the namespaces, which deletes their veths and bridges. Nothing
//! outside the `es-NAME-` prefix is ever touched.
//!
//! # Goals
//! - Reproduce the paper's setting (fast node links, one slow cloud link per
//!   locality) with real TCP/IP, real processes and real byte counters.
//! - Be fast to build and remove (a 21-node locality in about a second), safe
//!   to run next to other testnets and other users of the machine.
//!
//! # Non-goals
//! - Latency and loss emulation: this kernel has no `netem`; links have the
//!   latency of a veth (microseconds) plus tbf queueing.
//! - Traffic to anything outside the namespaces created here: the 10.77.0.0/16
//!   addresses exist only inside them, and no route leads to the host.
//! - IPv6 addressing (links carry only IPv4 addresses; link-local IPv6 stays).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::counters::{self, IfCounters, Probe};
use crate::error::{Result, TestnetError};
use crate::process::{NetnsProcess, SpawnSpec};
use crate::rate::{ByteSize, Rate};

/// Where state files live unless a spec says otherwise (tmpfs, so a reboot,
/// which also removes all namespaces, removes the state files too).
pub const DEFAULT_STATE_DIR: &str = "/run/edgeswarm-testnet";

/// The cloud namespace's address: where the registry listens.
pub const CLOUD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 250, 1);

/// Default shaper queue, in milliseconds at the link's rate.
pub const DEFAULT_QUEUE_MS: u32 = 50;

/// Smallest shaper bucket accepted: one full-size Ethernet frame.
pub const MIN_BURST_BYTES: u64 = 1600;

/// Largest shaper bucket accepted (at 100mbit, 1.3 s of line rate: far
/// beyond any real device's buffer).
pub const MAX_BURST_BYTES: u64 = 16 * 1024 * 1024;

/// Most localities one testnet may have (10.77.1.0/24 .. 10.77.200.0/24).
pub const MAX_LOCALITIES: usize = 200;

/// Most nodes per locality (10.77.L.10 .. 10.77.L.249).
pub const MAX_NODES_PER_LOCALITY: usize = 240;

/// What to build.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    /// Testnet name: 1-12 chars of `[a-z0-9]`; all namespaces are
    /// `es-<name>-...`, so two testnets with different names never clash.
    pub name: String,
    /// Number of localities (each with its own router, bridge and cloud link).
    pub localities: usize,
    /// Nodes in each locality.
    pub nodes_per_locality: usize,
    /// Rate of each locality's cloud link, shaped in both directions.
    pub cloud_rate: Rate,
    /// Rate of each node's link to its bridge, shaped in both directions.
    pub node_rate: Rate,
    /// Queue of every shaper, in milliseconds at its rate (tbf `latency`).
    /// Drops at a node link downstream of the cloud link make TCP resend
    /// across the cloud link, inflating cloud bytes; a deeper queue absorbs
    /// slow-start bursts (default 50 ms: 625 KB at 100mbit).
    pub queue_ms: u32,
    /// Bucket of every shaper (tbf `burst`): how many bytes may leave at
    /// line speed after a pause. `None`: [`Rate::tbf_burst_bytes`], 10 ms
    /// at the link's rate (125 KB at 100mbit, 250 KB at 200mbit). A cheap
    /// switch or home router lets bigger bursts through (issue 11's
    /// standard shaping is 256 KB); bursts are what queue a flow's ACKs
    /// behind another flow's data.
    pub burst: Option<ByteSize>,
    /// TCP congestion control of every namespace. `None`: each namespace
    /// keeps what Linux gives a new one, the host's default at the time
    /// (`net.ipv4.tcp_congestion_control` of the initial namespace).
    pub congestion_control: Option<CongestionControl>,
    /// Directory for the state file.
    pub state_dir: PathBuf,
}

/// A TCP congestion control algorithm a testnet's namespaces can be given.
///
/// Where several paced uploads converge on one node's downlink, the
/// shapers' FIFOs drop packets, and how a sender reacts to loss (cubic
/// halves its window, BBRv1 keeps to its estimate of the bottleneck)
/// could change how many segments are sent twice. Measured at 20/10
/// Mbit/s with 10 nodes it did not: cubic and bbr resent as many segments
/// and gave the same bytes (testnet/results/issue11-endgame-begun-2026-12-06).
/// Debian and Raspberry Pi OS default to cubic; many hosts that run the
/// testnet, to bbr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// CUBIC, Linux's default.
    Cubic,
    /// NewReno.
    Reno,
    /// BBR (version 1 in this kernel); its module must be available.
    Bbr,
}

impl CongestionControl {
    /// The name the kernel knows it by.
    pub fn name(self) -> &'static str {
        match self {
            CongestionControl::Cubic => "cubic",
            CongestionControl::Reno => "reno",
            CongestionControl::Bbr => "bbr",
        }
    }
}

/// The host's default TCP congestion control, which new namespaces copy
/// (`None` if unreadable).
pub fn host_congestion_control() -> Option<String> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .ok()
        .map(|s| s.trim().to_string())
}

impl TopologySpec {
    /// One locality of `nodes` nodes, 200mbit cloud link, 100mbit node links
    /// (the scaled setting of FIELD-NOTES section 5).
    pub fn new(name: impl Into<String>, nodes: usize) -> Self {
        Self {
            name: name.into(),
            localities: 1,
            nodes_per_locality: nodes,
            cloud_rate: Rate::mbit(200),
            node_rate: Rate::mbit(100),
            queue_ms: DEFAULT_QUEUE_MS,
            burst: None,
            congestion_control: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// An interface inside a namespace: what counters are read from and what
/// `tc` shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Iface {
    /// Namespace holding the interface.
    pub ns: String,
    /// Interface name inside that namespace.
    pub name: String,
}

impl Iface {
    fn new(ns: &str, name: &str) -> Self {
        Self {
            ns: ns.to_string(),
            name: name.to_string(),
        }
    }
}

/// The cloud namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudInfo {
    /// Namespace name (`es-<name>-cloud`).
    pub ns: String,
    /// Address of the cloud bridge, where a registry should listen.
    pub addr: Ipv4Addr,
}

/// One node of a locality.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Locality index (0-based).
    pub locality: usize,
    /// Node index inside its locality (0-based).
    pub index: usize,
    /// Namespace name (`es-<name>-n<L>-<i>`).
    pub ns: String,
    /// The node's address.
    pub addr: Ipv4Addr,
    /// The node's end of its link (`eth0`): rx = bytes the node received,
    /// tx = bytes it sent.
    pub link: Iface,
    /// The bridge's end of the node link (shaped for the node's download).
    pub bridge_port: Iface,
}

/// One locality: router, bridge, nodes, cloud link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalityInfo {
    /// Locality index (0-based).
    pub index: usize,
    /// The locality's subnet in CIDR notation.
    pub subnet: String,
    /// Router namespace (`es-<name>-r<L>`).
    pub router_ns: String,
    /// Bridge namespace (`es-<name>-lan<L>`).
    pub lan_ns: String,
    /// The router's address on the LAN: every node's default gateway.
    pub router_addr: Ipv4Addr,
    /// The router's address on the cloud side.
    pub router_cloud_addr: Ipv4Addr,
    /// The cloud's end of this locality's cloud link: tx = bytes sent from
    /// the cloud into the locality, rx = bytes the locality sent up.
    pub cloud_link: Iface,
    /// The router's end of the cloud link.
    pub cloud_link_router_end: Iface,
    /// The nodes.
    pub nodes: Vec<NodeInfo>,
}

/// Everything `up` built, as stored in the state file and printed by the
/// CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopologyState {
    /// State format version (1).
    pub version: u32,
    /// Testnet name.
    pub name: String,
    /// Prefix of every namespace name (`es-<name>-`).
    pub prefix: String,
    /// Cloud link rate.
    pub cloud_rate: Rate,
    /// Node link rate.
    pub node_rate: Rate,
    /// Shaper queue length in milliseconds.
    pub queue_ms: u32,
    /// Shaper bucket in bytes (`None`: 10 ms at each link's rate).
    #[serde(default)]
    pub burst: Option<ByteSize>,
    /// TCP congestion control set in every namespace (`None`: the host's
    /// default, inherited).
    #[serde(default)]
    pub congestion_control: Option<CongestionControl>,
    /// The cloud namespace.
    pub cloud: CloudInfo,
    /// The localities.
    pub localities: Vec<LocalityInfo>,
    /// Namespaces in creation order, each recorded right after its creation.
    pub namespaces: Vec<String>,
    /// Directories created for this testnet (e.g. a detached registry's
    /// storage), removed by `down` after the namespaces and their processes.
    #[serde(default)]
    pub owned_dirs: Vec<PathBuf>,
}

/// A live testnet. Dropping it tears it down unless [`Topology::detach`] was
/// called (the CLI detaches; tests rely on the drop).
#[derive(Debug)]
pub struct Topology {
    state: TopologyState,
    state_path: PathBuf,
    /// When true, drop leaves the namespaces in place.
    detached: bool,
}

/// A shaped veth pair between the host namespace and a testnet's cloud
/// namespace ([`Topology::host_link`]); removed on drop.
#[derive(Debug)]
pub struct HostLink {
    /// Name of the host end.
    host_if: String,
    /// The cloud end: its tx counter is what the host downloaded.
    pub cloud_end: Iface,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // Deleting one end deletes the pair and the route through it.
        if let Err(e) = cmd::run("ip", &["link", "del", &self.host_if]) {
            tracing::debug!(error = %e, "host link already gone");
        }
    }
}

/// Validates a testnet name.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(TestnetError::InvalidName(name.to_string()))
    }
}

/// The state file of testnet `name` in `state_dir`.
pub fn state_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.json"))
}

/// Prefix of every namespace of testnet `name`.
pub fn prefix(name: &str) -> String {
    format!("es-{name}-")
}

/// Names of all network namespaces on the host (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = cmd::run("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Plans names and addresses; creates nothing.
fn plan(spec: &TopologySpec) -> Result<TopologyState> {
    validate_name(&spec.name)?;
    if spec.localities == 0 || spec.localities > MAX_LOCALITIES {
        return Err(TestnetError::InvalidSpec(format!(
            "localities must be 1..={MAX_LOCALITIES}, got {}",
            spec.localities
        )));
    }
    if !(1..=1000).contains(&spec.queue_ms) {
        return Err(TestnetError::InvalidSpec(format!(
            "queue_ms must be 1..=1000, got {}",
            spec.queue_ms
        )));
    }
    if let Some(b) = spec.burst {
        // A bucket smaller than one full-size frame would hold every
        // packet forever.
        if !(MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&b.get()) {
            return Err(TestnetError::InvalidSpec(format!(
                "burst must be {MIN_BURST_BYTES}..={MAX_BURST_BYTES} bytes, got {b}"
            )));
        }
    }
    if spec.nodes_per_locality == 0 || spec.nodes_per_locality > MAX_NODES_PER_LOCALITY {
        return Err(TestnetError::InvalidSpec(format!(
            "nodes per locality must be 1..={MAX_NODES_PER_LOCALITY}, got {}",
            spec.nodes_per_locality
        )));
    }
    let p = prefix(&spec.name);
    let cloud_ns = format!("{p}cloud");
    let localities = (0..spec.localities)
        .map(|l| {
            let octet = (l + 1) as u8;
            let router_ns = format!("{p}r{l}");
            let lan_ns = format!("{p}lan{l}");
            let nodes = (0..spec.nodes_per_locality)
                .map(|i| {
                    let ns = format!("{p}n{l}-{i}");
                    NodeInfo {
                        locality: l,
                        index: i,
                        addr: Ipv4Addr::new(10, 77, octet, (10 + i) as u8),
                        link: Iface::new(&ns, "eth0"),
                        bridge_port: Iface::new(&lan_ns, &format!("n{i}")),
                        ns,
                    }
                })
                .collect();
            LocalityInfo {
                index: l,
                subnet: format!("10.77.{octet}.0/24"),
                router_addr: Ipv4Addr::new(10, 77, octet, 1),
                router_cloud_addr: Ipv4Addr::new(10, 77, 250, (10 + l) as u8),
                cloud_link: Iface::new(&cloud_ns, &format!("l{l}")),
                cloud_link_router_end: Iface::new(&router_ns, "cloud"),
                router_ns,
                lan_ns,
                nodes,
            }
        })
        .collect();
    Ok(TopologyState {
        version: 1,
        name: spec.name.clone(),
        prefix: p,
        cloud_rate: spec.cloud_rate,
        node_rate: spec.node_rate,
        queue_ms: spec.queue_ms,
        burst: spec.burst,
        congestion_control: spec.congestion_control,
        cloud: CloudInfo {
            ns: cloud_ns,
            addr: CLOUD_ADDR,
        },
        localities,
        namespaces: Vec::new(),
        owned_dirs: Vec::new(),
    })
}

/// `ip -n NS args...`
fn ip_n(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    cmd::run("ip", &a)
}

/// Puts a tbf qdisc as root of `iface`'s egress.
fn shape(iface: &Iface, rate: Rate, queue_ms: u32, burst: Option<ByteSize>) -> Result<()> {
    shape_in(Some(&iface.ns), &iface.name, rate, queue_ms, burst)
}

/// Puts a tbf qdisc as root of the egress of `dev` in namespace `ns`, or in
/// the host's own namespace when `ns` is `None`; `burst` `None` is 10 ms at
/// `rate` ([`Rate::tbf_burst_bytes`]).
fn shape_in(
    ns: Option<&str>,
    dev: &str,
    rate: Rate,
    queue_ms: u32,
    burst: Option<ByteSize>,
) -> Result<()> {
    let rate_s = rate.to_string();
    // In plain bytes: tc's own units would be read back the same, but a
    // number leaves no doubt.
    let burst = burst
        .map_or_else(|| rate.tbf_burst_bytes(), ByteSize::get)
        .to_string();
    // latency bounds the queue: `queue_ms` of queueing at this rate on top
    // of the bucket.
    let latency = format!("{queue_ms}ms");
    let mut args: Vec<&str> = match ns {
        Some(ns) => vec!["-n", ns],
        None => Vec::new(),
    };
    args.extend([
        "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate_s, "burst", &burst, "latency",
        &latency,
    ]);
    cmd::run("tc", &args).map(drop)
}

/// The sysctls that send bridged frames through the host's netfilter
/// (present only while the `br_netfilter` module is loaded; per namespace).
pub const BRIDGE_NETFILTER_SYSCTLS: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

/// Keeps the frames crossing the bridges of namespace `ns` out of
/// netfilter. Docker loads `br_netfilter`, and every new namespace then
/// starts with these sysctls at 1, so each frame between two emulated
/// devices went through the bridge's netfilter hooks (`br_nf_pre_routing`,
/// `br_nf_forward_ip`, `br_nf_post_routing`, an skb extension each) in the
/// softirq of whichever process sent it, with no rule to match: about
/// 0.02 CPU-s of each node at N = 21 with `dir` (self time in a 2026-12-07
/// profile), a cost no switch puts on real devices. The testnet adds no
/// netfilter rules of its own.
fn bridge_without_netfilter(ns: &str) -> Result<()> {
    let script = BRIDGE_NETFILTER_SYSCTLS
        .iter()
        .map(|f| format!("if [ -e {f} ]; then echo 0 > {f}; fi"))
        .collect::<Vec<_>>()
        .join("; ");
    ns_sh(ns, &script)
}

/// Runs a shell snippet inside a namespace (for sysctls under /proc/sys/net,
/// which are per namespace).
fn ns_sh(ns: &str, script: &str) -> Result<()> {
    cmd::run("ip", &["netns", "exec", ns, "sh", "-c", script]).map(drop)
}

impl Topology {
    /// Builds the testnet described by `spec`.
    ///
    /// Refuses (without creating anything) when not root, when `ip` or `tc`
    /// is missing, when the name is invalid or already in use. Refuses when
    /// the kernel lacks veth, bridge or tbf, after removing the namespace it
    /// probed in. On any failure everything created so far is removed.
    #[tracing::instrument(skip_all, fields(name = %spec.name, localities = spec.localities, nodes = spec.nodes_per_locality))]
    pub fn up(spec: &TopologySpec) -> Result<Topology> {
        cmd::preflight()?;
        let state = plan(spec)?;
        let state_path = state_path(&spec.state_dir, &spec.name);
        if state_path.exists() {
            return Err(TestnetError::AlreadyExists {
                name: spec.name.clone(),
                what: format!("state file {}", state_path.display()),
            });
        }
        if let Some(ns) = list_namespaces()?
            .into_iter()
            .find(|n| n.starts_with(&state.prefix))
        {
            return Err(TestnetError::AlreadyExists {
                name: spec.name.clone(),
                what: format!("namespace {ns}"),
            });
        }
        std::fs::create_dir_all(&spec.state_dir).map_err(|e| {
            TestnetError::io(
                format!("creating state dir {}", spec.state_dir.display()),
                e,
            )
        })?;
        let mut topo = Topology {
            state,
            state_path,
            detached: false,
        };
        topo.save()?;
        let started = Instant::now();
        if let Err(e) = topo.build() {
            tracing::warn!(error = %e, "up failed; removing what was created");
            if let Err(e2) = topo.teardown() {
                tracing::error!(error = %e2, "cleanup after failed up also failed");
            }
            topo.detached = true;
            return Err(e);
        }
        tracing::info!(elapsed = ?started.elapsed(), "testnet up");
        Ok(topo)
    }

    /// Loads a running testnet from its state file. The returned value is
    /// detached: dropping it leaves the testnet running.
    pub fn load(state_dir: &Path, name: &str) -> Result<Topology> {
        validate_name(name)?;
        let path = state_path(state_dir, name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TestnetError::NotFound {
                    name: name.to_string(),
                    path: path.clone(),
                }
            } else {
                TestnetError::io(format!("reading state file {}", path.display()), e)
            }
        })?;
        let state: TopologyState =
            serde_json::from_str(&text).map_err(|e| TestnetError::BadState {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let expected = prefix(name);
        if state.name != name || state.prefix != expected {
            return Err(TestnetError::BadState {
                path,
                reason: format!("names testnet {:?}, expected {name:?}", state.name),
            });
        }
        if let Some(bad) = state.namespaces.iter().find(|n| !n.starts_with(&expected)) {
            return Err(TestnetError::BadState {
                path,
                reason: format!("namespace {bad:?} lacks prefix {expected:?}"),
            });
        }
        Ok(Topology {
            state,
            state_path: path,
            detached: true,
        })
    }

    /// Keeps the testnet running after this value is dropped.
    pub fn detach(&mut self) {
        self.detached = true;
    }

    /// Records `dir` as belonging to this testnet: `down` removes it. The
    /// state file is updated before returning; create the directory after.
    pub fn own_dir(&mut self, dir: impl Into<PathBuf>) -> Result<()> {
        let dir = dir.into();
        if !dir.is_absolute() {
            return Err(TestnetError::InvalidSpec(format!(
                "owned dir {} must be absolute",
                dir.display()
            )));
        }
        if !self.state.owned_dirs.contains(&dir) {
            self.state.owned_dirs.push(dir);
            self.save()?;
        }
        Ok(())
    }

    /// Removes everything `up` created: kills processes in its namespaces,
    /// deletes the namespaces (and with them every veth and bridge), and the
    /// state file.
    pub fn down(mut self) -> Result<()> {
        self.detached = true;
        self.teardown()
    }

    /// The description: namespaces, addresses, rates.
    pub fn state(&self) -> &TopologyState {
        &self.state
    }

    /// Path of the state file.
    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// The cloud namespace.
    pub fn cloud(&self) -> &CloudInfo {
        &self.state.cloud
    }

    /// Locality `l`.
    pub fn locality(&self, l: usize) -> Result<&LocalityInfo> {
        let count = self.state.localities.len();
        self.state
            .localities
            .get(l)
            .ok_or(TestnetError::NoSuchIndex {
                what: "locality",
                index: l,
                count,
            })
    }

    /// Node `i` of locality `l`.
    pub fn node(&self, l: usize, i: usize) -> Result<&NodeInfo> {
        let loc = self.locality(l)?;
        loc.nodes.get(i).ok_or(TestnetError::NoSuchIndex {
            what: "node",
            index: i,
            count: loc.nodes.len(),
        })
    }

    /// All nodes of all localities, locality by locality.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.state.localities.iter().flat_map(|l| l.nodes.iter())
    }

    /// One probe per cloud link (label `cloud<L>`: tx = bytes into
    /// locality L, rx = bytes out of it) and per node link (label `n<L>-<i>`:
    /// rx = the node's download, tx = its upload), for a [`Sampler`].
    ///
    /// [`Sampler`]: crate::counters::Sampler
    pub fn probes(&self) -> Vec<Probe> {
        let mut v: Vec<Probe> = self
            .state
            .localities
            .iter()
            .map(|l| Probe::new(format!("cloud{}", l.index), l.cloud_link.clone()))
            .collect();
        v.extend(
            self.nodes()
                .map(|n| Probe::new(format!("n{}-{}", n.locality, n.index), n.link.clone())),
        );
        v
    }

    /// Spawns a long-running process in namespace `ns` (one of this
    /// testnet's), with its output in the spec's log file. The process is
    /// killed when the returned handle drops, and by [`Topology::down`].
    pub fn spawn(&self, ns: &str, spec: SpawnSpec) -> Result<NetnsProcess> {
        self.check_ns(ns)?;
        NetnsProcess::spawn(ns, spec)
    }

    /// A `std::process::Command` that runs `program` in namespace `ns`
    /// (`ip netns exec NS program`), for callers that want their own stdio
    /// handling or an async runtime (`tokio::process::Command::from(cmd)`).
    /// Unlike [`Topology::spawn`], nothing kills it on drop; `down` still
    /// kills it.
    pub fn command(
        &self,
        ns: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<std::process::Command> {
        self.check_ns(ns)?;
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        Ok(c)
    }

    /// Runs a short command in namespace `ns` to completion and returns its
    /// output (success or not: callers judge the status).
    pub fn exec_output(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        self.check_ns(ns)?;
        let mut a = vec!["netns", "exec", ns, program];
        a.extend_from_slice(args);
        cmd::output("ip", &a)
    }

    /// Like [`Topology::exec_output`], but a non-zero exit is an error; returns stdout.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<String> {
        self.check_ns(ns)?;
        let mut a = vec!["netns", "exec", ns, program];
        a.extend_from_slice(args);
        cmd::run("ip", &a)
    }

    /// Links the host's own network namespace to the cloud namespace with a
    /// veth pair shaped to `rate` in both directions, and routes the cloud
    /// address ([`CLOUD_ADDR`], where the registry listens) over it.
    ///
    /// This is for programs that cannot be moved into a namespace, such as
    /// the host's dockerd: `docker pull` from the testnet registry then
    /// crosses a link of the same kind as a node's. The link is removed when
    /// the returned value drops, and with the cloud namespace in any case
    /// (a veth pair dies with either end's namespace), so `down` never
    /// leaves it behind.
    ///
    /// Every testnet's registry has the same address, so one host link can
    /// exist on a machine at a time: a second one is refused while the
    /// first one's route is up.
    pub fn host_link(&self, rate: Rate, queue_ms: u32) -> Result<HostLink> {
        let host_if = format!("esh-{}", self.state.name);
        let cloud_ns = self.state.cloud.ns.clone();
        let cloud_route = format!("{}/32", self.state.cloud.addr);
        let existing = cmd::run("ip", &["route", "show", &cloud_route])?;
        if !existing.trim().is_empty() {
            return Err(TestnetError::AlreadyExists {
                name: self.state.name.clone(),
                what: format!(
                    "a host route to {cloud_route} ({}): another testnet's host link is up",
                    existing.trim()
                ),
            });
        }
        // 10.78.0.0/30 lies outside every testnet's 10.77.0.0/16.
        let (host_addr, cloud_addr) = ("10.78.0.1", "10.78.0.2");
        cmd::run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "esh-peer", "netns",
                &cloud_ns,
            ],
        )?;
        let link = HostLink {
            host_if: host_if.clone(),
            cloud_end: Iface::new(&cloud_ns, "esh-peer"),
        };
        cmd::run(
            "ip",
            &["addr", "add", &format!("{host_addr}/30"), "dev", &host_if],
        )?;
        cmd::run("ip", &["link", "set", "dev", &host_if, "up"])?;
        ip_n(
            &cloud_ns,
            &[
                "addr",
                "add",
                &format!("{cloud_addr}/30"),
                "dev",
                "esh-peer",
            ],
        )?;
        ip_n(&cloud_ns, &["link", "set", "dev", "esh-peer", "up"])?;
        cmd::run("ip", &["route", "add", &cloud_route, "via", cloud_addr])?;
        // Downloads: cloud -> host, shaped at the cloud end like a node's
        // bridge port; uploads at the host end.
        shape(&link.cloud_end, rate, queue_ms, None)?;
        shape_in(None, &host_if, rate, queue_ms, None)?;
        Ok(link)
    }

    /// Current byte counters of one interface of this testnet.
    pub fn counters(&self, iface: &Iface) -> Result<IfCounters> {
        self.check_ns(&iface.ns)?;
        counters::read(iface)
    }

    fn check_ns(&self, ns: &str) -> Result<()> {
        if self.state.namespaces.iter().any(|n| n == ns) {
            Ok(())
        } else {
            Err(TestnetError::InvalidSpec(format!(
                "namespace {ns:?} is not part of testnet {:?}",
                self.state.name
            )))
        }
    }

    fn save(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        let tmp = self.state_path.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .map_err(|e| TestnetError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &self.state_path)
            .map_err(|e| TestnetError::io(format!("renaming to {}", self.state_path.display()), e))
    }

    /// Records, then creates, a namespace with loopback up.
    fn add_ns(&mut self, ns: &str) -> Result<()> {
        // Recorded only once `ip netns add` succeeded: a namespace of that
        // name made by someone else in the meantime makes the add fail and is
        // never ours to remove. (A crash between add and save leaves an
        // orphan, which `down --orphans` finds by its prefix.)
        cmd::run("ip", &["netns", "add", ns])?;
        self.state.namespaces.push(ns.to_string());
        self.save()?;
        ip_n(ns, &["link", "set", "dev", "lo", "up"])?;
        if let Some(cc) = self.state.congestion_control {
            ns_sh(
                ns,
                &format!(
                    "echo {} > /proc/sys/net/ipv4/tcp_congestion_control",
                    cc.name()
                ),
            )?;
        }
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let cloud = self.state.cloud.clone();
        self.add_ns(&cloud.ns)?;
        probe_kernel(&cloud.ns)?;
        ip_n(&cloud.ns, &["link", "add", "name", "br0", "type", "bridge"])?;
        ip_n(
            &cloud.ns,
            &["addr", "add", &format!("{}/24", cloud.addr), "dev", "br0"],
        )?;
        ip_n(&cloud.ns, &["link", "set", "dev", "br0", "up"])?;
        bridge_without_netfilter(&cloud.ns)?;
        ns_sh(&cloud.ns, "echo 1 > /proc/sys/net/ipv4/ip_forward")?;
        let (cloud_rate, node_rate) = (self.state.cloud_rate, self.state.node_rate);
        let (queue_ms, burst) = (self.state.queue_ms, self.state.burst);
        for loc in self.state.localities.clone() {
            let r = &loc.router_ns;
            let lan = &loc.lan_ns;
            self.add_ns(r)?;
            self.add_ns(lan)?;
            ns_sh(r, "echo 1 > /proc/sys/net/ipv4/ip_forward")?;
            // Cloud link: router `cloud` <-> cloud `l<L>` on the cloud bridge.
            let cl = &loc.cloud_link;
            ip_n(
                r,
                &[
                    "link", "add", "name", "cloud", "type", "veth", "peer", "name", &cl.name,
                    "netns", &cloud.ns,
                ],
            )?;
            ip_n(
                &cloud.ns,
                &["link", "set", "dev", &cl.name, "master", "br0", "up"],
            )?;
            ip_n(
                r,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", loc.router_cloud_addr),
                    "dev",
                    "cloud",
                ],
            )?;
            ip_n(r, &["link", "set", "dev", "cloud", "up"])?;
            ip_n(
                r,
                &["route", "add", "default", "via", &cloud.addr.to_string()],
            )?;
            ip_n(
                &cloud.ns,
                &[
                    "route",
                    "add",
                    &loc.subnet,
                    "via",
                    &loc.router_cloud_addr.to_string(),
                ],
            )?;
            shape(&loc.cloud_link_router_end, cloud_rate, queue_ms, burst)?;
            shape(cl, cloud_rate, queue_ms, burst)?;
            // LAN bridge and the router's leg on it.
            ip_n(
                lan,
                &[
                    "link",
                    "add",
                    "name",
                    "br0",
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ],
            )?;
            ip_n(lan, &["link", "set", "dev", "br0", "up"])?;
            bridge_without_netfilter(lan)?;
            ip_n(
                lan,
                &[
                    "link", "add", "name", "rtr", "type", "veth", "peer", "name", "lan", "netns", r,
                ],
            )?;
            ip_n(lan, &["link", "set", "dev", "rtr", "master", "br0", "up"])?;
            ip_n(
                r,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", loc.router_addr),
                    "dev",
                    "lan",
                ],
            )?;
            ip_n(r, &["link", "set", "dev", "lan", "up"])?;
            for node in &loc.nodes {
                self.add_ns(&node.ns)?;
                let port = &node.bridge_port.name;
                ip_n(
                    lan,
                    &[
                        "link", "add", "name", port, "type", "veth", "peer", "name", "eth0",
                        "netns", &node.ns,
                    ],
                )?;
                ip_n(lan, &["link", "set", "dev", port, "master", "br0", "up"])?;
                ip_n(
                    &node.ns,
                    &["addr", "add", &format!("{}/24", node.addr), "dev", "eth0"],
                )?;
                ip_n(&node.ns, &["link", "set", "dev", "eth0", "up"])?;
                ip_n(
                    &node.ns,
                    &[
                        "route",
                        "add",
                        "default",
                        "via",
                        &loc.router_addr.to_string(),
                    ],
                )?;
                shape(&node.link, node_rate, queue_ms, burst)?;
                shape(&node.bridge_port, node_rate, queue_ms, burst)?;
            }
        }
        self.save()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first_err = None;
        for ns in self.state.namespaces.iter().rev() {
            if let Err(e) = remove_namespace(ns) {
                tracing::warn!(%ns, error = %e, "removing namespace");
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for dir in &self.state.owned_dirs {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TestnetError::io(format!("removing {}", dir.display()), e)),
            }
        }
        match std::fs::remove_file(&self.state_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TestnetError::io(
                format!("removing {}", self.state_path.display()),
                e,
            )),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.detached {
            if let Err(e) = self.teardown() {
                tracing::error!(name = %self.state.name, error = %e, "tearing down testnet on drop");
            }
        }
    }
}

/// Removes testnet `name` as recorded in its state file (the CLI's `down`).
pub fn down(state_dir: &Path, name: &str) -> Result<()> {
    cmd::preflight()?;
    Topology::load(state_dir, name)?.down()
}

/// Removes namespaces named `es-<name>-*` of a testnet whose state file is
/// gone (e.g. a test killed with SIGKILL whose temporary state dir was
/// lost). Refuses while a state file for `name` exists in `state_dir`: use
/// [`down`] then. Returns the namespaces removed.
pub fn remove_orphans(state_dir: &Path, name: &str) -> Result<Vec<String>> {
    cmd::preflight()?;
    validate_name(name)?;
    let path = state_path(state_dir, name);
    if path.exists() {
        return Err(TestnetError::AlreadyExists {
            name: name.to_string(),
            what: format!("state file {}", path.display()),
        });
    }
    let p = prefix(name);
    let victims: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|n| n.starts_with(&p))
        .collect();
    for ns in &victims {
        remove_namespace(ns)?;
    }
    Ok(victims)
}

/// Checks that veth pairs, bridges and tbf work, inside namespace `ns`
/// (probe objects are removed again).
fn probe_kernel(ns: &str) -> Result<()> {
    let veth = ip_n(
        ns,
        &[
            "link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1",
        ],
    );
    if let Err(TestnetError::Command { stderr, .. }) = &veth {
        return Err(TestnetError::KernelLacks {
            feature: "veth pairs (CONFIG_VETH)",
            detail: stderr.clone(),
            hint: "load the module with `modprobe veth` or use a kernel built with CONFIG_VETH",
        });
    }
    veth?;
    let tbf = cmd::run(
        "tc",
        &[
            "-n", ns, "qdisc", "add", "dev", "probe0", "root", "tbf", "rate", "1mbit", "burst",
            "32kb", "latency", "20ms",
        ],
    );
    let _ = ip_n(ns, &["link", "del", "probe0"]);
    if let Err(TestnetError::Command { stderr, .. }) = &tbf {
        return Err(TestnetError::KernelLacks {
            feature: "the tbf qdisc (sch_tbf)",
            detail: stderr.clone(),
            hint: "load it with `modprobe sch_tbf` (kernel CONFIG_NET_SCH_TBF); if `tc` itself is missing, `apt-get install iproute2`",
        });
    }
    tbf?;
    let br = ip_n(ns, &["link", "add", "name", "probebr", "type", "bridge"]);
    if let Err(TestnetError::Command { stderr, .. }) = &br {
        return Err(TestnetError::KernelLacks {
            feature: "Linux bridges (CONFIG_BRIDGE)",
            detail: stderr.clone(),
            hint: "load the module with `modprobe bridge`",
        });
    }
    br?;
    ip_n(ns, &["link", "del", "probebr"]).map(drop)
}

/// Kills every process in `ns` (TERM, then KILL after 2 s) and deletes it.
/// A namespace that does not exist is not an error.
fn remove_namespace(ns: &str) -> Result<()> {
    let exists = Path::new("/run/netns").join(ns).exists();
    if !exists {
        return Ok(());
    }
    kill_all_in(ns)?;
    cmd::run("ip", &["netns", "del", ns]).map(drop)
}

fn pids_in(ns: &str) -> Result<Vec<u32>> {
    let out = cmd::run("ip", &["netns", "pids", ns])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

fn kill_all_in(ns: &str) -> Result<()> {
    let pids = pids_in(ns)?;
    if pids.is_empty() {
        return Ok(());
    }
    tracing::debug!(%ns, ?pids, "terminating processes in namespace");
    for p in &pids {
        let _ = cmd::output("kill", &["-s", "TERM", &p.to_string()]);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if pids_in(ns)?.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in pids_in(ns)? {
        let _ = cmd::output("kill", &["-s", "KILL", &p.to_string()]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "t1", "abcdefghijkl"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "A", "a-b", "abcdefghijklm", "../x", "a b"] {
            assert!(
                matches!(validate_name(bad), Err(TestnetError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn plan_assigns_prefixed_names_and_disjoint_addresses() {
        let mut spec = TopologySpec::new("p1", 3);
        spec.localities = 2;
        let s = plan(&spec).unwrap();
        assert_eq!(s.cloud.ns, "es-p1-cloud");
        assert_eq!(s.localities[1].nodes[2].ns, "es-p1-n1-2");
        assert_eq!(s.localities[1].nodes[2].addr, Ipv4Addr::new(10, 77, 2, 12));
        assert_eq!(s.localities[1].router_addr, Ipv4Addr::new(10, 77, 2, 1));
        assert_eq!(
            s.localities[1].router_cloud_addr,
            Ipv4Addr::new(10, 77, 250, 11)
        );
        let mut addrs: Vec<_> = s
            .localities
            .iter()
            .flat_map(|l| l.nodes.iter().map(|n| n.addr))
            .collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 6);
    }

    #[test]
    fn plan_rejects_out_of_range_sizes() {
        assert!(matches!(
            plan(&TopologySpec::new("x", 0)),
            Err(TestnetError::InvalidSpec(_))
        ));
        assert!(matches!(
            plan(&TopologySpec::new("x", 241)),
            Err(TestnetError::InvalidSpec(_))
        ));
        let mut s = TopologySpec::new("x", 1);
        s.localities = 201;
        assert!(matches!(plan(&s), Err(TestnetError::InvalidSpec(_))));
    }
}
