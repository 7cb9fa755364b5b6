//! `edgeswarm-testnet`: build, use and remove emulated edgeswarm localities.
//!
//! Thin CLI over the `edgeswarm_testnet` library: `up` builds a topology and
//! leaves it running (recorded in a state file), `down` removes it, `exec`
//! runs a command inside one of its namespaces, `show` prints it again;
//! `images`, `experiment` and `demo` (in `bin_cmds`) run edgeswarm on it.

mod bin_cmds;
mod budget;
mod mirror_pull_cmd;
mod pull_bench;

use std::path::PathBuf;
use std::process::ExitCode;

use bin_cmds::{demo_cmd, experiment_cmd, faults_cmd, helper, images_cmd};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgeswarm_testnet::counters::Sampler;
use edgeswarm_testnet::registry::{Registry, RegistryOptions};
use edgeswarm_testnet::topology::{self, Topology, TopologySpec, DEFAULT_STATE_DIR};
use edgeswarm_testnet::Rate;
use std::time::Duration;

/// Emulated edgeswarm localities in Linux network namespaces (needs root).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Directory holding one JSON state file per testnet.
    #[arg(long, global = true, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a testnet and print its namespaces and addresses.
    Up(UpArgs),
    /// Remove everything `up` created for a testnet (processes, namespaces,
    /// links, state file), and nothing else.
    Down {
        /// Testnet name (1-12 chars of [a-z0-9]).
        #[arg(long, default_value = "default")]
        name: String,
        /// The state file is lost: remove the namespaces named
        /// `es-<name>-*` (and their processes) instead [default: off].
        #[arg(long)]
        orphans: bool,
    },
    /// List testnets: state files, and `es-*` namespaces without one.
    List,
    /// Record link counters of a running testnet to CSV for a while.
    Sample {
        /// Testnet name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Sampling interval in milliseconds.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// How long to sample, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// CSV output (t_s,link,rx_bytes,tx_bytes,rx_mbit_s,tx_mbit_s,rx_packets,tx_packets).
        #[arg(long, default_value = "testnet-links.csv")]
        out: PathBuf,
    },
    /// Print the description of a running testnet.
    Show {
        /// Testnet name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Print JSON (the state file) instead of a table [default: off].
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a namespace of a testnet (a node's by default).
    Exec(ExecArgs),
    /// Network probes run inside namespaces by the tests (hidden).
    #[command(subcommand, hide = true)]
    Probe(Probe),
    /// Build test images from this machine's files and push them into a
    /// running testnet's registry (started with `up --registry`).
    Images(ImagesArgs),
    /// Reproduce the paper's evaluation: naive pulls vs edgeswarm for each N,
    /// with CSVs, SVG figures and a Markdown summary.
    Experiment(ExperimentArgs),
    /// The main demo: a 5-node locality on shaped links deploys a real
    /// ~50 MB image with live progress, then prints a per-node table.
    Demo(DemoArgs),
    /// Issue 12's fault-injection suite: randomized, seeded trials of one
    /// deploy to a locality of real nodes with kills, restarts, a late
    /// joiner, registry cuts, link bounces and replayed releases; checks
    /// convergence, the rootfs file by file, refetched chunks, leaks and
    /// cloud bytes, and prints a per-trial line and a summary.
    Faults(FaultsArgs),
    /// One node (its own gateway, importing into Docker) against a stock
    /// `docker pull` of the same image over the same kind of shaped link.
    PullBench(PullBenchArgs),
    /// Issue 15's device-budget benchmark: one node, and separately the
    /// gateway, in a cgroup with a Raspberry-Pi-class budget (a quarter of
    /// one core, 256 MiB) on 100 Mbit/s links; receive and relay rates,
    /// CPU per GB, peak memory and time to a usable image per sink.
    Budget(BudgetArgs),
    /// Issue 14's containerd experiment: one node's containerd pulling from
    /// the registry alone (baseline), then every node's containerd pulling
    /// through its own node's edgeswarm mirror at once; per-node times,
    /// cloud-link bytes, CSV and Markdown summary.
    MirrorPull(MirrorPullArgs),
    /// Helpers the experiment runs inside namespaces (hidden).
    #[command(subcommand, hide = true)]
    Helper(Helper),
}

/// Work done inside a testnet namespace on the experiment's behalf.
#[derive(Debug, Subcommand)]
enum Helper {
    /// Build test images and push them to a registry; prints one JSON line
    /// per image pushed.
    PushImages {
        /// Registry `HOST:PORT` (plain HTTP).
        #[arg(long)]
        registry: String,
        /// Compressed image sizes in MB, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
        sizes: Vec<u64>,
        /// Also push a `v2` of each size sharing all base layers [default: off].
        #[arg(long)]
        versions: bool,
        /// How the bytes spread over layers: `base` (one big base layer) or
        /// `spread` (four similar base layers).
        #[arg(long, default_value = "base")]
        layout: edgeswarm_testnet::images::Layout,
        /// Directory for the build files (a temporary subdirectory is used).
        #[arg(long, default_value = "/var/tmp")]
        work: PathBuf,
    },
    /// Poll nodes' APIs and print a JSON line per change of IMAGE's state;
    /// exits once every node finished the release.
    Watch {
        /// Image reference whose release is watched.
        #[arg(long)]
        image: String,
        /// Node API address, repeatable.
        #[arg(long = "api", required = true)]
        apis: Vec<std::net::SocketAddr>,
        /// Poll interval in milliseconds while a node may finish before a
        /// slow poll (the resolution of completion times).
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Poll interval in milliseconds while a node's link cannot bring
        /// the rest of the image before the next poll.
        #[arg(long, default_value_t = 500)]
        slow_interval_ms: u64,
        /// Rate of the nodes' links [default: unknown: always poll every
        /// --interval-ms].
        #[arg(long)]
        link_rate: Option<edgeswarm_testnet::Rate>,
        /// Layer bytes of the image, for nodes that do not know the
        /// release yet [default: 0, unknown].
        #[arg(long, default_value_t = 0)]
        expect_bytes: u64,
        /// Bytes a node may hold received but not yet verified.
        #[arg(long, default_value_t = 8 << 20)]
        slack_bytes: u64,
    },
    /// GET /v1/status of each node API once, in parallel; prints one JSON
    /// watch line per node (`up: false` when it does not answer).
    Status {
        /// Image reference whose release is reported.
        #[arg(long)]
        image: String,
        /// Node API address, repeatable.
        #[arg(long = "api", required = true)]
        apis: Vec<std::net::SocketAddr>,
        /// Give up on a node after this many milliseconds.
        #[arg(long, default_value_t = 1500)]
        timeout_ms: u64,
    },
    /// GET /metrics of each node API; prints one JSON line per node
    /// (`{"node": i, "metrics": {series: value}}`).
    Scrape {
        /// Node API address, repeatable.
        #[arg(long = "api", required = true)]
        apis: Vec<std::net::SocketAddr>,
    },
}

#[derive(Debug, Args)]
struct ImagesArgs {
    /// Testnet name.
    #[arg(long, default_value = "default")]
    name: String,
    /// Registry address in the cloud namespace.
    #[arg(long, default_value = "10.77.250.1:5000")]
    registry: String,
    /// Compressed image sizes in MB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
    sizes: Vec<u64>,
    /// Push only `v1` of each size (no `v2` sharing its base layers)
    /// [default: off: both].
    #[arg(long)]
    no_versions: bool,
}

#[derive(Debug, Args)]
struct ExperimentArgs {
    /// Node counts to run, comma-separated (1 is added when missing, see
    /// --no-lone-run).
    #[arg(long, value_delimiter = ',', default_value = "1,2,5,10,15,21")]
    nodes: Vec<usize>,
    /// The watcher's poll interval in milliseconds while a node's link
    /// cannot bring the rest of the image before the next poll (100: poll
    /// every node every 100 ms, as before slow polls).
    #[arg(long, default_value_t = 500)]
    watch_slow_ms: u64,
    /// Do not add an N=1 run when --nodes lacks 1 [default: off: it is
    /// added, as the reference of T(N)/T(1) and of the gateway's lone
    /// pull].
    #[arg(long)]
    no_lone_run: bool,
    /// Compressed size of the test image in MB.
    #[arg(long, default_value_t = 50)]
    image_mb: u64,
    /// Rate of the cloud link, both directions.
    #[arg(long, default_value = "200mbit")]
    cloud_rate: Rate,
    /// Rate of each node link, both directions.
    #[arg(long, default_value = "100mbit")]
    node_rate: Rate,
    /// Queue of each shaper in milliseconds at its rate (issue 11's
    /// standard shaping: 100).
    #[arg(long, default_value_t = topology::DEFAULT_QUEUE_MS)]
    queue_ms: u32,
    /// Bucket of each shaper (tbf burst) in tc size units (`256kb` =
    /// 262144 bytes; issue 11's standard shaping: 256kb) [default: 10 ms at
    /// the link's rate: 125000 bytes at 100mbit, 250000 at 200mbit].
    #[arg(long)]
    burst: Option<edgeswarm_testnet::ByteSize>,
    /// TCP congestion control of every namespace (cubic, reno, bbr)
    /// [default: the host's, which new namespaces inherit].
    #[arg(long, value_enum)]
    congestion_control: Option<edgeswarm_testnet::topology::CongestionControl>,
    /// How the test image's bytes spread over layers: `base` (the bulk in
    /// one host-library layer, ~98 % of the image, plus busybox and app
    /// layers), `single` (issue 11's image: ~46/48.7 of the image in one
    /// layer, the rest in small layers) or `spread` (four similar base
    /// layers).
    #[arg(long, default_value = "base")]
    layout: edgeswarm_testnet::images::Layout,
    /// Output directory (CSVs, SVGs, summary.md, logs).
    #[arg(long, default_value = "experiment-out")]
    out: PathBuf,
    /// Methods to run, comma-separated (naive, edgeswarm).
    #[arg(long, value_delimiter = ',', default_value = "naive,edgeswarm")]
    methods: Vec<String>,
    /// The `edgeswarm` binary [default: next to this binary, else on PATH].
    #[arg(long)]
    edgeswarm: Option<PathBuf>,
    /// `--chunk-size` for the nodes [default: the node's, 512K].
    #[arg(long)]
    chunk_size: Option<String>,
    /// Paces each node's uploads at this percent of its link rate
    /// (the node's `--max-upload-rate`), keeping its uplink's queue short;
    /// 0 leaves uploads unpaced.
    #[arg(long, default_value_t = edgeswarm_testnet::experiment::DEFAULT_PACE_PERCENT)]
    pace_percent: u32,
    /// RUST_LOG of the nodes (their logs are in OUT/n<N>/logs).
    #[arg(long, default_value = "info,libp2p=warn")]
    node_log: String,
    /// Seconds before a run is abandoned.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Keep the nodes' data dirs (N copies of the image; implies
    /// --shared-data-fs) [default: off].
    #[arg(long)]
    keep_data: bool,
    /// Where edgeswarm nodes put the image: `dir` (extract a rootfs) or
    /// `none` (store only: measures distribution without extraction). With
    /// `dir` the naive nodes extract too (`tar -xf` of each layer after
    /// `skopeo copy`), so that both methods do the same work.
    #[arg(long, default_value = "dir")]
    import: String,
    /// Keep every run's node data dirs on the output directory's own
    /// filesystem [default: off: each run (method and N) gets a fresh
    /// loop-mounted ext4, so that file creation costs do not depend on
    /// the trees earlier runs deleted: see `edgeswarm_testnet::scratch`].
    #[arg(long)]
    shared_data_fs: bool,
    /// Give the locality a swarm key (pnet, as a node requires by
    /// default: every byte between nodes encrypted a second time)
    /// [default: off: the nodes run with `--open-locality`, as in every
    /// earlier run].
    #[arg(long)]
    pnet: bool,
    /// Leave a virtual machine's free page reporting on and its memory
    /// untouched [default: off: reporting is paused for the experiment
    /// and the memory its runs will fill is touched once before them, so
    /// that no run pays the hypervisor for pages it took back: see
    /// `edgeswarm_testnet::hostmem`].
    #[arg(long)]
    keep_page_reporting: bool,
}

#[derive(Debug, Args)]
struct MirrorPullArgs {
    /// Nodes in the locality (node 0 is the edgeswarm gateway).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Rounds (each: the baseline, then the mirror run, then the naive
    /// run if asked).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Also run every node's containerd pulling from the registry at once
    /// [default: off].
    #[arg(long)]
    naive: bool,
    /// Compressed size of the test image in MB.
    #[arg(long, default_value_t = 50)]
    image_mb: u64,
    /// How the test image's bytes spread over layers: `base`, `single` or
    /// `spread` (see `experiment --layout`).
    #[arg(long, default_value = "base")]
    layout: edgeswarm_testnet::images::Layout,
    /// Rate of the cloud link, both directions.
    #[arg(long, default_value = "200mbit")]
    cloud_rate: Rate,
    /// Rate of each node link, both directions.
    #[arg(long, default_value = "100mbit")]
    node_rate: Rate,
    /// Queue of each shaper in milliseconds at its rate.
    #[arg(long, default_value_t = topology::DEFAULT_QUEUE_MS)]
    queue_ms: u32,
    /// Bucket of each shaper (tbf burst) in tc size units (issue 11's
    /// standard shaping: 256kb) [default: 10 ms at the link's rate].
    #[arg(long)]
    burst: Option<edgeswarm_testnet::ByteSize>,
    /// Output directory (CSV, summary.md, link CSVs, logs).
    #[arg(long, default_value = "mirror-pull-out")]
    out: PathBuf,
    /// The `edgeswarm` binary [default: next to this binary, else on PATH].
    #[arg(long)]
    edgeswarm: Option<PathBuf>,
    /// `--chunk-size` for the nodes [default: the node's, 512K].
    #[arg(long)]
    chunk_size: Option<String>,
    /// Paces each node's uploads at this percent of its link rate; 0
    /// leaves uploads unpaced.
    #[arg(long, default_value_t = edgeswarm_testnet::experiment::DEFAULT_PACE_PERCENT)]
    pace_percent: u32,
    /// RUST_LOG of the nodes (their logs are in OUT/es-r<round>/logs).
    #[arg(long, default_value = "info,libp2p=warn")]
    node_log: String,
    /// Seconds before a run's pulls are abandoned.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Keep the nodes' and containerds' data dirs [default: off].
    #[arg(long)]
    keep_data: bool,
    /// CPU cores each emulated device (its containerd, ctr and edgeswarm
    /// node) may use, by a cgroup v1 CPU quota, in the baseline as in the
    /// mirror run: N devices then do not share the machine's cores
    /// against the baseline's one (e.g. 0.3 for 5 nodes on 2 cores)
    /// [default: no cap].
    #[arg(long)]
    cpu_per_node: Option<f64>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Nodes in the locality (node 0 is the gateway).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Compressed size of the image in MB.
    #[arg(long, default_value_t = 50)]
    image_mb: u64,
    /// Rate of the cloud link.
    #[arg(long, default_value = "200mbit")]
    cloud_rate: Rate,
    /// Rate of each node link.
    #[arg(long, default_value = "100mbit")]
    node_rate: Rate,
    /// The `edgeswarm` binary [default: next to this binary, else on PATH].
    #[arg(long)]
    edgeswarm: Option<PathBuf>,
    /// Where logs and node data go [default: a temporary directory,
    /// removed at the end].
    #[arg(long)]
    work: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct FaultsArgs {
    /// Trials to run.
    #[arg(long, default_value_t = 100)]
    trials: usize,
    /// Seed of trial 0 (trial i uses seed + i: `--seed S+i --trials 1`
    /// repeats trial i alone).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nodes in the locality (at least 5; node 0 is the gateway).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds a registry cut lasts (issue 12: 60; shorten for CI).
    #[arg(long, default_value_t = 60)]
    registry_cut_secs: u64,
    /// Seconds after the deploy (plus the registry cut) before an
    /// unconverged trial fails.
    #[arg(long, default_value_t = 180)]
    trial_timeout: u64,
    /// Compressed size of the test image in MB.
    #[arg(long, default_value_t = 30)]
    image_mb: u64,
    /// Rate of the cloud link, both directions.
    #[arg(long, default_value = "200mbit")]
    cloud_rate: Rate,
    /// Rate of each node link, both directions.
    #[arg(long, default_value = "100mbit")]
    node_rate: Rate,
    /// A late joiner should be done within T(1) plus this many seconds.
    #[arg(long, default_value_t = 5)]
    late_slack_secs: u64,
    /// Output directory (registry storage, the expected tree, failed
    /// trials' logs and data dirs, trials.json, summary.txt).
    #[arg(long, default_value = "faults-out")]
    out: PathBuf,
    /// The `edgeswarm` binary [default: next to this binary, else on PATH].
    #[arg(long)]
    edgeswarm: Option<PathBuf>,
    /// RUST_LOG of the nodes (the store's debug lines are always added).
    #[arg(long, default_value = "info,libp2p=warn")]
    node_log: String,
    /// Keep every trial's logs and data dirs [default: off: only failed
    /// trials'].
    #[arg(long)]
    keep_all: bool,
    /// Testnet name (namespaces `es-<name>-*`).
    #[arg(long, default_value = "faults")]
    name: String,
    /// Start no new trial after this many seconds (the summary counts the
    /// trials run) [default: no limit].
    #[arg(long)]
    budget_secs: Option<u64>,
    /// Where the nodes import the image: `dir` (each rootfs compared file
    /// by file with the expected tree) or `docker` (a private dockerd per
    /// node; checks the image id, a `docker run`, and that no helper tag
    /// is left).
    #[arg(long, default_value = "dir", value_parser = ["dir", "docker"])]
    import: String,
}

#[derive(Debug, Args)]
struct PullBenchArgs {
    /// Compressed size of the image in MB.
    #[arg(long, default_value_t = 220)]
    image_mb: u64,
    /// How the image's bytes spread over layers: `spread` (four similar
    /// base layers) or `base` (one big base layer).
    #[arg(long, default_value = "spread")]
    layout: edgeswarm_testnet::images::Layout,
    /// Rate of the link between the host (dockerd, the node) and the
    /// registry, both ways.
    #[arg(long, default_value = "100mbit")]
    rate: Rate,
    /// Shaper queue in milliseconds at the link rate.
    #[arg(long, default_value_t = edgeswarm_testnet::topology::DEFAULT_QUEUE_MS)]
    queue_ms: u32,
    /// Measurements of each contender (alternating which goes first).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Output directory (registry storage, logs, CSV, summary.md).
    #[arg(long, default_value = "pull-bench")]
    out: PathBuf,
    /// The `edgeswarm` binary [default: next to this binary, else on PATH].
    #[arg(long)]
    edgeswarm: Option<PathBuf>,
    /// RUST_LOG of the node.
    #[arg(long, default_value = "info")]
    node_log: String,
    /// Give up on one edgeswarm deploy after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Keep the node's data dir after each run [default: off].
    #[arg(long)]
    keep_data: bool,
}

#[derive(Debug, Args)]
struct BudgetArgs {
    /// Compressed image sizes in MB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,500")]
    sizes: Vec<u64>,
    /// Which node is budgeted, comma-separated: `node` (fed by an
    /// unbudgeted gateway) and/or `gateway` (pulling from the registry).
    #[arg(long, value_delimiter = ',', default_value = "node,gateway")]
    roles: Vec<String>,
    /// Sinks of the leaf runs, comma-separated (none, dir, docker; docker
    /// needs a running engine).
    #[arg(long, value_delimiter = ',', default_value = "none,dir,docker")]
    imports: Vec<String>,
    /// Skip the relay run (`none`, an unbudgeted peer also fetching) of
    /// each size and role [default: off: run it].
    #[arg(long)]
    no_relay: bool,
    /// CPU budget in cores (0.25: a quarter of one core, cfs quota 25000
    /// of 100000 us).
    #[arg(long, default_value_t = 0.25)]
    cpus: f64,
    /// Memory budget in MiB (page cache included, as the kernel counts).
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Rate of the cloud link.
    #[arg(long, default_value = "200mbit")]
    cloud_rate: Rate,
    /// Rate of each node link.
    #[arg(long, default_value = "100mbit")]
    node_rate: Rate,
    /// Queue of each shaper in milliseconds at its rate.
    #[arg(long, default_value_t = topology::DEFAULT_QUEUE_MS)]
    queue_ms: u32,
    /// How the test images' bytes spread over layers (base, single,
    /// spread).
    #[arg(long, default_value = "base")]
    layout: edgeswarm_testnet::images::Layout,
    /// Output directory (registry storage, per-run logs, budget.csv,
    /// summary.md).
    #[arg(long, default_value = "budget-out")]
    out: PathBuf,
    /// The `edgeswarm` binary [default: next to this binary, else on PATH].
    #[arg(long)]
    edgeswarm: Option<PathBuf>,
    /// RUST_LOG of the nodes.
    #[arg(long, default_value = "info,libp2p=warn")]
    node_log: String,
    /// Seconds before one run is abandoned.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Record the budgeted node of each run with `perf record -g` from the
    /// deploy on, to OUT/<run>.perf.data (the samples cost the node a
    /// little CPU: keep such runs apart from the figures) [default: off].
    #[arg(long)]
    perf: bool,
    /// Give the locality a swarm key (pnet), as a node requires by
    /// default [default: off: `--open-locality`, as in earlier runs].
    #[arg(long)]
    pnet: bool,
}

/// Tiny network probes, so tests need no extra tools inside namespaces.
#[derive(Debug, Subcommand)]
enum Probe {
    /// Join a multicast group and print the first datagram received.
    McastRecv {
        /// Group address.
        #[arg(long, default_value = "224.0.0.251")]
        group: std::net::Ipv4Addr,
        /// UDP port.
        #[arg(long, default_value_t = 5353)]
        port: u16,
        /// Local interface address to join on.
        #[arg(long)]
        iface: std::net::Ipv4Addr,
        /// Give up (exit 2) after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Send datagrams to a multicast group (every 100 ms, `--count` times).
    McastSend {
        /// Group address.
        #[arg(long, default_value = "224.0.0.251")]
        group: std::net::Ipv4Addr,
        /// UDP port.
        #[arg(long, default_value_t = 5353)]
        port: u16,
        /// Payload.
        #[arg(long)]
        message: String,
        /// Number of datagrams.
        #[arg(long, default_value_t = 20)]
        count: u32,
    },
    /// Accept one TCP connection, read it to EOF, reply with the byte count.
    TcpSink {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Send `--bytes` zero bytes over TCP, then wait for the sink's count:
    /// exits 0 only once the receiver has read every byte.
    TcpSend {
        /// The sink's address.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// Bytes to send.
        #[arg(long)]
        bytes: u64,
    },
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Nodes per locality.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Number of localities, each with its own bridge, router and cloud link.
    #[arg(long, default_value_t = 1)]
    localities: usize,
    /// Rate of each locality's cloud link, both directions (tc bit units:
    /// bit, kbit, mbit, gbit).
    #[arg(long, default_value = "200mbit")]
    cloud_rate: Rate,
    /// Rate of each node's link to its bridge, both directions.
    #[arg(long, default_value = "100mbit")]
    node_rate: Rate,
    /// Queue of each shaper in milliseconds at its rate (tbf latency).
    #[arg(long, default_value_t = topology::DEFAULT_QUEUE_MS)]
    queue_ms: u32,
    /// Bucket of each shaper (tbf burst) in tc size units (`256kb` =
    /// 262144 bytes) [default: 10 ms at the link's rate: 125000 bytes at
    /// 100mbit, 250000 at 200mbit].
    #[arg(long)]
    burst: Option<edgeswarm_testnet::ByteSize>,
    /// TCP congestion control of every namespace (cubic, reno, bbr)
    /// [default: the host's, which new namespaces inherit].
    #[arg(long, value_enum)]
    congestion_control: Option<edgeswarm_testnet::topology::CongestionControl>,
    /// Testnet name (1-12 chars of [a-z0-9]); namespaces are `es-<name>-*`.
    #[arg(long, default_value = "default")]
    name: String,
    /// Print JSON (the state file) instead of a table [default: off].
    #[arg(long)]
    json: bool,
    /// Also start a docker-registry in the cloud namespace (storage under
    /// `--registry-dir`, removed by `down`) [default: off].
    #[arg(long)]
    registry: bool,
    /// Registry port on the cloud address.
    #[arg(long, default_value_t = edgeswarm_testnet::registry::DEFAULT_PORT)]
    registry_port: u16,
    /// Parent of the registry's storage, config and log
    /// (`<dir>/<name>/registry/`; `<dir>/<name>` must not exist).
    #[arg(long, default_value = "/var/tmp/edgeswarm-testnet")]
    registry_dir: PathBuf,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Testnet name.
    #[arg(long, default_value = "default")]
    name: String,
    /// Locality of the node (0-based).
    #[arg(long, default_value_t = 0)]
    locality: usize,
    /// Node index inside the locality (0-based).
    #[arg(long, default_value_t = 0, conflicts_with_all = ["cloud", "router"])]
    node: usize,
    /// Run in the cloud namespace instead of a node's [default: off].
    #[arg(long, conflicts_with = "router")]
    cloud: bool,
    /// Run in the locality's router namespace instead of a node's [default: off].
    #[arg(long)]
    router: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeswarm-testnet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Up(a) => {
            let spec = TopologySpec {
                name: a.name.clone(),
                localities: a.localities,
                nodes_per_locality: a.nodes,
                cloud_rate: a.cloud_rate,
                node_rate: a.node_rate,
                queue_ms: a.queue_ms,
                burst: a.burst,
                congestion_control: a.congestion_control,
                state_dir: cli.state_dir,
            };
            let mut topo =
                Topology::up(&spec).with_context(|| format!("creating testnet {:?}", a.name))?;
            if a.registry {
                let dir = std::path::absolute(a.registry_dir.join(&a.name))
                    .context("resolving --registry-dir")?;
                if let Err(e) = start_registry(&mut topo, &dir, a.registry_port) {
                    // Dropping `topo` (not detached yet) removes the testnet.
                    return Err(e.context("starting the registry; testnet removed again"));
                }
            }
            topo.detach();
            print(&topo, a.json)?;
        }
        Cmd::Down {
            name,
            orphans: false,
        } => {
            topology::down(&cli.state_dir, &name)
                .with_context(|| format!("removing testnet {name:?}"))?;
            println!("testnet {name:?} removed");
        }
        Cmd::Down {
            name,
            orphans: true,
        } => {
            let removed = topology::remove_orphans(&cli.state_dir, &name)
                .with_context(|| format!("removing orphaned namespaces of {name:?}"))?;
            println!(
                "removed {} namespaces: {}",
                removed.len(),
                removed.join(" ")
            );
        }
        Cmd::List => {
            let mut named = std::collections::BTreeSet::new();
            if let Ok(rd) = std::fs::read_dir(&cli.state_dir) {
                for e in rd.flatten() {
                    let f = e.file_name().to_string_lossy().into_owned();
                    if let Some(name) = f.strip_suffix(".json") {
                        named.insert(name.to_string());
                        match Topology::load(&cli.state_dir, name) {
                            Ok(t) => println!(
                                "{name}: {} localities x {} nodes, {} namespaces",
                                t.state().localities.len(),
                                t.state().localities.first().map_or(0, |l| l.nodes.len()),
                                t.state().namespaces.len()
                            ),
                            Err(e) => println!("{name}: unreadable state: {e}"),
                        }
                    }
                }
            }
            for ns in topology::list_namespaces()? {
                if let Some(rest) = ns.strip_prefix("es-") {
                    let name = rest.split('-').next().unwrap_or_default();
                    if !named.contains(name) {
                        println!(
                            "orphan namespace {ns} (remove with: down --name {name} --orphans)"
                        );
                    }
                }
            }
        }
        Cmd::Sample {
            name,
            interval_ms,
            seconds,
            out,
        } => {
            let topo = Topology::load(&cli.state_dir, &name)?;
            let sampler = Sampler::start(
                topo.probes(),
                Duration::from_millis(interval_ms),
                Some(out.clone()),
            )?;
            std::thread::sleep(Duration::from_secs_f64(seconds));
            let series = sampler.stop()?;
            for p in topo.probes() {
                if let Some(d) = series.delta(&p.label) {
                    println!(
                        "{:<8} rx {:>12} B  tx {:>12} B",
                        p.label, d.rx_bytes, d.tx_bytes
                    );
                }
            }
            println!("wrote {}", out.display());
        }
        Cmd::Show { name, json } => {
            let topo = Topology::load(&cli.state_dir, &name)?;
            print(&topo, json)?;
        }
        Cmd::Exec(a) => {
            let topo = Topology::load(&cli.state_dir, &a.name)?;
            let ns = if a.cloud {
                topo.cloud().ns.clone()
            } else if a.router {
                topo.locality(a.locality)?.router_ns.clone()
            } else {
                topo.node(a.locality, a.node)?.ns.clone()
            };
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&a.command)
                .status()
                .with_context(|| format!("running ip netns exec {ns} ..."))?;
            return Ok(match status.code() {
                Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
                None => ExitCode::FAILURE,
            });
        }
        Cmd::Probe(p) => return probe(p),
        Cmd::Images(a) => images_cmd(&cli.state_dir, a)?,
        Cmd::Experiment(a) => experiment_cmd(a)?,
        Cmd::Demo(a) => demo_cmd(a)?,
        Cmd::PullBench(a) => pull_bench::pull_bench_cmd(a)?,
        Cmd::Budget(a) => budget::budget_cmd(a)?,
        Cmd::MirrorPull(a) => mirror_pull_cmd::mirror_pull_cmd(a)?,
        Cmd::Faults(a) => return faults_cmd(a),
        Cmd::Helper(h) => helper(h)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts a detached registry with its files under `base` (which must not
/// exist: `down` removes it whole).
fn start_registry(topo: &mut Topology, base: &std::path::Path, port: u16) -> Result<()> {
    anyhow::ensure!(
        !base.exists(),
        "{} already exists; remove it or pick another --registry-dir",
        base.display()
    );
    topo.own_dir(base)?;
    let dir = base.join("registry");
    let opts = RegistryOptions {
        port,
        root_dir: Some(dir.join("storage")),
        work_dir: Some(dir.clone()),
    };
    let mut reg = Registry::start(topo, opts)?;
    let n0 = topo.node(0, 0)?.ns.clone();
    reg.wait_ready(topo, &n0, Duration::from_secs(20))?;
    let url = reg.url();
    let pid = reg.detach()?;
    eprintln!(
        "registry {url} running (pid {pid}, storage {})",
        dir.join("storage").display()
    );
    Ok(())
}

fn probe(p: Probe) -> Result<ExitCode> {
    use std::net::{Ipv4Addr, UdpSocket};
    match p {
        Probe::McastRecv {
            group,
            port,
            iface,
            timeout_ms,
        } => {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).context("binding")?;
            sock.join_multicast_v4(&group, &iface)
                .context("joining group")?;
            sock.set_read_timeout(Some(std::time::Duration::from_millis(timeout_ms)))?;
            println!("ready");
            let mut buf = [0u8; 1500];
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    println!("from {from}: {}", String::from_utf8_lossy(&buf[..n]));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    println!("timeout");
                    Ok(ExitCode::from(2))
                }
                Err(e) => Err(e).context("receiving"),
            }
        }
        Probe::TcpSink { listen } => {
            use std::io::{Read, Write};
            let l = std::net::TcpListener::bind(listen).context("binding")?;
            println!("ready");
            let (mut c, from) = l.accept().context("accepting")?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut n: u64 = 0;
            loop {
                match c.read(&mut buf).context("reading")? {
                    0 => break,
                    k => n += k as u64,
                }
            }
            writeln!(c, "{n}").context("replying")?;
            println!("received {n} bytes from {from}");
            Ok(ExitCode::SUCCESS)
        }
        Probe::TcpSend { to, bytes } => {
            use std::io::{Read, Write};
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut c = loop {
                match std::net::TcpStream::connect(to) {
                    Ok(c) => break c,
                    Err(e)
                        if std::time::Instant::now() < deadline
                            && e.kind() == std::io::ErrorKind::ConnectionRefused =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => return Err(e).with_context(|| format!("connecting to {to}")),
                }
            };
            let buf = vec![0u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                c.write_all(&buf[..k]).context("sending")?;
                left -= k as u64;
            }
            c.shutdown(std::net::Shutdown::Write)
                .context("closing write side")?;
            let mut reply = String::new();
            c.read_to_string(&mut reply)
                .context("reading the sink's count")?;
            let acked: u64 = reply
                .trim()
                .parse()
                .with_context(|| format!("bad reply {reply:?}"))?;
            println!("sent {bytes} acked {acked}");
            anyhow::ensure!(acked == bytes, "sink received {acked} of {bytes} bytes");
            Ok(ExitCode::SUCCESS)
        }
        Probe::McastSend {
            group,
            port,
            message,
            count,
        } => {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding")?;
            sock.set_multicast_ttl_v4(255)?;
            for _ in 0..count {
                sock.send_to(message.as_bytes(), (group, port))
                    .context("sending")?;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print(topo: &Topology, json: bool) -> Result<()> {
    let s = topo.state();
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "testnet {:?}  cloud link {}  node links {}  state {}",
        s.name,
        s.cloud_rate,
        s.node_rate,
        topo.state_path().display()
    );
    println!(
        "{:<10} {:<22} {:<16} counters",
        "role", "namespace", "address"
    );
    println!("{:<10} {:<22} {:<16} -", "cloud", s.cloud.ns, s.cloud.addr);
    for l in &s.localities {
        println!(
            "{:<10} {:<22} {:<16} cloud link: {} in {}",
            format!("router{}", l.index),
            l.router_ns,
            l.router_addr,
            l.cloud_link.name,
            l.cloud_link.ns
        );
        for n in &l.nodes {
            println!(
                "{:<10} {:<22} {:<16} {} in {}",
                format!("node{}.{}", l.index, n.index),
                n.ns,
                n.addr,
                n.link.name,
                n.link.ns
            );
        }
    }
    Ok(())
}
