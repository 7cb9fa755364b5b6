//! Experiment outputs: the results CSV, the Markdown summary and SVG figures
//! in the manner of the Streamed Deployment paper's figures 5 (provisioning
//! time against N), 6 (cloud-link throughput over time) and 7 (node-link
//! throughput over time).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{Result, TestnetError};
use crate::experiment::{throughput, Method, RunResult};

/// Image facts the report needs.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Reference.
    pub reference: String,
    /// Bytes of a full pull (layers, config, manifest).
    pub bytes: u64,
}

/// Setting of the experiment, printed in the summary.
#[derive(Debug, Clone)]
pub struct Setting {
    /// Cloud link rate, e.g. `200mbit`.
    pub cloud_rate: String,
    /// Node link rate.
    pub node_rate: String,
    /// The edgeswarm nodes' import sink (`dir`, `none`).
    pub import: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestnetError + '_ {
    move |e| TestnetError::io(format!("writing {}", path.display()), e)
}

fn plot_err(path: &Path) -> impl Fn(String) -> TestnetError + '_ {
    move |e| {
        TestnetError::io(
            format!("drawing {}", path.display()),
            std::io::Error::other(e),
        )
    }
}

/// Writes `results.csv`
/// (method,nodes,last_s,mean_s,cloud_bytes,cloud_x_image,cloud_bytes_up,cpu_busy,cpu_iowait).
pub fn write_results_csv(dir: &Path, image: &ImageInfo, runs: &[RunResult]) -> Result<PathBuf> {
    let path = dir.join("results.csv");
    let mut s = String::from(
        "method,nodes,last_s,mean_s,cloud_bytes,cloud_x_image,cloud_bytes_up,cpu_busy,cpu_iowait\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{},{:.4},{},{:.3},{:.3}",
            r.method.name(),
            r.nodes,
            r.last_seconds()
                .map(|x| format!("{x:.3}"))
                .unwrap_or_default(),
            r.mean_seconds(),
            r.cloud_bytes,
            r.cloud_bytes as f64 / image.bytes as f64,
            r.cloud_bytes_up,
            r.cpu.busy,
            r.cpu.iowait
        );
    }
    std::fs::write(&path, s).map_err(io(&path))?;
    Ok(path)
}

fn find(runs: &[RunResult], m: Method, n: usize) -> Option<&RunResult> {
    runs.iter().find(|r| r.method == m && r.nodes == n)
}

/// The Markdown summary: a table per N and the three targets.
pub fn summary_markdown(image: &ImageInfo, setting: &Setting, runs: &[RunResult]) -> String {
    let mut ns: Vec<usize> = runs.iter().map(|r| r.nodes).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# edgeswarm vs naive pulls\n\nImage `{}` ({:.1} MB per full pull); cloud link {}, node links {}.\n\
         Naive: every node runs `skopeo copy` from the registry at once. edgeswarm: node 0 is the\n\
         gateway (one of the N); edgeswarm nodes' import sink: `{}` (`dir` extracts a rootfs,\n\
         `none` keeps verified layers in the store only).\n\
         Cloud bytes: kernel counters of the cloud link (into the locality).\n",
        image.reference,
        image.bytes as f64 / 1e6,
        setting.cloud_rate,
        setting.node_rate,
        setting.import
    );
    let _ = writeln!(
        s,
        "| nodes | naive last (s) | naive cloud (MB) | edgeswarm last (s) | edgeswarm mean (s) | edgeswarm cloud (MB) | cloud x image | speed-up | CPU busy naive / edgeswarm |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
    for &n in &ns {
        let naive = find(runs, Method::Naive, n);
        let es = find(runs, Method::Edgeswarm, n);
        let speedup = match (
            naive.and_then(RunResult::last_seconds),
            es.and_then(RunResult::last_seconds),
        ) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} | {} | {} | {speedup} | {} / {} |",
            fmt(naive.and_then(RunResult::last_seconds)),
            naive.map_or("-".into(), |r| format!("{:.1}", r.cloud_bytes as f64 / 1e6)),
            fmt(es.and_then(RunResult::last_seconds)),
            es.map_or("-".into(), |r| format!("{:.1}", r.mean_seconds())),
            es.map_or("-".into(), |r| format!("{:.1}", r.cloud_bytes as f64 / 1e6)),
            es.map_or("-".into(), |r| format!(
                "{:.3}",
                r.cloud_bytes as f64 / image.bytes as f64
            )),
            naive.map_or("-".into(), |r| format!("{:.0}%", r.cpu.busy * 100.0)),
            es.map_or("-".into(), |r| format!("{:.0}%", r.cpu.busy * 100.0)),
        );
    }
    // Targets (issue 7), judged at the largest N and against N=1.
    if let (Some(&max_n), Some(&min_n)) = (ns.last(), ns.first()) {
        let es_max = find(runs, Method::Edgeswarm, max_n).and_then(RunResult::last_seconds);
        let es_min = find(runs, Method::Edgeswarm, min_n).and_then(RunResult::last_seconds);
        let naive_max = find(runs, Method::Naive, max_n).and_then(RunResult::last_seconds);
        let cloud_x =
            find(runs, Method::Edgeswarm, max_n).map(|r| r.cloud_bytes as f64 / image.bytes as f64);
        let _ = writeln!(s, "\nTargets at N={max_n}:\n");
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        if let (Some(a), Some(b)) = (naive_max, es_max) {
            let _ = writeln!(
                s,
                "- speed-up over naive: {:.1}x (target >= 5x, goal 8x): {}",
                a / b,
                verdict(a / b >= 5.0)
            );
        }
        if let Some(x) = cloud_x {
            let _ = writeln!(
                s,
                "- cloud bytes: {x:.3}x the image (target <= 1.05x): {}",
                verdict(x <= 1.05)
            );
        }
        if let (Some(a), Some(b)) = (es_max, es_min) {
            let _ = writeln!(
                s,
                "- T({max_n})/T({min_n}) = {:.2} (target <= 1.5): {}",
                a / b,
                verdict(a / b <= 1.5)
            );
        }
    }
    s
}

/// Figure 5: last-node (solid) and mean (dashed) provisioning time against N.
pub fn plot_time_vs_nodes(path: &Path, runs: &[RunResult]) -> Result<()> {
    let err = plot_err(path);
    let max_n = runs.iter().map(|r| r.nodes).max().unwrap_or(1) as f64;
    let max_t = runs
        .iter()
        .filter_map(RunResult::last_seconds)
        .fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Provisioning time vs number of nodes", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max_n + 1.0, 0f64..max_t * 1.1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("nodes")
        .y_desc("seconds until the last node is done")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (m, color) in [(Method::Naive, RED), (Method::Edgeswarm, BLUE)] {
        let mut pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.method == m)
            .filter_map(|r| r.last_seconds().map(|t| (r.nodes as f64, t)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(format!("{} (last node)", m.name()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(e.to_string()))?;
        let mut mean: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.method == m)
            .map(|r| (r.nodes as f64, r.mean_seconds()))
            .collect();
        mean.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(DashedLineSeries::new(
                mean,
                6,
                4,
                color.mix(0.6).stroke_width(1),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(format!("{} (mean node)", m.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// One line of a throughput figure.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// `(t_s, Mbit/s)` points.
    pub points: Vec<(f64, f64)>,
}

/// The curve of one direction of one probe of a run.
pub fn curve(run: &RunResult, probe: &str, rx: bool, label: String) -> Curve {
    Curve {
        label,
        points: throughput(&run.series, probe)
            .into_iter()
            .map(|(t, r, tx)| (t, if rx { r } else { tx }))
            .collect(),
    }
}

/// Figures 6 and 7: throughput over time of a few curves.
pub fn plot_throughput(path: &Path, title: &str, curves: &[Curve]) -> Result<()> {
    let err = plot_err(path);
    let max_t = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let max_y = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(10.0f64, f64::max);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max_t, 0f64..max_y * 1.1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start of the run")
        .y_desc("Mbit/s")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, c) in curves.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(c.points.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(c.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Writes every output of an experiment into `dir`: `results.csv`,
/// `summary.md`, `fig5-time-vs-nodes.svg`, `fig6-cloud-link.svg`,
/// `fig7-node-link.svg` (figures 6 and 7 at the largest N). Returns the
/// summary text.
pub fn write_all(
    dir: &Path,
    image: &ImageInfo,
    setting: &Setting,
    runs: &[RunResult],
) -> Result<String> {
    write_results_csv(dir, image, runs)?;
    let summary = summary_markdown(image, setting, runs);
    let p = dir.join("summary.md");
    std::fs::write(&p, &summary).map_err(io(&p))?;
    plot_time_vs_nodes(&dir.join("fig5-time-vs-nodes.svg"), runs)?;
    let Some(n) = runs.iter().map(|r| r.nodes).max() else {
        return Ok(summary);
    };
    let naive = find(runs, Method::Naive, n);
    let es = find(runs, Method::Edgeswarm, n);
    let mut cloud = Vec::new();
    if let Some(r) = naive {
        cloud.push(curve(r, "cloud0", false, format!("naive, {n} nodes")));
    }
    if let Some(r) = es {
        cloud.push(curve(r, "cloud0", false, format!("edgeswarm, {n} nodes")));
    }
    plot_throughput(
        &dir.join("fig6-cloud-link.svg"),
        &format!("Cloud link into the locality ({n} nodes)"),
        &cloud,
    )?;
    let last = format!("n0-{}", n - 1);
    let mut node = Vec::new();
    if let Some(r) = naive {
        node.push(curve(
            r,
            &last,
            true,
            format!("naive: node {} download", n - 1),
        ));
    }
    if let Some(r) = es {
        node.push(curve(
            r,
            &last,
            true,
            format!("edgeswarm: node {} download", n - 1),
        ));
        if n > 1 {
            node.push(curve(
                r,
                &last,
                false,
                format!("edgeswarm: node {} upload", n - 1),
            ));
            node.push(curve(r, "n0-0", false, "edgeswarm: gateway upload".into()));
        }
    }
    plot_throughput(
        &dir.join("fig7-node-link.svg"),
        &format!("Node links ({n} nodes)"),
        &node,
    )?;
    Ok(summary)
}
