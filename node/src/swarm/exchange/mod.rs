//! Chunk exchange over raw `libp2p-stream` streams, speaking the frames of
//! `protocol::wire` (see `frame`).
//!
//! - **Serving.** Every inbound stream gets a task (bounded by a semaphore).
//!   A reader half parses frames into a bounded queue; the writer half
//!   answers `Hello` with our `Hello` and a `Bitfield` per known blob, pushes
//!   `Have` for newly verified chunks every 200 ms, and answers requests in
//!   order: each chunk under an upload slot and the optional token bucket,
//!   read from the store (which re-verifies it). Partial blobs are served.
//!   Which request gets an upload, waits, or is refused (`Busy`, or
//!   `TryElsewhere` from an origin seed for a chunk it uploaded moments ago,
//!   so peers trade it among themselves) is the protocol crate's upload
//!   policy (`uploads`), the same state machine the simulator runs.
//! - **Downloading.** One coordinator task per blob owns a
//!   `protocol::picker::Picker` fed with our bitfield, each peer's
//!   bitfield/haves, arrivals and failures; it hands requests to per-peer
//!   session tasks. A session owns one stream: it sends `Hello` and
//!   pipelined `ChunkRequest`s (several in flight, ids tracked), reads
//!   `Bitfield`/`Have`/`ChunkResponse`, reads each payload straight into a
//!   chunk-sized buffer and writes it to the store (verified there),
//!   reporting back. The swarm task only sees commands (providers, bans),
//!   never bytes.
//! - **Relaying** (`relay`). A chunk whose answer has begun to arrive is
//!   advertised (`Relaying`) and served to requesters as it arrives, its
//!   last byte only once our copy verified (cut-through).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeswarm_protocol::{ChunkMap, Digest};
use libp2p::PeerId;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::metrics::SwarmMetrics;
use super::{ChunkStore, Command, Protocols, SwarmConfig, SwarmError};

mod counted;
mod download;
mod offers;
mod relay;
mod serve;
mod session;
mod uploads;

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
/// How long a failed peer is left alone by a download.
const PEER_BACKOFF: Duration = Duration::from_secs(5);

/// Completion of a running download, shared by concurrent callers.
type DownloadWatch = watch::Receiver<Option<Result<(), String>>>;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `stream`, counting its bytes into the exchange's metrics.
fn counted<S, T>(inner: &Inner<S>, stream: T) -> counted::Counted<T> {
    counted::Counted::new(
        stream,
        inner.metrics.stream_bytes_received.clone(),
        inner.metrics.stream_bytes_sent.clone(),
    )
}

/// Type-erased download entry point, so `SwarmClient` is not generic.
pub(crate) trait Fetch: Send + Sync {
    fn fetch(&self, blob: Digest, map: Option<ChunkMap>) -> BoxFut<Result<(), SwarmError>>;
    /// Asks `peers` for `blob`'s complete chunk map and stores it; true
    /// once the store knows every digest.
    fn fill_map(&self, blob: Digest, peers: Vec<PeerId>) -> BoxFut<Result<bool, SwarmError>>;
    /// Whether `peer` serves a chunk map of `blob` of `size` bytes and a
    /// random chunk matching it (storing nothing).
    fn probe_holder(&self, peer: PeerId, blob: Digest, size: u64) -> BoxFut<bool>;
}

/// The exchange of a peer without a store (the bootstrap peer).
pub(crate) struct NoStore;

impl Fetch for NoStore {
    fn fill_map(&self, _blob: Digest, _peers: Vec<PeerId>) -> BoxFut<Result<bool, SwarmError>> {
        Box::pin(async { Ok(false) })
    }

    fn probe_holder(&self, _peer: PeerId, _blob: Digest, _size: u64) -> BoxFut<bool> {
        Box::pin(async { false })
    }

    fn fetch(&self, _blob: Digest, _map: Option<ChunkMap>) -> BoxFut<Result<(), SwarmError>> {
        Box::pin(async {
            Err(SwarmError::Config(
                "this peer has no store (bootstrap mode)".into(),
            ))
        })
    }
}

/// The time's worth of bytes a paced upload writes per take. Each take
/// costs a timer wake-up and a write through yamux and noise: at 16 KiB
/// pieces (1.4 ms at 92 Mbit/s) pacing cost a node 0.2 CPU-s more than
/// unpaced uploads for a 50 MB image at N = 5 (0.80 against 0.60). At
/// 8 ms, and with the bucket no longer a lock held while sleeping, it
/// costs 0.77-0.79 against unpaced 0.71-0.77 and 16 ms pieces 0.77
/// (interleaved runs). A piece is still a fraction of the 20 ms burst, so
/// the link's queue stays short for the requests and `Have`s behind it.
const PACING_QUANTUM: Duration = Duration::from_millis(8);
/// Smallest paced piece (slow links: 16 KiB is 13 ms at 10 Mbit/s).
const MIN_PACING_PIECE: usize = 16 << 10;
/// Largest paced piece (fast links).
const MAX_PACING_PIECE: usize = 256 << 10;
const _: () = assert!(MAX_PACING_PIECE <= edgeswarm_protocol::wire::MAX_RELAY_PIECE as usize);

/// A token bucket for `--max-upload-rate`, kept as a virtual clock
/// (GCRA): each take books its bytes after the ones booked before it and
/// sleeps, without holding any lock, until its booking fits the burst.
struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// How far ahead of now bookings may run before a take sleeps: the
    /// burst's worth of time.
    tolerance: Duration,
    /// Bytes written per take (see [`TokenBucket::piece`]).
    piece: usize,
    /// When the bytes booked so far will have gone at the rate (the
    /// theoretical arrival time; in the past when the bucket is full).
    booked_until: Mutex<tokio::time::Instant>,
}

impl TokenBucket {
    fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        // A burst of 20 ms at the rate (at least 64 KiB): what a link's
        // queue absorbs without building a standing delay.
        let burst = (rate / 50.0).max(65_536.0);
        let piece = ((rate * PACING_QUANTUM.as_secs_f64()) as usize)
            .clamp(MIN_PACING_PIECE, MAX_PACING_PIECE);
        TokenBucket {
            rate,
            tolerance: Duration::from_secs_f64(burst / rate),
            piece,
            booked_until: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Bytes to write per take: [`PACING_QUANTUM`] at the rate.
    fn piece(&self) -> usize {
        self.piece
    }

    /// Takes `n` tokens, sleeping while they are not there yet. Takes are
    /// booked in the order they come, so concurrent uploaders share the
    /// rate; none holds a lock while it sleeps.
    async fn take(&self, n: u64) {
        let now = tokio::time::Instant::now();
        let ready_at = {
            let mut booked = self.booked_until.lock().unwrap_or_else(|e| e.into_inner());
            // An idle bucket holds at most the burst: bookings start from
            // now, never from the past. A booking that ran ahead keeps its
            // place, so the timer's oversleeping (up to 1 ms) does not
            // lower the rate: tokens earned meanwhile count for the next
            // take (dropping them halved the rate at 16 KiB pieces).
            let start = (*booked).max(now);
            *booked = start + Duration::from_secs_f64(n as f64 / self.rate);
            booked.checked_sub(self.tolerance).unwrap_or(now)
        };
        if ready_at > now {
            tokio::time::sleep_until(ready_at).await;
        }
    }
}

struct Inner<S> {
    store: S,
    control: libp2p_stream::Control,
    protocols: Protocols,
    commands: mpsc::Sender<Command>,
    /// Bans go here, never dropped (see `BanRequests`).
    bans: super::BanRequests,
    metrics: SwarmMetrics,
    shutdown: CancellationToken,
    local_peer: PeerId,
    /// The upload policy (slots, waiting requests, seed sparing): the
    /// protocol crate's `Uploader`, as in the simulator.
    uploads: uploads::Uploads,
    bucket: Option<TokenBucket>,
    /// Blobs downloaded through the swarm in this process (not origin seeds).
    downloaded: Mutex<HashSet<Digest>>,
    /// Super-seeding: which requester each chunk of an origin blob is
    /// offered to.
    offers: Mutex<offers::Offers>,
    /// Peers connected now (kept by the swarm task): sparing ends early
    /// for a chunk whose only recipient left.
    connected: Arc<Mutex<super::ConnectedPeers>>,
    /// Running downloads, shared by concurrent callers.
    downloads: Mutex<HashMap<Digest, DownloadWatch>>,
    /// Blobs whose last download failed while it needed their chunk map
    /// (its digests were refuted or set aside): the next download asks
    /// for one before it starts (see `download::download`).
    maps_wanted: Mutex<HashSet<Digest>>,
    /// Verified chunks arriving from peers, over every download: the
    /// rate endgame judges lateness by.
    arrivals: Mutex<ArrivalRate>,
    corrupt_uploads: bool,
    requests_per_peer: usize,
    /// Requests of one download outstanding at most, over all peers.
    max_requests: Option<usize>,
    max_download_peers: usize,
    /// Inbound chunk streams served at once at most.
    max_inbound_streams: usize,
    stall_base: Duration,
    stall_min_rate: u64,
    deadline_window: u32,
    /// Chunks being received, relayed on as they arrive (cut-through).
    relays: Arc<relay::Relays>,
    /// Whether this node relays chunks still arriving (`SwarmConfig::relay`).
    relay: bool,
}

/// Bytes per second at which verified chunks arrive from peers, over the
/// last [`ArrivalRate::WINDOW`].
#[derive(Default)]
struct ArrivalRate {
    /// Arrivals in the window, oldest first (at most `MAX_SAMPLES`).
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl ArrivalRate {
    /// How far back the rate looks: long enough to span several chunks on
    /// a 10 Mbit/s link, short enough to follow a new release.
    const WINDOW: Duration = Duration::from_secs(3);
    /// Arrivals remembered at most (3 s of 512 KiB chunks at 10 Gbit/s).
    const MAX_SAMPLES: usize = 8192;

    fn add(&mut self, now: Instant, bytes: u64) {
        self.expire(now);
        if self.samples.len() == Self::MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, bytes));
    }

    fn expire(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The rate over the window, once arrivals span a second of it.
    fn rate(&mut self, now: Instant) -> Option<u64> {
        self.expire(now);
        let (first, _) = *self.samples.front()?;
        let span = now.duration_since(first);
        if span < Duration::from_secs(1) {
            return None;
        }
        // The first arrival opens the span; the bytes after it fill it.
        let bytes: u64 = self.samples.iter().skip(1).map(|(_, b)| b).sum();
        Some((bytes as f64 / span.as_secs_f64()) as u64)
    }
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
        bans: super::BanRequests,
        metrics: SwarmMetrics,
        shutdown: CancellationToken,
        local_peer: PeerId,
        connected: Arc<Mutex<super::ConnectedPeers>>,
    ) -> Result<Self, SwarmError> {
        let incoming = control
            .accept(protocols.chunks.clone())
            .map_err(|e| SwarmError::Config(e.to_string()))?;
        let inner = Arc::new(Inner {
            store,
            control,
            protocols,
            commands,
            bans,
            metrics,
            shutdown,
            local_peer,
            uploads: uploads::Uploads::new(config.upload_policy()),
            bucket: config.max_upload_rate.map(TokenBucket::new),
            downloaded: Mutex::new(HashSet::new()),
            offers: Mutex::new(offers::Offers::default()),
            connected,
            downloads: Mutex::new(HashMap::new()),
            maps_wanted: Mutex::new(HashSet::new()),
            arrivals: Mutex::new(ArrivalRate::default()),
            corrupt_uploads: config.corrupt_uploads(),
            requests_per_peer: config.requests_per_peer.max(1),
            max_requests: config.max_requests,
            max_download_peers: config.max_download_peers.max(1),
            max_inbound_streams: config.max_inbound_streams.max(1),
            stall_base: config.stall_base,
            stall_min_rate: config.stall_min_rate.max(1),
            deadline_window: config.deadline_window,
            relays: relay::Relays::new(),
            relay: config.relay,
        });
        tokio::spawn(serve::accept_loop(inner.clone(), incoming));
        if let Some(events) = inner.store.subscribe_events() {
            tokio::spawn(ban_refuted(inner.clone(), events));
        }
        Ok(Exchange { inner })
    }
}

/// Bans the sources of chunk digests the store proved false, whichever
/// path proved them (the gateway's signed digests arriving by gossip,
/// this node's own registry pull, a whole-blob check): a peer that served
/// a chunk map contradicting authoritative digests lied.
async fn ban_refuted<S: ChunkStore>(
    inner: Arc<Inner<S>>,
    mut events: tokio::sync::broadcast::Receiver<crate::store::StoreEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let ev = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            ev = events.recv() => ev,
        };
        match ev {
            Ok(crate::store::StoreEvent::DigestsRefuted {
                blob,
                sources,
                reason,
            }) => {
                for peer in sources {
                    warn!(%peer, %blob, %reason, "false chunk digests; banning their source");
                    inner
                        .bans
                        .ban(peer, format!("false chunk digests of {blob}: {reason}"));
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                // The refuting paths that know their caller ban directly too
                // (digest gossip, downloads); only the rest can be missed.
                warn!(
                    missed = n,
                    "store events missed; a refuted digest source may go unbanned"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

impl<S: ChunkStore> Fetch for Exchange<S> {
    fn fill_map(&self, blob: Digest, peers: Vec<PeerId>) -> BoxFut<Result<bool, SwarmError>> {
        let inner = self.inner.clone();
        Box::pin(async move { download::fill_map(&inner, blob, peers).await })
    }

    fn probe_holder(&self, peer: PeerId, blob: Digest, size: u64) -> BoxFut<bool> {
        let inner = self.inner.clone();
        Box::pin(async move { download::probe_holder(&inner, peer, blob, size).await })
    }

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
                            let res = download::download(inner2.clone(), blob, map).await;
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

fn penalise<S>(inner: &Inner<S>, peer: PeerId, reason: &str) {
    warn!(%peer, %reason, "peer broke the chunk protocol");
    inner.metrics.protocol_violations.inc();
    inner
        .bans
        .ban(peer, format!("protocol violation: {reason}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Virtual seconds `bucket` takes to let `total` bytes through in
    /// `piece`-sized takes (time is paused: tokio advances it to each
    /// timer, rounded up to its 1 ms resolution, as a real timer
    /// oversleeps).
    async fn seconds_to_pass(bucket: &TokenBucket, total: u64, piece: u64) -> f64 {
        let start = tokio::time::Instant::now();
        let mut left = total;
        while left > 0 {
            let n = piece.min(left);
            bucket.take(n).await;
            left -= n;
        }
        start.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn paced_pieces_keep_the_configured_rate_despite_timer_rounding() {
        // 11.5 MB/s in 16 KiB pieces: each piece is worth 1.42 ms, which
        // the timer rounds up. 23 MB must still take ~2 s, not ~3 s.
        let bucket = TokenBucket::new(11_500_000);
        let secs = seconds_to_pass(&bucket, 23_000_000, 16 << 10).await;
        assert!((1.95..2.05).contains(&secs), "took {secs:.3} s");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_uploaders_share_the_rate_in_pieces_of_the_quantum() {
        // 11.5 MB/s: pieces of 8 ms are 92 KB. Three uploaders of 11.5 MB
        // each take 3 s together (less the 20 ms burst), not 1 s each
        // side by side.
        let bucket = Arc::new(TokenBucket::new(11_500_000));
        assert_eq!(bucket.piece(), 92_000);
        let start = tokio::time::Instant::now();
        let uploads: Vec<_> = (0..3)
            .map(|_| {
                let bucket = bucket.clone();
                tokio::spawn(async move {
                    let piece = bucket.piece() as u64;
                    seconds_to_pass(&bucket, 11_500_000, piece).await
                })
            })
            .collect();
        for upload in uploads {
            let secs = upload.await.unwrap();
            assert!(secs > 2.9, "an uploader finished after {secs:.3} s");
        }
        let total = start.elapsed().as_secs_f64();
        assert!((2.95..3.02).contains(&total), "took {total:.3} s");
        // Slow and fast links keep their pieces within bounds.
        assert_eq!(TokenBucket::new(125_000).piece(), MIN_PACING_PIECE);
        assert_eq!(TokenBucket::new(1 << 30).piece(), MAX_PACING_PIECE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_lets_only_a_short_burst_through_at_once() {
        // 1 MB/s: the bucket holds 64 KiB (more than 20 ms' worth), so a
        // whole 1 MiB chunk after a long idle spell still waits ~0.98 s
        // instead of going out at once into the link's queue.
        let bucket = TokenBucket::new(1_000_000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let secs = seconds_to_pass(&bucket, 1 << 20, 16 << 10).await;
        let expected = ((1u64 << 20) - 65_536) as f64 / 1e6;
        assert!((secs - expected).abs() < 0.01, "took {secs:.3} s");
    }
}

#[cfg(test)]
mod arrival_tests {
    use super::*;

    #[test]
    fn arrival_rate_spans_its_window_and_forgets_old_arrivals() {
        let t0 = Instant::now();
        let mut r = ArrivalRate::default();
        r.add(t0, 1_000);
        assert_eq!(
            r.rate(t0 + Duration::from_millis(500)),
            None,
            "under a second"
        );
        r.add(t0 + Duration::from_secs(1), 1_000_000);
        r.add(t0 + Duration::from_secs(2), 1_000_000);
        assert_eq!(r.rate(t0 + Duration::from_secs(2)), Some(1_000_000));
        // Ten seconds later the window holds nothing.
        assert_eq!(r.rate(t0 + Duration::from_secs(12)), None);
    }
}
