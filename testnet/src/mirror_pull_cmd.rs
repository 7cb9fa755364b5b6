//! `edgeswarm-testnet mirror-pull`: issue 14's containerd experiment (see
//! the library's `mirror_pull` module): per round, one node's containerd
//! pulls from the registry alone (the baseline), then every node's
//! containerd pulls through its own node's edgeswarm mirror at once
//! (optionally also every node from the registry at once); writes
//! `mirror-pull.csv`, `summary.md`, link CSVs and logs to `--out`.

use std::time::Duration;

use anyhow::{Context, Result};
use edgeswarm_testnet::experiment::RunSpec;
use edgeswarm_testnet::mirror_pull::{self, CtrRun, CtrSpec, Setup};

use crate::MirrorPullArgs;

fn print_run(r: &CtrRun, image_bytes: u64) {
    eprintln!(
        "   round {} {:<8} {} nodes: last done {:.2}s (fetched {}s)  mean {:.2}s  cloud {:.1} MB ({:.3}x)  verified {}  CPU busy {:.0}%",
        r.round,
        r.label,
        r.per_node.len(),
        r.last_seconds(),
        r.last_fetched().map_or("-".into(), |x| format!("{x:.2}")),
        r.mean_seconds(),
        r.cloud_bytes as f64 / 1e6,
        r.cloud_bytes as f64 / image_bytes as f64,
        r.per_node.iter().all(|n| n.verified),
        r.cpu.busy * 100.0
    );
}

pub(crate) fn mirror_pull_cmd(a: MirrorPullArgs) -> Result<()> {
    let tools = crate::bin_cmds::tools(a.edgeswarm.clone())?;
    anyhow::ensure!(a.nodes >= 2, "--nodes must be at least 2");
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::path::absolute(&a.out)?;
    let registry_root = out.join("registry/storage");
    std::fs::create_dir_all(&registry_root)?;
    eprintln!("== {} nodes: building the testnet", a.nodes);
    let (topo, mut reg) = crate::bin_cmds::locality(
        "mirrorpull",
        a.nodes,
        crate::bin_cmds::Shaping {
            cloud_rate: a.cloud_rate,
            node_rate: a.node_rate,
            queue_ms: a.queue_ms,
            burst: a.burst,
            congestion_control: None,
        },
        &registry_root,
        &out.join("registry"),
    )?;
    eprintln!("   building and pushing the {} MB test image", a.image_mb);
    let image =
        crate::bin_cmds::push_one_image(&topo, &tools, &reg.host(), a.image_mb, a.layout, &out)?;
    crate::bin_cmds::print_images(std::slice::from_ref(&image));
    let spec = CtrSpec {
        run: RunSpec {
            image: image.reference.clone(),
            work: out.clone(),
            timeout: Duration::from_secs(a.timeout),
            sample_interval: Duration::from_millis(100),
            rust_log: a.node_log.clone(),
            chunk_size: a.chunk_size.clone(),
            pace_percent: a.pace_percent,
            keep_data: a.keep_data,
            import: "none".into(),
            registry_pid: Some(reg.process().pid()),
            image_bytes: image.layer_bytes,
            watch_slow: Duration::from_millis(500),
            budgeted: None,
            pnet: false,
        },
        manifest: image.manifest.clone(),
        cpu_per_node: a.cpu_per_node,
    };
    let setup = Setup {
        image: image.reference.clone(),
        image_bytes: image.total_bytes,
        layers: image.layers.clone(),
        links: format!(
            "cloud link {}, node links {}, tbf queue {} ms, burst {}; edgeswarm nodes: chunk size {}, uploads {}",
            a.cloud_rate,
            a.node_rate,
            a.queue_ms,
            a.burst.map_or_else(
                || "10 ms at the link's rate".to_string(),
                |b| format!("{b} ({} bytes)", b.get())
            ),
            a.chunk_size.as_deref().unwrap_or("the node's default"),
            match a.pace_percent {
                0 => "unpaced".to_string(),
                p => format!("paced at {p} % of the link"),
            }
        ) + &match a.cpu_per_node {
            Some(c) => format!("; every device (its containerd, ctr and edgeswarm node) capped at {c} CPU cores"),
            None => "; no CPU cap (every device shares the machine's cores)".to_string(),
        },
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let all: Vec<usize> = (0..a.nodes).collect();
    let mut runs: Vec<CtrRun> = Vec::new();
    let write = |runs: &[CtrRun]| -> Result<String> {
        mirror_pull::write_csv(&out, runs)?;
        let summary = mirror_pull::summary_markdown(&setup, runs);
        std::fs::write(out.join("summary.md"), &summary)?;
        Ok(summary)
    };
    for round in 0..a.runs {
        let r = mirror_pull::run_direct(&topo, &spec, "baseline", round, &[0])
            .context("the baseline (one node's containerd from the registry)")?;
        print_run(&r, image.total_bytes);
        runs.push(r);
        let r = mirror_pull::run_mirror(&topo, &tools, &reg.host(), &spec, round)
            .context("the mirror run")?;
        print_run(&r, image.total_bytes);
        runs.push(r);
        if a.naive {
            let r = mirror_pull::run_direct(&topo, &spec, "naive", round, &all)
                .context("the naive run (every containerd from the registry)")?;
            print_run(&r, image.total_bytes);
            runs.push(r);
        }
        write(&runs)?;
    }
    drop(reg);
    topo.down()?;
    println!("{}", write(&runs)?);
    println!(
        "outputs in {}: mirror-pull.csv, summary.md, links-<run>-r<round>.csv, logs/, es-r<round>/logs/",
        out.display()
    );
    Ok(())
}
