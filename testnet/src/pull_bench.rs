//! `edgeswarm-testnet pull-bench`: one node acting as its own gateway
//! against a stock `docker pull`, same image, same kind of shaped link, same
//! run.
//!
//! # Set-up
//! The registry runs in a testnet's cloud namespace. dockerd runs in the
//! host's namespace and cannot be moved, so the host gets its own veth link
//! into the cloud namespace, shaped with `tc tbf` like a node link
//! (`Topology::host_link`). Docker accepts plain HTTP only from loopback
//! registries (without a daemon restart), so both contenders reach the
//! registry through a byte-copying proxy on `127.0.0.1`, which forwards over
//! that shaped link: the same path, hop for hop, for both.
//!
//! # A measurement
//! - `docker pull REF`: wall time of the command, which returns once the
//!   image is registered.
//! - edgeswarm: a fresh `edgeswarm node --gateway --import docker` (data dir
//!   created per run, not timed), then from `edgeswarm deploy REF` until the
//!   node reports the release done and `docker image inspect REF` succeeds.
//!
//! Before each measurement the image is removed from Docker (and with it
//! every layer: no other image shares them), and each run is checked by
//! running the image (`docker run --pull never`). Runs alternate which
//! contender goes first. Bytes over the link come from the cloud end's
//! kernel counters, sampled every [`SAMPLE_INTERVAL`] during each
//! measurement: the last sample closing an interval that carried bulk data
//! (at least [`BULK_BYTES`]) gives the last byte's time, and the time from
//! it to the end of the measurement is what the contender spends after the
//! wire.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgeswarm_testnet::counters::{Probe, Sampler, Series};
use edgeswarm_testnet::images::TestImage;
use edgeswarm_testnet::watch;

use crate::bin_cmds::docker;
use crate::PullBenchArgs;

/// Most proxied connections at once (dockerd opens three per pull).
const MAX_PROXY_CONNECTIONS: usize = 32;

/// How often the link's counters are read during a measurement: the
/// resolution of the last byte's time.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// Bytes one sample interval must carry to count as image data: what
/// crosses after the last layer (closing ACKs and FINs, and an edgeswarm
/// gateway re-checking the release's manifest every 2 s until the import
/// is done, a few KB each time) stays below it, while a 100 Mbit/s link
/// carries 625 KB per interval. A threshold on the total instead counted
/// those re-checks and put the last byte 1-3 s late.
const BULK_BYTES: u64 = 64 * 1024;

/// Which contender a measurement is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    DockerPull,
    Edgeswarm,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::DockerPull => "docker pull",
            Contender::Edgeswarm => "edgeswarm",
        }
    }
}

/// One timed measurement.
#[derive(Debug, Clone)]
struct Measurement {
    run: usize,
    contender: Contender,
    seconds: f64,
    link_bytes: u64,
    /// Seconds from the contender's start to the end of the last sample
    /// interval carrying bulk data ([`BULK_BYTES`]; `None`: none did).
    last_byte_s: Option<f64>,
}

impl Measurement {
    /// Seconds from the last byte to the end of the measurement.
    fn after_last_byte(&self) -> Option<f64> {
        self.last_byte_s.map(|l| self.seconds - l)
    }
}

pub(crate) fn pull_bench_cmd(a: PullBenchArgs) -> Result<()> {
    let tools = crate::bin_cmds::tools(a.edgeswarm.clone())?;
    anyhow::ensure!(a.runs > 0, "--runs must be at least 1");
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]).context(
        "no Docker engine answers (apt-get install docker.io; scripts/start-dockerd.sh starts one)",
    )?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::path::absolute(&a.out)?;
    let registry_root = out.join("registry/storage");
    let registry_work = out.join("registry");
    std::fs::create_dir_all(&registry_root)?;

    eprintln!(
        "== building the testnet (cloud namespace, registry, host link at {})",
        a.rate
    );
    let (topo, reg) = crate::bin_cmds::locality(
        "pullbench",
        1,
        crate::bin_cmds::Shaping {
            cloud_rate: a.rate,
            node_rate: a.rate,
            queue_ms: a.queue_ms,
            burst: None,
            congestion_control: None,
        },
        &registry_root,
        &registry_work,
    )?;
    eprintln!(
        "   building and pushing the {} MB {} image",
        a.image_mb,
        a.layout.name()
    );
    let image =
        crate::bin_cmds::push_one_image(&topo, &tools, &reg.host(), a.image_mb, a.layout, &out)?;
    crate::bin_cmds::print_images(std::slice::from_ref(&image));

    let link = topo.host_link(a.rate, a.queue_ms)?;
    let proxy = Proxy::start(reg.addr().into())?;
    let reference = format!(
        "127.0.0.1:{}/{}:{}",
        proxy.addr.port(),
        edgeswarm_testnet::images::layout_repo(a.image_mb, a.layout),
        image.tag
    );
    eprintln!("   image as both contenders see it: {reference}");

    let mut results = Vec::new();
    for run in 0..a.runs {
        let order = if run % 2 == 0 {
            [Contender::DockerPull, Contender::Edgeswarm]
        } else {
            [Contender::Edgeswarm, Contender::DockerPull]
        };
        for contender in order {
            remove_image(&reference)?;
            let before = topo.counters(&link.cloud_end)?;
            let sampler = Sampler::start(
                vec![Probe::new("link", link.cloud_end.clone())],
                SAMPLE_INTERVAL,
                None,
            )?;
            // The sampler's clock starts within one sample read before this.
            let sampling_since = Instant::now();
            let (started, seconds) = match contender {
                Contender::DockerPull => docker_pull(&reference)?,
                Contender::Edgeswarm => {
                    edgeswarm_deploy(&tools.edgeswarm, &reference, &proxy, &out, run, &a)?
                }
            };
            let series = sampler.stop()?;
            let after = topo.counters(&link.cloud_end)?;
            check_runs(&reference)?;
            let link_bytes = after.tx_bytes.saturating_sub(before.tx_bytes);
            let offset = started.duration_since(sampling_since).as_secs_f64();
            let m = Measurement {
                run,
                contender,
                seconds,
                link_bytes,
                last_byte_s: last_byte_at(&series, "link").map(|t| t - offset),
            };
            eprintln!(
                "   run {run}: {:<11} {:6.2} s  {:7.1} MB over the link ({:.3}x the image), \
                 last byte at {}",
                contender.name(),
                m.seconds,
                m.link_bytes as f64 / 1e6,
                m.link_bytes as f64 / image.total_bytes as f64,
                secs(m.last_byte_s),
            );
            results.push(m);
        }
    }
    remove_image(&reference)?;
    drop(proxy);
    drop(link);
    drop(reg);
    topo.down()?;

    let summary = summary(&image, &engine, &a, &results);
    println!("{summary}");
    std::fs::write(out.join("summary.md"), &summary)?;
    let mut csv = String::from("run,contender,seconds,link_bytes,last_byte_s\n");
    for m in &results {
        csv.push_str(&format!(
            "{},{},{:.3},{},{}\n",
            m.run,
            m.contender.name(),
            m.seconds,
            m.link_bytes,
            m.last_byte_s.map_or(String::new(), |t| format!("{t:.3}"))
        ));
    }
    std::fs::write(out.join("pull-bench.csv"), csv)?;
    eprintln!("wrote {}/summary.md and pull-bench.csv", out.display());
    Ok(())
}

/// Seconds (on the sampler's clock) of the last sample of `label` that
/// closed an interval carrying at least [`BULK_BYTES`].
fn last_byte_at(series: &Series, label: &str) -> Option<f64> {
    let samples: Vec<_> = series.of(label).collect();
    samples
        .windows(2)
        .rev()
        .find(|w| {
            w[1].counters
                .tx_bytes
                .saturating_sub(w[0].counters.tx_bytes)
                >= BULK_BYTES
        })
        .map(|w| w[1].t_s)
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2} s"))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn summary(image: &TestImage, engine: &str, a: &PullBenchArgs, results: &[Measurement]) -> String {
    let times = |c: Contender| -> Vec<f64> {
        results
            .iter()
            .filter(|m| m.contender == c)
            .map(|m| m.seconds)
            .collect()
    };
    let docker = median(times(Contender::DockerPull));
    let es = median(times(Contender::Edgeswarm));
    let floor = image.total_bytes as f64 * 8.0 / (a.rate.mbit_per_sec() * 1e6);
    let mut s = String::new();
    s.push_str(&format!(
        "# pull-bench: one node vs `docker pull`\n\n\
         - image: {} MB in {} layers ({}), layout `{}`\n\
         - link: {} both ways (tc tbf, {} ms queue); transfer floor {:.1} s\n\
         - Docker engine {engine}; edgeswarm `--gateway --import docker`\n\n\
         | run | contender | seconds | MB over the link | last byte at s | after the last byte s |\n\
         |---|---|---|---|---|---|\n",
        (image.total_bytes as f64 / 1e6).round(),
        image.layers.len(),
        image
            .layers
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(" + "),
        a.layout.name(),
        a.rate,
        a.queue_ms,
        floor,
    ));
    for m in results {
        let opt = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.1} | {} | {} |\n",
            m.run,
            m.contender.name(),
            m.seconds,
            m.link_bytes as f64 / 1e6,
            opt(m.last_byte_s),
            opt(m.after_last_byte()),
        ));
    }
    s.push_str(&format!(
        "\nMedian: docker pull {docker:.2} s, edgeswarm {es:.2} s, ratio {:.2}x (target <= 0.8x)\n",
        es / docker
    ));
    let after = |c: Contender| -> Vec<f64> {
        results
            .iter()
            .filter(|m| m.contender == c)
            .filter_map(Measurement::after_last_byte)
            .collect()
    };
    let (docker_after, es_after) = (after(Contender::DockerPull), after(Contender::Edgeswarm));
    if !docker_after.is_empty() && !es_after.is_empty() {
        let es_after = median(es_after);
        s.push_str(&format!(
            "\nMedian time after the last byte crossed the link: docker pull {:.2} s, \
             edgeswarm {es_after:.2} s (target <= 5 s: {})\n",
            median(docker_after),
            if es_after <= 5.0 { "met" } else { "missed" }
        ));
    }
    // No contender can finish before the image has crossed the link.
    s.push_str(&format!(
        "\n0.8x of docker pull is {:.2} s; the image needs {floor:.2} s on the wire alone, so \
         docker pull spends {:.2} s beyond the transfer and edgeswarm {:.2} s.\n",
        0.8 * docker,
        docker - floor,
        es - floor
    ));
    s
}

/// Whether Docker holds `reference`.
fn image_present(reference: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", reference]).is_ok()
}

/// Removes `reference` from Docker if present; its layers go with it.
fn remove_image(reference: &str) -> Result<()> {
    if image_present(reference) {
        docker(&["rmi", "-f", reference])?;
    }
    Ok(())
}

/// Runs the image's own command: proof that it is usable, not only tagged.
fn check_runs(reference: &str) -> Result<()> {
    docker(&["run", "--rm", "--pull", "never", reference]).map(drop)
}

/// The start of the timed pull and its seconds.
fn docker_pull(reference: &str) -> Result<(Instant, f64)> {
    let t = Instant::now();
    docker(&["pull", "--quiet", reference])?;
    Ok((t, t.elapsed().as_secs_f64()))
}

/// Kills the node on drop (also on error paths).
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Deploys `reference` to a fresh node: the start of the timed deploy (the
/// node's start-up is not timed) and its seconds.
fn edgeswarm_deploy(
    edgeswarm: &Path,
    reference: &str,
    proxy: &Proxy,
    out: &Path,
    run: usize,
    a: &PullBenchArgs,
) -> Result<(Instant, f64)> {
    let data = out.join(format!("es-data/run{run}"));
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    std::fs::create_dir_all(out.join("logs"))?;
    let log = std::fs::File::create(out.join(format!("logs/edgeswarm-run{run}.log")))?;
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let registry = proxy.addr.to_string();
    let child = Command::new(edgeswarm)
        .env("RUST_LOG", &a.node_log)
        .env("NO_COLOR", "1")
        .args(["node", "--data-dir"])
        .arg(&data)
        .args([
            "--locality",
            "pullbench",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--api",
            &api.to_string(),
            "--gateway",
            "--insecure-registry",
            &registry,
            "--import",
            "docker",
            // One node measuring the registry pull: trust and membership
            // are not what it measures (lab flags).
            "--allow-any-publisher",
            "--open-locality",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting edgeswarm node")?;
    let mut node = Node(child);
    let ready_by = Instant::now() + Duration::from_secs(30);
    while watch::http_get(api, "/v1/health", Duration::from_secs(1)).is_err() {
        if let Some(status) = node.0.try_wait()? {
            bail!("edgeswarm node exited ({status}) before its API answered");
        }
        anyhow::ensure!(
            Instant::now() < ready_by,
            "edgeswarm API {api} not up in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let t = Instant::now();
    let deploy = Command::new(edgeswarm)
        .args([
            "deploy",
            reference,
            "--api",
            &api.to_string(),
            "--token-file",
        ])
        .arg(data.join(edgeswarm_testnet::experiment::NODE_TOKEN_FILE))
        .output()
        .context("running edgeswarm deploy")?;
    if !deploy.status.success() {
        bail!(
            "edgeswarm deploy: {}",
            String::from_utf8_lossy(&deploy.stderr).trim()
        );
    }
    let deadline = t + Duration::from_secs(a.timeout);
    loop {
        if let Ok(body) = watch::http_get(api, "/v1/status", Duration::from_secs(2)) {
            let status: serde_json::Value = serde_json::from_slice(&body)?;
            let line = watch::line_from_status(0, &status, reference);
            if let Some(e) = line.error {
                bail!("edgeswarm release failed: {e}");
            }
            if line.state == "done" {
                break;
            }
        }
        if let Some(status) = node.0.try_wait()? {
            bail!("edgeswarm node exited ({status}) during the deploy");
        }
        anyhow::ensure!(Instant::now() < deadline, "edgeswarm deploy timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
    let present = image_present(reference);
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        present,
        "the node reports {reference} done but Docker does not have it"
    );
    drop(node);
    if !a.keep_data {
        std::fs::remove_dir_all(&data)?;
    }
    Ok((t, secs))
}

/// A loopback TCP proxy to the registry: one thread per direction per
/// connection, plain byte copies.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if active.load(Ordering::Relaxed) >= MAX_PROXY_CONNECTIONS {
                    continue; // dropped: the client sees a reset and retries
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                active.fetch_add(1, Ordering::Relaxed);
                let active = active.clone();
                std::thread::spawn(move || {
                    let pipe = |mut from: TcpStream, mut to: TcpStream| {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    };
                    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                        (Ok(c), Ok(s)) => (c, s),
                        _ => return,
                    };
                    let up = std::thread::spawn(move || pipe(c2, s2));
                    pipe(server, client);
                    let _ = up.join();
                    active.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(Proxy { addr, stop })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr).and_then(|mut s| s.flush());
    }
}

#[cfg(test)]
mod tests {
    use edgeswarm_testnet::counters::{IfCounters, Sample};

    use super::*;

    fn series(points: &[(f64, u64)]) -> Series {
        Series {
            samples: points
                .iter()
                .map(|&(t_s, tx_bytes)| Sample {
                    t_s,
                    label: "link".into(),
                    counters: IfCounters {
                        tx_bytes,
                        ..IfCounters::default()
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn last_byte_ends_the_last_interval_carrying_bulk_data() {
        // Counters start at 1000 (earlier traffic); 5 MB cross by 2.0 s,
        // then closing packets and a gateway's manifest re-checks (a few
        // KB every 2 s) trickle in: not image data.
        let s = series(&[
            (0.0, 1_000),
            (1.0, 2_000_000),
            (2.0, 5_001_000),
            (3.0, 5_001_200),
            (4.0, 5_009_000),
            (6.0, 5_017_000),
        ]);
        assert_eq!(last_byte_at(&s, "link"), Some(2.0));
        // Nothing but a trickle: no last byte.
        let s = series(&[(0.0, 0), (1.0, 10_000), (2.0, 20_000)]);
        assert_eq!(last_byte_at(&s, "link"), None);
        assert_eq!(last_byte_at(&s, "other"), None);
    }

    #[test]
    fn after_last_byte_is_the_rest_of_the_measurement() {
        let m = Measurement {
            run: 0,
            contender: Contender::Edgeswarm,
            seconds: 45.5,
            link_bytes: 1,
            last_byte_s: Some(41.0),
        };
        assert_eq!(m.after_last_byte(), Some(4.5));
    }
}
