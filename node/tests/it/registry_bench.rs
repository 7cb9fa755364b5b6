//! Throughput figures for the registry client against a real loopback
//! `docker-registry` (prints, never asserts timings). Run with:
//!
//! ```text
//! cargo test -p edgeswarm-node --test it registry_bench:: -- --ignored --nocapture
//! ```

use std::time::Instant;

use crate::support::push;
use crate::support::registry::*;
use edgeswarm_node::registry::testing::{self, ImageSpec, TestRegistry};
use edgeswarm_node::registry::{Compression, Platform, Reference};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn bench_blob_stream_throughput() {
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = 256u64 << 20;
    let spec = ImageSpec::random_layers(&[size], 1, Compression::None);
    let started = Instant::now();
    let image = testing::build_image(spec, dir.path()).await.unwrap();
    println!(
        "build 256 MiB layer: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    push(&registry, "bench/app", "v1", &image).await;
    println!("push: {:.2} s", started.elapsed().as_secs_f64());

    let client = client();
    let reference = Reference::parse(&format!("{}/bench/app:v1", registry.host())).unwrap();
    let resolved = client.resolve(&reference, &Platform::host()).await.unwrap();
    for run in 0..3 {
        let started = Instant::now();
        let mut stream = client.layer_stream(&resolved.reference, &resolved.layers[0], 0);
        let mut total = 0u64;
        let mut chunks = 0u64;
        let mut largest = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            total += chunk.len() as u64;
            chunks += 1;
            largest = largest.max(chunk.len());
        }
        let size = resolved.layers[0].size;
        assert_eq!(total, size);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "run {run}: {total} bytes in {secs:.2} s = {:.0} MiB/s, {chunks} chunks, largest chunk {largest} bytes, received {} ({:.4}x)",
            total as f64 / secs / (1 << 20) as f64,
            stream.bytes_received(),
            stream.bytes_received() as f64 / size as f64
        );
    }
}
