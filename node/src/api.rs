//! The node's local HTTP API (axum), used by the `edgeswarm` CLI.
//!
//! Endpoints (JSON in and out; errors are `{"error": "..."}` with a 4xx for
//! anything the caller got wrong, never a 5xx for bad input):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/health` | liveness |
//! | GET | `/v1/status` | the locality as this node sees it |
//! | POST | `/v1/resolve` | `{image}` -> `{manifest, platform, locality}` (for signing releases off-node) |
//! | POST | `/v1/deploy` | `{image, selector?}`: a release signed by the node's identity |
//! | POST | `/v1/releases` | `{release}`: a publisher-signed release (base64 canonical CBOR) |
//! | GET | `/v1/images` | blobs in the store and what pins them |
//! | GET | `/metrics` | Prometheus text format |
//!
//! It listens on loopback by default: anyone who can reach it can deploy.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
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
            DaemonError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
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
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    axum::serve(listener, router(daemon))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The API's routes.
pub fn router(daemon: Daemon) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route("/v1/status", get(status))
        .route("/v1/resolve", post(resolve))
        .route("/v1/deploy", post(deploy))
        .route("/v1/releases", post(publish))
        .route("/v1/images", get(images))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(daemon)
}

async fn status(State(daemon): State<Daemon>) -> impl IntoResponse {
    Json(daemon.status().await)
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
