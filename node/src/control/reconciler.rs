//! The reconciler: for one app, compares what should run (the current release, so many
//! replicas) with what gossip says runs, and decides what to place and what to stop.
//!
//! Pure and deterministic: inputs are plain data and `now`, outputs are [`Action`]s; it
//! remembers only a few timestamps between calls (when a replica slot was last seen, when
//! a new replica first appeared and first turned healthy). The driver
//! ([`crate::control::reconciler_driver`]) runs it on the app's reconciler node (one per app, chosen by
//! rendezvous hashing over live, non-draining nodes), carries the actions out and calls
//! it again on every gossip change, so it can run 1,000 simulated nodes in a test.
//!
//! The rules, in the order they apply:
//! 1. **Retiring** replicas are those of another release than the current one, and those
//!    on a draining node. They keep serving until their replacements do.
//! 2. **Surplus rule.** Of the current release's replicas on non-draining nodes, each slot
//!    `0..replicas` keeps one copy: the routable one, then a running one, then the one on
//!    the node with the smallest id. Every other copy of a slot (two sides of a healed
//!    partition both replaced it, or its node came back) is stopped once the kept copy is
//!    routable; every slot at or above the desired count is stopped (scale down).
//! 3. **Missing slots** are placed. A slot that had a copy which vanished (its node died
//!    or was cut off) waits [`ReconcileConfig::reschedule_grace`] first, so a node that
//!    misses a few heartbeats is not emptied at once. A slot whose only copy is retiring
//!    is placed at once.
//! 4. **Surge.** While retiring replicas are alive, at most `replicas + max_surge` copies
//!    exist (current, pending and retiring together): one new replica at a time by
//!    default. A retiring replica is stopped only when enough current ones have been
//!    routable for [`ReconcileConfig::route_settle`] (so the ingresses route to them) to
//!    keep `replicas` serving without it; unhealthy retiring replicas go first.
//! 5. **Failure.** Until a release has had all its replicas routable at once, it is
//!    rolling out. A new replica that exits, or is not healthy within the manifest's
//!    `rollout.health_timeout`, fails the rollout: [`Action::Fail`] with the reason and,
//!    while the previous release still serves, the release to go back to (the driver
//!    records it; the old replicas never stopped serving). With nothing to go back to the
//!    failure is only reported. Once established, crashes are the supervisor's business
//!    (restart with backoff), not a reason to roll back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::{ContainerHealth, ContainerState};
use tokio::time::Instant;

/// Tunables of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// How long a replica slot whose copy vanished (dead or unreachable node) waits before
    /// it is placed again elsewhere.
    pub reschedule_grace: Duration,
    /// How long a new replica must have been routable before a retiring one is stopped:
    /// time for every ingress to learn the new route through gossip.
    pub route_settle: Duration,
}

pub const DEFAULT_RESCHEDULE_GRACE: Duration = Duration::from_secs(3);
pub const DEFAULT_ROUTE_SETTLE: Duration = Duration::from_millis(1_000);

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            reschedule_grace: DEFAULT_RESCHEDULE_GRACE,
            route_settle: DEFAULT_ROUTE_SETTLE,
        }
    }
}

/// What should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub app: String,
    pub release: u64,
    pub replicas: u32,
    pub max_surge: u32,
    pub health_timeout: Duration,
    /// The release to go back to if this one fails to roll out (the newest earlier
    /// release that did not fail), if any.
    pub previous: Option<u64>,
}

/// One replica as gossip shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub node_id: String,
    pub placement_id: String,
    pub release: u64,
    pub slot: u32,
    pub state: ContainerState,
    pub health: ContainerHealth,
    pub detail: Option<String>,
}

impl Observed {
    fn routable(&self) -> bool {
        self.state == ContainerState::Running && self.health == ContainerHealth::Healthy
    }

    fn key(&self) -> (String, String) {
        (self.node_id.clone(), self.placement_id.clone())
    }
}

/// Everything the reconciler looks at for one app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppState {
    /// The app's replicas on live nodes.
    pub observed: Vec<Observed>,
    /// Slots of the current release placed on a node but not yet in gossip.
    pub pending: BTreeSet<u32>,
    /// Live nodes that are draining.
    pub draining: BTreeSet<String>,
}

/// What to do.
#[must_use = "an action does nothing unless the driver carries it out"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Place slot `slot` of the current release on some node (the scheduler picks it).
    Place { slot: u32 },
    /// Stop one replica, gracefully (out of the routes first).
    Stop {
        node_id: String,
        placement_id: String,
        reason: String,
    },
    /// The current release cannot roll out: record the failure and, if there is one, go
    /// back to `rollback_to`.
    Fail {
        release: u64,
        reason: String,
        rollback_to: Option<u64>,
    },
}

/// Per-app memory between calls.
#[derive(Debug, Default)]
struct Memory {
    release: u64,
    /// When each slot of the current release last had a copy on a non-draining node.
    slot_seen: BTreeMap<u32, Instant>,
    /// When each replica of the current release first showed up, and first was routable.
    first_seen: BTreeMap<(String, String), Instant>,
    routable_since: BTreeMap<(String, String), Instant>,
    /// The current release has had every replica routable at once.
    established: bool,
    /// The earliest instant after the last call at which a call with the same inputs
    /// would decide differently (a grace period, a health timeout or a settle window
    /// ends), if any.
    next_deadline: Option<Instant>,
}

/// The reconciler of every app this node is responsible for.
#[derive(Debug, Default)]
pub struct Reconciler {
    config: ReconcileConfig,
    apps: BTreeMap<String, Memory>,
}

impl Reconciler {
    pub fn new(config: ReconcileConfig) -> Reconciler {
        Reconciler {
            config,
            apps: BTreeMap::new(),
        }
    }

    /// Forgets apps this node no longer reconciles: if it gets one back, it starts over
    /// (no rollout verdict from stale memory).
    pub fn retain(&mut self, apps: &BTreeSet<String>) {
        self.apps.retain(|app, _| apps.contains(app));
    }

    /// The earliest instant at which a decision could change with no new input: a vanished
    /// slot's grace ends, a new replica's health timeout runs out, or a routable one has
    /// settled long enough to retire an old one. `None` when only a change of the inputs
    /// (gossip, the catalog) can change anything. The driver sleeps until then, or until
    /// an input changes, instead of polling.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.apps
            .values()
            .filter_map(|memory| memory.next_deadline)
            .min()
    }

    /// Whether `app`'s current release has been fully routable at once (test and status
    /// helper).
    pub fn is_established(&self, app: &str) -> bool {
        self.apps.get(app).is_some_and(|memory| memory.established)
    }

    /// Decides what to do for one app now.
    #[must_use = "the actions do nothing unless the driver carries them out"]
    pub fn reconcile(&mut self, now: Instant, desired: &Desired, state: &AppState) -> Vec<Action> {
        let config = self.config;
        let memory = self.apps.entry(desired.app.clone()).or_default();
        if memory.release != desired.release {
            *memory = Memory {
                release: desired.release,
                ..Memory::default()
            };
            // Taking over a release that already runs (the previous reconciler died, or
            // the role moved while a node rejoined): a slot missing now may be on a node
            // that is only flapping, so it waits the grace period like any vanished copy.
            // A new release has no copy yet and is placed at once.
            if state.observed.iter().any(|o| o.release == desired.release) {
                for slot in 0..desired.replicas {
                    memory.slot_seen.insert(slot, now);
                }
            }
        }
        let replicas = desired.replicas;
        let live: Vec<&Observed> = state
            .observed
            .iter()
            .filter(|o| o.state != ContainerState::Stopping)
            .collect();
        let (current, retiring): (Vec<&Observed>, Vec<&Observed>) = live
            .iter()
            .partition(|o| o.release == desired.release && !state.draining.contains(&o.node_id));

        // Timestamps of the current release's replicas.
        let present: BTreeSet<(String, String)> = current.iter().map(|o| o.key()).collect();
        memory.first_seen.retain(|key, _| present.contains(key));
        memory.routable_since.retain(|key, _| present.contains(key));
        for replica in &current {
            memory.first_seen.entry(replica.key()).or_insert(now);
            if replica.routable() {
                memory.routable_since.entry(replica.key()).or_insert(now);
            } else {
                memory.routable_since.remove(&replica.key());
            }
        }

        let mut actions = Vec::new();

        // Rule 2: one copy per slot, nothing at or above the desired count.
        let mut by_slot: BTreeMap<u32, Vec<&Observed>> = BTreeMap::new();
        for replica in &current {
            by_slot.entry(replica.slot).or_default().push(replica);
        }
        let mut kept: BTreeMap<u32, &Observed> = BTreeMap::new();
        for (slot, mut copies) in by_slot {
            if slot >= replicas {
                for copy in copies {
                    actions.push(stop(copy, format!("scaled down to {replicas}")));
                }
                continue;
            }
            copies.sort_by(|a, b| {
                (
                    !a.routable(),
                    a.state != ContainerState::Running,
                    &a.node_id,
                )
                    .cmp(&(
                        !b.routable(),
                        b.state != ContainerState::Running,
                        &b.node_id,
                    ))
            });
            let keeper = copies[0];
            if keeper.routable() {
                for copy in &copies[1..] {
                    actions.push(stop(
                        copy,
                        format!(
                            "surplus copy of replica {slot}: {} on {} keeps it",
                            keeper.placement_id, keeper.node_id
                        ),
                    ));
                }
            }
            memory.slot_seen.insert(slot, now);
            kept.insert(slot, keeper);
        }
        memory.slot_seen.retain(|slot, _| *slot < replicas);

        // Rule 5: a rollout that cannot finish.
        let all_routable = replicas > 0
            && (0..replicas).all(|slot| kept.get(&slot).is_some_and(|copy| copy.routable()));
        if all_routable {
            memory.established = true;
        }
        if !memory.established
            && let Some(reason) = rollout_failure(&kept, memory, now, desired.health_timeout)
        {
            // Going back only makes sense while the previous release still serves: once
            // its replicas are gone (or this node took over with no memory of the
            // rollout), a crash is reported and the supervisor keeps restarting it.
            let previous_serves = retiring
                .iter()
                .any(|o| Some(o.release) == desired.previous && o.routable());
            let rollback_to = desired.previous.filter(|_| previous_serves);
            actions.push(Action::Fail {
                release: desired.release,
                reason,
                rollback_to,
            });
            if rollback_to.is_some() {
                // What happens next depends on the catalog (the rollback), not on time.
                memory.next_deadline = None;
                return actions;
            }
        }

        // Rules 3 and 4: place missing slots within the surge budget.
        let retiring_alive = retiring.len() as u32;
        let retiring_slots: BTreeSet<u32> = retiring
            .iter()
            .filter(|o| o.release == desired.release)
            .map(|o| o.slot)
            .collect();
        let missing: Vec<u32> = (0..replicas)
            .filter(|slot| !kept.contains_key(slot) && !state.pending.contains(slot))
            .filter(|slot| {
                retiring_slots.contains(slot)
                    || memory.slot_seen.get(slot).is_none_or(|seen| {
                        now.saturating_duration_since(*seen) >= config.reschedule_grace
                    })
            })
            .collect();
        let copies = kept.len() as u32 + state.pending.len() as u32 + retiring_alive;
        let budget = if retiring_alive == 0 {
            u32::MAX
        } else {
            (replicas + desired.max_surge.max(1)).saturating_sub(copies)
        };
        for slot in missing.into_iter().take(budget as usize) {
            actions.push(Action::Place { slot });
        }

        // Rule 4: retire what the settled new replicas replace.
        let settled = kept
            .values()
            .filter(|copy| {
                memory.routable_since.get(&copy.key()).is_some_and(|since| {
                    now.saturating_duration_since(*since) >= config.route_settle
                })
            })
            .count() as u32;
        let excess = (settled + retiring_alive).saturating_sub(replicas);
        let mut order = retiring.clone();
        order.sort_by(|a, b| {
            (
                a.routable(),
                a.release,
                std::cmp::Reverse(a.slot),
                &a.node_id,
            )
                .cmp(&(
                    b.routable(),
                    b.release,
                    std::cmp::Reverse(b.slot),
                    &b.node_id,
                ))
        });
        for replica in order.into_iter().take(excess as usize) {
            let reason = if replica.release != desired.release {
                format!("replaced by release {}", desired.release)
            } else {
                format!("{} is draining", replica.node_id)
            };
            actions.push(stop(replica, reason));
        }

        // When this decision could change with no new input.
        let waiting_grace = (0..replicas)
            .filter(|slot| {
                !kept.contains_key(slot)
                    && !state.pending.contains(slot)
                    && !retiring_slots.contains(slot)
            })
            .filter_map(|slot| memory.slot_seen.get(&slot))
            .map(|seen| *seen + config.reschedule_grace);
        let health_timeouts = kept
            .values()
            .filter(|copy| {
                !memory.established && !copy.routable() && copy.state != ContainerState::Exited
            })
            .filter_map(|copy| memory.first_seen.get(&copy.key()))
            .map(|since| *since + desired.health_timeout);
        // Settling only matters while there is something to retire.
        let settles = kept
            .values()
            .filter(|_| !retiring.is_empty())
            .filter_map(|copy| memory.routable_since.get(&copy.key()))
            .map(|since| *since + config.route_settle);
        memory.next_deadline = waiting_grace
            .chain(health_timeouts)
            .chain(settles)
            .filter(|deadline| *deadline > now)
            .min();
        actions
    }
}

fn stop(replica: &Observed, reason: String) -> Action {
    Action::Stop {
        node_id: replica.node_id.clone(),
        placement_id: replica.placement_id.clone(),
        reason,
    }
}

/// Why the rollout of the current release cannot finish, if it cannot: a new replica
/// exited, or has not been healthy for the whole health timeout since it appeared.
fn rollout_failure(
    kept: &BTreeMap<u32, &Observed>,
    memory: &Memory,
    now: Instant,
    health_timeout: Duration,
) -> Option<String> {
    kept.values().find_map(|copy| {
        let detail = copy.detail.as_deref().unwrap_or("no detail");
        if copy.state == ContainerState::Exited {
            return Some(format!(
                "replica {} on {} exited: {detail}",
                copy.slot, copy.node_id
            ));
        }
        let since = memory.first_seen.get(&copy.key())?;
        let waited = now.saturating_duration_since(*since);
        (!copy.routable() && waited >= health_timeout).then(|| {
            format!(
                "replica {} on {} not healthy after {} s: {detail}",
                copy.slot,
                copy.node_id,
                health_timeout.as_secs()
            )
        })
    })
}

#[cfg(test)]
mod tests;
