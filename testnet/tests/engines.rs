//! The fault suite's private Docker engines (`faults --import docker`),
//! with the real `dockerd` of Debian's docker.io: one starts next to the
//! host's engine without touching it, runs an image loaded into it, tells
//! helper tags from other tags, forgets everything on `reset`, and leaves
//! nothing under /run once dropped.
//!
//! Needs root, `dockerd` and `busybox` (`scripts/install-deps.sh`).

use std::path::Path;
use std::process::{Command, Stdio};

use edgeswarm_testnet::engines::{Engine, HELPER_REPO};

/// Panics unless running as root (dockerd needs it).
fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2));
    assert_eq!(
        euid,
        Some("0"),
        "this test starts a dockerd: run it as root"
    );
}

/// `docker import`s a rootfs of busybox (`/bin/sh`, `echo`) into `engine`
/// as `reference`; returns its image id.
fn import_busybox(engine: &Engine, reference: &str, dir: &Path) -> String {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new("docker")
        .args(["--host", &engine.host(), "import"])
        .args([
            "--change",
            "CMD [\"/bin/sh\", \"-c\", \"echo edgeswarm app v1\"]",
        ])
        .arg(&tar)
        .arg(reference)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_private_engine_runs_images_finds_helper_tags_and_leaves_nothing() {
    require_root();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let name = format!("e{}", std::process::id() % 100_000);
    let host_images = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = host_images(&["images", "-q"]);
    let engine = Engine::start(
        &name,
        0,
        &tmp.path().join("data"),
        &tmp.path().join("dockerd.log"),
    )
    .unwrap();
    let run_dir = format!("/run/edgeswarm-{name}-d0");
    assert!(Path::new(&run_dir).join("docker.sock").exists());

    let reference = "edgeswarm-test/engines:v1";
    let id = import_busybox(&engine, reference, tmp.path());
    assert_eq!(
        engine.check_image(reference, &id, "edgeswarm app v1"),
        Ok(())
    );
    let wrong = engine
        .check_image(reference, "sha256:other", "edgeswarm app v1")
        .unwrap_err();
    assert!(wrong.contains("expected the config digest"), "{wrong}");

    // A helper tag is found; the image's own tag is not one.
    let helper = format!("{HELPER_REPO}:0a1b2c3d4e5f-0123456789abcdef-0");
    let (ok, _, err) = engine.docker(&["tag", reference, &helper]).unwrap();
    assert!(ok, "{err}");
    assert_eq!(engine.helper_tags().unwrap(), [helper]);

    engine.reset(reference).unwrap();
    assert!(engine.helper_tags().unwrap().is_empty());
    let gone = engine
        .check_image(reference, &id, "edgeswarm app v1")
        .unwrap_err();
    assert!(gone.contains("not in Docker"), "{gone}");
    // The host's engine saw none of it.
    assert_eq!(host_images(&["images", "-q"]), before);

    drop(engine);
    assert!(!Path::new(&run_dir).exists(), "{run_dir} left behind");
}
