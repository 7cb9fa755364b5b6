//! Registry credentials and the token flow.
//!
//! ## Credential sources
//!
//! [`DockerConfig`] reads Docker's `config.json` shape, used both for
//! `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`) and for an
//! explicit `--registry-auth FILE`, which has *the same JSON shape*:
//!
//! ```json
//! {
//!   "auths": {
//!     "registry.example.com:5000": { "auth": "base64(user:password)" },
//!     "other.example.com": { "username": "u", "password": "p" },
//!     "oauth.example.com": { "identitytoken": "refresh-token" }
//!   },
//!   "credHelpers": { "123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login" },
//!   "credsStore": "pass"
//! }
//! ```
//!
//! Lookup order for a registry: `credHelpers[host]`, then `auths[host]`
//! (keys may be written as `host`, `https://host`, `http://host/v2/`;
//! Docker Hub also as `https://index.docker.io/v1/`), then `credsStore`.
//! A helper runs as `docker-credential-<name> get` with the server URL on
//! stdin and answers `{"Username": .., "Secret": ..}`; a `<token>` username
//! means the secret is an identity (refresh) token.
//!
//! ## Challenges and tokens
//!
//! [`Challenge::parse`] reads `WWW-Authenticate` (RFC 7235 auth-params,
//! quoted or token values). [`TokenCache`] keeps bearer tokens per
//! (registry, scope) until shortly before their expiry.
//!
//! ## The token flow
//!
//! `impl RegistryClient` (at the end of this file) keeps the auth scheme
//! learned per API host (from the `/v2/` probe or a 401), looks each
//! registry's credentials up once, and builds a request's `Authorization`:
//! Basic from the credentials, or a bearer token from the cache or fetched
//! from the challenge's realm (`GET ?service=&scope=` anonymously or with
//! Basic credentials; `POST` of a refresh token for identity tokens).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;
use tracing::debug;

use super::client::{error_detail, RegistryClient};
use super::error::RegistryError;
use super::reference::Reference;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (or a personal access token as password).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

impl Credentials {
    /// The `Authorization: Basic ...` value, for basic credentials.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credentials::IdentityToken(_) => None,
        }
    }
}

/// Why credentials could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The config file could not be read.
    #[error("reading registry credentials {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid JSON of Docker's shape.
    #[error("parsing registry credentials {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An `auth` entry is not base64 of `user:password`.
    #[error("credentials for {registry}: `auth` is not base64 of user:password")]
    BadAuthField {
        /// The registry key.
        registry: String,
    },
    /// A credential helper failed to run or answered nonsense.
    #[error("credential helper docker-credential-{helper} for {registry}: {reason}")]
    Helper {
        /// Helper name (`pass`, `ecr-login`, ...).
        helper: String,
        /// The registry asked for.
        registry: String,
        /// What went wrong.
        reason: String,
    },
}

#[derive(Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Docker's `config.json` (the parts about registry credentials).
#[derive(Clone, Default, Deserialize)]
pub struct DockerConfig {
    /// Inline credentials per registry key.
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Default credential helper for every registry.
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    /// Credential helper per registry.
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    /// Directory holding `docker-credential-*` programs; `None` searches `PATH`.
    #[serde(skip)]
    helper_dir: Option<PathBuf>,
}

impl std::fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Registry names and helper names only: never secrets.
        f.debug_struct("DockerConfig")
            .field("auths", &self.auths.keys().collect::<Vec<_>>())
            .field("creds_store", &self.creds_store)
            .field("cred_helpers", &self.cred_helpers)
            .field("helper_dir", &self.helper_dir)
            .finish()
    }
}

impl DockerConfig {
    /// No credentials at all (anonymous pulls).
    pub fn empty() -> DockerConfig {
        DockerConfig::default()
    }

    /// Reads a config file of Docker's shape (`--registry-auth FILE`).
    pub fn load(path: &Path) -> Result<DockerConfig, CredentialError> {
        let text = std::fs::read(path).map_err(|source| CredentialError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| CredentialError::Parse {
            path: path.to_owned(),
            reason,
        })
    }

    /// Looks for credential helpers in `dir` instead of `PATH` (tests,
    /// sandboxed deployments).
    pub fn with_helper_dir(mut self, dir: PathBuf) -> DockerConfig {
        self.helper_dir = Some(dir);
        self
    }

    /// Parses config JSON.
    pub fn from_json(bytes: &[u8]) -> Result<DockerConfig, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Docker's default: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`; a missing file means no credentials.
    pub fn load_default() -> Result<DockerConfig, CredentialError> {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".docker/config.json"),
                None => return Ok(DockerConfig::empty()),
            },
        };
        if !path.exists() {
            return Ok(DockerConfig::empty());
        }
        Self::load(&path)
    }

    /// Credentials for `registry` (the reference's registry name, e.g.
    /// `docker.io` or `127.0.0.1:5000`), running a helper if configured.
    pub async fn credentials_for(
        &self,
        registry: &str,
    ) -> Result<Option<Credentials>, CredentialError> {
        let keys = registry_keys(registry);
        if let Some(helper) = keys.iter().find_map(|k| self.cred_helpers.get(k)) {
            return run_helper(self.helper_dir.as_deref(), helper, registry).await;
        }
        for (key, entry) in &self.auths {
            if keys.contains(&normalize_key(key)) {
                if let Some(creds) = entry_credentials(registry, entry)? {
                    return Ok(Some(creds));
                }
            }
        }
        if let Some(store) = &self.creds_store {
            return run_helper(self.helper_dir.as_deref(), store, registry).await;
        }
        Ok(None)
    }
}

/// The key spellings under which `registry`'s credentials may be stored.
fn registry_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![registry.to_owned()];
    if registry == super::reference::DOCKER_HUB_DOMAIN {
        keys.extend(
            [
                "index.docker.io",
                "registry-1.docker.io",
                "index.docker.io/v1",
            ]
            .map(str::to_owned),
        );
    }
    keys
}

/// `https://host/v1/` -> `host/v1`; `http://host` -> `host`.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key.strip_suffix("/v2").unwrap_or(key);
    key.to_owned()
}

fn entry_credentials(
    registry: &str,
    entry: &AuthEntry,
) -> Result<Option<Credentials>, CredentialError> {
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let bad = || CredentialError::BadAuthField {
            registry: registry.to_owned(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => Ok(Some(Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        })),
        _ => Ok(None),
    }
}

/// Runs `docker-credential-<helper> get`.
async fn run_helper(
    dir: Option<&Path>,
    helper: &str,
    registry: &str,
) -> Result<Option<Credentials>, CredentialError> {
    use tokio::io::AsyncWriteExt;
    let fail = |reason: String| CredentialError::Helper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        reason,
    };
    if !helper
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(fail("helper name has unexpected characters".into()));
    }
    let server = if registry == super::reference::DOCKER_HUB_DOMAIN {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_owned()
    };
    let program = format!("docker-credential-{helper}");
    let program = match dir {
        Some(dir) => dir.join(program),
        None => PathBuf::from(program),
    };
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| fail(format!("writing stdin: {e}")))?;
    }
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| fail("timed out after 30 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        // Helpers say "credentials not found in native keychain" for unknown hosts.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!(
            "exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    #[derive(Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout)
        .map_err(|e| fail(format!("unexpected output: {e}")))?;
    if answer.username == "<token>" {
        Ok(Some(Credentials::IdentityToken(answer.secret)))
    } else {
        Ok(Some(Credentials::Basic {
            username: answer.username,
            password: answer.secret,
        }))
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=..,service=..,scope=..`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter to pass through.
        service: Option<String>,
        /// `scope` the registry asks for (may be absent).
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses the first challenge of a `WWW-Authenticate` value (registries send one).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        let params = parse_params(params);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            }),
            _ => None,
        }
    }
}

/// `key=value` or `key="quoted, value"` pairs separated by commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Bearer tokens per (registry, scope), dropped shortly before expiry.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("TokenCache")
            .field("scopes", &tokens.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Margin before a token's stated expiry at which it is no longer used.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl TokenCache {
    /// A valid cached token.
    pub fn get(&self, registry: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&(registry.to_owned(), scope.to_owned()))
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(token, _)| token.clone())
    }

    /// Stores a token valid for `lifetime` (the token endpoint's `expires_in`,
    /// 60 s when absent as the spec says).
    pub fn put(&self, registry: &str, scope: &str, token: String, lifetime: Duration) {
        let usable = lifetime
            .saturating_sub(TOKEN_EXPIRY_MARGIN)
            .max(Duration::from_secs(1));
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, (_, expires)| Instant::now() < *expires);
        tokens.insert(
            (registry.to_owned(), scope.to_owned()),
            (token, Instant::now() + usable),
        );
    }

    /// Forgets a token the registry rejected.
    pub fn invalidate(&self, registry: &str, scope: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.remove(&(registry.to_owned(), scope.to_owned()));
    }
}

/// The token endpoint's answer.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) access_token: Option<String>,
    #[serde(default)]
    pub(crate) expires_in: Option<u64>,
}

impl RegistryClient {
    pub(super) fn set_scheme(
        &self,
        host: &str,
        challenge: Option<Challenge>,
        only_if_absent: bool,
    ) {
        let mut schemes = self.inner.schemes.lock().unwrap_or_else(|p| p.into_inner());
        if only_if_absent && schemes.contains_key(host) {
            return;
        }
        schemes.insert(host.to_owned(), challenge);
    }

    pub(super) fn scheme(&self, host: &str) -> Option<Option<Challenge>> {
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

    pub(super) fn scope(reference: &Reference) -> String {
        format!("repository:{}:pull", reference.repository)
    }

    /// The Authorization header for the registry as currently known.
    pub(super) async fn authorization(
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
}

pub(super) fn challenge_of(resp: &Response) -> Option<Challenge> {
    resp.headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(Challenge::parse)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }
        );
        let c = Challenge::parse(r#"Bearer realm="http://a/t", scope="repository:x:pull,push""#)
            .unwrap();
        assert!(
            matches!(c, Challenge::Bearer { scope: Some(s), service: None, .. } if s == "repository:x:pull,push")
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None, "realm required");
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[tokio::test]
    async fn reads_docker_config() {
        let json = br#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "127.0.0.1:5000": {"username": "u", "password": "p"},
                "http://tok.example/v2/": {"identitytoken": "rt"},
                "bad.example": {"auth": "!!!"}
            }
        }"#;
        let cfg = DockerConfig::from_json(json).unwrap();
        assert_eq!(
            cfg.credentials_for("docker.io").await.unwrap(),
            Some(Credentials::Basic {
                username: "hub".into(),
                password: "secret".into()
            })
        );
        assert_eq!(
            cfg.credentials_for("127.0.0.1:5000").await.unwrap(),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            cfg.credentials_for("tok.example").await.unwrap(),
            Some(Credentials::IdentityToken("rt".into()))
        );
        assert!(cfg
            .credentials_for("other.example")
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            cfg.credentials_for("bad.example").await,
            Err(CredentialError::BadAuthField { .. })
        ));
        assert!(DockerConfig::from_json(b"[1,2]").is_err());
    }

    #[tokio::test]
    async fn runs_credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-edgeswarmtest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread host\nif [ \"$host\" = reg.example ]; then echo '{\"ServerURL\":\"reg.example\",\"Username\":\"hu\",\"Secret\":\"hs\"}'; else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = DockerConfig::from_json(
            br#"{"credsStore":"edgeswarmtest","credHelpers":{"x.example":"missinghelper"}}"#,
        )
        .unwrap()
        .with_helper_dir(dir.path().to_owned());
        assert_eq!(
            cfg.credentials_for("reg.example").await.unwrap(),
            Some(Credentials::Basic {
                username: "hu".into(),
                password: "hs".into()
            })
        );
        assert_eq!(cfg.credentials_for("nothere.example").await.unwrap(), None);
        assert!(matches!(
            cfg.credentials_for("x.example").await,
            Err(CredentialError::Helper { .. })
        ));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let cfg = DockerConfig::from_json(
            br#"{"auths":{"r.example":{"auth":"dTpzM2NyZXQ=","password":"s3cret"}}}"#,
        )
        .unwrap();
        let text = format!("{cfg:?}");
        assert!(text.contains("r.example"), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("dTpzM2NyZXQ"),
            "{text}"
        );
        let cache = TokenCache::default();
        cache.put("r", "s", "tok-secret".into(), Duration::from_secs(60));
        assert!(!format!("{cache:?}").contains("tok-secret"));
    }

    #[test]
    fn token_cache_expires() {
        let cache = TokenCache::default();
        cache.put("r", "s", "t".into(), Duration::from_secs(300));
        assert_eq!(cache.get("r", "s").as_deref(), Some("t"));
        assert_eq!(cache.get("r", "other"), None);
        cache.invalidate("r", "s");
        assert_eq!(cache.get("r", "s"), None);
    }
}
