//! Helpers of the registry tests: building images for a real
//! `docker-registry` (pushed with `support::push`), and checking a full pull.

use std::path::Path;

use edgeswarm_node::registry::testing::{self, BuiltImage, ImageSpec};
use edgeswarm_node::registry::{
    Compression, Platform, Reference, RegistryClient, RegistryConfig, ResolvedImage,
};
use edgeswarm_protocol::Digest;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

/// Host libraries per test image: enough for several HTTP chunks per layer.
pub(crate) const LIB_BYTES: u64 = 6 << 20;

pub(crate) fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig::default()).unwrap()
}

pub(crate) async fn build(dir: &Path, compression: Compression, tag: &str) -> BuiltImage {
    let mut spec = ImageSpec::realistic(LIB_BYTES, tag);
    spec.compression = compression;
    testing::build_image(spec, dir).await.unwrap()
}

/// Reads a whole blob through `layer_stream` and returns it.
pub(crate) async fn pull_layer(
    client: &RegistryClient,
    resolved: &ResolvedImage,
    index: usize,
) -> Vec<u8> {
    let layer = &resolved.layers[index];
    let mut stream = client.layer_stream(&resolved.reference, layer, 0);
    let mut bytes = Vec::with_capacity(layer.size as usize);
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    bytes
}

pub(crate) fn sha(bytes: &[u8]) -> Digest {
    Digest::from_bytes(Sha256::digest(bytes).into())
}

/// Decompresses a layer blob and returns the sha256 of the tar (its diff_id).
pub(crate) fn diff_id(bytes: &[u8], compression: Compression) -> Digest {
    use std::io::Read;
    let mut reader: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(bytes),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(bytes)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(bytes).unwrap()),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Digest::from_bytes(hasher.finalize().into())
}

/// Resolves `reference`, checks the documents against what was built and
/// pulls every layer, verifying blob digest, size and diff_id.
pub(crate) async fn pull_and_verify(
    client: &RegistryClient,
    reference: &str,
    platform: &Platform,
    built: &BuiltImage,
) -> ResolvedImage {
    let reference = Reference::parse(reference).unwrap();
    let resolved = client.resolve(&reference, platform).await.unwrap();
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
    assert_eq!(resolved.manifest_bytes, built.manifest_bytes);
    assert_eq!(resolved.manifest_media_type, built.manifest_media_type);
    assert_eq!(resolved.config_digest, built.config_digest);
    assert_eq!(resolved.config_bytes, built.config_bytes);
    assert_eq!(resolved.platform, built.platform);
    assert_eq!(resolved.reference.digest, Some(built.manifest_digest));
    assert_eq!(resolved.layers.len(), built.layers.len());
    for (i, (got, want)) in resolved.layers.iter().zip(&built.layers).enumerate() {
        assert_eq!(got.digest, want.digest, "layer {i}");
        assert_eq!(got.size, want.size, "layer {i}");
        assert_eq!(got.diff_id, want.diff_id, "layer {i}");
        assert_eq!(got.media_type, want.media_type, "layer {i}");
        assert_eq!(got.compression, want.compression, "layer {i}");
        let bytes = pull_layer(client, &resolved, i).await;
        assert_eq!(bytes.len() as u64, want.size, "layer {i} size");
        assert_eq!(sha(&bytes), want.digest, "layer {i} digest");
        let compression = got.compression;
        let computed = tokio::task::spawn_blocking(move || diff_id(&bytes, compression))
            .await
            .unwrap();
        assert_eq!(computed, want.diff_id, "layer {i} diff_id");
    }
    resolved
}
