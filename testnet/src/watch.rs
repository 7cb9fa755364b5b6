//! Watching edgeswarm nodes' progress from inside the testnet.
//!
//! The host has no route into the testnet, so a watcher process runs in the
//! locality's router namespace (which reaches every node over the bridge,
//! never over the cloud link) and polls each node's `GET /v1/status` every
//! interval, one thread per node. It prints one JSON line ([`WatchLine`])
//! whenever a node's view of the watched image changes; the experiment
//! reads those lines from its stdout and timestamps them on arrival.
//!
//! The poll is a plain HTTP/1.1 request over a `std` TCP stream (a few KB
//! per poll, negligible next to 100 Mbit/s node links).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TestnetError};

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
}

/// `GET path` on `addr` with HTTP/1.1 and `Connection: close`; returns the
/// body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Vec<u8>> {
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
    parse_http_response(&buf).map_err(|reason| TestnetError::Parse {
        command: format!("GET http://{addr}{path}"),
        reason,
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

/// The watcher's main loop (the `helper watch` subcommand): polls every API
/// until killed, printing a [`WatchLine`] per change to stdout.
pub fn run_watcher(apis: &[SocketAddr], image: &str, interval: Duration) -> Result<()> {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = apis
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let out = out.clone();
            let image = image.to_string();
            std::thread::spawn(move || {
                let mut last: Option<WatchLine> = None;
                loop {
                    let line = match http_get(addr, "/v1/status", Duration::from_secs(2))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    {
                        Some(v) => line_from_status(i, &v, &image),
                        None => WatchLine {
                            node: i,
                            ..WatchLine::default()
                        },
                    };
                    if last.as_ref() != Some(&line) {
                        let text = serde_json::to_string(&line).expect("line serializes");
                        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                        if writeln!(o, "{text}").and_then(|()| o.flush()).is_err() {
                            // The reader went away: stop.
                            return;
                        }
                        last = Some(line);
                    }
                    std::thread::sleep(interval);
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
}
