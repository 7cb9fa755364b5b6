//! The experiment-side commands of the `edgeswarm-testnet` binary:
//! `images`, `experiment`, `demo` and the hidden `helper` subcommands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgeswarm_testnet::experiment::{self, Method, Progress, RunResult, RunSpec, Tools};
use edgeswarm_testnet::hostmem;
use edgeswarm_testnet::images::{Layout, TestImage};
use edgeswarm_testnet::registry::{Registry, RegistryOptions};
use edgeswarm_testnet::report::{self, ImageInfo, Setting};
use edgeswarm_testnet::topology::{Topology, TopologySpec};
use edgeswarm_testnet::watch::WatchLine;

use crate::{DemoArgs, ExperimentArgs, FaultsArgs, Helper, ImagesArgs};

/// Finds the programs: `edgeswarm` from the flag, else next to this binary,
/// else on PATH.
pub(crate) fn tools(edgeswarm: Option<PathBuf>) -> Result<Tools> {
    let testnet = std::env::current_exe().context("locating this binary")?;
    let edgeswarm = match edgeswarm {
        Some(p) => std::path::absolute(&p).context("resolving --edgeswarm")?,
        None => {
            let sibling = testnet.with_file_name("edgeswarm");
            if sibling.is_file() {
                sibling
            } else {
                let path = std::env::var_os("PATH").unwrap_or_default();
                std::env::split_paths(&path)
                    .map(|d| d.join("edgeswarm"))
                    .find(|p| p.is_file())
                    .context(
                        "no `edgeswarm` binary next to this one or on PATH: build it with \
                         `cargo build --release -p edgeswarm-node` or pass --edgeswarm",
                    )?
            }
        }
    };
    anyhow::ensure!(edgeswarm.is_file(), "{} is not a file", edgeswarm.display());
    Ok(Tools { edgeswarm, testnet })
}

pub(crate) fn helper(h: Helper) -> Result<()> {
    match h {
        Helper::PushImages {
            registry,
            sizes,
            versions,
            layout,
            work,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting a runtime")?;
            let images = rt.block_on(edgeswarm_testnet::images::build_and_push(
                &registry, &sizes, versions, layout, &work,
            ))?;
            for i in images {
                println!("{}", serde_json::to_string(&i)?);
            }
            Ok(())
        }
        Helper::Watch {
            image,
            apis,
            interval_ms,
            slow_interval_ms,
            link_rate,
            expect_bytes,
            slack_bytes,
        } => {
            let policy = edgeswarm_testnet::watch::PollPolicy {
                fast: Duration::from_millis(interval_ms),
                slow: Duration::from_millis(slow_interval_ms.max(interval_ms)),
                link_bytes_per_s: link_rate.map_or(0.0, |r| r.bits_per_sec() as f64 / 8.0),
                expect_bytes,
                slack_bytes,
            };
            Ok(edgeswarm_testnet::watch::run_watcher(
                &apis, &image, policy,
            )?)
        }
        Helper::Status {
            image,
            apis,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let threads: Vec<_> = apis
                .into_iter()
                .enumerate()
                .map(|(i, addr)| {
                    let image = image.clone();
                    std::thread::spawn(move || {
                        edgeswarm_testnet::watch::http_get(addr, "/v1/status", timeout)
                            .ok()
                            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                            .map_or_else(
                                || WatchLine {
                                    node: i,
                                    ..WatchLine::default()
                                },
                                |v| edgeswarm_testnet::watch::line_from_status(i, &v, &image),
                            )
                    })
                })
                .collect();
            for t in threads {
                let line = t
                    .join()
                    .map_err(|_| anyhow::anyhow!("a status poll panicked"))?;
                println!("{}", serde_json::to_string(&line)?);
            }
            Ok(())
        }
        Helper::Scrape { apis } => {
            for (i, addr) in apis.iter().enumerate() {
                let line = match edgeswarm_testnet::watch::http_get(
                    *addr,
                    "/metrics",
                    Duration::from_secs(5),
                ) {
                    Ok(body) => serde_json::json!({
                        "node": i,
                        "metrics": edgeswarm_testnet::measure::parse_prometheus(
                            &String::from_utf8_lossy(&body)
                        ),
                    }),
                    Err(e) => serde_json::json!({"node": i, "error": e.to_string()}),
                };
                println!("{line}");
            }
            Ok(())
        }
    }
}

pub(crate) fn images_cmd(state_dir: &Path, a: ImagesArgs) -> Result<()> {
    let topo = Topology::load(state_dir, &a.name)?;
    let tools = Tools {
        edgeswarm: PathBuf::new(),
        testnet: std::env::current_exe().context("locating this binary")?,
    };
    let images = experiment::push_images(
        &topo,
        &tools,
        &a.registry,
        &a.sizes,
        !a.no_versions,
        Layout::Base,
        Path::new("/var/tmp"),
    )?;
    print_images(&images);
    Ok(())
}

/// Builds and pushes one test image of `size_mb` (tag `v1`, no other
/// versions); see [`experiment::push_images`].
pub(crate) fn push_one_image(
    topo: &Topology,
    tools: &Tools,
    registry_host: &str,
    size_mb: u64,
    layout: Layout,
    work: &Path,
) -> Result<TestImage> {
    experiment::push_images(topo, tools, registry_host, &[size_mb], false, layout, work)?
        .into_iter()
        .find(|i| i.tag == "v1")
        .context("the helper pushed no v1 image")
}

pub(crate) fn print_images(images: &[TestImage]) {
    for i in images {
        println!(
            "{:<45} {:>8.1} MB  {} layers ({})  {}",
            i.reference,
            i.total_bytes as f64 / 1e6,
            i.layers.len(),
            i.layers
                .iter()
                .map(|b| format!("{:.1}", *b as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(" + "),
            i.manifest
        );
    }
}

/// How a locality's links are shaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shaping {
    /// Cloud link rate.
    pub cloud_rate: edgeswarm_testnet::Rate,
    /// Node link rate.
    pub node_rate: edgeswarm_testnet::Rate,
    /// Shaper queue (ms at the rate).
    pub queue_ms: u32,
    /// Shaper bucket (`None`: 10 ms at the rate).
    pub burst: Option<edgeswarm_testnet::ByteSize>,
    /// TCP congestion control of every namespace (`None`: the host's).
    pub congestion_control: Option<edgeswarm_testnet::topology::CongestionControl>,
}

/// A topology plus a registry whose storage persists across topologies.
pub(crate) fn locality(
    name: &str,
    nodes: usize,
    shaping: Shaping,
    registry_root: &Path,
    registry_work: &Path,
) -> Result<(Topology, Registry)> {
    // A previous run killed hard may have left this testnet behind.
    let state_dir = PathBuf::from(edgeswarm_testnet::topology::DEFAULT_STATE_DIR);
    if edgeswarm_testnet::topology::state_path(&state_dir, name).exists() {
        edgeswarm_testnet::topology::down(&state_dir, name)
            .with_context(|| format!("removing the leftover testnet {name:?}"))?;
    }
    let mut spec = TopologySpec::new(name, nodes);
    spec.cloud_rate = shaping.cloud_rate;
    spec.node_rate = shaping.node_rate;
    spec.queue_ms = shaping.queue_ms;
    spec.burst = shaping.burst;
    spec.congestion_control = shaping.congestion_control;
    let topo = Topology::up(&spec).with_context(|| format!("creating testnet {name:?}"))?;
    let mut reg = Registry::start(
        &topo,
        RegistryOptions {
            port: edgeswarm_testnet::registry::DEFAULT_PORT,
            root_dir: Some(registry_root.to_path_buf()),
            work_dir: Some(registry_work.to_path_buf()),
        },
    )?;
    let n0 = topo.node(0, 0)?.ns.clone();
    reg.wait_ready(&topo, &n0, Duration::from_secs(20))?;
    Ok((topo, reg))
}

pub(crate) fn experiment_cmd(a: ExperimentArgs) -> Result<()> {
    let tools = tools(a.edgeswarm.clone())?;
    let methods: Vec<Method> = a
        .methods
        .iter()
        .map(|m| match m.as_str() {
            "naive" => Ok(Method::Naive),
            "edgeswarm" => Ok(Method::Edgeswarm),
            other => bail!("unknown method {other:?} (use naive, edgeswarm)"),
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(!a.nodes.is_empty(), "--nodes is empty");
    let mut node_counts = a.nodes.clone();
    if !node_counts.contains(&1) && !a.no_lone_run && methods.contains(&Method::Edgeswarm) {
        // T(N)/T(1) and the gateway's pull against its lone pull need N=1
        // measured in the same experiment.
        eprintln!("adding an N=1 run: the reference of T(N)/T(1) and of the gateway's lone pull");
        node_counts.insert(0, 1);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::path::absolute(&a.out)?;
    let registry_root = out.join("registry/storage");
    let registry_work = out.join("registry");
    std::fs::create_dir_all(&registry_root)?;
    let mut image: Option<TestImage> = None;
    let mut runs: Vec<RunResult> = Vec::new();
    let mut setting = Setting {
        cloud_rate: a.cloud_rate.to_string(),
        node_rate: a.node_rate.to_string(),
        import: a.import.clone(),
        shaping: format!(
            "queue {} ms, burst {}; TCP congestion control {}",
            a.queue_ms,
            a.burst.map_or_else(
                || "10 ms at the link's rate".to_string(),
                |b| format!("{b} ({} bytes)", b.get())
            ),
            a.congestion_control.map_or_else(
                || format!(
                    "{} (the host's default)",
                    edgeswarm_testnet::topology::host_congestion_control()
                        .unwrap_or_else(|| "unknown".into())
                ),
                |c| c.name().to_string()
            )
        ),
        layout: a.layout.name().to_string(),
        nodes: format!(
            "chunk size {}, uploads {}, {}",
            a.chunk_size.as_deref().unwrap_or("the node's default"),
            match a.pace_percent {
                0 => "unpaced".to_string(),
                p => format!("paced at {p} % of the link"),
            },
            if a.pnet {
                "a swarm key (pnet)"
            } else {
                "no swarm key (`--open-locality`)"
            }
        ),
        host_memory: String::new(),
    };
    // Before the first run, for all of them: the pages every run fills
    // are then the guest's own (edgeswarm_testnet::hostmem).
    let quiet_memory = if a.keep_page_reporting {
        hostmem::QuietMemory::untouched(
            "free page reporting left as it was (`--keep-page-reporting`)",
        )
    } else {
        let largest = node_counts.iter().copied().max().unwrap_or(1);
        let warm = hostmem::warm_bytes(
            largest,
            a.image_mb * 1_000_000,
            hostmem::mem_available().unwrap_or(0),
        );
        hostmem::QuietMemory::pause(
            Path::new(hostmem::PAGE_REPORTING_ORDER),
            Path::new(hostmem::REPORTED_KIB),
            hostmem::page_orders(),
            warm,
        )
    };
    for &n in &node_counts {
        eprintln!("== N = {n}: building the testnet");
        let (topo, mut reg) = locality(
            "exp",
            n,
            Shaping {
                cloud_rate: a.cloud_rate,
                node_rate: a.node_rate,
                queue_ms: a.queue_ms,
                burst: a.burst,
                congestion_control: a.congestion_control,
            },
            &registry_root,
            &registry_work,
        )?;
        if image.is_none() {
            eprintln!("   building and pushing the {} MB test images", a.image_mb);
            let images = experiment::push_images(
                &topo,
                &tools,
                &reg.host(),
                &[a.image_mb],
                true,
                a.layout,
                &out,
            )?;
            print_images(&images);
            image = images.into_iter().find(|i| i.tag == "v1");
        }
        let img = image.clone().context("the helper pushed no v1 image")?;
        let spec = RunSpec {
            image: img.reference.clone(),
            work: out.join(format!("n{n}")),
            timeout: Duration::from_secs(a.timeout),
            sample_interval: Duration::from_millis(100),
            rust_log: a.node_log.clone(),
            chunk_size: a.chunk_size.clone(),
            pace_percent: a.pace_percent,
            keep_data: a.keep_data,
            import: a.import.clone(),
            registry_pid: Some(reg.process().pid()),
            image_bytes: img.layer_bytes,
            watch_slow: Duration::from_millis(a.watch_slow_ms),
            budgeted: None,
            pnet: a.pnet,
        };
        for m in &methods {
            let data_dir = spec.work.join(match m {
                Method::Naive => "naive-data",
                Method::Edgeswarm => "es-data",
            });
            let mut scratch = if a.shared_data_fs || a.keep_data {
                None
            } else {
                // Sparse: N copies of the image, compressed and extracted
                // (about 3x), with room to spare.
                let size = a.image_mb * 1_000_000 * n as u64 * 12;
                let _ = std::fs::remove_dir_all(&data_dir);
                Some(
                    edgeswarm_testnet::scratch::ScratchFs::mount(&data_dir, size)
                        .with_context(|| format!("a fresh filesystem at {}", data_dir.display()))?,
                )
            };
            let r = match m {
                Method::Naive => experiment::run_naive(&topo, &spec),
                Method::Edgeswarm => {
                    experiment::run_edgeswarm(&topo, &tools, &reg.host(), &spec, &mut |p| {
                        if let Progress::Ready { seconds } = p {
                            eprintln!("   locality formed in {seconds:.1}s; deploying");
                        }
                    })
                }
            }
            .with_context(|| format!("{} run with {n} nodes", m.name()))?;
            if let Some(fs) = scratch.as_mut() {
                // The data dirs go with it, --keep-data or not.
                fs.unmount()?;
            }
            r.write_nodes_csv(&spec.work)?;
            eprintln!(
                "   {:<9} last node {:>6}s  mean {:>6.1}s  cloud {:>7.1} MB ({:.3}x)  CPU busy {:.0}% iowait {:.0}%",
                m.name(),
                r.last_seconds().map_or("-".into(), |x| format!("{x:.1}")),
                r.mean_seconds(),
                r.cloud_bytes as f64 / 1e6,
                r.cloud_bytes as f64 / img.total_bytes as f64,
                r.cpu.busy * 100.0,
                r.cpu.iowait * 100.0
            );
            let gw = &r.per_node[0];
            let img_b = img.total_bytes as f64;
            let all_in: u64 = r.per_node.iter().map(|x| x.link.into_node).sum();
            eprintln!(
                "             pull {}s  links in {:.3}x N x image  gateway in {:.3}x out {:.3}x  CPU-s gateway {} other nodes {:.1}  registry {}  watcher {}",
                r.pull_seconds.map_or("-".into(), |x| format!("{x:.2}")),
                all_in as f64 / (n as f64 * img_b),
                gw.link.into_node as f64 / img_b,
                gw.link.from_node as f64 / img_b,
                gw.cpu_seconds.map_or("-".into(), |x| format!("{x:.1}")),
                // Starting from 0.0: an empty f64 sum is -0.0.
                r.per_node[1..]
                    .iter()
                    .filter_map(|x| x.cpu_seconds)
                    .fold(0.0, |a, b| a + b),
                r.registry_cpu_seconds.map_or("-".into(), |x| format!("{x:.1}")),
                r.watcher_cpu_seconds.map_or("-".into(), |x| format!("{x:.2}")),
            );
            runs.push(r);
        }
        drop(reg);
        topo.down()?;
        // Outputs after every N, so an interrupted experiment keeps its data.
        let info = ImageInfo {
            reference: img.reference.clone(),
            bytes: img.total_bytes,
        };
        setting.host_memory = quiet_memory.describe(Path::new(hostmem::REPORTED_KIB));
        report::write_all(&out, &info, &setting, &runs)?;
    }
    let img = image.context("no run")?;
    let summary = report::write_all(
        &out,
        &ImageInfo {
            reference: img.reference,
            bytes: img.total_bytes,
        },
        &setting,
        &runs,
    )?;
    println!("{summary}");
    println!(
        "outputs in {}: results.csv, summary.md, fig5-time-vs-nodes.svg, fig6-cloud-link.svg, fig7-node-link.svg, n<N>/ (per-node CSVs, link CSVs, logs)",
        out.display()
    );
    Ok(())
}

/// Runs `docker ARGS`; its stdout on success, else an error with its stderr.
pub(crate) fn docker(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("running docker {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

pub(crate) fn demo_cmd(a: DemoArgs) -> Result<()> {
    let tools = tools(a.edgeswarm.clone())?;
    anyhow::ensure!(
        a.nodes >= 2,
        "--nodes must be at least 2 (a gateway and a node)"
    );
    let tmp;
    let work = match &a.work {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            std::path::absolute(w)?
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("edgeswarm-demo-")
                .tempdir_in("/var/tmp")
                .context("creating a work dir")?;
            tmp.path().to_path_buf()
        }
    };
    println!(
        "edgeswarm demo: {} nodes on {} links, a {} cloud link, a real registry in the cloud",
        a.nodes, a.node_rate, a.cloud_rate
    );
    let (topo, reg) = locality(
        "demo",
        a.nodes,
        Shaping {
            cloud_rate: a.cloud_rate,
            node_rate: a.node_rate,
            queue_ms: edgeswarm_testnet::topology::DEFAULT_QUEUE_MS,
            burst: None,
            congestion_control: None,
        },
        &work.join("registry/storage"),
        &work.join("registry"),
    )?;
    println!(
        "building a ~{} MB image from this machine's libraries and busybox, pushing it to {} ...",
        a.image_mb,
        reg.url()
    );
    let img = push_one_image(&topo, &tools, &reg.host(), a.image_mb, Layout::Base, &work)?;
    println!(
        "image {} : {} MB in {} layers",
        img.reference,
        mb(img.total_bytes),
        img.layers.len()
    );
    let spec = RunSpec {
        image: img.reference.clone(),
        work: work.join("run"),
        timeout: Duration::from_secs(300),
        sample_interval: Duration::from_millis(200),
        rust_log: "info,libp2p=warn".into(),
        chunk_size: None,
        pace_percent: edgeswarm_testnet::experiment::DEFAULT_PACE_PERCENT,
        keep_data: false,
        import: "dir".into(),
        registry_pid: None,
        image_bytes: img.layer_bytes,
        watch_slow: Duration::from_millis(500),
        budgeted: None,
        pnet: false,
    };
    let mut last_print: BTreeMap<usize, (Instant, String)> = BTreeMap::new();
    let started = Instant::now();
    let result = experiment::run_edgeswarm(&topo, &tools, &reg.host(), &spec, &mut |p| match p {
        Progress::Starting { nodes } => {
            println!("starting {nodes} edgeswarm nodes (node 0 is the gateway) ...")
        }
        Progress::Ready { seconds } => {
            println!(
                "locality formed in {seconds:.1}s; deploying {}",
                img.reference
            )
        }
        Progress::Deployed => println!("release announced; progress:"),
        Progress::Node { t, line } => {
            if line.state.is_empty() {
                return;
            }
            let prev = last_print.get(&line.node);
            let changed = prev.is_none_or(|(_, s)| *s != line.state);
            let stale = prev.is_none_or(|(at, _)| at.elapsed() >= Duration::from_millis(700));
            if changed || stale {
                print_progress(*t, line);
                last_print.insert(line.node, (Instant::now(), line.state.clone()));
            }
        }
    });
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("node logs are in {}", spec.work.join("logs").display());
            if a.work.is_none() {
                // Keep the logs of a failed demo.
                let kept = tmp_keep(&work);
                eprintln!("(kept in {})", kept.display());
            }
            return Err(e.into());
        }
    };
    println!();
    println!(
        "| node | role | done after (s) | from cloud (MB) | from peers (MB) | files verified |"
    );
    println!("|---|---|---|---|---|---|");
    for n in &r.per_node {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            n.node,
            if n.node == 0 { "gateway" } else { "node" },
            n.seconds.map_or("-".into(), |s| format!("{s:.1}")),
            mb(n.bytes_from_cloud),
            mb(n.bytes_from_peers),
            if n.verified { "yes" } else { "NO" }
        );
    }
    println!();
    println!(
        "every node done after {:.1}s; the cloud link carried {} MB for a {} MB image ({:.2}x); \
         pulling it naively from every node would carry {} MB",
        r.last_seconds().unwrap_or_default(),
        mb(r.cloud_bytes),
        mb(img.total_bytes),
        r.cloud_bytes as f64 / img.total_bytes as f64,
        mb(img.total_bytes * a.nodes as u64)
    );
    println!("(demo took {:.0}s in all)", started.elapsed().as_secs_f64());
    drop(reg);
    topo.down()?;
    anyhow::ensure!(
        r.per_node.iter().all(|n| n.verified),
        "some node lacks the image's files"
    );
    Ok(())
}

/// Moves a temporary work dir's logs somewhere that survives its removal.
fn tmp_keep(work: &Path) -> PathBuf {
    let dest = PathBuf::from(format!(
        "/var/tmp/edgeswarm-demo-logs-{}",
        std::process::id()
    ));
    let _ = std::fs::create_dir_all(&dest);
    let _ = std::process::Command::new("cp")
        .arg("-a")
        .arg(work.join("run/logs"))
        .arg(&dest)
        .status();
    dest
}

fn print_progress(t: f64, l: &WatchLine) {
    let pct = if l.bytes_total > 0 {
        100.0 * l.bytes_done as f64 / l.bytes_total as f64
    } else {
        0.0
    };
    let bar_len = 20usize;
    let filled = ((pct / 100.0) * bar_len as f64).round() as usize;
    println!(
        "[{t:>5.1}s] node {} {:<9} [{}{}] {:>5.1}%  cloud {:>5} MB  peers {:>5} MB",
        l.node,
        l.state,
        "#".repeat(filled.min(bar_len)),
        ".".repeat(bar_len - filled.min(bar_len)),
        pct,
        mb(l.bytes_from_cloud),
        mb(l.bytes_from_peers)
    );
}

/// `faults`: builds the locality and registry, pushes the test image (v1
/// deployed, v2 pinned by the replayed release), runs the suite, prints a
/// line per trial and the summary; fails when a trial failed.
pub(crate) fn faults_cmd(a: FaultsArgs) -> Result<std::process::ExitCode> {
    use edgeswarm_testnet::faults::{self, FaultsSpec};
    let tools = tools(a.edgeswarm.clone())?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::path::absolute(&a.out)?;
    let registry_root = out.join("registry/storage");
    let registry_work = out.join("registry");
    std::fs::create_dir_all(&registry_root)?;
    let (topo, reg) = locality(
        &a.name,
        a.nodes,
        Shaping {
            cloud_rate: a.cloud_rate,
            node_rate: a.node_rate,
            queue_ms: edgeswarm_testnet::topology::DEFAULT_QUEUE_MS,
            burst: None,
            congestion_control: None,
        },
        &registry_root,
        &registry_work,
    )?;
    let opts = RegistryOptions {
        port: edgeswarm_testnet::registry::DEFAULT_PORT,
        root_dir: Some(registry_root.clone()),
        work_dir: Some(registry_work.clone()),
    };
    let images = experiment::push_images(
        &topo,
        &tools,
        &reg.host(),
        &[a.image_mb],
        true,
        Layout::Base,
        &out,
    )?;
    print_images(&images);
    let v1 = images
        .iter()
        .find(|i| i.tag == "v1")
        .cloned()
        .context("no v1 image pushed")?;
    let v2 = images
        .iter()
        .find(|i| i.tag == "v2")
        .cloned()
        .context("no v2 image pushed")?;
    let spec = FaultsSpec {
        nodes: a.nodes,
        trials: a.trials,
        seed: a.seed,
        registry_cut: Duration::from_secs(a.registry_cut_secs),
        trial_timeout: Duration::from_secs(a.trial_timeout),
        work: out.clone(),
        node_log: a.node_log.clone(),
        image_mb: a.image_mb,
        late_slack: Duration::from_secs(a.late_slack_secs),
        keep_all: a.keep_all,
        budget: a.budget_secs.map(Duration::from_secs),
        import: if a.import == "docker" {
            faults::ImportMode::Docker
        } else {
            faults::ImportMode::Dir
        },
    };
    let started = Instant::now();
    let result = faults::run_suite(&topo, &tools, reg, opts, v1, v2, &spec, &mut |t| {
        println!("{}", trial_line(t));
    })?;
    drop(topo);
    let summary = result.summary(&spec);
    println!("{summary}");
    println!(
        "suite time {:.0} s; command: edgeswarm-testnet faults --trials {} --seed {} --nodes {} --registry-cut-secs {} --image-mb {} --import {}",
        started.elapsed().as_secs_f64(),
        result.trials.len(),
        a.seed,
        a.nodes,
        a.registry_cut_secs,
        a.image_mb,
        a.import
    );
    std::fs::write(out.join("summary.txt"), &summary)?;
    std::fs::write(
        out.join("trials.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let failed = result.trials.iter().filter(|t| !t.passed()).count();
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!(
            "{failed} trial(s) failed; their logs and data dirs are under {}",
            out.display()
        );
        std::process::ExitCode::FAILURE
    })
}

/// One line per trial: outcome, times, cloud bytes, faults as injected.
fn trial_line(t: &edgeswarm_testnet::faults::TrialOutcome) -> String {
    let faults: Vec<String> = t
        .injected
        .iter()
        .map(|i| {
            format!(
                "{}{}@{:.1}s[{}]",
                i.fault,
                i.node.map(|n| format!(" n{n}")).unwrap_or_default(),
                i.at,
                i.state.chars().take(60).collect::<String>()
            )
        })
        .collect();
    let mut s = format!(
        "trial {:03} seed {} {} converged={} {} cloud {:.3}x dup {}{} | {}",
        t.trial,
        t.plan.seed,
        if t.passed() { "PASS" } else { "FAIL" },
        t.converged,
        t.seconds.map_or("-".into(), |x| format!("{x:.1}s")),
        t.cloud_ratio,
        t.duplicates,
        t.late_seconds
            .map(|x| format!(" late n{} {x:.1}s", t.plan.late.unwrap_or(0)))
            .unwrap_or_default(),
        faults.join(" "),
    );
    for (what, list) in [
        ("corrupt", &t.corrupt),
        ("refetched", &t.refetched),
        ("leaks", &t.leaks),
        ("errors", &t.errors),
    ] {
        if !list.is_empty() {
            s.push_str(&format!("\n    {what}: {}", list.join("; ")));
        }
    }
    s
}
