//! Gateway failover against a real `docker-registry` behind a throttling
//! proxy (so the pull takes seconds): the elected gateway is stopped half
//! way through the layer; the other gateway-capable node takes the release
//! over, resumes from what the locality already holds with Range requests,
//! and every surviving node completes. The image crosses the cloud link
//! about once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::daemon::*;
use crate::support::{eventually, init_tracing, push};
use edgeswarm_node::registry::testing::{build_image, ImageSpec, TestRegistry};
use edgeswarm_node::registry::Compression;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `upstream` that delivers responses at `rate` bytes/s.
pub(crate) async fn throttled_proxy(upstream: SocketAddr, rate: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_proxy(listener, upstream, rate);
    addr
}

/// Proxies every connection `listener` accepts to `upstream`, delivering
/// responses at `rate` bytes/s.
pub(crate) fn serve_proxy(listener: TcpListener, upstream: SocketAddr, rate: u64) {
    serve_counted_proxy(listener, upstream, rate, Default::default());
}

/// [`serve_proxy`], adding every response byte delivered to `delivered`
/// (the cloud link's bytes, for nodes that run as processes of their own).
pub(crate) fn serve_counted_proxy(
    listener: TcpListener,
    upstream: SocketAddr,
    rate: u64,
    delivered: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let delivered = delivered.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_r, mut client_w) = client.into_split();
                let (mut server_r, mut server_w) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_r, &mut server_w).await;
                    let _ = server_w.shutdown().await;
                });
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = match server_r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if client_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    delivered.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
                }
                up.abort();
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_gateway_takes_over_a_half_pulled_release() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(
        ImageSpec::random_layers(&[12 << 20], 7, Compression::None),
        build.path(),
    )
    .await
    .unwrap();
    push(&registry, "failover/app", "v1", &image).await;
    let proxy = throttled_proxy(registry.addr(), 3 << 20).await;
    let reference = format!("{proxy}/failover/app:v1");

    let locality = Locality::start("failover", 2, 3).await;
    let first = &locality.daemons[0];
    let signed = first
        .prepare_release(&reference, vec![], None)
        .await
        .unwrap();
    first.publish_release(signed).await.unwrap();

    // Find the elected gateway and stop it half way through the layer.
    let gateway = eventually("a gateway elected", Duration::from_secs(10), async || {
        let release = release_of(first, &reference).await;
        release.and_then(|r| r.gateway).ok_or("none yet")
    })
    .await;
    let elected = locality
        .daemons
        .iter()
        .position(|d| d.swarm().local_peer_id().to_string() == gateway)
        .expect("the gateway is one of ours");
    assert!(elected < 2, "only gateway-capable nodes are elected");
    let dead = &locality.daemons[elected];
    let half = image.layers_size() / 2;
    eventually("the pull half done", Duration::from_secs(30), async || {
        let pulled = dead.registry().unwrap().stats().bytes_pulled;
        (pulled >= half).then_some(()).ok_or(pulled)
    })
    .await;
    dead.shutdown();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dead_pulled = dead.registry().unwrap().stats().bytes_pulled;

    let survivors: Vec<_> = locality
        .daemons
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != elected)
        .map(|(_, d)| d.clone())
        .collect();
    wait_done(&survivors, &reference, Duration::from_secs(90)).await;
    let took_over = killed_at.elapsed();

    let other_gateway = 1 - elected;
    let survivor_pulled = locality.daemons[other_gateway]
        .registry()
        .unwrap()
        .stats()
        .bytes_pulled;
    let total = dead_pulled + survivor_pulled;
    let ratio = total as f64 / image_bytes(&image) as f64;
    println!(
        "failover: first gateway pulled {dead_pulled} bytes, second {survivor_pulled}; \
         {ratio:.3}x the image; survivors done {:.1}s after the kill",
        took_over.as_secs_f64()
    );
    assert!(
        ratio <= 1.2,
        "the cloud link carried {ratio:.2}x the image ({total} bytes)"
    );
    for (i, dir) in locality.dirs.iter().enumerate() {
        if i == elected {
            continue;
        }
        let name = edgeswarm_node::import::image_dir_name(&reference);
        assert!(dir
            .path()
            .join("rootfs")
            .join(name)
            .join("data/layer0.bin")
            .is_file());
    }
    locality.shutdown().await;
}

/// A healed partition: two gateway-capable nodes that cannot hear each
/// other each elect themselves for the same release and pull it; once
/// they connect, both act on it, both elect the better-ranked one
/// (`election::elect_acting`), and the other stops its registry pull at
/// its next read instead of pulling the rest of the layer a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_pulling_at_once_settle_on_one_when_they_meet() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(
        ImageSpec::random_layers(&[24 << 20], 11, Compression::None),
        build.path(),
    )
    .await
    .unwrap();
    push(&registry, "partition/app", "v1", &image).await;
    // 2 MiB/s per connection: each side's pull takes 12 s alone.
    let proxy = throttled_proxy(registry.addr(), 2 << 20).await;
    let reference = format!("{proxy}/partition/app:v1");

    // Two localities of one node each (same name, no bootstrap): a
    // partition from the start.
    let a = Locality::start("partition", 1, 1).await;
    let b = Locality::start("partition", 1, 1).await;
    let (da, db) = (&a.daemons[0], &b.daemons[0]);
    let signed = da.prepare_release(&reference, vec![], None).await.unwrap();
    da.publish_release(signed.clone()).await.unwrap();
    db.publish_release(signed).await.unwrap();
    let pulled = |d: &edgeswarm_node::daemon::Daemon| d.registry().unwrap().stats().bytes_pulled;
    eventually("both pulling", Duration::from_secs(30), async || {
        let (x, y) = (pulled(da), pulled(db));
        (x >= 3 << 20 && y >= 3 << 20)
            .then_some(())
            .ok_or(format!("{x} and {y} bytes"))
    })
    .await;

    // Heal: b dials a.
    let addr = da.swarm().listen_addrs().await.unwrap()[0].clone();
    db.swarm().dial(addr).await.unwrap();
    let healed_at = (pulled(da), pulled(db));
    wait_done(
        &[da.clone(), db.clone()],
        &reference,
        Duration::from_secs(90),
    )
    .await;
    let ga = release_of(da, &reference).await.and_then(|r| r.gateway);
    let gb = release_of(db, &reference).await.and_then(|r| r.gateway);
    assert_eq!(ga, gb, "the two nodes elect one gateway");
    let winner = ga.expect("a gateway");
    let (loser, at_heal) = if winner == da.swarm().local_peer_id().to_string() {
        (db, healed_at.1)
    } else {
        (da, healed_at.0)
    };
    let after = pulled(loser) - at_heal;
    let layer = image.layers_size();
    println!(
        "partition healed at {healed_at:?} bytes pulled; the worse-ranked gateway pulled \
         {after} more of a {layer}-byte layer"
    );
    // It learns of the other within a few status intervals (2 s) and
    // gossip hops: at 2 MiB/s, a few MiB at most; without the stop it
    // pulled the rest of the layer (about 18 MiB).
    assert!(
        pulled(loser) < layer * 3 / 4 && after < 8 << 20,
        "the worse-ranked gateway kept pulling: {after} bytes after the heal, {} in all",
        pulled(loser)
    );
    a.shutdown().await;
    b.shutdown().await;
}
