//! Layer byte streams: media types, streaming decompression and verification.
//!
//! A layer arrives as a blocking [`Read`] of its *compressed* bytes. This
//! module wraps it as
//!
//! ```text
//! source -> [tee] -> HashReader (blob digest, size) -> decoder -> HashReader (diff_id)
//! ```
//!
//! and hands the uncompressed reader to a sink-specific consumer. The two
//! sha256 computations run on one dedicated hashing thread per layer, fed
//! in 256 KiB batches through a bounded channel, so hashing overlaps
//! decompression (sha256 costs about as much per byte as gzip decoding; in
//! series the pair could not reach 500 MB/s on one core). A source that
//! vouches for the blob (the store's reader, which re-verifies every chunk
//! it returns and ends only after the whole-blob check) is counted, not
//! hashed: the daemon's imports leave the blob digest to the store instead
//! of computing it a second time.
//!
//! After the consumer returns, both streams are drained to their end (so
//! the digests cover every byte) and checked: the uncompressed sha256
//! against the config's diff_id, the compressed sha256 (unless vouched
//! for) and size against the manifest descriptor. Everything here is
//! blocking and runs on the blocking pool.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use edgeswarm_protocol::address::Digest;
use flate2::bufread::MultiGzDecoder;
use sha2::{Digest as _, Sha256};

use super::ImportError;

/// Read size on both sides of the decoder. zlib-rs inflates about 25 %
/// faster when asked for 256 KiB at a time than through std's 8 KiB copy
/// buffers or the tar reader's 512-byte header reads (383 vs 490 MB/s on
/// this project's 2-core EPYC test machine).
const DECODE_BUF: usize = 256 * 1024;

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
    /// Whether the compressed bytes were hashed here. `false` when the
    /// source vouched for the blob ([`super::LayerSource::checked_blob`]):
    /// `compressed_digest` is then the manifest's digest, which the
    /// source checked every byte against.
    pub compressed_hashed: bool,
}

/// The error a layer's reader returns once another layer of the same
/// import failed (recognised by [`super::is_echo`]).
#[derive(Debug)]
pub(crate) struct AbortedByOtherLayer;

impl std::fmt::Display for AbortedByOtherLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("import aborted because another layer failed")
    }
}

impl std::error::Error for AbortedByOtherLayer {}

/// Bytes handed to the hashing thread at once: large enough that the
/// channel costs nothing, small enough that 8 in flight stay at 2 MiB.
const HASH_BATCH: usize = 256 * 1024;
/// Batches queued for the hashing thread (bounds its memory).
const HASH_QUEUE: usize = 8;

/// Computes the sha256 of the compressed (0) and uncompressed (1) streams
/// on a dedicated thread, so hashing overlaps decompression instead of
/// adding to it (gzip decoding and sha256 cost about the same per byte).
struct OffloadHasher {
    tx: Option<std::sync::mpsc::SyncSender<(usize, Vec<u8>)>>,
    bufs: [Vec<u8>; 2],
    handle: Option<std::thread::JoinHandle<[Digest; 2]>>,
}

impl OffloadHasher {
    fn new() -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(HASH_QUEUE);
        let handle = std::thread::Builder::new()
            .name("layer-sha256".into())
            .spawn(move || {
                let mut hashers = [Sha256::new(), Sha256::new()];
                for (which, batch) in rx {
                    hashers[which].update(&batch);
                }
                hashers.map(|h| Digest::from_bytes(h.finalize().into()))
            })?;
        Ok(OffloadHasher {
            tx: Some(tx),
            bufs: [
                Vec::with_capacity(HASH_BATCH),
                Vec::with_capacity(HASH_BATCH),
            ],
            handle: Some(handle),
        })
    }

    fn send(&mut self, which: usize) {
        let batch = std::mem::replace(&mut self.bufs[which], Vec::with_capacity(HASH_BATCH));
        if let Some(tx) = &self.tx {
            // A send fails only if the thread died; finish() reports that.
            let _ = tx.send((which, batch));
        }
    }

    fn update(&mut self, which: usize, data: &[u8]) {
        let mut data = data;
        while !data.is_empty() {
            let room = HASH_BATCH - self.bufs[which].len();
            let n = room.min(data.len());
            self.bufs[which].extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.bufs[which].len() >= HASH_BATCH {
                self.send(which);
            }
        }
    }

    fn finish(&mut self) -> io::Result<[Digest; 2]> {
        for which in 0..2 {
            if !self.bufs[which].is_empty() {
                self.send(which);
            }
        }
        self.tx = None;
        self.handle
            .take()
            .ok_or_else(|| io::Error::other("hasher already finished"))?
            .join()
            .map_err(|_| io::Error::other("hashing thread panicked"))
    }
}

impl Drop for OffloadHasher {
    fn drop(&mut self) {
        // Let the thread end (on error paths finish() was not called).
        self.tx = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A reader that counts what passes through, feeds it to the hashing
/// thread as stream `which`, and gives up as soon as the shared abort flag
/// is raised (another layer of the same import failed).
struct HashReader<R> {
    inner: R,
    hasher: Rc<RefCell<OffloadHasher>>,
    /// Stream 0 (compressed) or 1 (uncompressed); `None`: count only.
    which: Option<usize>,
    count: u64,
    abort: Option<Arc<AtomicBool>>,
    /// Most bytes this stream may yield; past it reads fail and the flag
    /// is raised (a decompression bomb, see [`UnpackLimit`]).
    limit: Option<(u64, Rc<std::cell::Cell<bool>>)>,
}

/// Bound on the uncompressed size of one layer, so that a gzip or zstd
/// bomb (a small blob that expands without end) fails early with a clear
/// error instead of filling the disk before the diff_id check could fail.
/// A layer may expand to `ratio` times its compressed size (at least
/// [`UnpackLimit::FLOOR`], so small layers of zeros still pass), and never
/// past `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimit {
    /// Largest uncompressed/compressed ratio [default: 100; text and
    /// binaries compress 3-10x, sparse or zero-filled files more].
    pub ratio: u64,
    /// Largest uncompressed layer in bytes [default: 64 GiB].
    pub cap: u64,
}

impl Default for UnpackLimit {
    fn default() -> Self {
        UnpackLimit {
            ratio: 100,
            cap: 64 << 30,
        }
    }
}

impl UnpackLimit {
    /// Uncompressed bytes a layer may always reach, whatever its ratio.
    pub const FLOOR: u64 = 64 << 20;

    /// The bound for a layer of `compressed` bytes (`None`: unknown).
    pub fn for_layer(&self, compressed: Option<u64>) -> u64 {
        match compressed {
            Some(n) => n.saturating_mul(self.ratio).max(Self::FLOOR).min(self.cap),
            None => self.cap,
        }
    }
}

/// The error a layer's uncompressed stream returns past its bound.
#[derive(Debug)]
struct PastUnpackLimit;

impl std::fmt::Display for PastUnpackLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed layer past its size bound")
    }
}

impl std::error::Error for PastUnpackLimit {}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(abort) = &self.abort {
            if abort.load(Ordering::Relaxed) {
                // Not ErrorKind::Interrupted: std's read loops retry those.
                return Err(io::Error::other(AbortedByOtherLayer));
            }
        }
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        self.count += n as u64;
        if let Some((limit, flag)) = &self.limit {
            if self.count > *limit {
                flag.set(true);
                return Err(io::Error::other(PastUnpackLimit));
            }
        }
        if let Some(which) = self.which {
            self.hasher.borrow_mut().update(which, &buf[..n]);
        }
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
    /// The bound on its uncompressed size.
    pub(crate) unpack: UnpackLimit,
    /// The source yields exactly the blob `digest` names and checked it
    /// (the store's reader), so the compressed bytes are counted but not
    /// hashed again: one sha256 pass over the layer less, done in
    /// software on CPUs without SHA instructions (a Raspberry Pi 4's).
    pub(crate) checked_by_source: bool,
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
    let hasher = Rc::new(RefCell::new(OffloadHasher::new().map_err(stream_err)?));
    // The digest the source checked every byte against, if it did.
    let vouched = expected.digest.filter(|_| expected.checked_by_source);
    // An uncompressed layer's blob digest is its diff_id: hash once; a
    // blob its source checked is not hashed again.
    let compressed_hashed = compression != Compression::None && vouched.is_none();
    let mut compressed = HashReader {
        inner: TeeReader {
            inner: source,
            sink: tee,
        },
        hasher: hasher.clone(),
        which: compressed_hashed.then_some(0),
        count: 0,
        abort,
        limit: None,
    };
    let unpack_limit = expected.unpack.for_layer(expected.size);
    let past_limit = Rc::new(std::cell::Cell::new(false));
    let too_large = || ImportError::LayerTooLarge {
        index,
        limit: unpack_limit,
        compressed: expected.size,
    };
    let uncompressed_bytes = {
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(MultiGzDecoder::new(io::BufReader::with_capacity(
                DECODE_BUF,
                &mut compressed,
            ))),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut compressed).map_err(stream_err)?)
            }
            Compression::None => Box::new(&mut compressed),
        };
        let mut plain = io::BufReader::with_capacity(
            DECODE_BUF,
            HashReader {
                inner: decoder,
                hasher: hasher.clone(),
                which: Some(1),
                count: 0,
                abort: None,
                limit: Some((unpack_limit, past_limit.clone())),
            },
        );
        // Whatever error the consumer made of the failed read, the cause
        // is the bound.
        consume(&mut plain).map_err(|e| if past_limit.get() { too_large() } else { e })?;
        // The consumer may stop at the tar end marker; the digest covers
        // the whole stream, padding included.
        io::copy(&mut plain, &mut io::sink()).map_err(|e| {
            if past_limit.get() {
                too_large()
            } else {
                stream_err(e)
            }
        })?;
        plain.get_ref().count
    };
    // Trailing bytes after the last gzip member or zstd frame still belong
    // to the blob and its digest.
    io::copy(&mut compressed, &mut io::sink()).map_err(stream_err)?;
    let compressed_bytes = compressed.count;
    drop(compressed);
    let [compressed_digest, diff_id] = hasher.borrow_mut().finish().map_err(stream_err)?;
    let compressed_digest = match (compression, vouched) {
        (Compression::None, _) => diff_id,
        (_, Some(digest)) => digest,
        _ => compressed_digest,
    };
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
        compressed_hashed,
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
            unpack: UnpackLimit::default(),
            checked_by_source: false,
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
        let stats = verify_layer(
            &mut Cursor::new(&data),
            "application/vnd.oci.image.layer.v1.tar",
            diff,
        )
        .unwrap();
        assert_eq!(stats.compressed_digest, diff);
        assert_eq!(stats.compressed_bytes, data.len() as u64);
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

    fn vouched(data: &[u8], z: &[u8], size: u64) -> Result<LayerStats, ImportError> {
        stream_layer(
            &mut Cursor::new(z),
            Compression::Gzip,
            Expected {
                index: 0,
                diff_id: Digest::of(data),
                digest: Some(Digest::of(z)),
                size: Some(size),
                unpack: UnpackLimit::default(),
                checked_by_source: true,
            },
            None,
            None,
            &mut |_| Ok(()),
        )
    }

    /// A source that vouches for the blob is counted, not hashed; its
    /// size and the diff_id are still checked.
    #[test]
    fn a_vouched_blob_is_counted_and_its_diff_id_still_checked() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let z = gzip(&data);
        let stats = vouched(&data, &z, z.len() as u64).unwrap();
        assert!(!stats.compressed_hashed);
        assert_eq!(stats.compressed_digest, Digest::of(&z));
        assert_eq!(stats.compressed_bytes, z.len() as u64);
        assert_eq!(stats.diff_id, Digest::of(&data));
        let err = vouched(&data, &z, z.len() as u64 + 1).unwrap_err();
        assert!(matches!(err, ImportError::SizeMismatch { .. }), "{err}");
        let err = vouched(b"something else", &z, z.len() as u64).unwrap_err();
        assert!(matches!(err, ImportError::DiffIdMismatch { .. }), "{err}");
        // Not vouched: hashed, as before.
        let stats = verify_layer(
            &mut Cursor::new(&z),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Digest::of(&data),
        )
        .unwrap();
        assert!(stats.compressed_hashed);
    }
}
