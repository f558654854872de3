//! Choosing a backend for one app's request: power of two choices over a peak-EWMA load
//! estimate (default) or round-robin, skipping backends whose breaker rejects.
//!
//! The P2C rule is linkerd2-proxy's / tower's `PeakEwma` balancer and the ingress-nginx
//! `ewma` balancer: draw two distinct eligible backends at random and take the one with
//! the lower cost `(outstanding + 1) × latency EWMA`. Random draws spread load without a
//! global ordering (no herding on the single fastest backend), while the cost steers most
//! traffic to fast, unloaded backends (Mitzenmacher, "The Power of Two Choices"). Two
//! kinds of backend cost nothing, so a draw that includes them takes them: one never
//! measured (until it has a request out), and one whose breaker is due for a trial (its
//! backoff over), which would otherwise lose every comparison under light traffic and never
//! be readmitted.
//!
//! Pure: inputs take `now` and an RNG; breaker transitions queue up for
//! [`Balancer::poll_event`]; [`Balancer::next_deadline`] is the earliest breaker deadline.
//!
//! Per request, the proxy calls [`Balancer::pick`], [`Balancer::on_start`] when it uses the
//! pick, and exactly one [`Balancer::on_end`] (with [`Outcome::Cancelled`] if it gave up
//! without a verdict). State is keyed by [`BackendId`] and survives [`Balancer::update`]
//! for backends that stay; an `on_end` for a backend since removed is ignored.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerConfig, BreakerState, Transition};
use crate::error::Error;
use crate::ewma::{Ewma, EwmaConfig};
use crate::routes::{Backend, BackendId};

/// How an app's backends share its traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Power of two choices by `(outstanding + 1) × latency EWMA`.
    #[default]
    PeakEwma,
    /// Each eligible backend in turn, ignoring latency (for apps whose replicas must share
    /// traffic evenly, e.g. to compare them).
    RoundRobin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BalancerConfig {
    pub strategy: Strategy,
    pub ewma: EwmaConfig,
    pub breaker: BreakerConfig,
}

impl BalancerConfig {
    pub fn validate(&self) -> Result<(), Error> {
        self.breaker.validate()?;
        if self.ewma.decay.is_zero() {
            return Err(Error::InvalidConfig("ewma decay must be positive"));
        }
        Ok(())
    }
}

/// How a request to a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// An answer that is not a 5xx.
    Success,
    /// A connect error, a timeout, a broken exchange or a 5xx answer.
    Failure,
    /// Ended with no verdict on the backend (the client went away).
    Cancelled,
}

impl Outcome {
    /// `Failure` for a 5xx status, `Success` otherwise.
    pub fn from_status(status: u16) -> Outcome {
        if (500..600).contains(&status) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// A backend's breaker changed state.
#[must_use = "breaker events are for metrics: count or log them"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerEvent {
    pub backend: BackendId,
    pub transition: Transition,
}

/// One backend's load, for metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStats {
    pub backend: BackendId,
    pub outstanding: u32,
    pub latency: Duration,
    pub breaker: BreakerState,
}

#[derive(Debug, Clone)]
struct Slot {
    backend: Backend,
    ewma: Ewma,
    outstanding: u32,
    breaker: Breaker,
}

/// Random draws before falling back to listing every eligible backend.
const DRAWS: usize = 8;

/// The balancer of one app.
#[derive(Debug, Clone)]
pub struct Balancer {
    config: BalancerConfig,
    slots: Vec<Slot>,
    index: HashMap<BackendId, usize>,
    /// Round-robin position.
    cursor: usize,
    events: VecDeque<BreakerEvent>,
}

impl Balancer {
    pub fn new(config: BalancerConfig, backends: &[Backend]) -> Balancer {
        let mut balancer = Balancer {
            config,
            slots: Vec::new(),
            index: HashMap::new(),
            cursor: 0,
            events: VecDeque::new(),
        };
        balancer.update(backends);
        balancer
    }

    pub fn config(&self) -> &BalancerConfig {
        &self.config
    }

    /// Switches strategy; backend state is kept.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.config.strategy = strategy;
    }

    /// Replaces the backend set: backends that stay (same group key) keep their latency,
    /// load and breaker; new ones start at the prior with a closed breaker.
    pub fn update(&mut self, backends: &[Backend]) {
        let mut old: HashMap<BackendId, Slot> = self
            .slots
            .drain(..)
            .map(|slot| (slot.backend.group_key.clone(), slot))
            .collect();
        self.index.clear();
        for backend in backends {
            if self.index.contains_key(&backend.group_key) {
                continue;
            }
            let slot = match old.remove(&backend.group_key) {
                Some(mut slot) => {
                    slot.backend = backend.clone();
                    slot
                }
                None => Slot {
                    backend: backend.clone(),
                    ewma: Ewma::new(self.config.ewma),
                    outstanding: 0,
                    breaker: Breaker::new(self.config.breaker),
                },
            };
            self.index
                .insert(backend.group_key.clone(), self.slots.len());
            self.slots.push(slot);
        }
        if self.cursor >= self.slots.len() {
            self.cursor = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn backend(&self, id: &BackendId) -> Option<&Backend> {
        self.index.get(id).map(|&i| &self.slots[i].backend)
    }

    /// A backend for a request at `now`, none of `exclude` (the backends a retry must
    /// avoid); `None` when every backend is excluded or rejected by its breaker (503).
    /// In HalfOpen the pick takes a trial slot: the request must end with `on_end`.
    pub fn pick<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        rng: &mut R,
        exclude: &[BackendId],
    ) -> Option<BackendId> {
        let chosen = match self.config.strategy {
            Strategy::PeakEwma => self.pick_p2c(now, rng, exclude)?,
            Strategy::RoundRobin => self.pick_round_robin(now, exclude)?,
        };
        let slot = &mut self.slots[chosen];
        let admitted = slot.breaker.allow(now);
        debug_assert!(admitted, "an available breaker admits");
        self.collect_transitions(chosen);
        admitted.then(|| self.slots[chosen].backend.group_key.clone())
    }

    /// [`Balancer::pick`] and [`Balancer::on_start`] in one step: the backend for a request
    /// at `now`, counted as outstanding, without looking up the id just picked (twice a
    /// hashed lookup per request otherwise). The request must end with `on_end`.
    pub fn start<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        rng: &mut R,
        exclude: &[BackendId],
    ) -> Option<&Backend> {
        let chosen = match self.config.strategy {
            Strategy::PeakEwma => self.pick_p2c(now, rng, exclude)?,
            Strategy::RoundRobin => self.pick_round_robin(now, exclude)?,
        };
        let admitted = self.slots[chosen].breaker.allow(now);
        debug_assert!(admitted, "an available breaker admits");
        self.collect_transitions(chosen);
        if !admitted {
            return None;
        }
        let slot = &mut self.slots[chosen];
        slot.outstanding = slot.outstanding.saturating_add(1);
        Some(&slot.backend)
    }

    /// The request picked with `id` is on its way.
    pub fn on_start(&mut self, id: &BackendId) {
        if let Some(&i) = self.index.get(id) {
            let slot = &mut self.slots[i];
            slot.outstanding = slot.outstanding.saturating_add(1);
        }
    }

    /// The request to `id` ended at `now`; `latency` is the time from sending it to the
    /// response head (or to the failure). Failures never lower the latency estimate, so
    /// a backend that fails fast does not attract traffic.
    pub fn on_end(&mut self, id: &BackendId, now: Instant, latency: Duration, outcome: Outcome) {
        let Some(&i) = self.index.get(id) else {
            return;
        };
        let slot = &mut self.slots[i];
        slot.outstanding = slot.outstanding.saturating_sub(1);
        match outcome {
            Outcome::Success => {
                slot.ewma.observe(latency, now);
                slot.breaker.on_success(now);
            }
            Outcome::Failure => {
                if latency > slot.ewma.get(now) {
                    slot.ewma.observe(latency, now);
                }
                slot.breaker.on_failure(now);
            }
            Outcome::Cancelled => slot.breaker.on_cancel(now),
        }
        self.collect_transitions(i);
    }

    /// The earliest moment a breaker reopens to trial traffic.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|slot| slot.breaker.next_deadline())
            .min()
    }

    /// Moves due breakers to HalfOpen so the transition is reported on time (optional:
    /// picks do it too).
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if self.slots[i]
                .breaker
                .next_deadline()
                .is_some_and(|until| now >= until)
            {
                self.slots[i].breaker.handle_timeout(now);
                self.collect_transitions(i);
            }
        }
    }

    /// The oldest unreported breaker transition.
    #[must_use = "breaker events are for metrics: count or log them"]
    pub fn poll_event(&mut self) -> Option<BreakerEvent> {
        self.events.pop_front()
    }

    /// Every backend's load at `now`, in route-table order.
    pub fn stats(&self, now: Instant) -> impl Iterator<Item = BackendStats> + '_ {
        self.slots.iter().map(move |slot| BackendStats {
            backend: slot.backend.group_key.clone(),
            outstanding: slot.outstanding,
            latency: slot.ewma.get(now),
            breaker: slot.breaker.state(),
        })
    }

    fn eligible(&self, i: usize, now: Instant, exclude: &[BackendId]) -> bool {
        let slot = &self.slots[i];
        slot.breaker.is_available(now) && !exclude.contains(&slot.backend.group_key)
    }

    fn cost(&self, i: usize, now: Instant) -> f64 {
        let slot = &self.slots[i];
        if slot.breaker.state() != BreakerState::Closed {
            // Eligible with its breaker not closed: due for a trial. It costs nothing, so the
            // trial is made at the next pick that draws it. Priced by its latency, a backend
            // whose estimate failures raised, or that idled toward the prior, would lose every
            // comparison with a fast healthy one under light traffic: never trialled, never
            // readmitted.
            return 0.0;
        }
        if !slot.ewma.is_measured() {
            // A backend never measured costs nothing until it has a request out: on a fast
            // network the prior would otherwise price it out of ever being tried (the
            // ingress would never learn how fast it is, nor that it is dead).
            return f64::from(slot.outstanding) * slot.ewma.get_secs(now);
        }
        (f64::from(slot.outstanding) + 1.0) * slot.ewma.get_secs(now)
    }

    fn pick_p2c<R: Rng + ?Sized>(
        &self,
        now: Instant,
        rng: &mut R,
        exclude: &[BackendId],
    ) -> Option<usize> {
        let first = self.draw(now, rng, exclude, None)?;
        let Some(second) = self.draw(now, rng, exclude, Some(first)) else {
            return Some(first);
        };
        // The draws are in random order, so ties are broken at random.
        if self.cost(second, now) < self.cost(first, now) {
            Some(second)
        } else {
            Some(first)
        }
    }

    /// A uniformly random eligible backend other than `not`.
    fn draw<R: Rng + ?Sized>(
        &self,
        now: Instant,
        rng: &mut R,
        exclude: &[BackendId],
        not: Option<usize>,
    ) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        for _ in 0..DRAWS {
            let i = rng.random_range(0..n);
            if Some(i) != not && self.eligible(i, now, exclude) {
                return Some(i);
            }
        }
        // Most backends are ineligible: list the rest.
        let candidates: Vec<usize> = (0..n)
            .filter(|&i| Some(i) != not && self.eligible(i, now, exclude))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[rng.random_range(0..candidates.len())])
    }

    fn pick_round_robin(&mut self, now: Instant, exclude: &[BackendId]) -> Option<usize> {
        let n = self.slots.len();
        let chosen = (0..n)
            .map(|step| (self.cursor + step) % n)
            .find(|&i| self.eligible(i, now, exclude))?;
        self.cursor = (chosen + 1) % n;
        Some(chosen)
    }

    fn collect_transitions(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        while let Some(transition) = slot.breaker.poll_transition() {
            self.events.push_back(BreakerEvent {
                backend: slot.backend.group_key.clone(),
                transition,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::{any, prop_assert, proptest};
    use proto::{ContainerHealth, ContainerRecord, ContainerState};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn backends(app: &str, ids: &[&str]) -> Vec<Backend> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let record = ContainerRecord {
                    id: (*id).into(),
                    app: app.into(),
                    release: 1,
                    replica: i as u32,
                    addr: SocketAddr::from(([10, 0, 0, 1], 8000 + i as u16)),
                    state: ContainerState::Running,
                    health: ContainerHealth::Healthy,
                    detail: None,
                };
                Backend::new(app, "n1", &record)
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn id(app: &str, container: &str) -> BackendId {
        backends(app, &[container])[0].group_key.clone()
    }

    #[test]
    fn p2c_prefers_the_faster_backend() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut balancer = Balancer::new(
            BalancerConfig::default(),
            &backends("web", &["fast", "slow"]),
        );
        let fast = id("web", "fast");
        let slow = id("web", "slow");
        balancer.on_start(&fast);
        balancer.on_end(&fast, t0, ms(5), Outcome::Success);
        balancer.on_start(&slow);
        balancer.on_end(&slow, t0, ms(300), Outcome::Success);
        for _ in 0..100 {
            assert_eq!(balancer.pick(t0, &mut rng, &[]), Some(fast.clone()));
        }
    }

    #[test]
    fn outstanding_requests_raise_the_cost() {
        let mut rng = StdRng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut balancer = Balancer::new(BalancerConfig::default(), &backends("web", &["a", "b"]));
        let a = id("web", "a");
        let b = id("web", "b");
        for _ in 0..3 {
            balancer.on_start(&a);
        }
        // Same latency (the prior): b wins until it has as many requests out as a.
        for _ in 0..3 {
            let picked = balancer.pick(t0, &mut rng, &[]).unwrap();
            assert_eq!(picked, b);
            balancer.on_start(&picked);
        }
        let stats: Vec<u32> = balancer.stats(t0).map(|s| s.outstanding).collect();
        assert_eq!(stats, vec![3, 3]);
    }

    #[test]
    fn start_is_pick_then_on_start() {
        let t0 = Instant::now();
        for strategy in [Strategy::PeakEwma, Strategy::RoundRobin] {
            let config = BalancerConfig {
                strategy,
                ..BalancerConfig::default()
            };
            let all = backends("web", &["a", "b", "c"]);
            let mut picking = Balancer::new(config, &all);
            let mut starting = Balancer::new(config, &all);
            let (mut rng_pick, mut rng_start) =
                (StdRng::seed_from_u64(7), StdRng::seed_from_u64(7));
            let exclude = [id("web", "c")];
            for _ in 0..20 {
                let picked = picking.pick(t0, &mut rng_pick, &exclude).unwrap();
                picking.on_start(&picked);
                let started = starting.start(t0, &mut rng_start, &exclude).unwrap();
                assert_eq!(started.group_key, picked);
            }
            let outstanding = |b: &Balancer| b.stats(t0).map(|s| s.outstanding).collect::<Vec<_>>();
            assert_eq!(outstanding(&starting), outstanding(&picking));
            let everything: Vec<BackendId> = all.iter().map(|b| b.group_key.clone()).collect();
            assert!(starting.start(t0, &mut rng_start, &everything).is_none());
        }
    }

    #[test]
    fn exclude_forces_another_backend_and_none_when_nothing_is_left() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut balancer = Balancer::new(BalancerConfig::default(), &backends("web", &["a", "b"]));
        let a = id("web", "a");
        let b = id("web", "b");
        for _ in 0..20 {
            assert_eq!(
                balancer.pick(t0, &mut rng, std::slice::from_ref(&a)),
                Some(b.clone())
            );
        }
        assert_eq!(balancer.pick(t0, &mut rng, &[a, b]), None);
        let mut empty = Balancer::new(BalancerConfig::default(), &[]);
        assert_eq!(empty.pick(t0, &mut rng, &[]), None);
    }

    #[test]
    fn round_robin_takes_turns_and_skips_open_breakers() {
        let mut rng = StdRng::seed_from_u64(4);
        let t0 = Instant::now();
        let config = BalancerConfig {
            strategy: Strategy::RoundRobin,
            ..BalancerConfig::default()
        };
        let mut balancer = Balancer::new(config, &backends("web", &["a", "b", "c"]));
        let names = |balancer: &mut Balancer, rng: &mut StdRng, n: usize| -> Vec<String> {
            (0..n)
                .map(|_| {
                    let picked = balancer.pick(t0, rng, &[]).unwrap();
                    picked.as_str().rsplit('/').next().unwrap().to_string()
                })
                .collect()
        };
        assert_eq!(names(&mut balancer, &mut rng, 4), ["a", "b", "c", "a"]);
        let b = id("web", "b");
        for _ in 0..5 {
            balancer.on_start(&b);
            balancer.on_end(&b, t0, ms(1), Outcome::Failure);
        }
        assert_eq!(names(&mut balancer, &mut rng, 4), ["c", "a", "c", "a"]);
    }

    #[test]
    fn a_failing_backend_is_ejected_then_trialled_then_readmitted() {
        let mut rng = StdRng::seed_from_u64(5);
        let t0 = Instant::now();
        let mut balancer = Balancer::new(BalancerConfig::default(), &backends("web", &["a", "b"]));
        let a = id("web", "a");
        for _ in 0..5 {
            balancer.on_start(&a);
            balancer.on_end(&a, t0, ms(1), Outcome::Failure);
        }
        let event = balancer.poll_event().unwrap();
        assert_eq!(event.backend, a);
        assert_eq!(
            (event.transition.from, event.transition.to),
            (BreakerState::Closed, BreakerState::Open)
        );
        assert_eq!(balancer.next_deadline(), Some(t0 + Duration::from_secs(1)));
        for _ in 0..50 {
            assert_ne!(balancer.pick(t0 + ms(999), &mut rng, &[]), Some(a.clone()));
        }
        // After the backoff, a is a candidate again; exclude b to force the trial.
        let t1 = t0 + Duration::from_secs(1);
        let b = id("web", "b");
        let trial = balancer.pick(t1, &mut rng, std::slice::from_ref(&b));
        assert_eq!(trial, Some(a.clone()));
        assert_eq!(
            balancer.pick(t1, &mut rng, std::slice::from_ref(&b)),
            None,
            "one trial at a time"
        );
        balancer.on_start(&a);
        balancer.on_end(&a, t1 + ms(5), ms(5), Outcome::Success);
        let states: Vec<BreakerState> = std::iter::from_fn(|| balancer.poll_event())
            .map(|e| e.transition.to)
            .collect();
        assert_eq!(states, vec![BreakerState::HalfOpen, BreakerState::Closed]);
    }

    #[test]
    fn a_backend_due_for_a_trial_gets_it_even_when_another_looks_faster() {
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut balancer = Balancer::new(BalancerConfig::default(), &backends("web", &["a", "b"]));
        let a = id("web", "a");
        let b = id("web", "b");
        balancer.on_start(&b);
        balancer.on_end(&b, t0, ms(2), Outcome::Success);
        // a fails slowly (timeouts): its estimate is far above b's.
        for _ in 0..5 {
            balancer.on_start(&a);
            balancer.on_end(&a, t0, ms(2000), Outcome::Failure);
        }
        let t1 = t0 + Duration::from_secs(1);
        // One request at a time, nothing excluded: the first pick after the backoff is a's
        // trial, and it readmits a.
        assert_eq!(balancer.pick(t1, &mut rng, &[]), Some(a.clone()));
        balancer.on_start(&a);
        balancer.on_end(&a, t1 + ms(3), ms(3), Outcome::Success);
        let stats: HashMap<String, BreakerState> = balancer
            .stats(t1)
            .map(|s| (s.backend.to_string(), s.breaker))
            .collect();
        assert_eq!(stats["web/n1/a"], BreakerState::Closed);
    }

    #[test]
    fn fast_failures_do_not_make_a_backend_look_fast() {
        let t0 = Instant::now();
        let mut balancer = Balancer::new(BalancerConfig::default(), &backends("web", &["a"]));
        let a = id("web", "a");
        balancer.on_start(&a);
        balancer.on_end(&a, t0, ms(100), Outcome::Success);
        balancer.on_start(&a);
        balancer.on_end(&a, t0, ms(1), Outcome::Failure);
        let latency = balancer.stats(t0).next().unwrap().latency;
        assert!(latency >= ms(99), "{latency:?}");
        // A slow failure (a timeout) does count.
        balancer.on_start(&a);
        balancer.on_end(&a, t0, ms(5000), Outcome::Failure);
        assert!(balancer.stats(t0).next().unwrap().latency >= ms(4999));
    }

    #[test]
    fn state_survives_updates_for_backends_that_stay() {
        let mut rng = StdRng::seed_from_u64(6);
        let t0 = Instant::now();
        let mut balancer = Balancer::new(BalancerConfig::default(), &backends("web", &["a", "b"]));
        let a = id("web", "a");
        let b = id("web", "b");
        balancer.on_start(&a);
        balancer.on_end(&a, t0, ms(400), Outcome::Success);
        for _ in 0..5 {
            balancer.on_start(&b);
            balancer.on_end(&b, t0, ms(1), Outcome::Failure);
        }
        balancer.on_start(&a);
        balancer.update(&backends("web", &["c", "a", "b"]));
        assert_eq!(balancer.len(), 3);
        let stats: HashMap<String, BackendStats> = balancer
            .stats(t0)
            .map(|s| (s.backend.to_string(), s))
            .collect();
        assert!(stats["web/n1/a"].latency >= ms(399));
        assert_eq!(stats["web/n1/a"].outstanding, 1);
        assert_eq!(stats["web/n1/b"].breaker, BreakerState::Open);
        assert_eq!(stats["web/n1/c"].latency, ms(30));
        assert_eq!(stats["web/n1/c"].breaker, BreakerState::Closed);
        // The new backend at the prior beats the slow one.
        let c = id("web", "c");
        assert_eq!(balancer.pick(t0, &mut rng, &[]), Some(c));
        // Ends for a removed backend are ignored.
        balancer.update(&backends("web", &["c"]));
        balancer.on_end(&a, t0, ms(1), Outcome::Failure);
        assert_eq!(balancer.len(), 1);
        assert!(balancer.backend(&a).is_none());
    }

    #[test]
    fn a_new_backend_is_tried_even_when_the_others_are_much_faster_than_the_prior() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(11);
        let mut balancer = Balancer::new(BalancerConfig::default(), &backends("web", &["a", "b"]));
        for name in ["a", "b"] {
            for _ in 0..20 {
                balancer.on_start(&id("web", name));
                balancer.on_end(&id("web", name), t0, ms(1), Outcome::Success);
            }
        }
        balancer.update(&backends("web", &["a", "b", "c"]));
        let c = id("web", "c");
        let picked_c = (0..20).any(|_| {
            let picked = balancer.pick(t0, &mut rng, &[]);
            if let Some(picked) = &picked {
                balancer.on_start(picked);
                balancer.on_end(picked, t0, ms(1), Outcome::Success);
            }
            picked == Some(c.clone())
        });
        assert!(picked_c, "a new backend was never tried");
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(Outcome::from_status(200), Outcome::Success);
        assert_eq!(Outcome::from_status(404), Outcome::Success);
        assert_eq!(Outcome::from_status(502), Outcome::Failure);
        assert!(BalancerConfig::default().validate().is_ok());
    }

    proptest! {
        /// Whatever happens, a pick is never excluded nor a backend its breaker rejects,
        /// and outstanding counts return to zero when every request has ended.
        #[test]
        fn picks_respect_exclusion_and_breakers(
            seed in any::<u64>(),
            n in 1usize..12,
            steps in proptest::collection::vec((0u8..4, 0u64..3_000, any::<bool>()), 1..150),
            round_robin in any::<bool>(),
        ) {
            let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let all = backends("web", &refs);
            let config = BalancerConfig {
                strategy: if round_robin { Strategy::RoundRobin } else { Strategy::PeakEwma },
                ..BalancerConfig::default()
            };
            let mut balancer = Balancer::new(config, &all);
            let mut rng = StdRng::seed_from_u64(seed);
            let mut now = Instant::now();
            let mut open: Vec<BackendId> = Vec::new();
            for (kind, millis, fail) in steps {
                now += ms(millis);
                let exclude: Vec<BackendId> = all
                    .iter()
                    .filter(|b| b.pool_group() % 3 == u64::from(kind) % 3)
                    .map(|b| b.group_key.clone())
                    .collect();
                let available: Vec<bool> = balancer.slots.iter().map(|s| s.breaker.is_available(now)).collect();
                match balancer.pick(now, &mut rng, &exclude) {
                    Some(picked) => {
                        prop_assert!(!exclude.contains(&picked));
                        let i = balancer.index[&picked];
                        prop_assert!(available[i]);
                        balancer.on_start(&picked);
                        open.push(picked);
                    }
                    None => {
                        let any = (0..n).any(|i| available[i] && !exclude.contains(&balancer.slots[i].backend.group_key));
                        prop_assert!(!any, "nothing picked though a backend was eligible");
                    }
                }
                if !open.is_empty() && (kind == 0 || open.len() > 4) {
                    let done = open.remove(0);
                    let outcome = if fail { Outcome::Failure } else { Outcome::Success };
                    balancer.on_end(&done, now, ms(millis / 10), outcome);
                }
                while balancer.poll_event().is_some() {}
            }
            for done in open.drain(..) {
                balancer.on_end(&done, now, ms(1), Outcome::Cancelled);
            }
            prop_assert!(balancer.stats(now).all(|s| s.outstanding == 0));
        }
    }
}
