//! A peak-sensitive, time-weighted latency EWMA that reads no clock: every call takes `now`.
//!
//! Follows Finagle's `PeakEwma` as ported by linkerd2-proxy / tower (`peak_ewma`) and the
//! ingress-nginx `ewma` balancer: a new sample `rtt` taken `dt` after the previous one
//! moves the estimate by `w = exp(-dt / decay)` (`estimate * w + rtt * (1 - w)`), and a
//! sample above the estimate replaces it at once, so a backend that slows down is avoided
//! quickly and trusted again slowly. Defaults are linkerd's: 30 ms prior, 10 s decay.
//!
//! Unlike those, an idle estimate relaxes toward the prior with the same time constant
//! (`get(now)`): a backend that was slow once and then starved of traffic looks average
//! again after a while, gets a request, and is measured anew — nobody is starved forever.

use std::time::Duration;

use tokio::time::Instant;

/// How an [`Ewma`] weighs samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaConfig {
    /// The estimate of a backend never measured, and what an idle estimate relaxes toward.
    /// Default 30 ms (linkerd2-proxy's `EWMA_DEFAULT_RTT`).
    pub prior: Duration,
    /// Time constant: a sample taken this long after the previous one weighs 1 - 1/e.
    /// Default 10 s (linkerd2-proxy's `EWMA_DECAY`, ingress-nginx's `DECAY_TIME`).
    pub decay: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        EwmaConfig {
            prior: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// A latency estimate in seconds, updated by samples, read at a given time.
#[derive(Debug, Clone, PartialEq)]
pub struct Ewma {
    config: EwmaConfig,
    /// Seconds, as of `updated_at`.
    estimate: f64,
    /// `None` until the first sample: the estimate is the prior.
    updated_at: Option<Instant>,
}

impl Ewma {
    pub fn new(config: EwmaConfig) -> Ewma {
        Ewma {
            estimate: config.prior.as_secs_f64(),
            config,
            updated_at: None,
        }
    }

    pub fn config(&self) -> &EwmaConfig {
        &self.config
    }

    /// Adds a sample taken at `now`. A sample older than the last one counts as taken then.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_secs_f64();
        let current = self.get_secs(now);
        self.estimate = if rtt > current {
            // Peak sensitivity: a slower sample is believed at once.
            rtt
        } else {
            match self.updated_at {
                None => rtt,
                Some(at) => {
                    let weight = self.weight(now.saturating_duration_since(at));
                    current * weight + rtt * (1.0 - weight)
                }
            }
        };
        self.updated_at = Some(self.updated_at.map_or(now, |at| at.max(now)));
    }

    /// The estimate at `now`, relaxed toward the prior for the time since the last sample.
    pub fn get(&self, now: Instant) -> Duration {
        Duration::from_secs_f64(self.get_secs(now))
    }

    /// Whether any latency was observed yet (otherwise [`Ewma::get`] is the prior).
    pub fn is_measured(&self) -> bool {
        self.updated_at.is_some()
    }

    /// [`Ewma::get`] in seconds, for scoring.
    pub fn get_secs(&self, now: Instant) -> f64 {
        let prior = self.config.prior.as_secs_f64();
        match self.updated_at {
            None => prior,
            Some(at) => {
                let weight = self.weight(now.saturating_duration_since(at));
                prior + (self.estimate - prior) * weight
            }
        }
    }

    /// `exp(-elapsed / decay)`: 1 for no time, toward 0 for long times.
    fn weight(&self, elapsed: Duration) -> f64 {
        let decay = self.config.decay.as_secs_f64();
        if decay <= 0.0 {
            return 0.0;
        }
        (-elapsed.as_secs_f64() / decay).exp()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(50)
    }

    #[test]
    fn starts_at_the_prior_and_takes_the_first_sample() {
        let t0 = Instant::now();
        let mut ewma = Ewma::new(EwmaConfig::default());
        assert_eq!(ewma.get(t0), ms(30));
        ewma.observe(ms(5), t0);
        assert!(close(ewma.get(t0), ms(5)));
    }

    #[test]
    fn a_slower_sample_is_believed_at_once_a_faster_one_gradually() {
        let t0 = Instant::now();
        let mut ewma = Ewma::new(EwmaConfig::default());
        ewma.observe(ms(10), t0);
        ewma.observe(ms(200), t0 + ms(1));
        assert!(close(ewma.get(t0 + ms(1)), ms(200)));
        // One fast sample 100 ms later barely moves it (w = exp(-0.01) ≈ 0.99).
        ewma.observe(ms(10), t0 + ms(101));
        let after = ewma.get(t0 + ms(101));
        assert!(after > ms(195) && after < ms(200), "{after:?}");
        // A fast sample a decay later: first the idle estimate relaxes toward the 30 ms
        // prior (w = 1/e), then the sample moves it most of the way (w = 1/e again).
        ewma.observe(ms(10), t0 + ms(10_101));
        let relaxed = 0.030 + (after.as_secs_f64() - 0.030) / std::f64::consts::E;
        let expected = 0.010 + (relaxed - 0.010) / std::f64::consts::E;
        let got = ewma.get_secs(t0 + ms(10_101));
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
    }

    #[test]
    fn an_idle_estimate_relaxes_toward_the_prior() {
        let t0 = Instant::now();
        let mut slow = Ewma::new(EwmaConfig::default());
        slow.observe(ms(500), t0);
        let mut fast = Ewma::new(EwmaConfig::default());
        fast.observe(ms(1), t0);
        // After one decay, a third of the way (1/e) from the prior to the sample is left.
        let one_decay = slow.get_secs(t0 + ms(10_000));
        assert!((one_decay - (0.030 + 0.470 / std::f64::consts::E)).abs() < 1e-9);
        let late = t0 + Duration::from_secs(120);
        assert!(close(slow.get(late), ms(30)));
        assert!(close(fast.get(late), ms(30)));
        // Reading does not change it.
        assert_eq!(slow.get(late), slow.get(late));
    }

    #[test]
    fn a_sample_from_the_past_does_not_move_time_backwards() {
        let t0 = Instant::now();
        let mut ewma = Ewma::new(EwmaConfig::default());
        ewma.observe(ms(10), t0 + ms(1000));
        ewma.observe(ms(10), t0);
        assert!(close(ewma.get(t0 + ms(1000)), ms(10)));
    }

    proptest! {
        /// The estimate always stays between the smallest and largest of the prior and
        /// every sample seen.
        #[test]
        fn the_estimate_stays_within_the_samples_and_the_prior(
            samples in proptest::collection::vec((0u64..2_000, 0u64..20_000), 1..50),
            read_after in 0u64..100_000,
        ) {
            let t0 = Instant::now();
            let mut ewma = Ewma::new(EwmaConfig::default());
            let mut now = t0;
            let (mut lo, mut hi) = (30.0e-3_f64, 30.0e-3_f64);
            for (rtt_ms, gap_ms) in samples {
                now += ms(gap_ms);
                ewma.observe(ms(rtt_ms), now);
                lo = lo.min(rtt_ms as f64 / 1e3);
                hi = hi.max(rtt_ms as f64 / 1e3);
                let v = ewma.get_secs(now);
                prop_assert!(v >= lo - 1e-9 && v <= hi + 1e-9, "{} not in [{}, {}]", v, lo, hi);
            }
            let v = ewma.get_secs(now + ms(read_after));
            prop_assert!(v >= lo - 1e-9 && v <= hi + 1e-9);
        }
    }
}
