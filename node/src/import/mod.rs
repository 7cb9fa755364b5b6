//! The streaming import pipeline: verified layer bytes in, a usable image out.
//!
//! # Layout
//! - `layer`: media types, streaming decompression (gzip via flate2/zlib-rs,
//!   zstd, none) and verification of size, blob digest and diff_id.
//! - `dir`: the `dir` sink, extracting a root filesystem safely
//!   (whiteouts, opaque dirs, links, modes, xattrs, ownership when root).
//! - `docker`: the `docker` sink, streaming docker-archives into
//!   `POST /images/load`, one load per new layer, overlapped with the download.
//! - `oci`: the `oci` sink, writing an OCI image layout.
//!
//! # Goals
//! Each layer is read exactly once, as its bytes arrive (the reader blocks
//! until the store has verified the next chunk), by one task on the blocking
//! pool (plus a dedicated thread hashing what it reads); layers of one image stream in parallel with one another (up to
//! [`ImportOptions::max_parallel_layers`]). Nothing holds a whole layer in
//! memory: bytes flow through fixed buffers and bounded channels. Every
//! layer's uncompressed sha256 is checked against the config's diff_id and
//! its compressed sha256/size against the manifest; on any failure the
//! import aborts with a typed [`ImportError`] and leaves nothing behind (no
//! rootfs, no layout, no tagged image, no helper images).
//!
//! # Non-goals
//! Fetching or verifying chunks (the store does that), resolving references
//! (the registry client does), multi-platform indexes (the caller passes one
//! platform's manifest), and layer formats other than tar.

mod dir;
mod docker;
mod layer;
mod oci;
mod publish;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeswarm_protocol::address::Digest;
use sha2::{Digest as _, Sha256};

pub use docker::{DockerTarget, DEFAULT_HELPER_REPO};
pub use layer::{verify_layer, Compression, LayerStats, UnpackLimit};
pub use publish::remove_published;

/// Which sink an import feeds (`--import docker|dir|oci|none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportSinkKind {
    /// Load into the local Docker engine.
    Docker,
    /// Extract a root filesystem under `<data-dir>/rootfs/<name>`.
    Dir,
    /// Write an OCI image layout under `<data-dir>/oci/<name>`.
    Oci,
    /// Keep the verified blobs in the store only (seeds, mirrors).
    None,
}

impl std::str::FromStr for ImportSinkKind {
    type Err = ImportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "docker" => Ok(ImportSinkKind::Docker),
            "dir" => Ok(ImportSinkKind::Dir),
            "oci" => Ok(ImportSinkKind::Oci),
            "none" => Ok(ImportSinkKind::None),
            other => Err(ImportError::UnknownSink(other.to_owned())),
        }
    }
}

impl std::fmt::Display for ImportSinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImportSinkKind::Docker => "docker",
            ImportSinkKind::Dir => "dir",
            ImportSinkKind::Oci => "oci",
            ImportSinkKind::None => "none",
        })
    }
}

/// A configured sink: where imported images go.
#[derive(Clone, Debug)]
pub enum ImportSink {
    /// The Docker engine behind this connection.
    Docker(DockerTarget),
    /// Root filesystems are created as `<root>/<name>` (root is usually
    /// `<data-dir>/rootfs`).
    Dir {
        /// Parent directory of the per-image root filesystems.
        root: PathBuf,
    },
    /// OCI layouts are created as `<root>/<name>` (root is usually
    /// `<data-dir>/oci`).
    Oci {
        /// Parent directory of the per-image layouts.
        root: PathBuf,
    },
    /// Nothing beyond the store's verified blobs.
    None,
}

impl ImportSink {
    /// Builds the sink of `kind` under `data_dir` (connecting to Docker at
    /// its default socket for [`ImportSinkKind::Docker`]).
    pub async fn from_kind(kind: ImportSinkKind, data_dir: &Path) -> Result<Self, ImportError> {
        Ok(match kind {
            ImportSinkKind::Docker => ImportSink::Docker(
                DockerTarget::connect(None)
                    .await?
                    .with_scratch_dir(data_dir.join("tmp"))
                    .with_owner(data_dir),
            ),
            ImportSinkKind::Dir => ImportSink::Dir {
                root: data_dir.join("rootfs"),
            },
            ImportSinkKind::Oci => ImportSink::Oci {
                root: data_dir.join("oci"),
            },
            ImportSinkKind::None => ImportSink::None,
        })
    }

    /// The kind of this sink.
    pub fn kind(&self) -> ImportSinkKind {
        match self {
            ImportSink::Docker(_) => ImportSinkKind::Docker,
            ImportSink::Dir { .. } => ImportSinkKind::Dir,
            ImportSink::Oci { .. } => ImportSinkKind::Oci,
            ImportSink::None => ImportSinkKind::None,
        }
    }
}

/// The default sink: `docker` when the Docker socket answers, else `dir`
/// under `data_dir`.
pub async fn detect_default_sink(data_dir: &Path) -> ImportSink {
    detect_sink_at(None, data_dir).await
}

/// [`detect_default_sink`] with an explicit Docker socket path (`None`:
/// `$DOCKER_HOST` or `/var/run/docker.sock`).
pub async fn detect_sink_at(socket: Option<&Path>, data_dir: &Path) -> ImportSink {
    match DockerTarget::connect(socket).await {
        Ok(target) => ImportSink::Docker(
            target
                .with_scratch_dir(data_dir.join("tmp"))
                .with_owner(data_dir),
        ),
        Err(e) => {
            tracing::info!(error = %e, "docker not available; importing into rootfs directories");
            ImportSink::Dir {
                root: data_dir.join("rootfs"),
            }
        }
    }
}

/// What [`remove_leftovers`] found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Work dirs, temporary links and unreferenced versions under
    /// `<data-dir>/rootfs` and `<data-dir>/oci`.
    pub paths: Vec<PathBuf>,
    /// Docker helper tags of this data dir.
    pub helper_tags: Vec<String>,
}

impl Leftovers {
    /// True when nothing was left.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.helper_tags.is_empty()
    }
}

/// Removes what imports killed mid-way (kill -9, power loss) left in
/// `data_dir`'s sinks: work dirs and unpublished versions of the `dir`
/// and `oci` sinks (whichever sink is in use now: both roots are
/// edgeswarm's), and, when `docker` is given, this data dir's helper tags.
/// Call it with the data dir locked, before any import starts.
pub async fn remove_leftovers(
    data_dir: &Path,
    docker: Option<&DockerTarget>,
) -> Result<Leftovers, ImportError> {
    let roots = [data_dir.join("rootfs"), data_dir.join("oci")];
    let paths = tokio::task::spawn_blocking(move || {
        let mut paths = Vec::new();
        for root in &roots {
            paths.extend(
                publish::remove_leftovers(root)
                    .map_err(|e| ImportError::io("clean up", root, e))?,
            );
        }
        Ok::<_, ImportError>(paths)
    })
    .await
    .map_err(|e| ImportError::Task(e.to_string()))??;
    let helper_tags = match docker {
        Some(target) => target.remove_leftover_helpers().await?,
        None => Vec::new(),
    };
    Ok(Leftovers { paths, helper_tags })
}

/// One layer to import, in image order.
pub struct LayerSource {
    /// The layer media type from the manifest (selects the decompressor).
    pub media_type: String,
    /// The expected sha256 of the uncompressed tar (config `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// The compressed bytes as they arrive; reads may block until the next
    /// chunk is verified. Read exactly once, on a blocking thread.
    pub reader: Box<dyn Read + Send>,
    /// `Some(blob)` when `reader` itself guarantees that it yields exactly
    /// the bytes of `blob` and ends only once they all matched it (the
    /// store's [`crate::store::BlobReader`]: each chunk re-verified as it
    /// is read, end of file only after the whole-blob check). When that is
    /// the blob the manifest names, the import does not hash the
    /// compressed stream a second time; `None` (any other reader): it
    /// does, and checks the digest and size itself.
    pub checked_blob: Option<Digest>,
}

impl std::fmt::Debug for LayerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerSource")
            .field("media_type", &self.media_type)
            .field("diff_id", &self.diff_id)
            .finish_non_exhaustive()
    }
}

/// An image to import.
#[derive(Debug)]
pub struct ImageImport {
    /// The release's reference, e.g. `registry.local:5000/app:v1`: the
    /// Docker tag, the OCI `ref.name` and the rootfs directory name.
    pub reference: String,
    /// The image config JSON, exactly as its digest was verified.
    pub config_bytes: Vec<u8>,
    /// The image manifest JSON (OCI or Docker schema 2), exactly as verified.
    pub manifest_bytes: Vec<u8>,
    /// One source per manifest layer, in order.
    pub layers: Vec<LayerSource>,
}

/// Tunables for an import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// How many layers stream at once (each holds one blocking thread, one
    /// hashing thread and, for Docker, one upload). Bounded so a 100-layer
    /// image cannot take 200 threads.
    pub max_parallel_layers: usize,
    /// Bound on each layer's uncompressed size.
    pub unpack: layer::UnpackLimit,
    /// What a `dir` import may create beyond plain files.
    pub dir: DirPolicy,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            max_parallel_layers: 8,
            unpack: layer::UnpackLimit::default(),
            dir: DirPolicy::default(),
        }
    }
}

/// What a `dir` import may create beyond plain files and directories. The
/// rootfs tree is readable by the node's host: by default nothing in it
/// gives a local user more rights than the image's plain files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirPolicy {
    /// Create character and block device nodes (as root only) [default:
    /// off: skipped with a warning].
    pub device_nodes: bool,
    /// Keep setuid/setgid bits and `security.capability` xattrs [default:
    /// off: stripped].
    pub keep_setid: bool,
}

/// What happened to one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerAction {
    /// Streamed, verified and handed to the sink.
    Imported,
    /// The sink already holds it (Docker knew its ChainID); not read.
    AlreadyPresent,
    /// The sink needs no layer data (`none`); not read.
    NotRead,
}

/// Per-layer outcome of an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerReport {
    /// The layer's diff_id.
    pub diff_id: Digest,
    /// What the sink did with it.
    pub action: LayerAction,
    /// Measured sizes and digests, when the layer was streamed.
    pub stats: Option<LayerStats>,
}

/// The result of a successful import.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// The sink that received the image.
    pub sink: ImportSinkKind,
    /// The reference the image was imported as.
    pub reference: String,
    /// Where the image now lives: the rootfs or layout directory, or the
    /// Docker image ID (`sha256:...`).
    pub location: String,
    /// One entry per layer, in order.
    pub layers: Vec<LayerReport>,
    /// Wall time of the import.
    pub elapsed: Duration,
}

/// Why an import failed. After any of these, nothing of the image is kept.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// `--import` named no known sink.
    #[error("unknown import sink {0:?} (expected docker, dir, oci or none)")]
    UnknownSink(String),
    /// The layer media type is not a tar layer we can decompress.
    #[error("layer {index}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// Layer position.
        index: usize,
        /// The offending media type.
        media_type: String,
    },
    /// The manifest JSON is not a usable image manifest.
    #[error("invalid image manifest: {0}")]
    InvalidManifest(String),
    /// The config JSON is not a usable image config.
    #[error("invalid image config: {0}")]
    InvalidConfig(String),
    /// The reference cannot name an image here.
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    /// Manifest, config and sources disagree about the layers.
    #[error("layer list mismatch: {0}")]
    LayerMismatch(String),
    /// Reading or decompressing the layer failed (truncated or corrupt data,
    /// or the source's own error).
    #[error("layer {index}: reading/decompressing failed: {source}")]
    LayerStream {
        /// Layer position.
        index: usize,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The layer expands past its bound (a decompression bomb, or a
    /// layer larger than `--max-unpack-ratio` / `--max-layer-unpacked`
    /// allow).
    #[error(
        "layer {index}: uncompressed size exceeds {limit} bytes (compressed {compressed:?} bytes); \
         refusing a possible decompression bomb (raise --max-unpack-ratio or \
         --max-layer-unpacked if the layer is genuine)"
    )]
    LayerTooLarge {
        /// Layer position.
        index: usize,
        /// The bound it crossed.
        limit: u64,
        /// Its compressed size, when known.
        compressed: Option<u64>,
    },
    /// The uncompressed layer is not the one the image config names.
    #[error("layer {index}: diff_id mismatch: config says {expected}, content is {actual}")]
    DiffIdMismatch {
        /// Layer position.
        index: usize,
        /// diff_id from the config.
        expected: Digest,
        /// sha256 of what was decompressed.
        actual: Digest,
    },
    /// The compressed layer is not the blob the manifest names.
    #[error("layer {index}: blob digest mismatch: manifest says {expected}, content is {actual}")]
    BlobDigestMismatch {
        /// Layer position.
        index: usize,
        /// Digest from the manifest.
        expected: Digest,
        /// sha256 of what was read.
        actual: Digest,
    },
    /// The compressed layer has another size than the manifest says.
    #[error("layer {index}: size mismatch: manifest says {expected} bytes, read {actual}")]
    SizeMismatch {
        /// Layer position.
        index: usize,
        /// Size from the manifest.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
    /// The layer tar tries to write outside the root filesystem (`..`,
    /// absolute paths, writing through symlinks, escaping hard links).
    #[error("layer {index}: unsafe tar entry {path:?}: {reason}")]
    UnsafeEntry {
        /// Layer position.
        index: usize,
        /// The entry path as found in the tar.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The layer tar is malformed or uses what we refuse (oversized
    /// extension headers, sparse files).
    #[error("layer {index}: bad tar: {reason}")]
    BadTar {
        /// Layer position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Docker engine refused or failed a request.
    #[error("docker: {context}: {source}")]
    Docker {
        /// What we asked for.
        context: String,
        /// bollard's error (includes the engine's message).
        source: bollard::errors::Error,
    },
    /// Another layer of the same import failed first.
    #[error("import aborted because another layer failed")]
    Aborted,
    /// A pipeline task panicked or was cancelled.
    #[error("import task failed: {0}")]
    Task(String),
}

impl ImportError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        ImportError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// One layer as described by manifest + config, validated.
#[derive(Clone, Debug)]
pub(crate) struct LayerInfo {
    pub(crate) media_type: String,
    pub(crate) compression: Compression,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) diff_id: Digest,
    /// The bound on its uncompressed size (from [`ImportOptions`]).
    pub(crate) unpack: layer::UnpackLimit,
    /// Its source vouches for this very blob digest
    /// ([`LayerSource::checked_blob`]): the compressed bytes are not
    /// hashed again.
    pub(crate) checked_by_source: bool,
}

impl LayerInfo {
    /// What layer `index` must match when it streams.
    pub(crate) fn expected(&self, index: usize) -> layer::Expected {
        layer::Expected {
            index,
            diff_id: self.diff_id,
            digest: Some(self.digest),
            size: Some(self.size),
            unpack: self.unpack,
            checked_by_source: self.checked_by_source,
        }
    }
}

/// The parsed parts of manifest and config the sinks need.
#[derive(Clone, Debug)]
pub(crate) struct ParsedImage {
    pub(crate) manifest: serde_json::Value,
    pub(crate) layers: Vec<LayerInfo>,
}

fn parse_digest(v: &serde_json::Value, what: &str) -> Result<Digest, ImportError> {
    v.as_str()
        .and_then(|s| Digest::parse_oci(s).ok())
        .ok_or_else(|| ImportError::InvalidManifest(format!("{what}: not a sha256 digest")))
}

/// Parses and cross-checks manifest, config and layer sources.
pub(crate) fn parse_image(image: &ImageImport) -> Result<ParsedImage, ImportError> {
    let manifest: serde_json::Value = serde_json::from_slice(&image.manifest_bytes)
        .map_err(|e| ImportError::InvalidManifest(e.to_string()))?;
    let config: serde_json::Value = serde_json::from_slice(&image.config_bytes)
        .map_err(|e| ImportError::InvalidConfig(e.to_string()))?;
    let config_digest = parse_digest(&manifest["config"]["digest"], "config.digest")?;
    let actual = Digest::of(&image.config_bytes);
    if actual != config_digest {
        return Err(ImportError::InvalidConfig(format!(
            "config bytes hash to {actual}, manifest names {config_digest}"
        )));
    }
    let descriptors = manifest["layers"]
        .as_array()
        .ok_or_else(|| ImportError::InvalidManifest("no layers array".into()))?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| ImportError::InvalidConfig("no rootfs.diff_ids".into()))?;
    if descriptors.len() != diff_ids.len() || descriptors.len() != image.layers.len() {
        return Err(ImportError::LayerMismatch(format!(
            "manifest has {} layers, config {} diff_ids, {} sources given",
            descriptors.len(),
            diff_ids.len(),
            image.layers.len()
        )));
    }
    let mut layers = Vec::with_capacity(descriptors.len());
    for (index, ((desc, diff), source)) in descriptors
        .iter()
        .zip(diff_ids)
        .zip(&image.layers)
        .enumerate()
    {
        let diff_id = diff
            .as_str()
            .and_then(|s| Digest::parse_oci(s).ok())
            .ok_or_else(|| ImportError::InvalidConfig(format!("diff_id {index} is not sha256")))?;
        if diff_id != source.diff_id {
            return Err(ImportError::LayerMismatch(format!(
                "layer {index}: source expects diff_id {}, config says {diff_id}",
                source.diff_id
            )));
        }
        let media_type = desc["mediaType"].as_str().unwrap_or_default().to_owned();
        if media_type != source.media_type {
            return Err(ImportError::LayerMismatch(format!(
                "layer {index}: source media type {:?}, manifest says {media_type:?}",
                source.media_type
            )));
        }
        let compression = Compression::from_media_type(&media_type).ok_or_else(|| {
            ImportError::UnsupportedMediaType {
                index,
                media_type: media_type.clone(),
            }
        })?;
        let size = desc["size"]
            .as_u64()
            .ok_or_else(|| ImportError::InvalidManifest(format!("layer {index}: no size")))?;
        let digest = parse_digest(&desc["digest"], "layer digest")?;
        layers.push(LayerInfo {
            media_type,
            compression,
            digest,
            size,
            diff_id,
            unpack: layer::UnpackLimit::default(),
            checked_by_source: source.checked_blob == Some(digest),
        });
    }
    Ok(ParsedImage { manifest, layers })
}

/// The ChainIDs of a diff_id list (how Docker and containerd name a layer
/// stack): `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => *diff,
            Some(parent) => {
                let mut h = Sha256::new();
                h.update(parent.to_oci().as_bytes());
                h.update(b" ");
                h.update(diff.to_oci().as_bytes());
                Digest::from_bytes(h.finalize().into())
            }
        };
        out.push(next);
    }
    out
}

/// A file-system-safe directory name for a reference
/// (`reg:5000/app:v1` -> `reg_5000_app_v1`).
pub fn image_dir_name(reference: &str) -> String {
    let mut name: String = reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    name
}

/// The `name:tag` form of a reference for Docker's RepoTags (a digest is
/// dropped, a missing tag becomes `latest`).
pub fn docker_tag(reference: &str) -> Result<String, ImportError> {
    let without_digest = reference.split('@').next().unwrap_or_default();
    if without_digest.is_empty()
        || without_digest != without_digest.trim()
        || without_digest.contains(char::is_whitespace)
    {
        return Err(ImportError::InvalidReference(reference.to_owned()));
    }
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    if last.contains(':') {
        Ok(without_digest.to_owned())
    } else {
        Ok(format!("{without_digest}:latest"))
    }
}

/// The tag part of a reference (`latest` when absent), for OCI `ref.name`.
pub(crate) fn reference_tag(reference: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag.to_owned(),
        _ => "latest".to_owned(),
    }
}

/// Imports `image` into `sink`, streaming every layer once.
///
/// Runs the blocking work on the blocking pool; the returned future only
/// coordinates. On error nothing of the image remains in the sink.
#[tracing::instrument(skip_all, fields(reference = %image.reference, sink = %sink.kind()))]
pub async fn import_image(
    sink: &ImportSink,
    image: ImageImport,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let mut parsed = parse_image(&image)?;
    for layer in &mut parsed.layers {
        layer.unpack = options.unpack;
    }
    let reference = image.reference.clone();
    let (location, layers) = match sink {
        ImportSink::None => (
            String::new(),
            parsed
                .layers
                .iter()
                .map(|l| LayerReport {
                    diff_id: l.diff_id,
                    action: LayerAction::NotRead,
                    stats: None,
                })
                .collect(),
        ),
        ImportSink::Dir { root } => dir::import(root, image, parsed, options).await?,
        ImportSink::Oci { root } => oci::import(root, image, parsed, options).await?,
        ImportSink::Docker(target) => target.import(image, parsed, options).await?,
    };
    let report = ImportReport {
        sink: sink.kind(),
        reference,
        location,
        layers,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        location = %report.location,
        elapsed_ms = report.elapsed.as_millis() as u64,
        imported = report.layers.iter().filter(|l| l.action == LayerAction::Imported).count(),
        "image imported"
    );
    Ok(report)
}

/// True for errors that only echo another layer's failure (the abort
/// flag interrupted a read, or the upload was closed under us): when
/// several layers fail, the report names the real cause instead.
pub(crate) fn is_echo(e: &ImportError) -> bool {
    match e {
        ImportError::Aborted => true,
        ImportError::LayerStream { source, .. } => {
            source.kind() == std::io::ErrorKind::BrokenPipe
                || source
                    .get_ref()
                    .is_some_and(|e| e.is::<layer::AbortedByOtherLayer>())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_docker_rule() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chain = chain_ids(&[a, b]);
        assert_eq!(chain[0], a);
        let expected = Digest::of(format!("{} {}", a.to_oci(), b.to_oci()).as_bytes());
        assert_eq!(chain[1], expected);
    }

    #[test]
    fn reference_names() {
        assert_eq!(docker_tag("reg:5000/app").unwrap(), "reg:5000/app:latest");
        assert_eq!(docker_tag("reg:5000/app:v1").unwrap(), "reg:5000/app:v1");
        assert_eq!(
            docker_tag("app:v2@sha256:0000").unwrap(),
            "app:v2".to_owned()
        );
        assert!(docker_tag("").is_err());
        assert_eq!(image_dir_name("reg:5000/app:v1"), "reg_5000_app_v1");
        assert_eq!(image_dir_name(".."), "_..");
        assert_eq!(reference_tag("reg:5000/app"), "latest");
        assert_eq!(reference_tag("reg:5000/app:v1"), "v1");
    }

    #[test]
    fn sink_kinds_parse() {
        assert_eq!(
            "dir".parse::<ImportSinkKind>().unwrap(),
            ImportSinkKind::Dir
        );
        assert!(matches!(
            "tarball".parse::<ImportSinkKind>(),
            Err(ImportError::UnknownSink(_))
        ));
    }
}
