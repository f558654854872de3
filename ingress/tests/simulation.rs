//! A thousand replicas of one app under steady traffic, on a simulated clock: backends with
//! latencies from 5 ms to 200 ms, one fast backend that refuses connections for a while.
//! The driver below is what the Pingora layer does per request, minus the sockets: look the
//! route up, pick, start, end, retry a failed connect elsewhere, fire breaker deadlines.
//!
//! Simulated time: every `Instant` is `t0 + offset`, so no test waits and runs repeat.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use ingress::balancer::Outcome;
use ingress::breaker::BreakerState;
use ingress::retry::{self, Attempt, Failure, RetryDecision};
use ingress::{BackendId, Balancer, BalancerConfig, Lookup, RouteApp, RouteTable, Strategy};
use proto::{ContainerHealth, ContainerRecord, ContainerState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

const BACKENDS: usize = 1_000;
const RATE_PER_SEC: u64 = 2_000;
const RUN: Duration = Duration::from_secs(90);
/// The fastest backend fails between these offsets.
const FAILING: usize = 0;
const FAIL_FROM: Duration = Duration::from_secs(10);
const FAIL_UNTIL: Duration = Duration::from_secs(40);

/// A request being served: (when it ends, sequence for ties, backend index, latency).
type InFlight = (Instant, u64, usize, Duration);

fn records() -> Vec<ContainerRecord> {
    (0..BACKENDS)
        .map(|i| ContainerRecord {
            id: format!("c{i:04}"),
            app: "web".into(),
            release: 1,
            replica: i as u32,
            addr: SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], 8080)),
            state: ContainerState::Running,
            health: ContainerHealth::Healthy,
            detail: None,
        })
        .collect()
}

/// Backend `i`'s typical latency: 5 ms for the first, 200 ms for the last, log-spaced.
fn base_latency(i: usize) -> f64 {
    0.005 * 40f64.powf(i as f64 / (BACKENDS - 1) as f64)
}

struct Report {
    picks: Vec<u64>,
    /// When each backend was last picked, and the longest wait between two of its picks
    /// (counting from the start and to the end of the run).
    last_pick: Vec<Duration>,
    longest_gap: Vec<Duration>,
    /// Picks of the failing backend from the failure's start until its breaker opened.
    picks_before_ejection: Option<u64>,
    ejected_at: Option<Duration>,
    /// Picks of the failing backend while its breaker was not closed.
    picks_while_not_closed: u64,
    half_open_entries: u64,
    readmitted_at: Option<Duration>,
    picks_after_readmission: u64,
    client_errors: u64,
    retries: u64,
    refused: u64,
    failing_state: BreakerState,
    picks_since_failure: u64,
}

impl Report {
    /// Reads the balancer's breaker events, noting what happens to the failing backend.
    fn handle_events(&mut self, balancer: &mut Balancer, failing: &BackendId, at: Duration) {
        while let Some(event) = balancer.poll_event() {
            if &event.backend != failing {
                continue;
            }
            self.failing_state = event.transition.to;
            match event.transition.to {
                BreakerState::Open if self.ejected_at.is_none() => {
                    self.ejected_at = Some(at);
                    self.picks_before_ejection = Some(self.picks_since_failure);
                }
                BreakerState::HalfOpen => self.half_open_entries += 1,
                BreakerState::Closed if at > FAIL_FROM => {
                    self.readmitted_at.get_or_insert(at);
                }
                _ => {}
            }
        }
    }
}

fn simulate(strategy: Strategy, seed: u64) -> Report {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let records = records();
    let table = RouteTable::build(
        "localhost",
        [RouteApp::new("web")].into_iter(),
        records.iter().map(|r| ("n1", r)),
    );
    let Lookup::Backends { backends, .. } = table.lookup("Web.Localhost:443", "/") else {
        panic!("web has backends");
    };
    assert_eq!(backends.len(), BACKENDS);
    let index_of = |id: &BackendId| -> usize {
        id.as_str()
            .rsplit('/')
            .next()
            .and_then(|c| c.strip_prefix('c'))
            .and_then(|n| n.parse().ok())
            .expect("ids are web/n1/cNNNN")
    };
    let failing_id = backends[FAILING].group_key.clone();
    let config = BalancerConfig {
        strategy,
        ..BalancerConfig::default()
    };
    let mut balancer = Balancer::new(config, backends);

    let mut report = Report {
        picks: vec![0; BACKENDS],
        last_pick: vec![Duration::ZERO; BACKENDS],
        longest_gap: vec![Duration::ZERO; BACKENDS],
        picks_before_ejection: None,
        ejected_at: None,
        picks_while_not_closed: 0,
        half_open_entries: 0,
        readmitted_at: None,
        picks_after_readmission: 0,
        client_errors: 0,
        retries: 0,
        refused: 0,
        failing_state: BreakerState::Closed,
        picks_since_failure: 0,
    };
    let mut in_flight: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut sequence = 0u64;
    let gap = Duration::from_secs(1) / RATE_PER_SEC as u32;
    let mut offset = Duration::ZERO;
    while offset < RUN {
        let now = t0 + offset;
        // Answers that came back before this arrival.
        while let Some(Reverse((end, _, i, latency))) = in_flight.peek().copied() {
            if end > now {
                break;
            }
            in_flight.pop();
            balancer.on_end(&backends[i].group_key, end, latency, Outcome::Success);
            report.handle_events(&mut balancer, &failing_id, end - t0);
        }
        if balancer.next_deadline().is_some_and(|at| at <= now) {
            balancer.handle_timeout(now);
            report.handle_events(&mut balancer, &failing_id, offset);
        }

        // One request, with at most one retry on another backend.
        let mut tried: Vec<BackendId> = Vec::new();
        loop {
            let Some(picked) = balancer.pick(now, &mut rng, &tried) else {
                report.client_errors += 1;
                break;
            };
            report.handle_events(&mut balancer, &failing_id, offset);
            let i = index_of(&picked);
            report.picks[i] += 1;
            report.longest_gap[i] = report.longest_gap[i].max(offset - report.last_pick[i]);
            report.last_pick[i] = offset;
            if i == FAILING {
                if offset >= FAIL_FROM && report.ejected_at.is_none() {
                    report.picks_since_failure += 1;
                }
                if report.failing_state != BreakerState::Closed {
                    report.picks_while_not_closed += 1;
                }
                if report.readmitted_at.is_some() {
                    report.picks_after_readmission += 1;
                }
            }
            balancer.on_start(&picked);
            let refused = i == FAILING && offset >= FAIL_FROM && offset < FAIL_UNTIL;
            if refused {
                report.refused += 1;
                // Connection refused at once: the backend never saw the request.
                let latency = Duration::from_micros(500);
                balancer.on_end(&picked, now + latency, latency, Outcome::Failure);
                report.handle_events(&mut balancer, &failing_id, offset);
                let attempt = Attempt {
                    method: "POST",
                    failure: Failure::Connect,
                    retries: tried.len() as u32,
                    stale_retries: 0,
                    body_streamed: false,
                    response_started: false,
                };
                tried.push(picked);
                match retry::decide(&attempt, &Default::default(), now, now + latency) {
                    RetryDecision::RetryElsewhere => {
                        report.retries += 1;
                        continue;
                    }
                    RetryDecision::RetryFresh => unreachable!("a refused connect is not stale"),
                    RetryDecision::GiveUp(_) => {
                        report.client_errors += 1;
                        break;
                    }
                }
            }
            let jitter = rng.random_range(0.8..1.2);
            let latency = Duration::from_secs_f64(base_latency(i) * jitter);
            sequence += 1;
            in_flight.push(Reverse((now + latency, sequence, i, latency)));
            break;
        }
        offset += gap;
    }
    for i in 0..BACKENDS {
        report.longest_gap[i] = report.longest_gap[i].max(RUN - report.last_pick[i]);
    }
    report
}

fn mean(values: &[u64]) -> f64 {
    values.iter().sum::<u64>() as f64 / values.len() as f64
}

#[test]
fn a_thousand_backends_with_one_failing_under_peak_ewma() {
    let report = simulate(Strategy::PeakEwma, 7);
    let total: u64 = report.picks.iter().sum();
    let requests = RUN.as_secs() * RATE_PER_SEC;
    assert_eq!(total, requests + report.retries);
    eprintln!(
        "picks before ejection {:?} at {:?}; {} half-open trials; readmitted at {:?}; \
         {} retries; {} client errors",
        report.picks_before_ejection,
        report.ejected_at,
        report.half_open_entries,
        report.readmitted_at,
        report.retries,
        report.client_errors,
    );

    // Ejected by its breaker after the threshold of consecutive failures, and quickly.
    let before = report
        .picks_before_ejection
        .expect("the failing backend is ejected");
    let threshold = u64::from(BalancerConfig::default().breaker.failure_threshold);
    assert_eq!(
        before, threshold,
        "ejected after exactly the threshold of failures"
    );
    let ejected_at = report.ejected_at.expect("ejected");
    assert!(
        ejected_at - FAIL_FROM < Duration::from_secs(10),
        "{ejected_at:?}"
    );
    // While ejected, it only sees half-open trials, one per backoff.
    assert!(report.picks_while_not_closed <= report.half_open_entries);
    assert!(
        (4..=7).contains(&report.half_open_entries),
        "backoffs 1, 2, 4, 8, 16, 30 s over the failure: {}",
        report.half_open_entries
    );
    // Every refused connect was retried elsewhere: no client saw an error.
    assert_eq!(report.client_errors, 0);
    assert_eq!(report.retries, report.refused);

    // Readmitted after it recovers, within the largest backoff, and used again.
    let readmitted = report.readmitted_at.expect("readmitted after recovery");
    assert!(readmitted >= FAIL_UNTIL, "{readmitted:?}");
    assert!(
        readmitted - FAIL_UNTIL <= Duration::from_secs(31),
        "{readmitted:?}"
    );
    assert!(
        report.picks_after_readmission > 50,
        "{}",
        report.picks_after_readmission
    );

    // The fastest backends get most of the traffic.
    let tenth = BACKENDS / 10;
    let fastest = mean(&report.picks[1..=tenth]);
    let slowest = mean(&report.picks[BACKENDS - tenth..]);
    let share: u64 = report.picks[..BACKENDS / 2].iter().sum();
    eprintln!(
        "fastest tenth {fastest:.0} picks each, slowest tenth {slowest:.0}; fastest half \
         takes {:.0}%",
        100.0 * share as f64 / total as f64
    );
    assert!(fastest > 3.0 * slowest, "{fastest} vs {slowest}");
    assert!(share as f64 > 0.6 * total as f64);

    // Nobody starves: an idle estimate relaxes toward the prior within a few decay times
    // (10 s), so even the slowest backend is measured again every so often.
    let least = report.picks.iter().copied().min().unwrap_or(0);
    let longest = report.longest_gap.iter().copied().max().unwrap_or_default();
    let slowest_gap = report.longest_gap[BACKENDS - 1];
    eprintln!(
        "least-picked backend: {least}; longest wait between picks {longest:?} (slowest \
         backend {slowest_gap:?})"
    );
    assert!(
        least >= 9,
        "a backend was starved: {least} picks in {RUN:?}"
    );
    assert!(
        longest <= Duration::from_secs(30),
        "a backend waited {longest:?}"
    );
}

#[test]
fn round_robin_spreads_evenly_and_still_ejects() {
    let report = simulate(Strategy::RoundRobin, 11);
    assert_eq!(report.picks_before_ejection, Some(5));
    assert_eq!(report.client_errors, 0);
    assert!(report.readmitted_at.is_some());
    let healthy = &report.picks[1..];
    let (min, max) = (
        healthy.iter().copied().min().unwrap_or(0),
        healthy.iter().copied().max().unwrap_or(0),
    );
    assert!(max - min <= 2, "round-robin spread {min}..{max}");
}
