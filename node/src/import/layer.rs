//! Layer byte streams: media types, streaming decompression and verification.
//!
//! A layer arrives as a blocking [`Read`] of its *compressed* bytes. This
//! module wraps it as
//!
//! ```text
//! source -> [tee] -> HashReader (blob digest, size) -> decoder -> HashReader (diff_id)
//! ```
//!
//! and hands the uncompressed reader to a sink-specific consumer. After the
//! consumer returns, both streams are drained to their end (so the digests
//! cover every byte) and checked: the uncompressed sha256 against the
//! config's diff_id, the compressed sha256 and size against the manifest
//! descriptor. Everything here is blocking and runs on the blocking pool.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use edgeswarm_protocol::address::Digest;
use flate2::read::MultiGzDecoder;
use sha2::{Digest as _, Sha256};

use super::ImportError;

/// How a layer's bytes are compressed, derived from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (possibly several members), decoded with flate2's zlib-rs backend.
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
    /// A plain tar.
    None,
}

impl Compression {
    /// Maps an OCI or Docker layer media type to its compression, or `None`
    /// for media types that are not layers we can import.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            _ => None,
        }
    }

    /// The OCI media type for a layer with this compression (used when an
    /// OCI layout is written from a Docker manifest).
    pub fn oci_media_type(self, nondistributable: bool) -> &'static str {
        match (self, nondistributable) {
            (Compression::Gzip, false) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Compression::Gzip, true) => {
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            }
            (Compression::Zstd, false) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Compression::Zstd, true) => {
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            }
            (Compression::None, false) => "application/vnd.oci.image.layer.v1.tar",
            (Compression::None, true) => "application/vnd.oci.image.layer.nondistributable.v1.tar",
        }
    }
}

/// What was measured while a layer streamed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerStats {
    /// Compressed bytes read from the source (the blob size).
    pub compressed_bytes: u64,
    /// sha256 of the compressed bytes (the blob digest).
    pub compressed_digest: Digest,
    /// Uncompressed bytes (the layer tar's size).
    pub uncompressed_bytes: u64,
    /// sha256 of the uncompressed bytes (must equal the diff_id).
    pub diff_id: Digest,
}

/// A reader that hashes and counts what passes through, and gives up as
/// soon as the shared abort flag is raised (another layer of the same
/// import failed; nothing more needs reading).
pub(crate) struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    abort: Option<Arc<AtomicBool>>,
}

impl<R: Read> HashReader<R> {
    pub(crate) fn new(inner: R, abort: Option<Arc<AtomicBool>>) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            abort,
        }
    }

    fn finish(self) -> (u64, Digest) {
        (
            self.count,
            Digest::from_bytes(self.hasher.finalize().into()),
        )
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(abort) = &self.abort {
            if abort.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "import aborted because another layer failed",
                ));
            }
        }
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Copies every byte read from `inner` into `sink` before returning it.
struct TeeReader<'a, R> {
    inner: R,
    sink: Option<&'a mut dyn Write>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(sink) = self.sink.as_mut() {
            sink.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Which digests and size a layer must match.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expected {
    /// Position of the layer in the image (for error messages).
    pub(crate) index: usize,
    /// The diff_id from the image config.
    pub(crate) diff_id: Digest,
    /// The blob digest from the manifest, when known.
    pub(crate) digest: Option<Digest>,
    /// The blob size from the manifest, when known.
    pub(crate) size: Option<u64>,
}

/// Streams one layer: decompresses `source`, optionally copies the
/// compressed bytes to `tee`, gives the uncompressed stream to `consume`,
/// drains both streams and verifies size, blob digest and diff_id.
///
/// On any mismatch the error says which digest differed; the caller must
/// then discard whatever `consume` and `tee` produced.
pub(crate) fn stream_layer(
    source: &mut dyn Read,
    compression: Compression,
    expected: Expected,
    tee: Option<&mut dyn Write>,
    abort: Option<Arc<AtomicBool>>,
    consume: &mut dyn FnMut(&mut dyn Read) -> Result<(), ImportError>,
) -> Result<LayerStats, ImportError> {
    let index = expected.index;
    let stream_err = |source: io::Error| ImportError::LayerStream { index, source };
    let mut compressed = HashReader::new(
        TeeReader {
            inner: source,
            sink: tee,
        },
        abort,
    );
    let (uncompressed_bytes, diff_id) = {
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(MultiGzDecoder::new(&mut compressed)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut compressed).map_err(stream_err)?)
            }
            Compression::None => Box::new(&mut compressed),
        };
        let mut plain = HashReader::new(decoder, None);
        consume(&mut plain)?;
        // The consumer may stop at the tar end marker; the digest covers
        // the whole stream, padding included.
        io::copy(&mut plain, &mut io::sink()).map_err(stream_err)?;
        plain.finish()
    };
    // Trailing bytes after the last gzip member or zstd frame still belong
    // to the blob and its digest.
    io::copy(&mut compressed, &mut io::sink()).map_err(stream_err)?;
    let (compressed_bytes, compressed_digest) = compressed.finish();
    if let Some(size) = expected.size {
        if size != compressed_bytes {
            return Err(ImportError::SizeMismatch {
                index,
                expected: size,
                actual: compressed_bytes,
            });
        }
    }
    if let Some(digest) = expected.digest {
        if digest != compressed_digest {
            return Err(ImportError::BlobDigestMismatch {
                index,
                expected: digest,
                actual: compressed_digest,
            });
        }
    }
    if diff_id != expected.diff_id {
        return Err(ImportError::DiffIdMismatch {
            index,
            expected: expected.diff_id,
            actual: diff_id,
        });
    }
    Ok(LayerStats {
        compressed_bytes,
        compressed_digest,
        uncompressed_bytes,
        diff_id,
    })
}

/// Decompresses a layer and checks its diff_id without keeping anything:
/// the verification core of every sink, exposed for benchmarks and for
/// callers that only want to validate a blob.
pub fn verify_layer(
    source: &mut dyn Read,
    media_type: &str,
    diff_id: Digest,
) -> Result<LayerStats, ImportError> {
    let compression = Compression::from_media_type(media_type).ok_or_else(|| {
        ImportError::UnsupportedMediaType {
            index: 0,
            media_type: media_type.to_owned(),
        }
    })?;
    stream_layer(
        source,
        compression,
        Expected {
            index: 0,
            diff_id,
            digest: None,
            size: None,
        },
        None,
        None,
        &mut |_| Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn media_types_map_to_compression() {
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(Compression::from_media_type("application/json"), None);
    }

    #[test]
    fn verifies_multi_member_gzip_and_zstd() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let diff = Digest::of(&data);
        let mut two_members = gzip(&data[..100_000]);
        two_members.extend(gzip(&data[100_000..]));
        let stats = verify_layer(
            &mut Cursor::new(&two_members),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            diff,
        )
        .unwrap();
        assert_eq!(stats.uncompressed_bytes, data.len() as u64);
        assert_eq!(stats.compressed_digest, Digest::of(&two_members));
        let z = zstd::encode_all(Cursor::new(&data), 3).unwrap();
        let stats = verify_layer(
            &mut Cursor::new(&z),
            "application/vnd.oci.image.layer.v1.tar+zstd",
            diff,
        )
        .unwrap();
        assert_eq!(stats.diff_id, diff);
    }

    #[test]
    fn wrong_diff_id_is_a_typed_error() {
        let data = b"not the layer you expected".to_vec();
        let err = verify_layer(
            &mut Cursor::new(gzip(&data)),
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Digest::of(b"other"),
        )
        .unwrap_err();
        assert!(
            matches!(err, ImportError::DiffIdMismatch { actual, .. } if actual == Digest::of(&data)),
            "{err}"
        );
    }

    #[test]
    fn corrupt_gzip_is_a_stream_error() {
        let mut z = gzip(&[7u8; 10_000]);
        let n = z.len();
        z[n / 2] ^= 0xff;
        z.truncate(n - 3);
        let err = verify_layer(
            &mut Cursor::new(z),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Digest::of(&[7u8; 10_000]),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::LayerStream { .. } | ImportError::DiffIdMismatch { .. }
            ),
            "{err}"
        );
    }
}
