//! The gateway's side of a release: resolve at the registry, announce the
//! resolution, and pull the layers the locality lacks into the store once.
//!
//! Layers are cut into chunks as they arrive: each chunk is hashed on the
//! blocking pool, its digest recorded, and the chunk written (and verified)
//! by the store while the stream is read on, so memory holds a few chunks
//! per layer ([`CHUNKS_STORED_AT_ONCE`] and a partial one); their
//! digests are gossiped in order beside the pull. The store
//! checks the whole blob's sha256 when its last chunk lands. A pull that
//! stops half-way (crash, restart, failover to this node) resumes with a
//! Range request from the first chunk the store does not hold.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeswarm_protocol::release::Release;
use edgeswarm_protocol::wire::{
    BlobDescriptor, ChunkDigestUpdate, GossipMessage, ReleaseResolution, ReleaseState,
};
use edgeswarm_protocol::Digest;
use futures::StreamExt;
use tracing::Instrument;

use super::error::ReleaseError;
use super::releases::Retrying;
use super::Inner;
use crate::registry::{LayerDescriptor, Platform, Reference, RegistryClient};
use crate::swarm::Topic;

/// Layers pulled from the registry at once. One, in manifest order: every
/// importer consumes layers in that order, so the first layer completes
/// after 1/n of the transfer instead of near its end (dockerd's 3 parallel
/// downloads finish together and leave all extraction for the end), and
/// one TCP stream fills a cloud link of LAN-like RTT. Measured with
/// `edgeswarm-testnet pull-bench` (README).
const PARALLEL_LAYER_PULLS: usize = 1;

/// Layers up to this size are pulled beside the others, from the start
/// of the pull, instead of in turn with them.
///
/// Pulled after a big layer, a small one reached the locality last,
/// queued behind the big layer's remaining chunks on every node: in a
/// 10-node run at 100 Mbit/s (single layout, 46 MB layer then 0.9 and 1.1
/// MB ones) the nodes had the small layers 1.1-1.2 s after the gateway,
/// 0.25-0.4 s after their big layer, and that was the run's tail. Pulled
/// before it, in turn, each small layer costs a fixed round of registry
/// requests and store fsyncs while the link idles: 0.06-0.1 s each on
/// the testnet, whose cloud link has no delay (the kernel has no netem),
/// so the big layer still ended at the same time there (`experiment
/// --nodes 1,5,10`, interleaved: the image's last byte at +4.15-4.32 s
/// either way). Against a registry 50-200 ms away, which redirects blob
/// requests to a storage host, those rounds cost a few round trips per
/// small layer; beside the big layer they overlap it, and the small
/// layers still arrive long before it ends.
const SMALL_LAYER_MAX: u64 = 2 * 1024 * 1024;

/// Small layers (≤ [`SMALL_LAYER_MAX`]) pulled at once at most: an
/// image of many small layers does not open a connection per layer.
const SMALL_LAYERS_AT_ONCE: usize = 4;

/// How the gateway pulls `missing`: the small layers (≤
/// [`SMALL_LAYER_MAX`]), [`SMALL_LAYERS_AT_ONCE`] at a time, beside the
/// others, which go [`PARALLEL_LAYER_PULLS`] at a time; each group in
/// manifest order.
fn pull_plan(missing: Vec<LayerDescriptor>) -> (Vec<LayerDescriptor>, Vec<LayerDescriptor>) {
    missing
        .into_iter()
        .partition(|layer| layer.size <= SMALL_LAYER_MAX)
}

/// First pause before a failed pull is tried again.
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between two attempts (the pause doubles up to it).
pub(super) const RETRY_MAX: Duration = Duration::from_secs(60);

/// Pulls `release` as this locality's gateway. A transient failure (the
/// registry unreachable or failing) is retried with backoff ([`RETRY_FIRST`]
/// doubling to [`RETRY_MAX`]) for as long as the release is still the
/// desired state of its image and this node its elected gateway, with the
/// reason in the release's status meanwhile; other failures are final.
pub(super) async fn pull(inner: Arc<Inner>, release: Release) {
    let id = release.id();
    let me = inner.swarm.local_peer_id();
    let mut pause = RETRY_FIRST;
    let mut attempt = 0u32;
    loop {
        let span = tracing::info_span!("gateway_pull", release = %id, image = %release.image);
        let result = tokio::select! {
            r = pull_inner(&inner, &release).instrument(span) => r,
            _ = inner.shutdown.cancelled() => return,
        };
        match result {
            Ok(()) => {
                inner.releases.set_waiting(&id, None);
                // A gateway the release does not select has nothing to
                // import: its part is done once the layers are in the
                // locality.
                if !inner.targets(&release) {
                    inner.set_state(&id, ReleaseState::Done);
                }
                break;
            }
            Err(ReleaseError::NotElected) => {
                // Two gateways acted at once (a healed partition, a
                // restart racing a failover): the better-ranked one goes
                // on, this one leaves the rest of the layers to it. A
                // later election starts a pull again if need be.
                inner.releases.set_waiting(&id, None);
                tracing::info!(release = %id, "another gateway acts on the release; pull stopped");
                break;
            }
            Err(e) if e.is_transient() && inner.still_desired(&release) => {
                attempt += 1;
                tracing::warn!(release = %id, attempt, error = %e, retry_in = ?pause, "gateway pull failed; retrying");
                inner.releases.set_waiting(
                    &id,
                    Some(Retrying {
                        cause: e.retry_cause(),
                        attempt,
                        next_at: Instant::now() + pause,
                    }),
                );
                inner.status_changed.notify_one();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = inner.shutdown.cancelled() => return,
                }
                pause = (pause * 2).min(RETRY_MAX);
                let elected = inner.releases.gateway_of(&id) == Some(Some(me));
                if !inner.still_desired(&release) || !elected {
                    // Superseded, removed, or another gateway took it over:
                    // a later election starts a pull again if need be.
                    inner.releases.set_waiting(&id, None);
                    tracing::info!(release = %id, elected, "gateway pull no longer retried");
                    break;
                }
            }
            Err(e) => {
                inner.releases.set_waiting(&id, None);
                inner.fail(&id, &e);
                break;
            }
        }
    }
    inner.releases.pull_finished(&id);
}

impl Inner {
    /// Whether `release` is still tracked, unfinished here or still being
    /// pulled for the locality, and the desired state of its image (not
    /// superseded by a newer release, nor removed).
    pub(super) fn still_desired(&self, release: &Release) -> bool {
        let id = release.id();
        let tracked = self
            .releases
            .get(&id)
            .is_some_and(|t| t.state != ReleaseState::Failed);
        // Mirror releases are never in the desired state: wanted while
        // tracked.
        let desired = super::mirror::is_mirror(release)
            || matches!(
                self.desired.get(&release.image),
                Some(super::desired::Entry::Release(r)) if r.release_id() == id
            );
        tracked && desired
    }
}

async fn pull_inner(inner: &Arc<Inner>, release: &Release) -> Result<(), ReleaseError> {
    let id = release.id();
    let registry = inner.registry.as_ref().ok_or(ReleaseError::NoRegistry)?;
    let reference = Reference::parse(&release.image)
        .map_err(|source| ReleaseError::Reference {
            image: release.image.clone(),
            source,
        })?
        .with_digest(release.manifest);
    // A later pull of the release (see `Tracked::resolved`) reuses what
    // the first one resolved: the manifest is pinned, so it cannot change.
    let (resolved, fresh) = match inner.releases.resolution(&id) {
        Some(resolved) => (resolved, false),
        None => {
            let platform = Platform::from(&release.platform);
            let resolved = registry.resolve(&reference, &platform).await?;
            if resolved.manifest_digest != release.manifest {
                return Err(ReleaseError::ManifestMismatch {
                    served: resolved.manifest_digest,
                    image: release.image.clone(),
                    pinned: release.manifest,
                });
            }
            let resolved = Arc::new(resolved);
            inner.releases.keep_resolution(&id, resolved.clone());
            (resolved, true)
        }
    };
    let store = &inner.store;
    // Local and idempotent: a removal or rot since the last pull is healed.
    store
        .put_blob(resolved.manifest_digest, resolved.manifest_bytes.clone())
        .await?;
    store
        .put_blob(resolved.config_digest, resolved.config_bytes.clone())
        .await?;
    let cloud = inner.releases.cloud_counter(&id);
    if fresh {
        for blob in [resolved.manifest_digest, resolved.config_digest] {
            let _ = inner.swarm.provide(blob).await;
        }
        cloud.fetch_add(
            (resolved.manifest_bytes.len() + resolved.config_bytes.len()) as u64,
            Ordering::Relaxed,
        );
    }
    let resolution = ReleaseResolution {
        release_id: id,
        manifest: BlobDescriptor {
            digest: resolved.manifest_digest,
            size: resolved.manifest_bytes.len() as u64,
            media_type: resolved.manifest_media_type.clone(),
        },
        config: BlobDescriptor {
            digest: resolved.config_digest,
            size: resolved.config_bytes.len() as u64,
            media_type: resolved.config_media_type.clone(),
        },
        layers: resolved
            .layers
            .iter()
            .map(|l| BlobDescriptor {
                digest: l.digest,
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect(),
        chunk_size: inner.config.chunk_size,
    };
    let signed = edgeswarm_protocol::signing::Signed::sign(resolution, &inner.identity);
    if let Err(e) = inner
        .swarm
        .publish(Topic::Releases, GossipMessage::Resolution(signed).encode())
        .await
    {
        tracing::debug!(error = %e, "resolution not gossiped");
    }

    // Algorithm 1 of the Streamed Deployment paper: pull only what the
    // locality lacks.
    let mut missing = Vec::new();
    for layer in &resolved.layers {
        if store.is_complete(&layer.digest) {
            continue;
        }
        let holders = inner.peers.holders(&layer.digest);
        if !holders.is_empty() {
            if let Some(holder) = confirmed_holder(inner, layer, holders).await {
                tracing::info!(layer = %layer.digest, %holder, "layer already in the locality; not pulled");
                continue;
            }
            tracing::warn!(layer = %layer.digest, "peers claim to hold the layer but none served it; pulling it");
        }
        missing.push(layer.clone());
    }
    if fresh || !missing.is_empty() {
        tracing::info!(
            layers = resolved.layers.len(),
            pulling = missing.len(),
            "gateway pulling missing layers"
        );
    } else {
        // The election re-runs a finished pull each status tick until
        // this node's import ends: nothing to say when the locality lacks
        // nothing.
        tracing::debug!(
            layers = resolved.layers.len(),
            "gateway pull: nothing missing"
        );
    }
    // Mark the whole plan before this node's fetch pipeline may ask peers
    // for layers: it waits for these instead of downloading them twice.
    let blobs: Vec<Digest> = missing.iter().map(|layer| layer.digest).collect();
    let _plan = inner.releases.plan_pull(&id, &blobs);
    let (small, large) = pull_plan(missing);
    let pull = |layer: LayerDescriptor| {
        let cloud = cloud.clone();
        let reference = reference.clone();
        async move { pull_layer(inner, registry, id, &reference, &layer, &cloud).await }
    };
    let (small, large): (Vec<_>, Vec<_>) = tokio::join!(
        futures::stream::iter(small)
            .map(pull)
            .buffered(SMALL_LAYERS_AT_ONCE)
            .collect(),
        futures::stream::iter(large)
            .map(pull)
            .buffered(PARALLEL_LAYER_PULLS)
            .collect(),
    );
    small
        .into_iter()
        .chain(large)
        .collect::<Result<(), ReleaseError>>()
}

/// How long a gateway waits for a peer that claims to hold a layer to
/// serve its chunk map before it pulls the layer itself.
pub(super) const CLAIM_CHECK: Duration = Duration::from_secs(5);

/// Peers asked at once to confirm that they hold a layer.
const CLAIMS_CHECKED: usize = 4;

/// One of `holders` (peers whose availability gossip says they hold
/// `layer` complete) that backs the claim within [`CLAIM_CHECK`]: it
/// serves a chunk map of the layer's size and a random chunk matching it
/// (a peer that lies in either is banned). Gossip alone is not enough: a
/// member that announces layers it does not hold (or holds only the map
/// of) would make the gateway skip them, and the locality would wait for
/// them forever.
async fn confirmed_holder(
    inner: &Arc<Inner>,
    layer: &LayerDescriptor,
    holders: Vec<libp2p::PeerId>,
) -> Option<libp2p::PeerId> {
    let mut asks: futures::stream::FuturesUnordered<_> = holders
        .into_iter()
        .take(CLAIMS_CHECKED)
        .map(|peer| async move {
            let holds = inner
                .swarm
                .probe_holder(peer, layer.digest, layer.size)
                .await;
            (peer, holds)
        })
        .collect();
    let check = async {
        while let Some((peer, holds)) = asks.next().await {
            if holds {
                return Some(peer);
            }
            tracing::info!(%peer, layer = %layer.digest, "a peer announced a layer it does not serve");
        }
        None
    };
    tokio::time::timeout(CLAIM_CHECK, check)
        .await
        .ok()
        .flatten()
}

/// Streams one layer from the registry into the store, chunk by chunk.
async fn pull_layer(
    inner: &Arc<Inner>,
    registry: &RegistryClient,
    release_id: Digest,
    reference: &Reference,
    layer: &LayerDescriptor,
    cloud: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), ReleaseError> {
    let store = &inner.store;
    let blob = layer.digest;
    // Two releases of one manifest (a node's mirror release and the
    // gateway's own, made a few milliseconds apart) are pulled at once:
    // each would stream the whole layer from the registry (measured: the
    // cloud link carried 2.0x the image for 5 containerds pulling through
    // their mirrors). The second waits here and pulls only what the first
    // left missing.
    let _turn = inner.layer_pulls.turn(blob).await;
    // Every node derives a layer's chunk size the same way (§9 of the
    // protocol): huge layers take larger chunks.
    let chunk_size =
        inner
            .config
            .chunk_size
            .for_blob(layer.size)
            .ok_or(ReleaseError::LayerTooLarge {
                blob,
                size: layer.size,
            })?;
    store.create_blob(blob, layer.size, chunk_size).await?;
    // Peers look for providers as soon as they learn of the layer.
    let _ = inner.swarm.provide(blob).await;
    // Pull every run of chunks this node lacks: all of the layer normally;
    // after a failover, what the previous gateway had not delivered here.
    let mut first_run = true;
    while let Some((first, end)) = next_missing_run(store, &blob) {
        let (digests_tx, digests_rx) = tokio::sync::mpsc::channel(DIGESTS_QUEUED);
        let mut announcer = DigestAnnouncer::new(inner, release_id, layer, chunk_size, first);
        if std::mem::take(&mut first_run) && first > 0 {
            // Resuming (this gateway restarted, or took over): the digests
            // of the chunks it holds went out before, if at all, and a
            // node that was down then, or the update a kill cut off,
            // never had them. Those chunks wait for them until some
            // holder serves the whole map, after this pull (in `faults`
            // seed 4 such nodes fetched nothing for 10-15 s and finished
            // up to 9 s after the gateway).
            if let Some(held) = store.authoritative_digests(&blob, first) {
                announcer.resume_with(held).await;
            }
        }
        let run = PulledRun {
            release_id,
            layer,
            chunk_size,
            first,
            end,
        };
        let (pulled, announcer) = tokio::join!(
            pull_run(inner, registry, reference, &run, cloud, digests_tx),
            announce_digests(announcer, digests_rx),
        );
        announcer.finish(store.is_complete(&blob)).await;
        pulled?;
    }
    if !store.is_complete(&blob) {
        return Err(ReleaseError::Incomplete(blob));
    }
    tracing::info!(layer = %blob, bytes = layer.size, "layer pulled from the registry");
    Ok(())
}

/// Chunks a pull hashes and writes at once while it reads on from the
/// registry. One at a time, reading stopped for each chunk's hash, write,
/// fdatasync and digest gossip (40-120 ms a 512 KiB chunk on a loaded
/// node): a gateway that stored 8 MB/s from a 12 MB/s stream left the
/// rest in its socket, whose autotuned receive buffer grew to several MB,
/// and a kill -9 lost it all (the next pull took it from the cloud again:
/// 1.12-1.20x the image in `faults` seed 4, debug build). On that trial
/// under extra load, 5 runs each: 2 at once gave 1.025-1.068x (mean
/// 1.048x), 4 gave 1.042-1.079x (mean 1.057x), as chunks being stored
/// are lost on a kill too (`testnet/results/issue12-gateway-kill-
/// 2026-12-01/`). But with 2, a gateway serving 9 peers on the 2-core
/// testnet (machine 92-94 % busy) still stored its last chunk 1.4-2.6 s
/// after the registry's last byte had arrived (the bytes waited in its
/// socket), and the swarm waited on it. With 4 that lag was 0.8-1.5 s,
/// and 0.6-1.3 s once the store's data fsync moved to its flusher (6
/// runs before, 3 with 4 alone, 6 with both;
/// `testnet/results/gateway-lag-2026-12-03/`). A read that completes a
/// chunk may start its store while this many run: one more at most (a
/// read is smaller than a chunk).
const CHUNKS_STORED_AT_ONCE: usize = 4;

/// Chunk digests stored but not yet gossiped that a pull may run ahead
/// of its announcements by (32 bytes each): gossip waits on the swarm
/// task, which must not hold up the registry stream.
const DIGESTS_QUEUED: usize = 256;

/// A run `[first, end)` of a layer's chunks pulled with one registry
/// stream.
struct PulledRun<'a> {
    /// The release pulled (this node must stay its gateway).
    release_id: Digest,
    /// The layer.
    layer: &'a LayerDescriptor,
    /// Its chunk size.
    chunk_size: edgeswarm_protocol::ChunkSize,
    /// First chunk of the run.
    first: u32,
    /// One past its last chunk.
    end: u32,
}

/// Streams one run of chunks from the registry into the store, storing up
/// to [`CHUNKS_STORED_AT_ONCE`] chunks while it reads on; sends each
/// stored chunk's digest to `digests` in chunk order.
async fn pull_run(
    inner: &Arc<Inner>,
    registry: &RegistryClient,
    reference: &Reference,
    run: &PulledRun<'_>,
    cloud: &Arc<std::sync::atomic::AtomicU64>,
    digests: tokio::sync::mpsc::Sender<Digest>,
) -> Result<(), ReleaseError> {
    let layer = run.layer;
    let blob = layer.digest;
    let me = inner.swarm.local_peer_id();
    let cs = run.chunk_size.get() as u64;
    let chunk_len = |i: u32| (layer.size - i as u64 * cs).min(cs) as usize;
    let mut stream = registry.layer_stream(reference, layer, run.first as u64 * cs);
    let counter = stream.counter();
    // The chunk being cut from the stream (empty between chunks): a buffer
    // from the store's pool, given back once stored, filled up to `filled`.
    let mut cutting: Vec<u8> = Vec::new();
    let mut filled = 0usize;
    let mut before = 0;
    // The next chunk to cut from the stream.
    let mut next = run.first;
    let mut ended = false;
    let mut storing = futures::stream::FuturesOrdered::new();
    loop {
        if inner.shutdown.is_cancelled() {
            return Err(ReleaseError::ShuttingDown);
        }
        tokio::select! {
            // Stored chunks first: their digests go out in order.
            biased;
            Some(stored) = storing.next(), if !storing.is_empty() => {
                // The announcer outlives this pull (joined with it).
                let _ = digests.send(stored?).await;
            }
            item = stream.next(), if !ended && next < run.end && storing.len() < CHUNKS_STORED_AT_ONCE => {
                // Checked per read: two gateways must not both pull the
                // rest of a layer once they learn of each other.
                if inner.releases.gateway_of(&run.release_id) != Some(Some(me)) {
                    return Err(ReleaseError::NotElected);
                }
                let Some(item) = item else {
                    ended = true;
                    continue;
                };
                let bytes = item?;
                let now = counter.load(Ordering::Relaxed);
                cloud.fetch_add(now - before, Ordering::Relaxed);
                inner.metrics.cloud_bytes.inc_by(now - before);
                before = now;
                let mut rest: &[u8] = &bytes;
                while next < run.end && !rest.is_empty() {
                    let len = chunk_len(next);
                    if cutting.is_empty() {
                        cutting = inner.store.chunk_buffer(len);
                    }
                    let n = (len - filled).min(rest.len());
                    cutting[filled..filled + n].copy_from_slice(&rest[..n]);
                    filled += n;
                    rest = &rest[n..];
                    if filled == len {
                        let chunk = Bytes::from(std::mem::take(&mut cutting));
                        filled = 0;
                        storing.push_back(store_chunk(inner, blob, next, chunk));
                        next += 1;
                    }
                }
            }
            else => break,
        }
    }
    if next < run.end {
        return Err(ReleaseError::StreamEnded {
            blob,
            index: next,
            end: run.end,
        });
    }
    Ok(())
}

/// Gossips the digests a pull stores, in order, until the pull ends;
/// returns the announcer (to say that the layer verified).
async fn announce_digests<'a>(
    mut announcer: DigestAnnouncer<'a>,
    mut digests: tokio::sync::mpsc::Receiver<Digest>,
) -> DigestAnnouncer<'a> {
    while let Some(digest) = digests.recv().await {
        announcer.push(digest).await;
    }
    announcer
}

/// Per layer digest, the lock its registry pull holds on this node.
#[derive(Default)]
pub(super) struct LayerPulls(std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

/// A layer's turn to be pulled; forgets the layer's lock when no other
/// pull waits for it.
pub(super) struct LayerTurn<'a> {
    pulls: &'a LayerPulls,
    blob: Digest,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl LayerPulls {
    /// Waits until no other pull of `blob` runs on this node.
    pub(super) async fn turn(&self, blob: Digest) -> LayerTurn<'_> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(blob)
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        LayerTurn {
            pulls: self,
            blob,
            lock,
            _guard: guard,
        }
    }
}

impl Drop for LayerTurn<'_> {
    fn drop(&mut self) {
        let mut map = self.pulls.0.lock().unwrap_or_else(|p| p.into_inner());
        // The map's, this turn's and its guard's references: nobody waits.
        if Arc::strong_count(&self.lock) <= 3 {
            map.remove(&self.blob);
        }
    }
}

/// The next run `[first, end)` of chunks this node lacks, if any.
fn next_missing_run(store: &crate::store::Store, blob: &Digest) -> Option<(u32, u32)> {
    let bits = store.bitfield(blob)?;
    let first = bits.next_zero(0)?;
    let end = (first..bits.len())
        .find(|&i| bits.get(i))
        .unwrap_or(bits.len());
    Some((first, end))
}

/// Hashes a chunk off the runtime, records its digest and stores it.
async fn store_chunk(
    inner: &Arc<Inner>,
    blob: Digest,
    index: u32,
    chunk: Bytes,
) -> Result<Digest, ReleaseError> {
    let for_hash = chunk.clone();
    let digest = tokio::task::spawn_blocking(move || Digest::of(&for_hash))
        .await
        .map_err(|source| ReleaseError::Task {
            what: "hashing",
            source,
        })?;
    inner
        .store
        .add_chunk_digests(blob, index, &[digest])
        .await?;
    // Hashed once: the digest just computed is the one recorded.
    inner
        .store
        .write_own_chunk(blob, index, chunk, digest)
        .await?;
    Ok(digest)
}

/// Gossips a layer's chunk digests, signed by this gateway, one message per
/// chunk as it is stored, so peers can verify (and so fetch, relay and
/// keep, should this gateway die) chunks long before the layer is
/// complete. Every wait here delays the whole swarm: digests batched for
/// up to 100 ms waited ~170 ms each for the next chunk or two (1 MiB every
/// ~84 ms at 100 Mbit/s); a message per chunk (46 for a 46 MB layer) is
/// light for gossip.
struct DigestAnnouncer<'a> {
    /// The daemon (swarm and identity).
    inner: &'a Arc<Inner>,
    /// The release the layer belongs to.
    release_id: Digest,
    /// The layer.
    layer: &'a LayerDescriptor,
    /// Its chunk size.
    chunk_size: edgeswarm_protocol::ChunkSize,
    /// Index of the next chunk to announce.
    next_index: u32,
    /// Index of the first chunk this pull announces.
    first_index: u32,
    /// The digests announced so far, from `first_index` on (32 bytes a
    /// chunk: 64 KiB for a 1 GiB layer of 512 KiB chunks).
    announced: Vec<Digest>,
}

/// Whether the gateway announces again every digest of its pull so far
/// after the `count`th: at 4, 8, 16, ... (twice the digests in all).
/// Each digest goes out once, as its chunk lands, so a node that learned
/// the release a moment late (its containerd asked a little later, it
/// elected the gateway after the first updates) missed the first ones
/// for good; it could fetch only the chunks after them and had the rest
/// once a holder served the whole map, after the gateway's pull: with 5
/// containerds pulling through their mirrors, the one that followed 0.2 s
/// late had the layer 3.8 s after the others. Announced again, the prefix
/// reaches it before the pull has doubled.
fn announce_again_after(count: usize) -> bool {
    count >= 4 && count.is_power_of_two()
}

impl<'a> DigestAnnouncer<'a> {
    fn new(
        inner: &'a Arc<Inner>,
        release_id: Digest,
        layer: &'a LayerDescriptor,
        chunk_size: edgeswarm_protocol::ChunkSize,
        next_index: u32,
    ) -> Self {
        DigestAnnouncer {
            inner,
            release_id,
            layer,
            chunk_size,
            next_index,
            first_index: next_index,
            announced: Vec::new(),
        }
    }

    /// Takes `held`, the digests of chunks `0..next_index` this node holds
    /// from before, as announced by this pull: announces them at once,
    /// and again with the pull's own ([`announce_again_after`]).
    async fn resume_with(&mut self, held: Vec<Digest>) {
        debug_assert_eq!(held.len() as u32, self.next_index);
        self.first_index = 0;
        self.announced = held;
        self.announce_all().await;
    }

    /// Announces every digest of this pull so far again.
    async fn announce_all(&self) {
        let mut first = self.first_index;
        for batch in self
            .announced
            .chunks(edgeswarm_protocol::wire::MAX_DIGESTS_PER_UPDATE)
        {
            self.announce_at(first, batch.to_vec(), false).await;
            first += batch.len() as u32;
        }
    }

    /// Announces the digest of the next chunk (and, now and then, every
    /// digest of this pull again: [`announce_again_after`]).
    async fn push(&mut self, digest: Digest) {
        self.announce(vec![digest], false).await;
        self.announced.push(digest);
        if announce_again_after(self.announced.len()) {
            self.announce_all().await;
        }
    }

    /// Says that the whole layer verified, if it did.
    async fn finish(mut self, verified: bool) {
        if verified {
            self.announce(Vec::new(), true).await;
        }
    }

    async fn announce(&mut self, digests: Vec<Digest>, final_blob_digest_checked: bool) {
        let count = digests.len() as u32;
        self.announce_at(self.next_index, digests, final_blob_digest_checked)
            .await;
        self.next_index += count;
    }

    /// Gossips `digests` from chunk `first_index` on, signed.
    async fn announce_at(
        &self,
        first_index: u32,
        digests: Vec<Digest>,
        final_blob_digest_checked: bool,
    ) {
        let update = ChunkDigestUpdate {
            release_id: Some(self.release_id),
            blob: self.layer.digest,
            blob_size: self.layer.size,
            chunk_size: self.chunk_size,
            first_index,
            digests,
            final_blob_digest_checked,
        };
        let signed = edgeswarm_protocol::signing::Signed::sign(update, &self.inner.identity);
        if let Err(e) = self
            .inner
            .swarm
            .publish(
                Topic::Releases,
                GossipMessage::ChunkDigests(signed).encode(),
            )
            .await
        {
            tracing::debug!(error = %e, "chunk digests not gossiped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Compression;

    fn layer(n: u8, size: u64) -> LayerDescriptor {
        LayerDescriptor {
            digest: Digest::of(&[n]),
            size,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compression: Compression::Gzip,
            foreign: false,
            urls: Vec::new(),
            diff_id: Digest::of(&[n, n]),
        }
    }

    #[test]
    fn a_pull_announces_its_digests_again_as_it_doubles() {
        let again: Vec<usize> = (1..=100).filter(|&n| announce_again_after(n)).collect();
        assert_eq!(again, vec![4, 8, 16, 32, 64]);
        // Every digest at most twice more in all, whatever the layer.
        for chunks in [1usize, 89, 2048, 100_000] {
            let extra: usize = (1..=chunks).filter(|&n| announce_again_after(n)).sum();
            assert!(extra < 2 * chunks, "{chunks} chunks: {extra} digests again");
        }
    }

    #[test]
    fn small_layers_are_pulled_beside_the_others_and_each_group_keeps_manifest_order() {
        let manifest = vec![
            layer(0, 46_000_000),
            layer(1, 877_759),
            layer(2, 30_000_000),
            layer(3, SMALL_LAYER_MAX),
            layer(4, 193),
            layer(5, SMALL_LAYER_MAX + 1),
        ];
        let (small, large) = pull_plan(manifest);
        let sizes = |v: Vec<LayerDescriptor>| v.iter().map(|l| l.size).collect::<Vec<u64>>();
        assert_eq!(sizes(small), vec![877_759, SMALL_LAYER_MAX, 193]);
        assert_eq!(
            sizes(large),
            vec![46_000_000, 30_000_000, SMALL_LAYER_MAX + 1]
        );
    }
}
