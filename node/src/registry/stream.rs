//! Resumable blob streams: [`RegistryClient::blob_stream`] and
//! [`RegistryClient::layer_stream`] return a [`BlobStream`] that yields a
//! blob's bytes in order from an offset. A failure mid-body reopens the
//! blob with `Range: bytes=N-` from the last byte delivered (a server that
//! ignores Range has its prefix discarded), so the consumer sees one
//! stream; foreign-layer URLs are tried first, without credentials. The
//! stream does not hash: the store verifies every chunk and the blob.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use edgeswarm_protocol::Digest;
use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode, Url};
use tracing::{debug, warn};

use super::client::{error_chain, RegistryClient, Target};
use super::error::RegistryError;
use super::reference::Reference;
use super::resolve::LayerDescriptor;

impl RegistryClient {
    /// Streams a blob from the registry starting at byte `offset`. Failures
    /// mid-body reopen the blob with `Range: bytes=N-` from the last byte
    /// delivered, so the consumer sees one continuous stream. Memory is
    /// bounded by one HTTP chunk. The stream does not hash: the consumer
    /// (the store) verifies chunks and the whole blob.
    pub fn blob_stream(&self, reference: &Reference, digest: &Digest, offset: u64) -> BlobStream {
        self.stream_from(reference, digest, None, Vec::new(), offset)
    }

    /// Like [`blob_stream`](Self::blob_stream) for a manifest layer: knows
    /// the size (a short or long body is an error) and, for foreign layers,
    /// tries the descriptor's `urls` first (without registry credentials),
    /// then the registry.
    pub fn layer_stream(
        &self,
        reference: &Reference,
        layer: &LayerDescriptor,
        offset: u64,
    ) -> BlobStream {
        let urls = if layer.foreign || !layer.urls.is_empty() {
            layer.urls.clone()
        } else {
            Vec::new()
        };
        self.stream_from(reference, &layer.digest, Some(layer.size), urls, offset)
    }

    fn stream_from(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: Option<u64>,
        urls: Vec<String>,
        offset: u64,
    ) -> BlobStream {
        let counter = Arc::new(AtomicU64::new(0));
        let mut sources: Vec<Source> = urls.into_iter().map(Source::Url).collect();
        sources.push(Source::Registry);
        let state = BlobState {
            client: self.clone(),
            reference: reference.clone(),
            digest: *digest,
            sources,
            source: 0,
            position: offset,
            size,
            body: None,
            skip: 0,
            failures: 0,
            counter: counter.clone(),
            done: false,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_chunk().await?;
            Some((item, state))
        })
        .boxed();
        BlobStream { inner, counter }
    }
}

/// A resumable blob byte stream. Yields the blob's bytes from the requested
/// offset in order; an `Err` item ends the stream.
pub struct BlobStream {
    /// The bytes, produced by a `BlobState`.
    inner: BoxStream<'static, Result<Bytes, RegistryError>>,
    /// Bytes received from the network so far.
    counter: Arc<AtomicU64>,
}

impl BlobStream {
    /// Body bytes this stream received from the network so far (including
    /// bytes received twice or discarded around a resume).
    pub fn bytes_received(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// A shared handle on the same counter (readable after the stream is moved).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("bytes_received", &self.bytes_received())
            .finish()
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Where a blob's bytes may come from.
enum Source {
    /// The registry's `/v2/<repo>/blobs/<digest>`.
    Registry,
    /// A foreign layer's URL (no registry credentials).
    Url(String),
}

/// The state behind a [`BlobStream`].
struct BlobState {
    /// The client (counters, retry settings, requests).
    client: RegistryClient,
    /// The image the blob belongs to.
    reference: Reference,
    /// The blob.
    digest: Digest,
    /// Sources in the order tried: foreign URLs, then the registry.
    sources: Vec<Source>,
    /// Index in `sources` of the source in use.
    source: usize,
    /// Offset of the next byte to deliver.
    position: u64,
    /// Total blob size when known (descriptor or response headers).
    size: Option<u64>,
    /// The open response body, if any.
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Bytes to drop from the current body (server ignored Range).
    skip: u64,
    /// Consecutive failures without delivering a byte.
    failures: u32,
    /// Bytes received by this stream (shared with the [`BlobStream`]).
    counter: Arc<AtomicU64>,
    /// The stream has ended (complete or failed).
    done: bool,
}

impl BlobState {
    fn what(&self) -> String {
        format!("blob {}", self.digest)
    }

    fn fail(&mut self, error: RegistryError) -> Option<Result<Bytes, RegistryError>> {
        self.done = true;
        self.body = None;
        Some(Err(error))
    }

    /// Opens the body at `position` from the current source.
    async fn open(&mut self) -> Result<(), RegistryError> {
        let reference = &self.reference;
        let (url, registry_auth) = match &self.sources[self.source] {
            Source::Registry => (
                self.client.url(
                    reference,
                    &format!("{}/blobs/{}", reference.repository, self.digest.to_oci()),
                )?,
                true,
            ),
            Source::Url(text) => {
                let url = Url::parse(text).map_err(|e| RegistryError::BadUrl {
                    reference: reference.to_string(),
                    url: text.clone(),
                    reason: e.to_string(),
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(RegistryError::BadUrl {
                        reference: reference.to_string(),
                        url: text.clone(),
                        reason: "foreign layer URL is not http(s)".into(),
                    });
                }
                (url, false)
            }
        };
        let target = Target {
            reference,
            what: self.what(),
            registry_auth,
        };
        let mut headers = HeaderMap::new();
        if self.position > 0 {
            let range = format!("bytes={}-", self.position);
            headers.insert(RANGE, HeaderValue::from_str(&range).expect("ascii"));
        }
        let resp = self
            .client
            .execute(&target, Method::GET, &url, &headers, false)
            .await?;
        let bad_range = |reason: String| RegistryError::BadRange {
            reference: reference.to_string(),
            digest: self.digest,
            reason,
        };
        self.skip = 0;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let content_range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| bad_range("206 without Content-Range".into()))?;
            let (start, total) = parse_content_range(content_range)
                .ok_or_else(|| bad_range(format!("unparsable Content-Range {content_range:?}")))?;
            if start > self.position {
                return Err(bad_range(format!(
                    "asked for bytes from {}, got from {start}",
                    self.position
                )));
            }
            self.skip = self.position - start;
            if let (Some(total), None) = (total, self.size) {
                self.size = Some(total);
            }
        } else {
            // 200: the whole blob, whatever we asked for.
            if self.position > 0 {
                debug!(
                    position = self.position,
                    "server ignored Range; discarding prefix"
                );
            }
            self.skip = self.position;
            if let (Some(len), None) = (resp.content_length(), self.size) {
                self.size = Some(len);
            }
        }
        if let Some(size) = self.size {
            if self.position > size {
                return Err(bad_range(format!(
                    "offset {} beyond blob size {size}",
                    self.position
                )));
            }
        }
        self.body = Some(resp.bytes_stream().boxed());
        Ok(())
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, RegistryError>> {
        loop {
            if self.done {
                return None;
            }
            if self.size == Some(self.position) && self.position > 0 && self.body.is_none() {
                self.done = true;
                return None;
            }
            if self.body.is_none() {
                if let Err(error) = self.open().await {
                    let foreign = matches!(self.sources[self.source], Source::Url(_));
                    if foreign && self.source + 1 < self.sources.len() {
                        warn!(reference = %self.reference, digest = %self.digest, %error, "foreign URL failed; trying next source");
                        self.source += 1;
                        continue;
                    }
                    return self.fail(error);
                }
            }
            let idle = self.client.inner.config.idle_timeout;
            let body = self.body.as_mut().expect("opened above");
            let failure = match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(mut chunk))) => {
                    let n = chunk.len() as u64;
                    self.counter.fetch_add(n, Ordering::Relaxed);
                    self.client
                        .inner
                        .counters
                        .bytes_pulled
                        .fetch_add(n, Ordering::Relaxed);
                    if self.skip > 0 {
                        let drop = self.skip.min(n);
                        self.skip -= drop;
                        let _ = chunk.split_to(drop as usize);
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.position += chunk.len() as u64;
                    self.failures = 0;
                    if let Some(size) = self.size {
                        if self.position > size {
                            let error = RegistryError::SizeMismatch {
                                reference: self.reference.to_string(),
                                what: self.what(),
                                expected: size,
                                actual: self.position,
                            };
                            return self.fail(error);
                        }
                    }
                    return Some(Ok(chunk));
                }
                Ok(None) => {
                    self.body = None;
                    match self.size {
                        Some(size) if self.position < size => {
                            format!("body ended at byte {} of {size}", self.position)
                        }
                        _ => {
                            self.done = true;
                            return None;
                        }
                    }
                }
                Ok(Some(Err(e))) => error_chain(&e),
                Err(_) => format!("no data for {idle:?}"),
            };
            // Transient failure mid-body: resume with Range after a backoff.
            self.body = None;
            self.failures += 1;
            let attempts = self.client.inner.config.max_attempts;
            if self.failures >= attempts {
                let error = RegistryError::RetriesExhausted {
                    reference: self.reference.to_string(),
                    what: self.what(),
                    attempts: self.failures,
                    last: failure,
                    hint: "",
                };
                return self.fail(error);
            }
            let delay = self.client.backoff(self.failures);
            warn!(reference = %self.reference, digest = %self.digest, position = self.position, %failure, ?delay, "blob interrupted; resuming with Range");
            self.client
                .inner
                .counters
                .resumes
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
    }
}

/// `bytes START-END/TOTAL` -> (START, TOTAL if known). A range that
/// ends before it starts, or past a known total, is not a range (RFC 9110
/// 14.4): refused, so a broken or hostile server cannot set the blob's
/// size below the bytes it then sends.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if end >= t {
                return None;
            }
            Some(t)
        }
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes 9-5/20"), None);
        assert_eq!(parse_content_range("bytes 5-20/20"), None);
        assert_eq!(parse_content_range("bytes 5-9/x"), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// `Content-Range` from a registry (or anything between it and us)
        /// never panics the parser; what parses is a sane range.
        #[test]
        fn content_range_never_panics(
            text in "(bytes )?[0-9*]{0,22}(-[0-9]{0,22})?(/[0-9*]{0,22})?",
            noise in ".{0,40}",
        ) {
            for value in [text.as_str(), noise.as_str()] {
                if let Some((start, Some(total))) = parse_content_range(value) {
                    proptest::prop_assert!(start < total);
                }
            }
        }
    }
}
