//! Chunk exchange over raw `libp2p-stream` streams, speaking the frames of
//! `protocol::wire` (see `frame`).
//!
//! - **Serving.** Every inbound stream gets a task (bounded by a semaphore).
//!   A reader half parses frames into a bounded queue; the writer half
//!   answers `Hello` with our `Hello` and a `Bitfield` per known blob, pushes
//!   `Have` for newly verified chunks every 200 ms, and answers requests in
//!   order: each chunk under an upload slot and the optional token bucket,
//!   read from the store (which re-verifies it). Partial blobs are served.
//!   An origin seed answers `TryElsewhere` for a chunk it uploaded moments ago
//!   (seed sparing), so peers trade it among themselves.
//! - **Downloading.** One coordinator task per blob owns a
//!   `protocol::picker::Picker` fed with our bitfield, each peer's
//!   bitfield/haves, arrivals and failures; it hands requests to per-peer
//!   session tasks. A session owns one stream: it sends `Hello` and
//!   pipelined `ChunkRequest`s (several in flight, ids tracked), reads
//!   `Bitfield`/`Have`/`ChunkResponse`, reads each payload straight into a
//!   chunk-sized buffer and writes it to the store (verified there),
//!   reporting back. The swarm task only sees commands (providers, bans),
//!   never bytes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeswarm_protocol::chunkmap::MAX_CHUNK_MAP_BYTES;
use edgeswarm_protocol::picker::{FailReason, Picker, PickerConfig};
use edgeswarm_protocol::wire::{
    self, BitfieldMsg, ChunkMapRequest, ChunkMapResponse, ChunkRequest, ChunkResponse, ChunkStatus,
    Have, Hello, StreamMessage,
};
use edgeswarm_protocol::{Bitfield, ChunkMap, Digest};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::chunkstore::BlobLayout;
use super::frame::{self, FrameError};
use super::metrics::SwarmMetrics;
use super::{ChunkStore, ChunkStoreError, ChunkWrite, Command, Protocols, SwarmConfig, SwarmError};

/// Inbound chunk streams served concurrently at most.
const MAX_INBOUND_STREAMS: usize = 256;
/// Frames queued between a server's reader and writer halves.
const SERVER_QUEUE: usize = 64;
/// Chunks of one session being verified and stored at once.
const STORE_WRITES_PER_SESSION: usize = 2;
/// Session events queued towards a download coordinator.
const EVENTS: usize = 512;
/// How soon a peer that lacked a chunk map is asked for it again: a fresh
/// release's manifest reaches its gateway a few hundred ms after the
/// release reached every node (measured: a node's manifest arrived 1.3 s
/// after the release with a fixed five-round retry, 0.56 s with this).
const MAP_REASK: Duration = Duration::from_millis(500);
/// Chunk requests that may wait for an upload slot before the server
/// answers `Busy` (then about one chunk time per slot's turn; unbounded,
/// requests on a 10 Mbit/s link waited past the requester's 14 s stall
/// timeout).
const UPLOAD_QUEUE: usize = 4;
/// How long a failed peer is left alone by a download.
const PEER_BACKOFF: Duration = Duration::from_secs(5);

/// Completion of a running download, shared by concurrent callers.
type DownloadWatch = watch::Receiver<Option<Result<(), String>>>;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Type-erased download entry point, so `SwarmClient` is not generic.
pub(crate) trait Fetch: Send + Sync {
    fn fetch(&self, blob: Digest, map: Option<ChunkMap>) -> BoxFut<Result<(), SwarmError>>;
}

/// The exchange of a peer without a store (the bootstrap peer).
pub(crate) struct NoStore;

impl Fetch for NoStore {
    fn fetch(&self, _blob: Digest, _map: Option<ChunkMap>) -> BoxFut<Result<(), SwarmError>> {
        Box::pin(async {
            Err(SwarmError::Config(
                "this peer has no store (bootstrap mode)".into(),
            ))
        })
    }
}

/// A token bucket for `--max-upload-rate`.
struct TokenBucket {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        TokenBucket {
            rate,
            burst: rate.max(1_048_576.0),
            state: tokio::sync::Mutex::new((rate.max(1_048_576.0), tokio::time::Instant::now())),
        }
    }

    /// Takes `n` tokens, sleeping while in debt (holding the lock, which
    /// serialises uploaders: that is what a rate cap means).
    async fn take(&self, n: u64) {
        let mut st = self.state.lock().await;
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.rate).min(self.burst);
        st.1 = now;
        st.0 -= n as f64;
        if st.0 < 0.0 {
            let wait = Duration::from_secs_f64(-st.0 / self.rate);
            tokio::time::sleep(wait).await;
            st.0 = 0.0;
            st.1 = tokio::time::Instant::now();
        }
    }
}

struct Inner<S> {
    store: S,
    control: libp2p_stream::Control,
    protocols: Protocols,
    commands: mpsc::Sender<Command>,
    metrics: SwarmMetrics,
    shutdown: CancellationToken,
    local_peer: PeerId,
    upload_slots: Arc<Semaphore>,
    /// Chunk requests waiting for an upload slot.
    upload_waiting: AtomicUsize,
    bucket: Option<TokenBucket>,
    seed_sparing: Option<Duration>,
    /// Blobs downloaded through the swarm in this process (not origin seeds).
    downloaded: Mutex<HashSet<Digest>>,
    /// Last upload time of chunks of origin-seeded blobs.
    /// and to whom.
    recent_uploads: Mutex<HashMap<(Digest, u32), (Instant, PeerId)>>,
    /// Peers connected now (kept by the swarm task): sparing ends early
    /// for a chunk whose only recipient left.
    connected: Arc<Mutex<HashSet<PeerId>>>,
    /// Running downloads, shared by concurrent callers.
    downloads: Mutex<HashMap<Digest, DownloadWatch>>,
    corrupt_uploads: bool,
    requests_per_peer: usize,
    max_download_peers: usize,
    stall_base: Duration,
    stall_min_rate: u64,
    deadline_window: u32,
}

/// The chunk exchange of one node.
pub(crate) struct Exchange<S> {
    inner: Arc<Inner<S>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: ChunkStore> Exchange<S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        config: &SwarmConfig,
        store: S,
        mut control: libp2p_stream::Control,
        protocols: Protocols,
        commands: mpsc::Sender<Command>,
        metrics: SwarmMetrics,
        shutdown: CancellationToken,
        local_peer: PeerId,
        connected: Arc<Mutex<HashSet<PeerId>>>,
    ) -> Result<Self, SwarmError> {
        let incoming = control
            .accept(protocols.chunks.clone())
            .map_err(|e| SwarmError::Config(e.to_string()))?;
        let inner = Arc::new(Inner {
            store,
            control,
            protocols,
            commands,
            metrics,
            shutdown,
            local_peer,
            upload_slots: Arc::new(Semaphore::new(config.upload_slots.max(1))),
            upload_waiting: AtomicUsize::new(0),
            bucket: config.max_upload_rate.map(TokenBucket::new),
            seed_sparing: config.seed_sparing,
            downloaded: Mutex::new(HashSet::new()),
            recent_uploads: Mutex::new(HashMap::new()),
            connected,
            downloads: Mutex::new(HashMap::new()),
            corrupt_uploads: config.corrupt_uploads(),
            requests_per_peer: config.requests_per_peer.max(1),
            max_download_peers: config.max_download_peers.max(1),
            stall_base: config.stall_base,
            stall_min_rate: config.stall_min_rate.max(1),
            deadline_window: config.deadline_window,
        });
        tokio::spawn(accept_loop(inner.clone(), incoming));
        Ok(Exchange { inner })
    }
}

impl<S: ChunkStore> Fetch for Exchange<S> {
    fn fetch(&self, blob: Digest, map: Option<ChunkMap>) -> BoxFut<Result<(), SwarmError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut rx = {
                let mut downloads = lock(&inner.downloads);
                match downloads.get(&blob) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        downloads.insert(blob, rx.clone());
                        let inner2 = inner.clone();
                        tokio::spawn(async move {
                            let res = download(inner2.clone(), blob, map).await;
                            lock(&inner2.downloads).remove(&blob);
                            let _ = tx.send(Some(res.map_err(|e| e.to_string())));
                        });
                        rx
                    }
                }
            };
            loop {
                if let Some(res) = rx.borrow_and_update().clone() {
                    return res.map_err(|e| {
                        if inner.shutdown.is_cancelled() {
                            SwarmError::Shutdown
                        } else {
                            SwarmError::Transport(e)
                        }
                    });
                }
                if rx.changed().await.is_err() {
                    return Err(SwarmError::Shutdown);
                }
            }
        })
    }
}

// ---------------------------------------------------------------- serving

async fn accept_loop<S: ChunkStore>(
    inner: Arc<Inner<S>>,
    mut incoming: libp2p_stream::IncomingStreams,
) {
    let limit = Arc::new(Semaphore::new(MAX_INBOUND_STREAMS));
    loop {
        let next = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            n = incoming.next() => n,
        };
        let Some((peer, stream)) = next else { return };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "too many inbound chunk streams; dropping one");
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let cancel = inner.shutdown.clone();
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = serve_stream(&inner, peer, stream) => {
                    if let Err(e) = r {
                        if e.is_violation() {
                            penalise(&inner, peer, &e.to_string());
                        } else {
                            debug!(%peer, error = %e, "chunk stream ended");
                        }
                    }
                }
            }
        });
    }
}

fn penalise<S>(inner: &Inner<S>, peer: PeerId, reason: &str) {
    warn!(%peer, %reason, "peer broke the chunk protocol");
    inner.metrics.protocol_violations.inc();
    let _ = inner
        .commands
        .try_send(Command::Ban(peer, format!("protocol violation: {reason}")));
}

/// Most blobs one stream's `Hello` may bind.
const MAX_HELLO_BLOBS: usize = 64;

/// Requests parsed by a server's reader half.
enum Incoming {
    Hello(Vec<Digest>),
    Map(u64, Digest),
    Chunk(u64, Digest, u32),
}

async fn serve_reader<R: AsyncRead + Unpin>(
    mut r: R,
    tx: mpsc::Sender<Incoming>,
) -> Result<(), FrameError> {
    let mut hello = false;
    loop {
        let msg = match frame::read_message(&mut r).await {
            Ok(m) => m,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let incoming = match msg {
            StreamMessage::Hello(h) if !hello => {
                hello = true;
                if h.blobs.len() > MAX_HELLO_BLOBS {
                    return Err(FrameError::violation(format!(
                        "Hello lists {} blobs",
                        h.blobs.len()
                    )));
                }
                Incoming::Hello(h.blobs)
            }
            StreamMessage::ChunkRequest(q) if hello => {
                Incoming::Chunk(q.request_id, q.blob, q.index)
            }
            StreamMessage::ChunkMapRequest(q) if hello => Incoming::Map(q.request_id, q.blob),
            StreamMessage::Cancel(_) if hello => continue, // we answer anyway (allowed)
            StreamMessage::Have(_) | StreamMessage::Bitfield(_) if hello => continue,
            other => {
                return Err(FrameError::violation(format!(
                    "unexpected message kind {} from a requester",
                    other.kind()
                )))
            }
        };
        if tx.send(incoming).await.is_err() {
            return Ok(());
        }
    }
}

async fn serve_stream<S: ChunkStore>(
    inner: &Inner<S>,
    peer: PeerId,
    stream: Stream,
) -> Result<(), FrameError> {
    let (r, mut w) = stream.split();
    let (tx, mut rx) = mpsc::channel(SERVER_QUEUE);
    let reader = serve_reader(r, tx);
    let writer = async {
        // Blobs the requester asked about, with the bitfield last sent.
        let mut bound: Vec<(Digest, Option<Bitfield>)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return Ok::<(), FrameError>(()) };
                    match msg {
                        Incoming::Hello(blobs) => {
                            let known: Vec<Digest> = blobs.iter().copied().filter(|b| inner.store.bitfield(b).is_some()).collect();
                            let hello = StreamMessage::Hello(Hello { protocol_version: wire::STREAM_VERSION, blobs: known });
                            frame::write_message(&mut w, &hello, &[]).await?;
                            bound = blobs.into_iter().map(|b| (b, None)).collect();
                            for (blob, sent) in bound.iter_mut() {
                                push_haves(inner, &mut w, blob, sent).await?;
                            }
                        }
                        Incoming::Map(request_id, blob) => match inner.store.chunk_map(&blob) {
                            Some(map) => {
                                let bytes = map.encode();
                                let resp = StreamMessage::ChunkMapResponse(ChunkMapResponse { request_id, blob, status: ChunkStatus::Ok { len: bytes.len() as u64 } });
                                frame::write_message(&mut w, &resp, &bytes).await?;
                            }
                            None => {
                                let resp = StreamMessage::ChunkMapResponse(ChunkMapResponse { request_id, blob, status: ChunkStatus::NotHave });
                                frame::write_message(&mut w, &resp, &[]).await?;
                            }
                        },
                        Incoming::Chunk(request_id, blob, index) => {
                            serve_chunk(inner, peer, &mut w, request_id, blob, index).await?;
                        }
                    }
                    w.flush().await?;
                }
                _ = tick.tick() => {
                    if !bound.is_empty() {
                        for (blob, sent) in bound.iter_mut() {
                            push_haves(inner, &mut w, blob, sent).await?;
                        }
                        w.flush().await?;
                    }
                }
            }
        }
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// Counts a request waiting for an upload slot, also when its future is
/// dropped while waiting (the peer's stream closed).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(counter)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What we advertise for `blob`: verified chunks (or everything, when
/// injecting the corrupt-uploads fault).
fn advertised<S: ChunkStore>(inner: &Inner<S>, blob: &Digest) -> Option<Bitfield> {
    let bits = inner.store.bitfield(blob)?;
    if inner.corrupt_uploads {
        return Some(Bitfield::full(bits.len()));
    }
    Some(bits)
}

/// Sends the bitfield of `blob` the first time we know it, then `Have`
/// for every chunk verified since the last call.
async fn push_haves<S: ChunkStore, W: AsyncWrite + Unpin>(
    inner: &Inner<S>,
    w: &mut W,
    blob: &Digest,
    sent: &mut Option<Bitfield>,
) -> Result<(), FrameError> {
    let Some(now) = advertised(inner, blob) else {
        return Ok(());
    };
    match sent {
        Some(prev) if prev.len() == now.len() => {
            let new: Vec<u32> = now.iter_ones().filter(|i| !prev.get(*i)).collect();
            for batch in new.chunks(wire::MAX_HAVE_BATCH) {
                let have = StreamMessage::Have(Have {
                    blob: *blob,
                    indices: batch.to_vec(),
                });
                frame::write_message(w, &have, &[]).await?;
            }
        }
        _ => {
            let msg = StreamMessage::Bitfield(BitfieldMsg {
                blob: *blob,
                bitfield: now.clone(),
            });
            frame::write_message(w, &msg, &[]).await?;
        }
    }
    *sent = Some(now);
    Ok(())
}

async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    request_id: u64,
    status: ChunkStatus,
) -> Result<(), FrameError> {
    let msg = StreamMessage::ChunkResponse(ChunkResponse { request_id, status });
    frame::write_message(w, &msg, &[]).await
}

async fn serve_chunk<S: ChunkStore, W: AsyncWrite + Unpin>(
    inner: &Inner<S>,
    peer: PeerId,
    w: &mut W,
    request_id: u64,
    blob: Digest,
    index: u32,
) -> Result<(), FrameError> {
    // The layout suffices: a partial blob's verified chunks are served
    // while its later digests are still unknown.
    let Some(layout) = inner.store.layout(&blob) else {
        return respond(w, request_id, ChunkStatus::NotHave).await;
    };
    let Some(len) = layout.chunk_len(index) else {
        let message = wire::truncate_message(&format!("chunk {index} out of range"));
        return respond(w, request_id, ChunkStatus::Error { message }).await;
    };
    // All slots busy and enough requests already waiting: say Busy, and the
    // requester asks a less loaded holder at once. Queued without bound, a
    // request on a slow link waited past the requester's stall timeout; the
    // requester then dropped this peer and asked again elsewhere.
    if inner.upload_slots.available_permits() == 0
        && inner.upload_waiting.load(Ordering::Relaxed) >= UPLOAD_QUEUE
    {
        return respond(w, request_id, ChunkStatus::Busy).await;
    }
    let _slot = {
        let _waiting = WaitingGuard::enter(&inner.upload_waiting);
        inner
            .upload_slots
            .acquire()
            .await
            .map_err(|_| FrameError::Io(std::io::ErrorKind::BrokenPipe.into()))?
    };
    let bytes = if inner.corrupt_uploads {
        Bytes::from(vec![0xA5u8; len as usize])
    } else {
        // Seed sparing (super-seeding): an origin seed, one that holds
        // chunks it did not download from peers (a seed, or a gateway while
        // the blob still streams in from the registry), uploads each chunk
        // once per period and answers TryElsewhere meanwhile, so different
        // peers get different chunks and fetch the rest from each other;
        // unless the peer it went to has disconnected.
        if let Some(period) = inner.seed_sparing {
            let origin = !lock(&inner.downloaded).contains(&blob);
            if origin {
                let now = Instant::now();
                let recently = {
                    let mut recent = lock(&inner.recent_uploads);
                    if recent.len() > 1 << 20 {
                        recent.retain(|_, (t, _)| now.duration_since(*t) < period);
                    }
                    let spared = match recent.get(&(blob, index)) {
                        Some((t, to)) => {
                            now.duration_since(*t) < period
                                && *to != peer
                                && lock(&inner.connected).contains(to)
                        }
                        None => false,
                    };
                    if !spared {
                        recent.insert((blob, index), (now, peer));
                    }
                    spared
                };
                if recently {
                    return respond(w, request_id, ChunkStatus::TryElsewhere).await;
                }
            }
        }
        match inner.store.read_chunk(blob, index).await {
            Ok(b) => b,
            Err(e) => {
                debug!(%blob, index, error = %e, "cannot serve chunk");
                return respond(w, request_id, ChunkStatus::NotHave).await;
            }
        }
    };
    if let Some(bucket) = &inner.bucket {
        bucket.take(bytes.len() as u64).await;
    }
    let head = StreamMessage::ChunkResponse(ChunkResponse {
        request_id,
        status: ChunkStatus::Ok {
            len: bytes.len() as u64,
        },
    });
    frame::write_message(w, &head, &bytes).await?;
    inner.metrics.chunks_uploaded.inc();
    inner.metrics.bytes_uploaded.inc_by(bytes.len() as u64);
    debug!(%peer, %blob, index, "served chunk");
    Ok(())
}

// ------------------------------------------------------------ downloading

/// Reports from sessions to their download coordinator.
enum Event {
    Bitfield(PeerId, Bitfield),
    Have(PeerId, Vec<u32>),
    Stored(PeerId, u32, ChunkWrite),
    Corrupt(PeerId, u32, String),
    StoreFailed(PeerId, u32, ChunkStoreError),
    Rejected(PeerId, u32, FailReason),
    Closed(PeerId, Option<String>, bool),
    Candidates(Vec<PeerId>),
}

/// A download's view of one peer session.
struct Session {
    /// Requests for the session to send.
    tx: mpsc::Sender<u32>,
    /// Ends the session.
    cancel: CancellationToken,
}

async fn download<S: ChunkStore>(
    inner: Arc<Inner<S>>,
    blob: Digest,
    map: Option<ChunkMap>,
) -> Result<(), SwarmError> {
    if inner.store.is_complete(&blob) {
        return Ok(());
    }
    lock(&inner.downloaded).insert(blob);
    if let (Some(m), None) = (&map, inner.store.layout(&blob)) {
        inner.store.put_chunk_map(blob, m).await?;
    }
    if inner.store.layout(&blob).is_none() {
        if let Some(m) = fetch_map(&inner, blob).await? {
            inner.store.put_chunk_map(blob, &m).await?;
        }
    }
    let layout = inner
        .store
        .layout(&blob)
        .ok_or(SwarmError::NoChunkMap(blob))?;
    let _ = inner.commands.send(Command::Provide(blob)).await;
    let count = layout.chunk_count();
    let have = inner
        .store
        .bitfield(&blob)
        .filter(|b| b.len() == count)
        .unwrap_or_else(|| Bitfield::new(count));
    let seed = {
        let b = inner.local_peer.to_bytes();
        let mut x = [0u8; 8];
        for (i, byte) in b.iter().rev().take(8).enumerate() {
            x[i] = *byte;
        }
        u64::from_le_bytes(x)
            ^ u64::from_le_bytes(blob.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    };
    let mut picker: Picker<PeerId> = Picker::new(PickerConfig {
        max_in_flight_per_peer: inner.requests_per_peer,
        window_chunks: inner.deadline_window,
        endgame_threshold: 8,
        max_requests_per_chunk: 2,
        seed,
        timeout_base_ms: inner.stall_base.as_millis() as u64,
        timeout_ms_per_mib: (1_000u64 << 20) / inner.stall_min_rate,
        busy_backoff_ms: 250,
    });
    picker
        .add_blob(blob, layout.size, layout.chunk_size, have)
        .map_err(|e| SwarmError::Config(e.to_string()))?;
    let _ = picker.set_digests_known(&blob, layout.digests_known);

    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENTS);
    let mut sessions: HashMap<PeerId, Session> = HashMap::new();
    let mut backoff: HashMap<PeerId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut last_discovery: Option<Instant> = None;
    let mut last_providers: Option<Instant> = None;
    let session_cancel = inner.shutdown.child_token();
    let _guard = session_cancel.clone().drop_guard();

    while !inner.store.is_complete(&blob) {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return Err(SwarmError::Shutdown),
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { return Err(SwarmError::Shutdown) };
                match ev {
                    Event::Candidates(list) => {
                        for peer in list {
                            if peer == inner.local_peer
                                || sessions.contains_key(&peer)
                                || sessions.len() >= inner.max_download_peers
                                || backoff.get(&peer).is_some_and(|t| *t > Instant::now())
                            {
                                continue;
                            }
                            let (tx, rx) = mpsc::channel(inner.requests_per_peer * 2);
                            let cancel = session_cancel.child_token();
                            sessions.insert(peer, Session { tx, cancel: cancel.clone() });
                            picker.add_peer(peer);
                            tokio::spawn(session(inner.clone(), peer, blob, layout, rx, ev_tx.clone(), cancel));
                        }
                    }
                    Event::Bitfield(peer, bits) => {
                        if sessions.contains_key(&peer) {
                            let _ = picker.peer_bitfield(&peer, &blob, bits);
                        }
                    }
                    Event::Have(peer, list) => {
                        if sessions.contains_key(&peer) {
                            for i in list {
                                let _ = picker.peer_has(&peer, &blob, i);
                            }
                        }
                    }
                    Event::Stored(peer, index, outcome) => {
                        // Endgame duplicates still outstanding elsewhere
                        // are answered and dropped as AlreadyHad.
                        let _ = picker.chunk_received(&blob, index, Some(&peer));
                        picker.peer_progressed(&peer, now_ms());
                        if outcome == ChunkWrite::BlobComplete {
                            break;
                        }
                    }
                    Event::Corrupt(peer, index, reason) => {
                        warn!(%peer, %blob, index, %reason, "bad chunk; banning sender");
                        inner.metrics.bad_chunks.inc();
                        let _ = inner.commands.try_send(Command::Ban(peer, format!("bad chunk {index} of {blob}: {reason}")));
                        picker.request_failed(&peer, &blob, index, FailReason::Error, now_ms());
                        drop_peer(&mut picker, &mut sessions, &mut backoff, peer, Duration::from_secs(3600));
                    }
                    Event::StoreFailed(peer, index, err) => {
                        picker.request_failed(&peer, &blob, index, FailReason::Error, now_ms());
                        warn!(%blob, index, error = %err, "store failed to take a chunk");
                        if matches!(err, ChunkStoreError::BlobCorrupt(_)) {
                            return Err(SwarmError::Store(err));
                        }
                    }
                    Event::Rejected(peer, index, why) => {
                        inner.metrics.rejected_requests.inc();
                        picker.request_failed(&peer, &blob, index, why, now_ms());
                    }
                    Event::Closed(peer, violation, unsupported) => {
                        if let Some(reason) = violation {
                            penalise(&inner, peer, &reason);
                        }
                        let wait = if unsupported { Duration::from_secs(60) } else { PEER_BACKOFF };
                        drop_peer(&mut picker, &mut sessions, &mut backoff, peer, wait);
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                // Stalls: a request outstanding past its size-scaled timeout
                // means the peer stalled; its requests go elsewhere.
                let mut stalled: Vec<PeerId> = picker.expire(now_ms()).into_iter().map(|r| r.peer).collect();
                stalled.sort();
                stalled.dedup();
                for peer in stalled {
                    info!(%peer, %blob, "peer stalled; reassigning its requests");
                    inner.metrics.stalls.inc();
                    drop_peer(&mut picker, &mut sessions, &mut backoff, peer, Duration::from_secs(30));
                }
                // Chunks that landed by another path (this node's own
                // registry pull after a failover, an import put whole) are
                // not asked of peers any more.
                if let (Some(held), Some(known)) = (inner.store.bitfield(&blob), picker.local_bitfield(&blob).cloned()) {
                    if held.len() == known.len() {
                        for index in held.iter_ones().filter(|i| !known.get(*i)) {
                            let _ = picker.chunk_received(&blob, index, None);
                        }
                    }
                }
                if let Some(c) = layout.chunk_at(inner.store.cursor(&blob)) {
                    let _ = picker.set_cursor(&blob, c);
                }
                // Digests arrive while a gateway streams the blob in.
                if let Some(l) = inner.store.layout(&blob) {
                    let _ = picker.set_digests_known(&blob, l.digests_known);
                }
                // Discovery: connected peers often at first, providers less often.
                let every = if now.duration_since(started) < Duration::from_secs(5) { Duration::from_millis(500) } else { Duration::from_secs(2) };
                if last_discovery.is_none_or(|t| now.duration_since(t) >= every) {
                    last_discovery = Some(now);
                    let (tx, rx) = oneshot::channel();
                    if inner.commands.try_send(Command::ConnectedPeers(tx)).is_ok() {
                        let ev_tx = ev_tx.clone();
                        tokio::spawn(async move {
                            if let Ok(list) = rx.await { let _ = ev_tx.send(Event::Candidates(list)).await; }
                        });
                    }
                }
                if last_providers.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                    last_providers = Some(now);
                    let (tx, rx) = oneshot::channel();
                    if inner.commands.try_send(Command::GetProviders(blob, tx)).is_ok() {
                        let ev_tx = ev_tx.clone();
                        tokio::spawn(async move {
                            if let Ok(list) = rx.await { let _ = ev_tx.send(Event::Candidates(list)).await; }
                        });
                    }
                }
            }
        }
        for req in picker.next_requests(now_ms()) {
            let sent = sessions
                .get(&req.peer)
                .is_some_and(|s| s.tx.try_send(req.index).is_ok());
            if !sent {
                picker.request_failed(&req.peer, &blob, req.index, FailReason::Busy, now_ms());
            }
        }
    }
    session_cancel.cancel();
    info!(%blob, "blob complete");
    Ok(())
}

fn drop_peer(
    picker: &mut Picker<PeerId>,
    sessions: &mut HashMap<PeerId, Session>,
    backoff: &mut HashMap<PeerId, Instant>,
    peer: PeerId,
    wait: Duration,
) {
    if let Some(s) = sessions.remove(&peer) {
        s.cancel.cancel();
    }
    // Its requests become requestable elsewhere; its bits leave the
    // availability counts.
    picker.remove_peer(&peer);
    backoff.insert(peer, Instant::now() + wait);
}

/// Asks candidate peers for the chunk map of `blob` until one answers, or
/// until the store learns the blob's layout some other way (`None`).
async fn fetch_map<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
) -> Result<Option<ChunkMap>, SwarmError> {
    // When each peer was last asked. A peer that lacked the map is asked
    // again after MAP_REASK, not after a fixed number of rounds: a fresh
    // release's manifest reaches the gateway a few hundred ms after the
    // release reached everyone, and every node's first ask comes too early.
    let mut asked: HashMap<PeerId, Instant> = HashMap::new();
    for round in 0..240u32 {
        // The layout may arrive meanwhile by other means (gateway gossip).
        if inner.store.layout(&blob).is_some() {
            return Ok(None);
        }
        // Connected peers first (no lookup), then DHT providers now and
        // then, for holders this node is not connected to.
        let (tx, rx) = oneshot::channel();
        let mut candidates = Vec::new();
        if inner
            .commands
            .send(Command::ConnectedPeers(tx))
            .await
            .is_ok()
        {
            candidates.extend(rx.await.unwrap_or_default());
        }
        if let Some(map) = ask_for_map(inner, blob, candidates, &mut asked).await {
            return Ok(Some(map));
        }
        if round % 5 == 0 {
            let (tx, rx) = oneshot::channel();
            if inner
                .commands
                .send(Command::GetProviders(blob, tx))
                .await
                .is_ok()
            {
                if let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(2), rx).await {
                    if let Some(map) = ask_for_map(inner, blob, list, &mut asked).await {
                        return Ok(Some(map));
                    }
                }
            }
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return Err(SwarmError::Shutdown),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    Err(SwarmError::NoChunkMap(blob))
}

/// Asks each candidate not asked within [`MAP_REASK`] for `blob`'s chunk
/// map; the first map a peer serves wins. Peers that answer with protocol
/// violations are penalised.
async fn ask_for_map<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
    candidates: Vec<PeerId>,
    asked: &mut HashMap<PeerId, Instant>,
) -> Option<ChunkMap> {
    for peer in candidates {
        if asked.get(&peer).is_some_and(|t| t.elapsed() < MAP_REASK) {
            continue;
        }
        asked.insert(peer, Instant::now());
        match tokio::time::timeout(Duration::from_secs(10), get_map(inner, peer, blob)).await {
            Ok(Ok(Some(map))) => return Some(map),
            Ok(Ok(None)) => {}
            Ok(Err(e)) if e.is_violation() => penalise(inner, peer, &e.to_string()),
            _ => {}
        }
    }
    None
}

async fn get_map<S: ChunkStore>(
    inner: &Inner<S>,
    peer: PeerId,
    blob: Digest,
) -> Result<Option<ChunkMap>, FrameError> {
    let mut control = inner.control.clone();
    let mut stream = control
        .open_stream(peer, inner.protocols.chunks.clone())
        .await
        .map_err(|e| FrameError::Io(std::io::Error::other(e.to_string())))?;
    let hello = StreamMessage::Hello(Hello {
        protocol_version: wire::STREAM_VERSION,
        blobs: vec![blob],
    });
    frame::write_message(&mut stream, &hello, &[]).await?;
    let req = StreamMessage::ChunkMapRequest(ChunkMapRequest {
        request_id: 1,
        blob,
    });
    frame::write_message(&mut stream, &req, &[]).await?;
    stream.flush().await?;
    loop {
        match frame::read_message(&mut stream).await? {
            StreamMessage::Hello(_) | StreamMessage::Bitfield(_) | StreamMessage::Have(_) => {}
            StreamMessage::ChunkMapResponse(resp) if resp.request_id == 1 && resp.blob == blob => {
                return match resp.status {
                    ChunkStatus::Ok { len } => {
                        if len > MAX_CHUNK_MAP_BYTES as u64 {
                            return Err(FrameError::violation("oversize chunk map"));
                        }
                        let mut body = vec![0u8; len as usize];
                        stream.read_exact(&mut body).await?;
                        let map = ChunkMap::decode(&body)
                            .map_err(|e| FrameError::violation(e.to_string()))?;
                        Ok(Some(map))
                    }
                    _ => Ok(None),
                };
            }
            other => {
                return Err(FrameError::violation(format!(
                    "unexpected message kind {} while awaiting a chunk map",
                    other.kind()
                )))
            }
        }
    }
}

/// Request ids sent on a session and not yet answered, with their chunk.
type Outstanding = Arc<Mutex<HashMap<u64, u32>>>;

/// One download session with one peer for one blob.
async fn session<S: ChunkStore>(
    inner: Arc<Inner<S>>,
    peer: PeerId,
    blob: Digest,
    layout: BlobLayout,
    requests: mpsc::Receiver<u32>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let mut control = inner.control.clone();
    let open = control.open_stream(peer, inner.protocols.chunks.clone());
    let outcome = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(Duration::from_secs(10), open) => r,
    };
    let stream = match outcome {
        Ok(Ok(s)) => s,
        Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
            let _ = events.send(Event::Closed(peer, None, true)).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "cannot open chunk stream");
            let _ = events.send(Event::Closed(peer, None, false)).await;
            return;
        }
        Err(_) => {
            let _ = events.send(Event::Closed(peer, None, false)).await;
            return;
        }
    };
    let (r, w) = stream.split();
    let outstanding: Outstanding = Arc::new(Mutex::new(HashMap::new()));
    let res = tokio::select! {
        _ = cancel.cancelled() => return,
        r = session_writer(w, blob, requests, outstanding.clone()) => r,
        r = session_reader(&inner, r, peer, blob, &layout, &events, &outstanding) => r,
    };
    let violation = match res {
        Err(e) if e.is_violation() => Some(e.to_string()),
        Err(e) => {
            debug!(%peer, error = %e, "chunk session ended");
            None
        }
        Ok(()) => None,
    };
    let _ = events.send(Event::Closed(peer, violation, false)).await;
}

async fn session_writer<W: AsyncWrite + Unpin>(
    mut w: W,
    blob: Digest,
    mut requests: mpsc::Receiver<u32>,
    outstanding: Outstanding,
) -> Result<(), FrameError> {
    let hello = StreamMessage::Hello(Hello {
        protocol_version: wire::STREAM_VERSION,
        blobs: vec![blob],
    });
    frame::write_message(&mut w, &hello, &[]).await?;
    w.flush().await?;
    let mut next_id: u64 = 0;
    while let Some(index) = requests.recv().await {
        next_id += 1;
        lock(&outstanding).insert(next_id, index);
        let req = StreamMessage::ChunkRequest(ChunkRequest {
            request_id: next_id,
            blob,
            index,
        });
        frame::write_message(&mut w, &req, &[]).await?;
        w.flush().await?;
    }
    Ok(())
}

async fn session_reader<S: ChunkStore, R: AsyncRead + Unpin>(
    inner: &Arc<Inner<S>>,
    mut r: R,
    peer: PeerId,
    blob: Digest,
    layout: &BlobLayout,
    events: &mpsc::Sender<Event>,
    outstanding: &Outstanding,
) -> Result<(), FrameError> {
    let count = layout.chunk_count();
    let mut hello = false;
    let writes = Arc::new(Semaphore::new(STORE_WRITES_PER_SESSION));
    loop {
        let msg = frame::read_message(&mut r).await?;
        let ev = match msg {
            StreamMessage::Hello(_) if !hello => {
                hello = true;
                continue;
            }
            StreamMessage::Bitfield(b) if hello => {
                if b.blob != blob {
                    continue; // about another blob we did not ask for: ignore
                }
                if b.bitfield.len() != count {
                    return Err(FrameError::violation(format!(
                        "bitfield of {} bits for {count} chunks",
                        b.bitfield.len()
                    )));
                }
                Event::Bitfield(peer, b.bitfield)
            }
            StreamMessage::Have(h) if hello => {
                if h.blob != blob {
                    continue;
                }
                if h.indices.iter().any(|i| *i >= count) {
                    return Err(FrameError::violation("Have index out of range"));
                }
                Event::Have(peer, h.indices)
            }
            StreamMessage::ChunkResponse(resp) if hello => {
                let Some(index) = lock(outstanding).remove(&resp.request_id) else {
                    return Err(FrameError::violation(format!(
                        "response to unknown request {}",
                        resp.request_id
                    )));
                };
                match resp.status {
                    ChunkStatus::Ok { len } => {
                        let expected = layout.chunk_len(index).ok_or_else(|| {
                            FrameError::violation(format!("chunk {index} out of range"))
                        })?;
                        if len != expected as u64 {
                            return Err(FrameError::violation(format!(
                                "chunk {index} of {len} bytes, expected {expected}"
                            )));
                        }
                        let mut buf = vec![0u8; expected as usize];
                        r.read_exact(&mut buf).await?;
                        // Verify and store off the read path, so the next
                        // chunk streams in meanwhile (bounded per session).
                        let permit =
                            writes.clone().acquire_owned().await.map_err(|_| {
                                FrameError::Io(std::io::ErrorKind::BrokenPipe.into())
                            })?;
                        let inner = inner.clone();
                        let events = events.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let ev = match inner
                                .store
                                .write_chunk(blob, index, Bytes::from(buf))
                                .await
                            {
                                Ok(outcome) => {
                                    if outcome == ChunkWrite::AlreadyHad {
                                        inner.metrics.duplicate_chunks.inc();
                                    } else {
                                        inner.metrics.chunks_downloaded.inc();
                                        inner.metrics.bytes_downloaded.inc_by(expected as u64);
                                        inner.metrics.record_source(peer);
                                    }
                                    Event::Stored(peer, index, outcome)
                                }
                                Err(ChunkStoreError::Corrupt(reason)) => {
                                    Event::Corrupt(peer, index, reason)
                                }
                                Err(e) => Event::StoreFailed(peer, index, e),
                            };
                            let _ = events.send(ev).await;
                        });
                        continue;
                    }
                    ChunkStatus::NotHave => Event::Rejected(peer, index, FailReason::NotHave),
                    // At its upload limit: leave the peer alone briefly.
                    ChunkStatus::Busy => Event::Rejected(peer, index, FailReason::Busy),
                    // Seed sparing and errors: ask another holder of this
                    // chunk (the picker comes back here if there is none).
                    ChunkStatus::TryElsewhere | ChunkStatus::Error { .. } => {
                        Event::Rejected(peer, index, FailReason::Error)
                    }
                }
            }
            other => {
                return Err(FrameError::violation(format!(
                    "unexpected message kind {} from a server",
                    other.kind()
                )))
            }
        };
        if events.send(ev).await.is_err() {
            return Ok(());
        }
    }
}
