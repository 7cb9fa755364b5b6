//! Shared helpers of the import tests: a dockerd that is started when none
//! answers (and stopped again when the last test using it ends), test image
//! builders (busybox base layer, an overlay layer with links, whiteouts and
//! an opaque dir, hostile tars) and slow, observable layer readers.

use std::io::{self, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use edgeswarm_node::import::{Compression, ImageImport, LayerSource};
use edgeswarm_protocol::address::Digest;

pub(crate) const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// True when the Docker socket answers `GET /_ping` with 200.
pub(crate) fn docker_answers() -> bool {
    let Ok(mut s) = UnixStream::connect(DOCKER_SOCKET) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// A dockerd this test process started; killed when the last user drops it.
pub(crate) struct Dockerd {
    child: Option<Child>,
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

static DOCKERD: Mutex<Weak<Dockerd>> = Mutex::new(Weak::new());

/// Ensures a Docker engine answers on the default socket: reuses a running
/// one, else starts `dockerd` in the background and waits for it. Hold the
/// returned guard for the test's duration.
pub(crate) fn ensure_dockerd() -> Arc<Dockerd> {
    let mut slot = DOCKERD.lock().unwrap();
    if let Some(existing) = slot.upgrade() {
        return existing;
    }
    let guard = if docker_answers() {
        Arc::new(Dockerd { child: None })
    } else {
        let log = std::fs::File::create(std::env::temp_dir().join("edgeswarm-import-dockerd.log"))
            .expect("dockerd log file");
        let child = Command::new("dockerd")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd must be installed (Debian docker.io)");
        let guard = Arc::new(Dockerd { child: Some(child) });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker_answers() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        guard
    };
    *slot = Arc::downgrade(&guard);
    guard
}

/// Runs `docker ARGS` and returns (success, stdout, stderr).
pub(crate) fn docker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Removes the given image tags when dropped (test cleanup).
pub(crate) struct RemoveImages(pub(crate) Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

// ---------------------------------------------------------------- tar building

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A small tar builder for test layers.
pub(crate) struct LayerTar(tar::Builder<Vec<u8>>);

impl Default for LayerTar {
    fn default() -> Self {
        LayerTar(tar::Builder::new(Vec::new()))
    }
}

impl LayerTar {
    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = header(path, tar::EntryType::Directory, mode, 0);
        h.set_cksum();
        self.0.append(&h, io::empty()).unwrap();
        self
    }
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = header(path, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(path, tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.0.append(&h, io::empty()).unwrap();
        self
    }
    pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(path, tar::EntryType::Link, 0o644, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.0.append(&h, io::empty()).unwrap();
        self
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A base layer: static busybox with a few applet symlinks, plus files the
/// overlay deletes (`etc/removeme`) and hides (`etc/keepdir/old`). `unique`
/// lands in `etc/test-id` so parallel tests never share layers.
pub(crate) fn base_layer(unique: &str) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut t = LayerTar::default();
    t.dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .symlink("bin/sh", "busybox")
        .symlink("bin/cat", "/bin/busybox")
        .symlink("bin/ls", "busybox")
        .symlink("bin/stat", "busybox")
        .symlink("bin/readlink", "busybox")
        .symlink("bin/test", "busybox")
        .symlink("bin/echo", "busybox")
        .dir("etc", 0o755)
        .file("etc/test-id", 0o644, unique.as_bytes())
        .file("etc/removeme", 0o644, b"lower layer file\n")
        .dir("etc/keepdir", 0o755)
        .file("etc/keepdir/old", 0o644, b"hidden by opaque\n")
        .dir("tmp", 0o1777)
        .dir("usr", 0o755)
        .dir("usr/share", 0o755)
        .file("usr/share/base.txt", 0o644, b"from base\n");
    t.finish()
}

/// An overlay layer: new files, a hard link, symlinks, a whiteout of a base
/// file, an opaque directory, special modes.
pub(crate) fn overlay_layer() -> Vec<u8> {
    let mut t = LayerTar::default();
    t.dir("etc", 0o755)
        .file("etc/hello", 0o644, b"hello from the overlay\n")
        .hardlink("etc/hello-link", "etc/hello")
        .symlink("etc/hello-sym", "hello")
        .file("etc/.wh.removeme", 0o644, b"")
        .dir("etc/keepdir", 0o750)
        .file("etc/keepdir/.wh..wh..opq", 0o644, b"")
        .file("etc/keepdir/new", 0o600, b"new in opaque dir\n")
        .dir("opt", 0o700)
        .file("opt/tool", 0o4755, b"#!/bin/sh\necho tool\n");
    t.finish()
}

/// A third layer for shared-layer tests.
pub(crate) fn extra_layer() -> Vec<u8> {
    let mut t = LayerTar::default();
    t.dir("etc", 0o755)
        .file("etc/extra", 0o644, b"third layer\n");
    t.finish()
}

/// One raw tar entry with an arbitrary name (bypassing the tar crate's
/// path checks), for hostile fixtures.
pub(crate) fn raw_entry(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(data.len() as u64);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Concatenates raw entries and the end marker.
pub(crate) fn raw_tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.resize(out.len() + 1024, 0);
    out
}

// ---------------------------------------------------------------- images

pub(crate) fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(Cursor::new(tar), 3).unwrap(),
        Compression::None => tar.to_vec(),
    }
}

/// A complete test image: manifest, config and compressed blobs.
#[derive(Clone)]
pub(crate) struct TestImage {
    pub(crate) manifest: Vec<u8>,
    pub(crate) config: Vec<u8>,
    /// (media type, compressed blob, diff_id) per layer.
    pub(crate) layers: Vec<(String, Vec<u8>, Digest)>,
}

/// Builds an image from uncompressed layer tars. `docker_types` selects
/// Docker schema 2 media types (gzip only) instead of OCI ones.
/// `wrong_diff_id` replaces that layer's diff_id in the config.
pub(crate) fn build_image(
    layers: &[(Vec<u8>, Compression)],
    docker_types: bool,
    wrong_diff_id: Option<usize>,
) -> TestImage {
    let mut out_layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for (i, (tar, compression)) in layers.iter().enumerate() {
        let blob = compress(tar, *compression);
        let mut diff = Digest::of(tar);
        if wrong_diff_id == Some(i) {
            diff = Digest::of(b"not this layer");
        }
        let media_type = match (docker_types, compression) {
            (true, Compression::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            (true, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (true, Compression::Zstd) => "application/vnd.docker.image.rootfs.diff.tar.zstd",
            (false, c) => c.oci_media_type(false),
        }
        .to_owned();
        descriptors.push(serde_json::json!({
            "mediaType": media_type,
            "digest": Digest::of(&blob).to_oci(),
            "size": blob.len(),
        }));
        diff_ids.push(diff.to_oci());
        out_layers.push((media_type, blob, diff));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| serde_json::json!({"created_by": "edgeswarm test"})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let (manifest_type, config_type) = if docker_types {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": Digest::of(&config).to_oci(), "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    TestImage {
        manifest,
        config,
        layers: out_layers,
    }
}

/// Counts bytes read, and how many readers are mid-stream at once.
#[derive(Default)]
pub(crate) struct ReadProbe {
    pub(crate) bytes: AtomicU64,
    pub(crate) active: AtomicUsize,
    pub(crate) max_active: AtomicUsize,
}

/// A reader that hands out `chunk` bytes at a time, sleeping `delay`
/// before each (a download arriving chunk by chunk).
pub(crate) struct SlowReader {
    data: Cursor<Vec<u8>>,
    chunk: usize,
    delay: Duration,
    probe: Arc<ReadProbe>,
    started: bool,
    finished: bool,
}

impl SlowReader {
    pub(crate) fn new(data: Vec<u8>, chunk: usize, delay: Duration, probe: Arc<ReadProbe>) -> Self {
        SlowReader {
            data: Cursor::new(data),
            chunk,
            delay,
            probe,
            started: false,
            finished: false,
        }
    }
}

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.started {
            self.started = true;
            let now = self.probe.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.probe.max_active.fetch_max(now, Ordering::SeqCst);
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let n = buf.len().min(self.chunk);
        let n = self.data.read(&mut buf[..n])?;
        self.probe.bytes.fetch_add(n as u64, Ordering::SeqCst);
        if n == 0 && !self.finished {
            self.finished = true;
            self.probe.active.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(n)
    }
}

impl TestImage {
    /// The import request, with slow readers sharing `probe`.
    pub(crate) fn import(
        &self,
        reference: &str,
        delay: Duration,
        probe: &Arc<ReadProbe>,
    ) -> ImageImport {
        let delays = vec![delay; self.layers.len()];
        let probes = vec![probe.clone(); self.layers.len()];
        self.import_per_layer(reference, &delays, &probes)
    }

    /// The import request with a delay and a probe per layer.
    pub(crate) fn import_per_layer(
        &self,
        reference: &str,
        delays: &[Duration],
        probes: &[Arc<ReadProbe>],
    ) -> ImageImport {
        ImageImport {
            reference: reference.to_owned(),
            config_bytes: self.config.clone(),
            manifest_bytes: self.manifest.clone(),
            layers: self
                .layers
                .iter()
                .enumerate()
                .map(|(i, (media_type, blob, _))| {
                    let config: serde_json::Value = serde_json::from_slice(&self.config).unwrap();
                    let diff_id =
                        Digest::parse_oci(config["rootfs"]["diff_ids"][i].as_str().unwrap())
                            .unwrap();
                    LayerSource {
                        media_type: media_type.clone(),
                        diff_id,
                        reader: Box::new(SlowReader::new(
                            blob.clone(),
                            64 * 1024,
                            delays[i],
                            probes[i].clone(),
                        )),
                        checked_blob: None,
                    }
                })
                .collect(),
        }
    }
}

/// Entries of `root` (relative paths), excluding `root` itself.
pub(crate) fn list_tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}
