//! Manifest resolution: from a reference to one platform's image.
//!
//! - [`RegistryClient::fetch_manifest`]: a manifest or index with the full
//!   Accept list, its digest checked on the exact bytes (computed, against
//!   `Docker-Content-Digest` and against a pinned digest).
//! - [`RegistryClient::fetch_blob`]: a small blob (a config) whole, size
//!   limited and digest checked.
//! - [`RegistryClient::resolve`]: index -> platform entry -> manifest ->
//!   config -> [`LayerDescriptor`]s, as a [`ResolvedImage`].

use bytes::Bytes;
use edgeswarm_protocol::Digest;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT};
use tracing::{debug, info, warn};

use super::client::{RegistryClient, Target};
use super::error::RegistryError;
use super::manifest::{
    self, layer_kind, parse_manifest, Compression, ImageConfig, ManifestDocument,
    ManifestParseError,
};
use super::platform::Platform;
use super::reference::Reference;

/// A layer as listed by the manifest, with what the importer needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// Media type as written in the manifest.
    pub media_type: String,
    /// Compression derived from the media type.
    pub compression: Compression,
    /// Foreign / non-distributable layer (fetched from `urls` first).
    pub foreign: bool,
    /// Download locations for foreign layers.
    pub urls: Vec<String>,
    /// sha256 of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// A manifest resolved to one platform, its config fetched and verified.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference pinned to `manifest_digest`.
    pub reference: Reference,
    /// Digest of the index / manifest list, when the reference named one.
    pub index_digest: Option<Digest>,
    /// Digest of the image manifest (exact bytes).
    pub manifest_digest: Digest,
    /// Its media type.
    pub manifest_media_type: String,
    /// The manifest bytes exactly as received.
    pub manifest_bytes: Bytes,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// Its media type.
    pub config_media_type: String,
    /// The config bytes exactly as received (verified).
    pub config_bytes: Bytes,
    /// The platform the config declares.
    pub platform: Platform,
    /// Layers, base first.
    pub layers: Vec<LayerDescriptor>,
}

impl ResolvedImage {
    /// Sum of layer sizes (what a full pull transfers, besides documents).
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// Media type (header, else the document's own).
    pub media_type: String,
    /// Exact bytes.
    pub bytes: Bytes,
    /// Parsed document.
    pub document: ManifestDocument,
}

impl RegistryClient {
    /// Fetches a manifest or index by the reference's digest or tag,
    /// verifying the digest of the exact bytes (against the computed
    /// digest, `Docker-Content-Digest`, and the pinned digest).
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let what = format!("manifest {}", reference.manifest_reference());
        let target = Target {
            reference,
            what: what.clone(),
            registry_auth: true,
        };
        let url = self.url(
            reference,
            &format!(
                "{}/manifests/{}",
                reference.repository,
                reference.manifest_reference()
            ),
        )?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(manifest::MANIFEST_ACCEPT));
        let (bytes, resp_headers) = self
            .fetch_small(
                &target,
                &url,
                &headers,
                self.inner.config.max_manifest_bytes,
            )
            .await?;
        let digest = hash_off_runtime(bytes.clone()).await;
        let mismatch = |expected: Digest| RegistryError::DigestMismatch {
            reference: reference.to_string(),
            what: what.clone(),
            expected,
            actual: digest,
        };
        if let Some(pinned) = reference.digest {
            if pinned != digest {
                return Err(mismatch(pinned));
            }
        }
        if let Some(header) = resp_headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            match Digest::parse_oci(header.trim()) {
                Ok(announced) if announced != digest => return Err(mismatch(announced)),
                Ok(_) => {}
                Err(e) => debug!(header, error = %e, "ignoring unparsable Docker-Content-Digest"),
            }
        }
        let content_type = resp_headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let document = parse_manifest(content_type, &bytes).map_err(|e| match e {
            ManifestParseError::UnsupportedMediaType(media_type) => {
                RegistryError::UnsupportedMediaType {
                    reference: reference.to_string(),
                    what: what.clone(),
                    media_type,
                }
            }
            ManifestParseError::Malformed(reason) => RegistryError::Invalid {
                reference: reference.to_string(),
                what: what.clone(),
                reason,
            },
        })?;
        let media_type = match &document {
            ManifestDocument::Image(m) => m.media_type.clone(),
            ManifestDocument::Index(i) => i.media_type.clone(),
        }
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned()))
        .unwrap_or_else(|| match &document {
            ManifestDocument::Image(_) => manifest::OCI_MANIFEST.to_owned(),
            ManifestDocument::Index(_) => manifest::OCI_INDEX.to_owned(),
        });
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
            document,
        })
    }

    /// Fetches a small blob (a config) whole, checking size and digest.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        limit: u64,
    ) -> Result<Bytes, RegistryError> {
        let target = Target {
            reference,
            what: format!("blob {digest}"),
            registry_auth: true,
        };
        let url = self.url(
            reference,
            &format!("{}/blobs/{}", reference.repository, digest.to_oci()),
        )?;
        let (bytes, _) = self
            .fetch_small(&target, &url, &HeaderMap::new(), limit)
            .await?;
        let actual = hash_off_runtime(bytes.clone()).await;
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                reference: reference.to_string(),
                what: target.what,
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Resolves a reference to one platform's image: manifest (via the
    /// index if multi-arch), config (verified), layer descriptors.
    #[tracing::instrument(skip(self), fields(reference = %reference, platform = %platform))]
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let top = self.fetch_manifest(reference).await?;
        let invalid = |what: &str, reason: String| RegistryError::Invalid {
            reference: reference.to_string(),
            what: what.to_owned(),
            reason,
        };
        let (index_digest, fetched) = match &top.document {
            ManifestDocument::Image(_) => (None, top),
            ManifestDocument::Index(index) => {
                let candidates: Vec<(Platform, usize)> = index
                    .manifests
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| d.platform.as_ref().map(|p| (p.to_platform(), i)))
                    .collect();
                let chosen = platform
                    .choose(candidates.iter().map(|(p, i)| (p, *i)))
                    .ok_or_else(|| RegistryError::NoMatchingPlatform {
                        reference: reference.to_string(),
                        wanted: platform.clone(),
                        available: candidates
                            .iter()
                            .map(|(p, _)| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let entry = &index.manifests[chosen];
                let digest = Digest::parse_oci(&entry.digest).map_err(|e| {
                    invalid("index", format!("entry digest {:?}: {e}", entry.digest))
                })?;
                info!(%digest, entry_platform = ?entry.platform, "index resolved to platform");
                let child = self.fetch_manifest(&reference.with_digest(digest)).await?;
                if child.bytes.len() as u64 != entry.size {
                    return Err(RegistryError::SizeMismatch {
                        reference: reference.to_string(),
                        what: format!("manifest {digest}"),
                        expected: entry.size,
                        actual: child.bytes.len() as u64,
                    });
                }
                if matches!(child.document, ManifestDocument::Index(_)) {
                    return Err(invalid(
                        "index",
                        "nested index entries are not supported".into(),
                    ));
                }
                (Some(top.digest), child)
            }
        };
        let ManifestDocument::Image(image) = &fetched.document else {
            return Err(invalid("manifest", "expected an image manifest".into()));
        };
        let config_digest = Digest::parse_oci(&image.config.digest)
            .map_err(|e| invalid("manifest", format!("config digest: {e}")))?;
        if image.config.size > self.inner.config.max_config_bytes {
            return Err(RegistryError::TooLarge {
                reference: reference.to_string(),
                what: format!("config {config_digest}"),
                limit: self.inner.config.max_config_bytes,
            });
        }
        let pinned = reference.with_digest(fetched.digest);
        let config_bytes = self
            .fetch_blob(&pinned, &config_digest, self.inner.config.max_config_bytes)
            .await?;
        if config_bytes.len() as u64 != image.config.size {
            return Err(RegistryError::SizeMismatch {
                reference: reference.to_string(),
                what: format!("config {config_digest}"),
                expected: image.config.size,
                actual: config_bytes.len() as u64,
            });
        }
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| invalid("config", e.to_string()))?;
        if config.rootfs.diff_ids.len() != image.layers.len() {
            return Err(invalid(
                "config",
                format!(
                    "{} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    image.layers.len()
                ),
            ));
        }
        let mut layers = Vec::with_capacity(image.layers.len());
        for (layer, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
            let kind = layer_kind(&layer.media_type).ok_or_else(|| {
                RegistryError::UnsupportedMediaType {
                    reference: reference.to_string(),
                    what: format!("layer {}", layer.digest),
                    media_type: layer.media_type.clone(),
                }
            })?;
            layers.push(LayerDescriptor {
                digest: Digest::parse_oci(&layer.digest).map_err(|e| {
                    invalid("manifest", format!("layer digest {:?}: {e}", layer.digest))
                })?,
                size: layer.size,
                media_type: layer.media_type.clone(),
                compression: kind.compression,
                foreign: kind.foreign,
                urls: layer.urls.clone(),
                diff_id: Digest::parse_oci(diff_id)
                    .map_err(|e| invalid("config", format!("diff_id {diff_id:?}: {e}")))?,
            });
        }
        let image_platform = Platform::new(
            if config.os.is_empty() {
                "unknown"
            } else {
                &config.os
            },
            if config.architecture.is_empty() {
                "unknown"
            } else {
                &config.architecture
            },
            config.variant.as_deref(),
        );
        if index_digest.is_none() && !platform.matches(&image_platform) {
            warn!(image = %image_platform, wanted = %platform, "single-platform image for another platform");
        }
        Ok(ResolvedImage {
            reference: pinned,
            index_digest,
            manifest_digest: fetched.digest,
            manifest_media_type: fetched.media_type,
            manifest_bytes: fetched.bytes,
            config_digest,
            config_media_type: image.config.media_type.clone(),
            config_bytes,
            platform: image_platform,
            layers,
        })
    }
}

/// sha256 on the blocking pool (documents are up to a few MiB).
pub(crate) async fn hash_off_runtime(bytes: Bytes) -> Digest {
    if bytes.len() < 64 * 1024 {
        return Digest::of(&bytes);
    }
    match tokio::task::spawn_blocking(move || Digest::of(&bytes)).await {
        Ok(d) => d,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
