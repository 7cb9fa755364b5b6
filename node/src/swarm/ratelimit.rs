//! Per-peer token buckets for valid gossip. Validation stops malformed
//! messages; this stops a member (or anyone holding a key) from flooding
//! well-formed ones: each author, and each peer relaying to us, may send
//! `burst` messages at once and `rate` a second after that. Messages over
//! the limit are ignored (not delivered, not forwarded) and counted.
//!
//! Buckets are kept for at most [`MAX_TRACKED`] peers: a bucket that has
//! refilled is the same as no bucket and is dropped first, then the one
//! idle longest.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

/// Peers tracked per kind (authors, relays).
pub(crate) const MAX_TRACKED: usize = 4096;

/// Relays forward many authors' messages: their bucket is this many times
/// an author's.
const RELAY_FACTOR: f64 = 4.0;

/// What a message costs the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the limit.
    Allowed,
    /// Over the limit; `first` is set on the first drop of this episode
    /// (log it once).
    Limited {
        /// Which peer is over: the author or the relay.
        peer: PeerId,
        /// First drop since the peer was last within its limit.
        first: bool,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Set once a drop was logged; cleared when the bucket refills.
    warned: bool,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<PeerId, Bucket>,
    rate: f64,
    burst: f64,
}

impl Buckets {
    fn new(rate: f64, burst: f64) -> Buckets {
        Buckets {
            map: HashMap::new(),
            rate,
            burst,
        }
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        (b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * self.rate)
            .min(self.burst)
    }

    /// Makes room for one more peer.
    fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
        });
        if self.map.len() >= MAX_TRACKED {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, b)| b.updated)
                .map(|(p, _)| *p)
            {
                self.map.remove(&oldest);
            }
        }
    }

    /// Takes a token for `peer`: `None` if allowed, `Some(first)` if not.
    fn take(&mut self, peer: PeerId, now: Instant) -> Option<bool> {
        if !self.map.contains_key(&peer) && self.map.len() >= MAX_TRACKED {
            self.prune(now);
        }
        let burst = self.burst;
        let tokens = match self.map.get(&peer) {
            Some(b) => self.refilled(b, now),
            None => burst,
        };
        let b = self.map.entry(peer).or_insert(Bucket {
            tokens,
            updated: now,
            warned: false,
        });
        b.tokens = tokens;
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            if b.tokens >= burst - 1.0 {
                b.warned = false;
            }
            None
        } else {
            let first = !b.warned;
            b.warned = true;
            Some(first)
        }
    }
}

/// The gossip rate limiter of one node.
#[derive(Debug)]
pub(crate) struct GossipLimiter {
    authors: Buckets,
    relays: Buckets,
}

impl GossipLimiter {
    /// `rate` messages a second per author after a `burst`.
    pub(crate) fn new(rate: u32, burst: u32) -> GossipLimiter {
        let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        GossipLimiter {
            authors: Buckets::new(rate, burst),
            relays: Buckets::new(rate * RELAY_FACTOR, burst * RELAY_FACTOR),
        }
    }

    /// Charges one valid message from `author` relayed by `relay`.
    pub(crate) fn check(&mut self, author: Option<PeerId>, relay: PeerId, now: Instant) -> Verdict {
        if let Some(first) = self.relays.take(relay, now) {
            return Verdict::Limited { peer: relay, first };
        }
        match author.map(|a| (a, self.authors.take(a, now))) {
            Some((a, Some(first))) => Verdict::Limited { peer: a, first },
            _ => Verdict::Allowed,
        }
    }

    /// Peers tracked (authors, relays).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (self.authors.map.len(), self.relays.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_rate_and_a_drop_is_first_once() {
        let mut l = GossipLimiter::new(10, 5);
        let (a, t0) = (PeerId::random(), Instant::now());
        for _ in 0..5 {
            assert_eq!(l.check(Some(a), a, t0), Verdict::Allowed);
        }
        assert_eq!(
            l.check(Some(a), a, t0),
            Verdict::Limited {
                peer: a,
                first: true
            }
        );
        assert_eq!(
            l.check(Some(a), a, t0),
            Verdict::Limited {
                peer: a,
                first: false
            }
        );
        // 100 ms later one more token (10/s).
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(Some(a), a, t1), Verdict::Allowed);
        assert!(matches!(l.check(Some(a), a, t1), Verdict::Limited { .. }));
        // Another author is not affected.
        let b = PeerId::random();
        assert_eq!(l.check(Some(b), b, t1), Verdict::Allowed);
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let mut l = GossipLimiter::new(1, 2);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED + 100) {
            let p = PeerId::random();
            // All within one instant: nothing refills, so the oldest go.
            let _ = l.check(Some(p), p, t0 + Duration::from_nanos(i as u64));
        }
        let (authors, relays) = l.tracked();
        assert!(
            authors <= MAX_TRACKED && relays <= MAX_TRACKED,
            "{authors} {relays}"
        );
    }
}
