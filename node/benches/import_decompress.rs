//! Decompress-and-verify throughput of the import pipeline, per core.
//!
//! Builds a ~200 MB layer tar from real files (`/usr`, override with
//! `IMPORT_BENCH_SRC` and `IMPORT_BENCH_MB`), compresses it with gzip
//! (level 6, what `docker build` produces) and zstd (level 3), then streams
//! each through `verify_layer` (decompression + sha256 of the uncompressed
//! stream, exactly what every sink runs) and prints uncompressed MB/s.
//! Also prints decompression alone, and two layers at once on two threads.
//! Prints figures only; no asserts. Run:
//! `cargo bench -p edgeswarm-node --bench import_decompress`

use std::io::{self, Cursor, Read, Write};
use std::path::Path;
use std::time::Instant;

use edgeswarm_node::import::verify_layer;

mod common;
use common::build_tar;
use edgeswarm_protocol::address::Digest;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// CPU seconds used so far by the calling thread and by the whole process.
fn cpu() -> (f64, f64) {
    let secs = |id| {
        let t = rustix::time::clock_gettime(id);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    };
    (
        secs(rustix::time::ClockId::ThreadCPUTime),
        secs(rustix::time::ClockId::ProcessCPUTime),
    )
}

/// Best of `runs` runs of `f`: (wall s, CPU s of this thread, CPU s of the
/// process). CPU figures show what a core achieves even when other
/// processes share the cores (wall time then overstates the cost); the
/// process figure includes the layer's hashing thread.
fn best(runs: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    (0..runs)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu());
            f();
            let after = cpu();
            (t.elapsed().as_secs_f64(), after.0 - c.0, after.1 - c.1)
        })
        .fold((f64::MAX, f64::MAX, f64::MAX), |a, b| {
            (a.0.min(b.0), a.1.min(b.1), a.2.min(b.2))
        })
}

fn main() {
    let src = std::env::var("IMPORT_BENCH_SRC").unwrap_or_else(|_| "/usr".into());
    let mb: u64 = std::env::var("IMPORT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t = Instant::now();
    let tar = build_tar(Path::new(&src), mb << 20);
    let diff_id = Digest::of(&tar);
    let size = tar.len() as u64;
    println!(
        "layer: tar of {src}, {:.1} MB uncompressed (built in {:.1}s)",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let gz_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let zst = zstd::encode_all(Cursor::new(&tar), 3).unwrap();
    let zst_secs = t.elapsed().as_secs_f64();
    println!(
        "gzip -6: {:.1} MB ({:.1}%, compressed at {:.0} MB/s); zstd -3: {:.1} MB ({:.1}%, {:.0} MB/s)",
        gz.len() as f64 / 1e6,
        100.0 * gz.len() as f64 / size as f64,
        mb_s(size, gz_secs),
        zst.len() as f64 / 1e6,
        100.0 * zst.len() as f64 / size as f64,
        mb_s(size, zst_secs),
    );

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average now: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "one layer, uncompressed MB/s, best of 3. verify = decompress on this thread + sha256 \
         (blob and diff_id) on the layer's hashing thread:"
    );
    for (name, media_type, blob) in [
        ("gzip", GZIP, &gz),
        ("zstd", ZSTD, &zst),
        ("none", PLAIN, &tar),
    ] {
        let verify = best(3, || {
            verify_layer(&mut Cursor::new(&blob[..]), media_type, diff_id).unwrap();
        });
        let decode_only = best(3, || {
            let mut reader: Box<dyn Read> = match name {
                // The same buffering as the import path (layer.rs).
                "gzip" => Box::new(io::BufReader::with_capacity(
                    256 * 1024,
                    flate2::bufread::MultiGzDecoder::new(&blob[..]),
                )),
                "zstd" => Box::new(zstd::stream::read::Decoder::new(&blob[..]).unwrap()),
                _ => Box::new(&blob[..]),
            };
            io::copy(&mut reader, &mut io::sink()).unwrap();
        });
        println!(
            "  {name:5} verify: {:6.0} MB/s wall, {:6.0} MB per CPU-s of the decoding thread, \
             {:6.0} MB per CPU-s of all threads | decompress only: {:6.0} MB/s wall, {:6.0} MB/CPU-s",
            mb_s(size, verify.0),
            mb_s(size, verify.1),
            mb_s(size, verify.2),
            mb_s(size, decode_only.0),
            mb_s(size, decode_only.1),
        );
    }

    println!("\ntwo layers at once on two threads, aggregate uncompressed MB/s:");
    for (name, media_type, blob) in [("gzip", GZIP, &gz), ("zstd", ZSTD, &zst)] {
        let secs = best(2, || {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        verify_layer(&mut Cursor::new(&blob[..]), media_type, diff_id).unwrap()
                    });
                }
            });
        });
        println!("  {name:5} x2: {:7.0} MB/s wall", mb_s(2 * size, secs.0));
    }
}
