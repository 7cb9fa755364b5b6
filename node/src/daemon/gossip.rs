//! Gossip handling: the swarm decodes and validates each message once and
//! forwards it typed ([`ReceivedGossip`]); [`dispatch`] hands it to the
//! handler of its kind, one `on_*` function per [`GossipMessage`]
//! variant. The handlers check what the kind needs (trust policy,
//! locality, the signer behind the source peer) and change state only
//! through the release and peer tables (and the store, for what a
//! gateway's signed messages declare).

use std::collections::HashSet;
use std::sync::Arc;

use edgeswarm_protocol::release::SignedRelease;
use edgeswarm_protocol::wire::{
    Availability, AvailabilityBatch, GossipMessage, NodeStatus, ReleaseResolution,
    SignedChunkDigestUpdate, SignedReleaseResolution,
};
use edgeswarm_protocol::Digest;
use libp2p::PeerId;
use tokio::sync::broadcast;

use super::desired::{Entry, Offer};
use super::status::MAX_ANNOUNCED_BLOBS;
use super::{peer_public_key, Inner, SignedRemoval};
use crate::store::Store;
use crate::swarm::ReceivedGossip;

/// Releases whose gateway messages are held at once at most.
const MAX_EARLY_RELEASES: usize = 16;
/// Messages held per release at most: a gateway publishes one digest
/// update per chunk, and a node waits at most one status period (2 s) to
/// elect it, ~100 chunks at 25 MB/s.
const MAX_EARLY_PER_RELEASE: usize = 1024;

/// Gateway messages (resolutions, chunk digests) of releases this node
/// follows but has not elected a gateway for yet: held, and replayed
/// through the same checks once a gateway is elected. A node that had not
/// heard the gateway's status when a release arrived elected it 250 ms
/// later, and dropped its resolution and first digests meanwhile; it then
/// fetched the layer only once the gateway's pull was over (8.7 s instead
/// of 4.6 s at 2 nodes).
#[derive(Default)]
pub(super) struct EarlyMessages {
    held: std::sync::Mutex<Vec<(Digest, Vec<ReceivedGossip>)>>,
}

impl EarlyMessages {
    fn hold(&self, release: Digest, msg: ReceivedGossip) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, list)) = held.iter_mut().find(|(id, _)| *id == release) {
            if list.len() < MAX_EARLY_PER_RELEASE {
                list.push(msg);
            }
            return;
        }
        if held.len() >= MAX_EARLY_RELEASES {
            held.remove(0);
        }
        held.push((release, vec![msg]));
    }

    /// The messages held for `release`, in arrival order.
    pub(super) fn take(&self, release: &Digest) -> Vec<ReceivedGossip> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.iter().position(|(id, _)| id == release) {
            Some(i) => held.remove(i).1,
            None => Vec::new(),
        }
    }
}

/// Replays gateway messages held until their release had a gateway
/// (each is checked against it again).
pub(super) async fn replay(inner: &Arc<Inner>, held: Vec<ReceivedGossip>) {
    for msg in held {
        dispatch(inner, msg).await;
    }
}

/// Handles every validated gossip message until the swarm closes the
/// channel.
pub(super) async fn gossip_loop(inner: Arc<Inner>, mut rx: broadcast::Receiver<ReceivedGossip>) {
    loop {
        let msg = match rx.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "gossip handler lagged");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        dispatch(&inner, msg).await;
    }
}

/// Runs the handler of one message's kind.
async fn dispatch(inner: &Arc<Inner>, msg: ReceivedGossip) {
    let source = msg.source;
    match msg.message {
        GossipMessage::Release(signed) => on_release(inner, source, signed),
        GossipMessage::Status(status) => on_status(inner, source, status),
        GossipMessage::Resolution(signed) => on_resolution(inner, source, signed).await,
        GossipMessage::ChunkDigests(signed) => on_chunk_digests(inner, source, signed).await,
        GossipMessage::Removal(signed) => on_removal(inner, source, signed),
        GossipMessage::Availability(batch) => on_availability(inner, source, batch),
    }
}

/// A release announcement: accepted when it passes this node's trust
/// policy, names its locality and is newer than the desired state of its
/// image; recorded as refused otherwise.
fn on_release(inner: &Arc<Inner>, source: Option<PeerId>, signed: SignedRelease) {
    if super::mirror::is_mirror(signed.body_unverified()) {
        // Never part of the desired state: see `mirror`.
        inner.on_mirror_release(source, signed);
        return;
    }
    match inner.admit_release(&signed) {
        Ok(Some(release)) => inner.adopt_learned_release(&signed, release),
        Ok(None) => {} // held already (anti-entropy re-publishes)
        Err(e) => inner.refuse(&signed, source, &e),
    }
}

/// A peer's status report: who it is, whether it may pull, and how its
/// releases progress (the liveness and the acceptances that gateway
/// election reads).
fn on_status(inner: &Arc<Inner>, source: Option<PeerId>, status: NodeStatus) {
    if let Some(peer) = source {
        let candidate = status.gateway_capable && inner.may_be_gateway(&peer);
        let heard = inner.peers.record_status(peer, status);
        if heard.arrived {
            // It has not heard which blobs this node holds: the status
            // loop re-announces them at once (a restarted gateway would
            // pull them from the registry again).
            inner
                .announce_availability
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let push = heard.newly_empty && inner.desired.digest().count > 0;
        if push {
            inner
                .push_to_empty_peer
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if heard.arrived || push {
            // A peer holding nothing: the status loop's anti-entropy pushes
            // to it at once (`should_push`), not at the next 2 s tick.
            inner.status_changed.notify_one();
        }
        if candidate {
            // It may have accepted or declined a release whose election
            // waits for it: elect now, not at the next status tick.
            for id in inner.releases.without_gateway() {
                inner.drive(id);
            }
        }
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
    if let Some(id) = update.release_id {
        vouched(inner, source, id);
    }
    let gateway = update
        .release_id
        .and_then(|id| inner.releases.gateway_of(&id));
    match gateway {
        Some(Some(gateway)) if gateway == source => {}
        Some(None) => {
            if let Some(id) = update.release_id {
                let message = GossipMessage::ChunkDigests(signed);
                let source = Some(source);
                inner.early.hold(id, ReceivedGossip { source, message });
            }
            return;
        }
        Some(_) => {
            tracing::warn!(%source, blob = %update.blob, "chunk digests from a peer that is not the release's gateway; ignored");
            return;
        }
        // A release this node does not follow: still the digests of a
        // layer of one it does follow when they come from that release's
        // gateway (see `Releases::gateway_of_layer`). Without them, a node
        // following only another release could verify no chunk of that
        // layer, and its relays stalled, until the layer's map was
        // complete (7 s of a 9.5 s containerd pull through the mirror).
        None if inner.releases.gateway_of_layer(&update.blob, &source) => {}
        None => return,
    }
    let store = &inner.store;
    if let Err(e) = store
        .create_blob(update.blob, update.blob_size, update.chunk_size)
        .await
    {
        if e.is_false_layout() {
            // Signed by the elected gateway, and contradicting the verified
            // manifest (or what it signed before): the gateway lies.
            tracing::warn!(%source, blob = %update.blob, error = %e, "gateway's layout refused; banning it");
            inner
                .swarm
                .ban(source, format!("false layout of {}: {e}", update.blob));
        } else {
            tracing::warn!(blob = %update.blob, error = %e, "cannot declare layer");
        }
        return;
    }
    match store
        .add_chunk_digests(update.blob, update.first_index, &update.digests)
        .await
    {
        // The gateway's signed digests always win: members whose chunk
        // maps contradicted them lied (their digests and the chunks that
        // rested on them are gone from the store).
        Ok(refuted) => {
            for peer in refuted {
                tracing::warn!(%peer, blob = %update.blob, gateway = %source, "chunk map contradicts the gateway's signed digests; banning its sender");
                inner.swarm.ban(
                    peer,
                    format!(
                        "chunk map of {} contradicts the gateway's signed digests",
                        update.blob
                    ),
                );
            }
        }
        Err(e) => {
            tracing::warn!(%source, blob = %update.blob, error = %e, "chunk digests refused")
        }
    }
}

/// `source` signed a gateway message of release `id`, so it accepted the
/// release: when that is news, elect again before the message is checked
/// against the release's gateway (a candidate's first resolution arrives
/// before its next status report lists the release).
fn vouched(inner: &Arc<Inner>, source: PeerId, id: Digest) {
    // Recorded even before this node follows the release: the gateway's
    // first messages may overtake the release itself.
    if inner.may_be_gateway(&source)
        && inner.peers.vouch(source, id)
        && inner.releases.gateway_of(&id).is_some()
    {
        inner.drive(id);
    }
}

/// A removal request arrived on gossip: checked like a release, then run
/// in the background (bounded; extra requests are dropped and logged).
fn on_removal(inner: &Arc<Inner>, source: Option<PeerId>, signed: SignedRemoval) {
    let checked = inner.check_removal(&signed).and_then(|removal| {
        match inner.desired.offer(Entry::Removal(signed.clone())) {
            Offer::Newer(_) => Ok(Some(removal)),
            Offer::Same => Ok(None),
            Offer::Refused(reason) => Err(super::DaemonError::RemovalRefused(reason)),
        }
    });
    let removal = match checked {
        Ok(Some(r)) => {
            inner.persist_desired();
            r
        }
        Ok(None) => return, // held already (anti-entropy re-publishes)
        Err(e) => {
            tracing::warn!(from = ?source, error = %e, "removal refused");
            inner.metrics.removals_refused.inc();
            inner.releases.record_refusal(
                signed.body_unverified().image.clone(),
                source,
                e.to_string(),
            );
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
        match inner.remove_image(&removal.image, Some(removal.seq)).await {
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

/// A gateway says a release is resolved. Accepted only from the release's
/// elected gateway, signed with its own identity (as chunk digests are).
/// Nodes still read the layers from the manifest the release pins; the
/// resolution lets them declare the blobs at once, so their downloads
/// start without asking peers for chunk maps first (measured: a node held
/// the manifest 0.6-1.1 s after the release, and its layers began
/// arriving only then, while the gateway's pull was already running).
async fn on_resolution(
    inner: &Arc<Inner>,
    source: Option<PeerId>,
    signed: SignedReleaseResolution,
) {
    let Some(source) = source else { return };
    let Some(key) = peer_public_key(&source) else {
        tracing::warn!(%source, "resolution from a peer without an ed25519 key");
        return;
    };
    let resolution = match signed.verify_signer(&key) {
        Ok(resolution) => resolution.clone(),
        Err(e) => {
            tracing::warn!(%source, error = %e, "forged release resolution");
            return;
        }
    };
    vouched(inner, source, resolution.release_id);
    match inner.releases.gateway_of(&resolution.release_id) {
        Some(Some(gateway)) if gateway == source => {}
        Some(None) => {
            let id = resolution.release_id;
            let message = GossipMessage::Resolution(signed);
            let source = Some(source);
            inner.early.hold(id, ReceivedGossip { source, message });
            return;
        }
        Some(_) => {
            tracing::warn!(%source, release = %resolution.release_id, "resolution from a peer that is not the release's gateway; ignored");
            return;
        }
        None => return, // a release this node does not follow
    }
    tracing::debug!(release = %resolution.release_id, gateway = %source, "release resolved");
    declare_resolved(&inner.store, &resolution).await;
}

/// Declares the blobs of a resolution in the store: each with its layout,
/// and a blob of one chunk with that chunk's digest too (its own digest),
/// so it can be fetched and verified before any map or digest update.
async fn declare_resolved(store: &Store, resolution: &ReleaseResolution) {
    let blobs = [&resolution.manifest, &resolution.config]
        .into_iter()
        .chain(resolution.layers.iter());
    for blob in blobs {
        if store.blob_info(&blob.digest).is_some() || store.is_complete(&blob.digest) {
            continue;
        }
        let Some(chunk) = resolution.chunk_size.for_blob(blob.size) else {
            tracing::debug!(blob = %blob.digest, size = blob.size, "resolved blob too large to chunk");
            continue;
        };
        if let Err(e) = store.create_blob(blob.digest, blob.size, chunk).await {
            tracing::debug!(blob = %blob.digest, error = %e, "cannot declare resolved blob");
            continue;
        }
        if blob.size > 0 && blob.size <= u64::from(chunk.get()) {
            if let Err(e) = store
                .add_chunk_digests(blob.digest, 0, &[blob.digest])
                .await
            {
                tracing::debug!(blob = %blob.digest, error = %e, "cannot record a one-chunk digest");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use edgeswarm_protocol::wire::BlobDescriptor;
    use edgeswarm_protocol::ChunkSize;

    use super::*;

    fn status_from(n: u64) -> ReceivedGossip {
        ReceivedGossip {
            source: None,
            message: GossipMessage::Status(edgeswarm_protocol::wire::NodeStatus {
                role: edgeswarm_protocol::wire::PeerRole::Node,
                gateway_capable: false,
                timestamp_ms: n,
                releases: Vec::new(),
                desired: None,
            }),
        }
    }

    fn stamp(m: &ReceivedGossip) -> u64 {
        match &m.message {
            GossipMessage::Status(s) => s.timestamp_ms,
            _ => unreachable!(),
        }
    }

    #[test]
    fn early_gateway_messages_are_held_per_release_in_order_and_bounded() {
        let early = EarlyMessages::default();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        for n in 0..(MAX_EARLY_PER_RELEASE as u64 + 10) {
            early.hold(a, status_from(n));
        }
        early.hold(b, status_from(7));
        let held: Vec<u64> = early.take(&a).iter().map(stamp).collect();
        assert_eq!(held.len(), MAX_EARLY_PER_RELEASE, "bounded per release");
        assert_eq!(held[..3], [0, 1, 2], "the first ones, in order");
        assert!(early.take(&a).is_empty(), "taken once");
        assert_eq!(early.take(&b).iter().map(stamp).collect::<Vec<_>>(), [7]);
        // Too many releases: the oldest is forgotten.
        for r in 0..=MAX_EARLY_RELEASES {
            early.hold(Digest::of(&r.to_le_bytes()), status_from(r as u64));
        }
        assert!(early.take(&Digest::of(&0usize.to_le_bytes())).is_empty());
        assert_eq!(early.take(&Digest::of(&1usize.to_le_bytes())).len(), 1);
    }
    use crate::store::StoreConfig;

    fn descriptor(bytes: &[u8]) -> BlobDescriptor {
        BlobDescriptor {
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            media_type: "application/octet-stream".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resolution_declares_its_blobs_and_the_digest_of_one_chunk_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
            .await
            .unwrap();
        let chunk = ChunkSize::MIN;
        let manifest = b"{\"manifest\":1}".to_vec();
        let config = b"{\"config\":1}".to_vec();
        let big = vec![7u8; chunk.get() as usize * 3 + 5];
        let resolution = ReleaseResolution {
            release_id: Digest::of(b"release"),
            manifest: descriptor(&manifest),
            config: descriptor(&config),
            layers: vec![descriptor(&big)],
            chunk_size: chunk,
        };
        declare_resolved(&store, &resolution).await;

        for doc in [&manifest, &config] {
            let info = store.blob_info(&Digest::of(doc)).expect("declared");
            assert_eq!(info.size, doc.len() as u64);
            assert_eq!(
                info.digests_known, 1,
                "a one-chunk blob's digest is its own"
            );
            // And it verifies: its only chunk can be written and completes it.
            store
                .write_chunk(Digest::of(doc), 0, bytes::Bytes::from(doc.clone()))
                .await
                .unwrap();
            assert!(store.is_complete(&Digest::of(doc)));
        }
        let info = store.blob_info(&Digest::of(&big)).expect("layer declared");
        assert_eq!(info.size, big.len() as u64);
        assert_eq!(info.chunk_count, 4);
        assert_eq!(
            info.digests_known, 0,
            "a layer's digests come from the gateway"
        );

        // Declaring again is harmless (the gateway re-announces).
        declare_resolved(&store, &resolution).await;
        assert!(store.is_complete(&Digest::of(&manifest)));
    }
}
