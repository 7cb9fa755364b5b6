//! Removing images from nodes: `edgeswarm rm` on one node, a signed removal
//! request gossiped to the whole locality (`rm --locality`), and rollback
//! retention (`--keep-versions`), which drops versions of a repository
//! older than the last K once a newer one is imported.
//!
//! ## Layout
//!
//! - the request itself is the protocol's `Removal` (image, locality,
//!   creation time), signed with the release signature scheme under its own
//!   domain-separation context, so a release signature can never be
//!   replayed as a removal or vice versa; it travels as gossip kind 5 on the
//!   releases topic;
//! - [`Inner::remove_image`]: unpin, drop the release from status, remove
//!   the sink's copy (rootfs directory, OCI layout, Docker image), collect
//!   the store's garbage;
//! - [`Inner::retain_versions`]: the rollback window, recorded in
//!   `<data-dir>/versions.json` so it survives restarts.
//!
//! ## Trust and replay
//!
//! A removal is accepted under the same policy as a release: signed by a
//! `--trust` key, or by any key on nodes without one, and only when it is
//! newer (by publisher sequence) than the desired state of its image, so a
//! stale removal replayed after a redeploy removes nothing, and a replayed
//! release after a removal installs nothing (`desired`).
//!
//! ## Non-goals
//!
//! - Cancelling a release that is still downloading: removal of an image
//!   whose release is in progress is refused (retry once it is done).
//! - Removing images that edgeswarm did not import.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use edgeswarm_protocol::release::{Removal, SignedRemoval};
use serde::{Deserialize, Serialize};

use super::desired::{Entry, Offer};
use super::{unix_seconds, Daemon, DaemonError, Inner};
use crate::import::{docker_tag, image_dir_name, remove_published, ImportSink};
use crate::swarm::Topic;

/// Encodes a signed removal as a gossip message (kind 5).
pub fn encode_gossip(signed: &SignedRemoval) -> Vec<u8> {
    edgeswarm_protocol::wire::GossipMessage::Removal(signed.clone()).encode()
}

/// Decodes a signed removal handed to the API (`SignedRemoval::decode`:
/// canonical CBOR, at most 4 KiB).
pub fn decode_signed(bytes: &[u8]) -> Result<SignedRemoval, DaemonError> {
    SignedRemoval::decode(bytes)
        .map_err(|e| DaemonError::RemovalRefused(format!("malformed removal: {e}")))
}

/// What removing an image did on one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoveReport {
    /// The image.
    pub image: String,
    /// Whether a store pin of that name existed and was dropped.
    pub unpinned: bool,
    /// Releases of the image dropped from status.
    pub releases_dropped: usize,
    /// What was removed from the import sink (`rootfs dir ...`, `docker
    /// image ...`), or `None` when the sink held nothing.
    pub sink_removed: Option<String>,
    /// Blobs the garbage collection removed (shared blobs stay).
    pub blobs_removed: usize,
    /// Bytes those blobs occupied.
    pub bytes_freed: u64,
    /// Whether collection waits for releases still in progress here
    /// (their blobs are not pinned until imported).
    pub gc_deferred: bool,
}

/// One imported version, in `versions.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Installed {
    /// The image reference (pin name).
    image: String,
    /// Its repository, `registry/path` without tag or digest.
    repository: String,
    /// The release's creation time (orders versions of equal sequence:
    /// unsequenced releases, and records from before sequences).
    created: u64,
    /// The release's publisher sequence (orders versions).
    #[serde(default)]
    seq: u64,
}

/// The repository part of a reference (`reg:5000/app:v1` -> `reg:5000/app`).
pub fn repository_of(image: &str) -> String {
    match crate::registry::Reference::parse(image) {
        Ok(r) => format!("{}/{}", r.registry, r.repository),
        Err(_) => image.split('@').next().unwrap_or(image).to_owned(),
    }
}

impl Daemon {
    /// Removes `image` from this node (pin, status, import sink, then
    /// unreferenced blobs). With `request`, the removal is first checked
    /// against this node's trust policy (as every node will check it) and
    /// then gossiped to the locality; `request` must name `image`.
    pub async fn remove(
        &self,
        image: &str,
        request: Option<SignedRemoval>,
    ) -> Result<RemoveReport, DaemonError> {
        let not_after = match &request {
            Some(signed) => {
                let removal = self.inner.check_removal(signed).inspect_err(|_| {
                    self.inner.metrics.removals_refused.inc();
                })?;
                match self.inner.desired.offer(Entry::Removal(signed.clone())) {
                    Offer::Newer(_) => self.inner.persist_desired(),
                    Offer::Same => {}
                    Offer::Refused(reason) => {
                        self.inner.metrics.removals_refused.inc();
                        self.inner.releases.record_refusal(
                            removal.image.clone(),
                            None,
                            reason.clone(),
                        );
                        return Err(DaemonError::RemovalRefused(reason));
                    }
                }
                if removal.image != image {
                    return Err(DaemonError::RemovalRefused(format!(
                        "the signed removal names {:?}, not {image:?}",
                        removal.image
                    )));
                }
                Some(removal.seq)
            }
            None => None,
        };
        let local_only = request.is_none();
        let report = self.inner.remove_image(image, not_after).await?;
        if local_only && !report.unpinned && report.releases_dropped == 0 {
            // Nothing of edgeswarm's was there: the sink was not touched
            // (an image of the same name that someone else put in Docker
            // or the rootfs dir is theirs).
            return Err(DaemonError::RemovalRefused(format!(
                "{image} is not on this node as an edgeswarm image: edgeswarm removes only \
                 images it imported itself (see `edgeswarm images`)"
            )));
        }
        if let Some(signed) = request {
            let bytes = encode_gossip(&signed);
            if let Err(e) = self.inner.swarm.publish(Topic::Releases, bytes).await {
                // A locality of one has no gossip peers.
                tracing::warn!(error = %e, "removal not gossiped");
            }
        }
        Ok(report)
    }

    /// Signs a removal of `image` for this locality with the node's own
    /// identity (accepted only by nodes run with `--allow-any-publisher`).
    pub fn sign_removal(&self, image: &str) -> SignedRemoval {
        SignedRemoval::sign(
            Removal {
                image: image.to_owned(),
                locality: self.inner.config.swarm.locality.clone(),
                created: unix_seconds(),
                seq: self.inner.desired.next_seq(),
            },
            &self.inner.identity,
        )
    }
}

impl Inner {
    /// Checks a removal against this node's trust policy and locality.
    pub(super) fn check_removal(&self, signed: &SignedRemoval) -> Result<Removal, DaemonError> {
        let removal = if !self.config.trusted.is_empty() {
            signed.verify_trusted(&self.config.trusted)
        } else if self.config.allow_any_publisher {
            signed.verify_embedded()
        } else {
            return Err(DaemonError::RemovalRefused(
                super::NO_TRUSTED_KEY.to_owned(),
            ));
        }
        .map_err(|e| DaemonError::RemovalRefused(e.to_string()))?
        .clone();
        if removal.locality != self.config.swarm.locality {
            return Err(DaemonError::RemovalRefused(format!(
                "removal is for locality {:?}, this node is in {:?}",
                removal.locality, self.config.swarm.locality
            )));
        }
        Ok(removal)
    }

    /// Removes `image` from this node: its pin, its releases in status,
    /// its copy in the import sink, then unreferenced blobs. With
    /// `not_after` (a removal request's sequence), releases with a larger
    /// sequence are kept (a removal request older than a redeploy removes
    /// nothing). Without it (removed here only), the desired release of the
    /// image is dismissed on this node: not reinstalled after a restart.
    pub(super) async fn remove_image(
        self: &Arc<Self>,
        image: &str,
        not_after: Option<u64>,
    ) -> Result<RemoveReport, DaemonError> {
        if let Some(limit) = not_after {
            // Releases in memory are gone after a restart; the rollback
            // record keeps the creation time of what is installed.
            let installed = {
                let _guard = self.versions_lock.lock().await;
                self.load_versions().await
            };
            if let Some(v) = installed.iter().find(|v| v.image == image && v.seq > limit) {
                return Err(DaemonError::RemovalRefused(format!(
                    "{image} installed here has release sequence {}, newer than the removal \
                     request's ({limit}); keeping it",
                    v.seq
                )));
            }
        }
        // Only what edgeswarm imported itself (recorded in versions.json
        // once imported) is removed from the sink: a Docker tag or rootfs
        // of the same name that edgeswarm never wrote belongs to someone
        // else.
        let imported = {
            let _guard = self.versions_lock.lock().await;
            self.load_versions().await.iter().any(|v| v.image == image)
        };
        let super::releases::Dropped {
            releases: releases_dropped,
            busy,
        } = self.releases.drop_image(image, not_after)?;
        // The imported copy goes first: if that fails, the pin (and so the
        // blobs to re-import from) stays.
        let sink_removed = if imported {
            remove_from_sink(&self.sink, image).await?
        } else {
            if !matches!(self.sink, ImportSink::None) {
                tracing::info!(
                    image,
                    "not imported by edgeswarm here; its import sink copy (if any) is left alone"
                );
            }
            None
        };
        let unpinned = self.store.pins().contains_key(image);
        if unpinned {
            self.store.unpin(image).await?;
        }
        self.forget_version(image).await;
        if not_after.is_none() {
            self.desired.dismiss(image);
            if let Err(e) = self.desired.save().await {
                tracing::warn!(error = %e, "desired state not saved");
            }
        }
        let gc = if busy {
            // Collecting now would drop the unpinned blobs of releases in
            // progress; collect once they finish instead.
            self.gc_deferred
                .store(true, std::sync::atomic::Ordering::Relaxed);
            Default::default()
        } else {
            self.store.gc().await?
        };
        let report = RemoveReport {
            image: image.to_owned(),
            unpinned,
            releases_dropped,
            sink_removed,
            blobs_removed: gc.removed.len(),
            bytes_freed: gc.freed,
            gc_deferred: busy,
        };
        self.metrics.images_removed.inc();
        tracing::info!(?report, "image removed");
        Ok(report)
    }

    /// Records that `image` (a release of sequence `seq`, created at
    /// `created`) is imported, then removes versions of its repository
    /// older than the newest `keep_versions`, by sequence (the signer's
    /// clock only orders equal sequences). Failures are logged: retention
    /// never fails a release.
    pub(super) async fn retain_versions(self: &Arc<Self>, image: &str, seq: u64, created: u64) {
        self.retain_versions_of(image, &repository_of(image), seq, created)
            .await;
    }

    /// [`Inner::retain_versions`] within the window named `repository`
    /// (the mirror keeps its pins in a window of their own).
    pub(super) async fn retain_versions_of(
        self: &Arc<Self>,
        image: &str,
        repository: &str,
        seq: u64,
        created: u64,
    ) {
        let keep = self.config.keep_versions.max(1);
        let repository = repository.to_owned();
        let evict = {
            let _guard = self.versions_lock.lock().await;
            let mut versions = self.load_versions().await;
            versions.retain(|v| v.image != image);
            versions.push(Installed {
                image: image.to_owned(),
                repository: repository.clone(),
                created,
                seq,
            });
            let mut same: Vec<&Installed> = versions
                .iter()
                .filter(|v| v.repository == repository)
                .collect();
            // Newest first; ties keep the order of installation.
            same.reverse();
            same.sort_by_key(|v| std::cmp::Reverse((v.seq, v.created)));
            let evict: Vec<String> = same.iter().skip(keep).map(|v| v.image.clone()).collect();
            if let Err(e) = self.save_versions(&versions).await {
                tracing::warn!(error = %e, "versions.json not saved");
            }
            evict
        };
        for old in evict {
            tracing::info!(image = %old, keep, %repository, "rolling window: removing an old version");
            if let Err(e) = self.remove_image(&old, None).await {
                tracing::warn!(image = %old, error = %e, "old version not removed");
            }
        }
    }

    /// Runs a collection deferred by an earlier removal, once no release
    /// is in progress.
    pub(super) async fn collect_deferred(&self) {
        let busy = self.releases.any_in_progress();
        if busy
            || !self
                .gc_deferred
                .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        match self.store.gc().await {
            Ok(report) => tracing::info!(
                blobs = report.removed.len(),
                bytes = report.freed,
                "deferred collection done"
            ),
            Err(e) => tracing::warn!(error = %e, "deferred collection failed"),
        }
    }

    /// Drops `image` from `versions.json`.
    async fn forget_version(&self, image: &str) {
        let _guard = self.versions_lock.lock().await;
        let mut versions = self.load_versions().await;
        let before = versions.len();
        versions.retain(|v| v.image != image);
        if versions.len() != before {
            if let Err(e) = self.save_versions(&versions).await {
                tracing::warn!(error = %e, "versions.json not saved");
            }
        }
    }

    fn versions_path(&self) -> PathBuf {
        self.config.data_dir.join("versions.json")
    }

    async fn load_versions(&self) -> Vec<Installed> {
        let path = self.versions_path();
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "versions.json unreadable; starting afresh");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    async fn save_versions(&self, versions: &[Installed]) -> std::io::Result<()> {
        // The record of what edgeswarm imported decides what `rm` may
        // touch, so it is written crash-safe.
        let path = self.versions_path();
        let bytes = serde_json::to_vec_pretty(versions).map_err(std::io::Error::other)?;
        // fsync + rename + fsync dir: the rollback window survives power loss.
        tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&path, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Removes an image's copy from the sink; returns what was removed.
async fn remove_from_sink(sink: &ImportSink, image: &str) -> Result<Option<String>, DaemonError> {
    match sink {
        ImportSink::Dir { root } => remove_tree(root, image, "rootfs").await,
        ImportSink::Oci { root } => remove_tree(root, image, "OCI layout").await,
        ImportSink::None => Ok(None),
        ImportSink::Docker(target) => {
            let tag = docker_tag(image)?;
            match target
                .client()
                .remove_image(
                    &tag,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await
            {
                Ok(_) => Ok(Some(format!("docker image {tag}"))),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(None),
                Err(e) => Err(DaemonError::Remove(format!(
                    "docker could not remove {tag}: {e}"
                ))),
            }
        }
    }
}

/// Removes `<root>/<image_dir_name(image)>` (the published link and its
/// version, or a directory from before versioned publishing) on a blocking
/// thread.
async fn remove_tree(root: &Path, image: &str, what: &str) -> Result<Option<String>, DaemonError> {
    let name = image_dir_name(image);
    let dir = root.join(&name);
    let shown = format!("{what} {}", dir.display());
    let root = root.to_owned();
    let result = tokio::task::spawn_blocking(move || remove_published(&root, &name))
        .await
        .map_err(|e| DaemonError::Remove(format!("removal task: {e}")))?;
    match result {
        Ok(true) => Ok(Some(shown)),
        Ok(false) => Ok(None),
        Err(e) => Err(DaemonError::Remove(format!(
            "removing {}: {e}",
            dir.display()
        ))),
    }
}
