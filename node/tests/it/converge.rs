//! Convergence of a locality's desired state (issue 12), with real
//! daemons over real libp2p against a real `docker-registry`: a node that
//! joins after the deploy installs the release (anti-entropy); a node
//! crashed mid-transfer resumes it from its persisted desired state; older
//! and replayed releases are refused with their reason, and a replay after
//! `rm` reinstalls nothing; a gateway rides out a registry outage.

use std::time::Duration;

use crate::failover::{serve_proxy, throttled_proxy};
use crate::support::daemon::*;
use crate::support::{eventually, init_tracing, push};
use edgeswarm_node::daemon::{Daemon, DaemonConfig, ReleasePhase, StatusView};
use edgeswarm_node::import::image_dir_name;
use edgeswarm_node::registry::testing::{build_image, ImageSpec, TestRegistry};
use edgeswarm_node::registry::{Compression, Platform};
use edgeswarm_node::swarm::Topic;
use edgeswarm_protocol::release::{Platform as ReleasePlatform, Release, SignedRelease};
use edgeswarm_protocol::signing::PublisherKey;
use edgeswarm_protocol::wire::GossipMessage;
use edgeswarm_protocol::Digest;
use tokio::net::TcpListener;

/// The first listen address of `daemon`, to bootstrap another from.
async fn addr_of(daemon: &Daemon) -> libp2p::Multiaddr {
    daemon.swarm().listen_addrs().await.unwrap()[0].clone()
}

/// Whether `dir` holds the imported rootfs of `image`.
fn has_rootfs(dir: &std::path::Path, image: &str) -> bool {
    dir.join("rootfs").join(image_dir_name(image)).is_dir()
}

/// Refusals recorded by `daemon` whose reason contains `needle`.
fn refusals_with(view: &StatusView, needle: &str) -> Vec<String> {
    view.refused
        .iter()
        .filter(|r| r.reason.contains(needle))
        .map(|r| format!("{} from {:?}: {}", r.image, r.from, r.reason))
        .collect()
}

/// A release of `image` pinning `manifest`, sequence `seq`.
fn release(image: &str, manifest: Digest, locality: &str, seq: u64) -> Release {
    let host = Platform::host();
    Release {
        image: image.into(),
        manifest,
        platform: ReleasePlatform::new(&host.os, &host.architecture),
        created: 1_700_000_000,
        locality: locality.into(),
        selector: vec![],
        seq,
    }
}

/// A daemon on a runtime of its own, so that the test can crash it:
/// dropping the runtime drops every task of the daemon at once, without
/// its graceful shutdown (no journal flush, nothing saved), as kill -9
/// would.
struct Crashable {
    daemon: Daemon,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Crashable {
    async fn start(config: DaemonConfig) -> Crashable {
        let (daemon_tx, daemon_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (daemon, _task) = rt.block_on(Daemon::start(config)).unwrap();
            daemon_tx.send(daemon).unwrap();
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        let daemon = tokio::task::spawn_blocking(move || daemon_rx.recv().unwrap())
            .await
            .unwrap();
        Crashable {
            daemon,
            stop,
            thread,
        }
    }

    /// Drops the daemon's runtime. Its import may still sit on a blocking
    /// thread, waiting for chunks that will never come: cancelling lets it
    /// end (a killed process would have lost it anyway).
    async fn crash(self) {
        self.stop.send(()).unwrap();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        self.daemon.shutdown();
        drop(self.daemon);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_joins_after_the_deploy_installs_the_release() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(ImageSpec::realistic(1 << 20, "late"), build.path())
        .await
        .unwrap();
    let reference = push(&registry, "late/app", "v1", &image).await;
    let locality = Locality::start("late", 1, 2).await;
    let first = &locality.daemons[0];
    let signed = first
        .prepare_release(&reference, vec![], None)
        .await
        .unwrap();
    first.publish_release(signed).await.unwrap();
    wait_done(&locality.daemons, &reference, Duration::from_secs(60)).await;

    // The deploy is over; a third node starts only now.
    let late_dir = tempfile::tempdir().unwrap();
    let (late, task) = Daemon::start(config(
        late_dir.path(),
        "late",
        false,
        vec![addr_of(first).await],
    ))
    .await
    .unwrap();
    let started = std::time::Instant::now();
    wait_done(
        std::slice::from_ref(&late),
        &reference,
        Duration::from_secs(60),
    )
    .await;
    println!(
        "late joiner installed {reference} {:.1}s after it started",
        started.elapsed().as_secs_f64()
    );
    assert!(has_rootfs(late_dir.path(), &reference));
    let view = late.status().await;
    assert!(
        view.desired
            .iter()
            .any(|d| d.image == reference && d.seq == 1),
        "{:?}",
        view.desired
    );
    late.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_crashed_mid_transfer_resumes_the_release_when_restarted() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(
        ImageSpec::random_layers(&[8 << 20], 11, Compression::None),
        build.path(),
    )
    .await
    .unwrap();
    push(&registry, "crash/app", "v1", &image).await;
    // Slow enough (2 MiB/s) to crash the node half way.
    let proxy = throttled_proxy(registry.addr(), 2 << 20).await;
    let reference = format!("{proxy}/crash/app:v1");

    let gateway_dir = tempfile::tempdir().unwrap();
    let (gateway, gateway_task) = Daemon::start(config(gateway_dir.path(), "crash", true, vec![]))
        .await
        .unwrap();
    let node_dir = tempfile::tempdir().unwrap();
    let node_config = config(
        node_dir.path(),
        "crash",
        false,
        vec![addr_of(&gateway).await],
    );
    let node = Crashable::start(node_config.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let signed = gateway
        .prepare_release(&reference, vec![], None)
        .await
        .unwrap();
    gateway.publish_release(signed).await.unwrap();
    let total = image.layers_size();
    let before = eventually(
        "the node half way",
        Duration::from_secs(60),
        async || match release_of(&node.daemon, &reference).await {
            Some(r) if r.bytes_done >= total / 4 && r.state != ReleasePhase::Done => {
                Ok(r.bytes_done)
            }
            Some(r) => Err(format!("{:?} {} of {total}", r.state, r.bytes_done)),
            None => Err("no release yet".into()),
        },
    )
    .await;
    node.crash().await;
    assert!(!has_rootfs(node_dir.path(), &reference), "imported already");

    // Reopened on the same data dir, with no new deploy: the release is
    // there at once (from its persisted desired state, not from gossip)
    // and completes.
    let (node, node_task) = Daemon::start(node_config).await.unwrap();
    let resumed = release_of(&node, &reference).await;
    if resumed
        .as_ref()
        .is_none_or(|r| r.state == ReleasePhase::Failed)
    {
        // Stop both first: a test runtime waits for their blocked imports.
        node.shutdown();
        gateway.shutdown();
        panic!("the restarted node did not resume the release it was fetching: {resumed:?}");
    }
    wait_done(
        &[gateway.clone(), node.clone()],
        &reference,
        Duration::from_secs(90),
    )
    .await;
    assert!(has_rootfs(node_dir.path(), &reference));
    println!("crashed at {before} of {total} layer bytes; resumed and done");
    for (d, t) in [(gateway, gateway_task), (node, node_task)] {
        d.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_release_of_an_image_is_refused_with_its_reason() {
    init_tracing();
    // No gateway: the releases pin manifests nobody has; only acceptance
    // is under test.
    let locality = Locality::start("older", 0, 2).await;
    let (first, second) = (&locality.daemons[0], &locality.daemons[1]);
    let key = PublisherKey::generate(&mut rand::rngs::OsRng);
    let image = "reg.invalid:5000/older/app:v1";
    let newer = SignedRelease::sign(release(image, Digest::of(b"newer"), "older", 5), &key);
    first.publish_release(newer).await.unwrap();
    eventually(
        "the second node holds seq 5",
        Duration::from_secs(20),
        async || {
            let view = second.status().await;
            let held = view.desired.iter().any(|d| d.image == image && d.seq == 5);
            held.then_some(()).ok_or(format!("{:?}", view.desired))
        },
    )
    .await;

    // An older sequence, however recent its clock: refused by the API...
    let mut body = release(image, Digest::of(b"older"), "older", 3);
    body.created = 1_900_000_000;
    let older = SignedRelease::sign(body, &key);
    let err = first.publish_release(older.clone()).await.unwrap_err();
    assert!(err.to_string().contains("older than"), "{err}");
    let view = first.status().await;
    assert!(
        !refusals_with(&view, "(seq 3) is older than").is_empty(),
        "{:?}",
        view.refused
    );

    // ...and from gossip, with the peer it came from.
    first
        .swarm()
        .publish(Topic::Releases, GossipMessage::Release(older).encode())
        .await
        .unwrap();
    let from = first.swarm().local_peer_id().to_string();
    eventually(
        "the second node refuses it",
        Duration::from_secs(20),
        async || {
            let view = second.status().await;
            let refused = view
                .refused
                .iter()
                .any(|r| r.reason.contains("older than") && r.from.as_deref() == Some(&from));
            refused.then_some(()).ok_or(format!("{:?}", view.refused))
        },
    )
    .await;
    for d in &locality.daemons {
        let view = d.status().await;
        let entry = view.desired.iter().find(|e| e.image == image).unwrap();
        assert_eq!(entry.seq, 5);
        let releases: Vec<_> = view
            .this
            .releases
            .iter()
            .filter(|r| r.image == image)
            .collect();
        assert_eq!(releases.len(), 1, "{releases:?}");
        assert_eq!(releases[0].seq, Some(5));
    }
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_release_after_rm_does_not_reinstall_the_image() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(ImageSpec::realistic(1 << 20, "replay"), build.path())
        .await
        .unwrap();
    let reference = push(&registry, "replay/app", "v1", &image).await;
    let locality = Locality::start("replay", 1, 2).await;
    let (first, second) = (&locality.daemons[0], &locality.daemons[1]);
    let signed = first
        .prepare_release(&reference, vec![], None)
        .await
        .unwrap();
    first.publish_release(signed.clone()).await.unwrap();
    wait_done(&locality.daemons, &reference, Duration::from_secs(60)).await;

    let removal = first.sign_removal(&reference);
    assert!(removal.body_unverified().seq > signed.body_unverified().seq);
    first.remove(&reference, Some(removal)).await.unwrap();
    eventually("removed everywhere", Duration::from_secs(30), async || {
        let mut left = Vec::new();
        for (d, dir) in locality.daemons.iter().zip(&locality.dirs) {
            if release_of(d, &reference).await.is_some() || has_rootfs(dir.path(), &reference) {
                left.push(d.swarm().local_peer_id());
            }
        }
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    })
    .await;

    // The original release, replayed through the API and on gossip.
    let err = first.publish_release(signed.clone()).await.unwrap_err();
    assert!(err.to_string().contains("removal"), "{err}");
    first
        .swarm()
        .publish(Topic::Releases, GossipMessage::Release(signed).encode())
        .await
        .unwrap();
    eventually("the replay refused", Duration::from_secs(20), async || {
        let view = second.status().await;
        let refused = refusals_with(&view, "older than the removal");
        (!refused.is_empty())
            .then_some(())
            .ok_or(format!("{:?}", view.refused))
    })
    .await;
    // Give a wrongly accepted replay time to reinstall.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (d, dir) in locality.daemons.iter().zip(&locality.dirs) {
        assert!(release_of(d, &reference).await.is_none());
        assert!(!has_rootfs(dir.path(), &reference), "reinstalled");
        let view = d.status().await;
        let entry = view.desired.iter().find(|e| e.image == reference).unwrap();
        assert_eq!(entry.kind, "removal");
    }
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_retries_a_registry_outage_until_the_release_completes() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(ImageSpec::realistic(1 << 20, "outage"), build.path())
        .await
        .unwrap();
    push(&registry, "outage/app", "v1", &image).await;
    // The registry's address for the release: nothing listens there yet.
    let outage = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let reference = format!("{outage}/outage/app:v1");
    let locality = Locality::start("outage", 1, 2).await;
    let gateway = &locality.daemons[0];
    let signed = SignedRelease::sign(
        release(&reference, image.manifest_digest, "outage", 1),
        &PublisherKey::generate(&mut rand::rngs::OsRng),
    );
    gateway.publish_release(signed).await.unwrap();

    // The gateway says why it waits, and nobody gives up.
    let reason = eventually(
        "the gateway retrying",
        Duration::from_secs(60),
        async || match release_of(gateway, &reference).await {
            Some(r) if r.waiting.is_some() => Ok(r.waiting.unwrap()),
            Some(r) => Err(format!("{r:?}")),
            None => Err("no release".into()),
        },
    )
    .await;
    assert!(
        reason.starts_with("retrying: registry unreachable")
            && reason.contains("attempt 1, next in "),
        "{reason}"
    );
    for d in &locality.daemons {
        let r = release_of(d, &reference).await.expect("tracked");
        assert_ne!(r.state, ReleasePhase::Failed, "{r:?}");
        assert!(r.error.is_none(), "{r:?}");
    }
    // The other node says why it waits, naming the gateway; and shows the
    // gateway's own reason in its view of that peer.
    let gateway_id = gateway.swarm().local_peer_id().to_string();
    let other = &locality.daemons[1];
    let seen = eventually(
        "the other node shows the gateway's retry",
        Duration::from_secs(30),
        async || {
            let view = other.status().await;
            let mine = view
                .this
                .releases
                .iter()
                .find(|r| r.image == reference)
                .and_then(|r| r.waiting.clone());
            let peer = view
                .nodes
                .iter()
                .find(|n| n.peer_id == gateway_id)
                .and_then(|n| n.releases.iter().find_map(|r| r.waiting.clone()));
            match (mine, peer) {
                (Some(m), Some(p)) => Ok((m, p)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let prefix = format!("gateway {gateway_id} retrying: registry unreachable");
    assert!(seen.0.starts_with(&prefix), "{seen:?}");
    assert!(
        seen.0.contains(", attempt ") && seen.0.contains(" s"),
        "{seen:?}"
    );
    assert!(
        seen.1.starts_with("retrying: registry unreachable"),
        "{seen:?}"
    );
    // Let it retry at least once more while the registry is still down.
    eventually("a second retry", Duration::from_secs(60), async || {
        let w = release_of(gateway, &reference)
            .await
            .and_then(|r| r.waiting);
        match w {
            Some(w) if !w.contains("attempt 1,") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The registry comes back at the same address.
    let listener = TcpListener::bind(outage).await.unwrap();
    serve_proxy(listener, registry.addr(), 1 << 30);
    wait_done(&locality.daemons, &reference, Duration::from_secs(120)).await;
    for d in &locality.daemons {
        let r = release_of(d, &reference).await.unwrap();
        assert!(r.waiting.is_none(), "{r:?}");
    }
    for dir in &locality.dirs {
        assert!(has_rootfs(dir.path(), &reference));
    }
    locality.shutdown().await;
}

/// A proxy to `upstream` at `rate` bytes/s that delivers at most `limit`
/// response bytes in all; from then on it drops every connection at once
/// (the registry gone mid-layer). Returns its address.
async fn proxy_cut_after(upstream: std::net::SocketAddr, rate: u64, limit: u64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if sent.load(Ordering::Relaxed) >= limit {
                continue;
            }
            let sent = sent.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_r, mut client_w) = client.into_split();
                let (mut server_r, mut server_w) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_r, &mut server_w).await;
                });
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let room = limit.saturating_sub(sent.load(Ordering::Relaxed));
                    let want = buf.len().min(room as usize);
                    if want == 0 {
                        break;
                    }
                    let n = match server_r.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if client_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
                }
                up.abort();
            });
        }
    });
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_waiting_mid_import_gives_up_only_when_the_release_is_superseded() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let image = build_image(
        ImageSpec::random_layers(&[4 << 20], 5, Compression::None),
        build.path(),
    )
    .await
    .unwrap();
    push(&registry, "abandon/app", "v1", &image).await;
    // The registry goes away once half the layer crossed the cloud link.
    let proxy = proxy_cut_after(registry.addr(), 2 << 20, image.layers_size() / 2).await;
    let reference = format!("{proxy}/abandon/app:v1");
    let locality = Locality::start("abandon", 1, 2).await;
    let (gateway, node) = (&locality.daemons[0], &locality.daemons[1]);
    let key = PublisherKey::generate(&mut rand::rngs::OsRng);
    let first = SignedRelease::sign(
        release(&reference, image.manifest_digest, "abandon", 1),
        &key,
    );
    let first_id = first.release_id().to_string();
    gateway.publish_release(first).await.unwrap();

    // The node imports what arrived and waits for the rest (its import
    // blocked on the next chunk) while the gateway retries the outage.
    let of = async |id: &str| {
        let view = node.status().await;
        view.this.releases.into_iter().find(|r| r.id == id)
    };
    let waiting = eventually(
        "the node waiting mid-layer for a retrying gateway",
        Duration::from_secs(60),
        async || match of(&first_id).await {
            Some(r)
                if r.state == ReleasePhase::Fetching
                    && r.bytes_done > 0
                    && r.waiting
                        .as_deref()
                        .is_some_and(|w| w.contains(" retrying: ")) =>
            {
                Ok(r)
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert!(waiting.bytes_done < waiting.bytes_total, "{waiting:?}");
    // Waiting is not failing: still fetching, no error, a while later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = of(&first_id).await.unwrap();
    assert_eq!(r.state, ReleasePhase::Fetching, "{r:?}");
    assert!(r.error.is_none(), "{r:?}");

    // A newer release of the image: the node gives the old one up, with
    // the reason, and its import ends.
    let newer = SignedRelease::sign(release(&reference, Digest::of(b"v2"), "abandon", 2), &key);
    let newer_id = newer.release_id().to_string();
    gateway.publish_release(newer).await.unwrap();
    let error = eventually(
        "the old release given up",
        Duration::from_secs(20),
        async || match of(&first_id).await {
            Some(r) if r.state == ReleasePhase::Failed => Ok(r.error.unwrap_or_default()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert!(
        error.contains(&format!("superseded by release {newer_id} (seq 2)")),
        "{error}"
    );
    assert!(!has_rootfs(locality.dirs[1].path(), &reference));
    locality.shutdown().await;
}
