//! The operator's day, end to end through the `edgeswarm` binary: a real
//! `docker-registry`, real images, three real `edgeswarm node` processes on
//! loopback (one gateway, two bootstrapping from it), and the CLI commands
//! an operator types: deploy, status (--wait, --json, --watch, on a
//! terminal), images, rm (local and --locality), the rollback window, and
//! publisher keys with `--trust`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use edgeswarm_node::registry::testing::{build_image, ImageSpec, TestRegistry};

use crate::support::{eventually, push};

const BIN: &str = env!("CARGO_BIN_EXE_edgeswarm");

/// A running `edgeswarm node`; killed on drop.
struct NodeProc {
    child: std::process::Child,
    api: String,
    dir: PathBuf,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProc {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    fn rootfs(&self, image: &str) -> PathBuf {
        self.dir
            .join("rootfs")
            .join(edgeswarm_node::import::image_dir_name(image))
    }
}

/// A free loopback port (bound and released; good enough on one machine).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lab flags for tests about something else than trust: any publisher
/// (`deploy` without `--key`).
const LAB: &[&str] = &["--allow-any-publisher"];

/// Starts a node and waits for its API. Without `--swarm-key` in `extra`
/// it runs an open locality (membership is tested in swarm_membership).
async fn start_node(dir: &Path, import: &str, extra: &[&str]) -> NodeProc {
    let mut extra = extra.to_vec();
    if !extra.contains(&"--swarm-key") {
        extra.push("--open-locality");
    }
    let api = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("node.log")).unwrap();
    let child = std::process::Command::new(BIN)
        .args([
            "node",
            "--data-dir",
            dir.to_str().unwrap(),
            "--api",
            &api,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--import",
            import,
            "--locality",
            "cli-e2e",
            "--chunk-size",
            "256K",
        ])
        .args(&extra)
        .env("RUST_LOG", "info,libp2p=warn")
        .env_remove("EDGESWARM_API")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn edgeswarm node");
    TOKENS
        .lock()
        .unwrap()
        .push((api.clone(), dir.join(edgeswarm_node::api::TOKEN_FILE)));
    let node = NodeProc {
        child,
        api,
        dir: dir.to_path_buf(),
    };
    let health = format!("http://{}/v1/health", node.api);
    eventually("the node started", Duration::from_secs(30), async || {
        match reqwest::get(&health).await {
            Ok(r) if r.status().is_success() => Ok(()),
            // The node's log says why it did not start.
            Ok(r) => Err(format!("health {}; log: {}", r.status(), node.log())),
            Err(e) => Err(format!("{e}; log: {}", node.log())),
        }
    })
    .await;
    node
}

/// Output of one CLI run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts the command exited 0 and returns its output.
    #[track_caller]
    fn succeeded(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Drops terminal escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Token files of the nodes started here, by API address: `cli` passes
/// the right one, as an operator on that node's host would.
static TOKENS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

async fn cli(args: &[&str]) -> Run {
    let api = args
        .windows(2)
        .find(|w| w[0] == "--api")
        .map(|w| w[1].to_owned());
    let token = api.and_then(|api| {
        TOKENS
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(a, _)| *a == api)
            .map(|(_, p)| p.clone())
    });
    cli_with_token(args, token.as_deref()).await
}

async fn cli_with_token(args: &[&str], token_file: Option<&Path>) -> Run {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args);
    if let Some(t) = token_file {
        cmd.arg("--token-file").arg(t);
    }
    let out = cmd
        .env_remove("EDGESWARM_API")
        .env_remove("EDGESWARM_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run edgeswarm");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts a gateway and two nodes bootstrapping from it, and waits until
/// the gateway hears both.
async fn locality(dirs: &[tempfile::TempDir; 3], extra: &[&str]) -> Vec<NodeProc> {
    let mut args = vec!["--gateway"];
    args.extend_from_slice(extra);
    let gateway = start_node(dirs[0].path(), "dir", &args).await;
    let status = cli(&["status", "--json", "--api", &gateway.api])
        .await
        .succeeded();
    let v = status.json();
    let addr = v["self"]["addresses"][0].as_str().unwrap().to_owned();
    assert!(addr.contains("/p2p/"), "{addr}");
    assert_eq!(v["self"]["role"], "gateway");
    let mut nodes = vec![gateway];
    for dir in &dirs[1..] {
        let mut args = vec!["--bootstrap", addr.as_str()];
        args.extend_from_slice(extra);
        nodes.push(start_node(dir.path(), "dir", &args).await);
    }
    eventually(
        "the gateway hears both nodes",
        Duration::from_secs(30),
        async || {
            let v = cli(&["status", "--json", "--api", &nodes[0].api])
                .await
                .succeeded()
                .json();
            let heard = v["nodes"].as_array().map_or(0, |n| n.len());
            (heard >= 2).then_some(()).ok_or(v)
        },
    )
    .await;
    nodes
}

/// Builds a small realistic image, pushes it as `cli/app:TAG` and returns
/// its reference.
async fn build_and_push(registry: &TestRegistry, tag: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let image = build_image(ImageSpec::realistic(2 << 20, tag), dir.path())
        .await
        .unwrap();
    push(registry, "cli/app", tag, &image).await
}

async fn pins(api: &str) -> Vec<String> {
    let v = cli(&["images", "--json", "--api", api])
        .await
        .succeeded()
        .json();
    v["pins"]
        .as_object()
        .expect("pins object")
        .keys()
        .cloned()
        .collect()
}

/// Polls until `api`'s pins satisfy `pred`.
async fn wait_pins(api: &str, what: &str, pred: impl Fn(&[String]) -> bool) {
    let what = format!("{what} (pins on {api})");
    eventually(&what, Duration::from_secs(30), async || {
        let p = pins(api).await;
        pred(&p).then_some(()).ok_or_else(|| format!("{p:?}"))
    })
    .await
}

async fn deploy_and_wait(nodes: &[NodeProc], image: &str, key: Option<&str>) -> String {
    let mut args = vec!["deploy", image, "--api", &nodes[0].api];
    if let Some(k) = key {
        // Also exercises deploy --json.
        args.extend(["--key", k, "--json"]);
    }
    let run = cli(&args).await.succeeded();
    if key.is_some() {
        let v = run.json();
        assert!(
            v["release_id"].as_str().unwrap().starts_with("sha256:"),
            "{v}"
        );
        assert!(
            v["manifest"].as_str().unwrap().starts_with("sha256:"),
            "{v}"
        );
    } else {
        assert!(run.stdout.starts_with("release sha256:"), "{}", run.stdout);
    }
    let wait = cli(&[
        "status",
        "--wait",
        image,
        "--nodes",
        "3",
        "--timeout",
        "120",
        "--api",
        &nodes[1].api,
    ])
    .await;
    if wait.code != 0 {
        for n in nodes {
            eprintln!("---- node {} log:\n{}", n.api, n.log());
        }
    }
    let wait = wait.succeeded();
    assert!(wait.stdout.contains("3 node(s) done"), "{}", wait.stdout);
    run.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_status_images_rm_and_rollback_through_the_cli() {
    let registry = TestRegistry::start().await.unwrap();
    let v1 = build_and_push(&registry, "v1").await;
    let v2 = build_and_push(&registry, "v2").await;
    let v3 = build_and_push(&registry, "v3").await;
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let nodes = locality(&dirs, LAB).await;

    deploy_and_wait(&nodes, &v1, None).await;

    // status --json: self and nodes, with the release done everywhere.
    let v = cli(&["status", "--json", "--api", &nodes[1].api])
        .await
        .succeeded()
        .json();
    assert!(v["self"]["peer_id"].as_str().unwrap().starts_with("12D3"));
    assert!(!v["self"]["addresses"].as_array().unwrap().is_empty());
    assert_eq!(v["self"]["role"], "node");
    let peers = v["nodes"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{v}");
    assert!(peers.iter().any(|n| n["role"] == "gateway"), "{v}");
    let mine = &v["self"]["releases"][0];
    assert_eq!(mine["state"], "done");
    assert_eq!(
        mine["bytes_from_cloud"], 0,
        "a plain node pulls nothing from the cloud"
    );
    assert!(mine["bytes_from_peers"].as_u64().unwrap() > 0);

    // Plain status (stdout is a pipe) and --watch, which returns once all is done.
    let plain = cli(&["status", "--api", &nodes[1].api]).await.succeeded();
    assert!(plain.stdout.contains(" done 100% "), "{}", plain.stdout);
    assert!(plain.stdout.contains("gateway"), "{}", plain.stdout);
    let watch = cli(&["status", "--watch", "--api", &nodes[1].api])
        .await
        .succeeded();
    assert!(watch.stdout.contains(" done 100% "), "{}", watch.stdout);

    // On a terminal: progress bars (util-linux `script` provides the tty).
    let tty = tokio::process::Command::new("script")
        .args([
            "-qec",
            &format!("{BIN} status --api {}", nodes[1].api),
            "/dev/null",
        ])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run script");
    let tty_out = strip_ansi(&String::from_utf8_lossy(&tty.stdout));
    assert!(tty.status.success(), "{tty_out}");
    assert!(
        tty_out.contains("[===="),
        "no progress bar on a tty: {tty_out}"
    );
    assert!(tty_out.contains("100%"), "{tty_out}");
    assert!(tty_out.contains("done | cloud"), "{tty_out}");

    // images: a table naming the image, and JSON.
    let table = cli(&["images", "--api", &nodes[1].api]).await.succeeded();
    assert!(table.stdout.contains(&v1), "{}", table.stdout);
    assert!(table.stdout.contains("complete"), "{}", table.stdout);
    assert!(table.stdout.contains("PINNED BY"), "{}", table.stdout);
    assert_eq!(pins(&nodes[1].api).await, vec![v1.clone()]);
    assert!(nodes[1].rootfs(&v1).join("bin/busybox").is_file());

    // Rollback window (default 2): v3 pushes v1 out, everywhere.
    deploy_and_wait(&nodes, &v2, None).await;
    deploy_and_wait(&nodes, &v3, None).await;
    for n in &nodes {
        wait_pins(&n.api, "v1 rolled out", |p| {
            !p.contains(&v1) && p.contains(&v2) && p.contains(&v3)
        })
        .await;
        assert!(!n.rootfs(&v1).exists(), "v1 rootfs kept on {}", n.api);
        assert!(n.rootfs(&v2).join("bin/busybox").is_file());
    }

    // Rollback: redeploying v2, still held everywhere, moves no layer and
    // keeps v3 (two versions).
    deploy_and_wait(&nodes, &v2, None).await;
    for n in &nodes {
        let v = cli(&["status", "--json", "--api", &n.api])
            .await
            .succeeded()
            .json();
        let newest = v["self"]["releases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["image"] == v2.as_str())
            .max_by_key(|r| r["created"].as_u64())
            .cloned()
            .unwrap();
        assert_eq!(newest["state"], "done", "{v}");
        // The gateway re-reads the manifest and config at the registry
        // (measured: 1.6 KB); no layer byte moves again.
        let cloud = newest["bytes_from_cloud"].as_u64().unwrap();
        assert!(cloud < 16 << 10, "rollback pulled layers again: {v}");
        assert_eq!(newest["bytes_from_peers"], 0, "rollback fetched again: {v}");
        let p = pins(&n.api).await;
        assert!(p.contains(&v2) && p.contains(&v3), "{p:?}");
        assert!(n.rootfs(&v2).join("bin/busybox").is_file());
    }

    // rm on one node only.
    let rm = cli(&["rm", &v2, "--json", "--api", &nodes[1].api])
        .await
        .succeeded();
    let report = rm.json();
    assert_eq!(report["unpinned"], true, "{report}");
    assert_eq!(report["locality"], false);
    assert!(report["blobs_removed"].as_u64().unwrap() >= 1, "{report}");
    assert!(!nodes[1].rootfs(&v2).exists());
    assert!(!pins(&nodes[1].api).await.contains(&v2));
    assert!(
        nodes[2].rootfs(&v2).is_dir(),
        "local rm touched another node"
    );
    assert!(pins(&nodes[2].api).await.contains(&v2));
    // The shared base layers stay for v3.
    assert!(nodes[1].rootfs(&v3).join("bin/busybox").is_file());
    let v = cli(&["status", "--json", "--api", &nodes[1].api])
        .await
        .succeeded()
        .json();
    assert!(
        v["self"]["releases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["image"] != v2.as_str()),
        "removed release still in status: {v}"
    );

    // rm of something that is not there: a clear error, non-zero exit.
    let missing = cli(&["rm", &v2, "--api", &nodes[1].api]).await;
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("is not on this node"),
        "{}",
        missing.stderr
    );

    // rm --locality: every node drops v3.
    let rm = cli(&["rm", &v3, "--locality", "--api", &nodes[1].api])
        .await
        .succeeded();
    assert!(rm.stdout.contains("sent to every node"), "{}", rm.stdout);
    for n in &nodes {
        wait_pins(&n.api, "v3 removed by --locality", |p| !p.contains(&v3)).await;
        let what = format!("v3 rootfs removed on {}", n.api);
        eventually(&what, Duration::from_secs(10), async || {
            let rootfs = n.rootfs(&v3);
            (!rootfs.exists())
                .then_some(())
                .ok_or_else(|| rootfs.display().to_string())
        })
        .await;
    }
    // Node 2 still had v2 (only node 1 removed it locally).
    assert!(pins(&nodes[2].api).await.contains(&v2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_keys_accept_the_publisher_and_refuse_others() {
    let registry = TestRegistry::start().await.unwrap();
    let image = build_and_push(&registry, "signed").await;
    let keys = tempfile::tempdir().unwrap();
    let good = keys.path().join("good.key");
    let bad = keys.path().join("bad.key");
    cli(&["keygen", "--out", good.to_str().unwrap()])
        .await
        .succeeded();
    cli(&["keygen", "--out", bad.to_str().unwrap()])
        .await
        .succeeded();
    let good_pub = keys.path().join("good.key.pub");
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let nodes = locality(&dirs, &["--trust", good_pub.to_str().unwrap()]).await;

    // Signed by the node's own identity: refused, clearly.
    let own = cli(&["deploy", &image, "--api", &nodes[0].api]).await;
    assert_ne!(own.code, 0, "{}", own.stdout);
    assert!(own.stderr.contains("refused"), "{}", own.stderr);
    // Signed by an untrusted publisher key: refused, clearly.
    let wrong = cli(&[
        "deploy",
        &image,
        "--key",
        bad.to_str().unwrap(),
        "--api",
        &nodes[0].api,
    ])
    .await;
    assert_ne!(wrong.code, 0, "{}", wrong.stdout);
    assert!(
        wrong.stderr.starts_with("edgeswarm: release refused:"),
        "{}",
        wrong.stderr
    );
    assert_eq!(wrong.stderr.trim().lines().count(), 1, "{}", wrong.stderr);
    // Status reports the refusals.
    let v = cli(&["status", "--json", "--api", &nodes[0].api])
        .await
        .succeeded()
        .json();
    assert!(v["refused"].as_array().unwrap().len() >= 2, "{v}");

    // The trusted key deploys to all three.
    deploy_and_wait(&nodes, &image, Some(good.to_str().unwrap())).await;

    // A removal made before the release (a replay) removes nothing.
    let key = edgeswarm_protocol::signing::PublisherKey::from_file_contents(
        &std::fs::read_to_string(&good).unwrap(),
    )
    .unwrap();
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let stale = edgeswarm_node::daemon::SignedRemoval::sign(
        edgeswarm_node::daemon::Removal {
            image: image.clone(),
            locality: "cli-e2e".into(),
            created: an_hour_ago,
            seq: 0,
        },
        &key,
    );
    use base64::Engine as _;
    let body = serde_json::json!({
        "image": image,
        "locality": true,
        "removal": base64::engine::general_purpose::STANDARD.encode(stale.encode()),
    });
    let token =
        std::fs::read_to_string(nodes[1].dir.join(edgeswarm_node::api::TOKEN_FILE)).unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/rm", nodes[1].api))
        .bearer_auth(token.trim())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let text = r.text().await.unwrap();
    assert!(text.contains("refused as a replay"), "{text}");
    for n in &nodes {
        assert!(
            pins(&n.api).await.contains(&image),
            "replayed removal applied"
        );
    }

    // A locality-wide removal must be signed by a trusted key too.
    let unsigned = cli(&["rm", &image, "--locality", "--api", &nodes[1].api]).await;
    assert_ne!(unsigned.code, 0);
    assert!(
        unsigned.stderr.contains("removal refused"),
        "{}",
        unsigned.stderr
    );
    assert!(pins(&nodes[1].api).await.contains(&image));
    let signed = cli(&[
        "rm",
        &image,
        "--key",
        good.to_str().unwrap(),
        "--api",
        &nodes[1].api,
    ])
    .await
    .succeeded();
    assert!(
        signed.stdout.contains("sent to every node"),
        "{}",
        signed.stdout
    );
    for n in &nodes {
        wait_pins(&n.api, "signed removal", |p| !p.contains(&image)).await;
    }
}

/// `docker image inspect` succeeds.
fn docker_has(tag: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Needs dockerd, which `scripts/install-deps.sh` starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_removes_the_image_from_docker() {
    // Started here when nothing else did (the import tests do the same).
    let _dockerd = crate::support::import::ensure_dockerd();
    let registry = TestRegistry::start().await.unwrap();
    let image = build_and_push(&registry, "docker").await;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(
        dir.path(),
        "docker",
        &["--gateway", "--allow-any-publisher"],
    )
    .await;
    cli(&["deploy", &image, "--api", &node.api])
        .await
        .succeeded();
    let wait = cli(&[
        "status",
        "--wait",
        &image,
        "--nodes",
        "1",
        "--timeout",
        "120",
        "--api",
        &node.api,
    ])
    .await;
    assert_eq!(wait.code, 0, "{} {}", wait.stderr, node.log());
    assert!(docker_has(&image), "{image} not loaded into docker");
    // A tag edgeswarm did not import is not edgeswarm's to remove.
    let theirs = format!("{image}-theirs");
    let tagged = std::process::Command::new("docker")
        .args(["tag", &image, &theirs])
        .status()
        .unwrap();
    assert!(tagged.success());
    let refused = cli(&["rm", &theirs, "--api", &node.api]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("imported itself"),
        "{}",
        refused.stderr
    );
    assert!(docker_has(&theirs), "a foreign docker tag was removed");
    let _ = std::process::Command::new("docker")
        .args(["rmi", &theirs])
        .output();
    let rm = cli(&["rm", &image, "--json", "--api", &node.api])
        .await
        .succeeded();
    let report = rm.json();
    assert!(
        report["sink_removed"]
            .as_str()
            .unwrap()
            .starts_with("docker image"),
        "{report}"
    );
    assert!(!docker_has(&image), "{image} still in docker");
}

/// After `rm --locality` collected an image's blobs everywhere, stale
/// records of who held its layers may live on; the gateway must not trust
/// them (it asks which live peers hold a layer complete) and pulls the
/// layers from the registry again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_after_locality_rm_pulls_again() {
    let registry = TestRegistry::start().await.unwrap();
    let image = build_and_push(&registry, "again").await;
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let nodes = locality(&dirs, LAB).await;
    deploy_and_wait(&nodes, &image, None).await;
    cli(&["rm", &image, "--locality", "--api", &nodes[1].api])
        .await
        .succeeded();
    for n in &nodes {
        wait_pins(&n.api, "removed", |p| !p.contains(&image)).await;
    }
    // Another second, so the redeploy is a new release.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    deploy_and_wait(&nodes, &image, None).await;

    // The gateway's redeployed release pulled the layers from the registry
    // again: more than the manifest and config a rollback re-reads (1.6 KB
    // measured, bounded at 16 KiB in the rollback check above). Had the
    // layers survived the rm somewhere, the locality would have finished from
    // peers and this fails.
    let v = cli(&["status", "--json", "--api", &nodes[0].api])
        .await
        .succeeded()
        .json();
    let newest = v["self"]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["image"] == image.as_str())
        .max_by_key(|r| r["created"].as_u64())
        .cloned()
        .unwrap();
    assert_eq!(newest["state"], "done", "{v}");
    let cloud = newest["bytes_from_cloud"].as_u64().unwrap();
    assert!(
        cloud > 16 << 10,
        "the redeploy pulled only {cloud} bytes from the registry: {v}"
    );
}

/// The CLI sends the token from `--token-file`; without a readable token
/// file, or with a wrong one, it fails with a clear message; reads need no
/// token. `rm` of an image edgeswarm never imported is refused and leaves
/// the sink's copy (here a rootfs dir someone else made) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_uses_the_token_file_and_rm_spares_foreign_images() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "dir", LAB).await;
    let image = "registry.example:5000/theirs:v1";
    let foreign = node.rootfs(image);
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("keep-me"), b"not edgeswarm's").unwrap();

    let missing = dir.path().join("no-such-token");
    let run = cli_with_token(&["rm", image, "--api", &node.api], Some(&missing)).await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("API token"), "{}", run.stderr);
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "0123").unwrap();
    let run = cli_with_token(&["rm", image, "--api", &node.api], Some(&wrong)).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("missing or wrong API token"),
        "{}",
        run.stderr
    );
    // Reads work without any token.
    cli_with_token(&["status", "--json", "--api", &node.api], Some(&missing))
        .await
        .succeeded();

    // With the node's token the request is served, and refused.
    let run = cli(&["rm", image, "--api", &node.api]).await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("imported itself"), "{}", run.stderr);
    assert!(
        foreign.join("keep-me").exists(),
        "a foreign rootfs was removed"
    );
}

/// A hostile (or buggy) node at `--api` answers `/v1/resolve` with a
/// release other than the one asked for; `deploy --key` refuses to sign
/// it and never publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_key_refuses_to_sign_what_was_not_asked() {
    use base64::Engine as _;
    use edgeswarm_protocol::release::{Platform, Release};
    use edgeswarm_protocol::Digest;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pub.key");
    cli(&["keygen", "--out", key.to_str().unwrap()])
        .await
        .succeeded();
    let token = dir.path().join("api.token");
    std::fs::write(&token, "t").unwrap();
    let asked = "registry.example:5000/app:v1";
    let pinned = format!(
        "registry.example:5000/app@{}",
        Digest::of(b"the one I want")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let honest = |image: &str| Release {
        image: image.to_owned(),
        manifest: Digest::of(b"m"),
        platform: Platform::new("linux", "amd64"),
        created: now,
        locality: "plant".into(),
        selector: vec![],
        seq: 1,
    };
    let cases: Vec<(Vec<String>, Release, &str)> = vec![
        (
            vec![asked.into()],
            honest("registry.example:5000/evil:v1"),
            "release of",
        ),
        (
            vec![asked.into(), "--select".into(), "role=cam".into()],
            honest(asked),
            "selector",
        ),
        (
            vec![asked.into(), "--locality".into(), "other".into()],
            honest(asked),
            "locality",
        ),
        (vec![pinned.clone()], honest(&pinned), "resolved"),
        (
            vec![
                asked.into(),
                "--digest".into(),
                Digest::of(b"x").to_string(),
            ],
            honest(asked),
            "resolved",
        ),
        (
            vec![asked.into()],
            Release {
                created: now + 86_400,
                ..honest(asked)
            },
            "dated",
        ),
    ];
    for (args, answer, why) in cases {
        let published = Arc::new(AtomicUsize::new(0));
        let body = serde_json::json!({
            "release": base64::engine::general_purpose::STANDARD
                .encode(edgeswarm_protocol::encoding::encode(&answer)),
            "manifest": answer.manifest.to_string(),
        });
        let count = published.clone();
        let app = axum::Router::new()
            .route(
                "/v1/resolve",
                axum::routing::post(move || async move { axum::Json(body) }),
            )
            .route(
                "/v1/releases",
                axum::routing::post(move || async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::json!({"release_id": "x", "manifest": "y"}))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut argv: Vec<&str> = vec!["deploy"];
        argv.extend(args.iter().map(String::as_str));
        argv.extend(["--key", key.to_str().unwrap(), "--api", &api]);
        let run = cli_with_token(&argv, Some(&token)).await;
        assert_ne!(run.code, 0, "{args:?} was signed");
        assert!(
            run.stderr.contains("refusing to sign") && run.stderr.contains(why),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(published.load(Ordering::SeqCst), 0, "{args:?} published");
        server.abort();
    }
}

/// Writes into `dir` an identity that ranks above `other` (a peer id) in
/// the gateway election of the release of `manifest` (`sha256:...`).
fn closed_identity_ranked_first(dir: &Path, manifest: &str, other: &str) {
    use edgeswarm_node::swarm::keys;
    use edgeswarm_protocol::election::weight;
    let manifest: edgeswarm_protocol::Digest = manifest.parse().unwrap();
    let other: libp2p::PeerId = other.parse().unwrap();
    let path = dir.join(keys::IDENTITY_FILE);
    loop {
        let _ = std::fs::remove_file(&path);
        let id = keys::load_or_create_identity(&path)
            .unwrap()
            .public()
            .to_peer_id();
        if weight(&manifest, &id.to_bytes()) > weight(&manifest, &other.to_bytes()) {
            return;
        }
    }
}

/// Closed by default: a node started with a swarm key and no `--trust`
/// refuses every release and removal (signed by its own identity, by a
/// stranger's key through its API, or accepted by a lab peer and gossiped
/// to it), and its log and status say how to trust a publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_trusted_key_refuses_every_release_and_says_how_to_trust_one() {
    let registry = TestRegistry::start().await.unwrap();
    let image = build_and_push(&registry, "closed").await;
    let keys = tempfile::tempdir().unwrap();
    let swarm_key = keys.path().join("swarm.key");
    let swarm_key = swarm_key.to_str().unwrap();
    cli(&["swarm-key", "--out", swarm_key]).await.succeeded();
    let stranger = keys.path().join("stranger.key");
    let stranger = stranger.to_str().unwrap();
    cli(&["keygen", "--out", stranger]).await.succeeded();
    let dirs = [(); 2].map(|_| tempfile::tempdir().unwrap());
    // A lab node that accepts any signer.
    let lab = start_node(
        dirs[0].path(),
        "dir",
        &[
            "--gateway",
            "--allow-any-publisher",
            "--swarm-key",
            swarm_key,
        ],
    )
    .await;
    assert!(lab.log().contains("--allow-any-publisher"), "{}", lab.log());
    let v = cli(&["status", "--json", "--api", &lab.api])
        .await
        .succeeded()
        .json();
    let lab_id = v["self"]["peer_id"].as_str().unwrap().to_owned();
    let addr = v["self"]["addresses"][0].as_str().unwrap().to_owned();
    // The image's manifest digest: this node does not resolve tags at the
    // registry, so it is named by digest below.
    let manifest = reqwest::Client::new()
        .head(format!(
            "http://{}/v2/cli/app/manifests/closed",
            registry.host()
        ))
        // The full list: without the Docker types the registry answers
        // with a schema1 conversion of another digest.
        .header(
            "accept",
            "application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    let manifest = manifest.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    // Gateway-capable, with an identity that wins the election of the
    // lab's release over the lab node: it refuses the release and must be
    // passed over (elected, it once left the lab waiting 120 s in CI).
    closed_identity_ranked_first(dirs[1].path(), &manifest, &lab_id);
    let closed = start_node(
        dirs[1].path(),
        "dir",
        &["--gateway", "--bootstrap", &addr, "--swarm-key", swarm_key],
    )
    .await;

    // It says so, and how to trust a publisher, in its log and status.
    let how = "--trust publisher.key.pub";
    assert!(
        closed.log().contains("trusts no publisher key"),
        "{}",
        closed.log()
    );
    assert!(closed.log().contains(how), "{}", closed.log());
    assert!(!closed.log().contains("open locality"), "{}", closed.log());
    let v = cli(&["status", "--json", "--api", &closed.api])
        .await
        .succeeded()
        .json();
    let warnings = v["self"]["warnings"].to_string();
    assert!(warnings.contains(how), "{v}");
    let plain = cli(&["status", "--api", &closed.api]).await.succeeded();
    assert!(
        plain
            .stdout
            .contains("warning: this node trusts no publisher key"),
        "{}",
        plain.stdout
    );

    // Through its own API: its identity and a stranger's key are refused.
    let by_digest = format!("{}/cli/app@{manifest}", registry.host());
    for key in [None, Some(stranger)] {
        let mut args = vec!["deploy", by_digest.as_str(), "--api", closed.api.as_str()];
        if let Some(k) = key {
            args.extend(["--key", k]);
        }
        let out = cli(&args).await;
        assert_ne!(out.code, 0, "{key:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("trusts no publisher key"),
            "{}",
            out.stderr
        );
    }
    // The lab node accepts the stranger's release and gossips it: the
    // closed node refuses it, and installs nothing.
    cli(&["deploy", &image, "--key", stranger, "--api", &lab.api])
        .await
        .succeeded();
    eventually(
        "the lab node installs",
        Duration::from_secs(120),
        async || {
            let p = pins(&lab.api).await;
            p.contains(&image).then_some(()).ok_or(format!("{p:?}"))
        },
    )
    .await;
    eventually(
        "the closed node refuses the gossiped release",
        Duration::from_secs(30),
        async || {
            let v = cli(&["status", "--json", "--api", &closed.api])
                .await
                .succeeded()
                .json();
            let refused = v["refused"].as_array().cloned().unwrap_or_default();
            refused
                .iter()
                .any(|r| {
                    r["from"].as_str() == Some(lab_id.as_str())
                        && r["reason"]
                            .as_str()
                            .unwrap_or("")
                            .contains("trusts no publisher")
                })
                .then_some(())
                .ok_or(v)
        },
    )
    .await;
    assert!(!pins(&closed.api).await.contains(&image));
    assert!(!closed.rootfs(&image).exists());

    // A removal signed by the stranger is refused too; the lab node's
    // copy stays, since the closed node gossips nothing it refused.
    let rm = cli(&["rm", &image, "--key", stranger, "--api", &closed.api]).await;
    assert_ne!(rm.code, 0, "{}", rm.stdout);
    assert!(
        rm.stderr.contains("trusts no publisher key"),
        "{}",
        rm.stderr
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pins(&lab.api).await.contains(&image));
}

/// A node whose listen address is taken exits at start and says why
/// (the OS's "address in use", which libp2p keeps as the error's source),
/// once: each wrapping error used to repeat the one it wraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_listen_port_is_a_clear_error_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let api = format!("127.0.0.1:{}", free_port());
    let out = cli(&[
        "node",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--api",
        &api,
        "--listen",
        &listen,
        "--no-mdns",
        "--open-locality",
    ])
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    // Linux's text for EADDRINUSE.
    assert!(
        out.stderr.contains("Address already in use"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches(&listen).count(), 1, "{}", out.stderr);
    drop(taken);
}

/// Without a swarm key, a node starts only with `--open-locality`, and
/// then says in its log and status that its locality is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_locality_must_be_asked_for_and_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&[
        "node",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--api",
        "127.0.0.1:9",
        "--no-mdns",
    ])
    .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--open-locality"), "{}", out.stderr);
    assert!(!dir.path().join("identity.key").exists());
    // start_node adds --open-locality without a --swarm-key.
    let node = start_node(dir.path(), "dir", LAB).await;
    assert!(
        node.log().contains("open locality (no swarm key)"),
        "{}",
        node.log()
    );
    let v = cli(&["status", "--json", "--api", &node.api])
        .await
        .succeeded()
        .json();
    let warnings = v["self"]["warnings"].to_string();
    assert!(warnings.contains("open locality"), "{v}");
    assert!(warnings.contains("--allow-any-publisher"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_is_configured_in_the_config_file_and_serves_tags_on_a_gateway() {
    let registry = TestRegistry::start().await.unwrap();
    let image = build_and_push(&registry, "mirror").await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "mirror = \"{mirror}\"\nmirror_default_registry = \"{}\"\n",
            registry.host()
        ),
    )
    .unwrap();
    let node = start_node(
        dir.path(),
        "none",
        &["--gateway", "--config", config.to_str().unwrap()],
    )
    .await;
    let base = reqwest::get(format!("http://{mirror}/v2/")).await.unwrap();
    assert_eq!(base.status(), 200, "log: {}", node.log());
    assert_eq!(
        base.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    // `image` is HOST/REPO:TAG; the mirror's default registry is HOST.
    let path = image
        .split_once('/')
        .unwrap()
        .1
        .replacen(':', "/manifests/", 1);
    let r = reqwest::get(format!("http://{mirror}/v2/{path}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "log: {}", node.log());
    assert!(r.headers().contains_key("docker-content-digest"));
}

/// Under systemd (`Type=notify`): the node sends `READY=1` to
/// `$NOTIFY_SOCKET` once it serves, `/v1/ready` agrees, and with
/// `--log-format json` every log line is one JSON object.
#[tokio::test]
async fn node_notifies_systemd_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new(BIN)
        .args(["node", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--api", &api, "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--no-mdns", "--import", "none", "--log-format", "json"])
        // A lab node: readiness and logging do not depend on membership.
        .args(["--open-locality", "--allow-any-publisher"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info,libp2p=warn")
        .env_remove("EDGESWARM_API")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn edgeswarm node");
    let node = NodeProc {
        child,
        api: api.clone(),
        dir: dir.path().to_path_buf(),
    };
    let message = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("no sd_notify message ({e}); log: {}", node.log()));
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "{message:?}; log: {}",
        node.log()
    );
    // READY=1 comes after the API is bound: it answers at once.
    let ready = reqwest::get(format!("http://{api}/v1/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200, "log: {}", node.log());

    let text = node.log();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
        assert!(value.get("timestamp").is_some(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"node started\"")),
        "{text}"
    );
}
