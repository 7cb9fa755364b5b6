//! Registry mirror throughput on loopback: one node that holds a blob
//! serves it through its mirror (`--mirror`), against the Debian
//! `docker-registry` serving the same blob, in the same run. Target: the
//! mirror at 80 % of the registry or better.
//!
//! `cargo bench -p edgeswarm-node --bench mirror_throughput`
//! (`MIRROR_BENCH_MIB`: blob size, default 256; `MIRROR_BENCH_ROUNDS`:
//! downloads of each, default 5; the median is compared).

use std::time::{Duration, Instant};

use edgeswarm_node::daemon::{Daemon, DaemonConfig};
use edgeswarm_node::import::ImportSinkKind;
use edgeswarm_node::mirror::MirrorConfig;
use edgeswarm_node::registry::testing::{build_image, ImageSpec, Pusher, TestRegistry};
use edgeswarm_node::registry::{Compression, Platform, RegistryConfig};
use edgeswarm_node::store::StoreConfig;
use edgeswarm_node::swarm::SwarmConfig;
use edgeswarm_protocol::signing::TrustedKeys;
use edgeswarm_protocol::ChunkSize;
use futures::StreamExt;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Downloads `url` and discards the body; returns MiB/s.
async fn download(client: &reqwest::Client, url: &str, size: u64) -> f64 {
    let started = Instant::now();
    let response = client.get(url).send().await.expect("request");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let mut stream = response.bytes_stream();
    let mut got = 0u64;
    while let Some(piece) = stream.next().await {
        got += piece.expect("body").len() as u64;
    }
    assert_eq!(got, size, "{url}: short body");
    size as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mib = env("MIRROR_BENCH_MIB", 256);
    let rounds = env("MIRROR_BENCH_ROUNDS", 5) as usize;
    let registry = TestRegistry::start().await.expect("docker-registry");
    let build = tempfile::tempdir().unwrap();
    let image = build_image(
        ImageSpec::random_layers(&[mib << 20], 5, Compression::None),
        build.path(),
    )
    .await
    .unwrap();
    Pusher::new(&registry.host(), None)
        .unwrap()
        .push_image("bench/mirror", Some("v1"), &image)
        .await
        .unwrap();
    let layer = &image.layers[0];

    let dir = tempfile::tempdir().unwrap();
    let mut swarm = SwarmConfig::new(dir.path(), "bench");
    swarm.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    swarm.mdns = false;
    let (daemon, _task) = Daemon::start(DaemonConfig {
        data_dir: dir.path().to_path_buf(),
        swarm,
        store: StoreConfig::default(),
        gateway: true,
        registry: RegistryConfig::default(),
        platform: Platform::host(),
        import: Some(ImportSinkKind::Dir),
        trusted: TrustedKeys::new(),
        // The bench's node imports nothing a publisher signs.
        allow_any_publisher: true,
        trusted_gateways: Vec::new(),
        labels: Default::default(),
        chunk_size: ChunkSize::DEFAULT,
        keep_versions: 2,
        unpack: Default::default(),
        dir: Default::default(),
    })
    .await
    .expect("node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror = listener.local_addr().unwrap();
    tokio::spawn(edgeswarm_node::mirror::serve(
        daemon.clone(),
        listener,
        MirrorConfig {
            default_registry: registry.host(),
        },
        Default::default(),
    ));

    let client = reqwest::Client::new();
    let blob = layer.digest.to_oci();
    let upstream_url = format!("{}/v2/bench/mirror/blobs/{blob}", registry.url());
    let mirror_url = format!("http://{mirror}/v2/bench/mirror/blobs/{blob}");
    // Pull it through the mirror once, so the node holds it.
    let manifest = format!(
        "http://{mirror}/v2/bench/mirror/manifests/{}",
        image.manifest_digest.to_oci()
    );
    assert!(client
        .get(&manifest)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let first = download(&client, &mirror_url, layer.size).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !daemon.store().is_complete(&layer.digest) {
        assert!(Instant::now() < deadline, "blob never complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{mib} MiB blob; first pull through the mirror (gateway pull + stream): {first:.0} MiB/s"
    );

    let (mut reg, mut mir) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        reg.push(download(&client, &upstream_url, layer.size).await);
        mir.push(download(&client, &mirror_url, layer.size).await);
    }
    let (r, m) = (median(reg.clone()), median(mir.clone()));
    println!("docker-registry: {reg:.0?} MiB/s, median {r:.0}");
    println!("mirror (held):   {mir:.0?} MiB/s, median {m:.0}");
    println!("mirror / registry: {:.0} % (target >= 80 %)", 100.0 * m / r);
    daemon.shutdown();
}
