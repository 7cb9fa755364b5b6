//! Shared by the testnet's integration tests that run real nodes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Panics unless running as root (network namespaces need it).
pub(crate) fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap();
    assert_eq!(
        euid, "0",
        "this test builds network namespaces and needs root: run it as root (sudo -E cargo test -p edgeswarm-testnet)"
    );
}

/// The `edgeswarm` binary: `$EDGESWARM_BIN`, else built by cargo into the
/// target directory this test binary lives in (`<target>/<profile>/deps/`).
pub(crate) fn edgeswarm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGESWARM_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "EDGESWARM_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent dir");
    let profile_dir = deps.parent().expect("deps dir has a parent");
    let target_dir = profile_dir.parent().expect("profile dir has a parent");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(option_env!("CARGO").unwrap_or("cargo")));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "edgeswarm-node", "--bin", "edgeswarm"])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir);
    // Cargo gives this test its package's CARGO_MANIFEST_DIR, CARGO_PKG_*,
    // ...; build scripts (ring's) rerun when those differ, so an inner cargo
    // seeing them would rebuild half the dependency tree, and the next
    // normal build would rebuild it back.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let keep = matches!(k.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR")
            || k.starts_with("CARGO_BUILD_")
            || k.starts_with("CARGO_NET_")
            || k.starts_with("CARGO_REGISTR");
        if (k.starts_with("CARGO_") && !keep) || k == "OUT_DIR" {
            cmd.env_remove(&k);
        }
    }
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run `{} build -p edgeswarm-node --bin edgeswarm` to get the node binary: {e}; \
             build it yourself and set EDGESWARM_BIN",
            cargo.display()
        )
    });
    assert!(
        status.success(),
        "`cargo build -p edgeswarm-node --bin edgeswarm` failed ({status}); set EDGESWARM_BIN to a built binary"
    );
    let bin = profile_dir.join("edgeswarm");
    assert!(
        bin.is_file(),
        "cargo built edgeswarm-node but {} does not exist; set EDGESWARM_BIN",
        bin.display()
    );
    bin
}
