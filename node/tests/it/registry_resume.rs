//! Resilience against a failing registry: a fault-injecting TCP proxy in
//! front of a real `docker-registry` cuts or stalls blob responses and
//! answers some requests with 503/429. Blobs must complete through Range
//! resume with ~1x bytes over the "cloud" link, and persistent failures must
//! end in a clear error.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::registry::*;
use crate::support::{init_tracing, push};
use edgeswarm_node::registry::testing::{self, ImageSpec, LayerSource, TestRegistry};
use edgeswarm_node::registry::{
    Platform, Reference, RegistryClient, RegistryConfig, RegistryError,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to matching requests.
#[derive(Default)]
struct Faults {
    /// Substring of the request line whose response gets cut or stalled.
    target: Option<String>,
    /// Response bytes (headers included) forwarded before the fault.
    after: u64,
    /// How many responses to fault.
    times: AtomicU32,
    /// Stall (stop forwarding, keep the socket open) instead of closing.
    stall: bool,
    /// Canned responses: (request-line substring, raw HTTP response), used once each.
    canned: Mutex<VecDeque<(String, String)>>,
    /// Request heads seen, in order.
    seen: Mutex<Vec<String>>,
}

async fn start_proxy(upstream: SocketAddr, faults: Arc<Faults>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let faults = faults.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let armed = Arc::new(AtomicBool::new(false));
                let (canned_tx, mut canned_rx) = tokio::sync::mpsc::channel::<String>(4);
                let up = {
                    let faults = faults.clone();
                    let armed = armed.clone();
                    async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            let line = text.lines().next().unwrap_or("").to_owned();
                            if line.starts_with("GET ") || line.starts_with("HEAD ") {
                                faults.seen.lock().unwrap().push(text.clone());
                                let canned = {
                                    let mut canned = faults.canned.lock().unwrap();
                                    let pos =
                                        canned.iter().position(|(m, _)| line.contains(m.as_str()));
                                    pos.and_then(|p| canned.remove(p))
                                };
                                if let Some((_, response)) = canned {
                                    let _ = canned_tx.send(response).await;
                                    continue;
                                }
                                if let Some(target) = &faults.target {
                                    if line.contains(target.as_str())
                                        && faults
                                            .times
                                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                                                t.checked_sub(1)
                                            })
                                            .is_ok()
                                    {
                                        armed.store(true, Ordering::SeqCst);
                                    }
                                }
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut sent_while_armed = 0u64;
                    loop {
                        tokio::select! {
                            canned = canned_rx.recv() => {
                                let Some(response) = canned else { return };
                                if client_write.write_all(response.as_bytes()).await.is_err() { return }
                            }
                            read = server_read.read(&mut buf) => {
                                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                                let mut slice = &buf[..n];
                                if armed.load(Ordering::SeqCst) {
                                    let left = faults.after.saturating_sub(sent_while_armed);
                                    if (slice.len() as u64) >= left {
                                        slice = &slice[..left as usize];
                                        let _ = client_write.write_all(slice).await;
                                        if faults.stall {
                                            tokio::time::sleep(Duration::from_secs(3600)).await;
                                        }
                                        return; // dropping both sockets cuts the connection
                                    }
                                    sent_while_armed += slice.len() as u64;
                                }
                                if client_write.write_all(slice).await.is_err() { return }
                            }
                        }
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    addr
}

/// An image whose second layer is 8 MiB of incompressible data.
async fn big_image(registry: &TestRegistry, dir: &std::path::Path) -> testing::BuiltImage {
    let mut spec = ImageSpec::realistic(1 << 20, "big");
    spec.layers[1] = LayerSource::random("data/blob.bin", 8 << 20, 7);
    let image = testing::build_image(spec, dir).await.unwrap();
    push(registry, "team/big", "v1", &image).await;
    image
}

/// The small gzip image `team/app:v1`, pushed.
async fn small_image(registry: &TestRegistry, dir: &std::path::Path) -> testing::BuiltImage {
    let image = build(dir, edgeswarm_node::registry::Compression::Gzip, "v1").await;
    push(registry, "team/app", "v1", &image).await;
    image
}

fn quick_client(max_attempts: u32, idle: Duration) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        max_attempts,
        initial_backoff: Duration::from_millis(20),
        idle_timeout: idle,
        ..RegistryConfig::default()
    })
    .unwrap()
}

async fn collect(
    client: &RegistryClient,
    reference: &Reference,
    index: usize,
) -> (Vec<u8>, u64, u64) {
    let resolved = client.resolve(reference, &Platform::host()).await.unwrap();
    let layer = &resolved.layers[index];
    let mut stream = client.layer_stream(&resolved.reference, layer, 0);
    let counter = stream.counter();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    (bytes, counter.load(Ordering::Relaxed), layer.size)
}

fn ranges(faults: &Faults, digest: &str) -> Vec<String> {
    faults
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|head| head.lines().next().unwrap_or("").contains(digest))
        .filter_map(|head| {
            head.lines()
                .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn blob_cut_mid_body_resumes_with_range_at_1x_bytes() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = big_image(&registry, dir.path()).await;
    let layer = &image.layers[1];
    let faults = Arc::new(Faults {
        target: Some(layer.digest.to_oci()),
        after: 3 << 20,
        times: AtomicU32::new(1),
        ..Faults::default()
    });
    let proxy = start_proxy(registry.addr(), faults.clone()).await;
    let client = quick_client(4, Duration::from_secs(10));
    let reference = Reference::parse(&format!("{proxy}/team/big:v1")).unwrap();

    let (bytes, received, size) = collect(&client, &reference, 1).await;
    assert_eq!(size, layer.size);
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(
        sha(&bytes),
        layer.digest,
        "one continuous, correct byte stream"
    );
    assert_eq!(client.stats().resumes, 1);
    let ranges = ranges(&faults, &layer.digest.to_oci());
    assert_eq!(ranges.len(), 1, "exactly one resume request: {ranges:?}");
    let from: u64 = ranges[0]
        .split('=')
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches('-').parse().ok())
        .unwrap();
    assert!(
        from > 2 << 20 && from < 3 << 20,
        "resumed from the last byte delivered: {from}"
    );
    assert_eq!(received, size, "no byte fetched twice");
    println!(
        "cut at ~3 MiB of {size} bytes: resumed from {from}, received {received} ({:.4}x)",
        received as f64 / size as f64
    );
}

#[tokio::test]
async fn stalled_blob_times_out_and_resumes() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = big_image(&registry, dir.path()).await;
    let layer = &image.layers[1];
    let faults = Arc::new(Faults {
        target: Some(layer.digest.to_oci()),
        after: 1 << 20,
        times: AtomicU32::new(2),
        stall: true,
        ..Faults::default()
    });
    let proxy = start_proxy(registry.addr(), faults.clone()).await;
    let client = quick_client(4, Duration::from_secs(1));
    let reference = Reference::parse(&format!("{proxy}/team/big:v1")).unwrap();
    let (bytes, received, size) = collect(&client, &reference, 1).await;
    assert_eq!(sha(&bytes), layer.digest);
    // Two injected stalls; a loaded machine may add a genuine one.
    assert!(client.stats().resumes >= 2, "{:?}", client.stats());
    assert!(ranges(&faults, &layer.digest.to_oci()).len() >= 2);
    assert_eq!(
        faults.times.load(Ordering::SeqCst),
        0,
        "both stalls were injected"
    );
    assert_eq!(
        received, size,
        "resumed from the last byte delivered each time"
    );
}

#[tokio::test]
async fn retries_server_errors_and_honours_retry_after() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = small_image(&registry, dir.path()).await;
    let faults = Arc::new(Faults::default());
    {
        let mut canned = faults.canned.lock().unwrap();
        canned.push_back((
            "/manifests/v1".into(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".into(),
        ));
        canned.push_back((
            format!("/blobs/{}", image.config_digest),
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n".into(),
        ));
        canned.push_back((
            format!("/blobs/{}", image.layers[0].digest),
            "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".into(),
        ));
    }
    let proxy = start_proxy(registry.addr(), faults.clone()).await;
    let client = quick_client(4, Duration::from_secs(10));
    let started = Instant::now();
    pull_and_verify(
        &client,
        &format!("{proxy}/team/app:v1"),
        &Platform::host(),
        &image,
    )
    .await;
    assert!(
        faults.canned.lock().unwrap().is_empty(),
        "every fault was served"
    );
    assert!(client.stats().retries >= 3, "{:?}", client.stats());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
}

#[tokio::test]
async fn persistent_failure_gives_a_clear_error() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = big_image(&registry, dir.path()).await;
    let layer = &image.layers[1];
    // Cut every response to this blob before its headers are complete.
    let faults = Arc::new(Faults {
        target: Some(layer.digest.to_oci()),
        after: 10,
        times: AtomicU32::new(u32::MAX),
        ..Faults::default()
    });
    let proxy = start_proxy(registry.addr(), faults.clone()).await;
    let client = quick_client(3, Duration::from_secs(10));
    let reference = Reference::parse(&format!("{proxy}/team/big:v1")).unwrap();
    let resolved = client.resolve(&reference, &Platform::host()).await.unwrap();
    let mut stream = client.layer_stream(&resolved.reference, &resolved.layers[1], 0);
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("team/big") && text.contains(&layer.digest.to_oci()),
        "{text}"
    );
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn blob_stream_starts_at_offset() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = big_image(&registry, dir.path()).await;
    let layer = &image.layers[1];
    let whole = std::fs::read(&layer.path).unwrap();
    let client = crate::support::registry::client();
    let reference = Reference::parse(&format!("{}/team/big:v1", registry.host())).unwrap();
    for offset in [0u64, 1, 5_000_000, layer.size - 1] {
        let mut stream = client.blob_stream(&reference, &layer.digest, offset);
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(bytes, whole[offset as usize..], "offset {offset}");
        assert_eq!(stream.bytes_received(), layer.size - offset);
    }
    let mut stream = client.blob_stream(&reference, &layer.digest, layer.size + 10);
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::BadRange { .. } | RegistryError::Http { status: 416, .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn tampered_documents_are_rejected() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = small_image(&registry, dir.path()).await;
    let other = build(
        dir.path(),
        edgeswarm_node::registry::Compression::Gzip,
        "v2",
    )
    .await;
    let respond = |content_type: &str, extra: &str, body: &[u8]| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{extra}content-length: {}\r\n\r\n{}",
            body.len(),
            String::from_utf8_lossy(body)
        )
    };
    let faults = Arc::new(Faults::default());
    {
        let mut canned = faults.canned.lock().unwrap();
        // Right bytes, wrong Docker-Content-Digest header.
        canned.push_back((
            "/manifests/v1 ".into(),
            respond(
                &image.manifest_media_type,
                &format!("docker-content-digest: {}\r\n", other.manifest_digest),
                &image.manifest_bytes,
            ),
        ));
        // Pinned by digest, but another manifest's bytes come back.
        canned.push_back((
            format!("/manifests/{}", image.manifest_digest),
            respond(&other.manifest_media_type, "", &other.manifest_bytes),
        ));
        // A config whose bytes do not match its digest.
        canned.push_back((
            format!("/blobs/{}", image.config_digest),
            respond("application/octet-stream", "", &other.config_bytes),
        ));
    }
    let proxy = start_proxy(registry.addr(), faults.clone()).await;
    let client = quick_client(2, Duration::from_secs(10));
    let tagged = Reference::parse(&format!("{proxy}/team/app:v1")).unwrap();
    for expected in [
        other.manifest_digest,
        image.manifest_digest,
        image.config_digest,
    ] {
        let reference = if expected == image.manifest_digest {
            tagged.with_digest(image.manifest_digest)
        } else {
            tagged.clone()
        };
        let err = client
            .resolve(&reference, &Platform::host())
            .await
            .unwrap_err();
        match &err {
            RegistryError::DigestMismatch { expected: e, .. } => assert_eq!(*e, expected, "{err}"),
            other => panic!("expected DigestMismatch, got {other}"),
        }
        assert!(err.to_string().contains("team/app"), "{err}");
    }
    assert!(faults.canned.lock().unwrap().is_empty());
    // Untampered, the same client pulls fine.
    pull_and_verify(
        &client,
        &format!("{proxy}/team/app:v1"),
        &Platform::host(),
        &image,
    )
    .await;
}

#[tokio::test]
async fn response_stalled_before_headers_is_retried() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = big_image(&registry, dir.path()).await;
    let layer = &image.layers[1];
    // The first response to this blob stops after 10 bytes of its status line.
    let faults = Arc::new(Faults {
        target: Some(layer.digest.to_oci()),
        after: 10,
        times: AtomicU32::new(1),
        stall: true,
        ..Faults::default()
    });
    let proxy = start_proxy(registry.addr(), faults.clone()).await;
    let client = quick_client(3, Duration::from_secs(1));
    let reference = Reference::parse(&format!("{proxy}/team/big:v1")).unwrap();
    let (bytes, received, size) = collect(&client, &reference, 1).await;
    assert_eq!(sha(&bytes), layer.digest);
    assert_eq!(received, size);
    assert_eq!(
        faults.times.load(Ordering::SeqCst),
        0,
        "the stall was injected"
    );
    assert!(client.stats().retries >= 1, "{:?}", client.stats());
}
