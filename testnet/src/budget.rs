//! `edgeswarm-testnet budget`: one node, and separately the gateway, inside
//! a Raspberry-Pi-class device budget (issue 15): a quarter of one core and
//! 256 MiB in a cgroup of its own, on a locality with 100 Mbit/s node
//! links.
//!
//! # Runs
//! For each image size and each role (`node`: node 1 of a locality whose
//! node 0 is an unbudgeted gateway; `gateway`: node 0, pulling from the
//! registry), one **leaf** run per sink (`--import none`, `dir`, `docker`):
//! the budgeted node only receives. Then one **relay** run (`none`): an
//! unbudgeted peer joins, so the budgeted node also serves chunks. A fresh
//! locality and cgroup per run; the registry and its images persist.
//!
//! # Figures per run
//! - receive and relay rate: Mbit/s over the budgeted node's link between
//!   5 % and 95 % of the bytes it received (sent), from kernel counters
//!   sampled every 100 ms;
//! - time to a usable image: deploy to the node reporting the release done
//!   (`docker`: loaded into the engine and checked with `docker run`);
//! - CPU: the cgroup's CPU time from the deploy to the end of the run, and
//!   the time its quota held it back; per GB received over the link, and
//!   for relay runs per GB relayed beyond the leaf run's cost per GB
//!   received: `(cpu - rx * leaf_cpu_per_rx) / tx`;
//! - memory: the process's peak resident set (`VmHWM`, the issue's "peak
//!   RSS"), the cgroup's peak anonymous memory, and the cgroup's own peak
//!   (page cache included, so near the limit once files outgrow it).
//!
//! The `docker` sink hands layers to dockerd, which runs outside the
//! budget: its CPU and memory are not in the figures.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edgeswarm_testnet::cgroup::{process_written, Budget, Cgroup, Hierarchy, PeakWatch, Usage};
use edgeswarm_testnet::experiment::{self, Progress, RunSpec};
use edgeswarm_testnet::images::TestImage;
use edgeswarm_testnet::measure;

use crate::bin_cmds::docker;
use crate::bin_cmds::{locality, print_images, tools, Shaping};
use crate::BudgetArgs;

/// Share of the received (sent) bytes at which the rate window opens and
/// closes.
const RATE_WINDOW: (f64, f64) = (0.05, 0.95);

/// Below this many bytes sent, a node relayed nothing worth a rate.
const MIN_RELAY_BYTES: u64 = 2_000_000;

/// An interval carrying less than this is a pause, not a slow receiver.
const ACTIVE_FLOOR_MBIT: f64 = 10.0;

/// The targets.
const TARGET_RX_MBIT: f64 = 90.0;
const TARGET_RSS_BYTES: u64 = 64 << 20;

/// Which node is budgeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A plain node fed by an unbudgeted gateway.
    Node,
    /// The gateway itself, pulling from the registry.
    Gateway,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "node" => Ok(Role::Node),
            "gateway" => Ok(Role::Gateway),
            other => Err(format!("unknown role {other:?} (use node, gateway)")),
        }
    }
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Gateway => "gateway",
        }
    }

    /// The budgeted node's index.
    fn subject(self) -> usize {
        match self {
            Role::Node => 1,
            Role::Gateway => 0,
        }
    }
}

/// One run's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    size_mb: u64,
    role: Role,
    /// An unbudgeted peer also fetches (the budgeted node relays).
    relay: bool,
    import: &'static str,
}

impl Plan {
    /// Nodes in the run's locality: the gateway, the budgeted node when it
    /// is not the gateway, and the relay run's peer.
    fn nodes(&self) -> usize {
        1 + usize::from(self.role == Role::Node) + usize::from(self.relay)
    }

    fn label(&self) -> String {
        format!(
            "{}mb-{}-{}-{}",
            self.size_mb,
            self.role.name(),
            if self.relay { "relay" } else { "leaf" },
            self.import
        )
    }
}

/// The runs of a benchmark, in order: per size and role, the leaf runs of
/// every sink, then the relay run.
pub(crate) fn plan(
    sizes: &[u64],
    roles: &[Role],
    imports: &[&'static str],
    relay: bool,
) -> Vec<Plan> {
    let mut v = Vec::new();
    for &size_mb in sizes {
        for &role in roles {
            for &import in imports {
                v.push(Plan {
                    size_mb,
                    role,
                    relay: false,
                    import,
                });
            }
            if relay {
                v.push(Plan {
                    size_mb,
                    role,
                    relay: true,
                    import: "none",
                });
            }
        }
    }
    v
}

/// One run's figures.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    plan: Plan,
    image_bytes: u64,
    seconds: Option<f64>,
    rx_bytes: u64,
    tx_bytes: u64,
    rx_mbit: Option<f64>,
    tx_mbit: Option<f64>,
    /// Receive rate over the 100 ms intervals that carried at least
    /// [`ACTIVE_FLOOR_MBIT`]: whether the node kept up while bytes came.
    rx_active_mbit: Option<f64>,
    usage: Usage,
    vm_hwm: u64,
    anon_peak: u64,
    /// Bytes the budgeted node caused to be written to storage (its store,
    /// and the files of a `dir` or `oci` sink), `/proc/PID/io`.
    written_node: u64,
    /// The same for dockerd over the run (the `docker` sink's layers, as
    /// dockerd spools and extracts them); `None` for other sinks.
    written_engine: Option<u64>,
    usable: bool,
}

impl Outcome {
    fn cpu_per_gb_rx(&self) -> Option<f64> {
        (self.rx_bytes > 0).then(|| self.usage.cpu_seconds / (self.rx_bytes as f64 / 1e9))
    }

    /// Bytes written to storage (the node's, and dockerd's for the `docker`
    /// sink) per byte of the image's layers (compressed, as transferred).
    fn written_per_image_byte(&self) -> f64 {
        (self.written_node + self.written_engine.unwrap_or(0)) as f64
            / self.image_bytes.max(1) as f64
    }
}

/// dockerd's pid, from the pid file it writes by default.
fn dockerd_pid() -> Option<u32> {
    std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// CPU seconds per GB relayed of a relay run, beyond what receiving cost
/// in the leaf run of the same size, role and sink: `None` without such a
/// leaf run or without relayed bytes.
pub(crate) fn cpu_per_gb_relayed(relay: &Outcome, all: &[Outcome]) -> Option<f64> {
    if !relay.plan.relay {
        return None;
    }
    let leaf = all.iter().find(|o| {
        !o.plan.relay
            && o.plan.size_mb == relay.plan.size_mb
            && o.plan.role == relay.plan.role
            && o.plan.import == relay.plan.import
    })?;
    let per_rx = leaf.usage.cpu_seconds / leaf.rx_bytes.max(1) as f64;
    (relay.tx_bytes >= MIN_RELAY_BYTES).then(|| {
        (relay.usage.cpu_seconds - per_rx * relay.rx_bytes as f64).max(0.0)
            / (relay.tx_bytes as f64 / 1e9)
    })
}

fn sink(name: &str) -> Result<&'static str> {
    Ok(match name {
        "none" => "none",
        "dir" => "dir",
        "docker" => "docker",
        other => bail!("unknown sink {other:?} (use none, dir, docker)"),
    })
}

fn remove_from_docker(reference: &str) -> Result<()> {
    if docker(&["image", "inspect", "--format", "{{.Id}}", reference]).is_ok() {
        docker(&["rmi", "-f", reference])?;
    }
    Ok(())
}

pub(crate) fn budget_cmd(a: BudgetArgs) -> Result<()> {
    let tools = tools(a.edgeswarm.clone())?;
    let budget = Budget::new(a.cpus, a.memory_mib << 20)?;
    let hierarchy = Hierarchy::detect()?;
    let imports: Vec<&'static str> = a.imports.iter().map(|s| sink(s)).collect::<Result<_>>()?;
    let roles: Vec<Role> = a
        .roles
        .iter()
        .map(|r| r.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    anyhow::ensure!(!a.sizes.is_empty() && !roles.is_empty(), "nothing to run");
    if imports.contains(&"docker") {
        docker(&["version", "--format", "{{.Server.Version}}"]).context(
            "the docker sink needs a Docker engine (scripts/start-dockerd.sh starts one)",
        )?;
    }
    let plans = plan(&a.sizes, &roles, &imports, !a.no_relay);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::path::absolute(&a.out)?;
    std::fs::create_dir_all(out.join("registry/storage"))?;
    let shaping = Shaping {
        cloud_rate: a.cloud_rate,
        node_rate: a.node_rate,
        queue_ms: a.queue_ms,
        burst: None,
        congestion_control: None,
    };
    eprintln!(
        "== device budget: {:.2} cores ({} of {} us), {} MiB, cgroup {}; {} runs",
        budget.cores(),
        budget.cpu_quota_us,
        budget.cpu_period_us,
        a.memory_mib,
        hierarchy.version(),
        plans.len()
    );
    let mut images: Vec<TestImage> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for p in &plans {
        match run_one(
            &a,
            &tools,
            budget,
            &hierarchy,
            shaping,
            &out,
            p,
            &mut images,
        ) {
            Ok(o) => {
                eprintln!("   {}", line(&o, &outcomes));
                outcomes.push(o);
            }
            // One failed run (a timeout, a node exiting) costs its figures,
            // not the others'.
            Err(e) => eprintln!("   {} FAILED: {e:#}", p.label()),
        }
        // Written after every run: a benchmark cut short keeps its figures.
        std::fs::write(out.join("budget.csv"), csv(&outcomes))?;
    }
    let summary = summary(&a, budget, &hierarchy, &images, &outcomes);
    println!("{summary}");
    std::fs::write(out.join("summary.md"), &summary)?;
    std::fs::write(out.join("budget.csv"), csv(&outcomes))?;
    eprintln!("wrote {}/summary.md and budget.csv", out.display());
    Ok(())
}

/// One run: a fresh locality and budget cgroup, the deploy, the figures.
#[allow(clippy::too_many_arguments)]
fn run_one(
    a: &BudgetArgs,
    tools: &experiment::Tools,
    budget: Budget,
    hierarchy: &Hierarchy,
    shaping: Shaping,
    out: &std::path::Path,
    p: &Plan,
    images: &mut Vec<TestImage>,
) -> Result<Outcome> {
    let (topo, mut reg) = locality(
        "budget",
        p.nodes(),
        shaping,
        &out.join("registry/storage"),
        &out.join("registry"),
    )?;
    if images.is_empty() {
        eprintln!("   building and pushing the {:?} MB images", a.sizes);
        *images =
            experiment::push_images(&topo, tools, &reg.host(), &a.sizes, false, a.layout, out)?;
        print_images(images);
    }
    let image = images
        .iter()
        .find(|i| i.nominal_mb == p.size_mb && i.tag == "v1")
        .with_context(|| format!("no {} MB image was pushed", p.size_mb))?
        .clone();
    if p.import == "docker" {
        remove_from_docker(&image.reference)?;
    }
    let cgroup = Cgroup::create(hierarchy, "edgeswarm-budget", budget)?;
    let spec = RunSpec {
        image: image.reference.clone(),
        work: out.join(p.label()),
        timeout: Duration::from_secs(a.timeout),
        sample_interval: Duration::from_millis(100),
        rust_log: a.node_log.clone(),
        chunk_size: None,
        pace_percent: experiment::DEFAULT_PACE_PERCENT,
        keep_data: false,
        import: p.import.to_string(),
        registry_pid: Some(reg.process().pid()),
        image_bytes: image.layer_bytes,
        watch_slow: Duration::from_millis(500),
        budgeted: Some((p.role.subject(), cgroup.procs_files())),
        pnet: a.pnet,
    };
    let peaks = PeakWatch::start(&cgroup, Duration::from_millis(100));
    let engine = (p.import == "docker").then(dockerd_pid).flatten();
    let mut at_deploy: Option<Usage> = None;
    let mut engine_at_deploy: Option<u64> = None;
    let mut profiler: Option<Profiler> = None;
    let perf_out = out.join(format!("{}.perf.data", p.label()));
    let r = experiment::run_edgeswarm(&topo, tools, &reg.host(), &spec, &mut |pr| {
        if let Progress::Ready { .. } = pr {
            at_deploy = cgroup.usage().ok();
            engine_at_deploy = engine.and_then(process_written);
            if a.perf {
                profiler = cgroup
                    .pids()
                    .first()
                    .and_then(|&pid| Profiler::start(pid, &perf_out).ok());
            }
        }
    })
    .with_context(|| format!("run {}", p.label()))?;
    let usage = cgroup.usage()?.since(&at_deploy.unwrap_or_default());
    // Before the `docker run` check below, which writes a container layer.
    let written_engine = match (engine.and_then(process_written), engine_at_deploy) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let peaks = peaks.stop();
    drop(profiler);
    drop(cgroup);
    let s = p.role.subject();
    let node = &r.per_node[s];
    let usable = match p.import {
        "docker" => {
            // No network: the image needs none, and a container endpoint on
            // docker0 is not what is measured (it failed here once while
            // the testnet's namespaces came and went).
            let ok = docker(&[
                "run",
                "--rm",
                "--pull",
                "never",
                "--network",
                "none",
                &image.reference,
            ])
            .is_ok();
            remove_from_docker(&image.reference)?;
            ok
        }
        _ => node.verified,
    };
    let label = format!("n0-{s}");
    let o = Outcome {
        plan: *p,
        image_bytes: image.layer_bytes,
        seconds: node.seconds,
        rx_bytes: node.link.into_node,
        tx_bytes: node.link.from_node,
        rx_mbit: measure::series_rate_mbit(
            &r.series,
            &label,
            true,
            RATE_WINDOW.0,
            RATE_WINDOW.1,
            1,
        ),
        tx_mbit: measure::series_rate_mbit(
            &r.series,
            &label,
            false,
            RATE_WINDOW.0,
            RATE_WINDOW.1,
            MIN_RELAY_BYTES,
        ),
        rx_active_mbit: measure::active_rate_mbit(
            &measure::series_samples(&r.series, &label, true),
            ACTIVE_FLOOR_MBIT,
        ),
        usage,
        vm_hwm: peaks.vm_hwm,
        anon_peak: peaks.anon,
        written_node: peaks.written,
        written_engine,
        usable,
    };
    drop(reg);
    topo.down()?;
    Ok(o)
}

/// `perf record` of one process (call graphs), stopped on drop.
struct Profiler(std::process::Child);

impl Profiler {
    fn start(pid: u32, out: &std::path::Path) -> Result<Profiler> {
        let child = Command::new("perf")
            .args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf record (apt-get install linux-perf)")?;
        Ok(Profiler(child))
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        // perf writes its file on SIGINT (its target may be gone already).
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn line(o: &Outcome, before: &[Outcome]) -> String {
    let relay =
        cpu_per_gb_relayed(o, before).map_or(String::new(), |r| format!("  relay {r:.1} s/GB"));
    format!(
        "{:<26} {:>6} s  rx {:>5} Mbit/s (active {:>5})  tx {:>5} Mbit/s  cpu {:>5.2} s (throttled {:>5.1} s, \
         {} s/GB rx){relay}  VmHWM {:.1} MiB  anon {:.1} MiB  cgroup {:.1} MiB  \
         written {:.2}x the image  usable {}",
        o.plan.label(),
        opt(o.seconds, 2),
        opt(o.rx_mbit, 1),
        opt(o.rx_active_mbit, 1),
        opt(o.tx_mbit, 1),
        o.usage.cpu_seconds,
        o.usage.throttled_seconds,
        opt(o.cpu_per_gb_rx(), 1),
        mib(o.vm_hwm),
        mib(o.anon_peak),
        mib(o.usage.memory_peak),
        o.written_per_image_byte(),
        o.usable
    )
}

/// `1.02x (1.02 + 0.00)`: all writes over the image, and the node's and
/// dockerd's parts.
fn written_cell(o: &Outcome) -> String {
    let part = |b: u64| b as f64 / o.image_bytes.max(1) as f64;
    match o.written_engine {
        Some(engine) => format!(
            "{:.2}x ({:.2} + {:.2})",
            o.written_per_image_byte(),
            part(o.written_node),
            part(engine)
        ),
        None => format!("{:.2}x", o.written_per_image_byte()),
    }
}

/// The results CSV: one row per run.
pub(crate) fn csv(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "size_mb,role,shape,import,image_bytes,seconds,rx_bytes,tx_bytes,rx_mbit_s,rx_active_mbit_s,tx_mbit_s,\
         cpu_seconds,throttled_seconds,cpu_s_per_gb_rx,cpu_s_per_gb_relayed,vm_hwm_bytes,\
         anon_peak_bytes,cgroup_peak_bytes,written_node_bytes,written_engine_bytes,usable\n",
    );
    let f = |x: Option<f64>| x.map(|x| format!("{x:.3}")).unwrap_or_default();
    for o in outcomes {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{},{},{},{},{},{},{},{}\n",
            o.plan.size_mb,
            o.plan.role.name(),
            if o.plan.relay { "relay" } else { "leaf" },
            o.plan.import,
            o.image_bytes,
            f(o.seconds),
            o.rx_bytes,
            o.tx_bytes,
            f(o.rx_mbit),
            f(o.rx_active_mbit),
            f(o.tx_mbit),
            o.usage.cpu_seconds,
            o.usage.throttled_seconds,
            f(o.cpu_per_gb_rx()),
            f(cpu_per_gb_relayed(o, outcomes)),
            o.vm_hwm,
            o.anon_peak,
            o.usage.memory_peak,
            o.written_node,
            o.written_engine.map(|w| w.to_string()).unwrap_or_default(),
            o.usable
        ));
    }
    s
}

fn summary(
    a: &BudgetArgs,
    budget: Budget,
    hierarchy: &Hierarchy,
    images: &[TestImage],
    outcomes: &[Outcome],
) -> String {
    let mut s = format!(
        "# Device budget: {:.2} cores, {} MiB (cgroup {})\n\n\
         - links: cloud {}, nodes {} (tc tbf, {} ms queue); uploads paced at {} %; {}\n\
         - images: {}\n\
         - rates: Mbit/s over the budgeted node's link between {:.0} % and {:.0} % of its bytes; \
           `rx active`: over the 100 ms intervals carrying >= {ACTIVE_FLOOR_MBIT} Mbit/s (pauses left out)\n\
         - CPU: the budget cgroup's, deploy to the end of the run; `relay s/GB`: beyond the leaf \
           run's cost per GB received\n\
         - VmHWM: the node's peak resident set; cgroup: the cgroup's peak, page cache included\n\
         - written: bytes written to storage (`/proc/PID/io` `write_bytes` less \
           `cancelled_write_bytes`) by the node, plus dockerd's during the run for the `docker` \
           sink, over the image's compressed layer bytes\n\
         - the `docker` sink's dockerd runs outside the budget\n\n\
         | run | usable after s | rx Mbit/s | rx active Mbit/s | tx Mbit/s | CPU s | throttled s | CPU s/GB rx | CPU s/GB relayed | VmHWM MiB | anon MiB | cgroup MiB | written x image (node + dockerd) | usable |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        budget.cores(),
        budget.memory_bytes >> 20,
        hierarchy.version(),
        a.cloud_rate,
        a.node_rate,
        a.queue_ms,
        experiment::DEFAULT_PACE_PERCENT,
        if a.pnet {
            "a swarm key (pnet)"
        } else {
            "no swarm key (`--open-locality`)"
        },
        images
            .iter()
            .map(|i| format!("{} ({:.1} MB in {} layers)", i.reference, i.layer_bytes as f64 / 1e6, i.layers.len()))
            .collect::<Vec<_>>()
            .join(", "),
        RATE_WINDOW.0 * 100.0,
        RATE_WINDOW.1 * 100.0,
    );
    for o in outcomes {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
            o.plan.label(),
            opt(o.seconds, 2),
            opt(o.rx_mbit, 1),
            opt(o.rx_active_mbit, 1),
            opt(o.tx_mbit, 1),
            o.usage.cpu_seconds,
            o.usage.throttled_seconds,
            opt(o.cpu_per_gb_rx(), 1),
            opt(cpu_per_gb_relayed(o, outcomes), 1),
            mib(o.vm_hwm),
            mib(o.anon_peak),
            mib(o.usage.memory_peak),
            written_cell(o),
            o.usable
        ));
    }
    s.push_str("\n## Targets\n\n");
    for o in outcomes
        .iter()
        .filter(|o| o.plan.import == "none" && !o.plan.relay)
    {
        let rx = o.rx_mbit.unwrap_or(0.0);
        s.push_str(&format!(
            "- {}: receives at {rx:.1} Mbit/s under the budget (target >= {TARGET_RX_MBIT}): {}\n",
            o.plan.label(),
            if rx >= TARGET_RX_MBIT {
                "met"
            } else {
                "MISSED"
            }
        ));
    }
    for o in outcomes {
        s.push_str(&format!(
            "- {}: peak RSS {:.1} MiB (target < {} MiB): {}\n",
            o.plan.label(),
            mib(o.vm_hwm),
            TARGET_RSS_BYTES >> 20,
            if o.vm_hwm < TARGET_RSS_BYTES {
                "met"
            } else {
                "MISSED"
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_leaf_runs_per_sink_then_one_relay_run() {
        let p = plan(
            &[50, 500],
            &[Role::Node, Role::Gateway],
            &["none", "dir"],
            true,
        );
        let labels: Vec<String> = p.iter().map(Plan::label).collect();
        assert_eq!(
            labels,
            [
                "50mb-node-leaf-none",
                "50mb-node-leaf-dir",
                "50mb-node-relay-none",
                "50mb-gateway-leaf-none",
                "50mb-gateway-leaf-dir",
                "50mb-gateway-relay-none",
                "500mb-node-leaf-none",
                "500mb-node-leaf-dir",
                "500mb-node-relay-none",
                "500mb-gateway-leaf-none",
                "500mb-gateway-leaf-dir",
                "500mb-gateway-relay-none",
            ]
        );
        // A node behind a gateway, plus a peer to relay to.
        let nodes: Vec<usize> = p[..6].iter().map(Plan::nodes).collect();
        assert_eq!(nodes, [2, 2, 3, 1, 1, 2]);
        assert_eq!((Role::Node.subject(), Role::Gateway.subject()), (1, 0));
        assert_eq!(plan(&[50], &[Role::Node], &["none"], false).len(), 1);
    }

    fn outcome(relay: bool, cpu: f64, rx: u64, tx: u64) -> Outcome {
        Outcome {
            plan: Plan {
                size_mb: 50,
                role: Role::Gateway,
                relay,
                import: "none",
            },
            image_bytes: 50_000_000,
            seconds: Some(5.0),
            rx_bytes: rx,
            tx_bytes: tx,
            rx_mbit: None,
            tx_mbit: None,
            rx_active_mbit: None,
            usage: Usage {
                cpu_seconds: cpu,
                ..Usage::default()
            },
            vm_hwm: 0,
            anon_peak: 0,
            written_node: 51_000_000,
            written_engine: None,
            usable: true,
        }
    }

    #[test]
    fn writes_are_reported_over_the_image_with_dockerds_part_apart() {
        let mut o = outcome(false, 5.0, 50_000_000, 0);
        assert_eq!(written_cell(&o), "1.02x");
        o.written_engine = Some(100_000_000);
        assert_eq!(written_cell(&o), "3.02x (1.02 + 2.00)");
        let text = csv(&[o]);
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .ends_with(",51000000,100000000,true"));
    }

    #[test]
    fn relay_cost_is_what_a_relay_run_spends_beyond_receiving() {
        // Receiving 0.5 GB cost 5 s: 10 s/GB. The relay run received as
        // much and sent 0.25 GB for 7 s in all: 2 s for 0.25 GB.
        let leaf = outcome(false, 5.0, 500_000_000, 1_000_000);
        let relay = outcome(true, 7.0, 500_000_000, 250_000_000);
        assert_eq!(leaf.cpu_per_gb_rx(), Some(10.0));
        let all = [leaf, relay.clone()];
        let r = cpu_per_gb_relayed(&relay, &all).unwrap();
        assert!((r - 8.0).abs() < 1e-9, "{r}");
        // Without its leaf run, or without bytes relayed: no figure; nor
        // for a leaf run (its few bytes out are acks and requests).
        assert_eq!(cpu_per_gb_relayed(&relay, &all[1..]), None);
        assert_eq!(cpu_per_gb_relayed(&all[0], &all), None);
        let idle = outcome(true, 5.0, 500_000_000, 1000);
        assert_eq!(cpu_per_gb_relayed(&idle, &all), None);
    }

    #[test]
    fn csv_has_a_row_per_run_with_every_column() {
        let all = [
            outcome(false, 5.0, 500_000_000, 1_000_000),
            outcome(true, 7.0, 500_000_000, 250_000_000),
        ];
        let text = csv(&all);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let cols = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == cols));
        assert!(lines[2].contains(",relay,none,"), "{}", lines[2]);
        assert!(lines[2].contains(",8.000,"), "{}", lines[2]);
    }
}
