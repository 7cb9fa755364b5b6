//! The short version of issue 12's fault-injection suite that CI runs:
//! `edgeswarm-testnet faults` with three seeded trials on a 5-node
//! locality of real `edgeswarm` processes (kills, restarts, a late joiner,
//! a registry cut shortened to 5 s, link bounces, a replayed release),
//! every check of the full suite applied. The full run (100 trials, 60 s
//! cuts) is in the README's reliability section.
//!
//! Needs root (as in CI), `docker-registry`, `skopeo` and `umoci`
//! (`scripts/install-deps.sh`), and the `edgeswarm` binary, built as
//! `experiment_small` does (or `EDGESWARM_BIN`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

mod support;
use support::{edgeswarm_bin, require_root};

#[test]
fn three_randomized_fault_trials_converge_with_every_check_passing() {
    require_root();
    let edgeswarm = edgeswarm_bin();
    let out = tempfile::tempdir_in("/var/tmp").unwrap();
    let name = format!("f{}", std::process::id() % 100_000);
    let started = Instant::now();
    let run = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_edgeswarm-testnet")))
        .args(["faults", "--trials", "3", "--seed", "4", "--nodes", "5"])
        .args(["--registry-cut-secs", "5", "--trial-timeout", "120"])
        .args(["--image-mb", "30", "--name", &name])
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
    assert!(run.status.success(), "suite failed:\n{stdout}\n{stderr}");
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
}
