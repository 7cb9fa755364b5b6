//! The gateway's side of a release: resolve at the registry, announce the
//! resolution, and pull the layers the locality lacks into the store once.
//!
//! Layers are cut into chunks as they arrive: each chunk is hashed on the
//! blocking pool, its digest recorded, and the chunk written (and verified)
//! by the store, so memory holds at most one chunk per layer. The store
//! checks the whole blob's sha256 when its last chunk lands. A pull that
//! stops half-way (crash, restart, failover to this node) resumes with a
//! Range request from the first chunk the store does not hold.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use edgeswarm_protocol::release::Release;
use edgeswarm_protocol::wire::{BlobDescriptor, GossipMessage, ReleaseResolution, ReleaseState};
use edgeswarm_protocol::Digest;
use futures::StreamExt;
use tracing::Instrument;

use super::Inner;
use crate::registry::{LayerDescriptor, Platform, Reference};
use crate::swarm::Topic;

/// Layers pulled from the registry at once (dockerd also uses 3).
const PARALLEL_LAYER_PULLS: usize = 3;

/// Pulls `release` as this locality's gateway; failures are reported in
/// the release's status.
pub(super) async fn pull(inner: Arc<Inner>, release: Release) {
    let id = release.id();
    let span = tracing::info_span!("gateway_pull", release = %id, image = %release.image);
    if let Err(e) = pull_inner(&inner, &release).instrument(span).await {
        inner.set_state(&id, ReleaseState::Failed, Some(e));
    }
    let mut state = inner.state.lock().expect("state lock");
    if let Some(t) = state.releases.get_mut(&id) {
        t.pulling = false;
    }
}

async fn pull_inner(inner: &Arc<Inner>, release: &Release) -> Result<(), String> {
    let id = release.id();
    let registry = inner
        .registry
        .as_ref()
        .ok_or_else(|| "elected as gateway without registry access".to_owned())?;
    let reference = Reference::parse(&release.image)
        .map_err(|e| format!("bad image reference {:?}: {e}", release.image))?
        .with_digest(release.manifest);
    let platform = Platform::new(
        &release.platform.os,
        &release.platform.architecture,
        release.platform.variant.as_deref(),
    );
    let resolved = registry
        .resolve(&reference, &platform)
        .await
        .map_err(|e| e.to_string())?;
    if resolved.manifest_digest != release.manifest {
        return Err(format!(
            "registry served manifest {} for {}, the release pins {}",
            resolved.manifest_digest, release.image, release.manifest
        ));
    }
    let store = &inner.store;
    store
        .put_blob(resolved.manifest_digest, resolved.manifest_bytes.clone())
        .await
        .map_err(|e| e.to_string())?;
    store
        .put_blob(resolved.config_digest, resolved.config_bytes.clone())
        .await
        .map_err(|e| e.to_string())?;
    for blob in [resolved.manifest_digest, resolved.config_digest] {
        let _ = inner.swarm.provide(blob).await;
    }
    let cloud = {
        let state = inner.state.lock().expect("state lock");
        state
            .releases
            .get(&id)
            .map(|t| t.bytes_from_cloud.clone())
            .unwrap_or_default()
    };
    cloud.fetch_add(
        (resolved.manifest_bytes.len() + resolved.config_bytes.len()) as u64,
        Ordering::Relaxed,
    );
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
    let signed = edgeswarm_protocol::release::Signed::sign(resolution, &inner.identity);
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
        let providers = inner
            .swarm
            .providers(layer.digest)
            .await
            .unwrap_or_default();
        let me = inner.swarm.local_peer_id();
        if providers.iter().any(|p| *p != me) {
            tracing::info!(layer = %layer.digest, "layer already in the locality; not pulled");
            continue;
        }
        missing.push(layer.clone());
    }
    tracing::info!(
        layers = resolved.layers.len(),
        pulling = missing.len(),
        "gateway pulling missing layers"
    );
    let results: Vec<Result<(), String>> = futures::stream::iter(missing)
        .map(|layer| {
            let cloud = cloud.clone();
            let reference = reference.clone();
            async move { pull_layer(inner, &reference, &layer, &cloud).await }
        })
        .buffer_unordered(PARALLEL_LAYER_PULLS)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Streams one layer from the registry into the store, chunk by chunk.
async fn pull_layer(
    inner: &Arc<Inner>,
    reference: &Reference,
    layer: &LayerDescriptor,
    cloud: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), String> {
    let store = &inner.store;
    let blob = layer.digest;
    let chunk_size = inner.config.chunk_size;
    inner
        .pulling_blobs
        .lock()
        .expect("pulling lock")
        .insert(blob);
    let _unmark = Unmark(inner.clone(), blob);
    store
        .create_blob(blob, layer.size, chunk_size)
        .await
        .map_err(|e| e.to_string())?;
    let held = store
        .bitfield(&blob)
        .map(|b| b.next_zero(0))
        .unwrap_or(Some(0));
    let Some(mut index) = held else {
        return Ok(()); // every chunk already held
    };
    let cs = chunk_size.get() as u64;
    let mut stream = registry_of(inner)?.layer_stream(reference, layer, index as u64 * cs);
    let counter = stream.counter();
    let mut buffer = BytesMut::with_capacity(cs as usize);
    let chunk_len = |i: u32| (layer.size - i as u64 * cs).min(cs) as usize;
    let mut before = 0;
    while let Some(item) = stream.next().await {
        let bytes = item.map_err(|e| e.to_string())?;
        let now = counter.load(Ordering::Relaxed);
        cloud.fetch_add(now - before, Ordering::Relaxed);
        inner.metrics.cloud_bytes.inc_by(now - before);
        before = now;
        buffer.extend_from_slice(&bytes);
        while !buffer.is_empty() && buffer.len() >= chunk_len(index) {
            let chunk = buffer.split_to(chunk_len(index)).freeze();
            store_chunk(inner, blob, index, chunk).await?;
            index += 1;
        }
    }
    if !store.is_complete(&blob) {
        return Err(format!(
            "registry stream for layer {blob} ended at chunk {index} before the layer was complete"
        ));
    }
    let _ = inner.swarm.provide(blob).await;
    tracing::info!(layer = %blob, bytes = layer.size, "layer pulled from the registry");
    Ok(())
}

/// Hashes a chunk off the runtime, records its digest and stores it.
async fn store_chunk(
    inner: &Arc<Inner>,
    blob: Digest,
    index: u32,
    chunk: bytes::Bytes,
) -> Result<(), String> {
    let for_hash = chunk.clone();
    let digest = tokio::task::spawn_blocking(move || Digest::of(&for_hash))
        .await
        .map_err(|e| format!("hashing task failed: {e}"))?;
    inner
        .store
        .add_chunk_digests(blob, index, &[digest])
        .await
        .map_err(|e| e.to_string())?;
    inner
        .store
        .write_chunk(blob, index, chunk)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn registry_of(inner: &Inner) -> Result<&crate::registry::RegistryClient, String> {
    inner
        .registry
        .as_ref()
        .ok_or_else(|| "no registry client".to_owned())
}

/// Removes a blob from the set being pulled when the pull ends, however.
struct Unmark(Arc<Inner>, Digest);

impl Drop for Unmark {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.pulling_blobs.lock() {
            set.remove(&self.1);
        }
    }
}
