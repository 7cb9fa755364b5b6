//! The `oci` sink: an OCI image layout per image, for skopeo, podman, umoci.
//!
//! # Layout
//! `<root>/<name>/{oci-layout, index.json, blobs/sha256/<hex>}`. The index
//! has one manifest, annotated with `org.opencontainers.image.ref.name`
//! (the tag, so `skopeo inspect oci:<dir>:<tag>` finds it) and
//! `io.containerd.image.name` (the full reference). Compressed layer blobs
//! are written as they stream (teed while the layer is decompressed and
//! its diff_id verified), so the layout holds exactly the verified bytes.
//! A Docker schema 2 manifest is rewritten with OCI media types (the config
//! and layer bytes are unchanged); an OCI manifest is kept byte for byte.
//! Work happens in `<root>/.import-XXXX/` and is published at the end as
//! the dir sink's rootfs is (`<root>/<name>` is a symlink to a version
//! under `<root>/.versions/`, swapped atomically); a failure leaves nothing.
//!
//! # Non-goals
//! Sharing blobs between images' layouts (each layout is self-contained).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use edgeswarm_protocol::address::Digest;
use serde_json::json;

use super::layer::stream_layer;
use super::publish::{publish, WORK_PREFIX};
use super::{
    image_dir_name, is_echo, reference_tag, ImageImport, ImportError, ImportOptions, LayerAction,
    LayerReport, ParsedImage,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub(super) async fn import(
    root: &Path,
    image: ImageImport,
    parsed: ParsedImage,
    options: &ImportOptions,
) -> Result<(String, Vec<LayerReport>), ImportError> {
    let root = root.to_owned();
    let work = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&root).map_err(|e| ImportError::io("create", &root, e))?;
            let work = tempfile::Builder::new()
                .prefix(WORK_PREFIX)
                .tempdir_in(&root)
                .map_err(|e| ImportError::io("create temp dir in", &root, e))?;
            let blobs = work.path().join("layout/blobs/sha256");
            fs::create_dir_all(&blobs).map_err(|e| ImportError::io("create", &blobs, e))?;
            Ok::<_, ImportError>(work)
        })
        .await
        .map_err(|e| ImportError::Task(e.to_string()))??
    };
    let layout = work.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    let abort = Arc::new(AtomicBool::new(false));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        options.max_parallel_layers.max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (source, info)) in image
        .layers
        .into_iter()
        .zip(parsed.layers.clone())
        .enumerate()
    {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ImportError::Task(e.to_string()))?;
        if abort.load(Ordering::Relaxed) {
            break; // a layer failed: leave the rest unread
        }
        let blobs = blobs.clone();
        let abort = abort.clone();
        tasks.spawn_blocking(move || {
            let _permit = permit;
            let final_path = blobs.join(info.digest.to_hex());
            let partial = blobs.join(format!("{}.partial-{index}", info.digest.to_hex()));
            let file =
                fs::File::create(&partial).map_err(|e| ImportError::io("create", &partial, e))?;
            let mut out = BufWriter::with_capacity(256 * 1024, file);
            let mut reader = source.reader;
            let result = stream_layer(
                &mut *reader,
                info.compression,
                info.expected(index),
                Some(&mut out),
                Some(abort.clone()),
                &mut |_| Ok(()),
            )
            .and_then(|stats| {
                out.flush()
                    .map_err(|e| ImportError::io("write", &partial, e))?;
                // Two layers may share a blob: the rename is idempotent.
                fs::rename(&partial, &final_path)
                    .map_err(|e| ImportError::io("rename", &final_path, e))?;
                Ok(stats)
            });
            if result.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            result.map(|stats| (index, stats))
        });
    }
    let mut stats = vec![None; parsed.layers.len()];
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| ImportError::Task(e.to_string())) {
            Ok(Ok((index, s))) => stats[index] = Some(s),
            Ok(Err(e)) | Err(e) => {
                abort.store(true, Ordering::Relaxed);
                // Keep the first real cause, not the echoes of the abort.
                if failure.as_ref().is_none_or(is_echo) {
                    failure = Some(e);
                }
            }
        }
    }
    if let Some(e) = failure {
        drop(work);
        return Err(e);
    }

    let name = image_dir_name(&image.reference);
    let location = root.join(&name).display().to_string();
    let reference = image.reference.clone();
    let diff_ids: Vec<_> = parsed.layers.iter().map(|l| l.diff_id).collect();
    tokio::task::spawn_blocking(move || {
        let write_blob = |bytes: &[u8]| -> Result<Digest, ImportError> {
            let digest = Digest::of(bytes);
            let path = blobs.join(digest.to_hex());
            fs::write(&path, bytes).map_err(|e| ImportError::io("write", &path, e))?;
            Ok(digest)
        };
        write_blob(&image.config_bytes)?;
        let manifest_bytes = oci_manifest(&parsed, &image.manifest_bytes)?;
        let manifest_digest = write_blob(&manifest_bytes)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest.to_oci(),
                "size": manifest_bytes.len(),
                "annotations": {
                    "org.opencontainers.image.ref.name": reference_tag(&reference),
                    "io.containerd.image.name": reference,
                },
            }],
        });
        let write = |name: &str, bytes: Vec<u8>| {
            let path = layout.join(name);
            fs::write(&path, bytes).map_err(|e| ImportError::io("write", &path, e))
        };
        write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
        write("index.json", serde_json::to_vec(&index).expect("json"))?;
        // Durable (syncfs) and swapped in whole: the layout's index.json and
        // blobs are never seen half-written, even after a crash.
        publish(&root, &name, &layout)?;
        drop(work);
        Ok::<_, ImportError>(())
    })
    .await
    .map_err(|e| ImportError::Task(e.to_string()))??;

    let reports = diff_ids
        .into_iter()
        .zip(stats)
        .map(|(diff_id, s)| LayerReport {
            diff_id,
            action: LayerAction::Imported,
            stats: s,
        })
        .collect();
    Ok((location, reports))
}

/// The manifest bytes for the layout: OCI manifests unchanged, Docker
/// schema 2 manifests rewritten with OCI media types.
fn oci_manifest(parsed: &ParsedImage, original: &[u8]) -> Result<Vec<u8>, ImportError> {
    let media_type = parsed.manifest["mediaType"]
        .as_str()
        .unwrap_or(OCI_MANIFEST);
    if media_type == OCI_MANIFEST {
        return Ok(original.to_vec());
    }
    if media_type != "application/vnd.docker.distribution.manifest.v2+json" {
        return Err(ImportError::InvalidManifest(format!(
            "unsupported manifest media type {media_type:?}"
        )));
    }
    let mut manifest = parsed.manifest.clone();
    manifest["mediaType"] = json!(OCI_MANIFEST);
    manifest["config"]["mediaType"] = json!(OCI_CONFIG);
    if let Some(layers) = manifest["layers"].as_array_mut() {
        for (layer, info) in layers.iter_mut().zip(&parsed.layers) {
            let foreign =
                info.media_type.contains("foreign") || info.media_type.contains("nondistributable");
            layer["mediaType"] = json!(info.compression.oci_media_type(foreign));
        }
    }
    Ok(serde_json::to_vec(&manifest).expect("json"))
}
