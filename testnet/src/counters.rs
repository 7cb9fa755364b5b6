//! Interface byte counters and a sampler that records them as a time series.
//!
//! Counters are read with `ip -n NS -s -j link show`, one `ip` process per
//! namespace per sample (a few milliseconds), so sampling every 200 ms costs
//! little even with a probe per node. The counters are the kernel's: they
//! count what crossed the link, whatever the processes claim.

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
        let mut it = self.samples.iter().filter(|s| s.label == label);
        let first = it.next()?;
        let last = it.last().unwrap_or(first);
        Some(last.counters.since(&first.counters))
    }

    /// Samples of one probe.
    pub fn of<'a>(&'a self, label: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.label == label)
    }
}

/// Samples interface counters every `interval` on a background thread,
/// appending `t_s,link,rx_bytes,tx_bytes,rx_mbit_s,tx_mbit_s` rows to a CSV
/// (rates over the previous interval, 0 for the first row of each link).
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
                writeln!(w, "t_s,link,rx_bytes,tx_bytes,rx_mbit_s,tx_mbit_s")
                    .map_err(|e| TestnetError::io(format!("writing {}", p.display()), e))?;
                Some((w, p.clone()))
            }
            None => None,
        };
        let start = Instant::now();
        let mut series = Series::default();
        sample_once(&probes, start, &mut series, &mut w)?;
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
                    sample_once(&probes, start, &mut series, &mut w)?;
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

fn sample_once(
    probes: &[Probe],
    start: Instant,
    series: &mut Series,
    w: &mut Option<(std::io::BufWriter<std::fs::File>, PathBuf)>,
) -> Result<()> {
    let mut by_ns: BTreeMap<&str, BTreeMap<String, IfCounters>> = BTreeMap::new();
    for p in probes {
        if !by_ns.contains_key(p.iface.ns.as_str()) {
            by_ns.insert(&p.iface.ns, read_ns(&p.iface.ns)?);
        }
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
                "{t_s:.3},{},{},{},{rx_r:.3},{tx_r:.3}",
                p.label, c.rx_bytes, c.tx_bytes
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
