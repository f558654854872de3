//! Passive outlier detection for one backend: a circuit breaker fed by request outcomes.
//!
//! ```text
//!            N consecutive failures              backoff elapsed
//!   Closed ─────────────────────────▶ Open ─────────────────────────▶ HalfOpen
//!     ▲                                ▲                                │  │
//!     │                                └── a trial fails (longer backoff)┘  │
//!     └───────────────────────────── a trial succeeds ──────────────────────┘
//! ```
//!
//! Like Envoy's `consecutive_5xx` outlier detection and linkerd2-proxy's consecutive-failure
//! accrual: failures are connect errors, 5xx answers and timeouts; the backoff grows
//! exponentially per re-opening (1 s, 2 s, 4 s, … capped at 30 s) and resets when the
//! breaker closes. It reads no clock: inputs take `now`, [`Breaker::next_deadline`] says
//! when Open ends, and transitions are queued for [`Breaker::poll_transition`] (metrics).
//!
//! A trial admitted in HalfOpen must get exactly one of `on_success`, `on_failure` or
//! `on_cancel` (the proxy's total timeout guarantees one), or the breaker stays HalfOpen
//! without trial slots.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker. Default 5 (Envoy's `consecutive_5xx`).
    pub failure_threshold: u32,
    /// Backoff after the first opening. Default 1 s.
    pub base_backoff: Duration,
    /// Largest backoff. Default 30 s.
    pub max_backoff: Duration,
    /// Requests let through at once in HalfOpen. Default 1.
    pub half_open_trials: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            half_open_trials: 1,
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.failure_threshold == 0 {
            return Err(Error::InvalidConfig(
                "breaker failure threshold must be at least 1",
            ));
        }
        if self.half_open_trials == 0 {
            return Err(Error::InvalidConfig(
                "breaker half-open trials must be at least 1",
            ));
        }
        if self.base_backoff.is_zero() || self.base_backoff > self.max_backoff {
            return Err(Error::InvalidConfig(
                "breaker backoff must be positive and base at most max",
            ));
        }
        Ok(())
    }

    /// The backoff after the `opening`-th consecutive opening (1-based).
    pub fn backoff(&self, opening: u32) -> Duration {
        let doublings = opening.saturating_sub(1).min(31);
        self.base_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Traffic flows; consecutive failures are counted.
    Closed,
    /// Rejects every request until its backoff ends.
    Open,
    /// Lets up to `half_open_trials` requests through to test the backend.
    HalfOpen,
}

/// A state change, for metrics and logs.
#[must_use = "transitions are for metrics: count or log them"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Consecutive failures while Closed.
    failures: u32,
    /// Consecutive openings since the breaker last closed: sets the backoff.
    openings: u32,
    /// When Open ends.
    open_until: Option<Instant>,
    /// Trials admitted and not yet answered, in HalfOpen.
    trials: u32,
    transitions: VecDeque<Transition>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            failures: 0,
            openings: 0,
            open_until: None,
            trials: 0,
            transitions: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state as of the last input (Open may be due to end: see [`Breaker::is_available`]).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Consecutive failures counted while Closed.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// When the current Open period ends; `None` unless Open.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open => self.open_until,
            BreakerState::Closed | BreakerState::HalfOpen => None,
        }
    }

    /// Whether [`Breaker::allow`] would admit a request at `now`, without admitting it
    /// (for comparing candidates).
    pub fn is_available(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                self.open_until.is_none_or(|until| now >= until) && self.config.half_open_trials > 0
            }
            BreakerState::HalfOpen => self.trials < self.config.half_open_trials,
        }
    }

    /// Admits a request at `now` or rejects it; in HalfOpen an admitted request takes a
    /// trial slot until its outcome arrives.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.handle_timeout(now);
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if self.trials < self.config.half_open_trials {
                    self.trials += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Moves Open to HalfOpen once the backoff has elapsed. Inputs call it themselves; a
    /// driver calls it at [`Breaker::next_deadline`] only to report the transition on time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == BreakerState::Open && self.open_until.is_none_or(|until| now >= until) {
            self.trials = 0;
            self.open_until = None;
            self.go(BreakerState::HalfOpen);
        }
    }

    /// A request ended well (any answer but a 5xx).
    pub fn on_success(&mut self, now: Instant) {
        self.handle_timeout(now);
        match self.state {
            BreakerState::Closed => self.failures = 0,
            // A late answer to a request sent before the breaker opened: the backoff stands.
            BreakerState::Open => {}
            BreakerState::HalfOpen => {
                self.trials = 0;
                self.failures = 0;
                self.openings = 0;
                self.go(BreakerState::Closed);
            }
        }
    }

    /// A request failed: connect error, 5xx, timeout.
    pub fn on_failure(&mut self, now: Instant) {
        self.handle_timeout(now);
        match self.state {
            BreakerState::Closed => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.config.failure_threshold {
                    self.open(now);
                }
            }
            BreakerState::Open => {}
            BreakerState::HalfOpen => self.open(now),
        }
    }

    /// A request ended with no verdict on the backend (the client went away): frees its
    /// trial slot.
    pub fn on_cancel(&mut self, now: Instant) {
        self.handle_timeout(now);
        if self.state == BreakerState::HalfOpen {
            self.trials = self.trials.saturating_sub(1);
        }
    }

    /// The oldest unreported transition.
    #[must_use = "transitions are for metrics: count or log them"]
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.transitions.pop_front()
    }

    fn open(&mut self, now: Instant) {
        self.openings = self.openings.saturating_add(1);
        self.failures = 0;
        self.trials = 0;
        self.open_until = Some(now + self.config.backoff(self.openings));
        self.go(BreakerState::Open);
    }

    fn go(&mut self, to: BreakerState) {
        let from = self.state;
        if from != to {
            self.state = to;
            self.transitions.push_back(Transition { from, to });
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use BreakerState::{Closed, HalfOpen, Open};

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn drain(breaker: &mut Breaker) -> Vec<(BreakerState, BreakerState)> {
        std::iter::from_fn(|| breaker.poll_transition())
            .map(|t| (t.from, t.to))
            .collect()
    }

    #[test]
    fn opens_after_n_consecutive_failures_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(BreakerConfig::default());
        for _ in 0..4 {
            breaker.on_failure(t0);
        }
        breaker.on_success(t0);
        for _ in 0..4 {
            breaker.on_failure(t0);
            assert_eq!(breaker.state(), Closed);
        }
        assert!(breaker.allow(t0));
        breaker.on_failure(t0);
        assert_eq!(breaker.state(), Open);
        assert_eq!(breaker.next_deadline(), Some(t0 + secs(1)));
        assert!(!breaker.allow(t0));
        assert!(!breaker.is_available(t0 + Duration::from_millis(999)));
        assert_eq!(drain(&mut breaker), vec![(Closed, Open)]);
    }

    #[test]
    fn half_open_lets_k_trials_through_and_a_success_closes() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            half_open_trials: 2,
            ..BreakerConfig::default()
        });
        breaker.on_failure(t0);
        let t1 = t0 + secs(1);
        assert!(breaker.is_available(t1));
        assert!(breaker.allow(t1));
        assert_eq!(breaker.state(), HalfOpen);
        assert!(breaker.allow(t1));
        assert!(!breaker.allow(t1));
        assert!(!breaker.is_available(t1));
        // A cancelled trial frees its slot.
        breaker.on_cancel(t1);
        assert!(breaker.allow(t1));
        breaker.on_success(t1);
        assert_eq!(breaker.state(), Closed);
        assert_eq!(breaker.next_deadline(), None);
        assert_eq!(
            drain(&mut breaker),
            vec![(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
    }

    #[test]
    fn a_failed_trial_reopens_with_a_doubled_backoff_up_to_the_cap() {
        let mut now = Instant::now();
        let mut breaker = Breaker::new(BreakerConfig {
            failure_threshold: 2,
            ..BreakerConfig::default()
        });
        breaker.on_failure(now);
        breaker.on_failure(now);
        let mut backoffs = Vec::new();
        for _ in 0..7 {
            let until = breaker.next_deadline().unwrap();
            backoffs.push((until - now).as_secs());
            now = until;
            assert!(breaker.allow(now), "the trial is let through");
            breaker.on_failure(now);
            assert_eq!(breaker.state(), Open);
        }
        assert_eq!(backoffs, vec![1, 2, 4, 8, 16, 30, 30]);
        // Once closed, the next opening starts from the base backoff again.
        now = breaker.next_deadline().unwrap();
        assert!(breaker.allow(now));
        breaker.on_success(now);
        breaker.on_failure(now);
        breaker.on_failure(now);
        assert_eq!(breaker.next_deadline(), Some(now + secs(1)));
    }

    #[test]
    fn late_outcomes_while_open_change_nothing() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        });
        breaker.on_failure(t0);
        breaker.on_success(t0 + Duration::from_millis(10));
        breaker.on_failure(t0 + Duration::from_millis(20));
        assert_eq!(breaker.state(), Open);
        assert_eq!(breaker.next_deadline(), Some(t0 + secs(1)));
    }

    #[test]
    fn handle_timeout_reports_half_open_on_time() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        });
        breaker.on_failure(t0);
        breaker.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(breaker.state(), Open);
        breaker.handle_timeout(t0 + secs(1));
        assert_eq!(breaker.state(), HalfOpen);
        assert_eq!(drain(&mut breaker), vec![(Closed, Open), (Open, HalfOpen)]);
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(BreakerConfig::default().validate().is_ok());
        for bad in [
            BreakerConfig {
                failure_threshold: 0,
                ..BreakerConfig::default()
            },
            BreakerConfig {
                half_open_trials: 0,
                ..BreakerConfig::default()
            },
            BreakerConfig {
                base_backoff: secs(60),
                ..BreakerConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Input {
        Allow,
        Success,
        Failure,
        Cancel,
        Wait(u64),
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            3 => Just(Input::Allow),
            2 => Just(Input::Success),
            3 => Just(Input::Failure),
            1 => Just(Input::Cancel),
            2 => (0u64..40_000).prop_map(Input::Wait),
        ]
    }

    proptest! {
        /// Under any sequence of inputs: Open never admits before its deadline, HalfOpen
        /// never has more than K trials out, the backoff stays within its bounds, and the
        /// reported transitions chain from Closed to the current state.
        #[test]
        fn invariants_hold_under_any_inputs(
            inputs in proptest::collection::vec(input(), 0..200),
            threshold in 1u32..6,
            trials in 1u32..4,
        ) {
            let config = BreakerConfig {
                failure_threshold: threshold,
                half_open_trials: trials,
                ..BreakerConfig::default()
            };
            let mut now = Instant::now();
            let mut breaker = Breaker::new(config);
            let mut last = Closed;
            for input in inputs {
                match input {
                    Input::Allow => {
                        let deadline = breaker.next_deadline();
                        let admitted = breaker.allow(now);
                        if let Some(until) = deadline {
                            prop_assert!(!admitted || now >= until);
                        }
                    }
                    Input::Success => breaker.on_success(now),
                    Input::Failure => breaker.on_failure(now),
                    Input::Cancel => breaker.on_cancel(now),
                    Input::Wait(ms) => now += Duration::from_millis(ms),
                }
                prop_assert!(breaker.trials <= trials);
                if let Some(until) = breaker.next_deadline() {
                    let left = until.saturating_duration_since(now);
                    prop_assert!(left <= config.max_backoff);
                }
                prop_assert!(breaker.failures < threshold);
                while let Some(t) = breaker.poll_transition() {
                    prop_assert_eq!(t.from, last);
                    prop_assert_ne!(t.from, t.to);
                    last = t.to;
                }
                prop_assert_eq!(last, breaker.state());
            }
        }
    }
}
