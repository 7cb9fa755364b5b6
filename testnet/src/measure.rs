//! What a run measures besides completion times: the bytes on every node
//! link (kernel counters of the bridge ports), the CPU time of each
//! process, the time the cloud link took to carry its bytes, and the
//! nodes' own Prometheus counters.
//!
//! Everything here is read from the kernel or from the nodes at the start
//! and the end of a run; the parsing is split from the reading so that the
//! arithmetic is tested without a testnet.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::counters::{IfCounters, Series};
use crate::error::{Result, TestnetError};
use crate::topology::LocalityInfo;

/// Clock ticks per second of `/proc/PID/stat` times: `USER_HZ`, fixed at
/// 100 by the Linux ABI on every architecture this project builds for
/// (what `getconf CLK_TCK` prints), whatever the kernel's `HZ`.
const USER_HZ: f64 = 100.0;

/// Fraction of the cloud link's bytes that marks the end of a pull: the
/// last 0.5 % are left out so that connection teardown and keep-alive
/// packets after the pull do not count as pulling.
pub const PULL_DONE_FRACTION: f64 = 0.995;

/// User + system CPU seconds of process `pid` so far, from the text of
/// `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its last `)`.
pub fn parse_proc_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// TCP segment counters of one network namespace, from the `Tcp:` lines
/// of its `/proc/net/snmp`: what the kernel sent and how much of it was
/// sent again. A segment lost in a shaper's queue was counted on the
/// sending node's link before the drop, so its resend adds to that node's
/// bytes out, not to the receiver's bytes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpSegments {
    /// Segments sent (`OutSegs`: the kernel counts retransmitted ones apart).
    pub sent: u64,
    /// Segments sent again (`RetransSegs`).
    pub retransmitted: u64,
}

impl TcpSegments {
    /// `self - earlier`, saturating.
    pub fn since(&self, earlier: &TcpSegments) -> TcpSegments {
        TcpSegments {
            sent: self.sent.saturating_sub(earlier.sent),
            retransmitted: self.retransmitted.saturating_sub(earlier.retransmitted),
        }
    }
}

/// Parses the text of `/proc/net/snmp`: a `Tcp:` line of field names,
/// then a `Tcp:` line of values.
pub fn parse_snmp_tcp(snmp: &str) -> Option<TcpSegments> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp.next()?.split_whitespace().collect();
    let values: Vec<&str> = tcp.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some(TcpSegments {
        sent: get("OutSegs")?,
        retransmitted: get("RetransSegs")?,
    })
}

/// TCP segment counters of namespace `ns` (`None` if they cannot be read).
pub fn read_tcp_segments(topo: &crate::topology::Topology, ns: &str) -> Option<TcpSegments> {
    let out = topo.exec_output(ns, "cat", &["/proc/net/snmp"]).ok()?;
    parse_snmp_tcp(&String::from_utf8_lossy(&out.stdout))
}

/// Each node namespace's TCP counters now, in node order.
pub fn read_tcp_segments_all(
    topo: &crate::topology::Topology,
    loc: &LocalityInfo,
) -> Vec<Option<TcpSegments>> {
    loc.nodes
        .iter()
        .map(|n| read_tcp_segments(topo, &n.ns))
        .collect()
}

/// Per node, the counters' change between two readings.
pub fn tcp_segments_since(
    before: &[Option<TcpSegments>],
    after: &[Option<TcpSegments>],
) -> Vec<Option<TcpSegments>> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| Some(a.as_ref()?.since(b.as_ref()?)))
        .collect()
}

/// CPU seconds of a live (or exited but not yet reaped) process, `None`
/// once it is gone.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat_cpu(&text)
}

/// User + system CPU seconds of a process *and of the children it has
/// waited for* (`cutime`, `cstime`: fields 16 and 17), from the text of
/// `/proc/PID/stat`. A shell running `tar -xf` (which runs `gzip -d`)
/// holds the whole pipeline's time here once each step has exited.
pub fn parse_proc_stat_cpu_with_children(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)? + ticks(13)? + ticks(14)?) as f64 / USER_HZ)
}

/// [`parse_proc_stat_cpu_with_children`] of a live (or exited but not yet
/// reaped) process, `None` once it is gone.
pub fn proc_cpu_seconds_with_children(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat_cpu_with_children(&text)
}

/// Seconds (from the start of `series`) at which probe `label`'s transmit
/// counter reached `fraction` of what it carried over the whole series,
/// interpolated between samples; `None` when it carried nothing.
///
/// On the cloud probe this is when the locality's pulls ended: for
/// edgeswarm the gateway's pull (the only node that pulls), for the naive
/// baseline the last node's.
pub fn tx_done_seconds(series: &Series, label: &str, fraction: f64) -> Option<f64> {
    let samples: Vec<_> = series.of(label).collect();
    let first = samples.first()?;
    let last = samples.last()?;
    let total = last
        .counters
        .tx_bytes
        .checked_sub(first.counters.tx_bytes)?;
    if total == 0 {
        return None;
    }
    let threshold = first.counters.tx_bytes as f64 + fraction * total as f64;
    for w in samples.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (ya, yb) = (a.counters.tx_bytes as f64, b.counters.tx_bytes as f64);
        if yb >= threshold && yb > ya {
            let f = ((threshold - ya) / (yb - ya)).clamp(0.0, 1.0);
            return Some(a.t_s + f * (b.t_s - a.t_s) - first.t_s);
        }
    }
    Some(last.t_s - first.t_s)
}

/// The rate in Mbit/s at which a cumulative byte counter rose between the
/// moments it reached `lo` and `hi` (fractions) of its total rise, from
/// `(t_s, bytes)` samples in time order, interpolated between samples;
/// `None` if it rose by less than `min_bytes` or the window is empty.
///
/// The middle of a transfer is its steady rate: the start (connection
/// set-up, manifest and chunk-map round trips) and the tail (the last
/// chunks, teardown) say nothing about whether the link is filled.
pub fn window_rate_mbit(samples: &[(f64, u64)], lo: f64, hi: f64, min_bytes: u64) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    let total = last.1.checked_sub(first.1)?;
    if total < min_bytes.max(1) || !(0.0..hi).contains(&lo) || hi > 1.0 {
        return None;
    }
    let at = |fraction: f64| -> Option<f64> {
        let threshold = first.1 as f64 + fraction * total as f64;
        samples.windows(2).find_map(|w| {
            let ((ta, ya), (tb, yb)) = ((w[0].0, w[0].1 as f64), (w[1].0, w[1].1 as f64));
            (yb >= threshold && yb > ya)
                .then(|| ta + ((threshold - ya) / (yb - ya)).clamp(0.0, 1.0) * (tb - ta))
        })
    };
    let (t_lo, t_hi) = (at(lo)?, at(hi)?);
    (t_hi > t_lo).then(|| (hi - lo) * total as f64 * 8.0 / (t_hi - t_lo) / 1e6)
}

/// The rate in Mbit/s while a counter was moving: its rise over the
/// sampling intervals that carried at least `floor_mbit`, divided by their
/// length; `None` if no interval did. Unlike [`window_rate_mbit`], a pause
/// in the middle (a protocol wait, no bytes offered) does not count against
/// it, so it tells whether the receiver kept up while bytes were offered.
pub fn active_rate_mbit(samples: &[(f64, u64)], floor_mbit: f64) -> Option<f64> {
    let (mut bytes, mut secs) = (0u64, 0.0f64);
    for w in samples.windows(2) {
        let (dt, db) = (w[1].0 - w[0].0, w[1].1.saturating_sub(w[0].1));
        if dt > 0.0 && db as f64 * 8.0 / dt / 1e6 >= floor_mbit {
            bytes += db;
            secs += dt;
        }
    }
    (secs > 0.0).then(|| bytes as f64 * 8.0 / secs / 1e6)
}

/// The `(t_s, bytes)` samples of probe `label`'s receive (`rx`) or send
/// counter in `series`.
pub fn series_samples(series: &Series, label: &str, rx: bool) -> Vec<(f64, u64)> {
    series
        .of(label)
        .map(|s| {
            (
                s.t_s,
                if rx {
                    s.counters.rx_bytes
                } else {
                    s.counters.tx_bytes
                },
            )
        })
        .collect()
}

/// [`window_rate_mbit`] of probe `label`'s receive (`rx`) or send counter
/// in `series`.
pub fn series_rate_mbit(
    series: &Series,
    label: &str,
    rx: bool,
    lo: f64,
    hi: f64,
    min_bytes: u64,
) -> Option<f64> {
    let samples: Vec<(f64, u64)> = series
        .of(label)
        .map(|s| {
            (
                s.t_s,
                if rx {
                    s.counters.rx_bytes
                } else {
                    s.counters.tx_bytes
                },
            )
        })
        .collect();
    window_rate_mbit(&samples, lo, hi, min_bytes)
}

/// Bytes into and out of each node over its link, by node index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkBytes {
    /// Bytes the node received (the bridge port sent).
    pub into_node: u64,
    /// Bytes the node sent (the bridge port received).
    pub from_node: u64,
}

/// The bridge-side counters of every node link of locality `loc`: one read
/// of the bridge namespace (`ip -s -j link show`), where every port is.
/// A veth pair's two ends count the same packets, so these are the node
/// ends' counters with receive and send swapped.
pub fn read_bridge_ports(loc: &LocalityInfo) -> Result<Vec<IfCounters>> {
    let all = crate::counters::read_ns(&loc.lan_ns)?;
    loc.nodes
        .iter()
        .map(|n| {
            all.get(&n.bridge_port.name)
                .copied()
                .ok_or_else(|| TestnetError::Parse {
                    command: format!("ip -n {} -s -j link show", loc.lan_ns),
                    reason: format!("no bridge port {}", n.bridge_port.name),
                })
        })
        .collect()
}

/// Per node link: what crossed it between two reads of the bridge ports.
pub fn link_bytes(before: &[IfCounters], after: &[IfCounters]) -> Vec<LinkBytes> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let d = a.since(b);
            LinkBytes {
                into_node: d.tx_bytes,
                from_node: d.rx_bytes,
            }
        })
        .collect()
}

/// The node counters a run reports, from its `/metrics` at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NodeMetrics {
    /// `edgeswarm_release_bytes{source="peers"}` of the watched image:
    /// layer bytes the node took from peers for the release.
    pub release_peer_bytes: f64,
    /// `edgeswarm_release_bytes{source="cloud"}` of the watched image.
    pub release_cloud_bytes: f64,
    /// `edgeswarm_bytes_downloaded_total`: verified chunk bytes from peers
    /// that the node stored.
    pub bytes_downloaded: f64,
    /// `edgeswarm_duplicate_chunks_total`: chunks received from peers that
    /// the node already held (discarded).
    pub duplicate_chunks: f64,
    /// `edgeswarm_bytes_uploaded_total`: chunk bytes served to peers.
    pub bytes_uploaded: f64,
    /// `edgeswarm_stream_bytes_received_total`: every byte read from chunk
    /// streams (payloads and frames).
    pub stream_bytes_received: f64,
    /// `edgeswarm_stream_bytes_sent_total`.
    pub stream_bytes_sent: f64,
    /// `edgeswarm_gossip_bytes_received_total`: gossip messages delivered,
    /// once each.
    pub gossip_bytes_received: f64,
    /// `edgeswarm_gossip_bytes_published_total`.
    pub gossip_bytes_published: f64,
    /// `edgeswarm_rejected_requests_total`: chunk requests this node's
    /// servers declined.
    pub rejected_requests: f64,
    /// `edgeswarm_chunks_relayed_total`: chunks this node served while they
    /// still arrived (cut-through).
    pub chunks_relayed: f64,
    /// `edgeswarm_relays_aborted_total`: relayed chunk answers that ended
    /// without the chunk (asked again).
    pub relays_aborted: f64,
    /// `edgeswarm_relay_bytes_aborted_total`: payload bytes of those,
    /// received and thrown away.
    pub relay_bytes_aborted: f64,
    /// `edgeswarm_stalls_total`: peers whose requests were reassigned.
    pub stalls: f64,
    /// `edgeswarm_cancelled_answers_cut_total`: answers this node had
    /// cancelled that the server stopped under way.
    pub cancelled_answers_cut: f64,
    /// `edgeswarm_cancelled_bytes_read_total`: payload bytes of answers this
    /// node had cancelled, read and thrown away.
    pub cancelled_bytes_read: f64,
    /// `edgeswarm_relays_completed_from_store_total`: relays whose own copy
    /// ended early, completed from the store instead of aborted.
    pub relays_completed_from_store: f64,
}

impl NodeMetrics {
    /// Picks the run's counters out of a node's parsed `/metrics`.
    pub fn from_scrape(m: &BTreeMap<String, f64>, image: &str) -> NodeMetrics {
        let get = |name: &str| metric(m, name, &[]).unwrap_or(0.0);
        NodeMetrics {
            release_peer_bytes: metric(
                m,
                "edgeswarm_release_bytes",
                &[("image", image), ("source", "peers")],
            )
            .unwrap_or(0.0),
            release_cloud_bytes: metric(
                m,
                "edgeswarm_release_bytes",
                &[("image", image), ("source", "cloud")],
            )
            .unwrap_or(0.0),
            bytes_downloaded: get("edgeswarm_bytes_downloaded_total"),
            duplicate_chunks: get("edgeswarm_duplicate_chunks_total"),
            bytes_uploaded: get("edgeswarm_bytes_uploaded_total"),
            stream_bytes_received: get("edgeswarm_stream_bytes_received_total"),
            stream_bytes_sent: get("edgeswarm_stream_bytes_sent_total"),
            gossip_bytes_received: get("edgeswarm_gossip_bytes_received_total"),
            gossip_bytes_published: get("edgeswarm_gossip_bytes_published_total"),
            rejected_requests: get("edgeswarm_rejected_requests_total"),
            chunks_relayed: get("edgeswarm_chunks_relayed_total"),
            relays_aborted: get("edgeswarm_relays_aborted_total"),
            relay_bytes_aborted: get("edgeswarm_relay_bytes_aborted_total"),
            stalls: get("edgeswarm_stalls_total"),
            cancelled_answers_cut: get("edgeswarm_cancelled_answers_cut_total"),
            cancelled_bytes_read: get("edgeswarm_cancelled_bytes_read_total"),
            relays_completed_from_store: get("edgeswarm_relays_completed_from_store_total"),
        }
    }
}

/// Parses the Prometheus text format into `series -> value`, the series
/// written as in the text (`name{label="v",...}`); comments and
/// unparsable lines are skipped.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The value follows the last space outside the label set (label
        // values may hold spaces); an optional timestamp is not written
        // by prometheus-client.
        let split = match line.rfind('}') {
            Some(close) => line[close..].find(' ').map(|i| close + i),
            None => line.find(' '),
        };
        let Some(split) = split else { continue };
        let (series, value) = line.split_at(split);
        let Some(value) = value.split_whitespace().next() else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            out.insert(series.trim().to_string(), v);
        }
    }
    out
}

/// The labels of a series written `name{a="x",b="y"}`, and its name.
fn split_series(series: &str) -> (&str, Vec<(String, String)>) {
    let Some(open) = series.find('{') else {
        return (series, Vec::new());
    };
    let name = &series[..open];
    let body = series[open + 1..].trim_end_matches('}');
    let mut labels = Vec::new();
    let mut rest = body;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 2..];
        // Values escape `"` as `\"`.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        let value = after[..end].replace("\\\"", "\"").replace("\\\\", "\\");
        labels.push((key, value));
        rest = &after[end + 1..];
    }
    (name, labels)
}

/// The value of the series `name` whose labels include every pair of
/// `labels` (the sum, if several do).
pub fn metric(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for (series, v) in m {
        let (n, have) = split_series(series);
        if n != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, want)| have.iter().any(|(hk, hv)| hk == k && hv == want));
        if all {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Sample;

    #[test]
    fn reads_tcp_segments_by_field_name() {
        // As this machine's kernel prints it (fields found by name, not place).
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
            Tcp: 1 200 120000 -1 29 4 1 2 0 10431 7942 17 0 12 0\n\
            Udp: InDatagrams NoPorts\nUdp: 5 0\n";
        let t = parse_snmp_tcp(snmp).expect("parsed");
        assert_eq!(
            t,
            TcpSegments {
                sent: 7942,
                retransmitted: 17
            }
        );
        let later = TcpSegments {
            sent: 8000,
            retransmitted: 20,
        };
        assert_eq!(
            later.since(&t),
            TcpSegments {
                sent: 58,
                retransmitted: 3
            }
        );
        assert_eq!(parse_snmp_tcp("Tcp: OutSegs\n"), None);
        assert_eq!(parse_snmp_tcp("Tcp: InSegs OutSegs\nTcp: 1 2\n"), None);
        assert_eq!(
            tcp_segments_since(&[Some(t), None], &[Some(later), Some(later)]),
            vec![
                Some(TcpSegments {
                    sent: 58,
                    retransmitted: 3
                }),
                None
            ]
        );
    }

    #[test]
    fn reads_cpu_times_past_odd_command_names() {
        // Fields 14/15 (utime, stime) = 250 and 130 ticks.
        let stat = "4242 (edge swarm) (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 130 0 0 20 0 9 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_proc_stat_cpu(stat), Some(3.8));
        assert_eq!(parse_proc_stat_cpu("garbage"), None);
        // Fields 16/17 (cutime, cstime) = 0 here, then 700 and 20 ticks.
        assert_eq!(parse_proc_stat_cpu_with_children(stat), Some(3.8));
        let waited = "4242 (sh) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 130 700 20 20 0 9 0 100";
        assert_eq!(parse_proc_stat_cpu(waited), Some(3.8));
        assert_eq!(parse_proc_stat_cpu_with_children(waited), Some(11.0));
        assert_eq!(parse_proc_stat_cpu_with_children("1 (sh) S 1 2"), None);
        let me = proc_cpu_seconds(std::process::id()).unwrap();
        assert!(me >= 0.0);
    }

    fn sample(t_s: f64, tx: u64) -> Sample {
        Sample {
            t_s,
            label: "cloud0".into(),
            counters: IfCounters {
                tx_bytes: tx,
                ..IfCounters::default()
            },
        }
    }

    #[test]
    fn pull_end_is_interpolated_where_the_bytes_reach_the_fraction() {
        let series = Series {
            samples: vec![
                sample(0.0, 1000),
                sample(1.0, 1000 + 400),
                sample(2.0, 1000 + 900),
                // The tail (teardown) is below the 0.5 %.
                sample(3.0, 1000 + 1000),
                sample(4.0, 1000 + 1000),
            ],
        };
        // 99.5 % of 1000 = 995 bytes: between t=2 (900) and t=3 (1000).
        let t = tx_done_seconds(&series, "cloud0", PULL_DONE_FRACTION).unwrap();
        assert!((t - 2.95).abs() < 1e-9, "{t}");
        assert_eq!(tx_done_seconds(&series, "cloud0", 0.4), Some(1.0));
        assert_eq!(tx_done_seconds(&series, "node3", 0.5), None);
        let idle = Series {
            samples: vec![sample(0.0, 5), sample(1.0, 5)],
        };
        assert_eq!(tx_done_seconds(&idle, "cloud0", 0.5), None);
    }

    #[test]
    fn link_bytes_swap_the_bridge_ports_view() {
        let c = |rx, tx| IfCounters {
            rx_bytes: rx,
            tx_bytes: tx,
            ..IfCounters::default()
        };
        let l = link_bytes(&[c(10, 100), c(0, 0)], &[c(30, 1100), c(5, 7)]);
        assert_eq!(
            l,
            vec![
                LinkBytes {
                    into_node: 1000,
                    from_node: 20
                },
                LinkBytes {
                    into_node: 7,
                    from_node: 5
                }
            ]
        );
    }

    #[test]
    fn parses_prometheus_text_and_picks_labelled_series() {
        let text = r#"# HELP edgeswarm_bytes_downloaded Verified bytes received.
# TYPE edgeswarm_bytes_downloaded counter
edgeswarm_bytes_downloaded_total 1048576
edgeswarm_duplicate_chunks_total 35
edgeswarm_bytes_uploaded_total 48746485
edgeswarm_release_bytes{image="10.77.250.1:5000/testnet/img50:v1",source="cloud"} 54000000
edgeswarm_release_bytes{image="10.77.250.1:5000/testnet/img50:v1",source="peers"} 0
edgeswarm_release_bytes{image="other:v1",source="peers"} 77
edgeswarm_odd{a="x} y"} 2.5
# EOF
"#;
        let m = parse_prometheus(text);
        assert_eq!(m["edgeswarm_duplicate_chunks_total"], 35.0);
        assert_eq!(m[r#"edgeswarm_odd{a="x} y"}"#], 2.5);
        let img = "10.77.250.1:5000/testnet/img50:v1";
        let n = NodeMetrics::from_scrape(&m, img);
        assert_eq!(n.release_peer_bytes, 0.0);
        assert_eq!(n.release_cloud_bytes, 54e6);
        assert_eq!(n.bytes_downloaded, 1048576.0);
        assert_eq!(n.duplicate_chunks, 35.0);
        assert_eq!(n.bytes_uploaded, 48746485.0);
        // Without an image label filter, both images' peer bytes add up.
        assert_eq!(
            metric(&m, "edgeswarm_release_bytes", &[("source", "peers")]),
            Some(77.0)
        );
        assert_eq!(metric(&m, "edgeswarm_missing", &[]), None);
    }

    #[test]
    fn window_rate_is_the_steady_middle_of_a_transfer() {
        // 1 s of nothing, then 12.5 MB/s (100 Mbit/s) for 4 s, then idle.
        let samples: Vec<(f64, u64)> = (0..=70)
            .map(|i| {
                let t = i as f64 * 0.1;
                let b = ((t - 1.0).clamp(0.0, 4.0) * 12_500_000.0) as u64;
                (t, b)
            })
            .collect();
        let r = window_rate_mbit(&samples, 0.05, 0.95, 1).unwrap();
        assert!((r - 100.0).abs() < 0.5, "{r}");
        // The mean over the whole 7 s would be far lower.
        assert!(window_rate_mbit(&samples, 0.0, 1.0, 1).unwrap() > 99.0);
        assert_eq!(window_rate_mbit(&samples, 0.05, 0.95, 60_000_000), None);
        assert_eq!(window_rate_mbit(&samples[..1], 0.05, 0.95, 1), None);
        assert_eq!(window_rate_mbit(&samples, 0.95, 0.05, 1), None);
    }

    #[test]
    fn active_rate_leaves_out_pauses() {
        // 2 s at 100 Mbit/s, a 3 s pause, 1 s at 50 Mbit/s, in 0.1 s steps.
        let mut samples = vec![(0.0, 0u64)];
        let mut b = 0u64;
        for i in 1..=60 {
            let t = i as f64 * 0.1;
            b += match t {
                t if t <= 2.0 + 1e-9 => 1_250_000,
                t if t <= 5.0 + 1e-9 => 0,
                _ => 625_000,
            };
            samples.push((t, b));
        }
        let r = active_rate_mbit(&samples, 10.0).unwrap();
        // 25 MB + 6.25 MB over 3 s of movement.
        assert!((r - 83.33).abs() < 0.1, "{r}");
        // The window rate counts the pause.
        assert!(window_rate_mbit(&samples, 0.05, 0.95, 1).unwrap() < 60.0);
        assert_eq!(active_rate_mbit(&samples, 200.0), None);
        assert_eq!(active_rate_mbit(&samples[..1], 1.0), None);
    }
}
