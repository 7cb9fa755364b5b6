//! Process hygiene of `edgeswarm node`, with the real binary: one process
//! per data dir (flock), a clean SIGTERM shutdown that releases it, and the
//! removal at start of what imports killed with -9 leave behind (work dirs,
//! unpublished versions, Docker helper tags).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeswarm_node::import::{
    import_image, remove_leftovers, Compression, DockerTarget, ImportOptions, ImportSink,
};

use crate::support::eventually;
use crate::support::import::*;

const BIN: &str = env!("CARGO_BIN_EXE_edgeswarm");

/// A running `edgeswarm node --import dir`; killed on drop.
struct Node {
    child: Child,
    api: String,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns a node on `dir` logging to `dir/../<log_name>` (outside the data
/// dir, which the tests inspect).
fn spawn_node(dir: &Path, log_name: &str) -> Node {
    let api = format!("127.0.0.1:{}", free_port());
    let log = dir.parent().unwrap().join(log_name);
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["node", "--data-dir", dir.to_str().unwrap(), "--api", &api])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .args(["--import", "dir", "--locality", "durability"])
        .args(["--allow-any-publisher", "--open-locality"])
        .env("RUST_LOG", "info,libp2p=warn")
        .env_remove("EDGESWARM_API")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn edgeswarm node");
    Node { child, api, log }
}

/// Spawns a node and waits until its API answers.
async fn start_node(dir: &Path, log_name: &str) -> Node {
    let node = spawn_node(dir, log_name);
    let health = format!("http://{}/v1/health", node.api);
    eventually(
        "the node started",
        Duration::from_secs(30),
        async || match reqwest::get(&health).await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("health {}; log: {}", r.status(), node.log())),
            Err(e) => Err(format!("{e}; log: {}", node.log())),
        },
    )
    .await;
    node
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_data_dir_is_refused_and_touches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let first = start_node(&dir, "first.log").await;
    // Temporary files of the running node that a second store open or
    // start-up cleanup would delete.
    let store_tmp = dir.join("store/tmp/in-flight");
    std::fs::write(&store_tmp, b"first node's").unwrap();
    let work = dir.join("rootfs/.import-in-flight");
    std::fs::create_dir_all(&work).unwrap();

    let mut second = spawn_node(&dir, "second.log");
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("the second node exits on its own");
    assert!(!status.success(), "second node: {status}");
    let log = second.log();
    let expected = format!(
        "data dir {} is in use by pid {}",
        dir.display(),
        first.pid()
    );
    assert!(log.contains(&expected), "second node's log: {log}");
    assert!(store_tmp.exists(), "the second node emptied store/tmp");
    assert!(work.exists(), "the second node removed a running import");
    let health = format!("http://{}/v1/health", first.api);
    assert!(reqwest::get(&health).await.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_the_node_down_cleanly_and_releases_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut node = start_node(&dir, "node.log").await;
    signal(node.pid(), "-TERM");
    let status = node
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM; log: {}", node.log()));
    let log = node.log();
    assert_eq!(status.code(), Some(0), "{status}; log: {log}");
    assert!(log.contains("terminated (SIGTERM); shutting down"), "{log}");
    assert!(log.contains("node stopped"), "{log}");
    // The lock went with the process: the next start succeeds.
    let again = start_node(&dir, "again.log").await;
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_killed_node_are_removed_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut node = start_node(&dir, "node.log").await;
    // What a node killed mid-import and mid-publish leaves: work dirs of
    // both sinks, a temporary link, a version no link points to; next to a
    // published rootfs, which must stay. (Made by hand: the layout is
    // what `import::publish` writes.)
    let rootfs = dir.join("rootfs");
    let work = rootfs.join(".import-AbCd12/rootfs/bin");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("sh"), b"half").unwrap();
    let oci_work = dir.join("oci/.import-XyZ987/layout");
    std::fs::create_dir_all(&oci_work).unwrap();
    let live = rootfs.join(".versions/app_v1@0000000000000001");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("hello"), b"kept").unwrap();
    std::os::unix::fs::symlink(".versions/app_v1@0000000000000001", rootfs.join("app_v1")).unwrap();
    let orphan = rootfs.join(".versions/app_v1@00000000000000ff");
    std::fs::create_dir_all(&orphan).unwrap();
    let link_tmp = rootfs.join(".link-00000000000000ff");
    std::os::unix::fs::symlink(".versions/app_v1@00000000000000ff", &link_tmp).unwrap();

    // And a state file's temporary copy, next to the state file.
    std::fs::write(dir.join("versions.json"), b"[]").unwrap();
    let torn = dir.join(".versions.json.tmp-99999-0");
    std::fs::write(&torn, b"[{").unwrap();

    signal(node.pid(), "-KILL");
    node.wait_exit(Duration::from_secs(10)).expect("killed");
    let again = start_node(&dir, "again.log").await;
    let log = again.log();
    assert!(
        log.contains("removed leftovers of interrupted imports"),
        "{log}"
    );
    for gone in [
        rootfs.join(".import-AbCd12"),
        dir.join("oci/.import-XyZ987"),
        orphan,
        link_tmp,
        torn,
    ] {
        assert!(
            std::fs::symlink_metadata(&gone).is_err(),
            "{} left behind",
            gone.display()
        );
        assert!(log.contains(&*gone.to_string_lossy()), "{log}");
    }
    assert_eq!(std::fs::read(rootfs.join("app_v1/hello")).unwrap(), b"kept");
    assert_eq!(std::fs::read(dir.join("versions.json")).unwrap(), b"[]");
}

/// Docker helper tags in `repo`.
fn helper_tags(repo: &str) -> Vec<String> {
    let (ok, out, err) = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}", repo]);
    assert!(ok, "{err}");
    out.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_helper_tags_of_a_killed_import_are_removed_at_start() {
    let _dockerd = ensure_dockerd();
    let repo = "edgeswarm-test-helper-durability";
    let tmp = tempfile::tempdir().unwrap();
    let ours = DockerTarget::connect(None)
        .await
        .expect("docker answers")
        .with_helper_repo(repo)
        .with_owner(&tmp.path().join("node-a"));
    let image = build_image(
        &[
            (base_layer("durability-helpers"), Compression::Gzip),
            (extra_layer(), Compression::Gzip),
        ],
        false,
        None,
    );
    // Layer 0 loads at once (and gets its helper tag); layer 1 trickles
    // (3 s per read), so the import is still running when it is cut off.
    let probes = [
        Arc::new(ReadProbe::default()),
        Arc::new(ReadProbe::default()),
    ];
    let import = image.import_per_layer(
        "edgeswarm-test/durability:v1",
        &[Duration::ZERO, Duration::from_secs(3)],
        &probes,
    );
    let mut cleanup = RemoveImages(vec!["edgeswarm-test/durability:v1".into()]);
    let sink = ImportSink::Docker(ours.clone());
    let task =
        tokio::spawn(async move { import_image(&sink, import, &ImportOptions::default()).await });
    let leaked = eventually("a helper tag exists", Duration::from_secs(60), async || {
        let tags = helper_tags(repo);
        if tags.is_empty() {
            Err("none yet")
        } else {
            Ok(tags)
        }
    })
    .await;
    // As if the process died: the import never runs its own cleanup.
    task.abort();
    let _ = task.await;
    cleanup.0.extend(leaked.iter().cloned());
    // A helper of another node's import on the same engine: not ours.
    let other = format!("{repo}:ffffffffffff-0123456789abcdef-0");
    let (ok, _, err) = docker(&["tag", &leaked[0], &other]);
    assert!(ok, "{err}");
    cleanup.0.push(other.clone());

    let found = remove_leftovers(&tmp.path().join("node-a"), Some(&ours))
        .await
        .unwrap();
    let mut removed = found.helper_tags.clone();
    removed.sort();
    let mut expected = leaked.clone();
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(helper_tags(repo), [other]);
}
