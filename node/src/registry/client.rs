//! The HTTP side: requests with auth, redirects and retries; manifest
//! resolution; resumable blob streams.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgeswarm_protocol::Digest;
use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE};
use reqwest::{Method, Response, StatusCode, Url};
use tracing::{debug, info, warn};

use super::auth::{Challenge, Credentials, DockerConfig, TokenCache, TokenResponse};
use super::error::RegistryError;
use super::manifest::{
    self, layer_kind, parse_manifest, Compression, ImageConfig, ManifestDocument,
    ManifestParseError,
};
use super::platform::Platform;
use super::reference::Reference;

/// How the client behaves. `Default` is Docker-like and suits production.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`HOST[:PORT]`, as in the reference) spoken to over plain
    /// HTTP (`--insecure-registry`). Everything else uses HTTPS.
    pub insecure_registries: Vec<String>,
    /// Treat loopback registries (`localhost`, 127.0.0.0/8, `::1`) as
    /// insecure without listing them, as dockerd does. Default `true`.
    pub loopback_insecure: bool,
    /// Credential source (`~/.docker/config.json` or `--registry-auth FILE`).
    pub credentials: DockerConfig,
    /// Attempts per request (and consecutive failures without progress for
    /// a blob stream) before giving up.
    pub max_attempts: u32,
    /// First backoff delay; doubles per attempt (with jitter).
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured on 429/503; longer waits give up.
    pub max_retry_after: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout for small documents (manifests, configs, tokens).
    pub request_timeout: Duration,
    /// Longest silence inside a blob body before the connection counts as dead
    /// and the stream resumes with Range.
    pub idle_timeout: Duration,
    /// Largest manifest or index accepted (containerd uses 4 MiB).
    pub max_manifest_bytes: u64,
    /// Largest image config accepted.
    pub max_config_bytes: u64,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            loopback_insecure: true,
            credentials: DockerConfig::empty(),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 16 << 20,
            user_agent: concat!("edgeswarm/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl RegistryConfig {
    /// The configuration for the daemon's flags: `--insecure-registry
    /// HOST[:PORT]` (repeatable) and `--registry-auth FILE` (Docker
    /// `config.json` shape; without it `~/.docker/config.json` is used,
    /// missing meaning anonymous).
    pub fn from_flags(
        insecure_registries: &[String],
        registry_auth: Option<&std::path::Path>,
    ) -> Result<RegistryConfig, RegistryError> {
        for entry in insecure_registries {
            // Same host grammar as references.
            Reference::parse(&format!("{entry}/probe")).map_err(RegistryError::from)?;
            if entry.contains('/') {
                return Err(RegistryError::from(
                    super::reference::ReferenceError::InvalidDomain(entry.clone()),
                ));
            }
        }
        let credentials = match registry_auth {
            Some(path) => DockerConfig::load(path),
            None => DockerConfig::load_default(),
        }
        .map_err(|source| RegistryError::Credentials {
            reference: "(registry credentials)".into(),
            source,
        })?;
        Ok(RegistryConfig {
            insecure_registries: insecure_registries.to_vec(),
            credentials,
            ..RegistryConfig::default()
        })
    }
}

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
struct Counters {
    bytes_pulled: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    resumes: AtomicU64,
}

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

/// The OCI Distribution pull client. Cheap to clone (an `Arc` inside);
/// share one per process so tokens and counters are shared.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    config: RegistryConfig,
    tokens: TokenCache,
    /// Auth scheme learned per API host (`None`: anonymous works).
    schemes: Mutex<HashMap<String, Option<Challenge>>>,
    /// Credentials looked up per registry (helpers run once).
    credentials: tokio::sync::Mutex<HashMap<String, Option<Credentials>>>,
    counters: Counters,
}

/// What one HTTP exchange concerns, for auth decisions and error messages.
struct Target<'a> {
    reference: &'a Reference,
    what: String,
    /// Whether the registry's credentials may be attached (false for foreign URLs).
    registry_auth: bool,
}

enum Attempt {
    Done(Response),
    Retry {
        after: Option<Duration>,
        reason: String,
    },
}

impl RegistryClient {
    /// Builds a client.
    pub fn new(config: RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| RegistryError::Io {
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

    fn url(&self, reference: &Reference, path: &str) -> Result<Url, RegistryError> {
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

    fn set_scheme(&self, host: &str, challenge: Option<Challenge>, only_if_absent: bool) {
        let mut schemes = self.inner.schemes.lock().unwrap_or_else(|p| p.into_inner());
        if only_if_absent && schemes.contains_key(host) {
            return;
        }
        schemes.insert(host.to_owned(), challenge);
    }

    fn scheme(&self, host: &str) -> Option<Option<Challenge>> {
        let schemes = self.inner.schemes.lock().unwrap_or_else(|p| p.into_inner());
        schemes.get(host).cloned()
    }

    async fn credentials(
        &self,
        reference: &Reference,
    ) -> Result<Option<Credentials>, RegistryError> {
        let mut cache = self.inner.credentials.lock().await;
        if let Some(c) = cache.get(&reference.registry) {
            return Ok(c.clone());
        }
        let creds = self
            .inner
            .config
            .credentials
            .credentials_for(&reference.registry)
            .await
            .map_err(|source| RegistryError::Credentials {
                reference: reference.to_string(),
                source,
            })?;
        cache.insert(reference.registry.clone(), creds.clone());
        Ok(creds)
    }

    fn scope(reference: &Reference) -> String {
        format!("repository:{}:pull", reference.repository)
    }

    /// The Authorization header for the registry as currently known.
    async fn authorization(
        &self,
        reference: &Reference,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let Some(Some(challenge)) = self.scheme(reference.api_host()) else {
            return Ok(None);
        };
        let value = match challenge {
            Challenge::Basic => match self.credentials(reference).await? {
                Some(creds) => creds.basic_header(),
                None => None,
            },
            Challenge::Bearer { realm, service, .. } => {
                let scope = Self::scope(reference);
                let token = match self.inner.tokens.get(reference.api_host(), &scope) {
                    Some(token) => token,
                    None => {
                        self.fetch_token(reference, &realm, service.as_deref(), &scope)
                            .await?
                    }
                };
                Some(format!("Bearer {token}"))
            }
        };
        Ok(value
            .and_then(|v| HeaderValue::from_str(&v).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            }))
    }

    /// The token flow: GET realm?service=..&scope=.. (Basic creds or
    /// anonymous), or POST a refresh token for identity tokens.
    async fn fetch_token(
        &self,
        reference: &Reference,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let token_err = |reason: String| RegistryError::Token {
            reference: reference.to_string(),
            realm: realm.to_owned(),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| RegistryError::BadUrl {
            reference: reference.to_string(),
            url: realm.to_owned(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(token_err("realm is not an http(s) URL".into()));
        }
        let creds = self.credentials(reference).await?;
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
            let request = match &creds {
                Some(Credentials::IdentityToken(refresh)) => {
                    let mut form = vec![
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh.as_str()),
                        ("client_id", "edgeswarm"),
                        ("scope", scope),
                    ];
                    if let Some(service) = service {
                        form.push(("service", service));
                    }
                    let body = form
                        .iter()
                        .map(|(k, v)| format!("{k}={}", form_encode(v)))
                        .collect::<Vec<_>>()
                        .join("&");
                    self.inner
                        .http
                        .post(url.clone())
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body)
                }
                other => {
                    {
                        let mut q = url.query_pairs_mut();
                        q.clear();
                        if let Some(service) = service {
                            q.append_pair("service", service);
                        }
                        q.append_pair("scope", scope);
                    }
                    let mut req = self.inner.http.get(url.clone());
                    if let Some(header) = other.as_ref().and_then(Credentials::basic_header) {
                        req = req.header(AUTHORIZATION, header);
                    }
                    req
                }
            };
            let result = request
                .timeout(self.inner.config.request_timeout)
                .send()
                .await;
            let retry_reason = match result {
                Ok(resp) if resp.status().is_success() => break resp,
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    format!("HTTP {}", resp.status())
                }
                Ok(resp) => {
                    let status = resp.status();
                    let detail = error_detail(resp).await;
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        return Err(RegistryError::Unauthorized {
                            reference: reference.to_string(),
                            what: "bearer token".into(),
                            detail: format!(
                                "token endpoint rejected the {} (HTTP {status}): {detail}",
                                if creds.is_some() {
                                    "credentials"
                                } else {
                                    "anonymous request"
                                }
                            ),
                        });
                    }
                    return Err(token_err(format!("HTTP {status}: {detail}")));
                }
                Err(e) => e.to_string(),
            };
            if attempt >= self.inner.config.max_attempts {
                return Err(token_err(format!(
                    "after {attempt} attempts: {retry_reason}"
                )));
            }
            self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.backoff(attempt)).await;
        };
        let body = response
            .bytes()
            .await
            .map_err(|e| token_err(format!("reading answer: {e}")))?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| token_err(format!("bad JSON: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("answer has neither `token` nor `access_token`".into()))?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).max(1));
        self.inner
            .tokens
            .put(reference.api_host(), scope, token.clone(), lifetime);
        debug!(
            registry = reference.api_host(),
            scope,
            ?lifetime,
            "bearer token obtained"
        );
        Ok(token)
    }

    fn backoff(&self, attempt: u32) -> Duration {
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
                    return Ok(Attempt::Retry {
                        after: None,
                        reason: error_chain(&e),
                    })
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
    async fn execute(
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
    async fn fetch_small(
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
    inner: BoxStream<'static, Result<Bytes, RegistryError>>,
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

enum Source {
    Registry,
    Url(String),
}

struct BlobState {
    client: RegistryClient,
    reference: Reference,
    digest: Digest,
    sources: Vec<Source>,
    source: usize,
    /// Offset of the next byte to deliver.
    position: u64,
    /// Total blob size when known (descriptor or response headers).
    size: Option<u64>,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Bytes to drop from the current body (server ignored Range).
    skip: u64,
    /// Consecutive failures without delivering a byte.
    failures: u32,
    counter: Arc<AtomicU64>,
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

/// `bytes START-END/TOTAL` -> (START, TOTAL if known).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    Some((start, total))
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `localhost`, 127.0.0.0/8 or `::1`, with or without port.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn challenge_of(resp: &Response) -> Option<Challenge> {
    resp.headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(Challenge::parse)
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
async fn error_detail(resp: Response) -> String {
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
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
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
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.3.2.1"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("registry.example.com"));
    }

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
    fn config_from_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        std::fs::write(
            &file,
            br#"{"auths":{"r.example:5000":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let cfg = RegistryConfig::from_flags(&["r.example:5000".into()], Some(&file)).unwrap();
        assert_eq!(cfg.insecure_registries, vec!["r.example:5000".to_owned()]);
        assert!(RegistryConfig::from_flags(&["bad host".into()], Some(&file)).is_err());
        assert!(RegistryConfig::from_flags(&["h:1/x".into()], Some(&file)).is_err());
        let missing = dir.path().join("missing.json");
        assert!(matches!(
            RegistryConfig::from_flags(&[], Some(&missing)),
            Err(RegistryError::Credentials { .. })
        ));
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
