//! The node's local HTTP API (axum), used by the `edgeswarm` CLI.
//!
//! Endpoints (JSON in and out; errors are `{"error": "..."}` with a 4xx for
//! anything the caller got wrong, never a 5xx for bad input):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/health` | liveness: the process answers |
//! | GET | `/v1/ready` | readiness: 200 when store, swarm, join and every component gate pass, else 503; the body lists each check ([`crate::daemon::Readiness`]) |
//! | GET | `/v1/status` | the locality as this node sees it |
//! | POST | `/v1/resolve` | `{image}` -> `{manifest, platform, locality}` (for signing releases off-node) |
//! | POST | `/v1/deploy` | `{image, selector?}`: a release signed by the node's identity |
//! | POST | `/v1/releases` | `{release}`: a publisher-signed release (base64 canonical CBOR) |
//! | GET | `/v1/images` | blobs in the store and what pins them |
//! | POST | `/v1/rm` | `{image, locality?, removal?}`: remove an image here, and with `locality` ask every node (gossiped signed removal; `removal` is one signed off-node, base64 canonical CBOR, else the node signs with its identity) |
//! | GET | `/metrics` | Prometheus text format |
//!
//! It listens on loopback by default. Every request passes [`guard`]:
//!
//! - **Host**: the `Host` header must name a loopback address, `localhost`,
//!   or the address the API listens on (any IP literal when it listens on
//!   an unspecified address such as `0.0.0.0`); otherwise 421. A web page
//!   that rebinds its own DNS name to 127.0.0.1 still sends its own name,
//!   so it cannot read or drive the API.
//! - **Token** (every `POST`): `Authorization: Bearer <token>`, else 401.
//!   The node writes a fresh random token at each start to
//!   `<data dir>/api.token` (mode 0600, see [`write_token_file`]); the CLI
//!   reads it (`--token-file`). Only users who can read the data dir can
//!   change what the node runs.
//! - **Content type** (every `POST`): `application/json`, else 415, so a
//!   cross-site form or `text/plain` POST (which browsers send without a
//!   preflight) is refused even before the token check could leak timing.
//!
//! The read-only `GET` endpoints (health, ready, status, images, metrics) need no
//! token: monitoring scrapes them, they change nothing, and the Host check
//! keeps web pages from reading them. Bind `--api` to loopback (the
//! default) or a management network only.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use edgeswarm_protocol::release::{Release, SignedRelease};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::daemon::{Daemon, DaemonError};

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 << 10;

/// File name of the API token in the node's data dir.
pub const TOKEN_FILE: &str = "api.token";

/// Where a node with data dir `data_dir` writes its API token.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Writes a fresh random API token (32 bytes, hex) to
/// `<data_dir>/api.token`, mode 0600, crash-safe; returns it. A new token
/// at each start means a leaked token dies with the process. Blocking.
pub fn write_token_file(data_dir: &Path) -> std::io::Result<String> {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::fsutil::write_atomic_private(&token_path(data_dir), format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// What [`guard`] checks requests against.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    /// The bearer token mutating requests must carry.
    token: Arc<str>,
    /// The address the API listens on (its IP is an accepted `Host`).
    listen: SocketAddr,
}

impl ApiAccess {
    /// Access for an API listening on `listen` with bearer `token`.
    pub fn new(token: impl Into<Arc<str>>, listen: SocketAddr) -> ApiAccess {
        ApiAccess {
            token: token.into(),
            listen,
        }
    }

    /// Whether a `Host` value (`name[:port]`, `[v6][:port]`) names this
    /// API rather than some other site's DNS name.
    fn host_allowed(&self, host: &str) -> bool {
        let name = if let Some(rest) = host.strip_prefix('[') {
            // [v6]:port
            rest.split(']').next().unwrap_or("")
        } else {
            host.rsplit_once(':').map_or(host, |(n, _)| n)
        };
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified()
            }
            Err(_) => false,
        }
    }

    /// Whether `headers` carry `Authorization: Bearer <our token>`.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        constant_time_eq(given.trim().as_bytes(), self.token.as_bytes())
    }
}

/// Compares without an early exit, so response time does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks Host on every request, and the bearer token and JSON content
/// type on every mutating one (see the module docs).
pub async fn guard(State(access): State<ApiAccess>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    match host {
        Some(h) if access.host_allowed(&h) => {}
        other => {
            tracing::warn!(host = ?other, "API request with a foreign Host refused");
            return ApiError(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {:?} is not this node's API (use 127.0.0.1, localhost or {})",
                    other.unwrap_or_default(),
                    access.listen
                ),
            )
            .into_response();
        }
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        if !access.authorized(request.headers()) {
            let mut response = ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API token: send `Authorization: Bearer <token>` with the \
                 token from the node's <data dir>/api.token (the CLI reads it, see --token-file)"
                    .into(),
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request bodies must be Content-Type: application/json".into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// An API error: a status and a message, rendered as JSON.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (self.0, Json(Body { error: self.1 })).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        let status = match e {
            DaemonError::Refused(_) | DaemonError::RemovalRefused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            DaemonError::Conflict(_) => StatusCode::CONFLICT,
            DaemonError::Registry(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// Parses a JSON body ourselves so that malformed input gets a JSON 400.
fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

/// `POST /v1/deploy` and `/v1/resolve` body.
#[derive(Debug, Deserialize, Serialize)]
pub struct DeployRequest {
    /// Image reference.
    pub image: String,
    /// `label=value` terms a node must carry.
    #[serde(default)]
    pub selector: Vec<String>,
}

/// `POST /v1/releases` body.
#[derive(Debug, Deserialize, Serialize)]
pub struct PublishRequest {
    /// The signed release, canonical CBOR, base64 (standard alphabet).
    pub release: String,
}

/// Answer to deploy and publish.
#[derive(Debug, Deserialize, Serialize)]
pub struct DeployResponse {
    /// The release id.
    pub release_id: String,
    /// The manifest digest the release pins.
    pub manifest: String,
}

/// `POST /v1/rm` body.
#[derive(Debug, Deserialize, Serialize)]
pub struct RemoveRequest {
    /// Image reference, exactly as deployed.
    pub image: String,
    /// Also ask every node of the locality to remove it.
    #[serde(default)]
    pub locality: bool,
    /// With `locality`: a removal signed off-node by a publisher key
    /// (canonical CBOR, base64); without it the node signs with its own
    /// identity, which only nodes run with `--allow-any-publisher` accept.
    #[serde(default)]
    pub removal: Option<String>,
}

/// Answer to `POST /v1/rm`.
#[derive(Debug, Deserialize, Serialize)]
pub struct RemoveResponse {
    /// What the removal did on this node.
    #[serde(flatten)]
    pub report: crate::daemon::RemoveReport,
    /// Whether the removal was also sent to the locality.
    pub locality: bool,
}

/// Answer to resolve: the unsigned release a publisher should sign.
#[derive(Debug, Deserialize, Serialize)]
pub struct ResolveResponse {
    /// The unsigned release, canonical CBOR, base64.
    pub release: String,
    /// The manifest digest.
    pub manifest: String,
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    daemon: Daemon,
    listener: tokio::net::TcpListener,
    token: String,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "API listening");
    axum::serve(listener, router(daemon, ApiAccess::new(token, addr)))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The API's routes, behind [`guard`].
pub fn router(daemon: Daemon, access: ApiAccess) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route("/v1/ready", get(ready))
        .route("/v1/status", get(status))
        .route("/v1/resolve", post(resolve))
        .route("/v1/deploy", post(deploy))
        .route("/v1/releases", post(publish))
        .route("/v1/images", get(images))
        .route("/v1/rm", post(remove))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(access, guard))
        .with_state(daemon)
}

async fn ready(State(daemon): State<Daemon>) -> Response {
    let readiness = daemon.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// Header of a `GET /v1/status` answer: the node's count of release
/// phase changes, to pass back as `phase` to wait for the next one.
pub const PHASES_HEADER: &str = "x-edgeswarm-phases";
/// Header of a `GET /v1/status` answer: milliseconds the node waited
/// before answering a long poll (0 for an answer at once).
pub const WAITED_HEADER: &str = "x-edgeswarm-waited-ms";

/// `GET /v1/status` parameters: both set make a long poll.
#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    /// The [`PHASES_HEADER`] of the previous answer: answer once the
    /// node's release phases moved past it.
    phase: Option<u64>,
    /// The longest to wait for that, in milliseconds (default 0, at most
    /// 30,000).
    wait_ms: Option<u64>,
}

async fn status(
    State(daemon): State<Daemon>,
    axum::extract::Query(query): axum::extract::Query<StatusQuery>,
) -> impl IntoResponse {
    let wait = std::time::Duration::from_millis(query.wait_ms.unwrap_or(0));
    let answer = daemon.status_after(query.phase, wait).await;
    (
        [
            (PHASES_HEADER, answer.phases.to_string()),
            (WAITED_HEADER, answer.waited.as_millis().to_string()),
        ],
        Json(answer.view),
    )
}

fn selector(terms: &[String]) -> Result<Vec<(String, String)>, ApiError> {
    terms
        .iter()
        .map(|t| {
            Release::parse_selector_term(t)
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
        })
        .collect()
}

async fn resolve(
    State(daemon): State<Daemon>,
    body: Bytes,
) -> Result<Json<ResolveResponse>, ApiError> {
    let req: DeployRequest = parse(&body)?;
    let signed = daemon
        .prepare_release(&req.image, selector(&req.selector)?, None)
        .await?;
    let release = signed.body_unverified();
    Ok(Json(ResolveResponse {
        release: base64::engine::general_purpose::STANDARD
            .encode(edgeswarm_protocol::encoding::encode(release)),
        manifest: release.manifest.to_string(),
    }))
}

async fn deploy(
    State(daemon): State<Daemon>,
    body: Bytes,
) -> Result<Json<DeployResponse>, ApiError> {
    let req: DeployRequest = parse(&body)?;
    let signed = daemon
        .prepare_release(&req.image, selector(&req.selector)?, None)
        .await?;
    let manifest = signed.body_unverified().manifest.to_string();
    let id = daemon.publish_release(signed).await?;
    Ok(Json(DeployResponse {
        release_id: id.to_string(),
        manifest,
    }))
}

async fn publish(
    State(daemon): State<Daemon>,
    body: Bytes,
) -> Result<Json<DeployResponse>, ApiError> {
    let req: PublishRequest = parse(&body)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(req.release.as_bytes())
        .map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("release is not base64: {e}"),
            )
        })?;
    let signed = SignedRelease::decode(&bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("malformed release: {e}")))?;
    let manifest = signed.body_unverified().manifest.to_string();
    let id = daemon.publish_release(signed).await?;
    Ok(Json(DeployResponse {
        release_id: id.to_string(),
        manifest,
    }))
}

async fn remove(
    State(daemon): State<Daemon>,
    body: Bytes,
) -> Result<Json<RemoveResponse>, ApiError> {
    let req: RemoveRequest = parse(&body)?;
    if req.image.trim().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "image is empty".into()));
    }
    let request = match (req.locality, req.removal) {
        (false, Some(_)) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "a signed removal is only used with locality: true".into(),
            ))
        }
        (false, None) => None,
        (true, None) => Some(daemon.sign_removal(&req.image)),
        (true, Some(text)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| {
                    ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("removal is not base64: {e}"),
                    )
                })?;
            Some(
                crate::daemon::decode_removal(&bytes)
                    .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?,
            )
        }
    };
    let report = daemon.remove(&req.image, request).await?;
    Ok(Json(RemoveResponse {
        report,
        locality: req.locality,
    }))
}

async fn images(State(daemon): State<Daemon>) -> impl IntoResponse {
    let store = daemon.store();
    let blobs: Vec<serde_json::Value> = store
        .blobs()
        .into_iter()
        .map(|b| {
            serde_json::json!({
                "digest": b.digest.to_string(),
                "size": b.size,
                "chunks": b.chunk_count,
                "chunks_held": b.chunks_have,
                "complete": b.complete,
                "pinned_by": b.pinned_by,
            })
        })
        .collect();
    let pins: serde_json::Map<String, serde_json::Value> = store
        .pins()
        .into_iter()
        .map(|(name, blobs)| {
            (
                name,
                serde_json::Value::from(blobs.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
            )
        })
        .collect();
    Json(serde_json::json!({"usage_bytes": store.usage(), "blobs": blobs, "pins": pins}))
}

async fn metrics(State(daemon): State<Daemon>) -> Response {
    match daemon.encode_metrics() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
