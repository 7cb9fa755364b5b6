//! The short version of issue 12's fault-injection suite that CI runs:
//! `edgeswarm-testnet faults` with three seeded trials on a 5-node
//! locality of real `edgeswarm` processes (kills, restarts, a late joiner,
//! a registry cut shortened to 5 s, link bounces, a replayed release),
//! every check of the full suite applied, importing into rootfs
//! directories and, in a second test, into a private Docker engine per
//! node (`--import docker`). The full run (100 trials, 60 s cuts) is in
//! the README's reliability section.
//!
//! Needs root (as in CI), `docker-registry`, `skopeo`, `umoci` and `dockerd`
//! (`scripts/install-deps.sh`), and the `edgeswarm` binary, built as
//! `experiment_small` does (or `EDGESWARM_BIN`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

mod support;
use support::{edgeswarm_bin, require_root};

/// The two suites build testnets and engines of their own; one at a time
/// keeps their trials' timing apart.
static ONE_SUITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The image the short suite deploys, in MB. Its cloud bytes carry a
/// fixed cost (manifests and headers, about 1 MB: 1.028x of a 30 MB
/// image) plus what a killed gateway had received but not yet stored
/// (its socket's receive queue, its link's queue and the chunks being
/// written: 0.5-5 MB under CI's load), which the restarted gateway pulls
/// again. At 30 MB, seed 4's first trial (the gateway killed 1.6 s into
/// its pull) gave 1.028-1.150x in 16 local runs, 3 of them over
/// `CLOUD_BYTES_LIMIT` (1.1x), and failed CI three times (1.118x,
/// 1.146x, 1.102x); at 60 MB the same trial gives 1.04-1.05x. A gateway
/// that pulled again what it held at the kill (13 MB) would still fail,
/// at about 1.2x.
const IMAGE_MB: &str = "60";

/// Runs three trials (seed 4) importing with `import`; checks the summary
/// and that no namespace is left.
fn three_trials(import: &str) {
    require_root();
    let _one = ONE_SUITE.lock().unwrap_or_else(|p| p.into_inner());
    let edgeswarm = edgeswarm_bin();
    let out = tempfile::tempdir_in("/var/tmp").unwrap();
    let tag = if import == "docker" { "k" } else { "d" };
    let name = format!("f{tag}{}", std::process::id() % 100_000);
    let started = Instant::now();
    let run = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_edgeswarm-testnet")))
        .args(["faults", "--trials", "3", "--seed", "4", "--nodes", "5"])
        .args(["--registry-cut-secs", "5", "--trial-timeout", "120"])
        .args(["--image-mb", IMAGE_MB, "--name", &name, "--import", import])
        .arg("--out")
        .arg(out.path())
        .arg("--edgeswarm")
        .arg(&edgeswarm)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!(
        "{stdout}\n{stderr}\n({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    if !run.status.success() {
        // Kept for diagnosis: a dropped temp dir took the failed trials'
        // logs with it (a CI run's trial at 1.146x cloud bytes, 2026-12-01).
        let kept = out.keep();
        panic!(
            "suite failed (its output and failed trials' logs kept in {}):\n{stdout}\n{stderr}",
            kept.display()
        );
    }
    assert!(stdout.contains(&format!("import {import},")), "{stdout}");
    assert!(stdout.contains("converged 3/3 (100 %)"), "{stdout}");
    assert!(
        stdout.contains("corrupt images 0, chunks fetched twice 0, leaks 0"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(" PASS ").count(), 3, "{stdout}");
    // Nothing of the testnet is left behind.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("es-{name}-");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&prefix),
        "namespaces left: {}",
        String::from_utf8_lossy(&netns.stdout)
    );
    let engines = std::fs::read_dir("/run")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("edgeswarm-{name}-"))
        })
        .count();
    assert_eq!(engines, 0, "private Docker engines left under /run");
}

#[test]
fn three_randomized_fault_trials_converge_with_every_check_passing() {
    three_trials("dir");
}

#[test]
fn three_randomized_fault_trials_importing_into_docker_converge_too() {
    three_trials("docker");
}
