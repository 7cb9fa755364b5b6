//! The `docker` sink against a real dockerd (started when none answers):
//! multi-layer gzip and zstd images run, shared layers are not re-sent, a
//! wrong diff_id tags nothing, no helper images stay behind, and the `dir`
//! sink's output matches `docker export` of the same image file by file.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::support::eventually;
use crate::support::import::*;
use edgeswarm_node::import::{
    detect_sink_at, import_image, Compression, DirPolicy, DockerTarget, ImportError, ImportOptions,
    ImportSink, ImportSinkKind, LayerAction,
};
use sha2::{Digest as _, Sha256};

/// A docker sink whose helper tags live in a repository of this test only.
async fn docker_sink(helper_repo: &str) -> ImportSink {
    ImportSink::Docker(
        DockerTarget::connect(None)
            .await
            .expect("docker answers")
            .with_helper_repo(helper_repo),
    )
}

fn helper_images(helper_repo: &str) -> String {
    let (ok, out, err) = docker(&["images", "-q", helper_repo]);
    assert!(ok, "{err}");
    out.trim().to_owned()
}

fn run(tag: &str, script: &str) -> String {
    let (ok, out, err) = docker(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        tag,
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(ok, "docker run {tag} failed: {err}");
    out
}

const CHECK_SCRIPT: &str = "cat /etc/hello; readlink /etc/hello-sym; \
    test -e /etc/removeme || echo removeme-gone; ls /etc/keepdir; \
    test $(stat -c %i /etc/hello) = $(stat -c %i /etc/hello-link) && echo hardlinked; \
    stat -c %a /opt/tool /tmp";

const CHECK_OUTPUT: &str =
    "hello from the overlay\nhello\nremoveme-gone\nnew\nhardlinked\n4755\n1777\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_imports_gzip_image_that_runs() {
    let _dockerd = ensure_dockerd();
    let tag = "edgeswarm-test/docker-gzip:v1";
    let _cleanup = RemoveImages(vec![tag.into()]);
    let image = build_image(
        &[
            (base_layer("docker-gzip"), Compression::Gzip),
            (overlay_layer(), Compression::Gzip),
        ],
        true,
        None,
    );
    let probe = Arc::new(ReadProbe::default());
    let report = import_image(
        &docker_sink("edgeswarm-test-helper-docker-imports-gzip-image-that-runs").await,
        image.import(tag, Duration::from_millis(30), &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        report.location.starts_with("sha256:"),
        "{}",
        report.location
    );
    assert!(report
        .layers
        .iter()
        .all(|l| l.action == LayerAction::Imported));
    assert_eq!(
        probe.max_active.load(Ordering::SeqCst),
        2,
        "layers stream in parallel"
    );
    assert_eq!(run(tag, CHECK_SCRIPT), CHECK_OUTPUT);
    // The engine holds exactly our diff_ids, and no helper image remains.
    let (_, layers, _) = docker(&["image", "inspect", "-f", "{{json .RootFS.Layers}}", tag]);
    let layers: Vec<String> = serde_json::from_str(layers.trim()).unwrap();
    let expected: Vec<String> = image.layers.iter().map(|l| l.2.to_oci()).collect();
    assert_eq!(layers, expected);
    let (_, id, _) = docker(&["image", "inspect", "-f", "{{.Id}}", tag]);
    assert_eq!(id.trim(), report.location);
    assert_eq!(
        helper_images("edgeswarm-test-helper-docker-imports-gzip-image-that-runs"),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_imports_zstd_oci_image_by_transcoding() {
    let _dockerd = ensure_dockerd();
    let tag = "edgeswarm-test/docker-zstd:v1";
    let _cleanup = RemoveImages(vec![tag.into()]);
    let image = build_image(
        &[
            (base_layer("docker-zstd"), Compression::Zstd),
            (overlay_layer(), Compression::Zstd),
        ],
        false,
        None,
    );
    let probe = Arc::new(ReadProbe::default());
    import_image(
        &docker_sink("edgeswarm-test-helper-docker-imports-zstd-oci-image-by-transco").await,
        image.import(tag, Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(run(tag, CHECK_SCRIPT), CHECK_OUTPUT);
    assert_eq!(
        helper_images("edgeswarm-test-helper-docker-imports-zstd-oci-image-by-transco"),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_reimport_with_shared_layers_loads_only_new_layers() {
    let _dockerd = ensure_dockerd();
    let (tag1, tag2) = ("edgeswarm-test/shared:v1", "edgeswarm-test/shared:v2");
    let _cleanup = RemoveImages(vec![tag1.into(), tag2.into()]);
    let base = base_layer("docker-shared");
    let first = build_image(
        &[
            (base.clone(), Compression::Gzip),
            (overlay_layer(), Compression::Gzip),
        ],
        true,
        None,
    );
    let sink = docker_sink("edgeswarm-test-helper-docker-reimport-with-shared-layers-loads").await;
    let probe1 = Arc::new(ReadProbe::default());
    let r1 = import_image(
        &sink,
        first.import(tag1, Duration::ZERO, &probe1),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    assert!(r1.layers.iter().all(|l| l.action == LayerAction::Imported));

    let second = build_image(
        &[
            (base, Compression::Gzip),
            (overlay_layer(), Compression::Gzip),
            (extra_layer(), Compression::Gzip),
        ],
        true,
        None,
    );
    let probe2 = Arc::new(ReadProbe::default());
    let r2 = import_image(
        &sink,
        second.import(tag2, Duration::ZERO, &probe2),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    let actions: Vec<_> = r2.layers.iter().map(|l| l.action).collect();
    assert_eq!(
        actions,
        [
            LayerAction::AlreadyPresent,
            LayerAction::AlreadyPresent,
            LayerAction::Imported
        ]
    );
    // Only the new layer's bytes were read (and so sent).
    assert_eq!(
        probe2.bytes.load(Ordering::SeqCst),
        second.layers[2].1.len() as u64
    );
    assert_eq!(
        run(tag2, "cat /etc/extra /etc/hello"),
        "third layer\nhello from the overlay\n"
    );
    // Re-importing the same image reads nothing at all.
    let probe3 = Arc::new(ReadProbe::default());
    let r3 = import_image(
        &sink,
        second.import(tag2, Duration::ZERO, &probe3),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    assert!(r3
        .layers
        .iter()
        .all(|l| l.action == LayerAction::AlreadyPresent));
    assert_eq!(probe3.bytes.load(Ordering::SeqCst), 0);
    assert_eq!(
        helper_images("edgeswarm-test-helper-docker-reimport-with-shared-layers-loads"),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_wrong_diff_id_fails_and_tags_nothing() {
    let _dockerd = ensure_dockerd();
    let tag = "edgeswarm-test/wrong-diff:v1";
    let _cleanup = RemoveImages(vec![tag.into()]);
    let image = build_image(
        &[
            (base_layer("docker-wrong"), Compression::Gzip),
            (overlay_layer(), Compression::Gzip),
        ],
        true,
        Some(1),
    );
    let probe = Arc::new(ReadProbe::default());
    let err = import_image(
        &docker_sink("edgeswarm-test-helper-docker-wrong-diff-id-fails-and-tags-noth").await,
        image.import(tag, Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ImportError::DiffIdMismatch { index: 1, .. }),
        "{err}"
    );
    let (exists, _, _) = docker(&["image", "inspect", tag]);
    assert!(!exists, "no image may be tagged after a failed import");
    assert_eq!(
        helper_images("edgeswarm-test-helper-docker-wrong-diff-id-fails-and-tags-noth"),
        ""
    );
}

/// One file-system object, as seen in a tar or on disk.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, sha: String },
    Symlink { target: String },
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Paths Docker adds to every container export (mount points, .dockerenv).
fn docker_added(path: &str) -> bool {
    matches!(
        path,
        ".dockerenv"
            | "dev"
            | "proc"
            | "sys"
            | "etc/hosts"
            | "etc/hostname"
            | "etc/resolv.conf"
            | "etc/mtab"
    ) || path.starts_with("dev/")
        || path.starts_with("proc/")
        || path.starts_with("sys/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_output_matches_docker_export() {
    let _dockerd = ensure_dockerd();
    let tag = "edgeswarm-test/export-compare:v1";
    let _cleanup = RemoveImages(vec![tag.into()]);
    let image = build_image(
        &[
            (base_layer("export-compare"), Compression::Gzip),
            (overlay_layer(), Compression::Gzip),
            (extra_layer(), Compression::Gzip),
        ],
        true,
        None,
    );
    let probe = Arc::new(ReadProbe::default());
    import_image(
        &docker_sink("edgeswarm-test-helper-dir-output-matches-docker-export").await,
        image.import(tag, Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let report = import_image(
        &ImportSink::Dir {
            root: tmp.path().to_owned(),
        },
        image.import(tag, Duration::ZERO, &probe),
        // Docker keeps setuid bits (and device nodes): so does the dir
        // sink when told to, which is what is compared here.
        &ImportOptions {
            dir: DirPolicy {
                device_nodes: true,
                keep_setid: true,
            },
            ..ImportOptions::default()
        },
    )
    .await
    .unwrap();
    let rootfs = Path::new(&report.location);

    // docker create + docker export: the engine's view of the filesystem.
    let (ok, container, err) = docker(&["create", tag]);
    assert!(ok, "{err}");
    let container = container.trim().to_owned();
    let out = std::process::Command::new("docker")
        .args(["export", &container])
        .output()
        .unwrap();
    docker(&["rm", "-f", &container]);
    assert!(out.status.success());

    let mut expected: BTreeMap<String, Node> = BTreeMap::new();
    let mut hardlinks: Vec<(String, String)> = Vec::new();
    let mut archive = tar::Archive::new(&out.stdout[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let path = path.trim_end_matches('/').to_owned();
        if path.is_empty() || docker_added(&path) {
            continue;
        }
        let mode = entry.header().mode().unwrap() & 0o7777;
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => Node::Dir { mode },
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                Node::File {
                    mode,
                    sha: sha(&data),
                }
            }
            tar::EntryType::Symlink => Node::Symlink {
                target: entry.link_name().unwrap().unwrap().display().to_string(),
            },
            tar::EntryType::Link => {
                let target = entry.link_name().unwrap().unwrap().display().to_string();
                hardlinks.push((path.clone(), target.clone()));
                // Same content as its target.
                let target_node = match expected.get(&target).unwrap() {
                    Node::File { mode, sha } => Node::File {
                        mode: *mode,
                        sha: sha.clone(),
                    },
                    other => panic!("hard link to {other:?}"),
                };
                target_node
            }
            other => panic!("unexpected {other:?} at {path}"),
        };
        expected.insert(path, node);
    }

    let mut actual: BTreeMap<String, Node> = BTreeMap::new();
    for path in list_tree(rootfs) {
        let full = rootfs.join(&path);
        let meta = std::fs::symlink_metadata(&full).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            Node::Symlink {
                target: std::fs::read_link(&full).unwrap().display().to_string(),
            }
        } else if meta.is_dir() {
            Node::Dir { mode }
        } else {
            Node::File {
                mode,
                sha: sha(&std::fs::read(&full).unwrap()),
            }
        };
        actual.insert(path, node);
    }
    // Docker's export of a container also carries the mount-point parents.
    assert_eq!(actual, expected);
    assert!(!hardlinks.is_empty(), "the image has hard links to compare");
    for (path, target) in hardlinks {
        let a = std::fs::symlink_metadata(rootfs.join(&path)).unwrap().ino();
        let b = std::fs::symlink_metadata(rootfs.join(&target))
            .unwrap()
            .ino();
        assert_eq!(a, b, "{path} must be a hard link to {target}");
    }
    assert_eq!(
        helper_images("edgeswarm-test-helper-dir-output-matches-docker-export"),
        ""
    );
}

#[tokio::test]
async fn default_sink_is_docker_when_the_socket_answers_else_dir() {
    let _dockerd = ensure_dockerd();
    let tmp = tempfile::tempdir().unwrap();
    let sink = detect_sink_at(None, tmp.path()).await;
    assert_eq!(sink.kind(), ImportSinkKind::Docker);
    let dead = tmp.path().join("no-docker.sock");
    match detect_sink_at(Some(&dead), tmp.path()).await {
        ImportSink::Dir { root } => assert_eq!(root, tmp.path().join("rootfs")),
        other => panic!("expected dir sink, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_registers_earlier_layers_while_later_ones_still_download() {
    let _dockerd = ensure_dockerd();
    let tag = "edgeswarm-test/overlap:v1";
    let repo = "edgeswarm-test-helper-overlap";
    let _cleanup = RemoveImages(vec![tag.into()]);
    // Layer 0 is small and fast; layer 1 (busybox, ~1 MB gzip) arrives in
    // 64 KiB pieces every 300 ms, i.e. over about 5 s.
    let mut small = LayerTar::default();
    small
        .dir("etc", 0o755)
        .file("etc/first", 0o644, b"overlap test\n");
    let image = build_image(
        &[
            (small.finish(), Compression::Gzip),
            (base_layer("docker-overlap"), Compression::Gzip),
        ],
        true,
        None,
    );
    let probes = [
        Arc::new(ReadProbe::default()),
        Arc::new(ReadProbe::default()),
    ];
    let request =
        image.import_per_layer(tag, &[Duration::ZERO, Duration::from_millis(300)], &probes);
    let sink = docker_sink(repo).await;
    let import =
        tokio::spawn(async move { import_image(&sink, request, &ImportOptions::default()).await });
    // Wait until Docker has registered layer 0 (its helper image exists).
    eventually("layer 0 registered", Duration::from_secs(60), async || {
        let helpers = helper_images(repo);
        (!helpers.is_empty()).then_some(()).ok_or("no helper image")
    })
    .await;
    let layer1_read = probes[1].bytes.load(Ordering::SeqCst);
    assert!(
        layer1_read < image.layers[1].1.len() as u64,
        "layer 0 was registered only after layer 1 fully arrived ({layer1_read} bytes read)"
    );
    import.await.unwrap().unwrap();
    assert_eq!(run(tag, "cat /etc/first"), "overlap test\n");
    assert_eq!(helper_images(repo), "");
}
