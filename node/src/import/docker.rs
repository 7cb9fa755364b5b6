//! The `docker` sink: streaming docker-archives into `POST /images/load`.
//!
//! # How
//! Docker 20.10 (API 1.41) loads images only as docker-archives
//! (`manifest.json` + config + layer files), spools each upload to disk,
//! recomputes every diff_id, and skips layers whose ChainID it already
//! holds *without opening their files* (verified on this engine: an archive
//! may list layers it does not contain when the engine has them).
//!
//! 1. The ChainIDs of the engine's images (their `RootFS.Layers`) tell which
//!    leading layers the engine already holds; those are not even read.
//! 2. Every new layer `i` gets its own upload, started as soon as its bytes
//!    flow: the archive's *first* entry is the layer file, streamed while it
//!    downloads (gzip and plain layers pass through unchanged with the
//!    manifest's size in the tar header; zstd, which 20.10 cannot load, is
//!    decompressed into a scratch file first because a tar header needs the
//!    size up front). Only after the layer verified (diff_id, blob digest,
//!    size) *and* upload `i-1` completed does the archive get its tail: a
//!    helper config for the prefix `0..=i`, `manifest.json` (helper tag,
//!    listing the earlier layers without their files), and the end marker.
//!    So Docker registers layer `i` while layer `i+1` still downloads, and
//!    never registers an unverified layer (a failed layer aborts its upload).
//! 3. A final, tiny archive carries the real config, tagged with the
//!    release's reference. The helper tags are removed (their images share
//!    all layers with the final image, so only helper configs go away).
//!
//! # Non-goals
//! Loading into containerd directly; Docker's own zstd support (Engine 23+)
//! is not used so that 20.10 works.

use std::collections::HashSet;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bollard::query_parameters::{ImportImageOptions, ListImagesOptions, RemoveImageOptions};
use bollard::Docker;
use bytes::Bytes;
use edgeswarm_protocol::address::Digest;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::layer::{stream_layer, Compression, LayerStats};
use super::{
    chain_ids, docker_tag, is_echo, ImageImport, ImportError, ImportOptions, LayerAction,
    LayerInfo, LayerReport, LayerSource, ParsedImage,
};

/// Default engine socket.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long the engine may take to answer the version request.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long to wait for Docker's reason after it closed an upload.
const ABORT_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// Default repository of the short-lived helper tags of per-layer loads.
pub const DEFAULT_HELPER_REPO: &str = "edgeswarm-import-helper";
/// Upload chunk size: large enough for few syscalls, small enough that
/// 8 in flight per layer stay far below a device's memory.
const CHUNK: usize = 256 * 1024;
/// Chunks buffered per upload between the blocking producer and hyper.
const CHANNEL_DEPTH: usize = 8;

type BodyItem = Result<Bytes, io::Error>;

/// A connection to a Docker engine plus where zstd layers are spooled.
#[derive(Clone)]
pub struct DockerTarget {
    docker: Docker,
    scratch: PathBuf,
    helper_repo: String,
    /// Tag prefix naming whose helpers they are (see [`Self::with_owner`]).
    owner: Option<String>,
}

impl std::fmt::Debug for DockerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerTarget")
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

impl DockerTarget {
    /// Connects to the engine at `socket` (default: `$DOCKER_HOST` when it
    /// is a `unix://` URL, else `/var/run/docker.sock`) and negotiates the
    /// API version (bollard 0.21 would otherwise speak 1.53 to a 1.41
    /// engine). Fails when the engine does not answer.
    pub async fn connect(socket: Option<&Path>) -> Result<Self, ImportError> {
        let path = match socket {
            Some(p) => p.display().to_string(),
            None => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| h.starts_with("unix://"))
                .unwrap_or_else(|| DEFAULT_SOCKET.to_owned()),
        };
        let docker_err = |context: &str, source| ImportError::Docker {
            context: format!("{context} {path}"),
            source,
        };
        // Uploads last as long as a layer download: a day, not bollard's 2 min.
        let docker = Docker::connect_with_socket(&path, 24 * 3600, bollard::API_DEFAULT_VERSION)
            .map_err(|e| docker_err("connect to", e))?;
        // Bounded: a socket whose daemon hangs must not stall detection.
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| {
                docker_err(
                    "no answer within 10 s from",
                    bollard::errors::Error::RequestTimeoutError,
                )
            })?
            .map_err(|e| docker_err("negotiate API version with", e))?;
        Ok(DockerTarget {
            docker,
            scratch: std::env::temp_dir(),
            helper_repo: DEFAULT_HELPER_REPO.to_owned(),
            owner: None,
        })
    }

    /// Uses `dir` for zstd spool files (default: the system temp dir, which
    /// may be RAM-backed tmpfs on devices; the sinks built from a data dir
    /// use `<data-dir>/tmp`). Created on first use.
    pub fn with_scratch_dir(mut self, dir: PathBuf) -> Self {
        self.scratch = dir;
        self
    }

    /// Uses `repo` (lowercase, a valid Docker repository name) for the
    /// short-lived helper tags of per-layer loads, e.g. to tell concurrent
    /// importers' helpers apart.
    pub fn with_helper_repo(mut self, repo: &str) -> Self {
        self.helper_repo = repo.to_owned();
        self
    }

    /// Marks helper tags as this data dir's (`<repo>:<owner>-<nonce>-<i>`,
    /// `owner` a hash of the path), so that [`Self::remove_leftover_helpers`]
    /// removes the ones an import killed mid-way left behind, and never
    /// those of another node sharing the engine. The sinks built from a
    /// data dir set it.
    pub fn with_owner(mut self, data_dir: &Path) -> Self {
        let path = data_dir
            .canonicalize()
            .or_else(|_| std::path::absolute(data_dir))
            .unwrap_or_else(|_| data_dir.to_owned());
        let hash = Digest::of(path.as_os_str().as_encoded_bytes()).to_hex();
        self.owner = Some(hash[..12].to_owned());
        self
    }

    /// The tag prefix of this target's helpers (`<repo>:` plus the owner).
    fn helper_prefix(&self) -> String {
        match &self.owner {
            Some(owner) => format!("{}:{owner}-", self.helper_repo),
            None => format!("{}:", self.helper_repo),
        }
    }

    /// Removes this owner's helper tags that are left from imports that
    /// were killed before their cleanup (kill -9, power loss); returns the
    /// tags removed. Needs an owner (nothing is removed without one) and
    /// must run before this owner's imports start.
    pub async fn remove_leftover_helpers(&self) -> Result<Vec<String>, ImportError> {
        if self.owner.is_none() {
            return Ok(Vec::new());
        }
        let prefix = self.helper_prefix();
        let filters = std::collections::HashMap::from([(
            "reference".to_owned(),
            vec![self.helper_repo.clone()],
        )]);
        let images = self
            .docker
            .list_images(Some(ListImagesOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|source| ImportError::Docker {
                context: format!("list images of {}", self.helper_repo),
                source,
            })?;
        let mut removed = Vec::new();
        for tag in images.into_iter().flat_map(|i| i.repo_tags) {
            if !tag.starts_with(&prefix) {
                continue;
            }
            match self
                .docker
                .remove_image(&tag, Some(RemoveImageOptions::default()), None)
                .await
            {
                Ok(_) => removed.push(tag),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(source) => {
                    return Err(ImportError::Docker {
                        context: format!("remove leftover helper {tag}"),
                        source,
                    })
                }
            }
        }
        Ok(removed)
    }

    /// The underlying bollard client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// ChainIDs of every layer stack the engine's images reference.
    pub async fn known_chain_ids(&self) -> Result<HashSet<Digest>, ImportError> {
        let docker_err = |context: String| move |source| ImportError::Docker { context, source };
        let images = self
            .docker
            .list_images(Some(ListImagesOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(docker_err("list images".into()))?;
        let mut known = HashSet::new();
        for summary in images {
            let inspect = match self.docker.inspect_image(&summary.id).await {
                Ok(i) => i,
                // Removed meanwhile: nothing to learn.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                Err(e) => return Err(docker_err(format!("inspect image {}", summary.id))(e)),
            };
            let diffs: Option<Vec<Digest>> = inspect
                .root_fs
                .and_then(|r| r.layers)
                .unwrap_or_default()
                .iter()
                .map(|d| Digest::parse_oci(d).ok())
                .collect();
            if let Some(diffs) = diffs {
                known.extend(chain_ids(&diffs));
            }
        }
        Ok(known)
    }

    pub(super) async fn import(
        &self,
        image: ImageImport,
        parsed: ParsedImage,
        options: &ImportOptions,
    ) -> Result<(String, Vec<LayerReport>), ImportError> {
        let tag = docker_tag(&image.reference)?;
        let diff_ids: Vec<Digest> = parsed.layers.iter().map(|l| l.diff_id).collect();
        let chain = chain_ids(&diff_ids);
        let known = self.known_chain_ids().await?;
        // A known ChainID implies its whole prefix is known.
        let first_new = chain.iter().take_while(|c| known.contains(c)).count();
        tracing::info!(
            layers = chain.len(),
            already_present = first_new,
            "loading into docker"
        );
        let config: serde_json::Value = serde_json::from_slice(&image.config_bytes)
            .map_err(|e| ImportError::InvalidConfig(e.to_string()))?;
        let nonce = format!("{:016x}", rand::random::<u64>());
        let prefix = self.helper_prefix();
        let helper_tags: Vec<String> = (0..chain.len())
            .map(|i| format!("{prefix}{nonce}-{i}"))
            .collect();

        // registered: how many leading layers the engine holds; failed: stop.
        let (progress_tx, progress_rx) = watch::channel((first_new, false));
        let progress_tx = Arc::new(progress_tx);
        let abort = Arc::new(AtomicBool::new(false));
        let semaphore = Arc::new(tokio::sync::Semaphore::new(
            options.max_parallel_layers.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let mut reports: Vec<LayerReport> = diff_ids
            .iter()
            .map(|d| LayerReport {
                diff_id: *d,
                action: LayerAction::AlreadyPresent,
                stats: None,
            })
            .collect();
        for (index, (source, info)) in image
            .layers
            .into_iter()
            .zip(parsed.layers.clone())
            .enumerate()
        {
            if index < first_new {
                continue; // dropping the source: never read
            }
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| ImportError::Task(e.to_string()))?;
            if abort.load(Ordering::Relaxed) {
                break;
            }
            let job = LayerLoad {
                docker: self.docker.clone(),
                index,
                info,
                helper_config: helper_config(&config, &diff_ids[..=index])?,
                helper_tag: helper_tags[index].clone(),
                scratch: self.scratch.clone(),
                abort: abort.clone(),
                progress_tx: progress_tx.clone(),
                progress_rx: progress_rx.clone(),
            };
            tasks.spawn(async move {
                let _permit = permit;
                let result = job.run(source).await;
                if result.is_err() {
                    job.abort.store(true, Ordering::Relaxed);
                    job.progress_tx.send_modify(|p| p.1 = true);
                }
                (index, result)
            });
        }
        let mut failure: Option<ImportError> = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, Ok(stats))) => {
                    reports[index].action = LayerAction::Imported;
                    reports[index].stats = Some(stats);
                }
                Ok((_, Err(e))) => {
                    if failure.as_ref().is_none_or(is_echo) {
                        failure = Some(e);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(ImportError::Task(e.to_string()));
                }
            }
        }
        let result = match failure {
            Some(e) => Err(e),
            None => {
                self.load_final(&image.config_bytes, &tag, chain.len())
                    .await
            }
        };
        self.remove_helpers(&helper_tags[first_new..]).await;
        result.map(|id| (id, reports))
    }

    /// Loads the real config under the release's tag; every layer is held.
    async fn load_final(
        &self,
        config_bytes: &[u8],
        tag: &str,
        layers: usize,
    ) -> Result<String, ImportError> {
        let tail = archive_tail(config_bytes, tag, layers);
        let body = futures::stream::once(async move { Ok::<_, io::Error>(Bytes::from(tail)) });
        run_load(&self.docker, body, format!("load {tag}")).await?;
        let inspect =
            self.docker
                .inspect_image(tag)
                .await
                .map_err(|source| ImportError::Docker {
                    context: format!("inspect {tag}"),
                    source,
                })?;
        Ok(inspect.id.unwrap_or_default())
    }

    async fn remove_helpers(&self, tags: &[String]) {
        for tag in tags {
            match self
                .docker
                .remove_image(tag, Some(RemoveImageOptions::default()), None)
                .await
            {
                Ok(_) => tracing::debug!(%tag, "removed helper tag"),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => tracing::warn!(%tag, error = %e, "cannot remove helper image"),
            }
        }
    }
}

/// The image config for the helper image of a layer prefix: same config,
/// diff_ids cut to the prefix, history dropped (it would not match).
fn helper_config(config: &serde_json::Value, prefix: &[Digest]) -> Result<Vec<u8>, ImportError> {
    let mut config = config.clone();
    let Some(object) = config.as_object_mut() else {
        return Err(ImportError::InvalidConfig("not a JSON object".into()));
    };
    object.remove("history");
    config["rootfs"]["diff_ids"] =
        serde_json::Value::Array(prefix.iter().map(|d| d.to_oci().into()).collect());
    Ok(serde_json::to_vec(&config).expect("json"))
}

fn layer_file_name(index: usize) -> String {
    format!("{index}/layer.tar")
}

fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_ustar();
    header.set_path(name).expect("short ascii name");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(0);
    header.set_cksum();
    *header.as_bytes()
}

fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// Config + manifest.json + end marker of an archive for the layer prefix
/// `0..layers`, tagged `tag`.
fn archive_tail(config: &[u8], tag: &str, layers: usize) -> Vec<u8> {
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": (0..layers).map(layer_file_name).collect::<Vec<_>>(),
    }]))
    .expect("json");
    let mut out = Vec::with_capacity(config.len() + manifest.len() + 4096);
    for (name, bytes) in [("config.json", config), ("manifest.json", &manifest[..])] {
        out.extend_from_slice(&tar_header(name, bytes.len() as u64));
        out.extend_from_slice(bytes);
        out.resize(out.len() + padding(bytes.len() as u64), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Sends one `/images/load` request and waits for its outcome.
async fn run_load(
    docker: &Docker,
    body: impl futures::Stream<Item = BodyItem> + Send + 'static,
    context: String,
) -> Result<(), ImportError> {
    let mut responses = docker.import_image_stream(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        body,
        None,
    );
    while let Some(item) = responses.next().await {
        let info = item.map_err(|source| ImportError::Docker {
            context: context.clone(),
            source,
        })?;
        if let Some(line) = info.stream {
            tracing::debug!(%context, line = line.trim(), "docker load");
        }
    }
    Ok(())
}

/// Everything one new layer's upload needs.
struct LayerLoad {
    docker: Docker,
    index: usize,
    info: LayerInfo,
    helper_config: Vec<u8>,
    helper_tag: String,
    scratch: PathBuf,
    abort: Arc<AtomicBool>,
    progress_tx: Arc<watch::Sender<(usize, bool)>>,
    progress_rx: watch::Receiver<(usize, bool)>,
}

impl LayerLoad {
    async fn run(&self, source: LayerSource) -> Result<LayerStats, ImportError> {
        let index = self.index;
        let (tx, mut rx) = mpsc::channel::<BodyItem>(CHANNEL_DEPTH);
        let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let docker = self.docker.clone();
        let context = format!("load layer {index}");
        let load = tokio::spawn(async move { run_load(&docker, body, context).await });

        let producer = {
            let tx = tx.clone();
            let info = self.info.clone();
            let scratch = self.scratch.clone();
            let abort = self.abort.clone();
            tokio::task::spawn_blocking(move || {
                let span = tracing::debug_span!("docker_layer", index);
                let _enter = span.enter();
                let mut reader = source.reader;
                write_layer_entry(index, &mut *reader, &info, tx, &scratch, abort)
            })
        };
        let produced = producer
            .await
            .inspect(|r| tracing::debug!(index, ok = r.is_ok(), "layer streamed into upload"))
            .map_err(|e| ImportError::Task(e.to_string()))
            .and_then(|r| r);
        let stats = match produced {
            Ok(stats) => stats,
            Err(e) => {
                tracing::debug!(index, error = %e, "aborting upload");
                if is_echo(&e) {
                    // Docker closed the upload first: its answer says why.
                    drop(tx);
                    let answer = tokio::time::timeout(ABORT_GRACE, load).await;
                    if let Ok(Ok(Err(docker))) = answer {
                        return Err(docker);
                    }
                    return Err(e);
                }
                // Dropping the request mid-body aborts the upload; Docker
                // discards a truncated archive and registers nothing.
                load.abort();
                return Err(e);
            }
        };
        // Wait until the engine holds every earlier layer.
        let mut progress = self.progress_rx.clone();
        let turn = progress
            .wait_for(|(registered, failed)| *failed || *registered >= index)
            .await
            .map(|p| !p.1)
            .unwrap_or(false);
        if !turn {
            load.abort();
            return Err(ImportError::Aborted);
        }
        let tail = archive_tail(&self.helper_config, &self.helper_tag, index + 1);
        if tx.send(Ok(Bytes::from(tail))).await.is_err() {
            tracing::debug!(index, "docker closed the upload early");
        }
        drop(tx);
        load.await.map_err(|e| ImportError::Task(e.to_string()))??;
        tracing::debug!(index, "layer registered by docker");
        self.progress_tx.send_modify(|p| p.0 = p.0.max(index + 1));
        Ok(stats)
    }
}

/// Writes to a bounded channel in fixed chunks from a blocking thread.
struct ChannelWriter {
    tx: mpsc::Sender<BodyItem>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "docker closed the upload"))
    }
}

/// Refuses to pass more than `left` bytes (the size in the tar header).
struct Capped<'a> {
    inner: &'a mut ChannelWriter,
    left: u64,
}

impl Write for Capped<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "layer is larger than its manifest size",
            ));
        }
        let n = self.inner.write(data)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streams layer `index` as the archive's `<index>/layer.tar` entry and
/// verifies it. Returns once every byte of the entry is queued.
fn write_layer_entry(
    index: usize,
    source: &mut dyn Read,
    info: &LayerInfo,
    tx: mpsc::Sender<BodyItem>,
    scratch: &Path,
    abort: Arc<AtomicBool>,
) -> Result<LayerStats, ImportError> {
    let mut out = ChannelWriter {
        tx,
        buf: Vec::with_capacity(CHUNK),
    };
    let send_err = |source: io::Error| ImportError::LayerStream { index, source };
    let name = layer_file_name(index);
    let expected = info.expected(index);
    let (stats, size) = match info.compression {
        Compression::Gzip | Compression::None => {
            // Pass through: Docker decompresses gzip itself.
            out.write_all(&tar_header(&name, info.size))
                .map_err(send_err)?;
            let mut capped = Capped {
                inner: &mut out,
                left: info.size,
            };
            let stats = stream_layer(
                source,
                info.compression,
                expected,
                Some(&mut capped),
                Some(abort),
                &mut |_| Ok(()),
            )?;
            (stats, info.size)
        }
        Compression::Zstd => {
            // Docker 20.10 cannot read zstd; a tar header needs the size
            // first, so the plain tar goes through a scratch file (disk,
            // not memory), then into the upload.
            std::fs::create_dir_all(scratch)
                .map_err(|e| ImportError::io("create scratch dir", scratch, e))?;
            let mut spool = tempfile::tempfile_in(scratch)
                .map_err(|e| ImportError::io("create spool file in", scratch, e))?;
            let stats = stream_layer(
                source,
                info.compression,
                expected,
                None,
                Some(abort),
                &mut |plain| {
                    let mut w = io::BufWriter::with_capacity(CHUNK, &mut spool);
                    io::copy(plain, &mut w)
                        .and_then(|_| w.flush())
                        .map_err(|e| ImportError::io("write spool file in", scratch, e))?;
                    Ok(())
                },
            )?;
            spool
                .seek(io::SeekFrom::Start(0))
                .map_err(|e| ImportError::io("rewind spool file in", scratch, e))?;
            out.write_all(&tar_header(&name, stats.uncompressed_bytes))
                .map_err(send_err)?;
            io::copy(&mut spool, &mut out).map_err(send_err)?;
            (stats, stats.uncompressed_bytes)
        }
    };
    out.write_all(&vec![0u8; padding(size)]).map_err(send_err)?;
    out.flush().map_err(send_err)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_tail_lists_the_prefix_and_ends_the_tar() {
        let tail = archive_tail(b"{}", "a:b", 2);
        assert_eq!(tail.len() % 512, 0);
        let mut archive = tar::Archive::new(&tail[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["config.json", "manifest.json"]);
        let manifest: serde_json::Value = {
            let mut archive = tar::Archive::new(&tail[..]);
            let mut entries = archive.entries().unwrap();
            entries.next();
            serde_json::from_reader(entries.next().unwrap().unwrap()).unwrap()
        };
        assert_eq!(manifest[0]["Layers"][1], "1/layer.tar");
        assert_eq!(manifest[0]["RepoTags"][0], "a:b");
    }
}
