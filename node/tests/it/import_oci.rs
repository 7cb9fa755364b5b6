//! The `oci` sink: layouts that skopeo and umoci accept, for Docker and OCI
//! manifests (gzip and zstd); failures leave nothing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::import::*;
use edgeswarm_node::import::{
    import_image, Compression, ImportError, ImportOptions, ImportSink, LayerAction,
};

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo installed");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn import_oci(root: &Path, image: &TestImage, reference: &str) -> String {
    let probe = Arc::new(ReadProbe::default());
    let report = import_image(
        &ImportSink::Oci {
            root: root.to_owned(),
        },
        image.import(reference, Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    assert!(report
        .layers
        .iter()
        .all(|l| l.action == LayerAction::Imported));
    report.location
}

#[tokio::test]
async fn oci_layout_from_docker_manifest_is_readable_by_skopeo_and_umoci() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(
        &[
            (base_layer("oci-docker"), Compression::Gzip),
            (overlay_layer(), Compression::Gzip),
        ],
        true,
        None,
    );
    let layout = import_oci(tmp.path(), &image, "registry.local:5000/app:v1").await;
    assert_eq!(
        layout,
        tmp.path()
            .join("registry.local_5000_app_v1")
            .display()
            .to_string()
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("oci:{layout}:v1")])).unwrap();
    let layers: Vec<String> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = image
        .layers
        .iter()
        .map(|l| edgeswarm_protocol::address::Digest::of(&l.1).to_oci())
        .collect();
    assert_eq!(layers, expected);
    // A full copy re-verifies every blob digest.
    let out = tmp.path().join("copy");
    skopeo(&[
        "copy",
        &format!("oci:{layout}:v1"),
        &format!("dir:{}", out.display()),
    ]);
    assert!(out.join("manifest.json").exists());
    let umoci = Command::new("umoci")
        .args(["ls", "--layout", &layout])
        .output()
        .unwrap();
    assert!(
        umoci.status.success(),
        "{}",
        String::from_utf8_lossy(&umoci.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&umoci.stdout).trim(), "v1");
}

#[tokio::test]
async fn oci_layout_keeps_zstd_oci_manifest_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(
        &[
            (base_layer("oci-zstd"), Compression::Zstd),
            (extra_layer(), Compression::Zstd),
        ],
        false,
        None,
    );
    let layout = import_oci(tmp.path(), &image, "app").await;
    let manifest = skopeo(&["inspect", "--raw", &format!("oci:{layout}:latest")]);
    assert_eq!(manifest.as_bytes(), &image.manifest[..]);
    let config = skopeo(&[
        "inspect",
        "--config",
        "--raw",
        &format!("oci:{layout}:latest"),
    ]);
    assert_eq!(config.as_bytes(), &image.config[..]);
}

#[tokio::test]
async fn oci_wrong_blob_fails_and_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut image = build_image(
        &[
            (base_layer("oci-bad"), Compression::Gzip),
            (overlay_layer(), Compression::Gzip),
        ],
        false,
        None,
    );
    // Same size, one byte flipped: the blob digest check must catch it.
    let blob = &mut image.layers[1].1;
    let mid = blob.len() / 2;
    blob[mid] ^= 0x55;
    let probe = Arc::new(ReadProbe::default());
    let err = import_image(
        &ImportSink::Oci {
            root: tmp.path().to_owned(),
        },
        image.import("bad:v1", Duration::ZERO, &probe),
        &ImportOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::BlobDigestMismatch { index: 1, .. }
                | ImportError::LayerStream { index: 1, .. }
                | ImportError::DiffIdMismatch { index: 1, .. }
        ),
        "{err}"
    );
    assert_eq!(list_tree(tmp.path()), Vec::<String>::new());
}
