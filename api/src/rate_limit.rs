//! Requests per second per caller (`--api-rate-limit`): one GCRA bucket per token id, or per
//! source address for calls without a valid token, kept by governor's keyed limiter.
//!
//! Pure: the layer that applies it is `routes::rate_limited`. It sits on the user routers only: node-to-node calls (`/v1/internal`,
//! `/v1/blobs`) are signed, not limited, so a busy user cannot slow replication down. A
//! call over the limit is answered 429 with `Retry-After` (by [`ApiError::RateLimited`]),
//! before it is audited or served; every other answer says how many calls are left in
//! `RateLimit-Remaining`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// The header that says how many more calls the caller may make right away.
pub const REMAINING: &str = "ratelimit-remaining";

/// How many checks between two sweeps of the buckets that are full again (and so can be
/// forgotten): the map of buckets must not grow with every address that ever called.
const SWEEP_EVERY: u64 = 4096;

/// A sustained rate and a burst on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// `per_second` calls a second with bursts of `burst`; `None` when `per_second` is 0 (off).
    /// A burst of 0 means twice the rate.
    pub fn new(per_second: u32, burst: u32) -> Option<RateLimit> {
        let per_second = NonZeroU32::new(per_second)?;
        let twice = per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        let burst = NonZeroU32::new(burst).unwrap_or(twice);
        Some(RateLimit { per_second, burst })
    }
}

/// Who a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Token(String),
    Address(IpAddr),
}

type Keyed =
    RateLimiter<RateKey, DefaultKeyedStateStore<RateKey>, DefaultClock, StateInformationMiddleware>;

/// The buckets of every caller.
pub struct Limiter {
    buckets: Keyed,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("callers", &self.buckets.len())
            .finish()
    }
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Limiter {
            buckets: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one call from `key`'s bucket: `Ok` with the calls left, or how long to wait.
    pub fn check(&self, key: &RateKey) -> Result<u32, Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.buckets.retain_recent();
        }
        match self.buckets.check_key(key) {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => Err(not_until.wait_time_from(self.buckets.clock().now())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;

    #[test]
    fn zero_is_off_and_the_burst_defaults_to_twice_the_rate() {
        assert_eq!(RateLimit::new(0, 100), None);
        let limit = RateLimit::new(50, 0).unwrap();
        assert_eq!(limit.burst.get(), 100);
        assert_eq!(RateLimit::new(5, 7).unwrap().burst.get(), 7);
    }

    #[test]
    fn each_caller_has_its_own_bucket() {
        let limiter = Limiter::new(RateLimit::new(1, 3).unwrap());
        let alice = RateKey::Token("alice".into());
        let bob = RateKey::Token("bob".into());
        assert_eq!(limiter.check(&alice), Ok(2));
        assert_eq!(limiter.check(&alice), Ok(1));
        assert_eq!(limiter.check(&alice), Ok(0));
        let wait = limiter.check(&alice).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(limiter.check(&bob), Ok(2), "bob is not alice");
    }
}
