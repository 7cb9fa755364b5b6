//! The downloading side: one coordinator task per blob owns a
//! [`Picker`] fed with our bitfield, each peer's bitfield and `Have`s,
//! arrivals and failures, and hands requests to per-peer sessions
//! ([`super::session`]). Chunk maps of blobs not yet declared here are
//! asked of connected peers and providers first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeswarm_protocol::chunkmap::MAX_CHUNK_MAP_BYTES;
use edgeswarm_protocol::picker::{FailReason, Picker, PickerConfig, Request};
use edgeswarm_protocol::wire::{self, ChunkMapRequest, ChunkStatus, Hello, StreamMessage};
use edgeswarm_protocol::{Bitfield, ChunkMap, Digest};
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::super::frame::{self, FrameError};
use super::super::{ChunkStore, ChunkStoreError, ChunkWrite, Command, SwarmError};
use super::session::{session, Ending, SessionCommand, Target};
use super::{lock, penalise, Inner, EVENTS, MAP_REASK, PEER_BACKOFF};

/// Reports from sessions to their download coordinator.
pub(super) enum Event {
    Bitfield(PeerId, Bitfield),
    Have(PeerId, Vec<u32>),
    /// The answer to our request for this chunk began to arrive: endgame
    /// leaves it alone while it runs (`PickerConfig::endgame_begun_chunk_times`).
    Began(PeerId, u32),
    /// A chunk's bytes are in hand and going to the store (which verifies
    /// them): the peer's pipeline has room for the next request.
    Arrived(PeerId, u32),
    Stored(PeerId, u32, ChunkWrite),
    Corrupt(PeerId, u32, String),
    StoreFailed(PeerId, u32, ChunkStoreError),
    Rejected(PeerId, u32, FailReason),
    /// A relay answer ended without the chunk (not a fault: the relay's
    /// source failed; but see [`MAX_RELAY_ABORTS`]).
    RelayAborted(PeerId, u32),
    Closed(PeerId, Ending),
    Candidates(Vec<PeerId>),
}

/// A download's view of one peer session.
struct Session {
    /// Requests and cancellations for the session to send.
    tx: mpsc::Sender<SessionCommand>,
    /// Ends the session.
    cancel: CancellationToken,
}

/// How a download round ended.
enum Round {
    /// The blob is complete and verified.
    Complete,
    /// Peers' provisional digests were proven false and dropped with the
    /// chunks that rested on them (their sources are banned): the digests
    /// must be learned again.
    Refuted,
    /// A peer's provisional digests were contradicted by the chunks of
    /// several other peers and set aside (see [`DISPUTES_TO_DROP`]): the
    /// digests must be learned again, from someone else.
    Disputed,
}

/// Rounds of refuted or disputed digests one download goes through at
/// most: each bans a liar or sets its map aside, so this only bounds a
/// Sybil crowd.
const MAX_REFUTED_ROUNDS: u32 = 16;

/// Distinct peers whose chunks must contradict a peer's provisional
/// digests before its map is set aside. One is not enough: a single liar
/// sending false chunks could otherwise get an honest map dropped; and a
/// map's source that serves no chunks of its own would otherwise stall
/// the download until authoritative digests came (if ever: a peer-only
/// blob has none).
const DISPUTES_TO_DROP: usize = 2;

/// Peers' maps a download remembers at most (taken or set aside).
const MAX_MAPS: usize = 16;
/// Disputed chunks a download remembers at most, to judge their senders
/// once the blob verifies.
const MAX_DISPUTED_CHUNKS: usize = 256;

/// What a download learned of peers' chunk maps, across its rounds.
#[derive(Default)]
struct Provenance {
    /// The map each peer served that the store took (provisionally).
    taken: HashMap<PeerId, ChunkMap>,
    /// Maps set aside as disputed: once the blob verifies, a peer whose
    /// map contradicts it is proven a liar and banned.
    suspects: Vec<(PeerId, ChunkMap)>,
    /// Peers whose maps are not asked for again in this download (while
    /// their set-aside stands, see [`Provenance::reinstate`]).
    avoid: HashSet<PeerId>,
    /// Each set-aside map's source, with the word it was set aside on.
    set_aside: HashMap<PeerId, Aside>,
    /// Per map source, the peers whose chunks no longer count against
    /// its map: they disputed it once, and the map they offered instead
    /// could not be completed (see [`Provenance::take_back`]).
    discounted: HashMap<PeerId, HashSet<PeerId>>,
    /// Peers this download proved liars (and banned): senders of corrupt
    /// chunks or of chunks contradicting their own map, sources of digests
    /// the whole-blob check refuted.
    proven: HashSet<PeerId>,
    /// Chunks refused for contradicting a provisional digest: their
    /// sender, index and digest. Once the blob verifies, a sender whose
    /// chunk contradicts it is proven a liar and banned.
    disputed_chunks: Vec<(PeerId, u32, Digest)>,
}

/// The word a map was set aside on.
struct Aside {
    /// The peers whose chunks contradicted it.
    disputers: HashSet<PeerId>,
    /// How many of them must stay unproven for the set-aside to stand.
    needed: usize,
}

impl Provenance {
    fn disputed_chunk(&mut self, peer: PeerId, index: u32, actual: Digest) {
        if self.disputed_chunks.len() < MAX_DISPUTED_CHUNKS {
            self.disputed_chunks.push((peer, index, actual));
        }
    }

    fn suspect(&mut self, peer: PeerId, map: ChunkMap) {
        if self.suspects.len() < MAX_MAPS && !self.suspects.iter().any(|(p, _)| *p == peer) {
            self.suspects.push((peer, map));
        }
    }

    /// Sets `source`'s map aside on the word of `disputers`: not asked
    /// for again while the dispute stands.
    fn set_aside(&mut self, source: PeerId, disputers: HashSet<PeerId>, needed: usize) {
        if let Some(m) = self.taken.remove(&source) {
            self.suspect(source, m);
        }
        self.avoid.insert(source);
        if self.set_aside.len() < MAX_MAPS {
            self.set_aside.insert(source, Aside { disputers, needed });
        }
    }

    /// Whether `peer`'s chunks no longer count against `source`'s map.
    fn discounted(&self, source: &PeerId, peer: &PeerId) -> bool {
        self.discounted
            .get(source)
            .is_some_and(|d| d.contains(peer))
    }

    /// When the map in use (from `current`) cannot be completed, the map
    /// set aside last (not `current`'s, not a proven liar's): its source
    /// is no longer avoided, and the peers whose chunks disputed it no
    /// longer count against it. Two agreeing liars could otherwise set
    /// the only honest holder's map aside for good: their own map, whose
    /// last chunk nobody can serve, never reaches the whole-blob check
    /// that would prove them liars, and the honest holder alone cannot
    /// dispute it ([`DISPUTES_TO_DROP`]). With the honest map back, their
    /// chunks are refused against it, the blob verifies, and the verified
    /// blob convicts them. Nothing is taken on trust: chunks still verify
    /// against the map in use, and the whole blob against its digest.
    fn take_back(&mut self, current: &PeerId) -> Option<(PeerId, ChunkMap)> {
        self.take_back_where(|source, _| source != current)
    }

    /// When no peer has served a map for [`TAKE_BACK_OUTVOTED_AFTER`]:
    /// the map set aside last on the word of disputing chunks alone (not
    /// one that no holder could complete, nor a proven liar's), taken
    /// back as [`Provenance::take_back`] does. Two liars that serve
    /// false chunks but no map of their own outvote the only honest map
    /// ([`DISPUTES_TO_DROP`]) and are never proven liars by a map: the
    /// download waited `MAP_WAIT` (60 s) for a map nobody else had, failed,
    /// and its retry did the same. With the honest map back, their chunks
    /// are refused against it without counting, the blob verifies from
    /// the honest peer, and the verified blob convicts them.
    fn take_back_outvoted(&mut self) -> Option<(PeerId, ChunkMap)> {
        self.take_back_where(|_, aside| aside.needed >= DISPUTES_TO_DROP)
    }

    /// The map set aside last whose source and word pass `pick` (never a
    /// proven liar's): no longer avoided, its disputers discounted.
    fn take_back_where(
        &mut self,
        pick: impl Fn(&PeerId, &Aside) -> bool,
    ) -> Option<(PeerId, ChunkMap)> {
        let at = self.suspects.iter().rposition(|(p, _)| {
            !self.proven.contains(p) && self.set_aside.get(p).is_some_and(|a| pick(p, a))
        })?;
        let (source, map) = self.suspects.remove(at);
        if let Some(aside) = self.set_aside.remove(&source) {
            let discounted = self.discounted.entry(source).or_default();
            discounted.extend(aside.disputers);
        }
        self.avoid.remove(&source);
        Some((source, map))
    }

    /// Takes back the maps set aside on the word of peers since proven
    /// liars: with fewer than the needed number of its disputers left
    /// standing ([`DISPUTES_TO_DROP`] for a map set aside as disputed),
    /// the dispute does not stand either, and the map's source may be
    /// asked again. Without this, two agreeing liars whose chunks
    /// disputed the only honest holder's map had it avoided for the whole
    /// download: once the whole-blob check had banned them both, nobody
    /// else was asked for a map, and the download waited for one until
    /// `MAP_WAIT` (60 s) ran out (measured: not complete after 50 s; 11 s
    /// with this).
    fn reinstate(&mut self) -> Vec<PeerId> {
        let proven = &self.proven;
        let mut back = Vec::new();
        self.set_aside.retain(|source, aside| {
            let standing = aside
                .disputers
                .iter()
                .filter(|p| !proven.contains(p))
                .count();
            let stands = standing >= aside.needed || proven.contains(source);
            if !stands {
                back.push(*source);
            }
            stands
        });
        for source in &back {
            self.avoid.remove(source);
            self.suspects.retain(|(p, _)| p != source);
        }
        back
    }

    /// Counts as proven the peers named in set-aside maps (their sources
    /// and disputers) whose ban was asked for since the download began
    /// elsewhere: by the digest gossip handler when the gateway's signed
    /// digests refuted their map, or by the daemon.
    fn learn_bans(&mut self, banned: &(dyn Fn(&PeerId) -> bool + Sync)) {
        let named = self
            .set_aside
            .iter()
            .flat_map(|(source, aside)| std::iter::once(source).chain(&aside.disputers));
        let learned: Vec<PeerId> = named
            .filter(|p| !self.proven.contains(p) && banned(p))
            .copied()
            .collect();
        self.proven.extend(learned);
    }

    /// Takes in what changed since the last look (bans asked for
    /// elsewhere, maps to take back) and brings `asked` up to date with
    /// it: the sources of maps taken back are due for an ask, avoided and
    /// proven peers never are.
    fn refresh(
        &mut self,
        banned: &(dyn Fn(&PeerId) -> bool + Sync),
        blob: Digest,
        asked: &mut HashMap<PeerId, Instant>,
    ) {
        self.learn_bans(banned);
        for peer in self.reinstate() {
            info!(%peer, %blob, "the peers that disputed its chunk map were proven liars; asking it again");
            asked.remove(&peer);
        }
        for peer in self.avoid.iter().chain(&self.proven) {
            // Never due for another ask in this download.
            asked.insert(*peer, Instant::now() + Duration::from_secs(24 * 3600));
        }
    }

    /// Bans the peers whose set-aside maps contradict the verified blob.
    fn convict<S: ChunkStore>(self, inner: &Inner<S>, blob: Digest) {
        let Some(real) = inner.store.chunk_map(&blob) else {
            return;
        };
        for (peer, map) in self.suspects {
            if map != *real {
                warn!(%peer, %blob, "its chunk map contradicts the verified blob; banning it");
                inner.bans.ban(
                    peer,
                    format!("chunk map of {blob} contradicts the verified blob"),
                );
            }
        }
        for (peer, index, actual) in self.disputed_chunks {
            if real.digest(index).is_ok_and(|d| d != actual) {
                warn!(%peer, %blob, index, "its chunk contradicts the verified blob; banning it");
                inner.bans.ban(
                    peer,
                    format!("chunk {index} of {blob} contradicts the verified blob"),
                );
            }
        }
    }
}

pub(super) async fn download<S: ChunkStore>(
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
    // A download that failed needing a map left the blob declared with a
    // gap in its digests (those refuted or set aside were dropped): the
    // retry asks for a map first. It used to start at once, requested
    // nothing past the gap, and waited for digests nobody would send (a
    // daemon retries a failed fetch, and that retry never ended).
    let mut need_map = lock(&inner.maps_wanted).remove(&blob);
    let res = rounds(&inner, blob, &mut need_map).await;
    if need_map
        && res
            .as_ref()
            .is_err_and(|e| !matches!(e, SwarmError::Shutdown))
    {
        let mut wanted = lock(&inner.maps_wanted);
        if wanted.len() < MAX_MAPS_WANTED {
            wanted.insert(blob);
        }
    }
    res
}

/// Blobs remembered at most as needing a chunk map on their next
/// download (one per failed download of a blob whose map was disputed:
/// a handful at a time, at most one per layer being fetched).
const MAX_MAPS_WANTED: usize = 1024;

async fn rounds<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
    need_map: &mut bool,
) -> Result<(), SwarmError> {
    let mut provenance = Provenance::default();
    let started = Instant::now();
    let banned = |p: &PeerId| inner.bans.since(p, started);
    for _ in 0..=MAX_REFUTED_ROUNDS {
        match download_round(inner, blob, *need_map, &mut provenance, &banned).await? {
            Round::Complete => {
                provenance.convict(inner, blob);
                return Ok(());
            }
            Round::Refuted | Round::Disputed => *need_map = true,
        }
    }
    Err(SwarmError::NoChunkMap(blob))
}

/// Whether the store knows enough of `blob`'s layout to download: its
/// layout, or (`need_map`: after digests were refuted) every digest.
fn map_ready<S: ChunkStore>(inner: &Inner<S>, blob: &Digest, need_map: bool) -> bool {
    match inner.store.layout(blob) {
        Some(l) => !need_map || l.digests_known == l.chunk_count() || inner.store.is_complete(blob),
        None => false,
    }
}

async fn download_round<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
    need_map: bool,
    provenance: &mut Provenance,
    banned: &(dyn Fn(&PeerId) -> bool + Sync),
) -> Result<Round, SwarmError> {
    let inner = inner.clone();
    // A map is a member's claim. Its digests stay provisional (chunks
    // verified against them are held back) until authoritative ones or
    // the whole-blob check confirm them. One that contradicts the blob's
    // pinned size or authoritative digests gets its sender banned, and
    // the next peer is asked.
    let mut asked = HashMap::new();
    while !map_ready(&inner, &blob, need_map) {
        let wait = MapWait {
            asked: &mut asked,
            provenance: &mut *provenance,
            banned,
        };
        let Some((peer, m)) = fetch_map(&inner, blob, wait, need_map).await? else {
            break;
        };
        match inner.store.put_peer_chunk_map(blob, &m, peer).await {
            Ok(()) => {
                if provenance.taken.len() < MAX_MAPS {
                    provenance.taken.insert(peer, m);
                }
            }
            Err(ChunkStoreError::FalseLayout(reason)) => penalise(&inner, peer, &reason),
            Err(ChunkStoreError::Disputed(d)) => {
                let reason = d.reason;
                info!(%peer, %blob, %reason, "chunk map disputed; asking on");
                provenance.suspect(peer, m);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Per provisional source, the peers whose chunks contradicted it.
    let mut disputes: HashMap<PeerId, HashSet<PeerId>> = HashMap::new();
    // Per chunk, the peers whose copy was refused against a provisional
    // digest: once every known holder of a chunk is among them, the map
    // in use cannot be completed.
    let mut refused: HashMap<u32, HashSet<PeerId>> = HashMap::new();
    // Subscribed before the layout is read, so no digest learned after
    // that read goes unseen.
    let mut store_events = inner.store.subscribe_events();
    let layout = inner
        .store
        .layout(&blob)
        .ok_or(SwarmError::NoChunkMap(blob))?;
    let _ = inner.commands.send(Command::Provide(blob)).await;
    let count = layout.chunk_count();
    let have = inner
        .store
        .stored(&blob)
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
        endgame_threshold: ENDGAME_THRESHOLD,
        max_requests_per_chunk: ENDGAME_REQUESTS_PER_CHUNK,
        endgame_min_age_ms: ENDGAME_MIN_AGE.as_millis() as u64,
        seed,
        timeout_base_ms: inner.stall_base.as_millis() as u64,
        timeout_ms_per_mib: (1_000u64 << 20) / inner.stall_min_rate,
        ..PickerConfig::default()
    });
    picker.set_total_limit(inner.max_requests);
    picker
        .add_blob(blob, layout.size, layout.chunk_size, have)
        .map_err(|e| SwarmError::Config(e.to_string()))?;
    if let Some(known) = inner.store.known_digests(&blob) {
        let _ = picker.set_known_digests(&blob, &known);
    }

    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENTS);
    let mut sessions: HashMap<PeerId, Session> = HashMap::new();
    let mut backoff: HashMap<PeerId, Instant> = HashMap::new();
    // Relay answers each peer aborted; at MAX_RELAY_ABORTS its relaying
    // is no longer taken in this download.
    let mut relay_aborts: HashMap<PeerId, u32> = HashMap::new();
    // Streams each peer dropped unread in a row, and the peers to open a
    // session to again once their short backoff passes (see
    // `Ending::Dropped`).
    let mut drops: HashMap<PeerId, u32> = HashMap::new();
    let mut reopen: Vec<PeerId> = Vec::new();
    let mut tick = tokio::time::interval(COORDINATOR_TICK);
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut last_discovery: Option<Instant> = None;
    let mut last_providers: Option<Instant> = None;
    let session_cancel = inner.shutdown.child_token();
    let _guard = session_cancel.clone().drop_guard();

    while !inner.store.is_complete(&blob) {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return Err(SwarmError::Shutdown),
            () = digests_learned(&mut store_events, blob) => {
                if let Some(known) = inner.store.known_digests(&blob) {
                    let _ = picker.set_known_digests(&blob, &known);
                }
            }
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
                            let relaying = relay_aborts.get(&peer).is_none_or(|n| *n < MAX_RELAY_ABORTS);
                            let target = Target { peer, blob, layout, accept_relaying: relaying };
                            tokio::spawn(session(inner.clone(), target, rx, ev_tx.clone(), cancel));
                        }
                    }
                    Event::Closed(peer, Ending::Dropped) => {
                        // Tried again soon (doubling per drop in a row), not
                        // after PEER_BACKOFF: at 5 s, a node whose streams
                        // were dropped as a release began took the layer
                        // from one peer of four (T(5) 6.2 s against 5.1).
                        let n = drops.entry(peer).or_insert(0);
                        *n += 1;
                        let wait = (DROPPED_RETRY * (1 << (*n - 1).min(5))).min(PEER_BACKOFF);
                        drop_peer(&mut picker, &mut sessions, &mut backoff, peer, wait);
                        reopen.push(peer);
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
                    Event::Began(peer, index) => {
                        picker.answer_began(&blob, index, &peer, now_ms());
                    }
                    Event::Arrived(peer, index) => {
                        let _ = picker.chunk_arrived(&blob, index, &peer);
                        picker.peer_progressed(&peer, now_ms());
                    }
                    Event::Stored(peer, index, outcome) => {
                        // Endgame duplicates still outstanding elsewhere
                        // are cancelled (an answer already under way is
                        // read and dropped).
                        if let Ok(others) = picker.chunk_received(&blob, index, Some(&peer)) {
                            cancel_requests(&sessions, others);
                        }
                        picker.peer_progressed(&peer, now_ms());
                        drops.remove(&peer);
                        let len = layout.chunk_len(index).unwrap_or(0) as u64;
                        lock(&inner.arrivals).add(Instant::now(), len);
                        picker.set_observed_rate(download_rate(&inner));
                        if outcome == ChunkWrite::BlobComplete {
                            break;
                        }
                    }
                    Event::Corrupt(peer, index, reason) => {
                        warn!(%peer, %blob, index, %reason, "bad chunk; banning sender");
                        inner.metrics.bad_chunks.inc();
                        inner.bans.ban(peer, format!("bad chunk {index} of {blob}: {reason}"));
                        provenance.proven.insert(peer);
                        picker.request_failed(&peer, &blob, index, FailReason::Error, now_ms());
                        drop_peer(&mut picker, &mut sessions, &mut backoff, peer, Duration::from_secs(3600));
                    }
                    Event::StoreFailed(peer, index, err) => {
                        picker.request_failed(&peer, &blob, index, FailReason::Error, now_ms());
                        match err {
                            ChunkStoreError::BlobCorrupt(_) => return Err(SwarmError::Store(err)),
                            ChunkStoreError::DigestsRefuted { sources, reason } => {
                                for source in sources {
                                    warn!(peer = %source, %blob, %reason, "false chunk digests; banning their source");
                                    inner.bans.ban(source, format!("false chunk digests of {blob}: {reason}"));
                                    provenance.proven.insert(source);
                                }
                                return Ok(Round::Refuted);
                            }
                            // The sender or a map's source lies; the
                            // whole-blob check or authoritative digests
                            // will tell which.
                            ChunkStoreError::Disputed(d) => {
                                let super::super::Dispute { map_from, actual, reason } = *d;
                                info!(%peer, %blob, index, %reason, "chunk disputed");
                                // Refused for not matching its digest.
                                inner.metrics.bad_chunks.inc();
                                if map_from == Some(peer) {
                                    // It contradicts its own map: a liar
                                    // either way, dropped as a sender of a
                                    // corrupt chunk is. Its map stays
                                    // provisional: the whole-blob check or
                                    // other peers' chunks judge it.
                                    warn!(%peer, %blob, index, "chunk contradicts its sender's own chunk map; banning it");
                                    inner.bans.ban(peer, format!("chunk {index} of {blob} contradicts its own chunk map"));
                                    provenance.proven.insert(peer);
                                    provenance.avoid.insert(peer);
                                    drop_peer(&mut picker, &mut sessions, &mut backoff, peer, Duration::from_secs(3600));
                                }
                                if let Some(actual) = actual {
                                    provenance.disputed_chunk(peer, index, actual);
                                }
                                if let Some(source) = map_from.filter(|s| *s != peer) {
                                    // A peer whose chunks disputed this map
                                    // before, and whose own alternative could
                                    // not be completed, is not heard again.
                                    if !provenance.discounted(&source, &peer) {
                                        let senders = disputes.entry(source).or_default();
                                        senders.insert(peer);
                                        if senders.len() >= DISPUTES_TO_DROP {
                                            warn!(%source, %blob, "other peers' chunks contradict its chunk map; setting the map aside");
                                            inner.metrics.maps_set_aside.inc();
                                            inner.store.drop_peer_digests(blob, source).await?;
                                            let disputers = disputes.remove(&source).unwrap_or_default();
                                            provenance.set_aside(source, disputers, DISPUTES_TO_DROP);
                                            return Ok(Round::Disputed);
                                        }
                                    }
                                    // Its copy still counts against the map
                                    // being completable: a map taken back
                                    // with every holder's copy refused was
                                    // asked for chunks over and over.
                                    let refusers = refused.entry(index).or_default();
                                    refusers.insert(peer);
                                    let holders = picker.availability(&blob, index);
                                    let live = refusers.iter().filter(|p| sessions.contains_key(p)).count() as u32;
                                    // Every holder of this chunk has a copy
                                    // the map in use refuses: the download
                                    // can make no progress with it.
                                    if holders > 0 && live >= holders {
                                        let refusers = refused.remove(&index).unwrap_or_default();
                                        let back = provenance.take_back(&source);
                                        stuck(&inner, blob, index, source, back, refusers, provenance).await?;
                                        return Ok(Round::Disputed);
                                    }
                                }
                            }
                            err => warn!(%blob, index, error = %err, "store failed to take a chunk"),
                        }
                    }
                    Event::Rejected(peer, index, why) => {
                        inner.metrics.rejected_requests.inc();
                        picker.request_failed(&peer, &blob, index, why, now_ms());
                    }
                    Event::RelayAborted(peer, index) => {
                        // Elsewhere if another peer holds the chunk.
                        picker.request_failed(&peer, &blob, index, FailReason::Error, now_ms());
                        let n = relay_aborts.entry(peer).or_default();
                        *n += 1;
                        if *n == MAX_RELAY_ABORTS {
                            // Its advertised relays are forgotten with the
                            // session; the next one takes verified chunks
                            // only.
                            info!(%peer, %blob, "relays keep aborting; taking only verified chunks from this peer");
                            drop_peer(&mut picker, &mut sessions, &mut backoff, peer, PEER_BACKOFF);
                        }
                    }
                    Event::Closed(peer, ending) => {
                        let wait = match ending {
                            Ending::Violation(reason) => {
                                penalise(&inner, peer, &reason);
                                PEER_BACKOFF
                            }
                            Ending::Unsupported => Duration::from_secs(60),
                            Ending::Dropped | Ending::Ended => PEER_BACKOFF,
                        };
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
                            if let Ok(others) = picker.chunk_received(&blob, index, None) {
                                cancel_requests(&sessions, others);
                            }
                        }
                    }
                }
                // Chunks the store dropped since they landed (their
                // provisional digest was refuted, or they rotted) are
                // fetched again.
                if let (Some(stored), Some(known)) = (inner.store.stored(&blob), picker.local_bitfield(&blob).cloned()) {
                    if stored.len() == known.len() {
                        for index in known.iter_ones().filter(|i| !stored.get(*i)) {
                            let _ = picker.chunk_lost(&blob, index);
                        }
                    }
                }
                picker.set_observed_rate(download_rate(&inner));
                if let Some(c) = layout.chunk_at(inner.store.cursor(&blob)) {
                    let _ = picker.set_cursor(&blob, c);
                }
                // Digests arrive while a gateway streams the blob in; the
                // store's event (`digests_learned`) says so at once, this
                // catches any the event missed.
                if let Some(known) = inner.store.known_digests(&blob) {
                    let _ = picker.set_known_digests(&blob, &known);
                }
                // Peers whose streams were dropped unread are tried again
                // as their backoff passes, without waiting for discovery.
                let due: Vec<PeerId> = reopen.iter().copied().filter(|p| backoff.get(p).is_none_or(|t| *t <= now)).collect();
                if !due.is_empty() {
                    reopen.retain(|p| !due.contains(p));
                    let _ = ev_tx.try_send(Event::Candidates(due));
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
                    if inner.commands.try_send(Command::UnconnectedProviders(blob, tx)).is_ok() {
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
                .is_some_and(|s| s.tx.try_send(SessionCommand::Request(req.index)).is_ok());
            if !sent {
                picker.request_failed(&req.peer, &blob, req.index, FailReason::Busy, now_ms());
            }
        }
    }
    session_cancel.cancel();
    info!(%blob, "blob complete");
    Ok(Round::Complete)
}

/// Resolves once digests of `blob` are newly known in the store, or
/// store events were missed (look again); pends forever without events.
///
/// While a gateway streams a layer in, the chunk it offers a requester
/// can be requested only once its digest is known there. Learned only at
/// the coordinator's tick ([`COORDINATOR_TICK`]), a chunk offered to a
/// requester could wait up to 250 ms more before it was asked for. (On
/// its own this changed no T(10) measurably on the testnet: 5.61-5.82 s
/// before, 5.62-5.81 s after, 3 interleaved pairs.)
async fn digests_learned(
    events: &mut Option<tokio::sync::broadcast::Receiver<crate::store::StoreEvent>>,
    blob: Digest,
) {
    use crate::store::StoreEvent;
    use tokio::sync::broadcast::error::RecvError;
    let Some(rx) = events.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(StoreEvent::DigestsLearned { blob: b }) if b == blob => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => {
                *events = None;
                return std::future::pending().await;
            }
        }
    }
}

/// Sets aside the map in use (from `source`), which no holder of chunk
/// `index` can serve a matching copy of (`refusers`: their copies were
/// refused against it), and puts back `back`, the map it displaced, if
/// any. Without one, the next round asks for a map again, and `source`
/// is not asked: a single liar whose map was taken first, against a
/// single honest holder, kept the download on its map for good (one
/// peer's chunks are not enough to dispute a map, [`DISPUTES_TO_DROP`]).
async fn stuck<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
    index: u32,
    source: PeerId,
    back: Option<(PeerId, ChunkMap)>,
    refusers: HashSet<PeerId>,
    provenance: &mut Provenance,
) -> Result<(), SwarmError> {
    inner.metrics.maps_set_aside.inc();
    inner.store.drop_peer_digests(blob, source).await?;
    // Stands while one of the refusing holders is not proven a liar.
    provenance.set_aside(source, refusers, 1);
    let Some((back, map)) = back else {
        warn!(%source, %blob, index, "no holder's chunk matches its chunk map; setting the map aside and asking for another");
        return Ok(());
    };
    warn!(%source, %blob, index, %back, "no holder's chunk matches its chunk map; setting the map aside and taking back the one it displaced");
    match inner.store.put_peer_chunk_map(blob, &map, back).await {
        Ok(()) => {
            if provenance.taken.len() < MAX_MAPS {
                provenance.taken.insert(back, map);
            }
        }
        Err(ChunkStoreError::FalseLayout(reason)) => {
            penalise(inner, back, &reason);
            provenance.proven.insert(back);
        }
        // Another provisional map disagrees with it: the next round asks
        // for a map again, and `back` is no longer avoided.
        Err(ChunkStoreError::Disputed(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Tells each peer of `requests` that its answer is no longer wanted.
fn cancel_requests(sessions: &HashMap<PeerId, Session>, requests: Vec<Request<PeerId>>) {
    for r in requests {
        if let Some(s) = sessions.get(&r.peer) {
            // A full queue means the session is busy writing requests;
            // the answer is then read and dropped instead.
            let _ = s.tx.try_send(SessionCommand::Cancel(r.index));
        }
    }
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

/// The rate one download's chunks arrive at: the node's arrival rate
/// shared by its running downloads (they share its link).
fn download_rate<S>(inner: &Inner<S>) -> Option<u64> {
    let running = lock(&inner.downloads).len().max(1) as u64;
    lock(&inner.arrivals)
        .rate(Instant::now())
        .map(|r| r / running)
}

/// Relay answers of one peer that may abort in a download before its
/// relaying is ignored: an honest relay aborts only when its own source
/// fails or stalls; a liar could otherwise keep a requester fetching
/// chunks that never complete.
const MAX_RELAY_ABORTS: u32 = 4;

/// Endgame begins when a blob has at most this many chunks missing.
const ENDGAME_THRESHOLD: u32 = 8;
/// Requests for one chunk at once in endgame.
const ENDGAME_REQUESTS_PER_CHUNK: usize = 2;
/// An in-flight chunk is duplicated in endgame only once its request is
/// this old. At 0, every node of a 5-node locality received 2-7 chunks
/// twice (5-10 % of a 46 MB layer) even with `Cancel`: the duplicates were
/// of requests merely queued behind others at a holder whose uplink was
/// busy. A holder answers a request in order within about
/// `requests_per_peer` chunk times (4 x 84 ms for 1 MiB at 100 Mbit/s);
/// one that takes longer than this is slow, and worth a second source.
const ENDGAME_MIN_AGE: Duration = Duration::from_millis(750);
/// The first wait before a peer that dropped a session's stream unread is
/// tried again; it doubles per drop in a row, up to `PEER_BACKOFF`.
const DROPPED_RETRY: Duration = Duration::from_millis(100);
/// The coordinator's clock: stall checks, cursor and digest updates,
/// discovery.
const COORDINATOR_TICK: Duration = Duration::from_millis(250);

/// How often a download waiting for a chunk map checks whether the store
/// learned the layout by other means (the gateway's resolution or digest
/// gossip declares it): a cheap lookup; peers are re-asked only after
/// `MAP_REASK`. At 250 ms this wait was a visible share of a node's start.
const MAP_POLL: Duration = Duration::from_millis(50);
/// How often DHT providers are looked up while waiting for a chunk map.
const MAP_PROVIDERS_EVERY: Duration = Duration::from_millis(1250);
/// How long a provider lookup's answer is awaited (while the layout is
/// still polled).
const PROVIDERS_WAIT: Duration = Duration::from_secs(2);
/// How long a download waits for a chunk map at most.
const MAP_WAIT: Duration = Duration::from_secs(60);
/// How long a download waits for a map from another peer before it takes
/// back a map that disputing chunks outvoted
/// ([`Provenance::take_back_outvoted`]): the connected peers asked twice
/// or more ([`MAP_REASK`]) and a DHT provider lookup answered
/// ([`PROVIDERS_WAIT`] after it was sent, [`MAP_PROVIDERS_EVERY`] apart).
const TAKE_BACK_OUTVOTED_AFTER: Duration = Duration::from_secs(4);

/// What a wait for a chunk map keeps across its asks.
struct MapWait<'a> {
    /// When each peer was last asked (see [`fetch_map`]).
    asked: &'a mut HashMap<PeerId, Instant>,
    provenance: &'a mut Provenance,
    /// Whether a peer's ban was asked for since the download began.
    banned: &'a (dyn Fn(&PeerId) -> bool + Sync),
}

/// Asks candidate peers for the chunk map of `blob` until one answers, or
/// until the store learns the blob's layout some other way (`None`).
///
/// `asked` holds when each peer was last asked. A peer that lacked the map
/// is asked again after MAP_REASK, not after a fixed number of rounds: a
/// fresh release's manifest reaches the gateway a few hundred ms after the
/// release reached everyone, and every node's first ask comes too early.
async fn fetch_map<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
    wait: MapWait<'_>,
    need_map: bool,
) -> Result<Option<(PeerId, ChunkMap)>, SwarmError> {
    let MapWait {
        asked,
        provenance,
        banned,
    } = wait;
    let mut last_providers: Option<Instant> = None;
    // A DHT lookup answers in up to seconds; meanwhile the layout is still
    // polled every MAP_POLL (waiting on the lookup in line delayed a small
    // layer's start by 2 s whose layout had come by gossip long before).
    let mut lookup: Option<(oneshot::Receiver<Vec<PeerId>>, Instant)> = None;
    let started = Instant::now();
    while started.elapsed() < MAP_WAIT {
        // The layout may arrive meanwhile by other means (gateway gossip).
        if map_ready(inner, &blob, need_map) {
            return Ok(None);
        }
        // Peers banned meanwhile (by the digest gossip handler, say) may
        // be all that kept a set-aside map from being asked for again.
        provenance.refresh(banned, blob, asked);
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
        if let Some(map) = ask_for_map(inner, blob, candidates, asked).await {
            return Ok(Some(map));
        }
        if started.elapsed() >= TAKE_BACK_OUTVOTED_AFTER {
            if let Some((source, map)) = provenance.take_back_outvoted() {
                info!(%source, %blob, "no peer serves another chunk map; taking back the one its disputers outvoted");
                return Ok(Some((source, map)));
            }
        }
        if let Some((mut rx, since)) = lookup.take() {
            match rx.try_recv() {
                Ok(list) => {
                    if let Some(map) = ask_for_map(inner, blob, list, asked).await {
                        return Ok(Some(map));
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) if since.elapsed() < PROVIDERS_WAIT => {
                    lookup = Some((rx, since));
                }
                Err(_) => {}
            }
        }
        if lookup.is_none() && last_providers.is_none_or(|t| t.elapsed() >= MAP_PROVIDERS_EVERY) {
            last_providers = Some(Instant::now());
            let (tx, rx) = oneshot::channel();
            if inner
                .commands
                .send(Command::UnconnectedProviders(blob, tx))
                .await
                .is_ok()
            {
                lookup = Some((rx, Instant::now()));
            }
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return Err(SwarmError::Shutdown),
            _ = tokio::time::sleep(MAP_POLL) => {}
        }
    }
    Err(SwarmError::NoChunkMap(blob))
}

/// Asks each candidate not asked within [`MAP_REASK`] for `blob`'s chunk
/// map; the first map a peer serves wins. Peers that answer with protocol
/// violations are penalised.
/// Fills the digests of a declared blob whose digests have a gap (chunk
/// digest updates missed while this node was down or had not yet elected
/// the release's gateway): asks `peers` (holders of the complete blob) for
/// its chunk map, once each, and stores it. True once every digest is
/// known.
pub(super) async fn fill_map<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
    peers: Vec<PeerId>,
) -> Result<bool, SwarmError> {
    if map_ready(inner, &blob, true) {
        return Ok(true);
    }
    let mut asked = HashMap::new();
    while let Some((peer, map)) = ask_for_map(inner, blob, peers.clone(), &mut asked).await {
        // Provisional: the gap's chunks are held back until the whole
        // blob (or the gateway's digests) confirm them.
        match inner.store.put_peer_chunk_map(blob, &map, peer).await {
            Ok(()) => return Ok(map_ready(inner, &blob, true)),
            // Contradicts the gateway's signed digests or the pinned size.
            Err(ChunkStoreError::FalseLayout(reason)) => penalise(inner, peer, &reason),
            Err(ChunkStoreError::Disputed(d)) => {
                let reason = d.reason;
                info!(%peer, %blob, %reason, "chunk map disputed; asking on");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// Whether `peer` backs a claim that it holds `blob` (of `size` bytes)
/// complete: it serves a chunk map of that size and, on the same stream,
/// one chunk picked at random that matches the map. Nothing is stored. A
/// map of another size or a chunk that contradicts the peer's own map is
/// a lie: the peer is penalised.
pub(super) async fn probe_holder<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    peer: PeerId,
    blob: Digest,
    size: u64,
) -> bool {
    match probe(inner, peer, blob, size).await {
        Ok(holds) => holds,
        Err(e) => {
            if e.is_violation() {
                penalise(inner, peer, &e.to_string());
            }
            false
        }
    }
}

async fn probe<S: ChunkStore>(
    inner: &Inner<S>,
    peer: PeerId,
    blob: Digest,
    size: u64,
) -> Result<bool, FrameError> {
    let (mut stream, map) = map_on_stream(inner, peer, blob).await?;
    let Some(map) = map else { return Ok(false) };
    if map.blob_size() != size {
        return Err(FrameError::violation(format!(
            "claims {blob} complete with a map of {} bytes; its descriptor says {size}",
            map.blob_size()
        )));
    }
    if map.chunk_count() == 0 {
        return Ok(true);
    }
    let index = rand::random::<u32>() % map.chunk_count();
    let expected = map
        .digest(index)
        .map_err(|e| FrameError::violation(e.to_string()))?;
    let range = map
        .chunk_range(index)
        .map_err(|e| FrameError::violation(e.to_string()))?;
    let req = StreamMessage::ChunkRequest(wire::ChunkRequest {
        request_id: 2,
        blob,
        index,
    });
    frame::write_message(&mut stream, &req, &[]).await?;
    stream.flush().await?;
    loop {
        match frame::read_message(&mut stream).await? {
            StreamMessage::Hello(_) | StreamMessage::Bitfield(_) | StreamMessage::Have(_) => {}
            StreamMessage::ChunkResponse(resp) if resp.request_id == 2 => {
                let ChunkStatus::Ok { len } = resp.status else {
                    // Not held, or busy: the claim is not backed now.
                    return Ok(false);
                };
                if len != range.end - range.start {
                    return Err(FrameError::violation(format!(
                        "chunk {index} of {blob} is {len} bytes; its map says {}",
                        range.end - range.start
                    )));
                }
                let mut body = vec![0u8; len as usize];
                stream.read_exact(&mut body).await?;
                let got = tokio::task::spawn_blocking(move || Digest::of(&body))
                    .await
                    .map_err(|e| FrameError::Io(std::io::Error::other(e.to_string())))?;
                if got != expected {
                    return Err(FrameError::violation(format!(
                        "chunk {index} of {blob} contradicts the map it served"
                    )));
                }
                return Ok(true);
            }
            other => {
                return Err(FrameError::violation(format!(
                    "unexpected message kind {} while awaiting a chunk",
                    other.kind()
                )))
            }
        }
    }
}

async fn ask_for_map<S: ChunkStore>(
    inner: &Arc<Inner<S>>,
    blob: Digest,
    candidates: Vec<PeerId>,
    asked: &mut HashMap<PeerId, Instant>,
) -> Option<(PeerId, ChunkMap)> {
    for peer in candidates {
        if asked.get(&peer).is_some_and(|t| t.elapsed() < MAP_REASK) {
            continue;
        }
        let asked_at = Instant::now();
        asked.insert(peer, asked_at);
        let answer =
            tokio::time::timeout(Duration::from_secs(10), get_map(inner, peer, blob)).await;
        let ms = asked_at.elapsed().as_millis() as u64;
        match answer {
            Ok(Ok(Some(map))) => {
                debug!(%peer, %blob, ms, "chunk map served");
                return Some((peer, map));
            }
            Ok(Ok(None)) => debug!(%peer, %blob, ms, "chunk map not held by the peer"),
            Ok(Err(e)) if e.is_violation() => penalise(inner, peer, &e.to_string()),
            Ok(Err(e)) => {
                debug!(%peer, %blob, ms, error = %e, "chunk map ask failed");
                // The stream failed before an answer, mostly dropped unread
                // by a peer swamped with a release's first streams (the
                // sessions' case, `DROPPED_RETRY`; rare since libp2p-stream
                // queues a burst: third_party/libp2p-stream/PATCHES.md,
                // where 103 drops in 1.2 s became 0): asked again after that
                // pause rather than `MAP_REASK`. In a 10-node run every
                // node had the release's manifest 1.15 s after accepting
                // it (0.1-0.3 s in the runs beside it), together, as if
                // every ask of the gateway had failed once or twice.
                let asked_at = Instant::now()
                    .checked_sub(MAP_REASK.saturating_sub(DROPPED_RETRY))
                    .unwrap_or_else(Instant::now);
                asked.insert(peer, asked_at);
            }
            Err(_) => debug!(%peer, %blob, ms, "chunk map ask timed out"),
        }
    }
    None
}

async fn get_map<S: ChunkStore>(
    inner: &Inner<S>,
    peer: PeerId,
    blob: Digest,
) -> Result<Option<ChunkMap>, FrameError> {
    Ok(map_on_stream(inner, peer, blob).await?.1)
}

/// Opens a chunk stream to `peer`, asks for `blob`'s chunk map and reads
/// the answer: the stream (for further requests) and the map, `None` if
/// the peer has none. The `Hello` says version 1: no relays on this stream.
async fn map_on_stream<S: ChunkStore>(
    inner: &Inner<S>,
    peer: PeerId,
    blob: Digest,
) -> Result<(super::counted::Counted<libp2p::Stream>, Option<ChunkMap>), FrameError> {
    let mut control = inner.control.clone();
    let stream = control
        .open_stream(peer, inner.protocols.chunks.clone())
        .await
        .map_err(|e| FrameError::Io(std::io::Error::other(e.to_string())))?;
    let mut stream = super::counted(inner, stream);
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
                let ChunkStatus::Ok { len } = resp.status else {
                    return Ok((stream, None));
                };
                if len > MAX_CHUNK_MAP_BYTES as u64 {
                    return Err(FrameError::violation("oversize chunk map"));
                }
                let mut body = vec![0u8; len as usize];
                stream.read_exact(&mut body).await?;
                let map =
                    ChunkMap::decode(&body).map_err(|e| FrameError::violation(e.to_string()))?;
                return Ok((stream, Some(map)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use edgeswarm_protocol::ChunkSize;

    fn map(seed: u8) -> ChunkMap {
        ChunkMap::from_bytes(&[seed; 3 << 16], ChunkSize::MIN)
    }

    #[test]
    fn after_a_map_wait_only_a_map_outvoted_by_disputing_chunks_is_taken_back() {
        let mut p = Provenance::default();
        let [honest, liar1, liar2, stuck_source, holder] = [(); 5].map(|()| PeerId::random());
        p.taken.insert(honest, map(1));
        p.set_aside(honest, HashSet::from([liar1, liar2]), DISPUTES_TO_DROP);
        // Set aside last, as one that no holder could complete.
        p.taken.insert(stuck_source, map(2));
        p.set_aside(stuck_source, HashSet::from([holder]), 1);

        let (back, m) = p.take_back_outvoted().expect("the outvoted map");
        assert_eq!((back, m), (honest, map(1)));
        assert!(!p.avoid.contains(&honest));
        assert!(p.discounted(&honest, &liar1) && p.discounted(&honest, &liar2));
        // The map that could not be completed stays aside, and the one
        // taken back is not taken back twice.
        assert!(p.avoid.contains(&stuck_source));
        assert!(p.take_back_outvoted().is_none());
    }

    #[test]
    fn a_proven_liars_outvoted_map_is_not_taken_back() {
        let mut p = Provenance::default();
        let [liar, honest1, honest2] = [(); 3].map(|()| PeerId::random());
        p.taken.insert(liar, map(3));
        p.set_aside(liar, HashSet::from([honest1, honest2]), DISPUTES_TO_DROP);
        p.proven.insert(liar);
        assert!(p.take_back_outvoted().is_none());
        assert!(p.avoid.contains(&liar));
    }
}
