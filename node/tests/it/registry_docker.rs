//! Interop of the test image builder with a real dockerd (Debian docker.io,
//! Engine 20.10): `docker pull` from a loopback `docker-registry` and
//! `docker run` the result. Needs a running dockerd (start `dockerd` if
//! /var/run/docker.sock is absent), hence ignored by default:
//!
//! ```text
//! cargo test -p edgeswarm-node --test it registry_docker:: -- --ignored
//! ```

use crate::support::{init_tracing, push};
use edgeswarm_node::registry::testing::{self, ImageSpec, ManifestFormat, TestRegistry};
use edgeswarm_node::registry::Compression;

fn docker(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI (Debian package docker.io)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
#[ignore = "needs a running dockerd"]
async fn dockerd_pulls_and_runs_built_images() {
    init_tracing();
    let (ok, text) = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(ok, "dockerd is not reachable: {text}");
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // dockerd 20.10 cannot pull zstd layers (FIELD-NOTES §3): gzip only.
    for (format, tag) in [
        (ManifestFormat::Docker, "docker"),
        (ManifestFormat::Oci, "oci"),
    ] {
        let mut spec = ImageSpec::realistic(2 << 20, tag);
        spec.compression = Compression::Gzip;
        spec.format = format;
        let image = testing::build_image(spec, dir.path()).await.unwrap();
        push(&registry, "interop/app", tag, &image).await;
        let name = format!("{}/interop/app:{tag}", registry.host());
        let (ok, text) = docker(&["pull", "--quiet", &name]);
        assert!(ok, "docker pull {name}: {text}");
        let (ok, text) = docker(&["run", "--rm", "--network", "none", &name]);
        let _ = docker(&["rmi", "--force", &name]);
        assert!(ok, "docker run {name}: {text}");
        assert_eq!(text.trim(), format!("edgeswarm app {tag}"));
    }
}
