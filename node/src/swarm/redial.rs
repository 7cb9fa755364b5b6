//! When to dial the bootstrap peers again.
//!
//! A node dials its `--bootstrap` addresses once at start. If that dial
//! fails (the bootstrap peer starts after the node, as compose and
//! systemd orderings allow; a loaded host refuses or times the dial out;
//! the bootstrap peer restarts) and mDNS is off, the node sat alone until
//! Kademlia's periodic bootstrap a minute later. [`Redial`] decides, on
//! the swarm task's 1 s tick, whether a node with no connection at all
//! should dial them again: soon at first, then backing off to
//! [`MAX_BACKOFF`], and from the start again once it was connected.
//! No I/O and no clock: the caller passes the time.

use std::time::{Duration, Instant};

/// The first wait after a start or a lost last connection.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between two redials: a bootstrap peer that is down for
/// long costs a dial per 30 s, and one that comes back is reached within
/// 30 s.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Redial schedule of the bootstrap addresses (see the module doc).
#[derive(Debug)]
pub(super) struct Redial {
    /// When the next redial is due, if the node is still alone then.
    next_at: Instant,
    /// The wait after the next redial.
    backoff: Duration,
}

impl Redial {
    /// A schedule for a node that dialed its bootstrap peers at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            next_at: now + FIRST_BACKOFF,
            backoff: FIRST_BACKOFF * 2,
        }
    }

    /// Whether to dial the bootstrap peers now, given whether the node has
    /// any connection. Connected, the schedule starts over, so the first
    /// redial after the last connection is lost comes [`FIRST_BACKOFF`]
    /// later.
    pub(super) fn due(&mut self, now: Instant, connected: bool) -> bool {
        if connected {
            *self = Self::new(now);
            return false;
        }
        if now < self.next_at {
            return false;
        }
        self.next_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instants (seconds after start) at which a node alone from
    /// `from` to `to`, ticking every second, redials.
    fn redials(redial: &mut Redial, start: Instant, from: u64, to: u64) -> Vec<u64> {
        (from..=to)
            .filter(|s| redial.due(start + Duration::from_secs(*s), false))
            .collect()
    }

    #[test]
    fn a_lone_node_redials_at_once_then_backs_off_to_the_cap() {
        let start = Instant::now();
        let mut redial = Redial::new(start);
        assert_eq!(
            redials(&mut redial, start, 0, 200),
            [1, 3, 7, 15, 31, 61, 91, 121, 151, 181]
        );
    }

    #[test]
    fn a_connected_node_never_redials_and_starts_over_when_alone_again() {
        let start = Instant::now();
        let mut redial = Redial::new(start);
        assert_eq!(redials(&mut redial, start, 0, 20), [1, 3, 7, 15]);
        for s in 21..=100 {
            assert!(!redial.due(start + Duration::from_secs(s), true));
        }
        // Alone again at 101 s: a redial 1 s after the last connected tick.
        assert_eq!(redials(&mut redial, start, 101, 110), [101, 103, 107]);
    }
}
