//! The device budget on this machine's real cgroups: a busy loop in a
//! quarter-core budget gets a quarter of a core, and is accounted; a
//! writer's disk writes are counted.

#[allow(dead_code)] // only require_root is used here
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgeswarm_testnet::cgroup::{Budget, Cgroup, Hierarchy, PeakWatch};
use edgeswarm_testnet::process::in_cgroup_command;

/// A Raspberry-Pi-class budget cgroup of this test process, named by `tag`.
fn pi_cgroup(tag: &str) -> Cgroup {
    support::require_root();
    let hierarchy = Hierarchy::detect().expect("cgroup cpu and memory controllers");
    Cgroup::create(
        &hierarchy,
        &format!("edgeswarm-test-{tag}{}", std::process::id()),
        Budget::pi(),
    )
    .unwrap()
}

#[test]
fn a_busy_loop_in_a_quarter_core_budget_gets_a_quarter_core() {
    let cgroup = pi_cgroup("");
    let before = cgroup.usage().unwrap();
    let peaks = PeakWatch::start(&cgroup, Duration::from_millis(50));
    let wall = Duration::from_secs(2);
    let start = Instant::now();
    let mut child = in_cgroup_command(
        &cgroup.procs_files(),
        "timeout".as_ref(),
        &[
            format!("{}", wall.as_secs()).into(),
            "sh".into(),
            "-c".into(),
            "while :; do :; done".into(),
        ],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The program itself (not only a wrapper) runs in the budget.
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    assert!(
        own.contains(cgroup.name()),
        "child not in {}: {own}",
        cgroup.name()
    );
    assert!(cgroup.pids().contains(&child.id()));
    let status = child.wait().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(status.code(), Some(124), "timeout ends the loop");
    let used = cgroup.usage().unwrap().since(&before);
    let expected = 0.25 * elapsed;
    // At most the quota (a busy machine, or `nice`, may give it less).
    assert!(
        used.cpu_seconds > 0.05 && used.cpu_seconds < expected * 1.3,
        "{:.3} CPU s in {elapsed:.2} s under a quarter core (expected <= {expected:.2})",
        used.cpu_seconds
    );
    if used.cpu_seconds > expected * 0.8 {
        // It wanted a whole core: the quota held it back.
        assert!(
            used.throttled_seconds > 0.0,
            "throttled {:.3} s",
            used.throttled_seconds
        );
    }
    let peaks = peaks.stop();
    assert!(
        peaks.vm_hwm > 0,
        "no VmHWM read from the cgroup's processes"
    );
    assert!(cgroup.usage().unwrap().memory_peak > 0);
    let dirs: Vec<PathBuf> = cgroup
        .procs_files()
        .iter()
        .map(|f| f.parent().unwrap().to_path_buf())
        .collect();
    drop(cgroup);
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn the_disk_writes_of_a_budgeted_process_and_its_children_are_counted() {
    let cgroup = pi_cgroup("w");
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let file = dir.path().join("written");
    let peaks = PeakWatch::start(&cgroup, Duration::from_millis(50));
    // dd writes 8 MiB and exits; the shell that reaped it lives on, and
    // its /proc/PID/io then carries its child's writes.
    let script = format!(
        "dd if=/dev/zero of={} bs=1M count=8 conv=fsync status=none; sleep 0.5",
        file.display()
    );
    let status = in_cgroup_command(
        &cgroup.procs_files(),
        "sh".as_ref(),
        &["-c".into(), script.into()],
    )
    .status()
    .unwrap();
    assert!(status.success());
    let written = peaks.stop().written;
    assert!(
        (8 << 20..32 << 20).contains(&written),
        "{written} bytes counted for an 8 MiB write"
    );
}
