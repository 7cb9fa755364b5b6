//! What the `edgeswarm` CLI shows an operator (part of the binary only):
//! status as live progress bars on a terminal or plain lines otherwise,
//! the `images` table, and the outcome of `rm`.
//!
//! Goals: one screen answers "is it working, where do the bytes come from,
//! what failed". Non-goals: a full-screen TUI; anything a script needs is
//! in `--json`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::IsTerminal as _;

use anyhow::{Context, Result};
use edgeswarm_node::api::RemoveResponse;
use edgeswarm_node::daemon::{ReleasePhase, ReleaseView, StatusView};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether stdout is a terminal (progress bars) or a pipe/file (plain lines).
pub(crate) fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// The last 8 characters of a peer id, enough to tell nodes apart (the
/// first ones are the same multihash prefix for every ed25519 peer id).
fn short_peer(peer: &str) -> &str {
    let start = peer.len().saturating_sub(8);
    &peer[start..]
}

/// The name a release is shown under.
fn release_name(r: &ReleaseView) -> &str {
    if r.image.is_empty() {
        &r.id
    } else {
        &r.image
    }
}

fn percent(r: &ReleaseView) -> f64 {
    if r.bytes_total > 0 {
        100.0 * r.bytes_done as f64 / r.bytes_total as f64
    } else if r.state == ReleasePhase::Done {
        100.0
    } else {
        0.0
    }
}

/// Details after the byte counts: sources, time, error, why it waits.
fn details(r: &ReleaseView) -> String {
    let mut s = format!(
        "cloud {}, peers {}",
        HumanBytes(r.bytes_from_cloud),
        HumanBytes(r.bytes_from_peers)
    );
    if let Some(secs) = r.seconds {
        let _ = write!(s, ", {secs:.1}s");
    }
    if let Some(e) = &r.error {
        let _ = write!(s, ", error: {e}");
    }
    if let Some(w) = &r.waiting {
        let _ = write!(s, ", waiting: {w}");
    }
    s
}

/// One node's line in plain status output.
fn node_line(peer: &str, role: &str, extra: &str) -> String {
    format!("{peer} {role}{extra}")
}

/// One release's line in plain status output.
fn release_line(r: &ReleaseView) -> String {
    format!(
        "  {} {} {:.0}% ({} of {}; {})",
        release_name(r),
        r.state,
        percent(r),
        HumanBytes(r.bytes_done),
        HumanBytes(r.bytes_total),
        details(r)
    )
}

/// Plain-text status: one line per node, one indented line per release,
/// then refused releases.
pub(crate) fn render_plain(view: &StatusView) -> String {
    let mut out = String::new();
    let me = &view.this;
    let _ = writeln!(
        out,
        "{}",
        node_line(
            &me.peer_id,
            &me.role,
            &format!(
                " (this node, locality {}, {} peers connected)",
                me.locality, me.connected_peers
            )
        )
    );
    for w in &me.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    for r in &me.releases {
        let _ = writeln!(out, "{}", release_line(r));
    }
    let mut nodes: Vec<_> = view.nodes.iter().collect();
    nodes.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    for n in nodes {
        let extra = if n.gone {
            format!(" (gone, last seen {:.0}s ago)", n.last_seen_secs)
        } else {
            String::new()
        };
        let _ = writeln!(out, "{}", node_line(&n.peer_id, &n.role, &extra));
        for r in &n.releases {
            let _ = writeln!(out, "{}", release_line(r));
        }
    }
    out.push_str(&render_refused(view));
    out
}

/// One line per refusal this node recorded.
fn render_refused(view: &StatusView) -> String {
    let mut out = String::new();
    for refused in &view.refused {
        let _ = writeln!(
            out,
            "refused {}{}: {}",
            if refused.image.is_empty() {
                "a request"
            } else {
                &refused.image
            },
            refused
                .from
                .as_deref()
                .map(|f| format!(" from {f}"))
                .unwrap_or_default(),
            refused.reason
        );
    }
    out
}

/// `Some(Ok)` once every release on every live node is done, `Some(Err)`
/// once all are settled and some failed, `None` while work remains (or no
/// release is known yet).
pub(crate) fn settled(view: &StatusView) -> Option<Result<()>> {
    let all: Vec<&ReleaseView> = view
        .this
        .releases
        .iter()
        .chain(
            view.nodes
                .iter()
                .filter(|n| !n.gone)
                .flat_map(|n| n.releases.iter()),
        )
        .collect();
    if all.is_empty() || all.iter().any(|r| !r.state.is_settled()) {
        return None;
    }
    let failed: Vec<String> = all
        .iter()
        .filter(|r| r.state == ReleasePhase::Failed)
        .map(|r| {
            format!(
                "{}: {}",
                release_name(r),
                r.error.as_deref().unwrap_or("no reason given")
            )
        })
        .collect();
    Some(if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{} release(s) failed: {}",
            failed.len(),
            failed.join("; ")
        ))
    })
}

/// Live progress bars, one per node and release, drawn on stdout.
pub(crate) struct Bars {
    /// The bars' shared terminal area.
    multi: MultiProgress,
    /// Bars by (peer id, release id), in creation order.
    bars: HashMap<(String, String), ProgressBar>,
    /// Node header lines by peer id.
    headers: HashMap<String, ProgressBar>,
}

impl Bars {
    pub(crate) fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: HashMap::new(),
            headers: HashMap::new(),
        }
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template(
            "  {prefix}  {msg}\n    [{bar:40.cyan/blue}] {bytes}/{total_bytes} {percent:>3}%",
        )
        .expect("static template")
        .progress_chars("=> ")
    }

    fn header(&mut self, peer: &str, text: String) {
        let bar = self
            .headers
            .entry(peer.to_owned())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_style(ProgressStyle::with_template("{wide_msg}").expect("static template"));
                bar
            })
            .clone();
        bar.set_message(text);
    }

    fn release(&mut self, peer: &str, r: &ReleaseView) {
        let key = (peer.to_owned(), r.id.clone());
        let bar = self
            .bars
            .entry(key)
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(r.bytes_total));
                bar.set_style(Self::style());
                bar.set_prefix(release_name(r).to_owned());
                bar
            })
            .clone();
        bar.set_length(r.bytes_total.max(1));
        bar.set_position(if r.state == ReleasePhase::Done {
            r.bytes_total.max(1)
        } else {
            r.bytes_done
        });
        bar.set_message(format!("{} | {}", r.state, details(r)));
    }

    /// Redraws every bar from a fresh status.
    pub(crate) fn update(&mut self, view: &StatusView) {
        let me = &view.this;
        self.header(
            &me.peer_id,
            format!(
                "{} {} (this node, locality {}, {} peers)",
                short_peer(&me.peer_id),
                me.role,
                me.locality,
                me.connected_peers
            ),
        );
        for r in &me.releases {
            self.release(&me.peer_id, r);
        }
        let mut nodes: Vec<_> = view.nodes.iter().collect();
        nodes.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        for n in nodes {
            self.header(
                &n.peer_id,
                format!(
                    "{} {}{}",
                    short_peer(&n.peer_id),
                    n.role,
                    if n.gone { " (gone)" } else { "" }
                ),
            );
            for r in &n.releases {
                self.release(&n.peer_id, r);
            }
        }
    }

    /// Draws one snapshot and leaves it on screen, refusals below.
    pub(crate) fn show_once(mut self, view: &StatusView) {
        self.update(view);
        self.finish();
        print!("{}", render_refused(view));
    }

    /// Leaves the bars on screen as they are.
    pub(crate) fn finish(&mut self) {
        for bar in self.headers.values().chain(self.bars.values()) {
            bar.abandon();
        }
    }
}

/// The `images` table: images (pins) first, then every blob.
pub(crate) fn render_images(value: &serde_json::Value) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Blob {
        digest: String,
        size: u64,
        chunks: u32,
        chunks_held: u32,
        complete: bool,
        pinned_by: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Images {
        usage_bytes: u64,
        blobs: Vec<Blob>,
        pins: BTreeMap<String, Vec<String>>,
    }
    let images: Images =
        serde_json::from_value(value.clone()).context("the node's image list has another shape")?;
    let by_digest: HashMap<&str, &Blob> = images
        .blobs
        .iter()
        .map(|b| (b.digest.as_str(), b))
        .collect();
    let mut out = String::new();
    let width = images
        .pins
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(5);
    let _ = writeln!(
        out,
        "{:<width$}  {:>5}  {:>10}  STATE",
        "IMAGE", "BLOBS", "SIZE"
    );
    if images.pins.is_empty() {
        let _ = writeln!(out, "(no images)");
    }
    for (name, digests) in &images.pins {
        let held: Vec<&&Blob> = digests
            .iter()
            .filter_map(|d| by_digest.get(d.as_str()))
            .collect();
        let size: u64 = held.iter().map(|b| b.size).sum();
        let complete = held.iter().filter(|b| b.complete).count();
        let state = if complete == digests.len() {
            "complete".to_owned()
        } else {
            format!("partial ({complete} of {} blobs)", digests.len())
        };
        let _ = writeln!(
            out,
            "{name:<width$}  {:>5}  {:>10}  {state}",
            digests.len(),
            HumanBytes(size).to_string()
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<19}  {:>10}  {:<14}  PINNED BY",
        "BLOB", "SIZE", "STATE"
    );
    for b in &images.blobs {
        let short = b
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&b.digest)
            .chars()
            .take(12)
            .collect::<String>();
        let state = if b.complete {
            "complete".to_owned()
        } else {
            format!("partial {}/{}", b.chunks_held, b.chunks)
        };
        let pinned = if b.pinned_by.is_empty() {
            "- (collectable)".to_owned()
        } else {
            b.pinned_by.join(", ")
        };
        let _ = writeln!(
            out,
            "sha256:{short}  {:>10}  {state:<14}  {pinned}",
            HumanBytes(b.size).to_string()
        );
    }
    let _ = writeln!(
        out,
        "\n{} blob(s), {} in the store",
        images.blobs.len(),
        HumanBytes(images.usage_bytes)
    );
    Ok(out)
}

/// Human summary of `rm`.
pub(crate) fn render_removal(response: &RemoveResponse) -> String {
    let r = &response.report;
    let mut parts = Vec::new();
    if r.unpinned {
        parts.push("unpinned".to_owned());
    }
    if let Some(what) = &r.sink_removed {
        parts.push(format!("{what} removed"));
    }
    parts.push(format!(
        "{} blob(s) collected ({})",
        r.blobs_removed,
        HumanBytes(r.bytes_freed)
    ));
    let mut out = format!("{}: {}\n", r.image, parts.join(", "));
    if response.locality {
        out.push_str("removal request sent to every node of the locality\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeswarm_node::daemon::{PeerView, SelfView};

    fn release(state: ReleasePhase, done: u64, error: Option<&str>) -> ReleaseView {
        ReleaseView {
            id: "sha256:aa".into(),
            image: "reg:5000/app:v1".into(),
            manifest: "sha256:bb".into(),
            state,
            bytes_total: 4 << 20,
            bytes_done: done,
            bytes_from_cloud: 0,
            bytes_from_peers: done,
            seconds: (state == ReleasePhase::Done).then_some(2.5),
            error: error.map(str::to_owned),
            gateway: None,
            created: Some(1),
            seq: Some(1),
            waiting: None,
        }
    }

    fn view(mine: ReleaseView, theirs: ReleaseView, gone: bool) -> StatusView {
        StatusView {
            this: SelfView {
                peer_id: "12D3KooWself".into(),
                addresses: vec![],
                role: "gateway".into(),
                locality: "plant-7".into(),
                connected_peers: 1,
                releases: vec![mine],
                warnings: vec![],
            },
            nodes: vec![PeerView {
                peer_id: "12D3KooWpeer".into(),
                role: "node".into(),
                gateway_capable: false,
                last_seen_secs: 1.0,
                gone,
                releases: vec![theirs],
            }],
            refused: vec![],
            desired: vec![],
            next_seq: 1,
        }
    }

    #[test]
    fn plain_status_shows_nodes_progress_sources_and_errors() {
        let v = view(
            release(ReleasePhase::Done, 4 << 20, None),
            release(ReleasePhase::Failed, 1 << 20, Some("disk full")),
            false,
        );
        let mut v = v;
        v.refused.push(edgeswarm_node::daemon::RefusedView {
            image: "reg:5000/app:v9".into(),
            from: Some("12D3KooWrogue".into()),
            reason: "release refused: untrusted key".into(),
        });
        let text = render_plain(&v);
        assert!(
            text.contains(
                "refused reg:5000/app:v9 from 12D3KooWrogue: release refused: untrusted key"
            ),
            "{text}"
        );
        assert!(text.contains("12D3KooWself gateway (this node, locality plant-7"));
        assert!(text.contains("reg:5000/app:v1 done 100% (4.00 MiB of 4.00 MiB"));
        assert!(text.contains("2.5s"));
        assert!(text.contains("12D3KooWpeer node"));
        assert!(text.contains("failed 25%"));
        assert!(text.contains("error: disk full"), "{text}");
    }

    #[test]
    fn plain_status_says_why_each_node_waits() {
        let mut mine = release(ReleasePhase::Fetching, 1 << 20, None);
        mine.waiting = Some(
            "gateway 12D3KooWpeer retrying: registry unreachable (connection refused), \
             attempt 3, next in 8 s"
                .into(),
        );
        let mut theirs = release(ReleasePhase::Resolving, 0, None);
        theirs.waiting = Some(
            "retrying: registry unreachable (connection refused), attempt 3, next in 8 s".into(),
        );
        let text = render_plain(&view(mine, theirs, false));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains(
                "fetching 25% (1.00 MiB of 4.00 MiB; cloud 0 B, peers 1.00 MiB, waiting: gateway \
                 12D3KooWpeer retrying: registry unreachable (connection refused), attempt 3, \
                 next in 8 s)"
            ),
            "{text}"
        );
        assert!(lines[2].starts_with("12D3KooWpeer node"), "{text}");
        assert!(
            lines[3].contains("resolving 0% (0 B of 4.00 MiB; cloud 0 B, peers 0 B, waiting: retrying: registry unreachable"),
            "{text}"
        );
    }

    #[test]
    fn settled_waits_for_every_live_node_and_reports_failures() {
        let busy = view(
            release(ReleasePhase::Done, 4 << 20, None),
            release(ReleasePhase::Fetching, 0, None),
            false,
        );
        assert!(settled(&busy).is_none());
        // A gone node does not hold the watch open.
        let gone = view(
            release(ReleasePhase::Done, 4 << 20, None),
            release(ReleasePhase::Fetching, 0, None),
            true,
        );
        assert!(matches!(settled(&gone), Some(Ok(()))));
        let failed = view(
            release(ReleasePhase::Done, 4 << 20, None),
            release(ReleasePhase::Failed, 0, Some("boom")),
            false,
        );
        let err = settled(&failed).unwrap().unwrap_err().to_string();
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn images_table_names_images_sizes_and_pins() {
        let value = serde_json::json!({
            "usage_bytes": 3000,
            "blobs": [
                {"digest": "sha256:aaaaaaaaaaaaaaaaaaaa", "size": 1000, "chunks": 1, "chunks_held": 1,
                 "complete": true, "pinned_by": ["reg/app:v1"]},
                {"digest": "sha256:bbbbbbbbbbbbbbbbbbbb", "size": 2000, "chunks": 4, "chunks_held": 1,
                 "complete": false, "pinned_by": []},
            ],
            "pins": {"reg/app:v1": ["sha256:aaaaaaaaaaaaaaaaaaaa"]},
        });
        let text = render_images(&value).unwrap();
        assert!(
            text.contains("reg/app:v1      1      1000 B  complete"),
            "{text}"
        );
        assert!(
            text.contains("sha256:aaaaaaaaaaaa      1000 B  complete        reg/app:v1"),
            "{text}"
        );
        assert!(text.contains("partial 1/4"), "{text}");
        assert!(text.contains("- (collectable)"), "{text}");
        assert!(render_images(&serde_json::json!({"x": 1})).is_err());
    }
}
