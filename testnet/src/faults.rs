//! Issue 12's fault-injection suite: randomized, seeded trials of one
//! deploy to a locality of real `edgeswarm` processes on shaped links,
//! against a real registry, with faults injected while it runs.
//!
//! # A trial
//! Every trial starts the locality afresh (new data dirs, node 0 the only
//! gateway-capable node, the others bootstrapped from it), signs a release
//! of the v1 test image with a publisher key every node trusts, deploys it
//! through node 0, and injects the faults of its [`TrialPlan`]: kill -9 of
//! the gateway or of a node mid-transfer or late in its import, each
//! restarted after a random delay; a node held offline during the deploy
//! and started once the others are done (the late joiner, timed from its
//! start to its image done); the registry cut for a while mid-pull (its
//! process killed, or the cloud link set down); a node's link bounced
//! (`ip link set down/up` on its bridge port); an older release of the
//! same image (sequence 1, pinning the v2 manifest) replayed at a node.
//!
//! # Checks, after the nodes were stopped
//! - converged: every node reported the release `done` within the bound;
//! - not corrupt: each node's rootfs equals, file by file (type, mode,
//!   bytes, link target), the tree `umoci unpack` made of the same image
//!   pulled with `skopeo` ([`compare_trees`]);
//! - no verified chunk fetched twice: no node's log (all its incarnations
//!   in the trial) stores one chunk twice ([`chunk_log`]; the nodes run
//!   with `edgeswarm_node::store=debug`, which logs each chunk stored after
//!   its journal record); chunks received while already held (endgame
//!   duplicates) are counted, not failed;
//! - no leak: no `.import-*`, `.link-*` or `.tmp-` entry, no partial blob,
//!   no unreferenced rootfs version beyond one per image ([`leaks`]);
//! - the replay was refused, with its reason;
//! - cloud bytes (the kernel counter of the cloud link, into the locality)
//!   at most 1.1x the image.
//!
//! Every wait is bounded; processes are killed and the testnet removed
//! when the suite returns, error or not (drops).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use edgeswarm_protocol::release::{Platform, Release, SignedRelease};
use edgeswarm_protocol::signing::PublisherKey;
use edgeswarm_protocol::Digest;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Result, TestnetError};
use crate::experiment::{api_addr, Tools, NODE_TOKEN_FILE, P2P_PORT};
use crate::images::TestImage;
use crate::process::{NetnsProcess, SpawnSpec};
use crate::registry::{Registry, RegistryOptions};
use crate::topology::Topology;
use crate::watch::WatchLine;

/// The locality name every node of the suite joins.
pub const LOCALITY: &str = "faults";

/// Cloud bytes a trial may use, as a multiple of the image (issue 12).
pub const CLOUD_BYTES_LIMIT: f64 = 1.1;

/// Where the nodes import the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// `--import dir`: a rootfs per node, compared file by file with the
    /// expected tree.
    #[default]
    Dir,
    /// `--import docker`: each node imports into a private Docker engine
    /// of its own ([`crate::engines`]); checked by image id (the config
    /// digest), a `docker run` of the image, and no helper tag left.
    Docker,
}

impl ImportMode {
    /// The node's `--import` value.
    pub fn name(self) -> &'static str {
        match self {
            ImportMode::Dir => "dir",
            ImportMode::Docker => "docker",
        }
    }
}

/// How the registry is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CutMode {
    /// kill -9 of the registry process, started again afterwards
    /// (connections refused meanwhile).
    Stop,
    /// The cloud link set down, then up (connections hang meanwhile).
    Link,
}

/// One fault of a trial; times are seconds after the deploy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// kill -9 of the gateway (node 0).
    KillGateway {
        /// When.
        at: f64,
        /// Seconds until it is started again.
        restart_after: f64,
    },
    /// kill -9 of a node at a moment its transfer is likely under way.
    KillTransfer {
        /// The node.
        node: usize,
        /// When.
        at: f64,
        /// Seconds until it is started again.
        restart_after: f64,
    },
    /// kill -9 of a node once it is importing or has 90 % of its layers
    /// (the `dir` import streams while fetching).
    KillImport {
        /// The node.
        node: usize,
        /// Seconds until it is started again.
        restart_after: f64,
    },
    /// The registry unreachable for a while.
    RegistryCut {
        /// When.
        at: f64,
        /// For how long.
        secs: f64,
        /// How.
        mode: CutMode,
    },
    /// A node's bridge port set down, then up.
    LinkBounce {
        /// The node.
        node: usize,
        /// When.
        at: f64,
        /// How long it stays down.
        secs: f64,
    },
    /// The older release (sequence 1, another manifest) sent to a node.
    Replay {
        /// The node.
        node: usize,
        /// When.
        at: f64,
    },
}

impl Fault {
    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::KillGateway { .. } => "kill-gateway",
            Fault::KillTransfer { .. } => "kill-transfer",
            Fault::KillImport { .. } => "kill-import",
            Fault::RegistryCut { .. } => "registry-cut",
            Fault::LinkBounce { .. } => "link-bounce",
            Fault::Replay { .. } => "replay",
        }
    }
}

/// What a trial does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialPlan {
    /// The trial's seed (the suite's seed plus the trial index).
    pub seed: u64,
    /// A node held offline during the deploy, started once the others are
    /// done.
    pub late: Option<usize>,
    /// The faults.
    pub faults: Vec<Fault>,
}

impl TrialPlan {
    /// A random plan for a locality of `nodes` (node 0 the gateway) from
    /// `seed`: the same seed gives the same plan. At least two faults or a
    /// late joiner and one fault.
    pub fn random(seed: u64, nodes: usize, registry_cut: Duration) -> TrialPlan {
        assert!(nodes >= 3, "a plan needs a gateway and two other nodes");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        loop {
            let late = rng.gen_bool(0.4).then(|| rng.gen_range(1..nodes));
            let others: Vec<usize> = (1..nodes).filter(|&i| Some(i) != late).collect();
            let online: Vec<usize> = (0..nodes).filter(|&i| Some(i) != late).collect();
            let pick = |rng: &mut ChaCha8Rng, from: &[usize]| from[rng.gen_range(0..from.len())];
            let mut faults = Vec::new();
            if rng.gen_bool(0.35) {
                faults.push(Fault::KillGateway {
                    at: rng.gen_range(0.2..1.5),
                    restart_after: rng.gen_range(0.5..5.0),
                });
            }
            let mut transfer_victim = None;
            if rng.gen_bool(0.5) {
                let node = pick(&mut rng, &others);
                transfer_victim = Some(node);
                faults.push(Fault::KillTransfer {
                    node,
                    at: rng.gen_range(0.3..2.5),
                    restart_after: rng.gen_range(0.5..5.0),
                });
            }
            if rng.gen_bool(0.4) {
                let rest: Vec<usize> = others
                    .iter()
                    .copied()
                    .filter(|&i| Some(i) != transfer_victim)
                    .collect();
                faults.push(Fault::KillImport {
                    node: pick(&mut rng, &rest),
                    restart_after: rng.gen_range(0.5..5.0),
                });
            }
            if rng.gen_bool(0.3) {
                faults.push(Fault::RegistryCut {
                    at: rng.gen_range(0.1..1.0),
                    secs: registry_cut.as_secs_f64(),
                    mode: if rng.gen_bool(0.5) {
                        CutMode::Stop
                    } else {
                        CutMode::Link
                    },
                });
            }
            if rng.gen_bool(0.4) {
                faults.push(Fault::LinkBounce {
                    node: pick(&mut rng, &online),
                    at: rng.gen_range(0.3..3.0),
                    secs: rng.gen_range(1.0..5.0),
                });
            }
            if rng.gen_bool(0.5) {
                faults.push(Fault::Replay {
                    node: pick(&mut rng, &online),
                    at: rng.gen_range(0.5..4.0),
                });
            }
            if faults.len() + usize::from(late.is_some()) >= 2 {
                return TrialPlan { seed, late, faults };
            }
        }
    }
}

/// How to run the suite.
#[derive(Debug, Clone)]
pub struct FaultsSpec {
    /// Nodes in the locality (at least 5).
    pub nodes: usize,
    /// Trials to run.
    pub trials: usize,
    /// Seed of trial 0; trial `i` uses `seed + i`.
    pub seed: u64,
    /// How long a registry cut lasts.
    pub registry_cut: Duration,
    /// A trial not converged after this long (plus the registry cut) fails.
    pub trial_timeout: Duration,
    /// Where logs, data dirs, the expected tree and results go.
    pub work: PathBuf,
    /// `RUST_LOG` of the nodes (the suite adds the store's debug lines).
    pub node_log: String,
    /// Compressed size of the test image in MB.
    pub image_mb: u64,
    /// A late joiner should be done within T(1) plus this.
    pub late_slack: Duration,
    /// Keep each trial's data dirs and logs (else only failed trials').
    pub keep_all: bool,
    /// Start no new trial once the suite has run this long (`None`: run
    /// every trial), so a run fits a time slot and still prints its
    /// summary.
    pub budget: Option<Duration>,
    /// Where the nodes import the image.
    pub import: ImportMode,
}

/// A kill that happened, and the node's state when it did.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// The fault's name.
    pub fault: &'static str,
    /// The node (None: the registry or nothing node-specific).
    pub node: Option<usize>,
    /// Seconds after the deploy.
    pub at: f64,
    /// The node's release state then (`-` when not applicable, `missed`
    /// when its moment never came).
    pub state: String,
}

/// One trial's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TrialOutcome {
    /// Trial index.
    pub trial: usize,
    /// The plan.
    pub plan: TrialPlan,
    /// What was injected, when, in which state.
    pub injected: Vec<Injected>,
    /// Every node reported the release done within the bound.
    pub converged: bool,
    /// Seconds from the deploy until the last online node was done.
    pub seconds: Option<f64>,
    /// Nodes whose rootfs differs from the expected tree (or is missing).
    pub corrupt: Vec<String>,
    /// Chunks stored twice by one node (node, blob, index).
    pub refetched: Vec<String>,
    /// Chunks received while already held (endgame duplicates), all nodes.
    pub duplicates: u64,
    /// Leftovers found in data dirs.
    pub leaks: Vec<String>,
    /// Bytes into the locality over the cloud link.
    pub cloud_bytes: u64,
    /// `cloud_bytes` over the image's bytes.
    pub cloud_ratio: f64,
    /// Seconds from the late joiner's start to its image done.
    pub late_seconds: Option<f64>,
    /// Problems that fail the trial other than the above (replay
    /// accepted, deploy refused, timeouts).
    pub errors: Vec<String>,
}

impl TrialOutcome {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.converged
            && self.corrupt.is_empty()
            && self.refetched.is_empty()
            && self.leaks.is_empty()
            && self.errors.is_empty()
            && self.cloud_ratio <= CLOUD_BYTES_LIMIT
    }
}

/// The whole suite's result.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteResult {
    /// The image deployed.
    pub image: TestImage,
    /// T(1): one node alone, deploy to done, no faults.
    pub t1_seconds: f64,
    /// The trials.
    pub trials: Vec<TrialOutcome>,
}

impl SuiteResult {
    /// The summary lines the CLI prints and the README quotes.
    pub fn summary(&self, spec: &FaultsSpec) -> String {
        let n = self.trials.len();
        let conv = self.trials.iter().filter(|t| t.converged).count();
        let passed = self.trials.iter().filter(|t| t.passed()).count();
        let corrupt: usize = self.trials.iter().map(|t| t.corrupt.len()).sum();
        let refetched: usize = self.trials.iter().map(|t| t.refetched.len()).sum();
        let leaks: usize = self.trials.iter().map(|t| t.leaks.len()).sum();
        let dups: u64 = self.trials.iter().map(|t| t.duplicates).sum();
        let max_ratio = self
            .trials
            .iter()
            .map(|t| t.cloud_ratio)
            .fold(0.0f64, f64::max);
        let over = self
            .trials
            .iter()
            .filter(|t| t.cloud_ratio > CLOUD_BYTES_LIMIT)
            .count();
        let late: Vec<f64> = self.trials.iter().filter_map(|t| t.late_seconds).collect();
        let bound = self.t1_seconds + spec.late_slack.as_secs_f64();
        let late_ok = late.iter().filter(|&&s| s <= bound).count();
        let late_max = late.iter().copied().fold(0.0f64, f64::max);
        let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for t in &self.trials {
            for i in &t.injected {
                let c = counts.entry(i.fault).or_default();
                if i.state == "missed" {
                    c.1 += 1;
                } else {
                    c.0 += 1;
                }
            }
            if t.plan.late.is_some() {
                counts.entry("late-joiner").or_default().0 += 1;
            }
        }
        let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
        let mut s = format!(
            "trials {n} (seed {}, {} nodes, {:.1} MB image, import {}, registry cut {} s)\n\
             converged {conv}/{n} ({:.0} %), all checks passed {passed}/{n} ({:.0} %)\n\
             corrupt images {corrupt}, chunks fetched twice {refetched}, leaks {leaks}, endgame duplicates {dups}\n\
             cloud bytes max {max_ratio:.3}x the image, over {CLOUD_BYTES_LIMIT}x: {over}\n\
             T(1) {:.1} s; late joiners {}: max {late_max:.1} s, within T(1)+{} s = {bound:.1} s: {late_ok}/{}\n",
            spec.seed,
            spec.nodes,
            self.image.total_bytes as f64 / 1e6,
            spec.import.name(),
            spec.registry_cut.as_secs(),
            pct(conv),
            pct(passed),
            self.t1_seconds,
            late.len(),
            spec.late_slack.as_secs(),
            late.len(),
        );
        s.push_str("faults injected (missed):");
        for (k, (done, missed)) in &counts {
            s.push_str(&format!(" {k} {done} ({missed})"));
        }
        s.push('\n');
        s
    }
}

/// One node slot of a trial.
struct Slot {
    ns: String,
    addr: Ipv4Addr,
    data: PathBuf,
    log: PathBuf,
    proc: Option<NetnsProcess>,
}

/// What the suite shares across trials.
struct Ctx<'a> {
    topo: &'a Topology,
    tools: &'a Tools,
    spec: &'a FaultsSpec,
    registry: Option<Registry>,
    registry_opts: RegistryOptions,
    image: TestImage,
    old: TestImage,
    expected: PathBuf,
    key: PublisherKey,
    trust_file: PathBuf,
    /// With `--import docker`: one private engine per node slot.
    engines: Vec<crate::engines::Engine>,
    /// The image's config digest (its Docker image id).
    config_digest: String,
}

/// Runs the suite on `topo` (one locality of `spec.nodes` nodes) with the
/// registry `registry` started from `registry_opts` (restarted by registry
/// cuts). `image` is the v1 deployed, `old` the v2 the replayed release
/// pins. Calls `report` after each trial.
#[allow(clippy::too_many_arguments)]
pub fn run_suite(
    topo: &Topology,
    tools: &Tools,
    registry: Registry,
    registry_opts: RegistryOptions,
    image: TestImage,
    old: TestImage,
    spec: &FaultsSpec,
    report: &mut dyn FnMut(&TrialOutcome),
) -> Result<SuiteResult> {
    if spec.nodes < 5 {
        return Err(TestnetError::InvalidSpec(format!(
            "the fault suite needs at least 5 nodes, got {}",
            spec.nodes
        )));
    }
    std::fs::create_dir_all(&spec.work)
        .map_err(|e| TestnetError::io(format!("creating {}", spec.work.display()), e))?;
    let expected = spec.work.join("expected");
    unpack_expected(topo, &image.reference, &spec.work, &expected)?;
    let key = PublisherKey::generate(&mut ChaCha8Rng::seed_from_u64(spec.seed));
    let trust_file = spec.work.join("publisher.pub");
    std::fs::write(&trust_file, key.public().to_file_contents())
        .map_err(|e| TestnetError::io("writing the publisher key", e))?;
    let config_digest = config_digest(topo, &image.reference)?;
    let mut engines = Vec::new();
    if spec.import == ImportMode::Docker {
        let name = &topo.state().name;
        for i in 0..spec.nodes {
            let root = spec.work.join("docker");
            let engine = crate::engines::Engine::start(
                name,
                i,
                &root.join(format!("n{i}")),
                &root.join(format!("n{i}.log")),
            )?;
            engine.reset(&image.reference)?;
            engines.push(engine);
        }
    }
    let mut ctx = Ctx {
        topo,
        tools,
        spec,
        registry: Some(registry),
        registry_opts,
        image,
        old,
        expected,
        key,
        trust_file,
        engines,
        config_digest,
    };
    let started = Instant::now();
    let t1_seconds = ctx.lone_run()?;
    tracing::info!(t1_seconds, "T(1) measured");
    let mut trials = Vec::with_capacity(spec.trials);
    for i in 0..spec.trials {
        if spec.budget.is_some_and(|b| started.elapsed() >= b) {
            tracing::warn!(
                ran = i,
                of = spec.trials,
                "time budget spent; no more trials"
            );
            break;
        }
        let plan = TrialPlan::random(
            spec.seed.wrapping_add(i as u64),
            spec.nodes,
            spec.registry_cut,
        );
        let outcome = ctx.trial(i, plan)?;
        report(&outcome);
        trials.push(outcome);
    }
    Ok(SuiteResult {
        image: ctx.image,
        t1_seconds,
        trials,
    })
}

/// Pulls `reference` with skopeo (from node 0's namespace, before any
/// trial) and unpacks it with umoci into `dest/rootfs`... then renames the
/// rootfs to `dest`: the tree every node's import must equal.
fn unpack_expected(topo: &Topology, reference: &str, work: &Path, dest: &Path) -> Result<()> {
    crate::cmd::require("skopeo", "apt-get install skopeo")?;
    crate::cmd::require("umoci", "apt-get install umoci")?;
    let layout = work.join("expected-oci");
    let bundle = work.join("expected-bundle");
    for p in [&layout, &bundle, &dest.to_path_buf()] {
        let _ = std::fs::remove_dir_all(p);
    }
    let ns = topo.node(0, 0)?.ns.clone();
    let oci = format!("oci:{}:v1", layout.display());
    let out = topo.exec_output(
        &ns,
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &oci,
        ],
    )?;
    if !out.status.success() {
        return Err(TestnetError::Experiment(format!(
            "skopeo copy {reference}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let image = format!("{}:v1", layout.display());
    let bundle_s = bundle.display().to_string();
    let out = crate::cmd::output("umoci", &["unpack", "--image", &image, &bundle_s])?;
    if !out.status.success() {
        return Err(TestnetError::Experiment(format!(
            "umoci unpack: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(bundle.join("rootfs"), dest)
        .map_err(|e| TestnetError::io("moving the expected rootfs", e))?;
    let _ = std::fs::remove_dir_all(&bundle);
    let _ = std::fs::remove_dir_all(&layout);
    Ok(())
}

/// The config digest of `reference`'s manifest, read with skopeo from node
/// 0's namespace (before any trial): the image id Docker must show.
fn config_digest(topo: &Topology, reference: &str) -> Result<String> {
    let ns = topo.node(0, 0)?.ns.clone();
    let out = topo.exec_output(
        &ns,
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    )?;
    if !out.status.success() {
        return Err(TestnetError::Experiment(format!(
            "skopeo inspect {reference}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| TestnetError::Experiment(format!("manifest of {reference}: {e}")))?;
    manifest["config"]["digest"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| TestnetError::Experiment(format!("{reference}: no config digest")))
}

/// Seconds since `t0`.
fn since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

impl Ctx<'_> {
    fn slots(&self, dir: &Path) -> Result<Vec<Slot>> {
        let loc = self.topo.locality(0)?;
        Ok(loc
            .nodes
            .iter()
            .map(|n| Slot {
                ns: n.ns.clone(),
                addr: n.addr,
                data: dir.join(format!("n{}", n.index)),
                log: dir.join(format!("n{}.log", n.index)),
                proc: None,
            })
            .collect())
    }

    /// Starts node `i` (node 0 the gateway; others bootstrap from `boot`).
    fn start(&self, slots: &mut [Slot], i: usize, boot: Option<&str>) -> Result<()> {
        let s = &slots[i];
        let log = format!("{},edgeswarm_node::store=debug", self.spec.node_log);
        let mut spec = SpawnSpec::new(self.tools.edgeswarm.clone(), s.log.clone())
            .env("RUST_LOG", log)
            .env("NO_COLOR", "1")
            .args([
                "node".to_string(),
                "--data-dir".into(),
                s.data.display().to_string(),
                "--locality".into(),
                LOCALITY.into(),
                "--listen".into(),
                format!("/ip4/{}/tcp/{P2P_PORT}", s.addr),
                "--api".into(),
                api_addr(s.addr).to_string(),
                "--import".into(),
                self.spec.import.name().into(),
                "--trust".into(),
                self.trust_file.display().to_string(),
                // As in `experiment`: the namespaces reach nothing but
                // each other, and the trials measure convergence, not
                // membership.
                "--open-locality".into(),
            ]);
        if let Some(engine) = self.engines.get(i) {
            spec = spec.env("DOCKER_HOST", engine.host());
        }
        if i == 0 {
            let host = self.registry_host();
            spec = spec.args(["--gateway", "--insecure-registry", &host]);
        } else if let Some(b) = boot {
            spec = spec.args(["--bootstrap", b]);
        }
        let p = self.topo.spawn(&s.ns, spec)?;
        slots[i].proc = Some(p);
        Ok(())
    }

    fn registry_host(&self) -> String {
        format!("{}:{}", self.topo.cloud().addr, self.registry_opts.port)
    }

    /// One status line per slot (`up: false` for nodes not running or not
    /// answering), polled from the router namespace.
    fn poll(&self, slots: &[Slot]) -> Result<Vec<WatchLine>> {
        let loc = self.topo.locality(0)?;
        let mut cmd = self.topo.command(&loc.router_ns, &self.tools.testnet)?;
        cmd.args(["helper", "status", "--image", &self.image.reference]);
        for s in slots {
            cmd.arg("--api").arg(api_addr(s.addr).to_string());
        }
        let out = run_bounded(cmd, Duration::from_secs(10), "helper status")?;
        let mut lines: Vec<WatchLine> = (0..slots.len())
            .map(|node| WatchLine {
                node,
                ..WatchLine::default()
            })
            .collect();
        for l in String::from_utf8_lossy(&out).lines() {
            if let Ok(w) = serde_json::from_str::<WatchLine>(l) {
                if w.node < lines.len() {
                    let i = w.node;
                    lines[i] = w;
                }
            }
        }
        for (l, s) in lines.iter_mut().zip(slots) {
            if s.proc.is_none() {
                *l = WatchLine {
                    node: l.node,
                    ..WatchLine::default()
                };
            }
        }
        Ok(lines)
    }

    /// Starts node 0 and waits for its peer id; returns the bootstrap
    /// address of it.
    fn start_gateway(&self, slots: &mut [Slot]) -> Result<String> {
        self.start(slots, 0, None)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            check_running(slots)?;
            let l = self.poll(&slots[..1])?;
            if l[0].up && !l[0].peer_id.is_empty() {
                return Ok(format!(
                    "/ip4/{}/tcp/{P2P_PORT}/p2p/{}",
                    slots[0].addr, l[0].peer_id
                ));
            }
            if Instant::now() > deadline {
                return Err(TestnetError::Timeout {
                    what: format!(
                        "the gateway's API; log: {}",
                        slots[0]
                            .proc
                            .as_ref()
                            .map(|p| p.log_tail(1500))
                            .unwrap_or_default()
                    ),
                    after: Duration::from_secs(30),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every running node is up with a peer and the gateway
    /// hears all of them.
    fn wait_formed(&self, slots: &mut [Slot]) -> Result<()> {
        let running = slots.iter().filter(|s| s.proc.is_some()).count();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            check_running(slots)?;
            let lines = self.poll(slots)?;
            let ok = lines
                .iter()
                .zip(slots.iter())
                .filter(|(_, s)| s.proc.is_some())
                .all(|(l, _)| l.up && (running == 1 || l.peers >= 1))
                && lines[0].seen + 1 >= running;
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestnetError::Timeout {
                    what: "the locality forming".into(),
                    after: Duration::from_secs(60),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Signs a release of `image` pinning `manifest` at sequence `seq`.
    fn sign(&self, manifest: &str, seq: u64, created: u64) -> Result<String> {
        let manifest: Digest = manifest.parse().map_err(|e| {
            TestnetError::Experiment(format!("bad manifest digest {manifest:?}: {e}"))
        })?;
        let release = Release {
            image: self.image.reference.clone(),
            manifest,
            platform: Platform::new("linux", oci_arch()),
            created,
            locality: LOCALITY.into(),
            selector: vec![],
            seq,
        };
        let signed = SignedRelease::sign(release, &self.key);
        Ok(base64::engine::general_purpose::STANDARD.encode(signed.encode()))
    }

    /// POSTs a signed release to node `i`'s API from its namespace;
    /// returns (HTTP status, body).
    fn publish(&self, slots: &[Slot], i: usize, release: &str) -> Result<(u16, String)> {
        let s = &slots[i];
        let token = std::fs::read_to_string(s.data.join(NODE_TOKEN_FILE))
            .map_err(|e| TestnetError::io("reading a node's API token", e))?;
        let body_file = s.data.with_extension("release.json");
        std::fs::write(
            &body_file,
            serde_json::json!({ "release": release }).to_string(),
        )
        .map_err(|e| TestnetError::io("writing a release body", e))?;
        let url = format!("http://{}/v1/releases", api_addr(s.addr));
        let auth = format!("Authorization: Bearer {}", token.trim());
        let data = format!("@{}", body_file.display());
        let out = self.topo.exec_output(
            &s.ns,
            "curl",
            &[
                "-s",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &data,
                &url,
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        Ok((code.trim().parse().unwrap_or(0), body.to_string()))
    }

    /// T(1): node 0 alone, a clean deploy.
    fn lone_run(&self) -> Result<f64> {
        let dir = self.spec.work.join("t1");
        let _ = std::fs::remove_dir_all(&dir);
        let mut slots = self.slots(&dir)?;
        slots.truncate(1);
        self.start_gateway(&mut slots)?;
        let release = self.sign(&self.image.manifest, 1, unix_now())?;
        let t0 = Instant::now();
        let (code, body) = self.publish(&slots, 0, &release)?;
        if code != 200 {
            return Err(TestnetError::Experiment(format!(
                "the T(1) deploy was refused ({code}): {body}"
            )));
        }
        let deadline = t0 + Duration::from_secs(120);
        loop {
            check_running(&mut slots)?;
            let l = self.poll(&slots)?;
            if l[0].state == "done" {
                let t = since(t0);
                stop_all(&mut slots);
                let _ = std::fs::remove_dir_all(&dir);
                if let Some(engine) = self.engines.first() {
                    engine.reset(&self.image.reference)?;
                }
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err(TestnetError::Timeout {
                    what: "the T(1) deploy".into(),
                    after: Duration::from_secs(120),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cut_registry(&mut self, mode: CutMode) -> Result<()> {
        match mode {
            CutMode::Stop => {
                if let Some(mut r) = self.registry.take() {
                    kill9(r.process());
                }
            }
            CutMode::Link => {
                let l = self.topo.locality(0)?.cloud_link.clone();
                crate::cmd::run("ip", &["-n", &l.ns, "link", "set", "dev", &l.name, "down"])?;
            }
        }
        Ok(())
    }

    fn heal_registry(&mut self, mode: CutMode) -> Result<()> {
        match mode {
            CutMode::Stop => {
                if self.registry.is_none() {
                    let mut r = Registry::start(self.topo, self.registry_opts.clone())?;
                    let ns = self.topo.locality(0)?.router_ns.clone();
                    r.wait_ready(self.topo, &ns, Duration::from_secs(20))?;
                    self.registry = Some(r);
                }
            }
            CutMode::Link => {
                let l = self.topo.locality(0)?.cloud_link.clone();
                crate::cmd::run("ip", &["-n", &l.ns, "link", "set", "dev", &l.name, "up"])?;
            }
        }
        Ok(())
    }

    fn bounce(&self, node: usize, up: bool) -> Result<()> {
        let port = self.topo.node(0, node)?.bridge_port.clone();
        let state = if up { "up" } else { "down" };
        crate::cmd::run(
            "ip",
            &["-n", &port.ns, "link", "set", "dev", &port.name, state],
        )
        .map(drop)
    }

    /// One trial; an `Err` is a failure of the suite itself (the testnet
    /// broke), not of the node.
    fn trial(&mut self, index: usize, plan: TrialPlan) -> Result<TrialOutcome> {
        let dir = self.spec.work.join(format!("trial-{index:03}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| TestnetError::io(format!("creating {}", dir.display()), e))?;
        std::fs::write(
            dir.join("plan.json"),
            serde_json::to_string_pretty(&plan).unwrap_or_default(),
        )
        .map_err(|e| TestnetError::io("writing the plan", e))?;
        let mut out = TrialOutcome {
            trial: index,
            plan: plan.clone(),
            injected: Vec::new(),
            converged: false,
            seconds: None,
            corrupt: Vec::new(),
            refetched: Vec::new(),
            duplicates: 0,
            leaks: Vec::new(),
            cloud_bytes: 0,
            cloud_ratio: 0.0,
            late_seconds: None,
            errors: Vec::new(),
        };
        for engine in &self.engines {
            engine.reset(&self.image.reference)?;
        }
        let cloud_link = self.topo.locality(0)?.cloud_link.clone();
        let cloud0 = self.topo.counters(&cloud_link)?;
        let mut slots = self.slots(&dir)?;
        let result = self.drive(&mut slots, &plan, &mut out);
        // Whatever happened: heal the network, stop every node, then look.
        let _ = self.heal_registry(CutMode::Link);
        let _ = self.heal_registry(CutMode::Stop);
        for i in 0..slots.len() {
            let _ = self.bounce(i, true);
        }
        stop_all(&mut slots);
        if let Err(e) = result {
            out.errors.push(e.to_string());
        }
        let cloud1 = self.topo.counters(&cloud_link)?;
        out.cloud_bytes = cloud1.since(&cloud0).tx_bytes;
        out.cloud_ratio = out.cloud_bytes as f64 / self.image.total_bytes as f64;
        let dir_name = edgeswarm_node::import::image_dir_name(&self.image.reference);
        let expect = format!("edgeswarm app {}", self.image.tag);
        for (i, s) in slots.iter().enumerate() {
            match self.engines.get(i) {
                Some(engine) => {
                    let check =
                        engine.check_image(&self.image.reference, &self.config_digest, &expect);
                    if let Err(e) = check {
                        out.corrupt.push(format!("n{i}: {e}"));
                    }
                    out.leaks.extend(
                        engine
                            .helper_tags()?
                            .into_iter()
                            .map(|t| format!("n{i}: docker helper tag {t}")),
                    );
                }
                None => {
                    let rootfs = s.data.join("rootfs").join(&dir_name);
                    if let Err(diff) = compare_trees(&self.expected, &rootfs) {
                        out.corrupt.push(format!("n{i}: {diff}"));
                    }
                }
            }
            let log = std::fs::read_to_string(&s.log).unwrap_or_default();
            let chunks = chunk_log(&log);
            out.duplicates += chunks.already_held;
            out.refetched
                .extend(chunks.stored_twice.iter().map(|c| format!("n{i}: {c}")));
            out.leaks
                .extend(leaks(&s.data).into_iter().map(|l| format!("n{i}: {l}")));
        }
        // Corruption is only meaningful for nodes that claim convergence;
        // a node that never finished is already counted as not converged.
        if !out.converged {
            out.corrupt.clear();
        }
        std::fs::write(
            dir.join("outcome.json"),
            serde_json::to_string_pretty(&out).unwrap_or_default(),
        )
        .map_err(|e| TestnetError::io("writing the outcome", e))?;
        if out.passed() && !self.spec.keep_all {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(out)
    }

    /// Runs the deploy with the plan's faults until every node is done or
    /// the bound passes.
    fn drive(
        &mut self,
        slots: &mut [Slot],
        plan: &TrialPlan,
        out: &mut TrialOutcome,
    ) -> Result<()> {
        let n = slots.len();
        let boot = self.start_gateway(slots)?;
        for i in 1..n {
            if Some(i) != plan.late {
                self.start(slots, i, Some(&boot))?;
            }
        }
        self.wait_formed(slots)?;
        let created = unix_now();
        let release = self.sign(&self.image.manifest, 2, created)?;
        // Older: a lower sequence (and an earlier clock), another manifest.
        let replay = self.sign(&self.old.manifest, 1, created.saturating_sub(3600))?;
        let t0 = Instant::now();
        let (code, body) = self.publish(slots, 0, &release)?;
        if code != 200 {
            out.errors
                .push(format!("deploy refused ({code}): {}", body.trim()));
            return Ok(());
        }
        #[derive(Debug)]
        enum Act {
            Kill(usize, &'static str, f64),
            KillWhenImporting(usize, f64),
            Start(usize),
            Cut(CutMode, f64),
            Heal(CutMode),
            Down(usize, f64),
            Up(usize),
            Replay(usize),
        }
        let mut pending: Vec<(f64, Act)> = plan
            .faults
            .iter()
            .map(|f| match *f {
                Fault::KillGateway { at, restart_after } => {
                    (at, Act::Kill(0, f.name(), restart_after))
                }
                Fault::KillTransfer {
                    node,
                    at,
                    restart_after,
                } => (at, Act::Kill(node, f.name(), restart_after)),
                Fault::KillImport {
                    node,
                    restart_after,
                } => (0.0, Act::KillWhenImporting(node, restart_after)),
                Fault::RegistryCut { at, secs, mode } => (at, Act::Cut(mode, secs)),
                Fault::LinkBounce { node, at, secs } => (at, Act::Down(node, secs)),
                Fault::Replay { node, at } => (at, Act::Replay(node)),
            })
            .collect();
        let bound = self.spec.trial_timeout + self.spec.registry_cut;
        let online: Vec<usize> = (0..n).filter(|&i| Some(i) != plan.late).collect();
        let mut last = self.poll(slots)?;
        loop {
            let now = since(t0);
            let mut keep = Vec::new();
            for (due, act) in std::mem::take(&mut pending) {
                match act {
                    Act::KillWhenImporting(i, restart) => {
                        let l = &last[i];
                        let late_import = l.state == "importing"
                            || (l.state == "fetching"
                                && l.bytes_total > 0
                                && l.bytes_done * 10 >= l.bytes_total * 9);
                        if late_import && slots[i].proc.is_some() {
                            out.injected.push(Injected {
                                fault: "kill-import",
                                node: Some(i),
                                at: now,
                                state: format!("{} {}/{}", l.state, l.bytes_done, l.bytes_total),
                            });
                            kill9_slot(&mut slots[i]);
                            keep.push((now + restart, Act::Start(i)));
                        } else if l.state == "done" || slots[i].proc.is_none() {
                            out.injected.push(Injected {
                                fault: "kill-import",
                                node: Some(i),
                                at: now,
                                state: "missed".into(),
                            });
                        } else {
                            keep.push((due, Act::KillWhenImporting(i, restart)));
                        }
                    }
                    act if due > now => keep.push((due, act)),
                    Act::Kill(i, kind, restart) => {
                        let l = &last[i];
                        out.injected.push(Injected {
                            fault: kind,
                            node: Some(i),
                            at: now,
                            state: if slots[i].proc.is_some() {
                                format!("{} {}/{}", l.state, l.bytes_done, l.bytes_total)
                            } else {
                                "missed".into()
                            },
                        });
                        if slots[i].proc.is_some() {
                            kill9_slot(&mut slots[i]);
                            keep.push((now + restart, Act::Start(i)));
                        }
                    }
                    Act::Start(i) => {
                        if slots[i].proc.is_none() {
                            self.start(slots, i, Some(&boot))?;
                        }
                    }
                    Act::Cut(mode, secs) => {
                        let state = &last[0].state;
                        out.injected.push(Injected {
                            fault: "registry-cut",
                            node: None,
                            at: now,
                            state: format!(
                                "{mode:?} gateway {state} {}/{}",
                                last[0].bytes_done, last[0].bytes_total
                            ),
                        });
                        self.cut_registry(mode)?;
                        keep.push((now + secs, Act::Heal(mode)));
                    }
                    Act::Heal(mode) => self.heal_registry(mode)?,
                    Act::Down(i, secs) => {
                        let l = &last[i];
                        out.injected.push(Injected {
                            fault: "link-bounce",
                            node: Some(i),
                            at: now,
                            state: format!("{} {}/{}", l.state, l.bytes_done, l.bytes_total),
                        });
                        self.bounce(i, false)?;
                        keep.push((now + secs, Act::Up(i)));
                    }
                    Act::Up(i) => self.bounce(i, true)?,
                    Act::Replay(i) => {
                        if slots[i].proc.is_none() || !last[i].up {
                            // A killed or unreachable node cannot be sent
                            // anything; try again a little later.
                            keep.push((now + 0.5, Act::Replay(i)));
                            continue;
                        }
                        let (code, body) = self.publish(slots, i, &replay)?;
                        out.injected.push(Injected {
                            fault: "replay",
                            node: Some(i),
                            at: now,
                            state: format!("{code} {}", body.trim()),
                        });
                        if code == 200 || !body.contains("refused") {
                            out.errors.push(format!(
                                "replay to n{i} not refused ({code}): {}",
                                body.trim()
                            ));
                        }
                    }
                }
            }
            pending = keep;
            check_running(slots)?;
            last = self.poll(slots)?;
            let done = online.iter().all(|&i| last[i].state == "done");
            if done && pending.is_empty() {
                out.converged = plan.late.is_none();
                out.seconds = Some(since(t0));
                break;
            }
            if now > bound.as_secs_f64() {
                let states: Vec<String> = last
                    .iter()
                    .map(|l| {
                        format!(
                            "n{} {:?} {}/{}",
                            l.node, l.state, l.bytes_done, l.bytes_total
                        )
                    })
                    .collect();
                out.errors.push(format!(
                    "not converged after {:.0} s: {}",
                    now,
                    states.join(", ")
                ));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(late) = plan.late {
            self.start(slots, late, Some(&boot))?;
            let started = Instant::now();
            let deadline = started + self.spec.trial_timeout;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let l = self.poll(&slots[late..=late])?;
                if l[0].state == "done" {
                    out.late_seconds = Some(since(started));
                    out.converged = true;
                    break;
                }
                if Instant::now() > deadline {
                    out.errors.push(format!(
                        "late joiner n{late} not done {:.0} s after its start ({:?} {}/{})",
                        since(started),
                        l[0].state,
                        l[0].bytes_done,
                        l[0].bytes_total
                    ));
                    break;
                }
            }
        }
        Ok(())
    }
}

/// This machine's architecture as OCI names it (the test images are
/// built from this machine's files).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// kill -9 of a process group, then reap it.
fn kill9(p: &mut NetnsProcess) {
    let group = format!("-{}", p.pid());
    let _ = crate::cmd::output("kill", &["-s", "KILL", "--", &group]);
    let _ = p.wait_timeout(Duration::from_secs(5));
}

fn kill9_slot(s: &mut Slot) {
    if let Some(mut p) = s.proc.take() {
        kill9(&mut p);
    }
}

/// Graceful stop (TERM, 10 s, then KILL) of every running node.
fn stop_all(slots: &mut [Slot]) {
    for s in slots.iter_mut() {
        if let Some(mut p) = s.proc.take() {
            if let Err(e) = p.terminate(Duration::from_secs(10)) {
                tracing::warn!(error = %e, "stopping a node");
            }
        }
    }
}

/// Fails when a node the suite started has exited on its own (a crash
/// of the node is a finding, not a fault the suite injected).
fn check_running(slots: &mut [Slot]) -> Result<()> {
    for (i, s) in slots.iter_mut().enumerate() {
        if let Some(p) = &mut s.proc {
            if let Some(status) = p.try_wait()? {
                return Err(TestnetError::Experiment(format!(
                    "node {i} exited by itself ({status}); log tail: {}",
                    p.log_tail(1500)
                )));
            }
        }
    }
    Ok(())
}

/// Runs `cmd` with stdout piped, killing it after `limit`.
fn run_bounded(mut cmd: std::process::Command, limit: Duration, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| TestnetError::io(format!("running {what}"), e))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestnetError::Timeout {
                    what: what.to_string(),
                    after: limit,
                });
            }
        }
    }
    Ok(reader.join().unwrap_or_default())
}

/// What a node's log says about the chunks it stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkLog {
    /// Chunks stored (verified and journaled), counted once.
    pub stored: usize,
    /// `blob index` of chunks stored more than once.
    pub stored_twice: Vec<String>,
    /// Chunks received while already held.
    pub already_held: u64,
}

/// Reads the store's `chunk stored` and `chunk already held` debug lines
/// (ANSI colours tolerated).
pub fn chunk_log(log: &str) -> ChunkLog {
    let mut seen: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut out = ChunkLog::default();
    for line in log.lines() {
        let stored = line.contains("chunk stored");
        let held = line.contains("chunk already held");
        if !stored && !held {
            continue;
        }
        if held {
            out.already_held += 1;
            continue;
        }
        let clean = strip_ansi(line);
        let field = |name: &str| {
            clean
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
        };
        if let (Some(blob), Some(index)) = (field("blob="), field("index=")) {
            *seen.entry((blob, index)).or_default() += 1;
        }
    }
    out.stored = seen.len();
    out.stored_twice = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((b, i), n)| format!("{b} {i} stored {n} times"))
        .collect();
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Leftovers in a stopped node's data dir: `.import-*`, `.link-*` and
/// `*.tmp-*` entries (outside image trees), partial blobs, and more
/// unreferenced rootfs versions than published links (one previous
/// generation per image is kept by design).
pub fn leaks(data: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![data.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let rel = path
                .strip_prefix(data)
                .unwrap_or(&path)
                .display()
                .to_string();
            if name.starts_with(".import-") || name.starts_with(".link-") || name.contains(".tmp-")
            {
                found.push(rel);
                continue;
            }
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir {
                continue;
            }
            if name == "partial" {
                if let Ok(rd) = std::fs::read_dir(&path) {
                    for p in rd.flatten() {
                        found.push(format!("{rel}/{}", p.file_name().to_string_lossy()));
                    }
                }
                continue;
            }
            if name == ".versions" {
                let parent = path.parent().unwrap_or(data);
                let links = std::fs::read_dir(parent)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|x| x.file_type().is_ok_and(|t| t.is_symlink()))
                            .filter_map(|x| std::fs::read_link(x.path()).ok())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                let versions: Vec<String> = std::fs::read_dir(&path)
                    .map(|rd| {
                        rd.flatten()
                            .map(|x| x.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let unreferenced: Vec<&String> = versions
                    .iter()
                    .filter(|v| !links.iter().any(|l| l.ends_with(v.as_str())))
                    .collect();
                if unreferenced.len() > links.len() {
                    found.push(format!(
                        "{rel}: {} unreferenced versions for {} links",
                        unreferenced.len(),
                        links.len()
                    ));
                }
                // Image trees are the image's business, not leftovers.
                continue;
            }
            stack.push(path);
        }
    }
    found.sort();
    found
}

/// Compares two trees file by file: kind, permission bits, file bytes,
/// symlink targets; `actual` may be a symlink to the tree. Returns the
/// first differences (at most 5) as one line.
pub fn compare_trees(expected: &Path, actual: &Path) -> std::result::Result<(), String> {
    let actual = std::fs::canonicalize(actual).map_err(|e| format!("{}: {e}", actual.display()))?;
    let a = walk(expected).map_err(|e| format!("reading {}: {e}", expected.display()))?;
    let b = walk(&actual).map_err(|e| format!("reading {}: {e}", actual.display()))?;
    let mut diffs = Vec::new();
    for (path, ea) in &a {
        match b.get(path) {
            None => diffs.push(format!("{path} missing")),
            Some(eb) if ea.kind != eb.kind => {
                diffs.push(format!("{path} is a {} not a {}", eb.kind, ea.kind))
            }
            Some(eb) if ea.mode != eb.mode => {
                diffs.push(format!("{path} mode {:o} not {:o}", eb.mode, ea.mode))
            }
            Some(eb) if ea.target != eb.target => diffs.push(format!(
                "{path} links to {:?} not {:?}",
                eb.target, ea.target
            )),
            Some(_) if ea.kind == "file" => {
                let x = std::fs::read(expected.join(path));
                let y = std::fs::read(actual.join(path));
                match (x, y) {
                    (Ok(x), Ok(y)) if x == y => {}
                    (Ok(x), Ok(y)) => diffs.push(format!(
                        "{path} differs ({} bytes, expected {})",
                        y.len(),
                        x.len()
                    )),
                    (_, Err(e)) | (Err(e), _) => diffs.push(format!("{path}: {e}")),
                }
            }
            Some(_) => {}
        }
        if diffs.len() >= 5 {
            break;
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)).take(5) {
        diffs.push(format!("{path} extra"));
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        diffs.truncate(5);
        Err(diffs.join("; "))
    }
}

#[derive(Debug, PartialEq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    target: Option<PathBuf>,
}

fn walk(root: &Path) -> std::io::Result<BTreeMap<String, Entry>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let md = std::fs::symlink_metadata(e.path())?;
            let ft = md.file_type();
            let (kind, target) = if ft.is_symlink() {
                ("symlink", Some(std::fs::read_link(e.path())?))
            } else if ft.is_dir() {
                stack.push(rel.clone());
                ("dir", None)
            } else if ft.is_file() {
                ("file", None)
            } else {
                ("special", None)
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                md.permissions().mode() & 0o7777
            };
            out.insert(rel.display().to_string(), Entry { kind, mode, target });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_reproducible_and_varied() {
        let cut = Duration::from_secs(60);
        assert_eq!(TrialPlan::random(7, 5, cut), TrialPlan::random(7, 5, cut));
        let plans: Vec<TrialPlan> = (0..100).map(|s| TrialPlan::random(s, 5, cut)).collect();
        let mut kinds = std::collections::BTreeSet::new();
        for p in &plans {
            assert!(p.faults.len() + usize::from(p.late.is_some()) >= 2, "{p:?}");
            for f in &p.faults {
                kinds.insert(f.name());
                if let Fault::KillTransfer { node, .. } | Fault::KillImport { node, .. } = f {
                    assert!(*node != 0 && Some(*node) != p.late, "{p:?}");
                }
            }
        }
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        assert!(plans.iter().filter(|p| p.late.is_some()).count() > 20);
    }

    #[test]
    fn a_chunk_stored_twice_is_found_and_duplicates_are_counted() {
        let log = "\
2026-11-30T15:00:00Z DEBUG edgeswarm_node::store: chunk stored blob=sha256:aa index=0
2026-11-30T15:00:00Z DEBUG edgeswarm_node::store: chunk stored blob=sha256:aa index=1
2026-11-30T15:00:01Z DEBUG edgeswarm_node::store: chunk already held blob=sha256:aa index=1
\u{1b}[2m2026\u{1b}[0m DEBUG edgeswarm_node::store: chunk stored \u{1b}[3mblob\u{1b}[0m\u{1b}[2m=\u{1b}[0msha256:bb \u{1b}[3mindex\u{1b}[0m\u{1b}[2m=\u{1b}[0m0
";
        let c = chunk_log(log);
        assert_eq!(c.stored, 3);
        assert!(c.stored_twice.is_empty());
        assert_eq!(c.already_held, 1);
        let twice =
            format!("{log}x DEBUG edgeswarm_node::store: chunk stored blob=sha256:aa index=1\n");
        let c = chunk_log(&twice);
        assert_eq!(
            c.stored_twice,
            vec!["sha256:aa 1 stored 2 times".to_string()]
        );
    }

    #[test]
    fn trees_differing_in_bytes_mode_links_or_entries_are_reported() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("bin")).unwrap();
            std::fs::write(d.join("bin/sh"), b"#!busybox").unwrap();
            std::os::unix::fs::symlink("sh", d.join("bin/ash")).unwrap();
        }
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(b.path(), link.path().join("img")).unwrap();
        compare_trees(a.path(), &link.path().join("img")).unwrap();

        std::fs::write(b.path().join("bin/sh"), b"#!busyboX").unwrap();
        assert!(compare_trees(a.path(), b.path())
            .unwrap_err()
            .contains("bin/sh differs"));
        std::fs::write(b.path().join("bin/sh"), b"#!busybox").unwrap();
        std::fs::set_permissions(
            b.path().join("bin/sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::set_permissions(
            a.path().join("bin/sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert!(compare_trees(a.path(), b.path())
            .unwrap_err()
            .contains("mode 700"));
        std::fs::set_permissions(
            b.path().join("bin/sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::remove_file(b.path().join("bin/ash")).unwrap();
        std::os::unix::fs::symlink("busybox", b.path().join("bin/ash")).unwrap();
        assert!(compare_trees(a.path(), b.path())
            .unwrap_err()
            .contains("links to"));
        std::fs::remove_file(b.path().join("bin/ash")).unwrap();
        assert!(compare_trees(a.path(), b.path())
            .unwrap_err()
            .contains("bin/ash missing"));
        std::os::unix::fs::symlink("sh", b.path().join("bin/ash")).unwrap();
        std::fs::write(b.path().join("extra"), b"").unwrap();
        assert!(compare_trees(a.path(), b.path())
            .unwrap_err()
            .contains("extra extra"));
    }

    #[test]
    fn leftovers_are_found_outside_image_trees_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir_all(root.join(".versions/img@01/etc")).unwrap();
        std::fs::write(root.join(".versions/img@01/etc/.x.tmp-1-1"), b"").unwrap();
        std::os::unix::fs::symlink(".versions/img@01", root.join("img")).unwrap();
        std::fs::create_dir_all(d.path().join("store/partial")).unwrap();
        std::fs::write(d.path().join(".state.json.tmp-1-2"), b"").unwrap();
        assert_eq!(leaks(d.path()), vec![".state.json.tmp-1-2".to_string()]);
        std::fs::remove_file(d.path().join(".state.json.tmp-1-2")).unwrap();
        assert!(leaks(d.path()).is_empty());
        std::fs::create_dir_all(root.join(".import-abc")).unwrap();
        std::fs::create_dir_all(d.path().join("store/partial/ff")).unwrap();
        std::fs::create_dir_all(root.join(".versions/img@02")).unwrap();
        assert_eq!(
            leaks(d.path()),
            vec![
                "rootfs/.import-abc".to_string(),
                "store/partial/ff".to_string()
            ]
        );
        std::fs::create_dir_all(root.join(".versions/img@03")).unwrap();
        let l = leaks(d.path());
        assert!(
            l.iter()
                .any(|x| x.contains("2 unreferenced versions for 1 links")),
            "{l:?}"
        );
    }
}
