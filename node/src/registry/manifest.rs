//! OCI / Docker manifest, index and config types (the subset a puller needs).
//!
//! Our own serde types instead of `oci-spec` keep the dependency tree small;
//! unknown fields are ignored so newer manifests still parse. Serialising
//! these types is used only by the test image builder: the pull side always
//! hashes and keeps the exact bytes the registry sent, never a re-encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::platform::Platform;

/// OCI image index (multi-arch).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list (multi-arch).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 (signed): not supported, named in errors.
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// OCI layer, uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable layer (deprecated in spec 1.1 but still seen), uncompressed.
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable layer, gzip.
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable layer, zstd.
pub const OCI_LAYER_NONDIST_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// Docker layer, gzip.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker layer, uncompressed (rare but valid).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign layer (Windows base layers): fetched from `urls`.
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The Accept list sent with every manifest request (FIELD-NOTES §3: without
/// it registry 2.8 downgrades to schema 1, whose digest differs).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// zstd (RFC 8878).
    Zstd,
}

/// What a layer media type says about the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerKind {
    /// Compression of the blob.
    pub compression: Compression,
    /// Foreign / non-distributable: registries may not hold it; fetch from `urls`.
    pub foreign: bool,
}

/// Classifies a layer media type; `None` for types that are not image layers.
pub fn layer_kind(media_type: &str) -> Option<LayerKind> {
    let (compression, foreign) = match media_type {
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => (Compression::None, false),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => (Compression::Gzip, false),
        OCI_LAYER_ZSTD => (Compression::Zstd, false),
        OCI_LAYER_NONDIST_TAR => (Compression::None, true),
        OCI_LAYER_NONDIST_GZIP | DOCKER_LAYER_FOREIGN_GZIP => (Compression::Gzip, true),
        OCI_LAYER_NONDIST_ZSTD => (Compression::Zstd, true),
        _ => return None,
    };
    Some(LayerKind {
        compression,
        foreign,
    })
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER_TAR,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }

    /// The Docker layer media type, if Docker defines one (zstd has none).
    pub fn docker_media_type(self) -> Option<&'static str> {
        match self {
            Compression::None => Some(DOCKER_LAYER_TAR),
            Compression::Gzip => Some(DOCKER_LAYER_GZIP),
            Compression::Zstd => None,
        }
    }
}

/// A content descriptor (`mediaType`, `digest`, `size`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>` of the referenced bytes (kept as text; parsed where used).
    pub digest: String,
    /// Size in bytes; a client must not read more.
    pub size: u64,
    /// Alternative download locations (foreign layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The `platform` object of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformJson {
    /// GOARCH.
    pub architecture: String,
    /// GOOS.
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl PlatformJson {
    /// As a [`Platform`].
    pub fn to_platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }

    /// From a [`Platform`].
    pub fn from_platform(p: &Platform) -> PlatformJson {
        PlatformJson {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
            os_version: None,
        }
    }
}

/// An image manifest (OCI or Docker schema 2: same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest media type (optional in OCI, required in Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The index media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One manifest per platform (plus, with BuildKit, attestations).
    pub manifests: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The parts of an image config a puller needs (the rest is passed through as bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// GOARCH of the image.
    #[serde(default)]
    pub architecture: String,
    /// GOOS of the image.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Layer diff IDs.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each *uncompressed* layer tar, base first.
    pub diff_ids: Vec<String>,
}

/// What a manifest document turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestDocument {
    /// A single-platform image manifest.
    Image(ImageManifest),
    /// A multi-platform index / manifest list.
    Index(ImageIndex),
}

/// Why manifest bytes could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestParseError {
    /// A media type edgeswarm does not pull (schema 1, artifacts, ...).
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// Not valid JSON of the expected shape.
    #[error("malformed manifest: {0}")]
    Malformed(String),
}

/// Parses manifest bytes. `content_type` is the response header (may be
/// absent or generic); the document's own `mediaType` and, failing that, its
/// shape (`manifests` vs `layers`) decide when the header does not.
pub fn parse_manifest(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<ManifestDocument, ManifestParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| ManifestParseError::Malformed(e.to_string()))?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
    let media_type = probe.media_type.clone().or(header);
    let is_index = match media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) if probe.schema_version == Some(1) || other == DOCKER_MANIFEST_V1 => {
            return Err(ManifestParseError::UnsupportedMediaType(other.to_owned()))
        }
        Some(other) => {
            return Err(ManifestParseError::UnsupportedMediaType(other.to_owned()));
        }
        None if probe.schema_version == Some(1) => {
            return Err(ManifestParseError::UnsupportedMediaType(
                DOCKER_MANIFEST_V1.to_owned(),
            ))
        }
        None if probe.manifests.is_some() => true,
        None if probe.layers.is_some() => false,
        None => {
            return Err(ManifestParseError::Malformed(
                "neither `manifests` nor `layers` present".into(),
            ))
        }
    };
    let malformed = |e: serde_json::Error| ManifestParseError::Malformed(e.to_string());
    if is_index {
        Ok(ManifestDocument::Index(
            serde_json::from_slice(bytes).map_err(malformed)?,
        ))
    } else {
        Ok(ManifestDocument::Image(
            serde_json::from_slice(bytes).map_err(malformed)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_layers() {
        assert_eq!(
            layer_kind(DOCKER_LAYER_GZIP).unwrap().compression,
            Compression::Gzip
        );
        assert_eq!(
            layer_kind(OCI_LAYER_ZSTD).unwrap().compression,
            Compression::Zstd
        );
        assert_eq!(
            layer_kind(OCI_LAYER_TAR).unwrap().compression,
            Compression::None
        );
        assert!(layer_kind(DOCKER_LAYER_FOREIGN_GZIP).unwrap().foreign);
        assert!(layer_kind(OCI_LAYER_NONDIST_ZSTD).unwrap().foreign);
        assert!(layer_kind("application/vnd.in-toto+json").is_none());
    }

    #[test]
    fn detects_document_kind() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(None, index),
            Ok(ManifestDocument::Index(_))
        ));
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(matches!(
            parse_manifest(Some(OCI_MANIFEST), image),
            Ok(ManifestDocument::Image(_))
        ));
        let v1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            parse_manifest(Some(DOCKER_MANIFEST_V1), v1),
            Err(ManifestParseError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            parse_manifest(None, b"not json"),
            Err(ManifestParseError::Malformed(_))
        ));
    }
}
