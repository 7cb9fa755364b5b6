//! The registry mirror: the OCI Distribution read API on `--mirror ADDR`
//! (off by default), so that containerd, k3s, Docker (as an insecure
//! registry) and skopeo pull through the locality's swarm.
//!
//! ## Layout
//!
//! - this module is the HTTP side only (axum): routing of `/v2/...` paths
//!   (repository names contain slashes, so one handler parses them), the
//!   `?ns=` parameter, `Range`, response headers and the Distribution
//!   spec's error JSON;
//! - what a request turns into lives in the daemon
//!   ([`Daemon::mirror_manifest`], [`Daemon::mirror_blob`], in
//!   `daemon/mirror.rs`): a hit is served from the store; a miss starts a
//!   pull through the locality (the elected gateway pulls the blobs once,
//!   this node takes them from peers) on the daemon's own release path;
//!   the trust model of tag answers is documented there.
//!
//! ## What it serves
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v2/` | 200 `{}` |
//! | GET, HEAD | `/v2/<name>/manifests/<tag or digest>` | the exact manifest bytes, `Content-Type`, `Docker-Content-Digest` |
//! | GET, HEAD | `/v2/<name>/blobs/<digest>` | the blob, one `Range` (`bytes=a-b`, `a-`, `-n`) -> 206 |
//! | other | | 405 `UNSUPPORTED` |
//!
//! The upstream registry of `<name>` is containerd's `?ns=` parameter, or
//! [`MirrorConfig::default_registry`] for clients that use the mirror as
//! a registry (skopeo, Docker via `insecure-registries`).
//!
//! ## Streaming and verification
//!
//! A complete blob is streamed from its store file (verified as a whole
//! when it completed). A blob still arriving is streamed from the store's
//! reader, which returns only chunks verified against their digests and
//! waits for each at most [`crate::daemon::CHUNK_WAIT`] once no gateway
//! can deliver (a gateway failing over is waited for, up to
//! [`crate::daemon::STALL_LIMIT`] without a chunk); the last piece
//! of a whole-blob response is held back until the store checked the
//! whole blob's sha256, so a client never receives the end of a blob that
//! failed. A stall or a failure ends the response early (the connection
//! is closed before `Content-Length`), and the client retries or goes
//! upstream. Memory per response: one chunk in the reader and four
//! 256 KiB buffers in flight.
//!
//! ## Fallback
//!
//! containerd tries the next host of `hosts.toml` (normally upstream) on
//! any 404 or 5xx. The mirror answers 404 at once for what neither this
//! node nor the locality can serve (no gateway and no peer), 503 when the
//! locality does not deliver a manifest within
//! [`crate::daemon::MANIFEST_WAIT`], when it can no longer deliver a blob
//! (no live gateway), or not its layout within
//! [`crate::daemon::BLOB_WAIT`], and never holds a request longer.
//!
//! ## Non-goals
//!
//! Pushes, the catalog and tag lists, authentication (bind it to loopback
//! or a node-local address: it serves whatever the gateway's registry
//! credentials can pull), and Docker Hub's `registry-mirrors` path (Docker
//! sends no `ns`; use it as an insecure registry instead).

use std::io::{Read as _, SeekFrom};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use edgeswarm_protocol::Digest;
use futures::StreamExt;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::sync::CancellationToken;

use crate::daemon::{Daemon, MirrorBlob, MirrorError};
use crate::registry::Reference;

/// Size of each body piece streamed.
const PIECE: usize = 256 << 10;
/// Read size of a complete blob's file: 1 MiB reads measured faster than
/// 256 KiB on loopback (mirror_throughput bench).
const FILE_PIECE: usize = 1 << 20;
/// Pieces buffered between the store reader and the connection.
const PIECES_IN_FLIGHT: usize = 4;

/// The mirror's settings.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The upstream registry of requests without `?ns=`.
    pub default_registry: String,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            default_registry: DEFAULT_REGISTRY.to_owned(),
        }
    }
}

/// Default of [`MirrorConfig::default_registry`].
pub const DEFAULT_REGISTRY: &str = "docker.io";

#[derive(Clone)]
struct MirrorState {
    daemon: Daemon,
    config: MirrorConfig,
}

/// Serves the mirror on `listener` until `shutdown`.
pub async fn serve(
    daemon: Daemon,
    listener: tokio::net::TcpListener,
    config: MirrorConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, default_registry = %config.default_registry, "registry mirror listening");
    axum::serve(listener, router(daemon, config))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The mirror's routes.
pub fn router(daemon: Daemon, config: MirrorConfig) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(MirrorState { daemon, config })
}

/// A Distribution spec error.
struct Error {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message, "detail": null}]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        add_api_version(response.headers_mut());
        response
    }
}

fn add_api_version(headers: &mut HeaderMap) {
    headers.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
}

fn mirror_error(e: MirrorError, unknown: &'static str) -> Error {
    match e {
        MirrorError::NotFound(m) => Error::new(StatusCode::NOT_FOUND, unknown, m),
        MirrorError::Unavailable(m) => {
            Error::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", m)
        }
    }
}

/// What a `/v2/` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Base,
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
}

fn target(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Target::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return (!name.is_empty() && !reference.is_empty() && !reference.contains('/'))
            .then_some(Target::Manifest { name, reference });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return (!name.is_empty() && !digest.is_empty() && !digest.contains('/'))
            .then_some(Target::Blob { name, digest });
    }
    None
}

/// The decoded value of query parameter `key`.
fn query_param(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a single `Range: bytes=...` against `size`: `Ok(None)` for no
/// usable range (serve it all), `Err(())` for an unsatisfiable one.
#[allow(clippy::result_unit_err)]
pub fn parse_range(value: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole blob is a valid answer
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", "") => return Ok(None),
        ("", n) => {
            let Ok(n) = n.parse::<u64>() else {
                return Ok(None);
            };
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (a, b) => {
            let Ok(start) = a.parse::<u64>() else {
                return Ok(None);
            };
            let end = match b {
                "" => size.saturating_sub(1),
                b => match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                    _ => return Ok(None),
                },
            };
            (start, end)
        }
    };
    if size == 0 || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn handle(
    State(state): State<MirrorState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this mirror is read-only (GET and HEAD)",
        )
        .into_response();
    }
    let head = method == Method::HEAD;
    let result = match target(uri.path()) {
        Some(Target::Base) => {
            let mut response = axum::Json(serde_json::json!({})).into_response();
            add_api_version(response.headers_mut());
            return response;
        }
        Some(Target::Manifest { name, reference }) => {
            manifest(&state, &uri, name, reference, head).await
        }
        Some(Target::Blob { name, digest }) => {
            blob(&state, &uri, name, digest, &headers, head).await
        }
        None => Err(Error::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("{} is not a registry read API path", uri.path()),
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The upstream reference of `name` with `suffix` (`:tag` or `@digest`).
fn reference(state: &MirrorState, uri: &Uri, name: &str, suffix: &str) -> Result<Reference, Error> {
    let registry = query_param(uri, "ns")
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| state.config.default_registry.clone());
    let text = format!("{registry}/{name}{suffix}");
    Reference::parse(&text).map_err(|e| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("{text}: {e}"),
        )
    })
}

fn parse_digest(s: &str) -> Result<Digest, Error> {
    Digest::parse_oci(s).map_err(|e| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("{s}: {e}"),
        )
    })
}

async fn manifest(
    state: &MirrorState,
    uri: &Uri,
    name: &str,
    reference_text: &str,
    head: bool,
) -> Result<Response, Error> {
    let suffix = if reference_text.contains(':') {
        parse_digest(reference_text)?;
        format!("@{reference_text}")
    } else {
        format!(":{reference_text}")
    };
    let reference = reference(state, uri, name, &suffix)?;
    let started = std::time::Instant::now();
    let m = state
        .daemon
        .mirror_manifest(&reference)
        .await
        .map_err(|e| mirror_error(e, "MANIFEST_UNKNOWN"))?;
    tracing::debug!(%reference, digest = %m.digest, ms = started.elapsed().as_millis() as u64, "mirror manifest");
    let len = m.bytes.len();
    let mut response = if head {
        Response::new(Body::empty())
    } else {
        state.daemon.count_mirror_bytes(len as u64);
        Response::new(Body::from(m.bytes))
    };
    let h = response.headers_mut();
    add_api_version(h);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&m.media_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        "docker-content-digest",
        HeaderValue::from_str(&m.digest.to_oci()).expect("a digest is a header value"),
    );
    Ok(response)
}

async fn blob(
    state: &MirrorState,
    uri: &Uri,
    name: &str,
    digest_text: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, Error> {
    let digest = parse_digest(digest_text)?;
    // Validates the name and `ns` like a manifest request does.
    reference(state, uri, name, &format!("@{digest_text}"))?;
    let started = std::time::Instant::now();
    tracing::debug!(%digest, head, "mirror blob asked");
    let found = state
        .daemon
        .mirror_blob(digest)
        .await
        .map_err(|e| mirror_error(e, "BLOB_UNKNOWN"))?;
    let size = match &found {
        MirrorBlob::Complete { size, .. } | MirrorBlob::Arriving { size, .. } => *size,
    };
    tracing::debug!(
        %digest,
        size,
        head,
        arriving = matches!(found, MirrorBlob::Arriving { .. }),
        range = ?headers.get(header::RANGE),
        ms = started.elapsed().as_millis() as u64,
        "mirror blob found"
    );
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = match parse_range(range_header, size) {
        Ok(r) => r,
        Err(()) => {
            let mut response = Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "SIZE_INVALID",
                format!("range {range_header:?} is outside the blob's {size} bytes"),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
            );
            return Ok(response);
        }
    };
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { end - start + 1 };
    let body = if head {
        Body::empty()
    } else {
        let daemon = state.daemon.clone();
        let stream = match found {
            MirrorBlob::Complete { path, .. } => file_stream(path, start, len).await?,
            MirrorBlob::Arriving { reader, .. } => {
                reader_stream(reader, start, len, size, state.daemon.clone(), digest)
            }
        };
        Body::from_stream(stream.inspect(move |piece| {
            if let Ok(bytes) = piece {
                daemon.count_mirror_bytes(bytes.len() as u64);
            }
        }))
    };
    let mut response = Response::new(body);
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")).expect("ascii"),
        );
    }
    let h = response.headers_mut();
    add_api_version(h);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        "docker-content-digest",
        HeaderValue::from_str(&digest.to_oci()).expect("a digest is a header value"),
    );
    Ok(response)
}

type PieceStream = futures::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// `len` bytes from `start` of a complete blob's file.
async fn file_stream(path: std::path::PathBuf, start: u64, len: u64) -> Result<PieceStream, Error> {
    let unavailable = |e: std::io::Error| {
        Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            e.to_string(),
        )
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(unavailable)?;
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(unavailable)?;
    }
    Ok(tokio_util::io::ReaderStream::with_capacity(file.take(len), FILE_PIECE).boxed())
}

/// `len` bytes from `start` of a blob still arriving, read on a blocking
/// thread from the store's reader (verified chunks only). A response that
/// ends the blob holds its last piece back until the whole-blob check.
fn reader_stream(
    mut reader: crate::store::BlobReader,
    start: u64,
    len: u64,
    size: u64,
    daemon: Daemon,
    digest: Digest,
) -> PieceStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(PIECES_IN_FLIGHT);
    let abort = reader.abort_handle();
    tokio::task::spawn_blocking(move || {
        reader.seek_to(start);
        let mut left = len;
        let mut last_chunk = std::time::Instant::now();
        while left > 0 {
            let mut buf = vec![0u8; PIECE.min(left as usize)];
            let mut filled = 0;
            let mut failed = None;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    // The reader waited CHUNK_WAIT: go on waiting while the
                    // locality can still deliver (a gateway failing over).
                    Err(e)
                        if e.kind() == std::io::ErrorKind::TimedOut
                            && last_chunk.elapsed() < crate::daemon::STALL_LIMIT
                            && daemon.mirror_still_fetching(&digest) =>
                    {
                        continue
                    }
                    Ok(0) => {
                        failed = Some(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "blob ended early",
                        ));
                        break;
                    }
                    Ok(n) => {
                        filled += n;
                        last_chunk = std::time::Instant::now();
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                tracing::warn!(error = %e, "mirror blob stream ended early");
                let _ = tx.blocking_send(Err(e));
                return;
            }
            left -= filled as u64;
            if left == 0 && start + len == size {
                // The whole-blob check: end of file only once it passed.
                if let Err(e) = reader.read(&mut [0u8; 1]) {
                    tracing::warn!(error = %e, "mirror blob failed its whole-blob check");
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return; // the client went away
            }
        }
    });
    // The client going away drops the stream: stop a reader that waits.
    struct AbortOnDrop(crate::store::ReaderAbort);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let guard = AbortOnDrop(abort);
    tokio_stream_from(rx)
        .map(move |piece| {
            let _ = &guard;
            piece
        })
        .boxed()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_at_the_last_manifests_or_blobs() {
        assert_eq!(target("/v2/"), Some(Target::Base));
        assert_eq!(target("/v2"), Some(Target::Base));
        assert_eq!(
            target("/v2/library/busybox/manifests/latest"),
            Some(Target::Manifest {
                name: "library/busybox",
                reference: "latest"
            })
        );
        assert_eq!(
            target("/v2/a/blobs/b/blobs/sha256:00"),
            Some(Target::Blob {
                name: "a/blobs/b",
                digest: "sha256:00"
            })
        );
        assert_eq!(target("/v2/x/tags/list"), None);
        assert_eq!(target("/v1/x"), None);
        assert_eq!(target("/v2//manifests/x"), None);
    }

    #[test]
    fn ns_is_percent_decoded() {
        let uri: Uri = "/v2/a/manifests/b?ns=127.0.0.1%3A5000&x=1".parse().unwrap();
        assert_eq!(query_param(&uri, "ns").as_deref(), Some("127.0.0.1:5000"));
        let uri: Uri = "/v2/a/manifests/b?ns=docker.io".parse().unwrap();
        assert_eq!(query_param(&uri, "ns").as_deref(), Some("docker.io"));
        assert_eq!(query_param(&uri, "other"), None);
        assert_eq!(percent_decode("a%zz%4"), "a%zz%4");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Ok(Some((0, 4))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
    }
}
