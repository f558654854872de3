#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! The reconciler against a simulated cluster: actions take effect after realistic delays
//! on a paused clock, and the invariants are checked at every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::{ContainerHealth, ContainerState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::*;

const TICK: Duration = Duration::from_millis(100);
/// A placed replica shows up in gossip after this, starting, and turns healthy after
/// `HEALTHY_AFTER` more (unless its release is broken).
const SHOWS_AFTER: Duration = Duration::from_millis(300);
const HEALTHY_AFTER: Duration = Duration::from_millis(700);

#[derive(Debug, Clone)]
struct SimReplica {
    node: String,
    release: u64,
    slot: u32,
    born: Instant,
    stopping_since: Option<Instant>,
}

/// A tiny cluster: nodes, replicas, and which releases crash.
struct Sim {
    now: Instant,
    nodes: Vec<String>,
    dead: BTreeSet<String>,
    draining: BTreeSet<String>,
    replicas: Vec<SimReplica>,
    broken: BTreeSet<u64>,
    /// Placed but not yet visible: (visible at, replica).
    placing: Vec<(Instant, SimReplica)>,
    reconciler: Reconciler,
    desired: Desired,
    failures: Vec<(u64, String, Option<u64>)>,
    rng: StdRng,
    next_node: usize,
    /// Call the reconciler only when its inputs changed or its deadline came, as the
    /// driver does, instead of at every tick.
    event_driven: bool,
    last_inputs: Option<(Desired, AppState)>,
    calls: usize,
}

impl Sim {
    fn new(nodes: usize, replicas: u32) -> Sim {
        Sim {
            now: Instant::now(),
            nodes: (0..nodes).map(|i| format!("node-{i:03}")).collect(),
            dead: BTreeSet::new(),
            draining: BTreeSet::new(),
            replicas: Vec::new(),
            broken: BTreeSet::new(),
            placing: Vec::new(),
            reconciler: Reconciler::new(ReconcileConfig::default()),
            desired: Desired {
                app: "web".into(),
                release: 1,
                replicas,
                max_surge: 1,
                health_timeout: Duration::from_secs(10),
                previous: None,
            },
            failures: Vec::new(),
            rng: StdRng::seed_from_u64(7),
            next_node: 0,
            event_driven: false,
            last_inputs: None,
            calls: 0,
        }
    }

    fn healthy(&self, replica: &SimReplica) -> bool {
        replica.stopping_since.is_none()
            && !self.broken.contains(&replica.release)
            && self.now.saturating_duration_since(replica.born) >= HEALTHY_AFTER
    }

    fn observed(&self) -> Vec<Observed> {
        self.replicas
            .iter()
            .filter(|r| !self.dead.contains(&r.node))
            .map(|r| {
                let crashed = self.broken.contains(&r.release)
                    && self.now.saturating_duration_since(r.born) >= HEALTHY_AFTER;
                Observed {
                    node_id: r.node.clone(),
                    placement_id: format!("web-r{}-{}", r.release, r.slot),
                    release: r.release,
                    slot: r.slot,
                    state: if r.stopping_since.is_some() {
                        ContainerState::Stopping
                    } else if crashed {
                        ContainerState::Exited
                    } else {
                        ContainerState::Running
                    },
                    health: if self.healthy(r) {
                        ContainerHealth::Healthy
                    } else if crashed {
                        ContainerHealth::Unhealthy
                    } else {
                        ContainerHealth::Unknown
                    },
                    detail: crashed.then(|| "exit code 1".to_string()),
                }
            })
            .collect()
    }

    /// Routable replicas of any release, as an ingress would count them.
    fn serving(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| !self.dead.contains(&r.node) && self.healthy(r))
            .count()
    }

    fn step(&mut self) {
        self.now += TICK;
        let now = self.now;
        let (visible, waiting): (Vec<_>, Vec<_>) =
            self.placing.drain(..).partition(|(at, _)| *at <= now);
        self.placing = waiting;
        for (_, mut replica) in visible {
            replica.born = now;
            self.replicas.push(replica);
        }
        // A stopped replica leaves gossip a little after it announced it is stopping.
        self.replicas.retain(|r| {
            r.stopping_since
                .is_none_or(|since| now.saturating_duration_since(since) < Duration::from_secs(1))
        });
        let state = AppState {
            observed: self.observed(),
            pending: self
                .placing
                .iter()
                .filter(|(_, r)| r.release == self.desired.release && !self.dead.contains(&r.node))
                .map(|(_, r)| r.slot)
                .collect(),
            draining: self.draining.clone(),
        };
        let inputs = (self.desired.clone(), state.clone());
        let due = self
            .reconciler
            .next_deadline()
            .is_some_and(|deadline| deadline <= now);
        if self.event_driven && !due && self.last_inputs.as_ref() == Some(&inputs) {
            return;
        }
        self.last_inputs = Some(inputs);
        self.calls += 1;
        let actions = self.reconciler.reconcile(now, &self.desired, &state);
        for action in actions {
            match action {
                Action::Place { slot } => {
                    let node = self.pick_node();
                    self.placing.push((
                        now + SHOWS_AFTER,
                        SimReplica {
                            node,
                            release: self.desired.release,
                            slot,
                            born: now,
                            stopping_since: None,
                        },
                    ));
                }
                Action::Stop {
                    node_id,
                    placement_id,
                    ..
                } => {
                    for replica in &mut self.replicas {
                        let id = format!("web-r{}-{}", replica.release, replica.slot);
                        if replica.node == node_id
                            && id == placement_id
                            && replica.stopping_since.is_none()
                        {
                            replica.stopping_since = Some(now);
                        }
                    }
                }
                Action::Fail {
                    release,
                    reason,
                    rollback_to,
                } => {
                    if !self.failures.iter().any(|(r, _, _)| *r == release) {
                        self.failures.push((release, reason, rollback_to));
                    }
                    if let Some(previous) = rollback_to {
                        self.desired.release = previous;
                        self.desired.previous = None;
                    }
                }
            }
        }
    }

    /// A live, non-draining node, spreading like the scheduler does (fewest replicas).
    fn pick_node(&mut self) -> String {
        let candidates: Vec<&String> = self
            .nodes
            .iter()
            .filter(|n| !self.dead.contains(*n) && !self.draining.contains(*n))
            .collect();
        let load = |node: &String| {
            self.replicas
                .iter()
                .chain(self.placing.iter().map(|(_, r)| r))
                .filter(|r| &r.node == node)
                .count()
        };
        let least = candidates.iter().map(|n| load(n)).min().unwrap();
        let best: Vec<&&String> = candidates.iter().filter(|n| load(n) == least).collect();
        self.next_node = self.rng.random_range(0..best.len());
        (*best[self.next_node]).clone()
    }

    fn run_for(&mut self, duration: Duration, mut check: impl FnMut(&Sim)) {
        let until = self.now + duration;
        while self.now < until {
            self.step();
            check(self);
        }
    }

    /// Copies of the desired release on live nodes, not stopping.
    fn current_copies(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| {
                !self.dead.contains(&r.node)
                    && r.release == self.desired.release
                    && r.stopping_since.is_none()
            })
            .count()
    }

    fn all_copies(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| !self.dead.contains(&r.node) && r.stopping_since.is_none())
            .count()
    }

    fn deploy(&mut self, release: u64) {
        self.desired.previous = Some(self.desired.release);
        self.desired.release = release;
    }
}

fn settled(replicas: u32) -> Sim {
    let mut sim = Sim::new(5, replicas);
    sim.run_for(Duration::from_secs(5), |_| {});
    assert_eq!(sim.serving(), replicas as usize);
    sim
}

#[test]
fn a_first_release_places_every_replica_at_once() {
    let mut sim = Sim::new(5, 3);
    sim.step();
    assert_eq!(sim.placing.len(), 3, "nothing to protect: no surge limit");
    sim.run_for(Duration::from_secs(3), |_| {});
    assert_eq!(sim.serving(), 3);
    let nodes: BTreeSet<&String> = sim.replicas.iter().map(|r| &r.node).collect();
    assert_eq!(nodes.len(), 3, "spread over nodes");
    assert!(sim.reconciler.is_established("web"));
}

#[test]
fn a_rolling_deploy_never_serves_fewer_than_desired_nor_runs_more_than_one_extra() {
    let mut sim = settled(3);
    sim.deploy(2);
    sim.run_for(Duration::from_secs(20), |sim| {
        assert!(sim.serving() >= 3, "serving dropped to {}", sim.serving());
        assert!(
            sim.all_copies() + sim.placing.len() <= 4,
            "max_surge 1 exceeded"
        );
    });
    assert_eq!(sim.current_copies(), 3);
    assert_eq!(sim.all_copies(), 3, "every old replica stopped");
    assert!(sim.failures.is_empty());
}

#[test]
fn a_rollout_waits_for_each_new_replica_to_settle_before_stopping_an_old_one() {
    let mut sim = settled(3);
    sim.deploy(2);
    // One new replica placed, none stopped before it has been routable for route_settle.
    let mut first_stop = None;
    let mut first_routable = None;
    sim.run_for(Duration::from_secs(5), |sim| {
        let new_healthy = sim
            .replicas
            .iter()
            .any(|r| r.release == 2 && sim.healthy(r));
        if new_healthy && first_routable.is_none() {
            first_routable = Some(sim.now);
        }
        if sim
            .replicas
            .iter()
            .any(|r| r.release == 1 && r.stopping_since.is_some())
            && first_stop.is_none()
        {
            first_stop = Some(sim.now);
        }
    });
    let gap = first_stop.unwrap() - first_routable.unwrap();
    assert!(gap >= DEFAULT_ROUTE_SETTLE, "stopped after {gap:?}");
}

#[test]
fn a_crashing_release_is_rolled_back_and_the_old_one_never_stops_serving() {
    let mut sim = settled(3);
    sim.broken.insert(2);
    sim.deploy(2);
    sim.run_for(Duration::from_secs(10), |sim| {
        assert!(sim.serving() >= 3, "the old release kept serving");
    });
    assert_eq!(sim.desired.release, 1, "back on release 1");
    let (release, reason, to) = &sim.failures[0];
    assert_eq!((*release, *to), (2, Some(1)));
    assert!(reason.contains("exited"), "{reason}");
    assert_eq!(sim.all_copies(), 3, "the broken replica is gone");
    assert!(sim.replicas.iter().all(|r| r.release == 1));
}

#[test]
fn a_release_that_never_turns_healthy_fails_after_the_health_timeout() {
    let mut sim = settled(2);
    sim.desired.health_timeout = Duration::from_secs(4);
    sim.deploy(2);
    let started = sim.now;
    let mut failed_at = None;
    for _ in 0..100 {
        sim.step();
        // Broken but not crashing: the new replicas stay Unknown forever.
        for replica in &mut sim.replicas {
            if replica.release == 2 {
                replica.born = sim.now;
            }
        }
        if failed_at.is_none() && !sim.failures.is_empty() {
            failed_at = Some(sim.now);
        }
    }
    let waited = failed_at.unwrap() - started;
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert!(sim.failures[0].1.contains("not healthy after 4 s"));
    assert_eq!(sim.desired.release, 1);
}

#[test]
fn a_crash_with_nothing_to_go_back_to_is_reported_and_placement_goes_on() {
    let mut sim = Sim::new(5, 3);
    sim.broken.insert(1);
    sim.run_for(Duration::from_secs(5), |_| {});
    assert_eq!(sim.failures.len(), 1);
    assert_eq!(sim.failures[0].2, None);
    assert_eq!(
        sim.all_copies(),
        3,
        "every replica placed, restarting on its node"
    );
}

#[test]
fn a_dead_nodes_replicas_are_replaced_after_the_grace_period_not_before() {
    let mut sim = settled(3);
    let victim = sim.replicas[0].node.clone();
    sim.dead.insert(victim.clone());
    let died = sim.now;
    let mut placed_at = None;
    sim.run_for(Duration::from_secs(10), |sim| {
        if placed_at.is_none() && !sim.placing.is_empty() {
            placed_at = Some(sim.now);
        }
    });
    let waited = placed_at.unwrap() - died;
    assert!(
        waited >= DEFAULT_RESCHEDULE_GRACE,
        "replaced after {waited:?}"
    );
    assert_eq!(sim.serving(), 3);
    assert!(sim.replicas.iter().filter(|r| r.node == victim).count() == 1);
}

#[test]
fn a_node_that_flaps_back_within_the_grace_period_is_not_emptied() {
    let mut sim = settled(3);
    let victim = sim.replicas[0].node.clone();
    sim.dead.insert(victim.clone());
    sim.run_for(Duration::from_secs(2), |_| {});
    sim.dead.remove(&victim);
    sim.run_for(Duration::from_secs(10), |_| {});
    assert!(sim.placing.is_empty());
    assert_eq!(sim.replicas.len(), 3, "nothing was placed or stopped");
}

#[test]
fn after_a_node_returns_the_surplus_is_removed_by_the_rule() {
    let mut sim = settled(3);
    let victim = sim.replicas[0].node.clone();
    sim.dead.insert(victim.clone());
    sim.run_for(Duration::from_secs(8), |_| {});
    assert_eq!(sim.serving(), 3);
    sim.dead.remove(&victim);
    sim.run_for(Duration::from_secs(5), |sim| {
        assert!(sim.serving() >= 3);
    });
    assert_eq!(sim.all_copies(), 3);
    // The rule: per slot, the copy on the smaller node id stays.
    let mut slots: BTreeMap<u32, usize> = BTreeMap::new();
    for replica in sim.replicas.iter().filter(|r| r.stopping_since.is_none()) {
        *slots.entry(replica.slot).or_default() += 1;
    }
    assert!(slots.values().all(|n| *n == 1), "{slots:?}");
}

#[test]
fn two_sides_of_a_healed_partition_agree_on_which_copies_stay() {
    // Each side's reconciler saw the other's copies vanish and replaced them; after the
    // heal both sides compute the same stops.
    let observed: Vec<Observed> = ["node-b", "node-a", "node-c", "node-d"]
        .iter()
        .enumerate()
        .map(|(i, node)| Observed {
            node_id: node.to_string(),
            placement_id: format!("web-r1-{}", i % 2),
            release: 1,
            slot: (i % 2) as u32,
            state: ContainerState::Running,
            health: ContainerHealth::Healthy,
            detail: None,
        })
        .collect();
    let desired = Desired {
        app: "web".into(),
        release: 1,
        replicas: 2,
        max_surge: 1,
        health_timeout: Duration::from_secs(60),
        previous: None,
    };
    let now = Instant::now();
    let mut stops = Vec::new();
    for order in [observed.clone(), observed.iter().rev().cloned().collect()] {
        let mut reconciler = Reconciler::new(ReconcileConfig::default());
        let state = AppState {
            observed: order,
            ..AppState::default()
        };
        let mut actions = reconciler.reconcile(now, &desired, &state);
        actions.sort_by_key(|a| format!("{a:?}"));
        stops.push(actions);
    }
    assert_eq!(stops[0], stops[1]);
    let stopped: Vec<&str> = stops[0]
        .iter()
        .map(|a| match a {
            Action::Stop { node_id, .. } => node_id.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(stopped, ["node-c", "node-d"]);
}

#[test]
fn scaling_up_and_down_reaches_the_count_without_touching_the_others() {
    let mut sim = settled(3);
    sim.desired.replicas = 5;
    sim.run_for(Duration::from_secs(3), |_| {});
    assert_eq!(sim.serving(), 5);
    let before: Vec<(String, u32)> = sim
        .replicas
        .iter()
        .filter(|r| r.slot < 2)
        .map(|r| (r.node.clone(), r.slot))
        .collect();
    sim.desired.replicas = 2;
    sim.run_for(Duration::from_secs(3), |sim| assert!(sim.serving() >= 2));
    assert_eq!(sim.all_copies(), 2);
    let after: Vec<(String, u32)> = sim
        .replicas
        .iter()
        .filter(|r| r.stopping_since.is_none())
        .map(|r| (r.node.clone(), r.slot))
        .collect();
    assert_eq!(before, after, "slots 0 and 1 stay where they were");
}

#[test]
fn draining_a_node_moves_its_replicas_away_without_dropping_below_desired() {
    let mut sim = settled(3);
    let drained = sim.replicas[1].node.clone();
    sim.draining.insert(drained.clone());
    sim.run_for(Duration::from_secs(10), |sim| {
        assert!(sim.serving() >= 3, "serving dropped to {}", sim.serving());
    });
    assert!(
        sim.replicas
            .iter()
            .all(|r| r.node != drained || r.stopping_since.is_some()),
        "the drained node still runs a replica"
    );
    assert_eq!(sim.all_copies(), 3);
}

#[test]
fn a_thousand_nodes_with_churn_converge_to_the_desired_count_for_every_app() {
    // ONE simulated cluster: 1,000 nodes, 200 apps of 3 replicas placed by the real
    // scheduler, each app reconciled by its own reconciler node (rendezvous over live,
    // non-draining nodes, as the driver picks it). Then exactly 100 distinct nodes die and
    // 20 other distinct nodes drain, all of them nodes that run replicas. Every app ends
    // with exactly its 3 replicas, one per slot, healthy, on live non-draining nodes, and
    // no app ever has more than `replicas + max_surge` copies.
    use std::hash::{Hash, Hasher};

    use rand::seq::SliceRandom;

    use crate::control::scheduler::{self, Needs, NodeCandidate};

    const NODES: usize = 1000;
    const APPS: usize = 200;
    const REPLICAS: u32 = 3;
    const MAX_SURGE: u32 = 1;
    const DEAD: usize = 100;
    const DRAINING: usize = 20;
    const NEEDS: Needs = Needs {
        cpu_millis: 100,
        mem_bytes: 32 << 20,
    };

    struct Replica {
        app: usize,
        node: String,
        placement_id: String,
        slot: u32,
        born: Instant,
        stopping_since: Option<Instant>,
    }

    struct Cluster {
        now: Instant,
        nodes: Vec<String>,
        dead: BTreeSet<String>,
        draining: BTreeSet<String>,
        copies: Vec<Replica>,
        /// Placed but not yet in gossip: (visible at, copy).
        placing: Vec<(Instant, Replica)>,
        desired: Vec<Desired>,
        /// Per app: its reconciler node and that node's reconciler.
        reconcilers: Vec<(String, Reconciler)>,
        rng: StdRng,
        next_placement: u64,
    }

    /// Highest-random-weight owner of `app` among live, non-draining nodes.
    fn owner(
        app: &str,
        nodes: &[String],
        dead: &BTreeSet<String>,
        draining: &BTreeSet<String>,
    ) -> String {
        nodes
            .iter()
            .filter(|n| !dead.contains(*n) && !draining.contains(*n))
            .max_by_key(|n| {
                let mut hasher = std::hash::DefaultHasher::new();
                (app, n.as_str()).hash(&mut hasher);
                hasher.finish()
            })
            .unwrap()
            .clone()
    }

    impl Cluster {
        fn healthy(&self, copy: &Replica) -> bool {
            copy.stopping_since.is_none()
                && self.now.saturating_duration_since(copy.born) >= HEALTHY_AFTER
        }

        /// Per app, the copies that count against its surge budget: visible on live nodes
        /// and not stopping, or still being placed on a live node.
        fn alive_copies(&self) -> Vec<usize> {
            let mut alive = vec![0; self.desired.len()];
            let visible = self.copies.iter().filter(|c| c.stopping_since.is_none());
            for c in visible.chain(self.placing.iter().map(|(_, c)| c)) {
                if !self.dead.contains(&c.node) {
                    alive[c.app] += 1;
                }
            }
            alive
        }

        /// Moves reconciler roles whose node died or drains to the new owner, which
        /// starts with no memory (as a node taking the role over does).
        fn elect(&mut self) -> usize {
            let mut moved = 0;
            for app in 0..self.desired.len() {
                let owner = owner(
                    &self.desired[app].app,
                    &self.nodes,
                    &self.dead,
                    &self.draining,
                );
                if self.reconcilers[app].0 != owner {
                    self.reconcilers[app] = (owner, Reconciler::new(ReconcileConfig::default()));
                    moved += 1;
                }
            }
            moved
        }

        fn place(&mut self, app: usize, slot: u32) {
            let mut per_node: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for copy in self
                .copies
                .iter()
                .chain(self.placing.iter().map(|(_, c)| c))
            {
                if copy.stopping_since.is_none() {
                    let entry = per_node.entry(copy.node.as_str()).or_default();
                    entry.0 += 1;
                    entry.1 += usize::from(copy.app == app);
                }
            }
            let candidates: Vec<NodeCandidate> = self
                .nodes
                .iter()
                .map(|node| {
                    let (containers, of_app) =
                        per_node.get(node.as_str()).copied().unwrap_or_default();
                    NodeCandidate {
                        node_id: node.clone(),
                        live: !self.dead.contains(node),
                        draining: self.draining.contains(node),
                        cpu_capacity_millis: 4_000,
                        mem_capacity_bytes: 8 << 30,
                        reserved_cpu_millis: containers as u64 * NEEDS.cpu_millis,
                        reserved_mem_bytes: containers as u64 * NEEDS.mem_bytes,
                        cpu_usage_pct: 0.0,
                        mem_available_bytes: 8 << 30,
                        containers,
                        replicas_of_app: of_app,
                    }
                })
                .collect();
            let plans = scheduler::plan(&candidates, NEEDS, slot, 1, &mut self.rng).unwrap();
            let node = plans[0].candidates[0].clone();
            self.next_placement += 1;
            let placement_id = format!(
                "{}-r{}-s{slot}-p{}",
                self.desired[app].app, self.desired[app].release, self.next_placement
            );
            self.placing.push((
                self.now + SHOWS_AFTER,
                Replica {
                    app,
                    node,
                    placement_id,
                    slot,
                    born: self.now,
                    stopping_since: None,
                },
            ));
        }

        fn step(&mut self) {
            self.now += TICK;
            let now = self.now;
            let (visible, waiting): (Vec<_>, Vec<_>) =
                self.placing.drain(..).partition(|(at, _)| *at <= now);
            self.placing = waiting;
            for (_, mut copy) in visible {
                copy.born = now;
                self.copies.push(copy);
            }
            self.copies.retain(|c| {
                c.stopping_since.is_none_or(|since| {
                    now.saturating_duration_since(since) < Duration::from_secs(1)
                })
            });
            let mut observed: Vec<Vec<Observed>> = vec![Vec::new(); self.desired.len()];
            for c in self.copies.iter().filter(|c| !self.dead.contains(&c.node)) {
                observed[c.app].push(Observed {
                    node_id: c.node.clone(),
                    placement_id: c.placement_id.clone(),
                    release: self.desired[c.app].release,
                    slot: c.slot,
                    state: if c.stopping_since.is_some() {
                        ContainerState::Stopping
                    } else {
                        ContainerState::Running
                    },
                    health: if self.healthy(c) {
                        ContainerHealth::Healthy
                    } else {
                        ContainerHealth::Unknown
                    },
                    detail: None,
                });
            }
            let mut pending: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); self.desired.len()];
            for (_, c) in self
                .placing
                .iter()
                .filter(|(_, c)| !self.dead.contains(&c.node))
            {
                pending[c.app].insert(c.slot);
            }
            for (app, (observed, pending)) in observed.into_iter().zip(pending).enumerate() {
                let state = AppState {
                    observed,
                    pending,
                    draining: self.draining.clone(),
                };
                let desired = self.desired[app].clone();
                let actions = self.reconcilers[app].1.reconcile(now, &desired, &state);
                for action in actions {
                    match action {
                        Action::Place { slot } => self.place(app, slot),
                        Action::Stop {
                            node_id,
                            placement_id,
                            ..
                        } => {
                            for copy in &mut self.copies {
                                if copy.app == app
                                    && copy.node == node_id
                                    && copy.placement_id == placement_id
                                    && copy.stopping_since.is_none()
                                {
                                    copy.stopping_since = Some(now);
                                }
                            }
                        }
                        Action::Fail {
                            release, reason, ..
                        } => {
                            panic!("{}: release {release} failed: {reason}", desired.app)
                        }
                    }
                }
            }
        }

        fn run_for(&mut self, duration: Duration) {
            let until = self.now + duration;
            while self.now < until {
                self.step();
                for (app, alive) in self.alive_copies().into_iter().enumerate() {
                    assert!(
                        alive <= (REPLICAS + MAX_SURGE) as usize,
                        "{}: {alive} copies at once, max_surge {MAX_SURGE}",
                        self.desired[app].app
                    );
                }
            }
        }

        /// For each app, its copies that serve: healthy, on live, non-draining nodes.
        fn serving(&self, app: usize) -> Vec<&Replica> {
            self.copies
                .iter()
                .filter(|c| {
                    c.app == app
                        && !self.dead.contains(&c.node)
                        && !self.draining.contains(&c.node)
                        && self.healthy(c)
                })
                .collect()
        }

        fn assert_every_app_has_exactly_its_replicas(&self, when: &str) {
            for app in 0..self.desired.len() {
                let name = &self.desired[app].app;
                let serving = self.serving(app);
                let slots: Vec<u32> = {
                    let mut slots: Vec<u32> = serving.iter().map(|c| c.slot).collect();
                    slots.sort_unstable();
                    slots
                };
                assert_eq!(
                    slots,
                    vec![0, 1, 2],
                    "{when}: {name} serves slots {slots:?}"
                );
                // Nothing else is left running for it: not on a draining node, not placing.
                let others = self
                    .copies
                    .iter()
                    .filter(|c| {
                        c.app == app && !self.dead.contains(&c.node) && c.stopping_since.is_none()
                    })
                    .count();
                assert_eq!(
                    others, REPLICAS as usize,
                    "{when}: {name} runs {others} copies"
                );
                assert!(
                    self.placing.iter().all(|(_, c)| c.app != app),
                    "{when}: {name} still placing"
                );
            }
        }
    }

    let nodes: Vec<String> = (0..NODES).map(|n| format!("node-{n:04}")).collect();
    let desired: Vec<Desired> = (0..APPS)
        .map(|i| Desired {
            app: format!("app-{i:03}"),
            release: 1,
            replicas: REPLICAS,
            max_surge: MAX_SURGE,
            health_timeout: Duration::from_secs(10),
            previous: None,
        })
        .collect();
    let mut cluster = Cluster {
        now: Instant::now(),
        reconcilers: desired
            .iter()
            .map(|d| {
                (
                    owner(&d.app, &nodes, &BTreeSet::new(), &BTreeSet::new()),
                    Reconciler::new(ReconcileConfig::default()),
                )
            })
            .collect(),
        nodes,
        dead: BTreeSet::new(),
        draining: BTreeSet::new(),
        copies: Vec::new(),
        placing: Vec::new(),
        desired,
        rng: StdRng::seed_from_u64(11),
        next_placement: 0,
    };
    cluster.run_for(Duration::from_secs(5));
    cluster.assert_every_app_has_exactly_its_replicas("first placement");

    // Exactly 100 distinct dead and 20 other distinct draining nodes, each running at
    // least one replica, so every one of them costs some app a copy.
    let mut occupied: Vec<String> = cluster
        .copies
        .iter()
        .map(|c| c.node.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        occupied.len() >= DEAD + DRAINING,
        "{} nodes run replicas",
        occupied.len()
    );
    occupied.shuffle(&mut cluster.rng);
    cluster.dead = occupied[..DEAD].iter().cloned().collect();
    cluster.draining = occupied[DEAD..DEAD + DRAINING].iter().cloned().collect();
    assert_eq!(cluster.dead.len(), DEAD);
    assert_eq!(cluster.draining.len(), DRAINING);
    assert!(cluster.dead.is_disjoint(&cluster.draining));
    let lost = cluster
        .copies
        .iter()
        .filter(|c| cluster.dead.contains(&c.node) || cluster.draining.contains(&c.node))
        .count();
    let hit: BTreeSet<usize> = cluster
        .copies
        .iter()
        .filter(|c| cluster.dead.contains(&c.node) || cluster.draining.contains(&c.node))
        .map(|c| c.app)
        .collect();
    assert!(lost >= DEAD + DRAINING);
    let moved = cluster.elect();
    println!(
        "{lost} replicas of {} apps on dead or draining nodes; {moved} reconciler roles moved",
        hit.len()
    );

    cluster.run_for(Duration::from_secs(20));
    cluster.assert_every_app_has_exactly_its_replicas("after 100 deaths and 20 drains");
}

#[test]
fn a_reconciler_taking_over_a_running_release_waits_the_grace_before_replacing() {
    // The role moved to a node with no memory while one replica's node is away (a
    // restarting agent's new generation not yet live): no duplicate before the grace.
    let mut sim = settled(3);
    let away = sim.replicas[0].node.clone();
    sim.dead.insert(away.clone());
    sim.reconciler = Reconciler::new(ReconcileConfig::default());
    sim.run_for(Duration::from_secs(2), |sim| {
        assert!(sim.placing.is_empty(), "placed during the grace");
    });
    sim.dead.remove(&away);
    sim.run_for(Duration::from_secs(5), |_| {});
    assert_eq!(
        sim.replicas.len(),
        3,
        "nothing placed: the node came back in time"
    );
}

#[test]
fn a_settled_app_needs_no_wake_up() {
    let sim = settled(3);
    assert_eq!(sim.reconciler.next_deadline(), None);
}

#[test]
fn the_deadline_is_the_end_of_a_vanished_replicas_grace() {
    let mut sim = settled(3);
    let last_seen = sim.now;
    let victim = sim.replicas[0].node.clone();
    sim.dead.insert(victim);
    sim.step();
    assert!(sim.placing.is_empty());
    assert_eq!(
        sim.reconciler.next_deadline(),
        Some(last_seen + DEFAULT_RESCHEDULE_GRACE)
    );
}

#[test]
fn the_deadline_is_a_new_replicas_health_timeout_then_its_settle_window() {
    let mut sim = settled(1);
    sim.deploy(2);
    let mut appeared = None;
    let mut routable = None;
    for _ in 0..30 {
        sim.step();
        let new = sim.replicas.iter().find(|r| r.release == 2).cloned();
        if let Some(new) = new {
            if appeared.is_none() {
                appeared = Some(sim.now);
                assert_eq!(
                    sim.reconciler.next_deadline(),
                    Some(sim.now + sim.desired.health_timeout),
                    "a new replica, not yet healthy"
                );
            }
            if routable.is_none() && sim.healthy(&new) {
                routable = Some(sim.now);
                assert_eq!(
                    sim.reconciler.next_deadline(),
                    Some(sim.now + DEFAULT_ROUTE_SETTLE),
                    "healthy: the old one goes once the route settled"
                );
            }
        }
    }
    assert!(appeared.is_some() && routable.is_some());
    assert_eq!(sim.all_copies(), 1, "the old replica was retired");
}

/// The scenarios above, with the reconciler called only on a change or at its deadline:
/// if `next_deadline` missed a moment that matters, these would stall.
#[test]
fn called_only_on_changes_and_at_its_deadline_the_reconciler_reaches_the_same_ends() {
    // A rolling deploy.
    let mut sim = settled(3);
    sim.event_driven = true;
    sim.deploy(2);
    sim.run_for(Duration::from_secs(20), |sim| assert!(sim.serving() >= 3));
    assert_eq!((sim.current_copies(), sim.all_copies()), (3, 3));

    // A dead node's replica replaced after the grace.
    let mut sim = settled(3);
    sim.event_driven = true;
    sim.dead.insert(sim.replicas[0].node.clone());
    sim.run_for(Duration::from_secs(10), |_| {});
    assert_eq!(sim.serving(), 3);

    // A release that never turns healthy fails at its health timeout.
    let mut sim = settled(2);
    sim.event_driven = true;
    sim.desired.health_timeout = Duration::from_secs(4);
    sim.deploy(2);
    let started = sim.now;
    let mut failed_at = None;
    for _ in 0..100 {
        sim.step();
        for replica in &mut sim.replicas {
            if replica.release == 2 {
                replica.born = sim.now;
            }
        }
        if failed_at.is_none() && !sim.failures.is_empty() {
            failed_at = Some(sim.now);
        }
    }
    let waited = failed_at.unwrap() - started;
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    assert_eq!(sim.desired.release, 1);

    // And a quiet cluster is not reconciled at every tick.
    let mut sim = settled(3);
    sim.event_driven = true;
    let before = sim.calls;
    sim.run_for(Duration::from_secs(10), |_| {});
    assert!(sim.calls - before <= 1, "{} calls", sim.calls - before);
}
