//! The registry mirror with real clients against real nodes and a real
//! `docker-registry`: skopeo copies from a node that holds nothing (the
//! gateway pulls once, the node streams from its peer); containerd 1.6
//! (`ctr images pull --hosts-dir`, a private containerd) pulls through
//! it; unknown images are a fast 404; Range requests; a gateway stopped
//! mid-pull.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::daemon::*;
use crate::support::{eventually, init_tracing, push};
use edgeswarm_node::daemon::Daemon;
use edgeswarm_node::mirror::MirrorConfig;
use edgeswarm_node::registry::testing::{build_image, BuiltImage, ImageSpec, TestRegistry};
use edgeswarm_node::registry::Compression;
use edgeswarm_protocol::Digest;
use tokio_util::sync::CancellationToken;

/// Serves `daemon`'s mirror on a free loopback port; requests without
/// `?ns=` go to `default_registry`.
async fn start_mirror(daemon: &Daemon, default_registry: &str) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(edgeswarm_node::mirror::serve(
        daemon.clone(),
        listener,
        MirrorConfig {
            default_registry: default_registry.to_owned(),
        },
        stop.clone(),
    ));
    (addr, stop)
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Checks a `skopeo copy ... dir:` output against the image.
fn assert_dir_copy(dir: &Path, image: &BuiltImage) {
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    assert!(
        manifest == image.manifest_bytes,
        "skopeo's manifest differs from the pushed one"
    );
    for layer in &image.layers {
        let bytes = std::fs::read(dir.join(layer.digest.to_oci().trim_start_matches("sha256:")))
            .unwrap_or_else(|e| panic!("layer {} not copied: {e}", layer.digest));
        assert_eq!(Digest::of(&bytes), layer.digest, "layer bytes differ");
    }
}

/// An image built from `spec` in a temporary directory (returned: the
/// layer files live there) and pushed to `registry` as `repo:tag`, with
/// its reference.
async fn pushed(
    registry: &TestRegistry,
    spec: ImageSpec,
    repo: &str,
    tag: &str,
) -> (tempfile::TempDir, BuiltImage, String) {
    let build = tempfile::tempdir().unwrap();
    let image = build_image(spec, build.path()).await.unwrap();
    let reference = push(registry, repo, tag, &image).await;
    (build, image, reference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_copies_through_a_node_that_holds_nothing() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (_build, image, _) = pushed(
        &registry,
        ImageSpec::realistic(6 << 20, "skopeo"),
        "mirror/app",
        "v1",
    )
    .await;
    // Node 0 is the gateway; node 1 cannot reach the registry itself.
    let locality = Locality::start("mirror-skopeo", 1, 2).await;
    let (gateway, node) = (&locality.daemons[0], &locality.daemons[1]);
    let (mirror, _stop) = start_mirror(node, &registry.host()).await;

    // A tag this node cannot resolve: 404 at once, the client resolves
    // it upstream; by digest it is pulled through the locality.
    let started = Instant::now();
    let status = reqwest::get(format!("http://{mirror}/v2/mirror/app/manifests/v1"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    assert!(started.elapsed() < Duration::from_secs(2));

    let out = tempfile::tempdir().unwrap();
    let src = format!(
        "docker://{mirror}/mirror/app@{}",
        image.manifest_digest.to_oci()
    );
    let dst = format!("dir:{}", out.path().display());
    let copy = tokio::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", &src, &dst])
        .output()
        .await
        .unwrap();
    assert!(
        copy.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&copy.stderr)
    );
    assert_dir_copy(out.path(), &image);

    // The gateway pulled the image once; the node took it from its peer.
    let pulled = gateway.registry().unwrap().stats().bytes_pulled;
    let size = image_bytes(&image);
    println!("gateway pulled {pulled} bytes for a {size}-byte image");
    assert!(
        pulled as f64 <= size as f64 * 1.3,
        "the gateway pulled {pulled} bytes for a {size}-byte image"
    );
    // Pinned, in status and in the metrics like a deployment.
    let image_name = format!(
        "{}/mirror/app@{}",
        registry.host(),
        image.manifest_digest.to_oci()
    );
    wait_done(
        std::slice::from_ref(node),
        &image_name,
        Duration::from_secs(30),
    )
    .await;
    let pins = node.store().pins();
    let pinned = pins.get(&image_name).expect("the mirror pull is pinned");
    for layer in &image.layers {
        assert!(pinned.contains(&layer.digest));
        assert!(node.store().is_complete(&layer.digest));
    }
    let metrics = node.encode_metrics().unwrap();
    assert!(
        metric(&metrics, "edgeswarm_mirror_bytes_served_total") >= image.layers_size() as f64,
        "{metrics}"
    );
    assert!(metric(&metrics, "edgeswarm_mirror_requests_total{kind=\"blob\"") >= 3.0);
    assert_eq!(
        metric(
            &metrics,
            "edgeswarm_mirror_requests_total{kind=\"manifest\",outcome=\"not_found\"}"
        ),
        1.0
    );
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_images_are_a_fast_404_and_ranges_are_served() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (_build, image, _) = pushed(
        &registry,
        ImageSpec::random_layers(&[3 << 20], 11, Compression::None),
        "mirror/range",
        "v1",
    )
    .await;
    // One gateway-capable node, with the mirror on it: tags resolve at the
    // registry.
    let locality = Locality::start("mirror-range", 1, 1).await;
    let gateway = &locality.daemons[0];
    let (mirror, _stop) = start_mirror(gateway, "unused.example").await;
    let ns = format!("ns={}", registry.host());
    let client = reqwest::Client::new();

    // The spec's error JSON, fast, for what the registry does not have.
    let started = Instant::now();
    let response = client
        .get(format!("http://{mirror}/v2/mirror/none/manifests/v1?{ns}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN", "{body}");
    let absent = Digest::of(b"no such blob").to_oci();
    let response = client
        .get(format!(
            "http://{mirror}/v2/mirror/range/blobs/{absent}?{ns}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        client
            .delete(format!("http://{mirror}/v2/mirror/range/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        client
            .get(format!("http://{mirror}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // HEAD by tag (what containerd sends first), with ns percent-encoded.
    let response = client
        .head(format!(
            "http://{mirror}/v2/mirror/range/manifests/v1?ns={}",
            registry.host().replace(':', "%3A")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["docker-content-digest"],
        image.manifest_digest.to_oci().as_str()
    );
    assert_eq!(
        response.headers()["content-type"],
        image.manifest_media_type.as_str()
    );
    let layer = &image.layers[0];
    let url = format!(
        "http://{mirror}/v2/mirror/range/blobs/{}?{ns}",
        layer.digest.to_oci()
    );
    let whole = eventually(
        "the layer pulled through",
        Duration::from_secs(30),
        async || {
            let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
            if r.status() != 200 {
                return Err(format!("{}", r.status()));
            }
            r.bytes().await.map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(Digest::of(&whole), layer.digest);
    eventually("the layer complete", Duration::from_secs(10), async || {
        gateway
            .store()
            .is_complete(&layer.digest)
            .then_some(())
            .ok_or("not yet")
    })
    .await;
    for (range, start, end) in [
        ("bytes=100-199", 100u64, 199u64),
        ("bytes=-10", layer.size - 10, layer.size - 1),
        ("bytes=1048570-", 1048570, layer.size - 1),
    ] {
        let r = client
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/{}", layer.size).as_str()
        );
        let got = r.bytes().await.unwrap();
        assert!(
            got[..] == whole[start as usize..=end as usize],
            "{range}: wrong bytes"
        );
    }
    let r = client
        .get(&url)
        .header("range", format!("bytes={}-", layer.size))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = client.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        layer.size.to_string().as_str()
    );
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_gateway_or_peer_the_mirror_answers_404_at_once() {
    init_tracing();
    let locality = Locality::start("mirror-alone", 0, 1).await;
    let node = &locality.daemons[0];
    let (mirror, _stop) = start_mirror(node, "registry.example:5000").await;
    let digest = Digest::of(b"anything").to_oci();
    let started = Instant::now();
    for path in [
        "mirror/app/manifests/v1".to_owned(),
        format!("mirror/app/manifests/{digest}"),
        format!("mirror/app/blobs/{digest}"),
    ] {
        let r = reqwest::get(format!("http://{mirror}/v2/{path}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_stopped_mid_pull_lets_the_client_complete_or_fail_fast() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (_build, image, _) = pushed(
        &registry,
        ImageSpec::random_layers(&[10 << 20], 21, Compression::None),
        "mirror/failover",
        "v1",
    )
    .await;
    let proxy = crate::failover::throttled_proxy(registry.addr(), 3 << 20).await;
    // Two gateway-capable nodes and a node with the mirror.
    let locality = Locality::start("mirror-failover", 2, 3).await;
    let node = &locality.daemons[2];
    let (mirror, _stop) = start_mirror(node, &proxy.to_string()).await;
    let client = reqwest::Client::new();
    let base = format!("http://{mirror}/v2/mirror/failover");
    let manifest = client
        .get(format!(
            "{base}/manifests/{}",
            image.manifest_digest.to_oci()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    let layer = image.layers[0].clone();
    let url = format!("{base}/blobs/{}", layer.digest.to_oci());
    let download = tokio::spawn(async move {
        let started = Instant::now();
        let result = async {
            let r = reqwest::get(&url).await.map_err(|e| e.to_string())?;
            if r.status() != 200 {
                return Err(format!("status {}", r.status()));
            }
            r.bytes().await.map_err(|e| e.to_string())
        }
        .await;
        (result, started.elapsed())
    });
    // Stop whichever gateway pulls, a third of the way through.
    let third = layer.size / 3;
    let elected = eventually("a gateway pulling", Duration::from_secs(30), async || {
        (0..2)
            .find(|&i| locality.daemons[i].registry().unwrap().stats().bytes_pulled >= third)
            .ok_or("none yet")
    })
    .await;
    locality.daemons[elected].shutdown();
    let killed = Instant::now();
    let (result, _) = tokio::time::timeout(Duration::from_secs(90), download)
        .await
        .expect("the client neither completed nor failed within 90 s")
        .unwrap();
    let after_kill = killed.elapsed();
    match result {
        Ok(bytes) => {
            assert_eq!(
                Digest::of(&bytes),
                layer.digest,
                "the client received bytes that do not verify"
            );
            println!(
                "completed {:.1}s after the gateway stopped",
                after_kill.as_secs_f64()
            );
        }
        Err(e) => {
            println!(
                "failed {:.1}s after the gateway stopped: {e}",
                after_kill.as_secs_f64()
            );
            assert!(
                after_kill < edgeswarm_node::daemon::STALL_LIMIT + Duration::from_secs(10),
                "failed, but only after {after_kill:?}"
            );
        }
    }
    locality.shutdown().await;
}

/// A private containerd (own root, state and socket) killed on drop.
struct Containerd {
    child: tokio::process::Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    async fn start() -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("containerd.log")).unwrap(),
            ))
            .kill_on_drop(true)
            .spawn()
            .expect("containerd is installed");
        let c = Containerd {
            child,
            socket,
            _dir: dir,
        };
        eventually(
            "containerd answering",
            Duration::from_secs(30),
            async || {
                let out = c.ctr(&["version"]).await;
                out.status.success().then_some(()).ok_or("not yet")
            },
        )
        .await;
        c
    }

    async fn ctr(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "mirror"])
            .args(args)
            .output()
            .await
            .unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_pulls_through_the_mirror_with_hosts_toml() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (_build, image, reference) = pushed(
        &registry,
        ImageSpec::realistic(6 << 20, "ctr"),
        "mirror/ctr",
        "v1",
    )
    .await;
    let locality = Locality::start("mirror-ctr", 1, 2).await;
    let (gateway, node) = (&locality.daemons[0], &locality.daemons[1]);
    let (mirror, _stop) = start_mirror(node, "unused.example").await;
    let hosts = tempfile::tempdir().unwrap();
    let host_dir = hosts.path().join(registry.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{upstream}\"\n\n[host.\"http://{mirror}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n",
            upstream = registry.host()
        ),
    )
    .unwrap();
    let containerd = Containerd::start().await;
    let hosts_dir = hosts.path().display().to_string();
    let pull = containerd
        .ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--hosts-dir",
            &hosts_dir,
            &reference,
        ])
        .await;
    assert!(
        pull.status.success(),
        "ctr pull failed: {}\n{}",
        String::from_utf8_lossy(&pull.stdout),
        String::from_utf8_lossy(&pull.stderr)
    );
    // containerd holds every layer and unpacked the image.
    let content = containerd.ctr(&["content", "ls", "-q"]).await;
    let content = String::from_utf8_lossy(&content.stdout);
    for layer in &image.layers {
        assert!(content.contains(&layer.digest.to_oci()), "{content}");
    }
    let snapshots = containerd.ctr(&["snapshots", "ls"]).await;
    let snapshots = String::from_utf8_lossy(&snapshots.stdout);
    assert!(
        snapshots.lines().count() > image.layers.len(),
        "not unpacked: {snapshots}"
    );
    // The blobs came through the mirror (the tag resolved upstream: this
    // node is no gateway), and the registry served the layers once.
    let metrics = node.encode_metrics().unwrap();
    let served = metric(&metrics, "edgeswarm_mirror_bytes_served_total");
    assert!(served >= image.layers_size() as f64, "{metrics}");
    let pulled = gateway.registry().unwrap().stats().bytes_pulled;
    assert!(
        pulled as f64 <= image_bytes(&image) as f64 * 1.3,
        "gateway pulled {pulled}"
    );
    locality.shutdown().await;
}

/// Fetches the manifest and every blob of `image` through `mirror`;
/// returns the bytes of each blob (checked against its digest).
async fn pull_by_digest(mirror: SocketAddr, repo: &str, image: &BuiltImage) -> u64 {
    let client = reqwest::Client::new();
    let base = format!("http://{mirror}/v2/{repo}");
    let r = client
        .get(format!(
            "{base}/manifests/{}",
            image.manifest_digest.to_oci()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == image.manifest_bytes);
    let mut total = 0;
    let blobs = std::iter::once(image.config_digest).chain(image.layers.iter().map(|l| l.digest));
    for digest in blobs {
        let r = client
            .get(format!("{base}/blobs/{}", digest.to_oci()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "blob {digest}");
        let bytes = r.bytes().await.unwrap();
        assert_eq!(Digest::of(&bytes), digest);
        total += bytes.len() as u64;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_pulling_at_once_cross_the_cloud_once() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (_build, image, _) = pushed(
        &registry,
        ImageSpec::random_layers(&[6 << 20, 2 << 20], 31, Compression::None),
        "mirror/twice",
        "v1",
    )
    .await;
    // Slow enough that both requests overlap the gateway's pull.
    let proxy = crate::failover::throttled_proxy(registry.addr(), 4 << 20).await;
    let locality = Locality::start("mirror-twice", 1, 3).await;
    let (a, _sa) = start_mirror(&locality.daemons[1], &proxy.to_string()).await;
    let (b, _sb) = start_mirror(&locality.daemons[2], &proxy.to_string()).await;
    let (ga, gb) = tokio::join!(
        pull_by_digest(a, "mirror/twice", &image),
        pull_by_digest(b, "mirror/twice", &image)
    );
    assert_eq!(ga, gb);
    let pulled = locality.daemons[0].registry().unwrap().stats().bytes_pulled;
    let size = image_bytes(&image);
    println!("gateway pulled {pulled} bytes for two nodes pulling a {size}-byte image");
    assert!(
        (pulled as f64) < size as f64 * 1.2,
        "the cloud link carried {pulled} bytes for a {size}-byte image"
    );
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_pulls_the_mirror_as_a_registry() {
    init_tracing();
    let _dockerd = crate::support::import::ensure_dockerd();
    let registry = TestRegistry::start().await.unwrap();
    // Layers dockerd has never seen (it skips layers it holds).
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut spec = ImageSpec::random_layers(&[2 << 20, 1 << 20], seed, Compression::Gzip);
    spec.format = edgeswarm_node::registry::testing::ManifestFormat::Docker;
    let (_build, image, _) = pushed(&registry, spec, "mirror/docker", "v1").await;
    // A gateway-capable node resolves the tag; Docker sends no `ns`, so the
    // mirror's default registry names the upstream.
    let locality = Locality::start("mirror-docker", 1, 1).await;
    let (mirror, _stop) = start_mirror(&locality.daemons[0], &registry.host()).await;
    let name = format!("{mirror}/mirror/docker:v1");
    let pull = tokio::process::Command::new("docker")
        .args(["pull", &name])
        .output()
        .await
        .unwrap();
    let _ = tokio::process::Command::new("docker")
        .args(["rmi", &name])
        .output()
        .await;
    assert!(
        pull.status.success(),
        "docker pull failed: {}{}",
        String::from_utf8_lossy(&pull.stdout),
        String::from_utf8_lossy(&pull.stderr)
    );
    assert!(
        String::from_utf8_lossy(&pull.stdout).contains(&image.manifest_digest.to_oci()),
        "docker pulled another digest: {}",
        String::from_utf8_lossy(&pull.stdout)
    );
    let metrics = locality.daemons[0].encode_metrics().unwrap();
    assert!(
        metric(&metrics, "edgeswarm_mirror_bytes_served_total") >= image.layers_size() as f64,
        "{metrics}"
    );
    locality.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_trusted_keys_a_deployed_tag_is_answered_and_misses_still_pull() {
    init_tracing();
    use edgeswarm_protocol::signing::{PublisherKey, TrustedKeys};
    let registry = TestRegistry::start().await.unwrap();
    let build = tempfile::tempdir().unwrap();
    let deployed = build_image(
        ImageSpec::random_layers(&[1 << 20], 41, Compression::Gzip),
        build.path(),
    )
    .await
    .unwrap();
    let other = build_image(
        ImageSpec::random_layers(&[2 << 20], 42, Compression::Gzip),
        build.path(),
    )
    .await
    .unwrap();
    let reference = push(&registry, "mirror/trust", "v1", &deployed).await;
    push(&registry, "mirror/trust", "v2", &other).await;
    // Every node trusts one publisher key only: a mirror release, signed
    // by a node's own identity, is still pulled (it imports nothing).
    let publisher = PublisherKey::from_secret_bytes([7; 32]);
    let mut trusted = TrustedKeys::new();
    trusted.insert(publisher.public());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut gconf = config(dirs[0].path(), "mirror-trust", true, vec![]);
    gconf.trusted = trusted.clone();
    let (gateway, gtask) = Daemon::start(gconf).await.unwrap();
    let addr = gateway.swarm().listen_addrs().await.unwrap()[0].clone();
    let mut nconf = config(dirs[1].path(), "mirror-trust", false, vec![addr]);
    nconf.trusted = trusted;
    let (node, ntask) = Daemon::start(nconf).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mirror, _stop) = start_mirror(&node, &registry.host()).await;

    // A deployment of v1 by the trusted publisher: the node answers the
    // tag v1 without a registry; v2 is unknown to it (404).
    let signed = gateway
        .prepare_release(&reference, vec![], Some(&publisher))
        .await
        .unwrap();
    gateway.publish_release(signed).await.unwrap();
    wait_done(
        &[gateway.clone(), node.clone()],
        &reference,
        Duration::from_secs(60),
    )
    .await;
    let client = reqwest::Client::new();
    let r = client
        .head(format!("http://{mirror}/v2/mirror/trust/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        deployed.manifest_digest.to_oci().as_str()
    );
    let r = client
        .head(format!("http://{mirror}/v2/mirror/trust/manifests/v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // v2 by digest: pulled through the gateway despite the trust policy.
    let got = pull_by_digest(mirror, "mirror/trust", &other).await;
    assert_eq!(got, other.layers_size() + other.config_bytes.len() as u64);
    gateway.shutdown();
    node.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), gtask).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), ntask).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_serving_corrupt_chunks_never_reaches_the_client() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (_build, image, reference) = pushed(
        &registry,
        ImageSpec::random_layers(&[8 << 20], 51, Compression::None),
        "mirror/liar",
        "v1",
    )
    .await;
    // A gateway, a liar that holds the image (deployed to it alone) and
    // serves garbage, and the mirror node.
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (gateway, g) = Daemon::start(config(dirs[0].path(), "mirror-liar", true, vec![]))
        .await
        .unwrap();
    let addr = gateway.swarm().listen_addrs().await.unwrap()[0].clone();
    let mut liar_conf = config(dirs[1].path(), "mirror-liar", false, vec![addr.clone()]);
    liar_conf.labels.insert("role".into(), "liar".into());
    liar_conf.swarm.corrupt_uploads = true;
    let (liar, l) = Daemon::start(liar_conf).await.unwrap();
    let (node, n) = Daemon::start(config(dirs[2].path(), "mirror-liar", false, vec![addr]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let signed = gateway
        .prepare_release(&reference, vec![("role".into(), "liar".into())], None)
        .await
        .unwrap();
    gateway.publish_release(signed).await.unwrap();
    wait_done(
        std::slice::from_ref(&liar),
        &reference,
        Duration::from_secs(60),
    )
    .await;
    // Let the node hear that the liar holds the layer.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (mirror, _stop) = start_mirror(&node, &registry.host()).await;
    let base = format!("http://{mirror}/v2/mirror/liar");
    let client = reqwest::Client::new();
    let r = client
        .get(format!(
            "{base}/manifests/{}",
            image.manifest_digest.to_oci()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == image.manifest_bytes);
    // The client gets the layer's exact bytes, or an error (a transfer
    // that stalled after the ban: see the report in the mirror module);
    // never other bytes.
    let layer = &image.layers[0];
    let result = async {
        let r = client
            .get(format!("{base}/blobs/{}", layer.digest.to_oci()))
            .send()
            .await?;
        r.error_for_status()?.bytes().await
    }
    .await;
    match result {
        Ok(bytes) => assert_eq!(Digest::of(&bytes), layer.digest, "unverified bytes served"),
        Err(e) => println!("the layer failed (acceptable, never wrong bytes): {e}"),
    }
    let stats = node.swarm().stats();
    println!(
        "bad chunks rejected: {}, bans: {}",
        stats.bad_chunks, stats.bans
    );
    assert!(
        stats.bad_chunks >= 1,
        "the liar was never asked: the test proves nothing"
    );
    for d in [&gateway, &liar, &node] {
        d.shutdown();
    }
    for t in [g, l, n] {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_releases_of_one_manifest_pull_each_layer_once() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (_build, image, _) = pushed(
        &registry,
        ImageSpec::random_layers(&[6 << 20, 1 << 10], 61, Compression::None),
        "mirror/dup",
        "v1",
    )
    .await;
    // Slow enough that the two pulls overlap.
    let proxy = crate::failover::throttled_proxy(registry.addr(), 4 << 20).await;
    let locality = Locality::start("mirror-dup", 1, 1).await;
    let gateway = &locality.daemons[0];
    // What a mirror sees when containerds pull at once: the gateway's
    // release of the tag and a node's release of the bare digest, two
    // releases of one manifest, made milliseconds apart.
    let by_tag = format!("{proxy}/mirror/dup:v1");
    let by_digest = format!("{proxy}/mirror/dup@{}", image.manifest_digest.to_oci());
    let a = gateway
        .prepare_release(&by_tag, vec![], None)
        .await
        .unwrap();
    let b = gateway
        .prepare_release(&by_digest, vec![], None)
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(gateway.publish_release(a), gateway.publish_release(b));
    ra.unwrap();
    rb.unwrap();
    for name in [&by_tag, &by_digest] {
        wait_done(std::slice::from_ref(gateway), name, Duration::from_secs(60)).await;
    }
    let pulled = gateway.registry().unwrap().stats().bytes_pulled;
    let size = image_bytes(&image);
    println!("two releases of one manifest: {pulled} bytes pulled for a {size}-byte image");
    assert!(
        (pulled as f64) < size as f64 * 1.2,
        "the gateway pulled {pulled} bytes for a {size}-byte image"
    );
    locality.shutdown().await;
}
