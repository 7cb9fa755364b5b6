//! Interface byte counters and a sampler that records them as a time series.
//!
//! One-shot reads ([`read`], [`read_ns`]) run `ip -n NS -s -j link show`.
//! The [`Sampler`] instead parks one `sleep infinity` "anchor" process in
//! each probed namespace and reads `/proc/<anchor>/net/dev`, which shows the
//! counters of the anchor's namespace: a file read per namespace per sample
//! and no process spawned, so sampling 22 links every 100 ms stays cheap on
//! 2 cores. The counters are the kernel's: they count what crossed the link
//! (retransmissions included), whatever the processes claim.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cmd;
use crate::error::{Result, TestnetError};
use crate::process::{NetnsProcess, SpawnSpec};
use crate::topology::Iface;

/// Byte and packet counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IfCounters {
    /// Bytes received by this end of the link.
    pub rx_bytes: u64,
    /// Bytes sent by this end of the link.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

impl IfCounters {
    /// `self - earlier`, saturating (counters only grow while a link lives).
    pub fn since(&self, earlier: &IfCounters) -> IfCounters {
        IfCounters {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
        }
    }
}

/// Counters of every interface in namespace `ns`, by interface name.
pub fn read_ns(ns: &str) -> Result<BTreeMap<String, IfCounters>> {
    let args = ["-n", ns, "-s", "-j", "link", "show"];
    let out = cmd::run("ip", &args)?;
    let parse_err = |reason: String| TestnetError::Parse {
        command: cmd::render("ip", &args),
        reason,
    };
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| parse_err(e.to_string()))?;
    let arr = v
        .as_array()
        .ok_or_else(|| parse_err("not a JSON array".into()))?;
    let mut map = BTreeMap::new();
    for link in arr {
        let name = link["ifname"]
            .as_str()
            .ok_or_else(|| parse_err("link without ifname".into()))?;
        let stats = if link["stats64"].is_object() {
            &link["stats64"]
        } else {
            &link["stats"]
        };
        let get = |dir: &str, what: &str| {
            stats[dir][what]
                .as_u64()
                .ok_or_else(|| parse_err(format!("{name}: no {dir}.{what}")))
        };
        map.insert(
            name.to_string(),
            IfCounters {
                rx_bytes: get("rx", "bytes")?,
                tx_bytes: get("tx", "bytes")?,
                rx_packets: get("rx", "packets")?,
                tx_packets: get("tx", "packets")?,
            },
        );
    }
    Ok(map)
}

/// Counters of one interface.
pub fn read(iface: &Iface) -> Result<IfCounters> {
    read_ns(&iface.ns)?
        .remove(&iface.name)
        .ok_or_else(|| TestnetError::Parse {
            command: format!("ip -n {} -s -j link show", iface.ns),
            reason: format!("no interface {}", iface.name),
        })
}

/// One interface to sample, under a label used in the CSV (e.g. `cloud`,
/// `node0`).
#[derive(Debug, Clone)]
pub struct Probe {
    /// Column value in the CSV's `link` field.
    pub label: String,
    /// The interface.
    pub iface: Iface,
}

impl Probe {
    /// A probe.
    pub fn new(label: impl Into<String>, iface: Iface) -> Self {
        Self {
            label: label.into(),
            iface,
        }
    }
}

/// One reading of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t_s: f64,
    /// The probe's label.
    pub label: String,
    /// Counters at that time.
    pub counters: IfCounters,
}

/// Everything a sampler recorded.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Samples in time order (all probes interleaved).
    pub samples: Vec<Sample>,
}

impl Series {
    /// Counters of `label` at the last sample minus the first: the traffic
    /// during the sampling window.
    pub fn delta(&self, label: &str) -> Option<IfCounters> {
        let first = self.samples.iter().find(|s| s.label == label)?;
        let last = self.samples.iter().rev().find(|s| s.label == label)?;
        Some(last.counters.since(&first.counters))
    }

    /// Samples of one probe.
    pub fn of<'a>(&'a self, label: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.label == label)
    }
}

/// Samples interface counters every `interval` on a background thread,
/// appending `t_s,link,rx_bytes,tx_bytes,rx_mbit_s,tx_mbit_s,rx_packets,tx_packets`
/// rows to a CSV (rates over the previous interval, 0 for the first row of
/// each link). Packets tell the bulk from the small frames (ACKs, `Have`s,
/// gossip) that cost a link's bytes beyond the payload.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Series>>>,
}

impl Sampler {
    /// Takes a first sample synchronously (so that the baseline predates
    /// whatever the caller does next) and starts the thread.
    pub fn start(probes: Vec<Probe>, interval: Duration, csv: Option<PathBuf>) -> Result<Sampler> {
        let mut w = match &csv {
            Some(p) => {
                let f = std::fs::File::create(p)
                    .map_err(|e| TestnetError::io(format!("creating {}", p.display()), e))?;
                let mut w = std::io::BufWriter::new(f);
                writeln!(
                    w,
                    "t_s,link,rx_bytes,tx_bytes,rx_mbit_s,tx_mbit_s,rx_packets,tx_packets"
                )
                .map_err(|e| TestnetError::io(format!("writing {}", p.display()), e))?;
                Some((w, p.clone()))
            }
            None => None,
        };
        let mut anchors = BTreeMap::new();
        for p in &probes {
            if !anchors.contains_key(&p.iface.ns) {
                anchors.insert(p.iface.ns.clone(), Anchor::park(&p.iface.ns)?);
            }
        }
        let start = Instant::now();
        let mut series = Series::default();
        sample_once(&probes, &anchors, start, &mut series, &mut w)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("testnet-sampler".into())
            .spawn(move || {
                let mut next = start + interval;
                loop {
                    let now = Instant::now();
                    if next > now {
                        // Sleep in small steps so stop() returns promptly.
                        std::thread::sleep((next - now).min(Duration::from_millis(20)));
                        if !stop2.load(Ordering::Relaxed) {
                            continue;
                        }
                    }
                    sample_once(&probes, &anchors, start, &mut series, &mut w)?;
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    next += interval;
                    if next < Instant::now() {
                        next = Instant::now() + interval;
                    }
                }
                if let Some((w, p)) = &mut w {
                    w.flush()
                        .map_err(|e| TestnetError::io(format!("writing {}", p.display()), e))?;
                }
                Ok(series)
            })
            .map_err(|e| TestnetError::io("starting sampler thread", e))?;
        Ok(Sampler {
            stop,
            handle: Some(handle),
        })
    }

    /// Takes a final sample, stops the thread, flushes the CSV, returns the
    /// series.
    pub fn stop(mut self) -> Result<Series> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("handle present until stop");
        h.join().unwrap_or_else(|_| {
            Err(TestnetError::io(
                "sampler thread",
                std::io::Error::other("panicked"),
            ))
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A `sleep infinity` parked in a namespace: `/proc/<pid>/net/dev` then
/// shows that namespace's interface counters. Killed on drop.
#[derive(Debug)]
struct Anchor {
    pid: u32,
    _process: NetnsProcess,
}

impl Anchor {
    fn park(ns: &str) -> Result<Anchor> {
        let process =
            NetnsProcess::spawn(ns, SpawnSpec::new("sleep", "/dev/null").arg("infinity"))?;
        let pid = process.pid();
        // `ip netns exec` enters the namespace, then execs sleep: once the
        // process is called `sleep`, it is in the namespace.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return Ok(Anchor {
                    pid,
                    _process: process,
                });
            }
            if Instant::now() >= deadline {
                return Err(TestnetError::Timeout {
                    what: format!("anchor process entering {ns}"),
                    after: Duration::from_secs(5),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn read(&self) -> Result<BTreeMap<String, IfCounters>> {
        let path = format!("/proc/{}/net/dev", self.pid);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| TestnetError::io(format!("reading {path}"), e))?;
        parse_net_dev(&text).map_err(|reason| TestnetError::Parse {
            command: format!("cat {path}"),
            reason,
        })
    }
}

/// Parses `/proc/net/dev`: two header lines, then
/// `name: rx_bytes rx_packets (6 more) tx_bytes tx_packets (6 more)`.
fn parse_net_dev(text: &str) -> std::result::Result<BTreeMap<String, IfCounters>, String> {
    let mut map = BTreeMap::new();
    for line in text.lines().skip(2) {
        let (name, rest) = line
            .split_once(':')
            .ok_or_else(|| format!("no ':' in {line:?}"))?;
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| {
                x.parse()
                    .map_err(|_| format!("bad number {x:?} in {line:?}"))
            })
            .collect::<std::result::Result<_, _>>()?;
        if f.len() < 16 {
            return Err(format!("{} fields in {line:?}", f.len()));
        }
        map.insert(
            name.trim().to_string(),
            IfCounters {
                rx_bytes: f[0],
                rx_packets: f[1],
                tx_bytes: f[8],
                tx_packets: f[9],
            },
        );
    }
    Ok(map)
}

fn sample_once(
    probes: &[Probe],
    anchors: &BTreeMap<String, Anchor>,
    start: Instant,
    series: &mut Series,
    w: &mut Option<(std::io::BufWriter<std::fs::File>, PathBuf)>,
) -> Result<()> {
    let mut by_ns: BTreeMap<&str, BTreeMap<String, IfCounters>> = BTreeMap::new();
    for (ns, a) in anchors {
        by_ns.insert(ns, a.read()?);
    }
    let t_s = start.elapsed().as_secs_f64();
    for p in probes {
        let c = by_ns[p.iface.ns.as_str()]
            .get(&p.iface.name)
            .copied()
            .ok_or_else(|| TestnetError::Parse {
                command: format!("ip -n {} -s -j link show", p.iface.ns),
                reason: format!("no interface {}", p.iface.name),
            })?;
        let prev = series.samples.iter().rev().find(|s| s.label == p.label);
        let (rx_r, tx_r) = match prev {
            Some(prev) if t_s > prev.t_s => {
                let d = c.since(&prev.counters);
                let dt = t_s - prev.t_s;
                (
                    d.rx_bytes as f64 * 8.0 / dt / 1e6,
                    d.tx_bytes as f64 * 8.0 / dt / 1e6,
                )
            }
            _ => (0.0, 0.0),
        };
        if let Some((w, path)) = w {
            writeln!(
                w,
                "{t_s:.3},{},{},{},{rx_r:.3},{tx_r:.3},{},{}",
                p.label, c.rx_bytes, c.tx_bytes, c.rx_packets, c.tx_packets
            )
            .map_err(|e| TestnetError::io(format!("writing {}", path.display()), e))?;
        }
        series.samples.push(Sample {
            t_s,
            label: p.label.clone(),
            counters: c,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0: 21005910   14000    0    0    0     0          0         0     9999     130    0    0    0     0       0          0
";
        let m = parse_net_dev(text).unwrap();
        assert_eq!(
            m["eth0"],
            IfCounters {
                rx_bytes: 21005910,
                rx_packets: 14000,
                tx_bytes: 9999,
                tx_packets: 130
            }
        );
        assert_eq!(m["lo"].tx_bytes, 100);
        assert!(parse_net_dev("h\nh\n eth0: 1 2 3\n").is_err());
    }
}
