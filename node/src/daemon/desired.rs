//! The locality's desired state as this node knows it: per image (the
//! reference exactly as deployed), the newest signed release or removal,
//! ordered by the publisher's sequence number ([`Order`]: `(seq, created,
//! signer)`), never by arrival or by the receiver's clock.
//!
//! Every signed release and removal a node accepts goes through
//! [`Desired::offer`] first: one that is not newer than what the node holds
//! for its image is refused with a reason (a replayed or older message), so
//! a replay of a removed release never reinstalls it and a replayed removal
//! never removes a redeploy.
//!
//! The state is kept in `<data-dir>/desired.json` (written crash-safely,
//! [`crate::fsutil::write_atomic`]) and read back at start, so a node
//! restarted mid-transfer or mid-import resumes its releases without a new
//! deploy. Its [`digest`](Desired::digest) travels in status gossip; nodes
//! whose digests differ re-publish their entries (anti-entropy, `status`).
//!
//! Images removed on this node only (`rm` without `--locality`, the
//! rollback window) stay in the desired state (the locality still wants
//! them elsewhere) but are marked *dismissed* at the entry's order: they
//! are not reinstalled here after a restart, until a newer release comes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use edgeswarm_protocol::release::{Order, SignedRelease, SignedRemoval};
use edgeswarm_protocol::wire::{DesiredDigest, GossipMessage};
use edgeswarm_protocol::Digest;
use serde::{Deserialize, Serialize};

/// Most images a desired state holds: new images beyond it are refused.
pub(super) const MAX_DESIRED_IMAGES: usize = 256;

/// The newest signed message about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// Deploy this release.
    Release(SignedRelease),
    /// The image is removed from the locality.
    Removal(SignedRemoval),
}

impl Entry {
    /// The image it is about.
    pub(super) fn image(&self) -> &str {
        match self {
            Entry::Release(r) => &r.body_unverified().image,
            Entry::Removal(r) => &r.body_unverified().image,
        }
    }

    /// Where it stands among messages about its image.
    pub(super) fn order(&self) -> Order {
        match self {
            Entry::Release(r) => r.order(),
            Entry::Removal(r) => r.order(),
        }
    }

    /// `release` or `removal`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Entry::Release(_) => "release",
            Entry::Removal(_) => "removal",
        }
    }

    /// The entry as the gossip message that carries it.
    pub(super) fn to_gossip(&self) -> GossipMessage {
        match self {
            Entry::Release(r) => GossipMessage::Release(r.clone()),
            Entry::Removal(r) => GossipMessage::Removal(r.clone()),
        }
    }

    /// The entry from a gossip message, if it carries one.
    pub(super) fn from_gossip(message: GossipMessage) -> Option<Entry> {
        match message {
            GossipMessage::Release(r) => Some(Entry::Release(r)),
            GossipMessage::Removal(r) => Some(Entry::Removal(r)),
            _ => None,
        }
    }
}

/// What [`Desired::offer`] made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Offer {
    /// Newer than anything held for its image: it is the desired state now
    /// (the entry it replaced, if any, is returned).
    Newer(Option<Box<Entry>>),
    /// Exactly the entry held already (a re-publication): nothing to do.
    Same,
    /// Refused, with the reason shown in status.
    Refused(String),
}

/// A desired-state entry as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredView {
    /// The image.
    pub image: String,
    /// `release` or `removal`.
    pub kind: String,
    /// The publisher's sequence number.
    pub seq: u64,
    /// The signer's public key (hex).
    pub signer: String,
    /// Whether it was dismissed on this node (removed here only).
    pub dismissed: bool,
}

/// What [`Desired`] guards.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct State {
    /// The newest entry per image.
    entries: BTreeMap<String, Entry>,
    /// Images removed on this node only, at the order of the release then
    /// desired: not reinstalled here until a newer release.
    dismissed: BTreeMap<String, Order>,
}

/// The desired state, behind one lock (never held across an await).
pub(super) struct Desired {
    /// Where it is persisted.
    path: PathBuf,
    /// The state.
    state: Mutex<State>,
}

/// `desired.json`.
#[derive(Serialize, Deserialize)]
struct StateFile {
    /// Format version, 1.
    version: u32,
    /// Each entry as the hex of its gossip message (kind 0 or 5), so it is
    /// verified again when read back.
    entries: Vec<String>,
    /// Dismissed images with the order they were dismissed at.
    #[serde(default)]
    dismissed: Vec<(String, u64, u64, String)>,
}

impl State {
    fn offer(&mut self, entry: Entry) -> Offer {
        let image = entry.image().to_owned();
        let order = entry.order();
        match self.entries.get(&image) {
            Some(held) if *held == entry => Offer::Same,
            Some(held) if held.order() >= order => {
                let held_order = held.order();
                let what = if held_order == order {
                    "conflicts with"
                } else {
                    "is older than"
                };
                Offer::Refused(format!(
                    "{} of {image} (seq {}) {what} the {} (seq {}) this node holds for it; \
                     refused as a replay",
                    entry.kind(),
                    order.seq,
                    held.kind(),
                    held_order.seq,
                ))
            }
            None if self.entries.len() >= MAX_DESIRED_IMAGES => Offer::Refused(format!(
                "the desired state holds {MAX_DESIRED_IMAGES} images already; {image} refused"
            )),
            _ => Offer::Newer(self.entries.insert(image, entry).map(Box::new)),
        }
    }

    fn digest(&self) -> DesiredDigest {
        let mut bytes = Vec::new();
        for (image, entry) in &self.entries {
            let order = entry.order();
            bytes.extend_from_slice(&(image.len() as u64).to_be_bytes());
            bytes.extend_from_slice(image.as_bytes());
            bytes.push(matches!(entry, Entry::Removal(_)) as u8);
            bytes.extend_from_slice(&order.signer);
            bytes.extend_from_slice(&order.seq.to_be_bytes());
            bytes.extend_from_slice(&order.created.to_be_bytes());
        }
        DesiredDigest {
            count: self.entries.len() as u64,
            hash: Digest::of(&bytes),
        }
    }

    fn to_file(&self) -> StateFile {
        StateFile {
            version: 1,
            entries: self
                .entries
                .values()
                .map(|e| hex::encode(e.to_gossip().encode()))
                .collect(),
            dismissed: self
                .dismissed
                .iter()
                .map(|(image, o)| (image.clone(), o.seq, o.created, hex::encode(o.signer)))
                .collect(),
        }
    }
}

impl Desired {
    /// An empty desired state persisted at `path`.
    pub(super) fn new(path: PathBuf) -> Desired {
        Desired {
            path,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `entry` the desired state of its image when it is newer than
    /// what is held (see [`Offer`]). The caller verified its signature.
    pub(super) fn offer(&self, entry: Entry) -> Offer {
        self.lock().offer(entry)
    }

    /// The entry held for `image`.
    pub(super) fn get(&self, image: &str) -> Option<Entry> {
        self.lock().entries.get(image).cloned()
    }

    /// Every entry, by image.
    pub(super) fn entries(&self) -> Vec<Entry> {
        self.lock().entries.values().cloned().collect()
    }

    /// The digest gossiped in status reports.
    pub(super) fn digest(&self) -> DesiredDigest {
        self.lock().digest()
    }

    /// A sequence number above every one held: what a publisher signing
    /// through this node uses next.
    pub(super) fn next_seq(&self) -> u64 {
        let state = self.lock();
        let max = state
            .entries
            .values()
            .map(|e| e.order().seq)
            .chain(state.dismissed.values().map(|o| o.seq))
            .max()
            .unwrap_or(0);
        max + 1
    }

    /// Marks `image` removed on this node only: the release desired for it
    /// now is not reinstalled here ([`Desired::dismissed`]).
    pub(super) fn dismiss(&self, image: &str) {
        let mut state = self.lock();
        if let Some(Entry::Release(r)) = state.entries.get(image) {
            let order = r.order();
            state.dismissed.insert(image.to_owned(), order);
        }
    }

    /// Whether `release` was removed on this node only (dismissed at its
    /// order or later).
    pub(super) fn dismissed(&self, release: &SignedRelease) -> bool {
        let image = &release.body_unverified().image;
        self.lock()
            .dismissed
            .get(image)
            .is_some_and(|o| *o >= release.order())
    }

    /// The entries as the API shows them.
    pub(super) fn views(&self) -> Vec<DesiredView> {
        let state = self.lock();
        state
            .entries
            .iter()
            .map(|(image, e)| {
                let order = e.order();
                DesiredView {
                    image: image.clone(),
                    kind: e.kind().into(),
                    seq: order.seq,
                    signer: hex::encode(order.signer),
                    dismissed: state.dismissed.get(image).is_some_and(|o| *o >= order),
                }
            })
            .collect()
    }

    /// Writes the state to its file, crash-safely, on a blocking thread.
    pub(super) async fn save(&self) -> std::io::Result<()> {
        let file = self.lock().to_file();
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&path, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Reads the persisted entries (not yet verified: the caller offers
    /// each through its checks) and restores the dismissed marks.
    pub(super) async fn load(&self) -> Vec<Entry> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Ok(Err(e)) => {
                tracing::warn!(path = %self.path.display(), error = %e, "desired state unreadable; starting empty");
                return Vec::new();
            }
            Err(e) => {
                tracing::warn!(error = %e, "desired state not read");
                return Vec::new();
            }
        };
        parse_file(&self.path, &bytes, &mut self.lock().dismissed)
    }
}

/// Parses `desired.json`: its entries, and its dismissed marks into
/// `dismissed`. Entries that do not decode are skipped and logged.
fn parse_file(path: &Path, bytes: &[u8], dismissed: &mut BTreeMap<String, Order>) -> Vec<Entry> {
    let file: StateFile = match serde_json::from_slice(bytes) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "desired state unreadable; starting empty");
            return Vec::new();
        }
    };
    for (image, seq, created, signer) in file.dismissed {
        let Ok(Ok(signer)) = hex::decode(&signer).map(<[u8; 32]>::try_from) else {
            continue;
        };
        dismissed.insert(
            image,
            Order {
                seq,
                created,
                signer,
            },
        );
    }
    file.entries
        .iter()
        .filter_map(|text| {
            let decoded = hex::decode(text)
                .map_err(|e| e.to_string())
                .and_then(|b| GossipMessage::decode(&b).map_err(|e| e.to_string()));
            match decoded.map(Entry::from_gossip) {
                Ok(Some(entry)) => Some(entry),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "desired entry skipped");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use edgeswarm_protocol::release::{Platform, Release, Removal};
    use edgeswarm_protocol::signing::PublisherKey;

    use super::*;

    fn key(n: u8) -> PublisherKey {
        PublisherKey::from_secret_bytes([n; 32])
    }

    fn release(image: &str, seq: u64, created: u64, signer: &PublisherKey) -> Entry {
        Entry::Release(SignedRelease::sign(
            Release {
                image: image.into(),
                manifest: Digest::of(format!("{image}{seq}").as_bytes()),
                platform: Platform::new("linux", "amd64"),
                created,
                locality: "l".into(),
                selector: vec![],
                seq,
            },
            signer,
        ))
    }

    fn removal(image: &str, seq: u64, created: u64, signer: &PublisherKey) -> Entry {
        Entry::Removal(SignedRemoval::sign(
            Removal {
                image: image.into(),
                locality: "l".into(),
                created,
                seq,
            },
            signer,
        ))
    }

    #[test]
    fn the_sequence_orders_messages_not_the_signers_clock() {
        let mut state = State::default();
        let k = key(1);
        assert_eq!(
            state.offer(release("app:v1", 5, 100, &k)),
            Offer::Newer(None)
        );
        // A later clock with an older sequence: refused.
        match state.offer(release("app:v1", 4, 10_000, &k)) {
            Offer::Refused(reason) => {
                assert!(reason.contains("older than"), "{reason}");
                assert!(
                    reason.contains("seq 4") && reason.contains("seq 5"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // An earlier clock with a newer sequence: accepted.
        assert!(matches!(
            state.offer(release("app:v1", 6, 1, &k)),
            Offer::Newer(Some(_))
        ));
        // Other images are independent.
        assert_eq!(state.offer(release("app:v2", 1, 1, &k)), Offer::Newer(None));
    }

    #[test]
    fn a_replayed_release_after_its_removal_is_refused() {
        let mut state = State::default();
        let k = key(1);
        let r = release("app:v1", 1, 100, &k);
        state.offer(r.clone());
        assert!(matches!(
            state.offer(removal("app:v1", 2, 100, &k)),
            Offer::Newer(Some(e)) if matches!(*e, Entry::Release(_))
        ));
        match state.offer(r) {
            Offer::Refused(reason) => assert!(reason.contains("removal"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // And an old removal replayed after a redeploy removes nothing.
        let old_rm = removal("app:v1", 2, 100, &k);
        state.offer(release("app:v1", 3, 100, &k));
        assert!(matches!(state.offer(old_rm), Offer::Refused(_)));
    }

    #[test]
    fn the_same_message_twice_is_no_change_and_a_conflict_is_refused() {
        let mut state = State::default();
        let k = key(1);
        let r = release("app:v1", 1, 100, &k);
        state.offer(r.clone());
        assert_eq!(state.offer(r), Offer::Same);
        // Same signer, same sequence and clock, another body: refused.
        let mut other = release("app:v1", 1, 100, &k);
        if let Entry::Release(s) = &mut other {
            let mut body = s.body_unverified().clone();
            body.selector = vec![("a".into(), "b".into())];
            *s = SignedRelease::sign(body, &k);
        }
        assert!(matches!(state.offer(other), Offer::Refused(r) if r.contains("conflicts")));
    }

    #[test]
    fn unsequenced_messages_order_by_clock_below_sequenced_ones() {
        let mut state = State::default();
        let k = key(1);
        state.offer(release("app:v1", 0, 100, &k));
        assert!(matches!(
            state.offer(release("app:v1", 0, 200, &k)),
            Offer::Newer(_)
        ));
        assert!(matches!(
            state.offer(release("app:v1", 1, 1, &k)),
            Offer::Newer(_)
        ));
        assert!(matches!(
            state.offer(release("app:v1", 0, 9_999, &k)),
            Offer::Refused(_)
        ));
    }

    #[test]
    fn the_digest_is_the_same_whatever_the_arrival_order() {
        let (a, b) = (key(1), key(2));
        let msgs = [
            release("app:v1", 1, 1, &a),
            release("app:v1", 2, 1, &b),
            removal("db:v1", 3, 1, &a),
            release("db:v1", 1, 1, &a),
        ];
        let mut forward = State::default();
        for m in msgs.iter().cloned() {
            forward.offer(m);
        }
        let mut backward = State::default();
        for m in msgs.iter().rev().cloned() {
            backward.offer(m);
        }
        assert_eq!(forward.entries, backward.entries);
        assert_eq!(forward.digest(), backward.digest());
        assert_eq!(forward.digest().count, 2);
        let mut fewer = State::default();
        fewer.offer(msgs[0].clone());
        assert_ne!(fewer.digest(), forward.digest());
    }

    #[test]
    fn the_state_is_bounded() {
        let mut state = State::default();
        let k = key(1);
        for i in 0..MAX_DESIRED_IMAGES {
            assert!(matches!(
                state.offer(release(&format!("app:{i}"), 1, 1, &k)),
                Offer::Newer(None)
            ));
        }
        assert!(matches!(
            state.offer(release("one:more", 1, 1, &k)),
            Offer::Refused(_)
        ));
        // A newer message about a held image still goes in.
        assert!(matches!(
            state.offer(release("app:0", 2, 1, &k)),
            Offer::Newer(Some(_))
        ));
    }

    #[tokio::test]
    async fn it_survives_a_reopen_with_its_dismissed_marks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.json");
        let k = key(1);
        let desired = Desired::new(path.clone());
        let r = release("app:v1", 4, 1, &k);
        desired.offer(r.clone());
        desired.offer(removal("db:v1", 5, 1, &k));
        desired.dismiss("app:v1");
        desired.save().await.unwrap();
        assert_eq!(desired.next_seq(), 6);

        let reopened = Desired::new(path);
        let entries = reopened.load().await;
        assert_eq!(entries.len(), 2);
        for e in entries {
            reopened.offer(e);
        }
        assert_eq!(reopened.digest(), desired.digest());
        let Entry::Release(signed) = r else {
            unreachable!()
        };
        assert!(reopened.dismissed(&signed));
        assert_eq!(reopened.views(), desired.views());
    }
}
