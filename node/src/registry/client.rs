//! The request core every registry exchange goes through.
//!
//! ## Layout
//!
//! - [`RegistryClient`] and its shared state (HTTP client, configuration,
//!   token cache, learned auth schemes, credentials, [`RegistryStats`]
//!   counters); the `/v2/` probe ([`RegistryClient::ping`]) that learns a
//!   registry's auth scheme.
//! - One request (`attempt`): redirects followed by hand so the registry's
//!   `Authorization` never goes to another origin; transient failures
//!   (5xx, 408, 429, timeouts, resets) come back as a retry with an
//!   optional `Retry-After`.
//! - `execute`: auth (from [`auth`](super::auth)), retries with jittered
//!   exponential backoff (`wait_retry`), one re-authentication after a 401,
//!   statuses mapped to [`RegistryError`]s. `fetch_small` adds size-limited
//!   bodies (documents), retried when a body breaks off.
//!
//! What is fetched lives beside it: manifests and configs in
//! [`resolve`](super::resolve), layer bytes in [`stream`](super::stream).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, Response, StatusCode, Url};
use tracing::{debug, warn};

use super::auth::{challenge_of, Challenge, Credentials, TokenCache};
use super::config::{is_loopback, RegistryConfig};
use super::error::RegistryError;
use super::reference::Reference;

/// Counters of registry traffic, for "bytes from the cloud" metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Response body bytes received from registries and foreign URLs
    /// (manifests, configs, blobs, including bytes discarded after a
    /// server ignored a Range header).
    pub bytes_pulled: u64,
    /// HTTP requests sent (including retries, redirects and token requests).
    pub requests: u64,
    /// Requests repeated after a transient failure.
    pub retries: u64,
    /// Blob streams reopened with `Range` after a failure mid-body.
    pub resumes: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    /// See [`RegistryStats::bytes_pulled`].
    pub(super) bytes_pulled: AtomicU64,
    /// See [`RegistryStats::requests`].
    pub(super) requests: AtomicU64,
    /// See [`RegistryStats::retries`].
    pub(super) retries: AtomicU64,
    /// See [`RegistryStats::resumes`].
    pub(super) resumes: AtomicU64,
}

/// The OCI Distribution pull client. Cheap to clone (an `Arc` inside);
/// share one per process so tokens and counters are shared.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    /// The HTTP client; redirects are off (followed by hand, see `attempt`).
    pub(super) http: reqwest::Client,
    /// The configuration in use.
    pub(super) config: RegistryConfig,
    /// Bearer tokens per (API host, scope).
    pub(super) tokens: TokenCache,
    /// Auth scheme learned per API host (`None`: anonymous works).
    pub(super) schemes: Mutex<HashMap<String, Option<Challenge>>>,
    /// Credentials looked up per registry (helpers run once).
    pub(super) credentials: tokio::sync::Mutex<HashMap<String, Option<Credentials>>>,
    /// Traffic counters behind [`RegistryClient::stats`].
    pub(super) counters: Counters,
}

/// What one HTTP exchange concerns, for auth decisions and error messages.
pub(super) struct Target<'a> {
    /// The image the exchange is for (names the registry and repository).
    pub(super) reference: &'a Reference,
    /// What is fetched, for errors and logs ("manifest latest", "blob ...").
    pub(super) what: String,
    /// Whether the registry's credentials may be attached (false for foreign URLs).
    pub(super) registry_auth: bool,
}

/// How one request ended.
enum Attempt {
    /// A final status (success or not), redirects followed.
    Done(Response),
    /// A transient failure: try again.
    Retry {
        /// The server's `Retry-After`, if it sent one.
        after: Option<Duration>,
        /// What failed, for logs and the final error.
        reason: String,
    },
}

impl RegistryClient {
    /// Builds a client.
    pub fn new(config: RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone());
        for ca in &config.extra_ca {
            builder = builder.add_root_certificate(ca.clone());
        }
        let http = builder.build().map_err(|e| RegistryError::Io {
            context: "building HTTP client".into(),
            source: std::io::Error::other(e),
        })?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                config,
                tokens: TokenCache::default(),
                schemes: Mutex::new(HashMap::new()),
                credentials: tokio::sync::Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// Traffic counters since the client was built.
    pub fn stats(&self) -> RegistryStats {
        let c = &self.inner.counters;
        RegistryStats {
            bytes_pulled: c.bytes_pulled.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            resumes: c.resumes.load(Ordering::Relaxed),
        }
    }

    /// Body bytes received from registries so far ("cloud bytes").
    pub fn bytes_pulled(&self) -> u64 {
        self.inner.counters.bytes_pulled.load(Ordering::Relaxed)
    }

    /// Whether `registry` is spoken to over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let cfg = &self.inner.config;
        if cfg.insecure_registries.iter().any(|r| r == registry) {
            return true;
        }
        cfg.loopback_insecure && is_loopback(registry)
    }

    /// `http(s)://api-host/v2/`.
    pub fn base_url(&self, reference: &Reference) -> Result<Url, RegistryError> {
        let scheme = if self.is_insecure(&reference.registry) {
            "http"
        } else {
            "https"
        };
        let text = format!("{scheme}://{}/v2/", reference.api_host());
        Url::parse(&text).map_err(|e| RegistryError::BadUrl {
            reference: reference.to_string(),
            url: text,
            reason: e.to_string(),
        })
    }

    pub(super) fn url(&self, reference: &Reference, path: &str) -> Result<Url, RegistryError> {
        let base = self.base_url(reference)?;
        base.join(path).map_err(|e| RegistryError::BadUrl {
            reference: reference.to_string(),
            url: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// `GET /v2/`: checks the registry speaks the Distribution API and
    /// learns its auth scheme (so later requests authenticate up front).
    pub async fn ping(&self, reference: &Reference) -> Result<(), RegistryError> {
        let url = self.url(reference, "")?;
        let target = Target {
            reference,
            what: "API version check /v2/".into(),
            registry_auth: false,
        };
        let host = reference.api_host().to_owned();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .attempt(&target, &Method::GET, &url, &HeaderMap::new(), None, true)
                .await?
            {
                Attempt::Done(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        self.set_scheme(&host, None, false);
                        return Ok(());
                    }
                    if status == StatusCode::UNAUTHORIZED {
                        let challenge = challenge_of(&resp);
                        debug!(%host, ?challenge, "registry requires auth");
                        self.set_scheme(&host, challenge, false);
                        return Ok(());
                    }
                    return Err(self.status_error(&target, resp).await);
                }
                Attempt::Retry { after, reason } => {
                    self.wait_retry(&target, attempt, after, reason).await?;
                }
            }
        }
    }

    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let cfg = &self.inner.config;
        let exp = cfg
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(cfg.max_backoff);
        // Jitter in [0.5, 1.0) so a locality's retries do not align.
        capped.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    async fn wait_retry(
        &self,
        target: &Target<'_>,
        attempt: u32,
        after: Option<Duration>,
        reason: String,
    ) -> Result<(), RegistryError> {
        let cfg = &self.inner.config;
        let hint = if reason.contains("error sending request")
            && !self.is_insecure(&target.reference.registry)
        {
            " (if this registry serves plain HTTP, list it with --insecure-registry)"
        } else {
            ""
        };
        let exhausted = || RegistryError::RetriesExhausted {
            reference: target.reference.to_string(),
            what: target.what.clone(),
            attempts: attempt,
            last: reason.clone(),
            hint,
        };
        if attempt >= cfg.max_attempts {
            return Err(exhausted());
        }
        let delay = match after {
            Some(after) if after > cfg.max_retry_after => return Err(exhausted()),
            Some(after) => after,
            None => self.backoff(attempt),
        };
        warn!(reference = %target.reference, what = %target.what, attempt, ?delay, %reason, "retrying");
        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// One request, following redirects (without the registry's
    /// Authorization on another origin). Transient failures come back as
    /// `Attempt::Retry`; final statuses as `Attempt::Done`.
    async fn attempt(
        &self,
        target: &Target<'_>,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
        small: bool,
    ) -> Result<Attempt, RegistryError> {
        let origin = url.clone();
        let mut url = url.clone();
        for _ in 0..10 {
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(auth) = auth {
                if same_origin(&origin, &url) {
                    request = request.header(AUTHORIZATION, auth.clone());
                }
            }
            if small {
                request = request.timeout(self.inner.config.request_timeout);
            }
            self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
            // Small requests carry a whole-request timeout; streams get the
            // idle timeout for their headers here and per chunk later.
            let idle = self.inner.config.idle_timeout;
            let sent = match tokio::time::timeout(idle, request.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Ok(Attempt::Retry {
                        after: None,
                        reason: format!("no response within {idle:?}"),
                    })
                }
            };
            let response = match sent {
                Ok(r) => r,
                Err(e) if e.is_builder() => {
                    return Err(RegistryError::BadUrl {
                        reference: target.reference.to_string(),
                        url: url.to_string(),
                        reason: e.to_string(),
                    })
                }
                Err(e) => {
                    if let Some(reason) = untrusted_certificate(&e) {
                        return Err(RegistryError::Tls {
                            reference: target.reference.to_string(),
                            what: target.what.clone(),
                            reason,
                        });
                    }
                    return Ok(Attempt::Retry {
                        after: None,
                        reason: error_chain(&e),
                    });
                }
            };
            let status = response.status();
            if status.is_redirection() {
                let Some(location) = response.headers().get(reqwest::header::LOCATION) else {
                    return Ok(Attempt::Done(response));
                };
                let location = location.to_str().unwrap_or_default().to_owned();
                url = url.join(&location).map_err(|e| RegistryError::BadUrl {
                    reference: target.reference.to_string(),
                    url: location.clone(),
                    reason: e.to_string(),
                })?;
                debug!(%url, cross_origin = !same_origin(&origin, &url), "following redirect");
                continue;
            }
            if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
                let after = retry_after(&response);
                return Ok(Attempt::Retry {
                    after,
                    reason: format!("HTTP {status}"),
                });
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let after = retry_after(&response).or(Some(self.backoff(1)));
                return Ok(Attempt::Retry {
                    after,
                    reason: "HTTP 429 Too Many Requests".into(),
                });
            }
            return Ok(Attempt::Done(response));
        }
        Err(RegistryError::BadUrl {
            reference: target.reference.to_string(),
            url: url.to_string(),
            reason: "more than 10 redirects".into(),
        })
    }

    /// A request with auth, retries and status mapping: returns only 2xx
    /// responses (206 included).
    pub(super) async fn execute(
        &self,
        target: &Target<'_>,
        method: Method,
        url: &Url,
        headers: &HeaderMap,
        small: bool,
    ) -> Result<Response, RegistryError> {
        let host = target.reference.api_host().to_owned();
        if target.registry_auth && self.scheme(&host).is_none() {
            self.ping(target.reference).await?;
        }
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let auth = if target.registry_auth {
                self.authorization(target.reference).await?
            } else {
                None
            };
            match self
                .attempt(target, &method, url, headers, auth.as_ref(), small)
                .await?
            {
                Attempt::Retry { after, reason } => {
                    self.wait_retry(target, attempt, after, reason).await?;
                }
                Attempt::Done(resp) if resp.status().is_success() => return Ok(resp),
                Attempt::Done(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED
                        && target.registry_auth
                        && !reauthenticated =>
                {
                    // Token expired, a new scope, or a scheme we had not seen.
                    reauthenticated = true;
                    attempt -= 1;
                    let challenge = challenge_of(&resp);
                    self.inner
                        .tokens
                        .invalidate(&host, &Self::scope(target.reference));
                    if challenge.is_none() {
                        return Err(self.status_error(target, resp).await);
                    }
                    self.set_scheme(&host, challenge, false);
                }
                Attempt::Done(resp) => return Err(self.status_error(target, resp).await),
            }
        }
    }

    async fn status_error(&self, target: &Target<'_>, resp: Response) -> RegistryError {
        let status = resp.status();
        let mut detail = error_detail(resp).await;
        let reference = target.reference.to_string();
        let what = target.what.clone();
        match status {
            StatusCode::UNAUTHORIZED => {
                let has_creds = self
                    .inner
                    .credentials
                    .lock()
                    .await
                    .get(&target.reference.registry)
                    .is_some_and(Option::is_some);
                detail.push_str(if has_creds {
                    " (the registry rejected the configured credentials)"
                } else {
                    " (no credentials configured for this registry: use ~/.docker/config.json or --registry-auth)"
                });
                RegistryError::Unauthorized {
                    reference,
                    what,
                    detail,
                }
            }
            StatusCode::FORBIDDEN => RegistryError::Denied {
                reference,
                what,
                detail,
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                reference,
                what,
                detail,
            },
            other => RegistryError::Http {
                reference,
                what,
                status: other.as_u16(),
                detail,
            },
        }
    }

    /// Reads a small body with a size limit, counting bytes.
    async fn read_limited(
        &self,
        target: &Target<'_>,
        resp: Response,
        limit: u64,
    ) -> Result<Result<Bytes, String>, RegistryError> {
        let too_large = || RegistryError::TooLarge {
            reference: target.reference.to_string(),
            what: target.what.clone(),
            limit,
        };
        if resp.content_length().is_some_and(|l| l > limit) {
            return Err(too_large());
        }
        let mut body = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    self.inner
                        .counters
                        .bytes_pulled
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if body.len() as u64 + chunk.len() as u64 > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(e) => return Ok(Err(error_chain(&e))),
            }
        }
        Ok(Ok(body.freeze()))
    }

    /// GET of a small document with retries covering body failures too.
    pub(super) async fn fetch_small(
        &self,
        target: &Target<'_>,
        url: &Url,
        headers: &HeaderMap,
        limit: u64,
    ) -> Result<(Bytes, HeaderMap), RegistryError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .execute(target, Method::GET, url, headers, true)
                .await?;
            let resp_headers = resp.headers().clone();
            match self.read_limited(target, resp, limit).await? {
                Ok(bytes) => return Ok((bytes, resp_headers)),
                Err(reason) => self.wait_retry(target, attempt, None, reason).await?,
            }
        }
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The registry's JSON error (`{"errors":[{"code","message"}]}`) or a
/// snippet of the body.
pub(super) async fn error_detail(resp: Response) -> String {
    let body = resp.bytes().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(&body) {
        let text: Vec<String> = errors
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect();
        if !text.is_empty() {
            return text.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_owned();
    if text.is_empty() {
        "(no details)".into()
    } else {
        text
    }
}

/// An error with its sources, so "connection reset" is not hidden behind
/// "error sending request".
/// The certificate problem behind a failed request, if rustls rejected
/// the server's certificate. Retrying cannot help with that, and the
/// operator needs to hear "untrusted CA", not "giving up after 6
/// attempts". The rustls error sits inside `io::Error`s (nested: the TLS
/// stream's inside the connector's), whose `source()` skips the error
/// they wrap, so each is also opened with `get_ref`.
fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls @ rustls::Error::InvalidCertificate(_)) = e.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(found) = untrusted_certificate(inner) {
            return Some(found);
        }
    }
    e.source().and_then(untrusted_certificate)
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_rules() {
        let client = RegistryClient::new(RegistryConfig {
            insecure_registries: vec!["10.0.0.5:5000".into()],
            loopback_insecure: false,
            ..RegistryConfig::default()
        })
        .unwrap();
        assert!(client.is_insecure("10.0.0.5:5000"));
        assert!(!client.is_insecure("10.0.0.5:5001"));
        assert!(!client.is_insecure("127.0.0.1:5000"));
        let r = Reference::parse("10.0.0.5:5000/app").unwrap();
        assert_eq!(
            client.base_url(&r).unwrap().as_str(),
            "http://10.0.0.5:5000/v2/"
        );
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(
            client.base_url(&r).unwrap().as_str(),
            "https://registry-1.docker.io/v2/"
        );
    }

    #[test]
    fn redirect_origin() {
        let a = Url::parse("https://reg.example/v2/x").unwrap();
        assert!(same_origin(
            &a,
            &Url::parse("https://reg.example:443/other").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("https://s3.example/blob").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("http://reg.example/blob").unwrap()
        ));
    }
}
