//! Test support: build realistic images from this machine's files, push
//! them to a registry, and run a real `docker-registry` on loopback.
//!
//! Compiled into the library only with the `test-support` feature (not
//! `#[cfg(test)]`, because the node's integration tests, benches and example
//! and the testnet crate reuse it). Nothing here is used by the daemon, and
//! no shipped binary enables the feature.
//!
//! ## Layout
//!
//! - [`LayerSource`] / [`build_layer`]: writes a layer tar (deterministic:
//!   sorted entries, uid/gid 0, fixed mtime) through a compressor into a temp
//!   file, hashing both sides on the way: `diff_id` (uncompressed) and the
//!   blob digest (compressed). Never holds a layer in memory.
//! - [`ImageSpec`] / [`build_image`]: layers + config + manifest (Docker v2
//!   or OCI). [`ImageSpec::realistic`] makes a three-layer image: host
//!   shared libraries, busybox-static with applet links, a small app layer.
//! - [`Pusher`]: the registry upload API (HEAD to skip existing blobs, POST
//!   `/blobs/uploads/` then a monolithic streamed PUT `?digest=`), manifests
//!   and multi-arch indexes.
//! - [`TestRegistry`]: `docker-registry serve` (Debian package
//!   `docker-registry`) on 127.0.0.1 with a temp root, optional htpasswd
//!   (bcrypt entries made by `htpasswd -B` from Debian `apache2-utils`),
//!   foreign-layer URLs allowed; waits for `/v2/`; killed on drop.
//!
//! ## Non-goals
//!
//! - Bit-for-bit reproduction of `docker build` output; chunked (PATCH)
//!   uploads; pushing to token-authenticated registries.

use std::io::{self, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use edgeswarm_protocol::Digest;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};

use super::manifest::{self, Compression, Descriptor, ImageIndex, ImageManifest, PlatformJson};
use super::platform::Platform;

/// Errors of the test helpers.
#[derive(Debug, thiserror::Error)]
pub enum TestSupportError {
    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// The registry answered an unexpected status.
    #[error("{what}: HTTP {status}: {body}")]
    Http {
        /// The request.
        what: String,
        /// Status code.
        status: u16,
        /// Body snippet.
        body: String,
    },
    /// A request failed to complete.
    #[error("{what}: {source}")]
    Request {
        /// The request.
        what: String,
        /// The error.
        source: reqwest::Error,
    },
    /// The registry process failed to start or answer.
    #[error("docker-registry: {0}")]
    Registry(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> TestSupportError {
    let context = context.into();
    move |source| TestSupportError::Io { context, source }
}

/// Fixed mtime for layer entries (2020-01-01), so equal inputs give equal digests.
pub const LAYER_MTIME: u64 = 1_577_836_800;

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub enum LayerEntry {
    /// A directory (mode 0755).
    Dir(String),
    /// A file copied from the host (mode kept).
    HostFile {
        /// Path inside the layer.
        path: String,
        /// Host file to copy.
        host: PathBuf,
    },
    /// A file with the given contents.
    Data {
        /// Path inside the layer.
        path: String,
        /// Contents.
        bytes: Vec<u8>,
        /// Unix mode bits.
        mode: u32,
    },
    /// A symlink.
    Symlink {
        /// Path inside the layer.
        path: String,
        /// Link target.
        target: String,
    },
    /// Deterministic pseudo-random (incompressible) data, generated while writing.
    Random {
        /// Path inside the layer.
        path: String,
        /// Bytes of data.
        size: u64,
        /// Seed (different seeds give different layers).
        seed: u64,
    },
}

/// What goes into a layer.
#[derive(Debug, Clone)]
pub enum LayerSource {
    /// Explicit entries, written in the given order.
    Entries(Vec<LayerEntry>),
    /// A host directory tree (regular files, symlinks and directories, sorted),
    /// placed under `dest`; stops adding regular files past `max_bytes`.
    HostDir {
        /// Host directory.
        src: PathBuf,
        /// Path inside the layer.
        dest: String,
        /// Cap on the sum of file sizes.
        max_bytes: u64,
    },
}

impl LayerSource {
    /// busybox-static at `/bin/busybox` with applet links (`sh`, `ls`, ...).
    pub fn busybox() -> LayerSource {
        let host = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
        let mut entries = vec![
            LayerEntry::Dir("bin".into()),
            LayerEntry::HostFile {
                path: "bin/busybox".into(),
                host,
            },
        ];
        for applet in [
            "sh",
            "ls",
            "cat",
            "echo",
            "sleep",
            "wget",
            "tar",
            "sha256sum",
        ] {
            entries.push(LayerEntry::Symlink {
                path: format!("bin/{applet}"),
                target: "busybox".into(),
            });
        }
        LayerSource::Entries(entries)
    }

    /// Up to `max_bytes` of the host's shared libraries (the multiarch lib
    /// directory, else `/usr/lib`), under `usr/lib/...`.
    pub fn host_libs(max_bytes: u64) -> LayerSource {
        let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
        let src = if Path::new(&multiarch).is_dir() {
            PathBuf::from(multiarch)
        } else {
            PathBuf::from("/usr/lib")
        };
        let dest = src.to_string_lossy().trim_start_matches('/').to_owned();
        LayerSource::HostDir {
            src,
            dest,
            max_bytes,
        }
    }

    /// A small application layer whose contents depend on `tag`.
    pub fn app(tag: &str) -> LayerSource {
        LayerSource::Entries(vec![
            LayerEntry::Dir("app".into()),
            LayerEntry::Data {
                path: "app/config.json".into(),
                bytes: format!("{{\"release\":\"{tag}\"}}\n").into_bytes(),
                mode: 0o644,
            },
            LayerEntry::Data {
                path: "app/run.sh".into(),
                bytes: format!("#!/bin/sh\necho edgeswarm app {tag}\n").into_bytes(),
                mode: 0o755,
            },
        ])
    }

    /// One file of `size` incompressible bytes (for size-controlled benches).
    pub fn random(path: &str, size: u64, seed: u64) -> LayerSource {
        LayerSource::Entries(vec![LayerEntry::Random {
            path: path.to_owned(),
            size,
            seed,
        }])
    }
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// Docker schema 2 (zstd layers still use the OCI zstd media type).
    Docker,
    /// OCI image manifest.
    Oci,
}

/// A layer written to a temp file.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// The compressed blob on disk.
    pub path: PathBuf,
    /// sha256 of the blob.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Uncompressed tar size.
    pub uncompressed_size: u64,
    /// Compression used.
    pub compression: Compression,
    /// Media type written into the manifest.
    pub media_type: String,
    /// Foreign URLs (set by [`BuiltImage::make_foreign`]); such layers are not pushed.
    pub urls: Vec<String>,
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Compressor<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    fn new(inner: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Compressor::None(inner),
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::new(6),
            )),
            Compression::Zstd => Compressor::Zstd(zstd::Encoder::new(inner, 3)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
        }
    }
}

/// A reader of deterministic pseudo-random bytes (xorshift; incompressible enough).
struct RandomReader {
    state: u64,
    left: u64,
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(LAYER_MTIME);
    h
}

fn append_entry<W: Write>(tar: &mut tar::Builder<W>, entry: &LayerEntry) -> io::Result<()> {
    match entry {
        LayerEntry::Dir(path) => {
            let mut h = header(tar::EntryType::Directory, 0, 0o755);
            tar.append_data(
                &mut h,
                format!("{}/", path.trim_end_matches('/')),
                io::empty(),
            )
        }
        LayerEntry::HostFile { path, host } => {
            use std::os::unix::fs::PermissionsExt;
            let file = std::fs::File::open(host)?;
            let meta = file.metadata()?;
            let mut h = header(
                tar::EntryType::Regular,
                meta.len(),
                meta.permissions().mode() & 0o7777,
            );
            tar.append_data(&mut h, path, file.take(meta.len()))
        }
        LayerEntry::Data { path, bytes, mode } => {
            let mut h = header(tar::EntryType::Regular, bytes.len() as u64, *mode);
            tar.append_data(&mut h, path, bytes.as_slice())
        }
        LayerEntry::Symlink { path, target } => {
            let mut h = header(tar::EntryType::Symlink, 0, 0o777);
            tar.append_link(&mut h, path, target)
        }
        LayerEntry::Random { path, size, seed } => {
            let mut h = header(tar::EntryType::Regular, *size, 0o644);
            let reader = RandomReader {
                state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                left: *size,
            };
            tar.append_data(&mut h, path, reader)
        }
    }
}

fn append_host_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    src: &Path,
    dest: &str,
    budget: &mut u64,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut names: Vec<_> = std::fs::read_dir(src)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    append_entry(tar, &LayerEntry::Dir(dest.to_owned()))?;
    for name in names {
        let host = src.join(&name);
        let path = format!("{dest}/{}", name.to_string_lossy());
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host)?;
            append_entry(
                tar,
                &LayerEntry::Symlink {
                    path,
                    target: target.to_string_lossy().into_owned(),
                },
            )?;
        } else if meta.is_dir() {
            append_host_dir(tar, &host, &path, budget)?;
        } else if meta.is_file() && meta.len() <= *budget {
            // Unreadable files are skipped rather than failing the build.
            let Ok(file) = std::fs::File::open(&host) else {
                continue;
            };
            *budget -= meta.len();
            let mut h = header(
                tar::EntryType::Regular,
                meta.len(),
                meta.permissions().mode() & 0o7777,
            );
            tar.append_data(&mut h, &path, file.take(meta.len()))?;
        }
    }
    Ok(())
}

/// Writes one layer (blocking: call from `spawn_blocking` in async code).
pub fn build_layer(
    source: &LayerSource,
    compression: Compression,
    format: ManifestFormat,
    dir: &Path,
) -> Result<BuiltLayer, TestSupportError> {
    let tmp = tempfile::Builder::new()
        .prefix("layer-")
        .suffix(".blob")
        .tempfile_in(dir)
        .map_err(io_err("creating layer file"))?;
    let (file, path) = tmp.keep().map_err(|e| TestSupportError::Io {
        context: "keeping layer file".into(),
        source: e.error,
    })?;
    let write = || -> io::Result<(HashWriter<BufWriter<std::fs::File>>, Digest, u64)> {
        let outer = HashWriter {
            inner: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            count: 0,
        };
        let inner = HashWriter {
            inner: Compressor::new(outer, compression)?,
            hasher: Sha256::new(),
            count: 0,
        };
        let mut tar = tar::Builder::new(inner);
        tar.follow_symlinks(false);
        match source {
            LayerSource::Entries(entries) => {
                for entry in entries {
                    append_entry(&mut tar, entry)?;
                }
            }
            LayerSource::HostDir {
                src,
                dest,
                max_bytes,
            } => {
                let mut budget = *max_bytes;
                append_host_dir(&mut tar, src, dest.trim_matches('/'), &mut budget)?;
            }
        }
        let inner = tar.into_inner()?;
        let diff_id = Digest::from_bytes(inner.hasher.finalize().into());
        let uncompressed = inner.count;
        let mut outer = inner.inner.finish()?;
        outer.flush()?;
        Ok((outer, diff_id, uncompressed))
    };
    let (outer, diff_id, uncompressed_size) =
        write().map_err(io_err(format!("writing layer {}", path.display())))?;
    let digest = Digest::from_bytes(outer.hasher.finalize().into());
    let media_type = match (format, compression.docker_media_type()) {
        (ManifestFormat::Docker, Some(docker)) => docker,
        _ => compression.oci_media_type(),
    }
    .to_owned();
    Ok(BuiltLayer {
        path,
        digest,
        size: outer.count,
        diff_id,
        uncompressed_size,
        compression,
        media_type,
        urls: Vec::new(),
    })
}

/// What image to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Layers, base first.
    pub layers: Vec<LayerSource>,
    /// Compression of every layer.
    pub compression: Compression,
    /// Manifest flavour.
    pub format: ManifestFormat,
    /// Platform written into the config (and the index entry).
    pub platform: Platform,
    /// Default command.
    pub cmd: Vec<String>,
}

impl ImageSpec {
    /// Three layers: up to `lib_bytes` of host libraries, busybox-static,
    /// an app layer tagged `tag`.
    pub fn realistic(lib_bytes: u64, tag: &str) -> ImageSpec {
        ImageSpec {
            layers: vec![
                LayerSource::host_libs(lib_bytes),
                LayerSource::busybox(),
                LayerSource::app(tag),
            ],
            compression: Compression::Gzip,
            format: ManifestFormat::Docker,
            platform: Platform::host(),
            cmd: vec!["/bin/sh".into(), "/app/run.sh".into()],
        }
    }
}

impl ImageSpec {
    /// One incompressible layer per entry of `sizes` (bytes of file data;
    /// the tar adds ~1.5 KiB), seeded by `seed` so two specs with different
    /// seeds share nothing and equal seeds give identical layers. For
    /// size-controlled benchmarks (`Compression::None` keeps blob sizes exact).
    pub fn random_layers(sizes: &[u64], seed: u64, compression: Compression) -> ImageSpec {
        ImageSpec {
            layers: sizes
                .iter()
                .enumerate()
                .map(|(i, size)| {
                    LayerSource::random(
                        &format!("data/layer{i}.bin"),
                        *size,
                        seed.wrapping_add(i as u64),
                    )
                })
                .collect(),
            compression,
            format: ManifestFormat::Oci,
            platform: Platform::host(),
            cmd: Vec::new(),
        }
    }
}

/// A built image: layer files plus config and manifest documents.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Layers, base first.
    pub layers: Vec<BuiltLayer>,
    /// Config JSON.
    pub config_bytes: Bytes,
    /// Its digest.
    pub config_digest: Digest,
    /// Manifest JSON.
    pub manifest_bytes: Bytes,
    /// Its digest.
    pub manifest_digest: Digest,
    /// Manifest media type.
    pub manifest_media_type: String,
    /// The platform.
    pub platform: Platform,
    /// Manifest flavour.
    pub format: ManifestFormat,
}

impl BuiltImage {
    /// Sum of layer blob sizes.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Marks layer `index` as foreign / non-distributable with `urls`
    /// (not pushed; pullers fetch it from the URLs) and rewrites the manifest.
    pub fn make_foreign(&mut self, index: usize, urls: Vec<String>) {
        let layer = &mut self.layers[index];
        layer.media_type = match (self.format, layer.compression) {
            (ManifestFormat::Docker, Compression::Gzip) => manifest::DOCKER_LAYER_FOREIGN_GZIP,
            (_, Compression::Gzip) => manifest::OCI_LAYER_NONDIST_GZIP,
            (_, Compression::Zstd) => manifest::OCI_LAYER_NONDIST_ZSTD,
            (_, Compression::None) => manifest::OCI_LAYER_NONDIST_TAR,
        }
        .to_owned();
        layer.urls = urls;
        self.render_manifest();
    }

    fn render_manifest(&mut self) {
        let (media_type, config_type) = match self.format {
            ManifestFormat::Docker => (manifest::DOCKER_MANIFEST, manifest::DOCKER_CONFIG),
            ManifestFormat::Oci => (manifest::OCI_MANIFEST, manifest::OCI_CONFIG),
        };
        let doc = ImageManifest {
            schema_version: 2,
            media_type: Some(media_type.to_owned()),
            config: Descriptor {
                media_type: config_type.to_owned(),
                digest: self.config_digest.to_oci(),
                size: self.config_bytes.len() as u64,
                urls: Vec::new(),
                platform: None,
                annotations: Default::default(),
            },
            layers: self
                .layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.to_oci(),
                    size: l.size,
                    urls: l.urls.clone(),
                    platform: None,
                    annotations: Default::default(),
                })
                .collect(),
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec_pretty(&doc).expect("manifest serialises");
        self.manifest_digest = Digest::of(&bytes);
        self.manifest_bytes = Bytes::from(bytes);
        self.manifest_media_type = media_type.to_owned();
    }

    /// The index entry describing this image.
    pub fn index_entry(&self) -> Descriptor {
        Descriptor {
            media_type: self.manifest_media_type.clone(),
            digest: self.manifest_digest.to_oci(),
            size: self.manifest_bytes.len() as u64,
            urls: Vec::new(),
            platform: Some(PlatformJson::from_platform(&self.platform)),
            annotations: Default::default(),
        }
    }
}

/// Builds an image's layers (on the blocking pool) into `dir`, then its
/// config and manifest. Layer files stay in `dir` (use a temp dir).
pub async fn build_image(spec: ImageSpec, dir: &Path) -> Result<BuiltImage, TestSupportError> {
    let dir = dir.to_owned();
    let result = tokio::task::spawn_blocking(move || build_image_blocking(&spec, &dir)).await;
    match result {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Blocking form of [`build_image`].
pub fn build_image_blocking(spec: &ImageSpec, dir: &Path) -> Result<BuiltImage, TestSupportError> {
    let format = if spec.compression == Compression::Zstd {
        ManifestFormat::Oci
    } else {
        spec.format
    };
    let mut layers = Vec::with_capacity(spec.layers.len());
    for source in &spec.layers {
        layers.push(build_layer(source, spec.compression, format, dir)?);
    }
    let config = serde_json::json!({
        "architecture": spec.platform.architecture,
        "os": spec.platform.os,
        "variant": spec.platform.variant,
        "created": "2020-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": spec.cmd,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_oci()).collect::<Vec<_>>(),
        },
        "history": layers.iter().map(|_| serde_json::json!({
            "created": "2020-01-01T00:00:00Z",
            "created_by": "edgeswarm test image builder",
        })).collect::<Vec<_>>(),
    });
    let mut config = config;
    if spec.platform.variant.is_none() {
        config.as_object_mut().expect("object").remove("variant");
    }
    let config_bytes = Bytes::from(serde_json::to_vec(&config).expect("config serialises"));
    let mut image = BuiltImage {
        layers,
        config_digest: Digest::of(&config_bytes),
        config_bytes,
        manifest_bytes: Bytes::new(),
        manifest_digest: Digest::of(b""),
        manifest_media_type: String::new(),
        platform: spec.platform.clone(),
        format,
    };
    image.render_manifest();
    Ok(image)
}

/// An OCI index / Docker manifest list over `images`.
pub fn index_bytes(
    images: &[&BuiltImage],
    format: ManifestFormat,
) -> (Bytes, Digest, &'static str) {
    let media_type = match format {
        ManifestFormat::Docker => manifest::DOCKER_MANIFEST_LIST,
        ManifestFormat::Oci => manifest::OCI_INDEX,
    };
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(media_type.to_owned()),
        manifests: images.iter().map(|i| i.index_entry()).collect(),
        annotations: Default::default(),
    };
    let bytes = Bytes::from(serde_json::to_vec_pretty(&index).expect("index serialises"));
    let digest = Digest::of(&bytes);
    (bytes, digest, media_type)
}

/// Pushes blobs and manifests with the Distribution upload API.
#[derive(Debug, Clone)]
pub struct Pusher {
    http: reqwest::Client,
    base: Url,
    basic: Option<HeaderValue>,
}

impl Pusher {
    /// A pusher for `http://{host}` (plain HTTP: test registries), with
    /// optional basic credentials.
    pub fn new(host: &str, credentials: Option<(&str, &str)>) -> Result<Pusher, TestSupportError> {
        let base = Url::parse(&format!("http://{host}/v2/"))
            .map_err(|e| TestSupportError::Registry(format!("bad registry host {host:?}: {e}")))?;
        let basic = credentials.map(|(user, pass)| {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            let mut value = HeaderValue::from_str(&format!("Basic {token}")).expect("ascii");
            value.set_sensitive(true);
            value
        });
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| TestSupportError::Request {
                what: "building HTTP client".into(),
                source: e,
            })?;
        Ok(Pusher { http, base, basic })
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, url);
        if let Some(b) = &self.basic {
            r = r.header(AUTHORIZATION, b.clone());
        }
        r
    }

    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response, TestSupportError> {
        let resp = request
            .send()
            .await
            .map_err(|e| TestSupportError::Request {
                what: what.to_owned(),
                source: e,
            })?;
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(TestSupportError::Http {
            what: what.to_owned(),
            status,
            body: body.chars().take(300).collect(),
        })
    }

    fn join(&self, path: &str) -> Result<Url, TestSupportError> {
        self.base
            .join(path)
            .map_err(|e| TestSupportError::Registry(format!("bad path {path:?}: {e}")))
    }

    /// Whether the registry already has a blob.
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool, TestSupportError> {
        let url = self.join(&format!("{repo}/blobs/{}", digest.to_oci()))?;
        let what = format!("HEAD blob {digest}");
        let resp = self
            .send(
                &what,
                self.request(reqwest::Method::HEAD, url),
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(resp.status() == StatusCode::OK)
    }

    async fn upload(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), TestSupportError> {
        let what = format!("upload blob {digest} to {repo}");
        let url = self.join(&format!("{repo}/blobs/uploads/"))?;
        let resp = self
            .send(
                &what,
                self.request(reqwest::Method::POST, url),
                &[StatusCode::ACCEPTED],
            )
            .await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| TestSupportError::Registry(format!("{what}: 202 without Location")))?;
        let mut put_url = self
            .base
            .join(location)
            .map_err(|e| TestSupportError::Registry(format!("{what}: bad Location: {e}")))?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", &digest.to_oci());
        let request = self
            .request(reqwest::Method::PUT, put_url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        self.send(&what, request, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Pushes a blob from a file, streaming (skips blobs already present).
    pub async fn push_blob_file(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<(), TestSupportError> {
        if self.has_blob(repo, digest).await? {
            return Ok(());
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(io_err(format!("opening {}", path.display())))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        self.upload(repo, digest, size, reqwest::Body::wrap_stream(stream))
            .await
    }

    /// Pushes a small blob from memory (configs).
    pub async fn push_blob_bytes(
        &self,
        repo: &str,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), TestSupportError> {
        if self.has_blob(repo, digest).await? {
            return Ok(());
        }
        let size = bytes.len() as u64;
        self.upload(repo, digest, size, reqwest::Body::from(bytes))
            .await
    }

    /// Pushes a manifest or index under `reference` (tag or digest).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, TestSupportError> {
        let digest = Digest::of(&bytes);
        let url = self.join(&format!("{repo}/manifests/{reference}"))?;
        let request = self
            .request(reqwest::Method::PUT, url)
            .header(CONTENT_TYPE, media_type)
            .body(bytes);
        self.send(
            &format!("push manifest {repo}:{reference}"),
            request,
            &[StatusCode::CREATED],
        )
        .await?;
        Ok(digest)
    }

    /// Pushes an image's layers (except foreign ones), config and manifest;
    /// tags it `tag` if given (else pushes by digest). Returns the manifest digest.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        image: &BuiltImage,
    ) -> Result<Digest, TestSupportError> {
        for layer in image.layers.iter().filter(|l| l.urls.is_empty()) {
            self.push_blob_file(repo, &layer.digest, layer.size, &layer.path)
                .await?;
        }
        self.push_blob_bytes(repo, &image.config_digest, image.config_bytes.clone())
            .await?;
        let reference = tag.map_or_else(|| image.manifest_digest.to_oci(), str::to_owned);
        self.push_manifest(
            repo,
            &reference,
            &image.manifest_media_type,
            image.manifest_bytes.clone(),
        )
        .await
    }

    /// Pushes every image by digest, then an index over them tagged `tag`.
    /// Returns the index digest.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[&BuiltImage],
        format: ManifestFormat,
    ) -> Result<Digest, TestSupportError> {
        for image in images {
            self.push_image(repo, None, image).await?;
        }
        let (bytes, _, media_type) = index_bytes(images, format);
        self.push_manifest(repo, tag, media_type, bytes).await
    }
}

/// Options for [`TestRegistry::start_with`].
#[derive(Debug, Clone, Default)]
pub struct TestRegistryOptions {
    /// htpasswd users `(name, password)`; empty means no auth.
    pub users: Vec<(String, String)>,
    /// Listen address; default 127.0.0.1 on a free port. A fixed address
    /// (e.g. a testnet's "cloud" address) must be reachable from this
    /// process, which polls `/v2/` on it.
    pub listen: Option<SocketAddr>,
}

/// A real `docker-registry` on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    child: std::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    /// Serves HTTPS ([`TestRegistry::start_tls`]) instead of HTTP.
    tls: bool,
}

/// What [`TestRegistry::start_tls`] serves, beside the options.
struct Serve<'a> {
    /// Another registry's storage root to serve instead of a new one.
    root: Option<&'a Path>,
    /// Certificate chain and key PEM files: serve HTTPS.
    tls: Option<(&'a Path, &'a Path)>,
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub async fn start() -> Result<TestRegistry, TestSupportError> {
        Self::start_with(TestRegistryOptions::default()).await
    }

    /// Starts a registry with htpasswd basic auth for `users`.
    pub async fn start_with_users(
        users: &[(&str, &str)],
    ) -> Result<TestRegistry, TestSupportError> {
        Self::start_with(TestRegistryOptions {
            users: users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
            listen: None,
        })
        .await
    }

    /// Starts a registry (a free port is picked; retried if taken meanwhile).
    pub async fn start_with(
        options: TestRegistryOptions,
    ) -> Result<TestRegistry, TestSupportError> {
        let serve = Serve {
            root: None,
            tls: None,
        };
        Self::start_serving(&options, &serve).await
    }

    /// Starts an anonymous registry that serves HTTPS with the certificate
    /// chain `cert` and key `key` (PEM files), on the storage root `root`
    /// of another (plain HTTP) test registry, which pushes to it: the
    /// [`Pusher`] speaks plain HTTP only.
    pub async fn start_tls(
        root: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<TestRegistry, TestSupportError> {
        let serve = Serve {
            root: Some(root),
            tls: Some((cert, key)),
        };
        Self::start_serving(&TestRegistryOptions::default(), &serve).await
    }

    async fn start_serving(
        options: &TestRegistryOptions,
        serve: &Serve<'_>,
    ) -> Result<TestRegistry, TestSupportError> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(options, serve).await {
                Ok(r) => return Ok(r),
                Err(TestSupportError::Registry(e)) => last = e,
                Err(other) => return Err(other),
            }
        }
        Err(TestSupportError::Registry(last))
    }

    async fn try_start(
        options: &TestRegistryOptions,
        serve: &Serve<'_>,
    ) -> Result<TestRegistry, TestSupportError> {
        let dir = tempfile::Builder::new()
            .prefix("edgeswarm-registry-")
            .tempdir()
            .map_err(io_err("creating registry dir"))?;
        let addr = match options.listen {
            Some(addr) => addr,
            None => {
                let l =
                    std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("picking a port"))?;
                l.local_addr().map_err(io_err("picking a port"))?
            }
        };
        let root = match serve.root {
            Some(root) => root.to_owned(),
            None => dir.path().join("root"),
        };
        std::fs::create_dir_all(&root).map_err(io_err("creating registry root"))?;
        let tls = match serve.tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let mut auth = String::new();
        if !options.users.is_empty() {
            let htpasswd = dir.path().join("htpasswd");
            let mut lines = String::new();
            for (user, pass) in &options.users {
                lines.push_str(&bcrypt_entry(user, pass)?);
                lines.push('\n');
            }
            std::fs::write(&htpasswd, lines).map_err(io_err("writing htpasswd"))?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: edgeswarm-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n\
             {tls}\
             {auth}\
             validation:\n  manifests:\n    urls:\n      allow:\n        - '^https?://'\n",
            root = root.display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(io_err("writing registry config"))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(io_err("creating registry log"))?;
        let log2 = log.try_clone().map_err(io_err("cloning log handle"))?;
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                TestSupportError::Registry(format!(
                    "cannot run docker-registry (Debian package `docker-registry`): {e}"
                ))
            })?;
        let mut registry = TestRegistry {
            child,
            addr,
            dir,
            tls: serve.tls.is_some(),
        };
        registry.wait_ready().await?;
        Ok(registry)
    }

    async fn wait_ready(&mut self) -> Result<(), TestSupportError> {
        // Only "is it up?": the certificate is what the tests examine.
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| TestSupportError::Request {
                what: "building HTTP client".into(),
                source: e,
            })?;
        let url = format!("{}/v2/", self.url());
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestSupportError::Registry(format!(
                    "exited with {status}: {}",
                    self.log()
                )));
            }
            if let Ok(resp) = http.get(&url).timeout(Duration::from_secs(1)).send().await {
                if matches!(resp.status().as_u16(), 200 | 401) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(TestSupportError::Registry(format!(
            "no answer on {url} after 10 s: {}",
            self.log()
        )))
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`: the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` for [`TestRegistry::start_tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The registry's storage root.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One bcrypt htpasswd line, via `htpasswd -nbB` (Debian `apache2-utils`).
pub fn bcrypt_entry(user: &str, password: &str) -> Result<String, TestSupportError> {
    let output = std::process::Command::new("htpasswd")
        .args(["-nbB", "-C", "5", user, password])
        .output()
        .map_err(|e| {
            TestSupportError::Registry(format!(
                "cannot run htpasswd (install Debian package apache2-utils): {e}"
            ))
        })?;
    if !output.status.success() {
        return Err(TestSupportError::Registry(format!(
            "htpasswd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
