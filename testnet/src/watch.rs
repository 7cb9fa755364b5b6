//! Watching edgeswarm nodes' progress from inside the testnet.
//!
//! The host has no route into the testnet, so a watcher process runs in the
//! locality's router namespace (which reaches every node over the bridge,
//! never over the cloud link) and polls each node's `GET /v1/status`, one
//! thread per node. It prints one JSON line ([`WatchLine`]) whenever a
//! node's view of the watched image changes; the experiment reads those
//! lines from its stdout and timestamps them on arrival.
//!
//! The poll is a plain HTTP/1.1 request over a `std` TCP stream (a few KB
//! per poll, negligible next to 100 Mbit/s node links).
//!
//! # Cost and accuracy
//! Polling 21 nodes every 100 ms cost ~5 % of a core (the node builds its
//! whole locality view per poll). [`PollPolicy`] polls a node every
//! `fast` interval only while it could finish before a `slow` poll would
//! see it: finishing needs the image's remaining bytes, and the node's
//! link brings at most `link_bytes_per_s`, so a node with more than
//! `slow` seconds of link time (plus `slack_bytes` received but not yet
//! verified) still to go is polled every `slow` interval instead. Once a
//! node is done (or failed) it is not polled again. Every line carries
//! `poll_gap_ms`, the time since the node's previous poll: on the `done`
//! line it bounds the error of the completion time, so a run shows that
//! the slower polling cost no accuracy (the experiment records it per
//! node as `done_gap_s`).
//!
//! Once a node knows the release and its answers carry the
//! `x-edgeswarm-phases` header, the watcher long-polls it instead
//! (`?phase=<count>&wait_ms=1000`): the node answers at its next release
//! phase change, or after a second. The link bound above says nothing
//! about an import, so at N = 21 with `dir` every node, its bytes all in,
//! was polled every 100 ms for the 20 s its extraction took on the busy
//! cores: the watcher alone used 3.2 CPU-s of a 41 s run, and each poll
//! also made the node build its view of 21 nodes. A long poll answers a
//! change as it happens (its `poll_gap_ms` is the answer's way back,
//! since the node says how long it waited) for about one request a second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TestnetError};

/// Header of a node's `GET /v1/status` answer counting its release phase
/// changes (`edgeswarm_node::api::PHASES_HEADER`, which this crate does
/// not link). Should the names ever differ, the watcher just polls.
const PHASES_HEADER: &str = "x-edgeswarm-phases";
/// Header of the same answer: how long the node waited before answering
/// (`edgeswarm_node::api::WAITED_HEADER`).
const WAITED_HEADER: &str = "x-edgeswarm-waited-ms";
/// The longest one long poll waits for a node's next phase change. Short
/// enough that the byte counts of the lines stay fresh, long enough that
/// a node importing for tens of seconds answers about once a second
/// instead of ten times.
const LONG_POLL: Duration = Duration::from_secs(1);

/// One node's state as the watcher saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchLine {
    /// Index of the node in the watcher's `--api` list.
    pub node: usize,
    /// Whether the node's API answered.
    pub up: bool,
    /// The node's peer id.
    pub peer_id: String,
    /// Connected peers.
    pub peers: usize,
    /// Other nodes whose status reports it has heard.
    pub seen: usize,
    /// State of the watched release (`""` until the node knows of it).
    pub state: String,
    /// Layer bytes to fetch.
    pub bytes_total: u64,
    /// Layer bytes verified.
    pub bytes_done: u64,
    /// Bytes pulled from the registry.
    pub bytes_from_cloud: u64,
    /// Bytes received from peers.
    pub bytes_from_peers: u64,
    /// The node's own accept-to-done time.
    pub seconds: Option<f64>,
    /// Why the release failed, if it did.
    pub error: Option<String>,
    /// Milliseconds since the watcher's previous poll of this node (0 for
    /// the first poll): how late this line may be.
    #[serde(default)]
    pub poll_gap_ms: u64,
}

impl WatchLine {
    /// Whether the node's state differs from `other`'s (the poll gap does
    /// not count as a change).
    pub fn changed_from(&self, other: &WatchLine) -> bool {
        let mut a = self.clone();
        a.poll_gap_ms = other.poll_gap_ms;
        a != *other
    }

    /// The release finished, for better or worse: nothing more to watch.
    pub fn finished(&self) -> bool {
        self.error.is_some() || self.state == "done" || self.state == "failed"
    }
}

/// When to poll a node next.
#[derive(Debug, Clone, Copy)]
pub struct PollPolicy {
    /// Interval while the node may finish soon.
    pub fast: Duration,
    /// Interval while it cannot.
    pub slow: Duration,
    /// Most bytes per second a node's link delivers (0: unknown, always
    /// poll fast).
    pub link_bytes_per_s: f64,
    /// Layer bytes of the image, for nodes that do not know the release
    /// yet (0: unknown).
    pub expect_bytes: u64,
    /// Bytes a node may have received but not yet counted as verified.
    pub slack_bytes: u64,
}

impl PollPolicy {
    /// Always every `interval` (the watcher's behaviour before slow polls).
    pub fn fixed(interval: Duration) -> PollPolicy {
        PollPolicy {
            fast: interval,
            slow: interval,
            link_bytes_per_s: 0.0,
            expect_bytes: 0,
            slack_bytes: 0,
        }
    }

    /// How long to wait before polling a node last seen as `line`; `None`:
    /// stop polling it.
    pub fn next(&self, line: &WatchLine) -> Option<Duration> {
        if line.finished() {
            return None;
        }
        // A node whose API is not up yet is starting: a refused connection
        // costs next to nothing.
        if !line.up || self.link_bytes_per_s <= 0.0 {
            return Some(self.fast);
        }
        let total = line.bytes_total.max(self.expect_bytes);
        if total == 0 {
            return Some(self.fast);
        }
        let needed = total
            .saturating_sub(line.bytes_done)
            .saturating_sub(self.slack_bytes);
        let earliest_done = needed as f64 / self.link_bytes_per_s;
        // It cannot finish before a slow poll, nor before the fast poll
        // after it: the slow poll then still sees it unfinished.
        if earliest_done > (self.slow + self.fast).as_secs_f64() {
            Some(self.slow)
        } else {
            Some(self.fast)
        }
    }
}

/// `GET path` on `addr` with HTTP/1.1 and `Connection: close`; returns the
/// body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Vec<u8>> {
    http_get_with_head(addr, path, timeout).map(|(_, body)| body)
}

/// [`http_get`], with the response's status line and headers (lowercased).
pub fn http_get_with_head(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(String, Vec<u8>)> {
    let io = |e| TestnetError::io(format!("GET http://{addr}{path}"), e);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io)?;
    let head = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|end| String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase())
        .unwrap_or_default();
    let body = parse_http_response(&buf).map_err(|reason| TestnetError::Parse {
        command: format!("GET http://{addr}{path}"),
        reason,
    })?;
    Ok((head, body))
}

/// The value of header `name` (lowercase) in `head`, as a number.
fn header_u64(head: &str, name: &str) -> Option<u64> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

/// Splits an HTTP/1.1 response, checks for 200 and undoes chunked encoding.
fn parse_http_response(buf: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP status {status}"));
    }
    let body = &buf[end + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let nl = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_text = String::from_utf8_lossy(&rest[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Reads the watched image's state out of a node's status JSON.
pub fn line_from_status(node: usize, status: &serde_json::Value, image: &str) -> WatchLine {
    let me = &status["self"];
    let mut line = WatchLine {
        node,
        up: true,
        peer_id: me["peer_id"].as_str().unwrap_or_default().to_string(),
        peers: me["connected_peers"].as_u64().unwrap_or(0) as usize,
        seen: status["nodes"].as_array().map_or(0, |a| a.len()),
        ..WatchLine::default()
    };
    let release = me["releases"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["image"].as_str() == Some(image)));
    if let Some(r) = release {
        line.state = r["state"].as_str().unwrap_or_default().to_string();
        line.bytes_total = r["bytes_total"].as_u64().unwrap_or(0);
        line.bytes_done = r["bytes_done"].as_u64().unwrap_or(0);
        line.bytes_from_cloud = r["bytes_from_cloud"].as_u64().unwrap_or(0);
        line.bytes_from_peers = r["bytes_from_peers"].as_u64().unwrap_or(0);
        line.seconds = r["seconds"].as_f64();
        line.error = r["error"].as_str().map(str::to_string);
    }
    line
}

/// The phase count to long-poll from: the node's count (`phases`, from
/// its last answer's header) once it knows the release (its `last` line
/// is up with a state). `None` means a plain status request: before the
/// release, and always for a node whose answers carry no count (one
/// without long polls).
fn long_poll_from(phases: Option<u64>, last: Option<&WatchLine>) -> Option<u64> {
    let knows_release = last.is_some_and(|l| l.up && !l.state.is_empty());
    phases.filter(|_| knows_release)
}

/// The status request for [`long_poll_from`]'s answer.
fn status_path(long_poll: Option<u64>) -> String {
    match long_poll {
        Some(seen) => format!("/v1/status?phase={seen}&wait_ms={}", LONG_POLL.as_millis()),
        None => "/v1/status".to_string(),
    }
}

/// How late an answer's line may be (`WatchLine::poll_gap_ms`). A long
/// poll the node answered after waiting `waited_ms` saw the change come
/// while it waited: late by at most the answer's way back, the time since
/// the request was sent less the wait. Otherwise the change may have come
/// any time since the previous answer (`since_prev_reply_ms`; 0 for the
/// first).
fn poll_gap_ms(
    long_poll: bool,
    since_sent_ms: u64,
    waited_ms: u64,
    since_prev_reply_ms: Option<u64>,
) -> u64 {
    if long_poll && waited_ms > 0 {
        since_sent_ms.saturating_sub(waited_ms)
    } else {
        since_prev_reply_ms.unwrap_or(0)
    }
}

/// The watcher's main loop (the `helper watch` subcommand): polls every API
/// as `policy` says until every node finished (or the reader went away),
/// printing a [`WatchLine`] per change to stdout.
pub fn run_watcher(apis: &[SocketAddr], image: &str, policy: PollPolicy) -> Result<()> {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = apis
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let out = out.clone();
            let image = image.to_string();
            std::thread::spawn(move || {
                let mut last: Option<WatchLine> = None;
                let mut prev_reply: Option<Instant> = None;
                // The node's count of release phase changes, once it
                // answers with one (nodes without long polls never do).
                let mut phases: Option<u64> = None;
                loop {
                    let sent = Instant::now();
                    let long_poll = long_poll_from(phases, last.as_ref());
                    let path = status_path(long_poll);
                    let reply =
                        http_get_with_head(addr, &path, Duration::from_secs(2) + LONG_POLL).ok();
                    let now = Instant::now();
                    phases = reply
                        .as_ref()
                        .and_then(|(head, _)| header_u64(head, PHASES_HEADER));
                    let waited = reply
                        .as_ref()
                        .and_then(|(head, _)| header_u64(head, WAITED_HEADER))
                        .unwrap_or(0);
                    let mut line = match reply
                        .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    {
                        Some(v) => line_from_status(i, &v, &image),
                        None => WatchLine {
                            node: i,
                            ..WatchLine::default()
                        },
                    };
                    line.poll_gap_ms = poll_gap_ms(
                        long_poll.is_some(),
                        now.duration_since(sent).as_millis() as u64,
                        waited,
                        prev_reply.map(|p| now.duration_since(p).as_millis() as u64),
                    );
                    prev_reply = Some(now);
                    if last.as_ref().is_none_or(|l| line.changed_from(l)) {
                        let text = serde_json::to_string(&line).expect("line serializes");
                        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                        if writeln!(o, "{text}").and_then(|()| o.flush()).is_err() {
                            // The reader went away: stop.
                            return;
                        }
                    }
                    let Some(wait) = policy.next(&line) else {
                        return;
                    };
                    let long_poll_next = long_poll_from(phases, Some(&line)).is_some();
                    last = Some(line);
                    if !long_poll_next {
                        std::thread::sleep(wait);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numeric_headers() {
        let head = "http/1.1 200 ok\r\nx-edgeswarm-phases: 17\r\nx-edgeswarm-waited-ms:0\r\ncontent-type: application/json";
        assert_eq!(header_u64(head, PHASES_HEADER), Some(17));
        assert_eq!(header_u64(head, WAITED_HEADER), Some(0));
        assert_eq!(header_u64(head, "content-type"), None);
        assert_eq!(header_u64("http/1.1 200 ok", PHASES_HEADER), None);
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_http_response(plain).unwrap(), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).unwrap(), b"{\"a\":1}");
        assert!(parse_http_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(parse_http_response(b"garbage").is_err());
    }

    #[test]
    fn reads_the_watched_release() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"self":{"peer_id":"12D3","connected_peers":3,"releases":[
                {"image":"other","state":"done","bytes_total":1,"bytes_done":1,"bytes_from_cloud":1,"bytes_from_peers":0,"seconds":1.0,"error":null},
                {"image":"r/app:v1","state":"fetching","bytes_total":100,"bytes_done":40,"bytes_from_cloud":0,"bytes_from_peers":40,"seconds":null,"error":null}]},
               "nodes":[{},{}]}"#,
        )
        .unwrap();
        let l = line_from_status(2, &v, "r/app:v1");
        assert_eq!(l.node, 2);
        assert_eq!(l.peers, 3);
        assert_eq!(l.seen, 2);
        assert_eq!(l.state, "fetching");
        assert_eq!(l.bytes_done, 40);
        assert_eq!(l.bytes_from_peers, 40);
        assert_eq!(l.seconds, None);
    }

    #[test]
    fn polls_slowly_only_while_the_link_cannot_finish_before_the_next_poll() {
        let p = PollPolicy {
            fast: Duration::from_millis(100),
            slow: Duration::from_millis(500),
            link_bytes_per_s: 12.5e6, // 100 Mbit/s
            expect_bytes: 50_000_000,
            slack_bytes: 4_000_000,
        };
        let line = |state: &str, total: u64, done: u64| WatchLine {
            up: true,
            state: state.into(),
            bytes_total: total,
            bytes_done: done,
            ..WatchLine::default()
        };
        // Starting up: fast (a refused connection is cheap).
        assert_eq!(p.next(&WatchLine::default()), Some(p.fast));
        // Release not known yet: the whole image to go, 4 s of link time.
        assert_eq!(p.next(&line("", 0, 0)), Some(p.slow));
        // 4 MB slack + 0.6 s x 12.5 MB/s = 11.5 MB: the boundary.
        assert_eq!(
            p.next(&line("fetching", 50_000_000, 38_400_000)),
            Some(p.slow)
        );
        assert_eq!(
            p.next(&line("fetching", 50_000_000, 38_600_000)),
            Some(p.fast)
        );
        // Every byte in, still importing: fast.
        assert_eq!(
            p.next(&line("importing", 50_000_000, 50_000_000)),
            Some(p.fast)
        );
        // Finished: no more polls.
        assert_eq!(p.next(&line("done", 50_000_000, 50_000_000)), None);
        let mut failed = line("fetching", 50_000_000, 0);
        failed.error = Some("boom".into());
        assert_eq!(p.next(&failed), None);
        // A release bigger than expected counts by its own total.
        assert_eq!(
            p.next(&line("fetching", 90_000_000, 50_000_000)),
            Some(p.slow)
        );
        // Unknown link rate: the old fixed polling.
        let f = PollPolicy::fixed(Duration::from_millis(100));
        assert_eq!(f.next(&line("", 0, 0)), Some(Duration::from_millis(100)));
    }

    #[test]
    fn long_polls_only_a_node_that_counts_phases_and_knows_the_release() {
        let knowing = WatchLine {
            node: 0,
            up: true,
            state: "fetching".into(),
            ..WatchLine::default()
        };
        assert_eq!(long_poll_from(Some(7), Some(&knowing)), Some(7));
        assert_eq!(status_path(Some(7)), "/v1/status?phase=7&wait_ms=1000");
        // A node whose answers carry no phase count (no long polls): the
        // plain request, every time.
        assert_eq!(long_poll_from(None, Some(&knowing)), None);
        assert_eq!(status_path(None), "/v1/status");
        // Before the release, before the first answer, and while down.
        let idle = WatchLine {
            state: String::new(),
            ..knowing.clone()
        };
        assert_eq!(long_poll_from(Some(7), Some(&idle)), None);
        assert_eq!(long_poll_from(Some(7), None), None);
        let down = WatchLine {
            up: false,
            ..knowing
        };
        assert_eq!(long_poll_from(Some(7), Some(&down)), None);
    }

    #[test]
    fn a_woken_long_poll_is_late_by_its_way_back_only() {
        // Sent 840 ms ago, the node waited 800 ms: the change is 40 ms old.
        assert_eq!(poll_gap_ms(true, 840, 800, Some(900)), 40);
        // A long poll answered at once (a change already seen as stale) or
        // a plain poll: the change came some time since the previous answer.
        assert_eq!(poll_gap_ms(true, 30, 0, Some(500)), 500);
        assert_eq!(poll_gap_ms(false, 30, 800, Some(100)), 100);
        assert_eq!(poll_gap_ms(false, 30, 0, None), 0);
        // A clock step never underflows.
        assert_eq!(poll_gap_ms(true, 10, 800, None), 0);
    }

    #[test]
    fn the_poll_gap_is_not_a_change() {
        let a = WatchLine {
            node: 1,
            up: true,
            poll_gap_ms: 100,
            ..WatchLine::default()
        };
        let mut b = a.clone();
        b.poll_gap_ms = 500;
        assert!(!b.changed_from(&a));
        b.peers = 1;
        assert!(b.changed_from(&a));
    }
}
