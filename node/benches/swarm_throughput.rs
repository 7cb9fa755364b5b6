//! Swarm figures (prints, asserts nothing):
//!
//! 1. raw TCP copy of N MiB over loopback (the ceiling);
//! 2. single-pair chunk throughput: a seed process serves an N MiB blob,
//!    this process fetches it through the swarm (TCP + noise + yamux,
//!    libp2p-stream, verified and written to the node's chunk store,
//!    `node::store::Store`), without
//!    and with a swarm key (pnet);
//! 3. peak RSS of the fetching node while it receives a 1 GiB blob.
//!
//! Run: `cargo bench -p edgeswarm-node --bench swarm_throughput`
//! (env `SWARM_BENCH_MIB`, default 256; `SWARM_BENCH_BIG_MIB`, default 1024).
//! The seed runs as a child process (this binary re-executed with
//! `--seed-child`) so the RSS figure is the fetcher's alone.

use std::io::{BufRead as _, Read, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use edgeswarm_node::store::{Store, StoreConfig};
use edgeswarm_node::swarm::keys::generate_swarm_key;
use edgeswarm_node::swarm::{Node, SwarmConfig};
use edgeswarm_protocol::{ChunkMap, ChunkMapBuilder, ChunkSize, Digest};
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: u32 = 1 << 20;

/// Deterministic pseudo-random bytes, generated on the fly (never held).
struct Gen {
    rng: rand_chacha::ChaCha8Rng,
    left: u64,
}

impl Gen {
    fn new(seed: u64, len: u64) -> Self {
        Gen {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            left: len,
        }
    }
}

impl Read for Gen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.rng.fill_bytes(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn chunk_map_of(seed: u64, len: u64) -> (Digest, ChunkMap) {
    let mut b = ChunkMapBuilder::new(ChunkSize::new(CHUNK).unwrap());
    let mut g = Gen::new(seed, len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = g.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        b.update(&buf[..n]);
    }
    let (map, digest) = b.finish();
    (digest, map)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn cfg(dir: &Path, key: Option<&Path>, boot: Vec<libp2p::Multiaddr>) -> SwarmConfig {
    let mut c = SwarmConfig::new(dir, "bench");
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.mdns = false;
    c.bootstrap = boot;
    c.swarm_key = key.map(Path::to_path_buf);
    c
}

async fn open_store(dir: &Path) -> Store {
    Store::open(dir.join("store"), StoreConfig::default())
        .await
        .unwrap()
}

/// Stores a generated blob chunk by chunk (each verified), never holding
/// more than one chunk.
async fn import(store: &Store, digest: Digest, map: &ChunkMap, mut gen: Gen) {
    store.put_chunk_map(digest, map).await.unwrap();
    for index in 0..map.chunk_count() {
        let mut buf = vec![0u8; map.chunk_len(index).unwrap() as usize];
        gen.read_exact(&mut buf).unwrap();
        store
            .write_chunk(digest, index, bytes::Bytes::from(buf))
            .await
            .unwrap();
    }
    assert!(store.is_complete(&digest));
}

/// Child mode: seed a generated blob, print `addr digest`, serve until
/// stdin closes.
async fn seed_child(mib: u64, key: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let len = mib << 20;
    let (digest, map) = tokio::task::spawn_blocking(move || chunk_map_of(7, len))
        .await
        .unwrap();
    import(&store, digest, &map, Gen::new(7, len)).await;
    let key = key.map(std::path::PathBuf::from);
    let (client, task) = Node::start(cfg(dir.path(), key.as_deref(), vec![]), store)
        .await
        .unwrap();
    client.provide(digest).await.unwrap();
    let addr = client.listen_addrs().await.unwrap()[0].clone();
    println!("{addr} {}", digest.to_hex());
    std::io::stdout().flush().unwrap();
    tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    })
    .await
    .unwrap();
    client.shutdown();
    let _ = task.await;
}

struct PairResult {
    mib_s: f64,
    peak_rss_mib: f64,
    seed_setup: Duration,
}

async fn pair(mib: u64, key: Option<&Path>) -> PairResult {
    let t_setup = Instant::now();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.arg("--seed-child").arg(mib.to_string());
    if let Some(k) = key {
        cmd.arg(k);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut parts = line.split_whitespace();
    let addr: libp2p::Multiaddr = parts.next().unwrap().parse().unwrap();
    let digest = Digest::parse_hex(parts.next().unwrap()).unwrap();
    let seed_setup = t_setup.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let (client, task) = Node::start(cfg(dir.path(), key, vec![addr]), store)
        .await
        .unwrap();
    // Time the transfer, not the connection set-up.
    while client.connected_peers().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let base = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let p2 = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            p2.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let t0 = Instant::now();
    client.fetch_blob(digest, None).await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    sampler.abort();
    client.shutdown();
    let _ = task.await;
    drop(child.stdin.take());
    let _ = child.wait();
    PairResult {
        mib_s: mib as f64 / secs,
        peak_rss_mib: peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        seed_setup,
    }
}

async fn raw_tcp(mib: u64) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let len = mib << 20;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut g = Gen::new(7, len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = g.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < len {
        let n = c.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    server.await.unwrap();
    mib as f64 / secs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("--seed-child") {
        let mib: u64 = args[2].parse().unwrap();
        rt.block_on(seed_child(mib, args.get(3).cloned()));
        return;
    }
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mib = env("SWARM_BENCH_MIB", 256);
    let big = env("SWARM_BENCH_BIG_MIB", 1024);
    rt.block_on(async {
        let keydir = tempfile::tempdir().unwrap();
        let key = keydir.path().join("swarm.key");
        generate_swarm_key(&key).unwrap();

        let raw = raw_tcp(mib).await;
        println!("raw TCP loopback copy, {mib} MiB:                {raw:8.1} MiB/s (generator-bound ceiling)");
        let plain = pair(mib, None).await;
        println!(
            "swarm pair, {mib} MiB, no swarm key:          {:8.1} MiB/s ({:.0}% of raw TCP), fetcher peak RSS {:.1} MiB",
            plain.mib_s,
            100.0 * plain.mib_s / raw,
            plain.peak_rss_mib
        );
        let keyed = pair(mib, Some(&key)).await;
        println!(
            "swarm pair, {mib} MiB, swarm key (pnet):      {:8.1} MiB/s ({:.0}% of raw TCP, {:.0}% of keyless), fetcher peak RSS {:.1} MiB",
            keyed.mib_s,
            100.0 * keyed.mib_s / raw,
            100.0 * keyed.mib_s / plain.mib_s,
            keyed.peak_rss_mib
        );
        let large = pair(big, None).await;
        println!(
            "swarm pair, {big} MiB blob:                   {:8.1} MiB/s, fetcher peak RSS {:.1} MiB (limit 64 MiB); seed setup {:.1} s",
            large.mib_s, large.peak_rss_mib, large.seed_setup.as_secs_f64()
        );
    });
}
