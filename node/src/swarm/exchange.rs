//! Chunk exchange over raw `libp2p-stream` streams (framing: `frame`).
//!
//! - **Serving.** Every inbound stream gets a task (bounded by a semaphore).
//!   A reader half parses frames into a bounded queue; the writer half
//!   answers in order, pushes `HAVE` deltas every 200 ms, and serves each
//!   chunk under an upload slot and the optional token bucket, reading it
//!   from the store (which re-verifies it). Partial blobs are served.
//! - **Downloading.** One coordinator task per blob owns the picker state:
//!   our bitfield, each peer's bitfield and in-flight requests. Per peer a
//!   session task owns one stream: it sends `INTEREST` and the requests the
//!   coordinator hands it (bounded queue, several in flight), reads
//!   `BITFIELD`/`HAVE`/`CHUNK`/`REJECT`, and writes each chunk into the store
//!   (verified there), reporting back. The swarm task only sees commands
//!   (providers, bans), never bytes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeswarm_protocol::{Bitfield, ChunkMap, Digest};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::frame::{self, FrameError, RejectReason};
use super::metrics::SwarmMetrics;
use super::pick::{pick, PeerView, PickParams};
use super::{ChunkStore, ChunkStoreError, ChunkWrite, Command, Protocols, SwarmConfig, SwarmError};

/// Inbound chunk streams served concurrently at most.
const MAX_INBOUND_STREAMS: usize = 256;
/// Frames queued between a server's reader and writer halves.
const SERVER_QUEUE: usize = 64;
/// Session events queued towards a download coordinator.
const EVENTS: usize = 512;
/// How long a declined chunk is not asked of the same peer again.
const DECLINE_BACKOFF: Duration = Duration::from_secs(2);
/// How long a failed peer is left alone by a download.
const PEER_BACKOFF: Duration = Duration::from_secs(5);

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Type-erased download entry point, so `SwarmClient` is not generic.
pub(crate) trait Fetch: Send + Sync {
    fn fetch(&self, blob: Digest, map: Option<ChunkMap>) -> BoxFut<Result<(), SwarmError>>;
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
    bucket: Option<TokenBucket>,
    seed_sparing: Option<Duration>,
    /// Blobs downloaded through the swarm in this process (not origin seeds).
    downloaded: Mutex<HashSet<Digest>>,
    /// Last upload time of chunks of origin-seeded blobs.
    recent_uploads: Mutex<HashMap<(Digest, u32), Instant>>,
    /// Running downloads, shared by concurrent callers.
    downloads: Mutex<HashMap<Digest, watch::Receiver<Option<Result<(), String>>>>>,
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
    pub(crate) fn start(
        config: &SwarmConfig,
        store: S,
        mut control: libp2p_stream::Control,
        protocols: Protocols,
        commands: mpsc::Sender<Command>,
        metrics: SwarmMetrics,
        shutdown: CancellationToken,
        local_peer: PeerId,
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
            bucket: config.max_upload_rate.map(TokenBucket::new),
            seed_sparing: config.seed_sparing,
            downloaded: Mutex::new(HashSet::new()),
            recent_uploads: Mutex::new(HashMap::new()),
            downloads: Mutex::new(HashMap::new()),
            corrupt_uploads: config.corrupt_uploads,
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

/// Requests parsed by a server's reader half.
enum Incoming {
    GetMap(Digest),
    Interest(Digest),
    Request(u32),
}

async fn serve_reader<R: AsyncRead + Unpin>(
    mut r: R,
    tx: mpsc::Sender<Incoming>,
) -> Result<(), FrameError> {
    loop {
        let h = match frame::read_header(&mut r).await {
            Ok(h) => h,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        if h.body_len > 64 {
            return Err(FrameError::violation(format!(
                "request frame of {} bytes",
                h.body_len
            )));
        }
        let body = frame::read_body(&mut r, &h).await?;
        let msg = match h.tag {
            frame::GET_MAP => Incoming::GetMap(frame::parse_digest(&body)?),
            frame::INTEREST => Incoming::Interest(frame::parse_digest(&body)?),
            frame::REQUEST => Incoming::Request(frame::parse_u32(&body)?),
            t => return Err(FrameError::violation(format!("unexpected frame tag {t}"))),
        };
        if tx.send(msg).await.is_err() {
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
        let mut bound: Option<Digest> = None;
        let mut sent: Option<Bitfield> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return Ok::<(), FrameError>(()) };
                    match msg {
                        Incoming::GetMap(blob) => match inner.store.chunk_map(&blob) {
                            Some(map) => frame::write_frame(&mut w, frame::MAP, &[&map.encode()]).await?,
                            None => frame::write_frame(&mut w, frame::NO_MAP, &[]).await?,
                        },
                        Incoming::Interest(blob) => {
                            if bound.is_some() {
                                return Err(FrameError::violation("second INTEREST on a stream"));
                            }
                            bound = Some(blob);
                            let bits = advertised(inner, &blob).unwrap_or_else(|| Bitfield::new(0));
                            frame::write_frame(&mut w, frame::BITFIELD, &[&bits.len().to_be_bytes(), bits.as_bytes()]).await?;
                            sent = Some(bits);
                        }
                        Incoming::Request(index) => {
                            let Some(blob) = bound else {
                                frame::write_frame(&mut w, frame::REJECT, &[&index.to_be_bytes(), &[RejectReason::Invalid as u8]]).await?;
                                continue;
                            };
                            serve_chunk(inner, peer, &mut w, blob, index).await?;
                        }
                    }
                    w.flush().await?;
                }
                _ = tick.tick() => {
                    if let Some(blob) = bound {
                        push_haves(inner, &mut w, &blob, &mut sent).await?;
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

/// What we advertise for `blob`: verified chunks (or everything, when
/// injecting the corrupt-uploads fault).
fn advertised<S: ChunkStore>(inner: &Inner<S>, blob: &Digest) -> Option<Bitfield> {
    let bits = inner.store.bitfield(blob)?;
    if inner.corrupt_uploads {
        return Some(Bitfield::full(bits.len()));
    }
    Some(bits)
}

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
            for batch in new.chunks(frame::MAX_HAVE_BATCH) {
                let body: Vec<u8> = batch.iter().flat_map(|i| i.to_be_bytes()).collect();
                frame::write_frame(w, frame::HAVE, &[&body]).await?;
            }
        }
        _ => {
            // First knowledge of the blob: send the whole bitfield.
            frame::write_frame(
                w,
                frame::BITFIELD,
                &[&now.len().to_be_bytes(), now.as_bytes()],
            )
            .await?;
        }
    }
    *sent = Some(now);
    Ok(())
}

async fn serve_chunk<S: ChunkStore, W: AsyncWrite + Unpin>(
    inner: &Inner<S>,
    peer: PeerId,
    w: &mut W,
    blob: Digest,
    index: u32,
) -> Result<(), FrameError> {
    let reject = |reason: RejectReason| {
        let idx = index.to_be_bytes();
        async move {
            let _ = reason;
            (idx, reason as u8)
        }
    };
    let Some(map) = inner.store.chunk_map(&blob) else {
        let (i, r) = reject(RejectReason::NotHeld).await;
        return frame::write_frame(w, frame::REJECT, &[&i, &[r]]).await;
    };
    let Ok(len) = map.chunk_len(index) else {
        let (i, r) = reject(RejectReason::Invalid).await;
        return frame::write_frame(w, frame::REJECT, &[&i, &[r]]).await;
    };
    let _slot = inner
        .upload_slots
        .acquire()
        .await
        .map_err(|_| FrameError::Io(std::io::ErrorKind::BrokenPipe.into()))?;
    let bytes = if inner.corrupt_uploads {
        Bytes::from(vec![0xA5u8; len as usize])
    } else {
        // Seed sparing: an origin seed uploads each chunk once per period.
        if let Some(period) = inner.seed_sparing {
            let origin = inner.store.is_complete(&blob) && !lock(&inner.downloaded).contains(&blob);
            if origin {
                let now = Instant::now();
                let recently = {
                    let mut recent = lock(&inner.recent_uploads);
                    if recent.len() > 1 << 20 {
                        recent.retain(|_, t| now.duration_since(*t) < period);
                    }
                    match recent.get(&(blob, index)) {
                        Some(t) if now.duration_since(*t) < period => true,
                        _ => {
                            recent.insert((blob, index), now);
                            false
                        }
                    }
                };
                if recently {
                    let (i, r) = reject(RejectReason::RecentlyUploaded).await;
                    return frame::write_frame(w, frame::REJECT, &[&i, &[r]]).await;
                }
            }
        }
        match inner.store.read_chunk(blob, index).await {
            Ok(b) => b,
            Err(e) => {
                debug!(%blob, index, error = %e, "cannot serve chunk");
                let (i, r) = reject(RejectReason::NotHeld).await;
                return frame::write_frame(w, frame::REJECT, &[&i, &[r]]).await;
            }
        }
    };
    if let Some(bucket) = &inner.bucket {
        bucket.take(bytes.len() as u64).await;
    }
    frame::write_frame(w, frame::CHUNK, &[&index.to_be_bytes(), &bytes]).await?;
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
    Rejected(PeerId, u32, RejectReason),
    Closed(PeerId, Option<String>, bool),
    Candidates(Vec<PeerId>),
}

struct PeerState {
    tx: mpsc::Sender<u32>,
    bits: Bitfield,
    inflight: HashMap<u32, Instant>,
    declined: HashMap<u32, Instant>,
    last_progress: Instant,
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
    let map = match (map, inner.store.chunk_map(&blob)) {
        (_, Some(m)) => m,
        (Some(m), None) => {
            inner.store.put_chunk_map(blob, &m).await?;
            Arc::new(m)
        }
        (None, None) => {
            let m = fetch_map(&inner, blob).await?;
            inner.store.put_chunk_map(blob, &m).await?;
            Arc::new(m)
        }
    };
    let _ = inner.commands.send(Command::Provide(blob)).await;
    let count = map.chunk_count();
    let mut have = inner
        .store
        .bitfield(&blob)
        .unwrap_or_else(|| Bitfield::new(count));
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENTS);
    let mut peers: HashMap<PeerId, PeerState> = HashMap::new();
    let mut backoff: HashMap<PeerId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let started = Instant::now();
    let mut last_discovery: Option<Instant> = None;
    let mut last_providers: Option<Instant> = None;
    let seed = {
        let b = inner.local_peer.to_bytes();
        let tail: [u8; 8] = b[b.len() - 8..].try_into().unwrap_or([0; 8]);
        u64::from_le_bytes(tail)
            ^ u64::from_le_bytes(blob.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    };
    let params = PickParams {
        per_peer: inner.requests_per_peer,
        window: inner.deadline_window,
        endgame_below: 8,
        seed,
    };
    let chunk_len = map.chunk_size().get() as u64;
    let stall_after =
        inner.stall_base + Duration::from_secs_f64(chunk_len as f64 / inner.stall_min_rate as f64);
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
                            if peer == inner.local_peer || peers.contains_key(&peer) || peers.len() >= inner.max_download_peers {
                                continue;
                            }
                            if backoff.get(&peer).is_some_and(|t| *t > Instant::now()) {
                                continue;
                            }
                            let (tx, rx) = mpsc::channel(inner.requests_per_peer * 2);
                            let cancel = session_cancel.child_token();
                            peers.insert(peer, PeerState {
                                tx,
                                bits: Bitfield::new(count),
                                inflight: HashMap::new(),
                                declined: HashMap::new(),
                                last_progress: Instant::now(),
                                cancel: cancel.clone(),
                            });
                            tokio::spawn(session(inner.clone(), peer, blob, map.clone(), rx, ev_tx.clone(), cancel));
                        }
                    }
                    Event::Bitfield(peer, bits) => {
                        if let Some(p) = peers.get_mut(&peer) {
                            if bits.len() == count {
                                p.bits = bits;
                            }
                        }
                    }
                    Event::Have(peer, list) => {
                        if let Some(p) = peers.get_mut(&peer) {
                            for i in list {
                                if i < count { p.bits.set(i); }
                            }
                        }
                    }
                    Event::Stored(peer, index, outcome) => {
                        if let Some(p) = peers.get_mut(&peer) {
                            p.inflight.remove(&index);
                            p.last_progress = Instant::now();
                        }
                        have.set(index);
                        if outcome == ChunkWrite::BlobComplete {
                            break;
                        }
                    }
                    Event::Corrupt(peer, index, reason) => {
                        warn!(%peer, %blob, index, %reason, "bad chunk; banning sender");
                        inner.metrics.bad_chunks.inc();
                        let _ = inner.commands.try_send(Command::Ban(peer, format!("bad chunk {index} of {blob}: {reason}")));
                        drop_peer(&mut peers, &mut backoff, peer, Duration::from_secs(3600));
                    }
                    Event::StoreFailed(peer, index, err) => {
                        if let Some(p) = peers.get_mut(&peer) { p.inflight.remove(&index); }
                        warn!(%blob, index, error = %err, "store failed to take a chunk");
                        if matches!(err, ChunkStoreError::BlobCorrupt(_)) {
                            return Err(SwarmError::Store(err));
                        }
                    }
                    Event::Rejected(peer, index, reason) => {
                        inner.metrics.rejected_requests.inc();
                        if let Some(p) = peers.get_mut(&peer) {
                            p.inflight.remove(&index);
                            p.last_progress = Instant::now();
                            p.declined.insert(index, Instant::now());
                            if reason == RejectReason::NotHeld {
                                p.bits.clear(index);
                            }
                        }
                    }
                    Event::Closed(peer, violation, unsupported) => {
                        if let Some(reason) = violation {
                            penalise(&inner, peer, &reason);
                        }
                        let wait = if unsupported { Duration::from_secs(60) } else { PEER_BACKOFF };
                        drop_peer(&mut peers, &mut backoff, peer, wait);
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                // Stalls: requests in flight, nothing delivered for too long.
                let stalled: Vec<PeerId> = peers.iter()
                    .filter(|(_, p)| !p.inflight.is_empty() && now.duration_since(p.last_progress) > stall_after)
                    .map(|(k, _)| *k).collect();
                for peer in stalled {
                    info!(%peer, %blob, "peer stalled; reassigning its requests");
                    inner.metrics.stalls.inc();
                    drop_peer(&mut peers, &mut backoff, peer, Duration::from_secs(30));
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
        if !have.is_complete() {
            schedule(&inner, &params, &have, &mut peers, &map, &blob);
        }
    }
    session_cancel.cancel();
    info!(%blob, "blob complete");
    Ok(())
}

fn drop_peer(
    peers: &mut HashMap<PeerId, PeerState>,
    backoff: &mut HashMap<PeerId, Instant>,
    peer: PeerId,
    wait: Duration,
) {
    if let Some(p) = peers.remove(&peer) {
        p.cancel.cancel();
    }
    backoff.insert(peer, Instant::now() + wait);
}

fn schedule<S: ChunkStore>(
    inner: &Inner<S>,
    params: &PickParams,
    have: &Bitfield,
    peers: &mut HashMap<PeerId, PeerState>,
    map: &ChunkMap,
    blob: &Digest,
) {
    let now = Instant::now();
    let mut outstanding: HashMap<u32, usize> = HashMap::new();
    for p in peers.values_mut() {
        p.inflight.retain(|i, _| !have.get(*i));
        p.declined
            .retain(|_, t| now.duration_since(*t) < DECLINE_BACKOFF);
        for i in p.inflight.keys() {
            *outstanding.entry(*i).or_default() += 1;
        }
    }
    let cursor_chunk = map.chunk_at(inner.store.cursor(blob)).unwrap_or(0);
    let picks = {
        let excl: Vec<Box<dyn Fn(u32) -> bool + '_>> = peers
            .values()
            .map(|p| {
                let f: Box<dyn Fn(u32) -> bool + '_> =
                    Box::new(move |i| p.inflight.contains_key(&i) || p.declined.contains_key(&i));
                f
            })
            .collect();
        let views: Vec<(PeerId, PeerView<'_>)> = peers
            .iter()
            .zip(excl.iter())
            .map(|((k, p), f)| {
                (
                    *k,
                    PeerView {
                        bits: &p.bits,
                        inflight: p.inflight.len(),
                        excluded: f.as_ref(),
                    },
                )
            })
            .collect();
        pick(params, have, &outstanding, cursor_chunk, &views)
    };
    for (peer, index) in picks {
        if let Some(p) = peers.get_mut(&peer) {
            if p.tx.try_send(index).is_ok() {
                if p.inflight.is_empty() {
                    p.last_progress = now;
                }
                p.inflight.insert(index, now);
            }
        }
    }
}

/// Asks candidate peers for the chunk map of `blob` until one answers.
async fn fetch_map<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
) -> Result<ChunkMap, SwarmError> {
    let mut tried: HashSet<PeerId> = HashSet::new();
    for round in 0..60u32 {
        let mut candidates = Vec::new();
        let (tx, rx) = oneshot::channel();
        if inner
            .commands
            .send(Command::ConnectedPeers(tx))
            .await
            .is_ok()
        {
            candidates.extend(rx.await.unwrap_or_default());
        }
        if round % 5 == 0 {
            let (tx, rx) = oneshot::channel();
            if inner
                .commands
                .send(Command::GetProviders(blob, tx))
                .await
                .is_ok()
            {
                if let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(10), rx).await {
                    candidates.extend(list);
                }
            }
        }
        for peer in candidates {
            if !tried.insert(peer) {
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(10), get_map(inner, peer, blob)).await {
                Ok(Ok(Some(map))) => return Ok(map),
                Ok(Ok(None)) => {}
                Ok(Err(e)) if e.is_violation() => penalise(inner, peer, &e.to_string()),
                _ => {}
            }
        }
        if round % 5 == 4 {
            tried.clear();
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return Err(SwarmError::Shutdown),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    Err(SwarmError::NoChunkMap(blob))
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
    frame::write_frame(&mut stream, frame::GET_MAP, &[blob.as_bytes()]).await?;
    stream.flush().await?;
    let h = frame::read_header(&mut stream).await?;
    match h.tag {
        frame::MAP => {
            let body = frame::read_body(&mut stream, &h).await?;
            let map = ChunkMap::decode(&body).map_err(|e| FrameError::violation(e.to_string()))?;
            Ok(Some(map))
        }
        frame::NO_MAP => Ok(None),
        t => Err(FrameError::violation(format!(
            "unexpected reply tag {t} to GET_MAP"
        ))),
    }
}

/// One download session with one peer for one blob.
async fn session<S: ChunkStore>(
    inner: Arc<Inner<S>>,
    peer: PeerId,
    blob: Digest,
    map: Arc<ChunkMap>,
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
    let res = tokio::select! {
        _ = cancel.cancelled() => return,
        r = session_writer(w, blob, requests) => r,
        r = session_reader(&inner, r, peer, blob, &map, &events) => r,
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
) -> Result<(), FrameError> {
    frame::write_frame(&mut w, frame::INTEREST, &[blob.as_bytes()]).await?;
    w.flush().await?;
    while let Some(index) = requests.recv().await {
        frame::write_frame(&mut w, frame::REQUEST, &[&index.to_be_bytes()]).await?;
        w.flush().await?;
    }
    Ok(())
}

async fn session_reader<S: ChunkStore, R: AsyncRead + Unpin>(
    inner: &Inner<S>,
    mut r: R,
    peer: PeerId,
    blob: Digest,
    map: &ChunkMap,
    events: &mpsc::Sender<Event>,
) -> Result<(), FrameError> {
    let count = map.chunk_count();
    loop {
        let h = frame::read_header(&mut r).await?;
        let ev = match h.tag {
            frame::BITFIELD => {
                let body = frame::read_body(&mut r, &h).await?;
                if body.len() < 4 {
                    return Err(FrameError::violation("short BITFIELD"));
                }
                let len = frame::parse_u32(&body[..4])?;
                if len == 0 {
                    continue; // the peer has not heard of the blob yet
                }
                if len != count {
                    return Err(FrameError::violation(format!(
                        "BITFIELD of {len} bits for {count} chunks"
                    )));
                }
                let bits = Bitfield::from_bytes(len, body[4..].to_vec())
                    .map_err(|e| FrameError::violation(e.to_string()))?;
                Event::Bitfield(peer, bits)
            }
            frame::HAVE => {
                let body = frame::read_body(&mut r, &h).await?;
                if body.len() % 4 != 0 || body.len() / 4 > frame::MAX_HAVE_BATCH {
                    return Err(FrameError::violation("malformed HAVE"));
                }
                let list: Vec<u32> = body
                    .chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                if list.iter().any(|i| *i >= count) {
                    return Err(FrameError::violation("HAVE index out of range"));
                }
                Event::Have(peer, list)
            }
            frame::REJECT => {
                let body = frame::read_body(&mut r, &h).await?;
                if body.len() != 5 {
                    return Err(FrameError::violation("malformed REJECT"));
                }
                let index = frame::parse_u32(&body[..4])?;
                let reason = RejectReason::from_u8(body[4])
                    .ok_or_else(|| FrameError::violation("unknown REJECT reason"))?;
                Event::Rejected(peer, index, reason)
            }
            frame::CHUNK => {
                if h.body_len < 4 {
                    return Err(FrameError::violation("short CHUNK"));
                }
                let mut idx = [0u8; 4];
                r.read_exact(&mut idx).await?;
                let index = u32::from_be_bytes(idx);
                let expected = map
                    .chunk_len(index)
                    .map_err(|e| FrameError::violation(e.to_string()))?;
                if h.body_len - 4 != expected {
                    return Err(FrameError::violation(format!(
                        "CHUNK {index} of {} bytes, expected {expected}",
                        h.body_len - 4
                    )));
                }
                let mut buf = vec![0u8; expected as usize];
                r.read_exact(&mut buf).await?;
                match inner.store.write_chunk(blob, index, Bytes::from(buf)).await {
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
                        let _ = events.send(Event::Corrupt(peer, index, reason)).await;
                        return Ok(());
                    }
                    Err(e) => Event::StoreFailed(peer, index, e),
                }
            }
            t => return Err(FrameError::violation(format!("unexpected frame tag {t}"))),
        };
        if events.send(ev).await.is_err() {
            return Ok(());
        }
    }
}
