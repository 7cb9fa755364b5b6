//! Bench: the naive baseline on the emulated locality, with a blob instead of
//! an image. Every node pulls the same blob from the cloud registry at once;
//! prints each N's last-node time and the bytes the cloud link carried (from
//! kernel counters). Compare with FIELD-NOTES section 5 (skopeo, 48.7 MB
//! image: 4.2 s / 10.5 s / 20.8 s at 1 / 5 / 10 nodes).
//!
//! Run (root): `cargo run -p edgeswarm-testnet --example naive_blob -- 1,5,10 48`

use std::time::{Duration, Instant};

use edgeswarm_testnet::counters::Sampler;
use edgeswarm_testnet::process::SpawnSpec;
use edgeswarm_testnet::registry::{Registry, RegistryOptions};
use edgeswarm_testnet::{Topology, TopologySpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ns: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,5,10".into())
        .split(',')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()?;
    let mb: usize = args.next().unwrap_or_else(|| "48".into()).parse()?;
    let work = tempfile::tempdir()?;
    let blob = work.path().join("blob");
    // Incompressible, deterministic content.
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let data: Vec<u8> = (0..mb << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&blob, &data)?;
    println!("| nodes | last node done (s) | cloud-link bytes | x blob |");
    println!("|---|---|---|---|");
    for &n in &ns {
        let topo = Topology::up(&TopologySpec::new(format!("naive{n}"), n))?;
        let mut reg = Registry::start(&topo, RegistryOptions::default())?;
        reg.wait_ready(&topo, &topo.node(0, 0)?.ns, Duration::from_secs(15))?;
        let push = format!(
            "set -e; d=sha256:$(sha256sum {b} | cut -d' ' -f1); \
             loc=$(curl -sf -D - -o /dev/null -X POST {u}/v2/b/blobs/uploads/ | tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'); \
             curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @{b} \"$loc&digest=$d\" >/dev/null; echo $d",
            b = blob.display(),
            u = reg.url()
        );
        let digest = topo
            .exec(&topo.cloud().ns, "sh", &["-c", &push])?
            .trim()
            .to_string();
        let url = format!("{}/v2/b/blobs/{digest}", reg.url());
        let sampler = Sampler::start(
            topo.probes(),
            Duration::from_millis(200),
            Some(work.path().join(format!("links-{n}.csv"))),
        )?;
        let start = Instant::now();
        let mut procs = topo
            .nodes()
            .map(|node| {
                let log = work.path().join(format!("{}.log", node.ns));
                topo.spawn(
                    &node.ns,
                    SpawnSpec::new("curl", log).args(["-sf", "-o", "/dev/null", &url]),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut done = vec![None; procs.len()];
        while done.iter().any(Option::is_none) {
            for (i, p) in procs.iter_mut().enumerate() {
                if done[i].is_none() {
                    if let Some(status) = p.try_wait()? {
                        if !status.success() {
                            return Err(
                                format!("node {i}: curl failed: {}", p.log_tail(500)).into()
                            );
                        }
                        done[i] = Some(start.elapsed());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let series = sampler.stop()?;
        let last = done.iter().flatten().max().copied().unwrap_or_default();
        let cloud = series
            .delta("cloud0")
            .map(|d| d.tx_bytes)
            .unwrap_or_default();
        println!(
            "| {n} | {:.1} | {:.1} MB | {:.3} |",
            last.as_secs_f64(),
            cloud as f64 / 1e6,
            cloud as f64 / data.len() as f64
        );
        drop(reg);
        topo.down()?;
    }
    Ok(())
}
