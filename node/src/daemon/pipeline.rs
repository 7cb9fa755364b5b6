//! The fetch side of a release, run by every targeted node: manifest and
//! config from the swarm (verified by digest), then every layer from the
//! swarm, each streamed from the store into the import sink while its
//! chunks arrive (the store's reader blocks until the next chunk is
//! verified, and its cursor steers the picker's deadline window).
//!
//! How long a node waits follows the release, not a clock: it waits for
//! as long as the release is the desired state of its image, whatever
//! the gateways do meanwhile (a gateway retrying a registry outage, the
//! elected gateway gone and another one elected, no gateway-capable node
//! live at all: status says which). It gives up, with the reason as the
//! release's error, only when the release is superseded, removed or
//! failed here ([`Inner::abandoned`]); every layer reader of its import
//! then fails with that reason, so no blocking thread waits on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeswarm_protocol::release::Release;
use edgeswarm_protocol::wire::ReleaseState;
use edgeswarm_protocol::Digest;
use tracing::Instrument;

use super::error::ReleaseError;
use super::releases::LayerInfo;
use super::Inner;
use crate::import::{import_image, ImageImport, ImportOptions, LayerSource};
use crate::registry::manifest::{parse_manifest, ImageConfig, ManifestDocument};
use crate::store::{BlobReader, ReaderAbort, Store};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Longest wait for a blob of a registry-mirror pull (not a deployed
/// release: it follows no desired state) while no gateway-capable node is
/// live.
const MIRROR_FETCH_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// How often a waiting pipeline checks whether its release is still
/// wanted.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Pause between attempts while no peer holds a blob yet.
const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// How often a layer's digest fill looks again (whether the layer is
/// declared, whether a peer holds it complete): a gap is filled only from
/// a holder's map, and a holder appears when a gateway's pull is over, so
/// a second later costs little against a pull of seconds.
const FILL_INTERVAL: Duration = Duration::from_secs(1);
/// Largest manifest or config read into memory.
const MAX_DOCUMENT_BYTES: u64 = 16 << 20;

/// Runs the release on this node; failures are reported in its status.
pub(super) async fn run(inner: Arc<Inner>, release: Release) {
    let id = release.id();
    let Ok(_slot) = inner.release_slots.clone().acquire_owned().await else {
        return;
    };
    let span = tracing::info_span!("release", release = %id, image = %release.image);
    let result = tokio::select! {
        r = run_inner(&inner, &release).instrument(span) => r,
        _ = inner.shutdown.cancelled() => return,
    };
    match result {
        Ok(()) => {
            inner.set_state(&id, ReleaseState::Done);
            let tracked = inner.releases.get(&id);
            let took = tracked.as_ref().and_then(|t| t.took);
            let progress = tracked.as_ref().map(|t| inner.progress_of(t));
            tracing::info!(
                release = %id,
                seconds = ?took.map(|d| d.as_secs_f64()),
                bytes_from_cloud = progress.as_ref().map(|p| p.bytes_from_cloud),
                bytes_from_peers = progress.as_ref().map(|p| p.bytes_from_peers),
                "release done"
            );
        }
        Err(e) => inner.fail(&id, &e),
    }
}

async fn run_inner(inner: &Arc<Inner>, release: &Release) -> Result<(), ReleaseError> {
    let id = release.id();
    inner.set_state(&id, ReleaseState::Resolving);
    let manifest_bytes = fetch_document(inner, id, release.manifest).await?;
    let manifest = match parse_manifest(None, &manifest_bytes) {
        Ok(ManifestDocument::Image(m)) => m,
        Ok(ManifestDocument::Index(_)) => return Err(ReleaseError::PinsIndex),
        Err(source) => {
            return Err(ReleaseError::Manifest {
                digest: release.manifest,
                source,
            })
        }
    };
    let config_digest = parse_digest(&manifest.config.digest, || {
        "manifest config digest".to_owned()
    })?;
    // The verified manifest pins every blob's size: a chunk map or a
    // gateway layout of another size is refused (and its sender banned).
    let mut pinned_sizes = vec![(config_digest, manifest.config.size)];
    for descriptor in &manifest.layers {
        let digest = parse_digest(&descriptor.digest, || {
            format!("layer digest {}", descriptor.digest)
        })?;
        pinned_sizes.push((digest, descriptor.size));
    }
    for (digest, size) in &pinned_sizes {
        inner.store.expect_size(*digest, *size)?;
    }
    // The layers' pinned sizes (the config's comes first).
    let layer_sizes = &pinned_sizes[1..];
    // What was here before counts as held, not fetched: measured before
    // the downloads start (a small layer may complete during the config's
    // round trip). Chunks of a layer left partial count too: a gateway
    // restarted mid-pull showed the chunks it had kept as bytes from
    // peers (15.7 MB of a 64.4 MB layer it took none of from peers).
    let held_before = layer_sizes
        .iter()
        .map(|(digest, _)| inner.store.held_bytes(digest))
        .sum();
    // Every layer downloads at once, starting now rather than once the
    // config is here: its round trip (100-170 ms at a release's start,
    // when peers' stream channels overflow and sessions are opened again)
    // was time the gateway's uplink, the only way into the locality for
    // the layer it pulls, stayed idle (10 nodes at 100 Mbit/s: the gateway
    // had taken in 3.5 MB more than it had uploaded 0.5 s into the pull).
    // Back to back, no effect on T(10) was measurable against the
    // testnet's run-to-run spread (`issue11-startup-2026-12-01`).
    let mut fetches = tokio::task::JoinSet::new();
    for &(digest, _) in layer_sizes {
        let inner = inner.clone();
        fetches.spawn(async move { fetch_blob(&inner, id, digest).await });
    }
    let config_bytes = fetch_document(inner, id, config_digest).await?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(ReleaseError::Config)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ReleaseError::LayerCount {
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    let mut layers = Vec::new();
    for (descriptor, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let digest = parse_digest(&descriptor.digest, || {
            format!("layer digest {}", descriptor.digest)
        })?;
        let diff_id = parse_digest(diff_id, || format!("diff_id {diff_id}"))?;
        layers.push(LayerInfo {
            digest,
            size: descriptor.size,
            media_type: descriptor.media_type.clone(),
            diff_id,
        });
    }
    inner.releases.set_layers(&id, &layers, held_before);
    inner.set_state(&id, ReleaseState::Fetching);
    // A layer's digests may have a gap no gateway signs again, and the
    // downloader requests only the known prefix: the gap is filled from a
    // holder's map. A layer left partial shows it now; a layer not
    // declared yet only once declared: a node that learns the release
    // while a gateway pulls it (a wiped gateway back, a late joiner)
    // declares it with the first digest update it accepts, the earlier
    // ones gone. Filled only when found partial here, such a layer was
    // never filled, and the node stayed in Fetching with every peer done
    // (`gateway_restart`'s wiped gateway: Fetching, then its layer
    // declared 94 ms later with no digest for its first 51 chunks).
    for layer in &layers {
        if !inner.store.is_complete(&layer.digest) {
            tokio::spawn(fill_digests_once_declared(inner.clone(), id, layer.digest));
        }
    }

    // Every reader of the import fails with the reason once the release
    // is abandoned (superseded, removed, failed).
    let give_up = Arc::new(GiveUp::default());
    let _watcher = {
        let inner = inner.clone();
        let give_up = give_up.clone();
        AbortOnDrop(tokio::spawn(async move {
            let reason = until_abandoned(&inner, &id).await;
            give_up.set(reason);
        }))
    };
    // The import starts now, not once every layer is declared: a layer is
    // declared only when its first chunk digests arrive, and a gateway
    // pulls layers in order, so waiting here would hold the first layer's
    // import back until the last layer's download began.
    let sources = layers
        .iter()
        .map(|layer| LayerSource {
            media_type: layer.media_type.clone(),
            diff_id: layer.diff_id,
            reader: Box::new(DeclaredReader {
                store: inner.store.clone(),
                blob: layer.digest,
                give_up: give_up.clone(),
                shutdown: inner.shutdown.clone(),
                reader: None,
            }),
            // The store's reader re-verifies each chunk it returns and
            // ends only after the whole-blob check.
            checked_blob: Some(layer.digest),
        })
        .collect();
    let image = ImageImport {
        reference: release.image.clone(),
        config_bytes: config_bytes.clone(),
        manifest_bytes: manifest_bytes.clone(),
        layers: sources,
    };
    let imported = import_image(
        &inner.sink,
        image,
        &ImportOptions {
            unpack: inner.config.unpack,
            dir: inner.config.dir,
            ..ImportOptions::default()
        },
    )
    .await;
    if let Some(reason) = give_up.reason() {
        return Err(ReleaseError::Abandoned(reason));
    }
    while let Some(result) = fetches.join_next().await {
        result.map_err(|source| ReleaseError::Task {
            what: "fetch",
            source,
        })??;
    }
    let report = imported?;
    let mut pinned = vec![release.manifest, config_digest];
    pinned.extend(layers.iter().map(|l| l.digest));
    inner.store.pin(&release.image, &pinned).await?;
    tracing::info!(location = %report.location, "image imported");
    Ok(())
}

/// Fetches a small document blob (manifest, config) and reads it.
async fn fetch_document(
    inner: &Arc<Inner>,
    release: Digest,
    digest: Digest,
) -> Result<Vec<u8>, ReleaseError> {
    fetch_blob(inner, release, digest).await?;
    let path = inner
        .store
        .blob_path(&digest)
        .ok_or(ReleaseError::Vanished(digest))?;
    let io = |source| ReleaseError::Io {
        path: path.clone(),
        source,
    };
    let len = tokio::fs::metadata(&path).await.map_err(io)?.len();
    if len > MAX_DOCUMENT_BYTES {
        return Err(ReleaseError::TooLarge { digest, len });
    }
    tokio::fs::read(&path).await.map_err(io)
}

/// Parses an OCI digest of the manifest or config; `what` names it in the
/// error.
fn parse_digest(s: &str, what: impl FnOnce() -> String) -> Result<Digest, ReleaseError> {
    Digest::parse_oci(s).map_err(|source| ReleaseError::Digest {
        what: what(),
        source,
    })
}

/// Brings a blob into the store: from peers, or by waiting for this node's
/// own registry pull. Retries while nobody holds it yet, for as long as
/// release `release` is wanted ([`Inner::abandoned`]); a registry-mirror
/// pull gives up after [`MIRROR_FETCH_DEADLINE`] without a live gateway.
pub(super) async fn fetch_blob(
    inner: &Arc<Inner>,
    release: Digest,
    digest: Digest,
) -> Result<(), ReleaseError> {
    let deployed = inner.follows_desired(&release);
    let mut started = Instant::now();
    let mut last_error = String::new();
    loop {
        if inner.store.is_complete(&digest) {
            return Ok(());
        }
        if inner.shutdown.is_cancelled() {
            return Err(ReleaseError::ShuttingDown);
        }
        if let Some(reason) = inner.abandoned(&release) {
            return Err(ReleaseError::Abandoned(reason));
        }
        if inner.config.gateway || inner.peers.any_live_gateway() {
            started = Instant::now();
        }
        if !deployed && started.elapsed() > MIRROR_FETCH_DEADLINE {
            return Err(ReleaseError::Unavailable {
                blob: digest,
                secs: MIRROR_FETCH_DEADLINE.as_secs(),
                last_error,
            });
        }
        if inner.releases.pulls_itself(&release, &digest) {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        }
        // The blob may also complete by another path meanwhile (this node's
        // own registry pull, a small blob put whole): stop waiting then.
        let fetched = tokio::select! {
            r = inner.swarm.fetch_blob(digest, None) => r,
            () = until_complete(inner, digest) => Ok(()),
            reason = until_abandoned(inner, &release) => {
                return Err(ReleaseError::Abandoned(reason));
            }
        };
        match fetched {
            Ok(()) => return Ok(()),
            Err(e) => {
                last_error = e.to_string();
                tracing::debug!(blob = %digest, error = %last_error, "blob not fetched yet");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Resolves, with the reason, once release `id` is abandoned
/// ([`Inner::abandoned`]).
async fn until_abandoned(inner: &Inner, id: &Digest) -> String {
    loop {
        if let Some(reason) = inner.abandoned(id) {
            return reason;
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

impl Inner {
    /// Whether release `id` is a deployed release this node tracks (its
    /// waits follow the desired state), not a registry-mirror pull or an
    /// id nobody tracks.
    fn follows_desired(&self, id: &Digest) -> bool {
        self.releases
            .get(id)
            .is_some_and(|t| !super::mirror::is_mirror(&t.release))
    }

    /// Why this node should stop waiting for release `id`, when it
    /// should: it failed here, or the desired state of its image is now
    /// a newer release or a removal. `None` (keep waiting) for anything
    /// else, however long the gateways take: a gateway retrying an outage
    /// or being replaced is no reason to give up. Mirror pulls and ids not
    /// tracked are not judged here.
    pub(super) fn abandoned(&self, id: &Digest) -> Option<String> {
        use super::desired::Entry;
        let t = self.releases.get(id)?;
        if t.state == ReleaseState::Failed {
            return Some(format!(
                "the release failed here: {}",
                t.error.as_deref().unwrap_or("no reason given")
            ));
        }
        if super::mirror::is_mirror(&t.release) {
            return None;
        }
        let image = &t.release.image;
        match self.desired.get(image)? {
            Entry::Release(newer) if newer.release_id() != *id => Some(format!(
                "superseded by release {} (seq {}) of {image}",
                newer.release_id(),
                newer.body_unverified().seq
            )),
            Entry::Removal(removal) => Some(format!(
                "{image} was removed from the locality (removal seq {})",
                removal.body_unverified().seq
            )),
            Entry::Release(_) => None,
        }
    }
}

/// Aborts a task when dropped (a pipeline's watcher ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a release's pipeline gives up, once it does: set once, it fails
/// every layer reader of the import, those still waiting for their layer
/// to be declared and those blocked on a chunk.
#[derive(Default)]
struct GiveUp {
    /// The reason, once set.
    reason: Mutex<Option<String>>,
    /// The readers opened so far.
    aborts: Mutex<Vec<ReaderAbort>>,
}

impl GiveUp {
    /// Records `reason` (the first one stays) and fails every reader.
    fn set(&self, reason: String) {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        for abort in self.aborts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            abort.abort();
        }
    }

    /// The reason, once set.
    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds a reader; it fails at once when the reason is set already.
    fn register(&self, abort: ReaderAbort) {
        self.aborts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(abort.clone());
        // Checked after the push: a concurrent `set` either sees this
        // reader or has set the reason before this check.
        if self.reason().is_some() {
            abort.abort();
        }
    }
}

/// Fills the chunk digests of a layer left partial, with a gap in its
/// digests (updates gossiped while this node was down, or before it had
/// learned the release or elected its gateway, are gone for good), from
/// a live peer holding the layer complete. Ends once every digest is known,
/// the layer completes, or the release is no longer tracked.
pub(super) async fn fill_digests(inner: Arc<Inner>, release: Digest, blob: Digest) {
    loop {
        // Digests from a peer's map count: they are provisional, and the
        // download confirms or refutes them.
        let known = inner
            .store
            .blob_info(&blob)
            .is_some_and(|i| i.digests_known == i.chunk_count)
            || inner.store.is_complete(&blob);
        if known || inner.shutdown.is_cancelled() || inner.releases.get(&release).is_none() {
            return;
        }
        let holders = inner.peers.holders(&blob);
        if !holders.is_empty() {
            match inner.swarm.fill_chunk_map(blob, holders).await {
                Ok(true) => {
                    tracing::info!(%blob, "missed chunk digests filled from a peer's map");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(%blob, error = %e, "chunk map not filled yet"),
            }
        }
        tokio::time::sleep(FILL_INTERVAL).await;
    }
}

/// [`fill_digests`] once `blob` is declared (by a resolution, a digest
/// update or a peer's map). While it is not, the download asks a holder
/// for the map itself; the fill is for a gap in digests declared since.
async fn fill_digests_once_declared(inner: Arc<Inner>, release: Digest, blob: Digest) {
    loop {
        if inner.store.is_complete(&blob)
            || inner.shutdown.is_cancelled()
            || inner.releases.get(&release).is_none()
        {
            return;
        }
        if inner.store.blob_info(&blob).is_some() {
            return fill_digests(inner, release, blob).await;
        }
        tokio::time::sleep(FILL_INTERVAL).await;
    }
}

/// Resolves once the store holds `digest` complete.
async fn until_complete(inner: &Inner, digest: Digest) {
    while !inner.store.is_complete(&digest) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A layer's reader that opens the store's [`BlobReader`] once the store
/// knows the blob's layout (its first read blocks until then), so that an
/// import can begin with the layers that are already arriving. It waits
/// for as long as its release is wanted: it fails only at shutdown or
/// once the pipeline gives up ([`GiveUp`]), with the reason.
struct DeclaredReader {
    /// The store the blob will be declared in.
    store: Store,
    /// The layer blob.
    blob: Digest,
    /// Set when the pipeline gives the release up.
    give_up: Arc<GiveUp>,
    /// The node's shutdown: stop waiting.
    shutdown: CancellationToken,
    /// The store's reader, once declared.
    reader: Option<BlobReader>,
}

impl std::io::Read for DeclaredReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Runs on the import's blocking thread: sleeping here blocks no
        // async task.
        while self.reader.is_none() {
            if let Some(reason) = self.give_up.reason() {
                return Err(std::io::Error::other(format!(
                    "layer {} never became available: {reason}",
                    self.blob
                )));
            }
            if self.store.blob_info(&self.blob).is_some() {
                let reader = self
                    .store
                    .reader(self.blob)
                    .map_err(std::io::Error::other)?;
                self.give_up.register(reader.abort_handle());
                self.reader = Some(reader);
            } else if self.shutdown.is_cancelled() {
                return Err(std::io::Error::other(format!(
                    "layer {} never became available: the node is shutting down",
                    self.blob
                )));
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let read = self.reader.as_mut().expect("set above").read(buf);
        read.map_err(|e| match self.give_up.reason() {
            Some(reason) => std::io::Error::other(format!("layer {}: {reason}", self.blob)),
            None => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use bytes::Bytes;
    use edgeswarm_protocol::chunkmap::{ChunkMap, ChunkSize};

    use super::*;
    use crate::store::StoreConfig;

    fn reader(store: &Store, blob: Digest, shutdown: CancellationToken) -> DeclaredReader {
        DeclaredReader {
            store: store.clone(),
            blob,
            give_up: Arc::new(GiveUp::default()),
            shutdown,
            reader: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn declared_reader_waits_for_the_blob_then_streams_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
            .await
            .unwrap();
        let bytes: Vec<u8> = (0..3 * 65536u32 + 100).map(|i| (i % 251) as u8).collect();
        let blob = Digest::of(&bytes);
        let mut r = reader(&store, blob, CancellationToken::new());
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!read.is_finished(), "returned before the blob was declared");

        let map = ChunkMap::from_bytes(&bytes, ChunkSize::MIN);
        store.put_chunk_map(blob, &map).await.unwrap();
        for i in 0..map.chunk_count() {
            let range = map.chunk_range(i).unwrap();
            let chunk = Bytes::copy_from_slice(&bytes[range.start as usize..range.end as usize]);
            store.write_chunk(blob, i, chunk).await.unwrap();
        }
        let out = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("reader finished")
            .unwrap()
            .unwrap();
        assert!(
            out == bytes,
            "the reader returned other bytes than the blob's"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn declared_reader_gives_up_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
            .await
            .unwrap();
        let blob = Digest::of(b"never declared");
        let shutdown = CancellationToken::new();
        let mut r = reader(&store, blob, shutdown.clone());
        let read = tokio::task::spawn_blocking(move || r.read(&mut [0u8; 16]));
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        let err = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("reader returned after shutdown")
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("never became available"),
            "unexpected error: {err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn declared_reader_waits_until_given_up_and_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
            .await
            .unwrap();
        // Two readers: one whose layer is never declared, one blocked on
        // the second chunk of a declared layer.
        let bytes: Vec<u8> = (0..2 * 65536u32).map(|i| (i % 253) as u8).collect();
        let blob = Digest::of(&bytes);
        let map = ChunkMap::from_bytes(&bytes, ChunkSize::MIN);
        store.put_chunk_map(blob, &map).await.unwrap();
        let first = map.chunk_range(0).unwrap();
        let chunk = Bytes::copy_from_slice(&bytes[first.start as usize..first.end as usize]);
        store.write_chunk(blob, 0, chunk).await.unwrap();
        let give_up = Arc::new(GiveUp::default());
        let mut undeclared = reader(&store, Digest::of(b"never"), CancellationToken::new());
        undeclared.give_up = give_up.clone();
        let mut partial = reader(&store, blob, CancellationToken::new());
        partial.give_up = give_up.clone();
        let a = tokio::task::spawn_blocking(move || undeclared.read(&mut [0u8; 16]));
        let b = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            partial.read_to_end(&mut out).map(|_| 0)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!a.is_finished() && !b.is_finished(), "gave up by itself");
        give_up.set("superseded by release sha256:x (seq 2) of app".into());
        for read in [a, b] {
            let err = tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .expect("the reader returned once given up")
                .unwrap()
                .unwrap_err();
            assert!(err.to_string().contains("superseded by release"), "{err}");
        }
    }
}
