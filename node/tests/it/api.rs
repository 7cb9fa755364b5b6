//! The local HTTP API against a real in-process node: bad input gets a
//! 4xx with a JSON error (never a 5xx or a crash), releases signed by an
//! untrusted key are refused and reported, and metrics are served.

use std::time::Duration;

use base64::Engine as _;
use edgeswarm_node::daemon::{Daemon, DaemonConfig};
use edgeswarm_node::import::ImportSinkKind;
use edgeswarm_node::registry::{Platform, RegistryConfig};
use edgeswarm_node::store::StoreConfig;
use edgeswarm_node::swarm::SwarmConfig;
use edgeswarm_protocol::release::{Platform as ReleasePlatform, Release, SignedRelease};
use edgeswarm_protocol::signing::{PublisherKey, TrustedKeys};
use edgeswarm_protocol::{ChunkSize, Digest};
use rand::SeedableRng;

struct Api {
    base: String,
    addr: std::net::SocketAddr,
    daemon: Daemon,
    http: reqwest::Client,
    token: String,
    dir: tempfile::TempDir,
}

async fn start(trusted: TrustedKeys, locality: &str) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut swarm = SwarmConfig::new(dir.path(), locality);
    swarm.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    swarm.mdns = false;
    let config = DaemonConfig {
        data_dir: dir.path().to_path_buf(),
        swarm,
        store: StoreConfig::default(),
        gateway: false,
        registry: RegistryConfig::default(),
        platform: Platform::host(),
        import: Some(ImportSinkKind::None),
        allow_any_publisher: trusted.is_empty(),
        trusted_gateways: Vec::new(),
        trusted,
        labels: Default::default(),
        chunk_size: ChunkSize::DEFAULT,
        keep_versions: 2,
        unpack: Default::default(),
        dir: Default::default(),
    };
    let (daemon, _handle) = Daemon::start(config).await.unwrap();
    let token = edgeswarm_node::api::write_token_file(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(edgeswarm_node::api::serve(
        daemon.clone(),
        listener,
        token.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));
    Api {
        base: format!("http://{addr}"),
        addr,
        daemon,
        http: reqwest::Client::new(),
        token,
        dir,
    }
}

impl Api {
    async fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let json = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// The answer to an unauthenticated `GET` of `path`.
    async fn get_response(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.get_response(path).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// One raw HTTP/1.1 request over TCP, headers exactly as given (reqwest
/// would fill in Host itself): returns the status code and body.
async fn raw(addr: std::net::SocketAddr, head: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn release(locality: &str) -> Release {
    Release {
        image: "registry.example:5000/app@sha256:".to_owned() + &Digest::of(b"m").to_hex(),
        manifest: Digest::of(b"m"),
        platform: ReleasePlatform::new("linux", "amd64"),
        created: 1_700_000_000,
        locality: locality.into(),
        selector: vec![],
        seq: 0,
    }
}

fn encoded(signed: &SignedRelease) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(signed.encode());
    serde_json::json!({ "release": b64 }).to_string()
}

fn key(seed: u64) -> PublisherKey {
    PublisherKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx() {
    let api = start(TrustedKeys::new(), "api").await;
    for (path, body, want) in [
        ("/v1/deploy", "{not json", 400),
        ("/v1/deploy", r#"{"imag": "x"}"#, 400),
        ("/v1/deploy", r#"{"image": "UPPER/Case::bad"}"#, 422),
        (
            "/v1/deploy",
            r#"{"image": "registry.example:5000/app:v1"}"#,
            422,
        ),
        (
            "/v1/deploy",
            r#"{"image": "a/b:c", "selector": ["novalue"]}"#,
            400,
        ),
        ("/v1/releases", r#"{"release": "***"}"#, 400),
        ("/v1/releases", r#"{"release": "AAAA"}"#, 400),
        ("/v1/resolve", "[]", 400),
    ] {
        let (status, json) = api.post(path, body).await;
        assert_eq!(status, want, "{path} {body}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path} {body}: {json}"
        );
    }
    let (status, json) = api
        .post("/v1/deploy", r#"{"image": "registry.example:5000/app:v1"}"#)
        .await;
    assert_eq!(status, 422);
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach the registry"),
        "{json}"
    );
    // Oversized bodies are refused, not buffered.
    let big = format!(r#"{{"image": "{}"}}"#, "a".repeat(200_000));
    let (status, _) = api.post("/v1/deploy", &big).await;
    assert_eq!(status, 413);
    // Still alive.
    let (status, body) = api.get("/v1/health").await;
    assert_eq!((status, body.contains("true")), (200, true));
    api.daemon.shutdown();
}

#[tokio::test]
async fn untrusted_and_foreign_releases_are_refused_and_reported() {
    let trusted_key = key(1);
    let mut trusted = TrustedKeys::new();
    trusted.insert(trusted_key.public());
    let api = start(trusted, "plant").await;

    let rogue = SignedRelease::sign(release("plant"), &key(2));
    let (status, json) = api.post("/v1/releases", &encoded(&rogue)).await;
    assert_eq!(status, 422, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("trusted"),
        "{json}"
    );

    let elsewhere = SignedRelease::sign(release("other"), &trusted_key);
    let (status, json) = api.post("/v1/releases", &encoded(&elsewhere)).await;
    assert_eq!(status, 422, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("locality"),
        "{json}"
    );

    let good = SignedRelease::sign(release("plant"), &trusted_key);
    let (status, json) = api.post("/v1/releases", &encoded(&good)).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["release_id"], good.release_id().to_string());

    let (status, body) = api.get("/v1/status").await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let refused = status["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{status}");
    assert!(status["self"]["peer_id"]
        .as_str()
        .unwrap()
        .starts_with("12D3"));
    let releases = status["self"]["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1, "{status}");
    assert_eq!(releases[0]["id"], good.release_id().to_string());
    api.daemon.shutdown();
}

/// `(phases, waited ms, elapsed)` of one `GET` of `path`.
async fn status_headers(api: &Api, path: &str) -> (u64, u64, Duration) {
    let started = std::time::Instant::now();
    let r = api.get_response(path).await;
    assert_eq!(r.status().as_u16(), 200);
    let header = |name: &str| -> u64 { r.headers()[name].to_str().unwrap().parse().unwrap() };
    let out = (
        header(edgeswarm_node::api::PHASES_HEADER),
        header(edgeswarm_node::api::WAITED_HEADER),
        started.elapsed(),
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["self"]["peer_id"].is_string(), "{body}");
    out
}

/// A long poll of `/v1/status` answers when a release changes phase (not
/// before, and not later than the change), at once when the caller's count
/// is already stale, and at its deadline when nothing happens.
#[tokio::test]
async fn status_long_poll_answers_on_a_phase_change() {
    let publisher = key(1);
    let mut trusted = TrustedKeys::new();
    trusted.insert(publisher.public());
    let api = std::sync::Arc::new(start(trusted, "plant").await);

    let (before, waited, _) = status_headers(&api, "/v1/status").await;
    assert_eq!(waited, 0, "a plain GET does not wait");
    let (same, waited, took) =
        status_headers(&api, &format!("/v1/status?phase={before}&wait_ms=300")).await;
    assert_eq!(same, before, "nothing happened");
    assert!(
        waited >= 300 && took >= Duration::from_millis(300),
        "{waited} ms"
    );

    let poll = {
        let api = api.clone();
        tokio::spawn(async move {
            status_headers(&api, &format!("/v1/status?phase={before}&wait_ms=20000")).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "answered before any change");
    // A release of an image no registry serves: it is accepted, then
    // fails on this node; either way its phase changes.
    let signed = SignedRelease::sign(release("plant"), &publisher);
    let (status, json) = api.post("/v1/releases", &encoded(&signed)).await;
    assert_eq!(status, 200, "{json}");
    let (after, waited, took) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the long poll answers once the phase changes")
        .unwrap();
    assert!(after > before, "phases {before} -> {after}");
    // The poll reached the node a little after it was sent, the release
    // a little after the 500 ms: the node waited about 500 ms.
    assert!(
        waited >= 250 && took < Duration::from_secs(15),
        "{waited} ms"
    );

    let (now, waited, _) =
        status_headers(&api, &format!("/v1/status?phase={before}&wait_ms=20000")).await;
    assert!(now >= after);
    assert_eq!(waited, 0, "a stale count answers at once");
    api.daemon.shutdown();
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let api = start(TrustedKeys::new(), "metrics").await;
    let (status, text) = api.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("edgeswarm_releases_done_total"), "{text}");
    assert!(text.contains("edgeswarm_cloud_bytes_total"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    api.daemon.shutdown();
}

fn removal_body(image: &str, locality: &str, key: &PublisherKey) -> String {
    let signed = edgeswarm_node::daemon::SignedRemoval::sign(
        edgeswarm_node::daemon::Removal {
            image: image.into(),
            locality: locality.into(),
            created: 1_700_000_100,
            seq: 0,
        },
        key,
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(signed.encode());
    serde_json::json!({ "image": image, "locality": true, "removal": b64 }).to_string()
}

#[tokio::test]
async fn rm_checks_its_input_trust_and_work_in_progress() {
    let trusted_key = key(1);
    let mut trusted = TrustedKeys::new();
    trusted.insert(trusted_key.public());
    let api = start(trusted, "plant").await;
    for (body, want) in [
        ("{not json", 400),
        (r#"{"image": ""}"#, 400),
        (r#"{"image": "a/b:c", "removal": "AAAA"}"#, 400),
        (
            r#"{"image": "a/b:c", "locality": true, "removal": "***"}"#,
            400,
        ),
        (
            r#"{"image": "a/b:c", "locality": true, "removal": "AAAA"}"#,
            400,
        ),
        // Signed by the node's identity, which --trust does not accept.
        (r#"{"image": "a/b:c", "locality": true}"#, 422),
    ] {
        let (status, json) = api.post("/v1/rm", body).await;
        assert_eq!(status, want, "{body}: {json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (status, json) = api
        .post("/v1/rm", &removal_body("a/b:c", "plant", &key(2)))
        .await;
    assert_eq!(status, 422, "{json}");
    assert!(json["error"].as_str().unwrap().contains("removal refused"));
    let (status, json) = api
        .post("/v1/rm", &removal_body("a/b:c", "other", &trusted_key))
        .await;
    assert_eq!(status, 422, "{json}");
    assert!(json["error"].as_str().unwrap().contains("locality"));
    // A removal naming another image than the request.
    let mut mismatched: serde_json::Value =
        serde_json::from_str(&removal_body("a/b:c", "plant", &trusted_key)).unwrap();
    mismatched["image"] = "a/b:d".into();
    let (status, _) = api.post("/v1/rm", &mismatched.to_string()).await;
    assert_eq!(status, 422);

    // A release still in progress (no gateway can serve it here) is not
    // removed under its feet.
    let good = SignedRelease::sign(release("plant"), &trusted_key);
    let image = good.body_unverified().image.clone();
    let (status, _) = api.post("/v1/releases", &encoded(&good)).await;
    assert_eq!(status, 200);
    let (status, json) = api
        .post("/v1/rm", &serde_json::json!({ "image": image }).to_string())
        .await;
    assert_eq!(status, 409, "{json}");
    assert!(json["error"].as_str().unwrap().contains("still"), "{json}");

    // A trusted removal of an image this node does not hold succeeds and
    // says it removed nothing.
    let (status, json) = api
        .post("/v1/rm", &removal_body("a/b:c", "plant", &trusted_key))
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["unpinned"], false);
    assert_eq!(json["locality"], true);
    let (_, metrics) = api.get("/metrics").await;
    assert!(
        metrics.contains("edgeswarm_removals_refused_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgeswarm_images_removed_total 1"),
        "{metrics}"
    );
    api.daemon.shutdown();
}

/// A cross-site `text/plain` POST (what a web page can send without a
/// CORS preflight) is refused with 415 even with the right token, so the
/// handler never parses it.
#[tokio::test]
async fn api_refuses_non_json_bodies_with_415() {
    let api = start(TrustedKeys::new(), "ctype").await;
    let body = r#"{"image": "a/b:c"}"#;
    for ctype in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = api
            .http
            .post(format!("{}/v1/rm", api.base))
            .bearer_auth(&api.token)
            .body(body);
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 415, "{ctype:?}");
        let json: serde_json::Value = r.json().await.unwrap();
        assert!(json["error"].as_str().unwrap().contains("application/json"));
    }
    // The same body as JSON reaches the handler (which says the image is
    // not here).
    let (status, json) = api.post("/v1/rm", body).await;
    assert_eq!(status, 422, "{json}");
    // With a charset parameter it is still JSON.
    let r = api
        .http
        .post(format!("{}/v1/rm", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    api.daemon.shutdown();
}

/// Mutating endpoints need the bearer token from `<data dir>/api.token`
/// (written 0600 at start); reads stay open on loopback.
#[tokio::test]
async fn api_mutations_need_the_token_file_bearer() {
    use std::os::unix::fs::PermissionsExt as _;
    let api = start(TrustedKeys::new(), "token").await;
    let path = edgeswarm_node::api::token_path(api.dir.path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), api.token);
    assert_eq!(api.token.len(), 64);
    let body = r#"{"image": "registry.example:5000/app:v1"}"#;
    for path in ["/v1/deploy", "/v1/rm", "/v1/resolve", "/v1/releases"] {
        for auth in [
            None,
            Some("Bearer wrong".to_owned()),
            Some(format!("Basic {}", api.token)),
            Some(format!("Bearer {}x", api.token)),
        ] {
            let mut req = api
                .http
                .post(format!("{}{path}", api.base))
                .header("content-type", "application/json")
                .body(body);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 401, "{path} {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
    }
    // Nothing was deployed or refused behind the 401s.
    let (status, text) = api.get("/v1/status").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["self"]["releases"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["refused"].as_array().unwrap().len(), 0, "{v}");
    // With the token the request reaches the handler.
    let (status, json) = api.post("/v1/deploy", body).await;
    assert_eq!(status, 422, "{json}");
    for read in ["/v1/health", "/v1/status", "/v1/images", "/metrics"] {
        assert_eq!(api.get(read).await.0, 200, "{read}");
    }
    api.daemon.shutdown();
}

/// DNS rebinding: a page on evil.example that rebinds its name to
/// 127.0.0.1 sends `Host: evil.example`; every request with a Host other
/// than loopback, localhost or the listen address is refused.
#[tokio::test]
async fn api_refuses_foreign_host_headers() {
    let api = start(TrustedKeys::new(), "host").await;
    let port = api.addr.port();
    let auth = format!("Authorization: Bearer {}", api.token);
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("127.0.0.1.evil.example:{port}"),
        format!("10.1.2.3:{port}"),
    ] {
        for path in ["/v1/status", "/metrics"] {
            let (status, body) = raw(
                api.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: {host}"),
                "",
            )
            .await;
            assert_eq!(status, 421, "{host} {path}: {body}");
        }
        let (status, body) = raw(
            api.addr,
            &format!(
                "POST /v1/rm HTTP/1.1\r\nHost: {host}\r\n{auth}\r\nContent-Type: application/json"
            ),
            r#"{"image": "a/b:c"}"#,
        )
        .await;
        assert_eq!(status, 421, "{host}: {body}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".to_owned(),
        "127.0.0.5".to_owned(),
    ] {
        let (status, body) = raw(
            api.addr,
            &format!("GET /v1/health HTTP/1.1\r\nHost: {host}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    api.daemon.shutdown();
}
