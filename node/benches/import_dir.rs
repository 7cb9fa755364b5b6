//! CPU of the `dir` sink against `tar -xzf` on the same gzip layer, side
//! by side (issue 15's `dir` row asks for at most 1.2x `skopeo copy` +
//! `tar xzf`; this is the extraction half, without the network).
//!
//! The layer is `IMPORT_BENCH_LAYER` (a gzip layer blob, e.g. the testnet
//! image's big layer from its registry's storage), or else a tar of
//! `IMPORT_BENCH_SRC` (default `/usr/lib`) holding `IMPORT_BENCH_MB` MB of
//! file data (default 140, the testnet image's big layer), gzip level 6.
//! Trees are extracted under `IMPORT_BENCH_DIR` (default: the system's
//! temporary directory); the figures depend on that filesystem, so use a
//! fresh journaled ext4 to compare with the testnet (see
//! `testnet/src/scratch.rs`). `IMPORT_BENCH_ROUNDS` rounds (default 4),
//! alternating which extraction goes first, each tree removed after its
//! round.
//!
//! edgeswarm's figure is the whole process's CPU (the import hashes the
//! compressed and the uncompressed stream, on its own thread, which tar
//! does not); tar's is its own and its `gzip -d` child's, from the shell's
//! `times`. Prints figures only; no asserts. Run:
//! `cargo bench -p edgeswarm-node --bench import_dir`

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use edgeswarm_node::import::{import_image, ImageImport, ImportOptions, ImportSink, LayerSource};
use edgeswarm_protocol::address::Digest;

mod common;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// CPU seconds used so far by this whole process (every thread).
fn process_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// `Digest` and byte count of everything `reader` yields.
fn digest_of(mut reader: impl Read) -> (Digest, u64) {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).expect("reading the layer");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    (Digest::from_bytes(hasher.finalize().into()), total)
}

/// The gzip layer to extract, written to a file under `work`.
fn layer_file(work: &Path) -> PathBuf {
    if let Ok(path) = std::env::var("IMPORT_BENCH_LAYER") {
        return PathBuf::from(path);
    }
    let src = std::env::var("IMPORT_BENCH_SRC").unwrap_or_else(|_| "/usr/lib".into());
    let mb: u64 = std::env::var("IMPORT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(140);
    let tar = common::build_tar(Path::new(&src), mb * 1_000_000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).expect("compressing");
    let path = work.join("layer.tar.gz");
    std::fs::write(&path, gz.finish().expect("compressing")).expect("writing the layer");
    path
}

/// The one-layer image around `blob`.
struct Image {
    blob: PathBuf,
    digest: Digest,
    size: u64,
    diff_id: Digest,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(blob: PathBuf) -> Image {
        let (digest, size) = digest_of(std::fs::File::open(&blob).expect("opening the layer"));
        let (diff_id, _) = digest_of(flate2::read::MultiGzDecoder::new(BufReader::new(
            std::fs::File::open(&blob).expect("opening the layer"),
        )));
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        }))
        .expect("config");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config).to_string(),
                "size": config.len(),
            },
            "layers": [{"mediaType": GZIP, "digest": digest.to_string(), "size": size}],
        }))
        .expect("manifest");
        Image {
            blob,
            digest,
            size,
            diff_id,
            config,
            manifest,
        }
    }

    fn import(&self) -> ImageImport {
        ImageImport {
            reference: "bench/dir:v1".into(),
            config_bytes: self.config.clone(),
            manifest_bytes: self.manifest.clone(),
            layers: vec![LayerSource {
                media_type: GZIP.into(),
                diff_id: self.diff_id,
                reader: Box::new(std::fs::File::open(&self.blob).expect("opening the layer")),
                checked_blob: None,
            }],
        }
    }
}

/// Seconds of user + system CPU in `times` output's second line (the
/// shell's children).
fn children_cpu(times: &str) -> f64 {
    let line = times.lines().nth(1).unwrap_or_default();
    line.split_whitespace()
        .map(|t| {
            let (m, s) = t
                .trim_end_matches('s')
                .split_once('m')
                .unwrap_or(("0", "0"));
            m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
        })
        .sum()
}

/// (CPU s, wall s) of `tar -xzf` of the layer into `dest`.
fn run_tar(blob: &Path, dest: &Path) -> (f64, f64) {
    std::fs::create_dir_all(dest).expect("creating the tar destination");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"tar -xzf "$1" -C "$2" && times"#)
        .arg("bash")
        .arg(blob)
        .arg(dest)
        .output()
        .expect("running tar");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (children_cpu(&String::from_utf8_lossy(&out.stdout)), wall)
}

/// (CPU s, wall s) of the `dir` sink importing the layer under `root`.
fn run_edgeswarm(rt: &tokio::runtime::Runtime, image: &Image, root: &Path) -> (f64, f64) {
    let sink = ImportSink::Dir {
        root: root.to_owned(),
    };
    let (cpu, started) = (process_cpu(), Instant::now());
    let report = rt
        .block_on(import_image(
            &sink,
            image.import(),
            &ImportOptions::default(),
        ))
        .expect("the dir import");
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(report.layers.len(), 1);
    (process_cpu() - cpu, wall)
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let base = std::env::var("IMPORT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let rounds: usize = std::env::var("IMPORT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let work = tempfile::tempdir_in(&base).expect("a work dir under IMPORT_BENCH_DIR");
    let image = Image::new(layer_file(work.path()));
    println!(
        "layer {}: {:.1} MB gzip, {} (in {})",
        image.blob.display(),
        image.size as f64 / 1e6,
        image.digest,
        work.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let es_root = work.path().join(format!("es-{round}"));
        let tar_root = work.path().join(format!("tar-{round}"));
        sync();
        let (es, tar) = if round % 2 == 0 {
            let es = run_edgeswarm(&rt, &image, &es_root);
            sync();
            (es, run_tar(&image.blob, &tar_root))
        } else {
            let tar = run_tar(&image.blob, &tar_root);
            sync();
            (run_edgeswarm(&rt, &image, &es_root), tar)
        };
        println!(
            "round {round} ({} first): edgeswarm dir {:.2} CPU-s ({:.2} s wall) | tar -xzf {:.2} CPU-s ({:.2} s wall) | ratio {:.2}x",
            if round % 2 == 0 { "edgeswarm" } else { "tar" },
            es.0,
            es.1,
            tar.0,
            tar.1,
            es.0 / tar.0
        );
        ours.push(es.0);
        theirs.push(tar.0);
        let _ = std::fs::remove_dir_all(&es_root);
        let _ = std::fs::remove_dir_all(&tar_root);
    }
    let (o, t) = (median(ours), median(theirs));
    println!(
        "median: edgeswarm dir {o:.2} CPU-s, tar -xzf {t:.2} CPU-s, ratio {:.2}x",
        o / t
    );
}
