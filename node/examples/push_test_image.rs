//! Builds a realistic test image from this machine's files and pushes it to
//! a registry over plain HTTP: the docker-compose testnet's way of seeding
//! its registry without Docker Hub.
//!
//! ```text
//! push_test_image REGISTRY_HOST REPO:TAG SIZE
//! push_test_image 127.0.0.1:5000 demo/app:v1 48M
//! ```
//!
//! Layers (gzip, Docker v2 manifest, this host's platform): up to SIZE of the
//! host's shared libraries, busybox-static with applet links, a small app
//! layer tagged TAG, and, when the host has fewer than SIZE bytes of
//! libraries (a slim container), an incompressible filler layer making up
//! the difference. Prints the manifest digest and the image size.

use std::path::Path;

use anyhow::{bail, Context, Result};
use edgeswarm_node::registry::testing::{build_image, ImageSpec, LayerSource, Pusher};

fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .with_context(|| format!("SIZE {s:?} is not a size like 512K, 48M or 1G"))?;
    let mult = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => bail!("SIZE {s:?}: unknown unit (use K, M or G)"),
    };
    n.checked_mul(mult).context("SIZE too large")
}

/// Sum of regular file sizes under `dir` (symlinks not followed), stopping
/// once `cap` is reached.
fn tree_size(dir: &Path, cap: u64) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
                if total >= cap {
                    return cap;
                }
            }
        }
    }
    total
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, reference, size] = args.as_slice() else {
        bail!("usage: push_test_image REGISTRY_HOST REPO:TAG SIZE   (e.g. 127.0.0.1:5000 demo/app:v1 48M)");
    };
    let (repo, tag) = reference
        .rsplit_once(':')
        .with_context(|| format!("{reference:?} is not REPO:TAG"))?;
    let size = parse_size(size)?;

    let mut spec = ImageSpec::realistic(size, tag);
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let libs = if Path::new(&multiarch).is_dir() {
        tree_size(Path::new(&multiarch), size)
    } else if Path::new("/usr/lib").is_dir() {
        tree_size(Path::new("/usr/lib"), size)
    } else {
        // No library directory at all (a minimal container): no libs layer.
        spec.layers.remove(0);
        0
    };
    if size > libs + (1 << 20) {
        let filler = size - libs;
        spec.layers
            .insert(1, LayerSource::random("data/filler.bin", filler, size));
    }

    let dir = tempfile::tempdir().context("creating a temp dir for the layers")?;
    let started = std::time::Instant::now();
    let image = build_image(spec, dir.path())
        .await
        .context("building the image")?;
    let built = started.elapsed();
    let pusher = Pusher::new(host, None).context("registry client")?;
    let digest = pusher
        .push_image(repo, Some(tag), &image)
        .await
        .with_context(|| format!("pushing {repo}:{tag} to http://{host}"))?;
    println!(
        "pushed {host}/{repo}:{tag} {} ({} layers, {} bytes; built in {:.1}s, pushed in {:.1}s)",
        digest.to_oci(),
        image.layers.len(),
        image.layers_size(),
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64()
    );
    Ok(())
}
