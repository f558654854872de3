//! The driver's pure core: which apps this node reconciles (the election), what to send
//! for them, and what it remembers between rounds (placements in flight, stops sent,
//! failures published).
//!
//! Sans-I/O in the style of quinn-proto: time arrives as `now`, randomness from the seeded
//! RNG it was built with; it never sleeps, sends or awaits. Its methods are:
//! - [`DriverCore::plan`], the input of a round (the view and the catalog's apps): returns
//!   the [`DriverAction`]s to carry out;
//! - [`DriverCore::handle_outcome`], the input of what became of a sent action;
//! - [`DriverCore::next_deadline`], when to call [`DriverCore::plan`] again if nothing
//!   changes before.

use crate::control::candidates::candidates_for;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use proto::api::{PlacementRequest, StopRequest};
use proto::catalog::AppRecord;
use proto::gossip::RolloutFailure;
use proto::tenancy::Isolation;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::cluster::membership::ClusterView;
use crate::control::catalog::keepers;
use crate::control::reconciler::{
    Action, AppState, Desired, Observed, ReconcileConfig, Reconciler,
};
use crate::control::scheduler::{Needs, NodeCandidate, plan};

/// How long a placement that a node admitted may take to show up in gossip before it is
/// tried again (pulling the bundle, unpacking, starting the container).
pub const PLACEMENT_PATIENCE: Duration = Duration::from_secs(60);
/// A stop request is sent again if the replica still shows after this.
pub const STOP_RESEND: Duration = Duration::from_secs(5);
/// A placement that no node accepted (or that none could take) is tried again after this,
/// the period the driver used to poll at.
pub const PLACE_RETRY: Duration = Duration::from_secs(1);

pub fn placement_id(app: &str, release: u64, replica: u32) -> String {
    format!("{app}-r{release}-{replica}")
}

/// One app as the catalog holds it: its record and the release to go back to (the newest
/// earlier one that did not fail).
#[derive(Debug, Clone, PartialEq)]
pub struct AppInput {
    pub record: AppRecord,
    pub previous: Option<u64>,
    /// How the app's tenant runs its replicas.
    pub isolation: Isolation,
}

/// A node to send a placement to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node_id: String,
    pub api_addr: SocketAddr,
}

/// What the driver must carry out.
#[must_use = "an action does nothing unless the driver carries it out"]
#[derive(Debug, Clone, PartialEq)]
pub enum DriverAction {
    /// Ask the targets, in order, to run the replica until one admits it; report
    /// [`Outcome::Placed`] or [`Outcome::Refused`].
    Place {
        // Boxed: a release with its manifest dwarfs the other variants.
        request: Box<PlacementRequest>,
        targets: Vec<Target>,
    },
    /// Ask `node_id` to stop one replica (this node directly, another through `api_addr`).
    /// No outcome: the stop is sent again if the replica still shows after
    /// [`STOP_RESEND`].
    Stop {
        node_id: String,
        api_addr: Option<SocketAddr>,
        request: StopRequest,
    },
    /// Record that `failed` did not roll out and go back to `previous`; report
    /// [`Outcome::RolledBack`].
    RollBack {
        app: String,
        failed: u64,
        previous: u64,
        reason: String,
    },
    /// Publish why the app's current release cannot run.
    PublishFailure(RolloutFailure),
    /// Withdraw the failure this node published for `app`.
    ClearFailure { app: String },
}

/// What became of a sent action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Placed {
        placement_id: String,
        node_id: String,
    },
    /// No target admitted the placement (each refused, was unreachable or missed its
    /// deadline).
    Refused {
        placement_id: String,
        reason: String,
    },
    RolledBack {
        app: String,
        failed: u64,
        result: Result<(), String>,
    },
}

/// Where a placement is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Sent, no answer yet; `likely` is the first target, counted as occupied meanwhile.
    Sending { likely: String },
    /// Admitted by `node_id`, not yet seen in gossip.
    Admitted { node_id: String },
}

#[derive(Debug, Clone)]
struct InFlight {
    since: Instant,
    app: String,
    release: u64,
    slot: u32,
    phase: Phase,
}

impl InFlight {
    fn node(&self) -> &str {
        match &self.phase {
            Phase::Sending { likely } => likely,
            Phase::Admitted { node_id } => node_id,
        }
    }
}

/// The node rendezvous hashing picks as `app`'s reconciler: the first of the live,
/// non-draining nodes.
pub fn elected(view: &ClusterView, app: &str) -> Option<String> {
    keepers(app, &eligible(view), 1).into_iter().next()
}

fn eligible(view: &ClusterView) -> Vec<&str> {
    view.live_nodes()
        .filter(|node| !node.draining)
        .map(|node| node.node_id.as_str())
        .collect()
}

/// The driver's memory between rounds.
pub struct DriverCore {
    self_id: String,
    reconciler: Reconciler,
    /// Placements sent and not yet in gossip, by placement id.
    in_flight: BTreeMap<String, InFlight>,
    /// Placements that failed, by placement id: not sent again before the instant.
    retry_at: BTreeMap<String, Instant>,
    stops_sent: BTreeMap<(String, String), Instant>,
    /// Rollbacks sent and not yet answered: (app, failed release).
    rolling_back: BTreeSet<(String, u64)>,
    /// Why the last placement or rollback of an app failed, until one succeeds or there
    /// is nothing left to try.
    place_problems: BTreeMap<String, String>,
    rollback_problems: BTreeMap<String, String>,
    /// Apps whose failure this node published, to clear once they place again.
    failing: BTreeSet<String>,
    rng: StdRng,
}

impl DriverCore {
    pub fn new(self_id: &str, config: ReconcileConfig, rng: StdRng) -> DriverCore {
        DriverCore {
            self_id: self_id.to_string(),
            reconciler: Reconciler::new(config),
            in_flight: BTreeMap::new(),
            retry_at: BTreeMap::new(),
            stops_sent: BTreeMap::new(),
            rolling_back: BTreeSet::new(),
            place_problems: BTreeMap::new(),
            rollback_problems: BTreeMap::new(),
            failing: BTreeSet::new(),
            rng,
        }
    }

    /// The earliest instant at which [`DriverCore::plan`] could decide differently with
    /// the same view and catalog: the reconciler's deadline, a placement's patience or
    /// retry, a stop's resend. `None` when only a change can.
    pub fn next_deadline(&self) -> Option<Instant> {
        let in_flight = self
            .in_flight
            .values()
            .map(|flight| flight.since + PLACEMENT_PATIENCE);
        let stops = self.stops_sent.values().map(|sent| *sent + STOP_RESEND);
        self.reconciler
            .next_deadline()
            .into_iter()
            .chain(in_flight)
            .chain(stops)
            .chain(self.retry_at.values().copied())
            .min()
    }

    /// Whether a placement is sent or admitted and not yet in gossip (test helper).
    pub fn is_in_flight(&self, placement_id: &str) -> bool {
        self.in_flight.contains_key(placement_id)
    }

    /// Takes in what became of an action.
    pub fn handle_outcome(&mut self, now: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Placed {
                placement_id,
                node_id,
            } => {
                if let Some(flight) = self.in_flight.get_mut(&placement_id) {
                    flight.since = now;
                    flight.phase = Phase::Admitted { node_id };
                    self.place_problems.remove(&flight.app);
                }
            }
            Outcome::Refused {
                placement_id,
                reason,
            } => {
                if let Some(flight) = self.in_flight.remove(&placement_id) {
                    self.place_problems.insert(flight.app, reason);
                }
                self.retry_at.insert(placement_id, now + PLACE_RETRY);
            }
            Outcome::RolledBack {
                app,
                failed,
                result,
            } => {
                self.rolling_back.remove(&(app.clone(), failed));
                match result {
                    Ok(()) => self.rollback_problems.remove(&app),
                    Err(reason) => self.rollback_problems.insert(app, reason),
                };
            }
        }
    }

    /// One round: elects, forgets what expired, reconciles every app this node is elected
    /// for and returns what to send.
    #[must_use = "the actions do nothing unless the driver carries them out"]
    pub fn plan(
        &mut self,
        now: Instant,
        view: &ClusterView,
        apps: &[AppInput],
    ) -> Vec<DriverAction> {
        self.expire(now, view);
        let eligible = eligible(view);
        let mine: BTreeSet<String> = apps
            .iter()
            .filter(|app| app.record.release.is_some())
            .filter(|app| keepers(&app.record.name, &eligible, 1).first() == Some(&self.self_id))
            .map(|app| app.record.name.clone())
            .collect();
        self.reconciler.retain(&mine);
        let mut actions = Vec::new();
        for app in apps.iter().filter(|app| mine.contains(&app.record.name)) {
            self.plan_app(now, view, app, &mut actions);
        }
        actions
    }

    /// Drops placements that showed up in gossip, whose node left, or that waited too
    /// long, and stops and retries whose time is up.
    fn expire(&mut self, now: Instant, view: &ClusterView) {
        let live: BTreeSet<&str> = view.live_nodes().map(|n| n.node_id.as_str()).collect();
        let gossiped: BTreeSet<(&str, &str)> = view
            .containers
            .iter()
            .map(|c| (c.node_id.as_str(), c.record.id.as_str()))
            .collect();
        self.in_flight.retain(|id, flight| {
            let waited = now.saturating_duration_since(flight.since);
            match &flight.phase {
                // The answer always comes back (each call has a deadline); the patience
                // is only a backstop.
                Phase::Sending { .. } => waited < PLACEMENT_PATIENCE,
                Phase::Admitted { node_id } => {
                    waited < PLACEMENT_PATIENCE
                        && live.contains(node_id.as_str())
                        && !gossiped.contains(&(node_id.as_str(), id.as_str()))
                }
            }
        });
        self.stops_sent
            .retain(|_, sent| now.saturating_duration_since(*sent) < STOP_RESEND);
        self.retry_at.retain(|_, at| *at > now);
    }

    fn plan_app(
        &mut self,
        now: Instant,
        view: &ClusterView,
        app: &AppInput,
        actions: &mut Vec<DriverAction>,
    ) {
        let record = &app.record;
        let Some(release) = &record.release else {
            return;
        };
        let desired = Desired {
            app: record.name.clone(),
            release: release.number,
            replicas: record.replicas,
            max_surge: release
                .manifest
                .rollout
                .max_surge
                .unwrap_or(record.replicas),
            health_timeout: Duration::from_millis(release.manifest.rollout.health_timeout_ms),
            previous: app.previous,
        };
        let app_state = AppState {
            observed: view
                .containers
                .iter()
                .filter(|c| c.record.app == record.name)
                .map(|c| Observed {
                    node_id: c.node_id.clone(),
                    placement_id: c.record.id.clone(),
                    release: c.record.release,
                    slot: c.record.replica,
                    state: c.record.state,
                    health: c.record.health,
                    detail: c.record.detail.clone(),
                })
                .collect(),
            pending: self
                .in_flight
                .values()
                .filter(|f| f.app == record.name && f.release == release.number)
                .map(|f| f.slot)
                .collect(),
            draining: view
                .live_nodes()
                .filter(|node| node.draining)
                .map(|node| node.node_id.clone())
                .collect(),
        };
        let decided = self.reconciler.reconcile(now, &desired, &app_state);
        let mut wants_placement = false;
        let mut wants_rollback = false;
        let mut report_now = None;
        for action in decided {
            match action {
                Action::Place { slot } => {
                    wants_placement = true;
                    if let Some(placement) = self.place(now, view, app, slot) {
                        actions.push(placement);
                    }
                }
                Action::Stop {
                    node_id,
                    placement_id,
                    reason,
                } => {
                    let key = (node_id.clone(), placement_id.clone());
                    if self.stops_sent.contains_key(&key) {
                        continue;
                    }
                    self.stops_sent.insert(key, now);
                    let api_addr = view
                        .node(&node_id)
                        .and_then(|n| n.identity.as_ref())
                        .map(|i| i.api_addr);
                    actions.push(DriverAction::Stop {
                        node_id,
                        api_addr,
                        request: StopRequest {
                            placement_id,
                            reason,
                        },
                    });
                }
                Action::Fail {
                    release: failed,
                    reason,
                    rollback_to: Some(previous),
                } => {
                    wants_rollback = true;
                    if self.rolling_back.insert((record.name.clone(), failed)) {
                        actions.push(DriverAction::RollBack {
                            app: record.name.clone(),
                            failed,
                            previous,
                            reason,
                        });
                    }
                }
                Action::Fail {
                    reason,
                    rollback_to: None,
                    ..
                } => report_now = Some(reason),
            }
        }
        // A problem stands until an attempt succeeds, or nothing is left to attempt.
        let sending = self.in_flight.values().any(|flight| {
            flight.app == record.name && matches!(flight.phase, Phase::Sending { .. })
        });
        if !wants_placement && !sending {
            self.place_problems.remove(&record.name);
        }
        let rolling_back = self.rolling_back.iter().any(|(app, _)| *app == record.name);
        if !wants_rollback && !rolling_back {
            self.rollback_problems.remove(&record.name);
        }
        let problem = report_now
            .or_else(|| self.rollback_problems.get(&record.name).cloned())
            .or_else(|| self.place_problems.get(&record.name).cloned());
        match problem {
            Some(reason) => {
                self.failing.insert(record.name.clone());
                actions.push(DriverAction::PublishFailure(RolloutFailure {
                    app: record.name.clone(),
                    release: release.number,
                    reason,
                }));
            }
            None => {
                if self.failing.remove(&record.name) {
                    actions.push(DriverAction::ClearFailure {
                        app: record.name.clone(),
                    });
                }
            }
        }
    }

    /// Picks the nodes to offer slot `slot` to, or records why none can take it.
    fn place(
        &mut self,
        now: Instant,
        view: &ClusterView,
        app: &AppInput,
        slot: u32,
    ) -> Option<DriverAction> {
        let record = &app.record;
        let release = record.release.as_ref()?;
        let id = placement_id(&record.name, release.number, slot);
        if self.retry_at.contains_key(&id) {
            return None;
        }
        let needs = Needs {
            cpu_millis: release.manifest.resources.cpu_millis,
            mem_bytes: release.manifest.resources.memory_bytes,
        };
        let mut candidates = candidates_for(view, &record.name, app.isolation);
        // Placements sent or admitted but not yet in gossip still occupy their node.
        for flight in self.in_flight.values() {
            if let Some(candidate) = candidates.iter_mut().find(|c| c.node_id == flight.node()) {
                occupy(candidate, needs, flight.app == record.name);
            }
        }
        let plans = match plan(&candidates, needs, slot, 1, &mut self.rng) {
            Ok(plans) => plans,
            Err(err) => {
                let problem = match app.isolation {
                    Isolation::Gvisor => format!(
                        "{err}; its tenant runs under gVisor, and only nodes with runsc count \
                         ({} have it)",
                        candidates.len()
                    ),
                    Isolation::Container => err.to_string(),
                };
                self.place_problems.insert(record.name.clone(), problem);
                self.retry_at.insert(id, now + PLACE_RETRY);
                return None;
            }
        };
        let replica_plan = plans.into_iter().next()?;
        let targets: Vec<Target> = replica_plan
            .candidates
            .iter()
            .filter_map(|node_id| {
                let identity = view.node(node_id)?.identity.as_ref()?;
                Some(Target {
                    node_id: node_id.clone(),
                    api_addr: identity.api_addr,
                })
            })
            .collect();
        let Some(first) = targets.first() else {
            self.place_problems.insert(
                record.name.clone(),
                format!("no node accepted replica {slot}: no candidate has an API address"),
            );
            self.retry_at.insert(id, now + PLACE_RETRY);
            return None;
        };
        self.in_flight.insert(
            id.clone(),
            InFlight {
                since: now,
                app: record.name.clone(),
                release: release.number,
                slot,
                phase: Phase::Sending {
                    likely: first.node_id.clone(),
                },
            },
        );
        let holders: Vec<SocketAddr> = view
            .live_nodes()
            .filter_map(|node| node.identity.as_ref().map(|identity| identity.api_addr))
            .collect();
        Some(DriverAction::Place {
            request: Box::new(PlacementRequest {
                placement_id: id,
                app: record.name.clone(),
                release: release.clone(),
                replica: slot,
                holders,
                tenant: record.tenant.clone(),
                isolation: app.isolation,
            }),
            targets,
        })
    }
}

/// Counts a placement against a candidate, so the next replica spreads away from it.
fn occupy(candidate: &mut NodeCandidate, needs: Needs, same_app: bool) {
    if same_app {
        candidate.replicas_of_app += 1;
    }
    candidate.containers += 1;
    candidate.reserved_cpu_millis += needs.cpu_millis;
    candidate.reserved_mem_bytes += needs.mem_bytes;
}
