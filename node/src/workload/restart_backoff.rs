//! How long a replica waits before its next attempt (fetching its bundle, starting its
//! container, restarting it after it exited): exponential with jitter, from `backon`.
//!
//! Only the delays come from `backon`: its `Retryable` drives a closure until it succeeds,
//! while the supervisor's loops publish a record between attempts and also wait on the
//! replica's stop signal, so they ask for the next delay and do their own waiting.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};

/// The first delay before jitter.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// No delay is longer than this. Jitter adds up to 100 % to the doubling delay, so the
/// doubling stops at half of it.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Delays of 1-2 s, 2-4 s, 4-8 s, 8-16 s, then 15-30 s for ever. The jitter spreads the
/// restarts of replicas that failed together (a registry or an S3 server that was down),
/// so they do not all come back in the same second.
#[derive(Debug)]
pub struct RestartBackoff {
    delays: ExponentialBackoff,
}

impl RestartBackoff {
    /// A schedule with a random jitter seed, one per replica.
    pub fn new() -> RestartBackoff {
        RestartBackoff::with_seed(rand::random())
    }

    /// A schedule whose jitter is fixed by `seed`, for tests.
    pub fn with_seed(seed: u64) -> RestartBackoff {
        let delays = ExponentialBuilder::new()
            .with_min_delay(FIRST_DELAY)
            .with_max_delay(MAX_DELAY / 2)
            .with_factor(2.0)
            .with_jitter()
            .with_jitter_seed(seed)
            .without_max_times()
            .build();
        RestartBackoff { delays }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // Without a limit on attempts or total delay the schedule never ends; should it
        // ever, waiting the longest is the safe answer.
        self.delays.next().unwrap_or(MAX_DELAY)
    }
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_their_jitter_and_stay_under_the_cap() {
        for seed in 0..50 {
            let mut backoff = RestartBackoff::with_seed(seed);
            let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
            let floors = [1, 2, 4, 8, 15].map(Duration::from_secs);
            for (attempt, delay) in delays.iter().enumerate() {
                let floor = floors[attempt.min(floors.len() - 1)];
                assert!(
                    *delay >= floor && *delay <= floor * 2,
                    "seed {seed}, attempt {attempt}: {delay:?} outside {floor:?}..{:?}",
                    floor * 2
                );
                assert!(*delay <= MAX_DELAY);
            }
        }
    }

    #[test]
    fn replicas_failing_together_do_not_retry_together() {
        let first: Vec<Duration> = (0..10)
            .map(|seed| RestartBackoff::with_seed(seed).next_delay())
            .collect();
        let mut distinct = first.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 5,
            "jitter spreads the first retry: {first:?}"
        );
        // And a seed gives the same schedule every time, so tests can rely on it.
        assert_eq!(
            RestartBackoff::with_seed(3).next_delay(),
            RestartBackoff::with_seed(3).next_delay()
        );
    }
}
