//! A hybrid logical clock: stamps that follow wall time but never go backwards and
//! always move past any stamp this node has seen, so last-writer-wins picks the same
//! winner on every node even when clocks disagree a little.
//!
//! "A little" is bounded, as the `uhlc` crate bounds it: a peer's stamp more than
//! [`MAX_DRIFT_MS`] ahead of our own wall time is not adopted. Otherwise one node whose
//! clock is years ahead would drag every clock it gossips with to its time, and since
//! wall time then never catches up, every later local stamp could only bump the counter
//! until it sticks at its maximum. The record carrying such a stamp may still win by
//! last-writer-wins (the catalog decides that); only our clock refuses to jump.

use std::time::{SystemTime, UNIX_EPOCH};

use proto::catalog::Stamp;

/// How far ahead of local wall time a peer's stamp may be and still move our clock
/// forward. Generous next to NTP's usual error (milliseconds) and small next to the
/// damage a badly set clock does.
pub const MAX_DRIFT_MS: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct Hlc {
    node_id: String,
    last_wall_ms: u64,
    counter: u32,
    max_drift_ms: u64,
}

/// What [`Hlc::observe_at`] did with a peer's stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Observed {
    /// The stamp was not ahead of the clock: nothing to do.
    Behind,
    /// The clock moved up to the stamp.
    Adopted,
    /// The stamp was more than the allowed drift ahead of local wall time, by `ahead_ms`;
    /// the clock was left alone.
    TooFarAhead { ahead_ms: u64 },
}

impl Hlc {
    pub fn new(node_id: &str) -> Hlc {
        Hlc::with_max_drift(node_id, MAX_DRIFT_MS)
    }

    /// A clock that adopts peer stamps at most `max_drift_ms` ahead of local wall time.
    pub fn with_max_drift(node_id: &str, max_drift_ms: u64) -> Hlc {
        Hlc {
            node_id: node_id.to_string(),
            last_wall_ms: 0,
            counter: 0,
            max_drift_ms,
        }
    }

    /// A new stamp for a local write at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        if now_ms > self.last_wall_ms {
            self.last_wall_ms = now_ms;
            self.counter = 0;
        } else if self.counter == u32::MAX {
            // Borrow a millisecond rather than repeat a stamp: stamps must keep growing.
            self.last_wall_ms = self.last_wall_ms.saturating_add(1);
            self.counter = 0;
        } else {
            self.counter += 1;
        }
        Stamp {
            wall_ms: self.last_wall_ms,
            counter: self.counter,
            node_id: self.node_id.clone(),
        }
    }

    /// The furthest a peer's stamp may be ahead of local wall time and still be adopted.
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// Takes note of a stamp received from a peer at local wall time `now_ms`: the clock
    /// moves up to it, unless it is more than the allowed drift ahead of `now_ms`.
    pub fn observe_at(&mut self, seen: &Stamp, now_ms: u64) -> Observed {
        if (seen.wall_ms, seen.counter) <= (self.last_wall_ms, self.counter) {
            return Observed::Behind;
        }
        let ahead_ms = seen.wall_ms.saturating_sub(now_ms);
        if ahead_ms > self.max_drift_ms {
            return Observed::TooFarAhead { ahead_ms };
        }
        self.last_wall_ms = seen.wall_ms;
        self.counter = seen.counter;
        Observed::Adopted
    }
}

/// Wall time in milliseconds since the Unix epoch, what local stamps start from (0 if the
/// system clock is set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

    #[test]
    fn stamps_grow_even_if_the_clock_stalls_or_goes_back() {
        let mut hlc = Hlc::new("a");
        let first = hlc.tick(100);
        let same_ms = hlc.tick(100);
        let backwards = hlc.tick(50);
        assert!(first < same_ms && same_ms < backwards);
    }

    #[test]
    fn a_local_write_after_seeing_a_future_stamp_orders_after_it() {
        let mut slow = Hlc::new("slow");
        let mut fast = Hlc::new("fast");
        let remote = fast.tick(10_000);
        assert_eq!(slow.observe_at(&remote, 5_000), Observed::Adopted);
        let local = slow.tick(5_000);
        assert!(local > remote);
    }

    #[test]
    fn a_stamp_years_ahead_does_not_move_the_clock() {
        let now = 1_700_000_000_000;
        let mut hlc = Hlc::new("a");
        let mut broken = Hlc::new("broken");
        let remote = broken.tick(now + 3 * YEAR_MS);
        assert_eq!(
            hlc.observe_at(&remote, now),
            Observed::TooFarAhead {
                ahead_ms: 3 * YEAR_MS
            }
        );
        let local = hlc.tick(now + 1);
        assert_eq!((local.wall_ms, local.counter), (now + 1, 0));
        // Within the bound a peer still pulls the clock forward.
        let close = Hlc::new("close").tick(now + MAX_DRIFT_MS);
        assert_eq!(hlc.observe_at(&close, now), Observed::Adopted);
        assert!(hlc.tick(now + 2) > close);
    }

    #[test]
    fn the_drift_bound_is_configurable() {
        let mut hlc = Hlc::with_max_drift("a", 10);
        let mut peer = Hlc::new("b");
        assert_eq!(hlc.observe_at(&peer.tick(1_010), 1_000), Observed::Adopted);
        assert!(matches!(
            hlc.observe_at(&peer.tick(1_100), 1_000),
            Observed::TooFarAhead { ahead_ms: 100 }
        ));
        assert_eq!(
            hlc.observe_at(&Hlc::new("c").tick(500), 1_000),
            Observed::Behind
        );
    }

    #[test]
    fn a_full_counter_borrows_a_millisecond_instead_of_repeating() {
        let mut hlc = Hlc::new("a");
        let mut peer = Hlc::new("b");
        let mut seen = peer.tick(1_000);
        seen.counter = u32::MAX - 1;
        assert_eq!(hlc.observe_at(&seen, 1_000), Observed::Adopted);
        let last = hlc.tick(1_000);
        let next = hlc.tick(1_000);
        assert_eq!((last.wall_ms, last.counter), (1_000, u32::MAX));
        assert_eq!((next.wall_ms, next.counter), (1_001, 0));
        assert!(next > last);
    }
}
