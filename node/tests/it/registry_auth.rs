//! Authentication against real registries: htpasswd basic auth on
//! `docker-registry`, and the bearer-token flow through a small token
//! server (axum) in front of it, with blob downloads redirected to a
//! separate "object storage" origin that must never see the credentials.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::registry::*;
use crate::support::{init_tracing, push};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use edgeswarm_node::registry::testing::{Pusher, TestRegistry};
use edgeswarm_node::registry::{
    Compression, DockerConfig, Platform, Reference, RegistryClient, RegistryConfig, RegistryError,
};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";

fn docker_config(host: &str, user: &str, password: &str) -> DockerConfig {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    DockerConfig::from_json(
        serde_json::json!({ "auths": { host: { "auth": auth } } })
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

fn client_with(credentials: DockerConfig) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        credentials,
        ..RegistryConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn htpasswd_basic_auth() {
    init_tracing();
    let registry = TestRegistry::start_with_users(&[(USER, PASSWORD)])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = build(dir.path(), Compression::Gzip, "v1").await;
    let pusher = Pusher::new(&registry.host(), Some((USER, PASSWORD))).unwrap();
    pusher
        .push_image("private/app", Some("v1"), &image)
        .await
        .unwrap();
    let reference = format!("{}/private/app:v1", registry.host());

    // Credentials from a --registry-auth file (Docker config.json shape).
    let auth_file = dir.path().join("registry-auth.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let client = client_with(DockerConfig::load(&auth_file).unwrap());
    pull_and_verify(&client, &reference, &Platform::host(), &image).await;

    // Wrong password: a clear 401 naming the reference.
    let wrong = client_with(docker_config(&registry.host(), USER, "wrong"));
    let err = wrong
        .resolve(&Reference::parse(&reference).unwrap(), &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("private/app:v1"), "{text}");
    assert!(
        text.contains("rejected the configured credentials"),
        "{text}"
    );

    // No credentials at all: 401 with a hint where to put them.
    let anonymous = crate::support::registry::client();
    let err = anonymous
        .resolve(&Reference::parse(&reference).unwrap(), &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("--registry-auth"), "{err}");
}

/// Token server + registry front + object storage, all on loopback.
struct Front {
    backend: String,
    http: reqwest::Client,
    tokens: Mutex<HashSet<String>>,
    token_requests: AtomicU64,
    storage_requests: AtomicU64,
    storage_saw_authorization: AtomicU64,
    realm: Mutex<String>,
    storage: Mutex<String>,
}

fn issue_token(front: &Front) -> Response {
    let token = format!("tok-{}", rand::random::<u64>());
    front.tokens.lock().unwrap().insert(token.clone());
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::json!({ "access_token": token, "expires_in": 300 }).to_string(),
        ))
        .unwrap()
}

/// OAuth2 refresh-token grant (identity tokens from `docker login`).
async fn token_refresh(State(front): State<Arc<Front>>, body: String) -> Response {
    front.token_requests.fetch_add(1, Ordering::SeqCst);
    let grant = body.split('&').any(|kv| kv == "grant_type=refresh_token");
    let refresh = body.split('&').any(|kv| kv == "refresh_token=refresh-xyz");
    let scoped = body
        .split('&')
        .any(|kv| kv.starts_with("scope=repository%3Aprivate%2Fapp%3Apull"));
    if !(grant && refresh && scoped) {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body(Body::from(format!("bad grant: {body}")))
            .unwrap();
    }
    issue_token(&front)
}

async fn token(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    front.token_requests.fetch_add(1, Ordering::SeqCst);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body(Body::from(r#"{"details":"bad credentials"}"#))
            .unwrap();
    }
    issue_token(&front)
}

async fn forward(front: &Front, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let mut out = front
        .http
        .request(req.method().clone(), format!("{}{path}", front.backend));
    for name in ["accept", "range"] {
        for value in req.headers().get_all(name) {
            out = out.header(name, value.clone());
        }
    }
    let resp = out.send().await.unwrap();
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if name != "transfer-encoding" && name != "connection" {
            builder = builder.header(name, value.clone());
        }
    }
    builder
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap()
}

async fn registry_front(State(front): State<Arc<Front>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = bearer.is_some_and(|t| front.tokens.lock().unwrap().contains(&t));
    if !valid {
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|p| p.split("/manifests/").next())
            .and_then(|p| p.split("/blobs/").next())
            .unwrap_or("");
        let realm = front.realm.lock().unwrap().clone();
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                "www-authenticate",
                format!(
                    r#"Bearer realm="{realm}",service="edgeswarm-test",scope="repository:{repo}:pull""#
                ),
            )
            .body(Body::from(
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            ))
            .unwrap();
    }
    if path.contains("/blobs/") {
        let storage = front.storage.lock().unwrap().clone();
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", format!("{storage}{path}"))
            .body(Body::empty())
            .unwrap();
    }
    forward(&front, req).await
}

async fn storage(State(front): State<Arc<Front>>, req: Request) -> Response {
    front.storage_requests.fetch_add(1, Ordering::SeqCst);
    if req.headers().contains_key("authorization") {
        front
            .storage_saw_authorization
            .fetch_add(1, Ordering::SeqCst);
    }
    forward(&front, req).await
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

#[tokio::test]
async fn bearer_token_flow_with_cached_tokens_and_cross_origin_redirects() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = build(dir.path(), Compression::Gzip, "v1").await;
    push(&registry, "private/app", "v1", &image).await;

    let front = Arc::new(Front {
        backend: registry.url(),
        http: reqwest::Client::new(),
        tokens: Mutex::new(HashSet::new()),
        token_requests: AtomicU64::new(0),
        storage_requests: AtomicU64::new(0),
        storage_saw_authorization: AtomicU64::new(0),
        realm: Mutex::new(String::new()),
        storage: Mutex::new(String::new()),
    });
    let auth_addr = serve(
        Router::new()
            .route("/token", get(token).post(token_refresh))
            .with_state(front.clone()),
    )
    .await;
    // "localhost" vs "127.0.0.1" and another port: a different origin.
    let storage_addr = serve(Router::new().fallback(storage).with_state(front.clone())).await;
    *front.realm.lock().unwrap() = format!("http://{auth_addr}/token");
    *front.storage.lock().unwrap() = format!("http://localhost:{}", storage_addr.port());
    let front_addr = serve(
        Router::new()
            .fallback(registry_front)
            .with_state(front.clone()),
    )
    .await;
    let host = front_addr.to_string();
    let reference = format!("{host}/private/app:v1");

    let client = client_with(docker_config(&host, USER, PASSWORD));
    pull_and_verify(&client, &reference, &Platform::host(), &image).await;
    pull_and_verify(&client, &reference, &Platform::host(), &image).await;
    assert_eq!(
        front.token_requests.load(Ordering::SeqCst),
        1,
        "one token per scope, cached for every later request"
    );
    // config + 3 layers, twice.
    assert_eq!(front.storage_requests.load(Ordering::SeqCst), 8);
    assert_eq!(
        front.storage_saw_authorization.load(Ordering::SeqCst),
        0,
        "registry credentials must not follow a redirect to another origin"
    );

    // Wrong password: the token endpoint refuses, and the error says so.
    let wrong = client_with(docker_config(&host, USER, "nope"));
    let err = wrong
        .resolve(&Reference::parse(&reference).unwrap(), &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("private/app:v1") && text.contains("token endpoint"),
        "{text}"
    );

    // An identity token (OAuth2 refresh token) is exchanged by POST.
    let identity = client_with(
        DockerConfig::from_json(
            serde_json::json!({ "auths": { host.clone(): { "identitytoken": "refresh-xyz" } } })
                .to_string()
                .as_bytes(),
        )
        .unwrap(),
    );
    let before = front.token_requests.load(Ordering::SeqCst);
    pull_and_verify(&identity, &reference, &Platform::host(), &image).await;
    assert_eq!(front.token_requests.load(Ordering::SeqCst), before + 1);
}
