//! Gossip handling: [`dispatch`] decodes each message the swarm validated
//! and hands it, typed, to the handler of its kind, one `on_*` function
//! per [`GossipMessage`] variant. The handlers check what the kind needs
//! (trust policy, locality, the signer behind the source peer) and change
//! state only through the release and peer tables.
//!
//! Decoding happens in `dispatch` only, so that once the swarm forwards
//! decoded messages, `dispatch` is the one place that changes.

use std::collections::HashSet;
use std::sync::Arc;

use edgeswarm_protocol::release::SignedRelease;
use edgeswarm_protocol::wire::{
    Availability, AvailabilityBatch, GossipMessage, NodeStatus, SignedChunkDigestUpdate,
    SignedReleaseResolution,
};
use edgeswarm_protocol::Digest;
use libp2p::PeerId;
use tokio::sync::broadcast;

use super::status::MAX_ANNOUNCED_BLOBS;
use super::{peer_public_key, Inner, SignedRemoval};

/// Handles every validated gossip message until the swarm closes the
/// channel.
pub(super) async fn gossip_loop(
    inner: Arc<Inner>,
    mut rx: broadcast::Receiver<crate::swarm::GossipMessage>,
) {
    loop {
        let msg = match rx.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "gossip handler lagged");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        dispatch(&inner, &msg).await;
    }
}

/// Decodes one gossip message and runs the handler of its kind.
async fn dispatch(inner: &Arc<Inner>, msg: &crate::swarm::GossipMessage) {
    let decoded = match GossipMessage::decode(&msg.data) {
        Ok(d) => d,
        Err(e) => {
            // The swarm already validated it; this would be a bug.
            tracing::warn!(error = %e, "undecodable gossip");
            return;
        }
    };
    let source = msg.source;
    match decoded {
        GossipMessage::Release(signed) => on_release(inner, source, signed),
        GossipMessage::Status(status) => on_status(inner, source, status),
        GossipMessage::Resolution(signed) => on_resolution(source, signed),
        GossipMessage::ChunkDigests(signed) => on_chunk_digests(inner, source, signed).await,
        GossipMessage::Removal(signed) => on_removal(inner, source, signed),
        GossipMessage::Availability(batch) => on_availability(inner, source, batch),
    }
}

/// A release announcement: accepted when it passes this node's trust
/// policy and names its locality, recorded as refused otherwise.
fn on_release(inner: &Arc<Inner>, source: Option<PeerId>, signed: SignedRelease) {
    match inner.check_release(&signed) {
        Ok(release) => inner.accept_release(release),
        Err(e) => inner.refuse(&signed, source, &e),
    }
}

/// A peer's status report: who it is, whether it may pull, and how its
/// releases progress (the liveness that gateway election reads).
fn on_status(inner: &Inner, source: Option<PeerId>, status: NodeStatus) {
    if let Some(peer) = source {
        inner.peers.record_status(peer, status);
    }
}

/// The blobs a peer holds complete: a gateway does not pull what a live
/// peer already holds.
fn on_availability(inner: &Inner, source: Option<PeerId>, batch: AvailabilityBatch) {
    let Some(peer) = source else { return };
    let complete: HashSet<Digest> = batch
        .entries
        .iter()
        .filter(|e| matches!(e.availability, Availability::Complete))
        .map(|e| e.blob)
        .take(MAX_ANNOUNCED_BLOBS)
        .collect();
    inner.peers.record_complete(peer, complete);
}

/// A gateway announces chunk digests of a layer it is pulling. Accepted
/// only from the gateway elected for that release, signed with its own
/// identity: a member that lies cannot poison a transfer.
async fn on_chunk_digests(
    inner: &Arc<Inner>,
    source: Option<PeerId>,
    signed: SignedChunkDigestUpdate,
) {
    let Some(source) = source else { return };
    let Some(key) = peer_public_key(&source) else {
        return;
    };
    let update = match signed.verify_signer(&key) {
        Ok(update) => update.clone(),
        Err(e) => {
            tracing::warn!(%source, error = %e, "forged chunk digests");
            return;
        }
    };
    let gateway = update
        .release_id
        .and_then(|id| inner.releases.gateway_of(&id));
    match gateway {
        Some(Some(gateway)) if gateway == source => {}
        Some(_) => {
            tracing::warn!(%source, blob = %update.blob, "chunk digests from a peer that is not the release's gateway; ignored");
            return;
        }
        None => return, // a release this node does not follow
    }
    let store = &inner.store;
    if let Err(e) = store
        .create_blob(update.blob, update.blob_size, update.chunk_size)
        .await
    {
        tracing::warn!(blob = %update.blob, error = %e, "cannot declare layer");
        return;
    }
    if let Err(e) = store
        .add_chunk_digests(update.blob, update.first_index, &update.digests)
        .await
    {
        tracing::warn!(%source, blob = %update.blob, error = %e, "chunk digests refused");
    }
}

/// A removal request arrived on gossip: checked like a release, then run
/// in the background (bounded; extra requests are dropped and logged).
fn on_removal(inner: &Arc<Inner>, source: Option<PeerId>, signed: SignedRemoval) {
    let checked = inner.check_removal(&signed);
    let removal = match checked {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(from = ?source, error = %e, "removal refused");
            inner.metrics.removals_refused.inc();
            inner
                .releases
                .record_refusal(String::new(), source, e.to_string());
            return;
        }
    };
    let Ok(slot) = inner.removal_slots.clone().try_acquire_owned() else {
        tracing::warn!(image = %removal.image, "too many removals at once; request dropped");
        return;
    };
    let inner = inner.clone();
    tokio::spawn(async move {
        let _slot = slot;
        match inner
            .remove_image(&removal.image, Some(removal.created))
            .await
        {
            Ok(report) => tracing::info!(from = ?source, ?report, "removed on request"),
            Err(e) => {
                tracing::warn!(from = ?source, image = %removal.image, error = %e, "removal request not applied");
                inner.metrics.removals_refused.inc();
                inner
                    .releases
                    .record_refusal(removal.image.clone(), source, e.to_string());
            }
        }
    });
}

/// A gateway says a release is resolved: only informative (nodes read the
/// layers from the verified manifest), but it must come from the node that
/// signed it.
fn on_resolution(source: Option<PeerId>, signed: SignedReleaseResolution) {
    let Some(source) = source else { return };
    let Some(key) = peer_public_key(&source) else {
        tracing::warn!(%source, "resolution from a peer without an ed25519 key");
        return;
    };
    match signed.verify_signer(&key) {
        Ok(resolution) => {
            tracing::debug!(release = %resolution.release_id, gateway = %source, "release resolved");
        }
        Err(e) => tracing::warn!(%source, error = %e, "forged release resolution"),
    }
}
