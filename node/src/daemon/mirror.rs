//! The daemon's side of the registry mirror ([`crate::mirror`] speaks the
//! HTTP): what a request the store cannot answer yet turns into.
//!
//! ## A miss is a mirror release
//!
//! A miss on a manifest starts a *mirror job* on this node. The job makes
//! (or reuses) a **mirror release**: an ordinary [`Release`] of
//! `registry/repository[:tag]@digest` whose selector carries the
//! [`MIRROR_SELECTOR`] key, signed by this node's identity and gossiped on
//! the releases topic. It selects no node for import. Gateway-capable
//! nodes track it like any release, so the existing path does the rest:
//! gateway election on the manifest digest, one registry pull of the
//! layers the locality lacks, signed chunk digests gossiped as chunks
//! land, Range resume and failover to the runner-up when the gateway
//! stops reporting. This node tracks it too (so it accepts the elected
//! gateway's resolution and chunk digests) and its job fetches the
//! manifest, the config and every layer from the swarm with the fetch
//! pipeline's own `fetch_blob`, then pins them under the release's image
//! name: they are counted in status (the release's phases and bytes by
//! source) and metrics, and collected like deployed images (a
//! mirror-only rollback window of `--keep-versions` per repository, and
//! `edgeswarm rm IMAGE`).
//!
//! Manifests are small: a gateway-capable node fetches a manifest it
//! lacks from the registry itself (verified by digest), and only the
//! blobs go through the locality. A node that cannot reach the registry
//! serves an index (multi-platform manifest list) only when a peer holds
//! it; its platform manifest by digest is pulled through the locality as
//! above.
//!
//! Mirror releases never enter the desired state (they are not persisted,
//! replayed by anti-entropy or compared with publisher sequences), so a
//! mirror pull can neither shadow nor block a deployment. Because they
//! import nothing and pin content by digest, nodes with `--trust` keys
//! accept them from any member of the swarm (the swarm key is the
//! membership check); the job gossips its release again every few
//! seconds until its manifest arrives, so a gateway that starts later or
//! missed the message still pulls.
//!
//! ## Trust model of tag answers
//!
//! Everything addressed by digest is verified end to end: a manifest by
//! digest is hashed before it is served (by the registry client, or by the
//! store, which verifies every chunk and the whole blob), and blobs stream
//! only as verified chunks. A tag is a mutable name, and its answer is
//! only as good as who gave it:
//!
//! - on a gateway-capable node the tag is resolved at the registry, over
//!   the registry's TLS (or plain HTTP for `--insecure-registry`), and the
//!   answer is checked against its `Docker-Content-Digest`;
//! - elsewhere, a tag is answered from a release this node accepted whose
//!   image names exactly that tag: a deployment (signed by a trusted
//!   publisher key, or by any member without `--trust`) pins the tag to
//!   the deployed digest until it is redeployed; or a mirror release a
//!   *live gateway-capable peer* made after resolving the tag at the
//!   registry, used for [`TAG_ANSWER_TTL`] after it was made;
//! - anything else gets a 404 at once, and containerd resolves the tag
//!   upstream itself, then fetches the content by digest through this
//!   mirror again.
//!
//! So a member of the swarm can, at worst, make a tag answer on other
//! nodes point at another image the registry holds for a few minutes, but
//! never make a node serve bytes that differ from the digest it serves
//! them as.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeswarm_protocol::release::{Release, SignedRelease};
use edgeswarm_protocol::wire::{GossipMessage, ReleaseState};
use edgeswarm_protocol::Digest;
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::desired::Entry;
use super::error::ReleaseError;
use super::releases::LayerInfo;
use super::{pipeline, unix_seconds, Daemon, Inner};
use crate::registry::manifest::{parse_manifest, ManifestDocument};
use crate::registry::{Reference, RegistryError};
use crate::store::BlobReader;
use crate::swarm::Topic;

/// Selector key that marks a mirror release (its value is `pull`).
pub const MIRROR_SELECTOR: &str = "edgeswarm.io/mirror";
/// How long a gateway-capable peer's tag answer (in its mirror release)
/// is used by nodes that cannot reach the registry.
pub const TAG_ANSWER_TTL: Duration = Duration::from_secs(300);
/// Longest wait for a manifest the locality is fetching, before the
/// mirror answers 503 and the client goes upstream.
pub const MANIFEST_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for a blob a pulled manifest names to be declared (its
/// layout known), while the locality is still fetching it (a gateway
/// declares layers one after the other as it pulls them), before 503.
pub const BLOB_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for the next verified chunk while a blob streams, once
/// the locality can no longer deliver it (no live gateway); while it can,
/// the wait is renewed up to [`STALL_LIMIT`]. A stalled transfer ends the
/// response instead of hanging the client.
pub const CHUNK_WAIT: Duration = Duration::from_secs(10);
/// Longest time without a new chunk before a streaming response ends,
/// even while a gateway is live.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);
/// Pause between gossips of a job's mirror release while its manifest
/// has not arrived.
const REPUBLISH: Duration = Duration::from_secs(3);
/// Mirror jobs remembered (running and finished); the oldest finished
/// ones are forgotten first.
const MAX_JOBS: usize = 128;
/// Mirror jobs running at once; more answer 503.
const MAX_RUNNING_JOBS: usize = 16;
/// Mirror releases of other nodes remembered, for reuse and tag answers.
const MAX_SEEN: usize = 256;
/// Largest manifest served.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A manifest the mirror serves.
#[derive(Debug, Clone)]
pub struct MirrorManifest {
    /// Its digest (of exactly these bytes).
    pub digest: Digest,
    /// Its media type (`Content-Type`).
    pub media_type: String,
    /// Its bytes.
    pub bytes: Bytes,
}

/// A blob the mirror serves.
#[derive(Debug)]
pub enum MirrorBlob {
    /// Complete and verified in the store: its file.
    Complete {
        /// The store's file (read-only).
        path: PathBuf,
        /// Size in bytes.
        size: u64,
    },
    /// Still arriving: a reader that returns verified chunks only, waiting
    /// at most [`CHUNK_WAIT`] for each.
    Arriving {
        /// The store's reader.
        reader: BlobReader,
        /// Size in bytes.
        size: u64,
    },
}

/// Why the mirror cannot serve something.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Neither this node nor the locality has it, or can get it: the client
    /// should go upstream (404).
    #[error("{0}")]
    NotFound(String),
    /// The locality is fetching it, or failed to, or is overloaded (503).
    #[error("{0}")]
    Unavailable(String),
}

/// Labels of the mirror request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct MirrorRequestLabels {
    /// `manifest` or `blob`.
    pub(super) kind: &'static str,
    /// `hit` (held complete), `pulled` (through the locality),
    /// `not_found` or `unavailable`.
    pub(super) outcome: &'static str,
}

/// The mirror's Prometheus metrics.
#[derive(Clone, Default)]
pub(super) struct MirrorMetrics {
    /// Requests by kind and outcome.
    requests: Family<MirrorRequestLabels, Counter>,
    /// Body bytes served.
    bytes_served: Counter,
    /// Mirror jobs started.
    jobs: Counter,
}

impl MirrorMetrics {
    pub(super) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "mirror_requests",
            "Registry mirror requests by kind (manifest, blob) and outcome (hit, pulled, not_found, unavailable)",
            self.requests.clone(),
        );
        registry.register(
            "mirror_bytes_served",
            "Body bytes the registry mirror served",
            self.bytes_served.clone(),
        );
        registry.register(
            "mirror_pulls",
            "Mirror jobs started (misses fetched through the locality)",
            self.jobs.clone(),
        );
    }
}

/// One mirror job of this node.
#[derive(Debug, Clone)]
struct Job {
    /// The mirror release it follows (once made or reused).
    release: Option<Digest>,
    /// Config and layers with their sizes, once the manifest is verified.
    blobs: Vec<(Digest, u64)>,
    /// Still running.
    running: bool,
    /// Why it failed, if it did.
    error: Option<String>,
    /// When it started.
    started: Instant,
}

/// The mirror's state in the daemon.
#[derive(Default)]
pub(super) struct MirrorState {
    /// This node's jobs by manifest digest.
    jobs: Mutex<HashMap<Digest, Job>>,
    /// Mirror releases seen (made here or gossiped), by manifest digest.
    seen: Mutex<HashMap<Digest, (SignedRelease, Instant)>>,
    /// Metrics.
    pub(super) metrics: MirrorMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `release` is a mirror release.
pub(super) fn is_mirror(release: &Release) -> bool {
    release.selector.iter().any(|(k, _)| k == MIRROR_SELECTOR)
}

impl MirrorState {
    fn remember(&self, signed: &SignedRelease) {
        let mut seen = lock(&self.seen);
        if seen.len() >= MAX_SEEN {
            if let Some(oldest) = seen.iter().min_by_key(|(_, (_, t))| *t).map(|(d, _)| *d) {
                seen.remove(&oldest);
            }
        }
        seen.insert(
            signed.body_unverified().manifest,
            (signed.clone(), Instant::now()),
        );
    }

    fn seen(&self, manifest: &Digest) -> Option<SignedRelease> {
        lock(&self.seen).get(manifest).map(|(s, _)| s.clone())
    }

    /// The job of `manifest`; false when it was new and is now recorded
    /// as running. Errors when too many run.
    fn start(&self, manifest: Digest) -> Result<bool, MirrorError> {
        let mut jobs = lock(&self.jobs);
        if let Some(job) = jobs.get(&manifest) {
            if job.running || job.error.is_none() {
                return Ok(true);
            }
        }
        if jobs.values().filter(|j| j.running).count() >= MAX_RUNNING_JOBS {
            return Err(MirrorError::Unavailable(format!(
                "{MAX_RUNNING_JOBS} mirror pulls are running already"
            )));
        }
        if jobs.len() >= MAX_JOBS {
            if let Some(oldest) = jobs
                .iter()
                .filter(|(_, j)| !j.running)
                .min_by_key(|(_, j)| j.started)
                .map(|(d, _)| *d)
            {
                jobs.remove(&oldest);
            }
        }
        jobs.insert(
            manifest,
            Job {
                release: None,
                blobs: Vec::new(),
                running: true,
                error: None,
                started: Instant::now(),
            },
        );
        Ok(false)
    }

    fn update(&self, manifest: &Digest, f: impl FnOnce(&mut Job)) {
        if let Some(job) = lock(&self.jobs).get_mut(manifest) {
            f(job);
        }
    }

    fn job(&self, manifest: &Digest) -> Option<Job> {
        lock(&self.jobs).get(manifest).cloned()
    }

    /// The size of `blob` if a job's verified manifest lists it.
    fn listed(&self, blob: &Digest) -> Option<u64> {
        lock(&self.jobs)
            .values()
            .flat_map(|j| j.blobs.iter())
            .find(|(d, _)| d == blob)
            .map(|(_, size)| *size)
    }
}

/// The pin (and release image) name of a mirror pull.
fn mirror_image(reference: &Reference, digest: Digest, tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("{}:{tag}@{}", reference.name(), digest.to_oci()),
        None => format!("{}@{}", reference.name(), digest.to_oci()),
    }
}

/// The config and layers an image manifest names, with their sizes.
fn image_blobs(document: &ManifestDocument) -> Vec<(Digest, u64)> {
    let ManifestDocument::Image(m) = document else {
        return Vec::new();
    };
    std::iter::once(&m.config)
        .chain(&m.layers)
        .filter_map(|d| Some((Digest::parse_oci(&d.digest).ok()?, d.size)))
        .collect()
}

/// The media type of a manifest document.
fn media_type_of(bytes: &[u8], document: &ManifestDocument) -> String {
    #[derive(serde::Deserialize)]
    struct MediaType {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<MediaType>(bytes)
        .ok()
        .and_then(|m| m.media_type)
        .unwrap_or_else(|| {
            match document {
                ManifestDocument::Image(_) => crate::registry::manifest::OCI_MANIFEST,
                ManifestDocument::Index(_) => crate::registry::manifest::OCI_INDEX,
            }
            .to_owned()
        })
}

fn registry_error(e: RegistryError) -> MirrorError {
    match e {
        RegistryError::NotFound { .. } => MirrorError::NotFound(e.to_string()),
        other => MirrorError::Unavailable(other.to_string()),
    }
}

impl Inner {
    /// A mirror release gossiped by another node: remembered, and tracked
    /// by gateway-capable nodes (which pull it when elected). Checked for
    /// a valid signature by its embedded key and for this locality only;
    /// see the module documentation for why no `--trust` key is needed.
    pub(super) fn on_mirror_release(
        self: &Arc<Self>,
        source: Option<PeerId>,
        signed: SignedRelease,
    ) {
        let release = match signed.verify_embedded() {
            Ok(r) if r.locality == self.config.swarm.locality => r.clone(),
            Ok(r) => {
                tracing::debug!(?source, locality = %r.locality, "mirror release of another locality ignored");
                return;
            }
            Err(e) => {
                tracing::warn!(?source, error = %e, "mirror release with a bad signature");
                return;
            }
        };
        self.mirror.remember(&signed);
        if self.config.gateway {
            self.follow_mirror_release(release);
        }
    }

    /// Tracks a mirror release and drives it (gateway election, and the
    /// pull if this node is elected). Nothing when tracked already.
    fn follow_mirror_release(self: &Arc<Self>, release: Release) {
        let id = release.id();
        if self.releases.track(release) {
            tracing::info!(release = %id, "mirror release followed");
            self.drive(id);
        }
    }

    /// The mirror release for `manifest`: a known one (made by any node) is
    /// reused, else one is made and signed here. Tracked and gossiped.
    async fn mirror_release(
        self: &Arc<Self>,
        reference: &Reference,
        manifest: Digest,
        tag: Option<&str>,
    ) -> Release {
        let signed = match self.mirror.seen(&manifest) {
            Some(s) => s,
            None => {
                let release = Release {
                    image: mirror_image(reference, manifest, tag),
                    manifest,
                    platform: (&self.config.platform).into(),
                    created: unix_seconds(),
                    locality: self.config.swarm.locality.clone(),
                    selector: vec![(MIRROR_SELECTOR.to_owned(), "pull".to_owned())],
                    seq: 0,
                };
                let signed = SignedRelease::sign(release, &self.identity);
                self.mirror.remember(&signed);
                signed
            }
        };
        let release = signed.body_unverified().clone();
        self.follow_mirror_release(release.clone());
        self.publish_mirror_release(&signed).await;
        release
    }

    async fn publish_mirror_release(&self, signed: &SignedRelease) {
        let bytes = GossipMessage::Release(signed.clone()).encode();
        if let Err(e) = self.swarm.publish(Topic::Releases, bytes).await {
            tracing::debug!(error = %e, "mirror release not gossiped");
        }
    }

    /// Whether a live gateway-capable peer signed `signed`.
    fn signed_by_live_gateway(&self, signed: &SignedRelease) -> bool {
        self.peers
            .live_gateways()
            .iter()
            .filter_map(|bytes| PeerId::from_bytes(bytes).ok())
            .filter_map(|peer| super::peer_public_key(&peer))
            .any(|key| &key == signed.signer())
    }

    /// A tag's digest without the registry (see the module docs).
    fn tag_from_releases(&self, reference: &Reference) -> Option<Digest> {
        let tag = reference.tag.as_deref()?;
        let same = |image: &str| {
            Reference::parse(image).is_ok_and(|r| {
                r.registry == reference.registry
                    && r.repository == reference.repository
                    && r.tag.as_deref() == Some(tag)
            })
        };
        let deployed = self
            .desired
            .entries()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Release(r) => Some(r.body_unverified().clone()),
                Entry::Removal(_) => None,
            })
            .filter(|r| same(&r.image))
            .max_by_key(|r| (r.seq, r.created))
            .map(|r| r.manifest);
        if deployed.is_some() {
            return deployed;
        }
        let now = unix_seconds();
        let seen: Vec<SignedRelease> = lock(&self.mirror.seen)
            .values()
            .map(|(s, _)| s.clone())
            .collect();
        seen.into_iter()
            .filter(|s| {
                let r = s.body_unverified();
                same(&r.image) && now.saturating_sub(r.created) <= TAG_ANSWER_TTL.as_secs()
            })
            .filter(|s| self.signed_by_live_gateway(s))
            .max_by_key(|s| s.body_unverified().created)
            .map(|s| s.body_unverified().manifest)
    }

    /// Reads a complete manifest from the store.
    async fn stored_manifest(&self, digest: Digest) -> Result<MirrorManifest, MirrorError> {
        let path = self
            .store
            .blob_path(&digest)
            .ok_or_else(|| MirrorError::NotFound(format!("{digest} is not held")))?;
        let unavailable = |e: std::io::Error| MirrorError::Unavailable(e.to_string());
        let len = tokio::fs::metadata(&path).await.map_err(unavailable)?.len();
        if len > MAX_MANIFEST_BYTES {
            return Err(MirrorError::NotFound(format!(
                "{digest} is {len} bytes: not a manifest"
            )));
        }
        let bytes = Bytes::from(tokio::fs::read(&path).await.map_err(unavailable)?);
        let document = parse_manifest(None, &bytes)
            .map_err(|e| MirrorError::NotFound(format!("{digest} is not a manifest: {e}")))?;
        Ok(MirrorManifest {
            digest,
            media_type: media_type_of(&bytes, &document),
            bytes,
        })
    }

    /// Starts the job of `manifest` unless it runs (or ran) already.
    /// `blobs` are what the manifest names, listed at once so that the
    /// client's blob requests that follow wait for them.
    fn ensure_job(
        self: &Arc<Self>,
        reference: &Reference,
        manifest: Digest,
        tag: Option<String>,
        blobs: Vec<(Digest, u64)>,
    ) -> Result<(), MirrorError> {
        let known = self.mirror.start(manifest)?;
        if !blobs.is_empty() {
            self.mirror.update(&manifest, |job| {
                if job.blobs.is_empty() {
                    job.blobs = blobs;
                }
            });
        }
        if known {
            return Ok(());
        }
        self.mirror.metrics.jobs.inc();
        let inner = self.clone();
        let reference = reference.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                r = inner.run_job(&reference, manifest, tag.as_deref()) => r,
                () = inner.shutdown.cancelled() => Err(ReleaseError::ShuttingDown),
            };
            if let Err(e) = &result {
                tracing::warn!(%manifest, image = %reference, error = %e, "mirror pull failed");
                // Shown in status, and no longer driven as pending.
                if let Some(id) = inner.mirror.job(&manifest).and_then(|j| j.release) {
                    inner.fail(&id, e);
                }
            }
            let error = result.err().map(|e| e.to_string());
            inner.mirror.update(&manifest, |job| {
                job.running = false;
                job.error = error;
            });
        });
        Ok(())
    }

    /// A mirror job: the manifest, then its config and layers from the
    /// locality, then the pin.
    async fn run_job(
        self: &Arc<Self>,
        reference: &Reference,
        manifest: Digest,
        tag: Option<&str>,
    ) -> Result<(), ReleaseError> {
        // An index, or a manifest a peer holds, needs no pull: fetch it
        // first. Anything else is asked of the gateway at once.
        let held = self.store.is_complete(&manifest) || self.peers.holds(&manifest);
        let mut release = None;
        if !held {
            release = Some(self.mirror_release(reference, manifest, tag).await);
        }
        let id = release.as_ref().map_or(manifest, Release::id);
        self.mirror.update(&manifest, |job| job.release = Some(id));
        let fetched = {
            let fetch = pipeline::fetch_blob(self, id, manifest);
            tokio::pin!(fetch);
            loop {
                tokio::select! {
                    r = &mut fetch => break r,
                    () = tokio::time::sleep(REPUBLISH) => {
                        if let Some(signed) = self.mirror.seen(&manifest) {
                            self.publish_mirror_release(&signed).await;
                        }
                    }
                }
            }
        };
        fetched?;
        let document = self
            .stored_manifest(manifest)
            .await
            .map_err(|_| ReleaseError::Vanished(manifest))?;
        let image = match parse_manifest(None, &document.bytes) {
            Ok(ManifestDocument::Image(m)) => m,
            // An index is served as it is; the client asks for the
            // platform's manifest next, by digest.
            _ => return Ok(()),
        };
        let mut blobs = vec![(
            Digest::parse_oci(&image.config.digest).map_err(|source| ReleaseError::Digest {
                what: "manifest config digest".into(),
                source,
            })?,
            image.config.size,
        )];
        let mut layers = Vec::new();
        for d in &image.layers {
            let digest = Digest::parse_oci(&d.digest).map_err(|source| ReleaseError::Digest {
                what: format!("layer digest {}", d.digest),
                source,
            })?;
            blobs.push((digest, d.size));
            layers.push(LayerInfo {
                digest,
                size: d.size,
                media_type: d.media_type.clone(),
                diff_id: digest,
            });
        }
        self.mirror
            .update(&manifest, |job| job.blobs = blobs.clone());
        let all_local = blobs.iter().all(|(d, _)| self.store.is_complete(d));
        let release = match release {
            Some(r) => r,
            None => self.mirror_release(reference, manifest, tag).await,
        };
        let id = release.id();
        self.mirror.update(&manifest, |job| job.release = Some(id));
        let held_before = layers
            .iter()
            .filter(|l| self.store.is_complete(&l.digest))
            .map(|l| l.size)
            .sum();
        self.releases.set_layers(&id, &layers, held_before);
        self.set_state(&id, ReleaseState::Resolving);
        self.set_state(&id, ReleaseState::Fetching);
        if !all_local {
            // Unlike the fetch pipeline, a mirror job often follows a
            // release whose gateway pulls nothing (a peer holds the
            // blobs): no chunk digests will be gossiped, so every digest
            // comes from a holder's chunk map.
            for (blob, _) in &blobs {
                if !self.store.is_complete(blob) {
                    tokio::spawn(pipeline::fill_digests(self.clone(), id, *blob));
                }
            }
        }
        let mut fetches = tokio::task::JoinSet::new();
        for (blob, _) in blobs.clone() {
            let inner = self.clone();
            fetches.spawn(async move { pipeline::fetch_blob(&inner, id, blob).await });
        }
        let mut result = Ok(());
        while let Some(joined) = fetches.join_next().await {
            let r = joined
                .map_err(|source| ReleaseError::Task {
                    what: "mirror fetch",
                    source,
                })
                .and_then(|r| r);
            if result.is_ok() {
                result = r;
            }
        }
        if let Err(e) = result {
            self.fail(&id, &e);
            return Err(e);
        }
        let mut pinned = vec![manifest];
        pinned.extend(blobs.iter().map(|(d, _)| *d));
        self.store.pin(&release.image, &pinned).await?;
        self.set_state(&id, ReleaseState::Done);
        tracing::info!(image = %release.image, "mirror pull done and pinned");
        self.retain_mirror(&release).await;
        Ok(())
    }

    /// The rollback window of mirror pins: `--keep-versions` per
    /// repository, apart from deployed versions (a mirror pull never
    /// removes a deployed image).
    async fn retain_mirror(self: &Arc<Self>, release: &Release) {
        let repository = format!("mirror:{}", super::repository_of(&release.image));
        self.retain_versions_of(&release.image, &repository, release.seq, release.created)
            .await;
    }
}

impl Daemon {
    /// The manifest `reference` names (by digest, or by tag: see the
    /// trust model in [`crate::daemon`]'s `mirror` module docs), starting
    /// a pull through the locality when it is not held. Waits at most
    /// [`MANIFEST_WAIT`]; answers [`MirrorError::NotFound`] at once when
    /// neither a gateway nor a peer can serve it.
    pub async fn mirror_manifest(
        &self,
        reference: &Reference,
    ) -> Result<MirrorManifest, MirrorError> {
        let result = self.mirror_manifest_inner(reference).await;
        let outcome = match &result {
            Ok((_, true)) => "hit",
            Ok((_, false)) => "pulled",
            Err(MirrorError::NotFound(_)) => "not_found",
            Err(MirrorError::Unavailable(_)) => "unavailable",
        };
        self.count_request("manifest", outcome);
        result.map(|(m, _)| m)
    }

    async fn mirror_manifest_inner(
        &self,
        reference: &Reference,
    ) -> Result<(MirrorManifest, bool), MirrorError> {
        let inner = &self.inner;
        let tag = reference.tag.clone().filter(|_| reference.digest.is_none());
        let digest = match reference.digest {
            Some(d) => d,
            None => {
                if let Some(registry) = &inner.registry {
                    // Resolved at the registry (this node is a gateway).
                    return self
                        .fetch_and_keep(registry, reference, reference, tag)
                        .await;
                }
                inner.tag_from_releases(reference).ok_or_else(|| {
                    MirrorError::NotFound(format!(
                        "{reference}: this node cannot resolve tags at the registry and no \
                         release names this tag"
                    ))
                })?
            }
        };
        if inner.store.is_complete(&digest) {
            let m = inner.stored_manifest(digest).await?;
            if let Ok(document @ ManifestDocument::Image(_)) = parse_manifest(None, &m.bytes) {
                inner.ensure_job(reference, digest, tag, image_blobs(&document))?;
            }
            return Ok((m, true));
        }
        if let Some(registry) = &inner.registry {
            let fetch = reference.with_digest(digest);
            return self.fetch_and_keep(registry, reference, &fetch, tag).await;
        }
        if !inner.peers.any_live_gateway() && !inner.peers.holds(&digest) {
            return Err(MirrorError::NotFound(format!(
                "{digest}: no gateway and no peer in the locality can serve it"
            )));
        }
        inner.ensure_job(reference, digest, None, Vec::new())?;
        let deadline = Instant::now() + MANIFEST_WAIT;
        loop {
            if inner.store.is_complete(&digest) {
                let m = inner.stored_manifest(digest).await?;
                if let Ok(document) = parse_manifest(None, &m.bytes) {
                    inner.ensure_job(reference, digest, None, image_blobs(&document))?;
                }
                return Ok((m, false));
            }
            if let Some(job) = inner.mirror.job(&digest) {
                if let Some(e) = job.error {
                    return Err(MirrorError::Unavailable(e));
                }
            }
            if Instant::now() > deadline {
                return Err(MirrorError::Unavailable(format!(
                    "{digest}: not in the locality within {}s",
                    MANIFEST_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fetches `fetch` at this gateway-capable node's `registry` and keeps
    /// it (see [`Self::keep_fetched`]) as the answer to `reference`; not
    /// from the store (`false`).
    async fn fetch_and_keep(
        &self,
        registry: &crate::registry::RegistryClient,
        reference: &Reference,
        fetch: &Reference,
        tag: Option<String>,
    ) -> Result<(MirrorManifest, bool), MirrorError> {
        let fetched = registry
            .fetch_manifest(fetch)
            .await
            .map_err(registry_error)?;
        self.keep_fetched(reference, fetched, tag)
            .await
            .map(|m| (m, false))
    }

    /// Stores a manifest this gateway-capable node fetched (verified by
    /// the registry client), offers it to peers and starts the job of an
    /// image manifest.
    async fn keep_fetched(
        &self,
        reference: &Reference,
        fetched: crate::registry::FetchedManifest,
        tag: Option<String>,
    ) -> Result<MirrorManifest, MirrorError> {
        let inner = &self.inner;
        inner
            .store
            .put_blob(fetched.digest, fetched.bytes.clone())
            .await
            .map_err(|e| MirrorError::Unavailable(e.to_string()))?;
        let _ = inner.swarm.provide(fetched.digest).await;
        if let ManifestDocument::Image(_) = fetched.document {
            inner.ensure_job(
                reference,
                fetched.digest,
                tag,
                image_blobs(&fetched.document),
            )?;
        }
        Ok(MirrorManifest {
            digest: fetched.digest,
            media_type: fetched.media_type,
            bytes: fetched.bytes,
        })
    }

    /// The blob `digest`: its file when complete, else a reader of its
    /// verified chunks as they arrive. A blob that no mirror job lists is
    /// served only when held; a listed one that is not declared within
    /// [`BLOB_WAIT`] is [`MirrorError::Unavailable`].
    pub async fn mirror_blob(&self, digest: Digest) -> Result<MirrorBlob, MirrorError> {
        let result = self.mirror_blob_inner(digest).await;
        let outcome = match &result {
            Ok(MirrorBlob::Complete { .. }) => "hit",
            Ok(MirrorBlob::Arriving { .. }) => "pulled",
            Err(MirrorError::NotFound(_)) => "not_found",
            Err(MirrorError::Unavailable(_)) => "unavailable",
        };
        self.count_request("blob", outcome);
        result
    }

    async fn mirror_blob_inner(&self, digest: Digest) -> Result<MirrorBlob, MirrorError> {
        let store = &self.inner.store;
        let deadline = Instant::now() + BLOB_WAIT;
        loop {
            if let Some(path) = store.blob_path(&digest) {
                let size = tokio::fs::metadata(&path)
                    .await
                    .map_err(|e| MirrorError::Unavailable(e.to_string()))?
                    .len();
                return Ok(MirrorBlob::Complete { path, size });
            }
            if let Some(info) = store.blob_info(&digest) {
                let mut reader = store
                    .reader(digest)
                    .map_err(|e| MirrorError::Unavailable(e.to_string()))?;
                reader.set_timeout(Some(CHUNK_WAIT));
                return Ok(MirrorBlob::Arriving {
                    reader,
                    size: info.size,
                });
            }
            if self.inner.mirror.listed(&digest).is_none() {
                return Err(MirrorError::NotFound(format!(
                    "blob {digest} is not held, and no manifest pulled through this mirror \
                     names it"
                )));
            }
            if !self.mirror_still_fetching(&digest) {
                return Err(MirrorError::Unavailable(format!(
                    "blob {digest}: the locality cannot deliver it (no live gateway, or its \
                     pull ended)"
                )));
            }
            if Instant::now() > deadline {
                return Err(MirrorError::Unavailable(format!(
                    "blob {digest}: not in the locality within {}s",
                    BLOB_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the locality may still deliver `blob` to this node: a
    /// running mirror job lists it and a gateway-capable node is live
    /// (this one or a peer). A streaming response waits for chunks only
    /// while this holds (see [`STALL_LIMIT`]).
    pub fn mirror_still_fetching(&self, blob: &Digest) -> bool {
        let inner = &self.inner;
        let running = lock(&inner.mirror.jobs)
            .values()
            .any(|j| j.running && j.blobs.iter().any(|(d, _)| d == blob));
        running
            && (inner.config.gateway || inner.peers.any_live_gateway() || inner.peers.holds(blob))
    }

    /// Counts body bytes the mirror served.
    pub fn count_mirror_bytes(&self, n: u64) {
        self.inner.mirror.metrics.bytes_served.inc_by(n);
    }

    fn count_request(&self, kind: &'static str, outcome: &'static str) {
        self.inner
            .mirror
            .metrics
            .requests
            .get_or_create(&MirrorRequestLabels { kind, outcome })
            .inc();
    }
}
