//! A hybrid logical clock: stamps that follow wall time but never go backwards and
//! always move past any stamp this node has seen, so last-writer-wins picks the same
//! winner on every node even when clocks disagree a little.

use proto::catalog::Stamp;

#[derive(Debug, Clone)]
pub struct Hlc {
    node_id: String,
    last_wall_ms: u64,
    counter: u32,
}

impl Hlc {
    pub fn new(node_id: &str) -> Hlc {
        Hlc {
            node_id: node_id.to_string(),
            last_wall_ms: 0,
            counter: 0,
        }
    }

    /// A new stamp for a local write at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        if now_ms > self.last_wall_ms {
            self.last_wall_ms = now_ms;
            self.counter = 0;
        } else {
            self.counter = self.counter.saturating_add(1);
        }
        Stamp {
            wall_ms: self.last_wall_ms,
            counter: self.counter,
            node_id: self.node_id.clone(),
        }
    }

    /// Takes note of a stamp received from a peer, so later local stamps order after it.
    pub fn observe(&mut self, seen: &Stamp) {
        if (seen.wall_ms, seen.counter) > (self.last_wall_ms, self.counter) {
            self.last_wall_ms = seen.wall_ms;
            self.counter = seen.counter;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        slow.observe(&remote);
        let local = slow.tick(5_000);
        assert!(local > remote);
    }
}
