//! The reconciler's driver: on the app's reconciler node, runs [`crate::control::reconciler`] on
//! every gossip or catalog change and carries its actions out: asks target nodes to run
//! replicas (a target admits or refuses against its real reservations), asks nodes to stop
//! replicas, and records failed rollouts (going back to the previous release).
//!
//! Any live, non-draining node can be an app's reconciler (the first by rendezvous hashing
//! of the app over them), and a new one takes over as soon as the old one is gone from
//! the view, so an acknowledged deploy still rolls out if the node that accepted it dies.
//! Placement ids are `app-r<release>-<replica>`: a retry of the same placement on the
//! same node never starts a second copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use api::ApiError;
use proto::api::{NodeStatus, PlacementReply, PlacementRequest, StopRequest};
use proto::catalog::{AppRecord, Release};
use proto::gossip::RolloutFailure;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::membership::ClusterView;
use crate::control::catalog::keepers;
use crate::control::reconciler::{
    Action, AppState, Desired, Observed, ReconcileConfig, Reconciler,
};
use crate::control::scheduler::{AdmitDecision, Needs, NodeCandidate, plan};
use crate::state::AgentState;

/// How long a placement that a node admitted may take to show up in gossip before it is
/// tried again (pulling the bundle, unpacking, starting the container).
const PLACEMENT_PATIENCE: Duration = Duration::from_secs(60);
/// Reconcile at least this often (grace periods and health timeouts run out between
/// gossip changes), and at most every `MIN_SPACING`.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
const MIN_SPACING: Duration = Duration::from_millis(100);
/// A stop request is sent again if the replica still shows after this.
const STOP_RESEND: Duration = Duration::from_secs(5);
/// Gossip rounds a node must have heard peers for before it schedules.
const SETTLE_ROUNDS: u32 = 6;
/// A node with seeds but no peer schedules anyway after this: it may be the only one.
const ALONE_PATIENCE: Duration = Duration::from_secs(10);

pub fn placement_id(app: &str, release: u64, replica: u32) -> String {
    format!("{app}-r{release}-{replica}")
}

/// A placement admitted by a node and not yet seen in gossip.
struct InFlight {
    since: Instant,
    node_id: String,
    app: String,
    release: u64,
    slot: u32,
}

/// The driver's memory between rounds.
struct Driver {
    reconciler: Reconciler,
    in_flight: BTreeMap<String, InFlight>,
    stops_sent: BTreeMap<(String, String), Instant>,
    /// Apps whose failure this node published, to clear once they place again.
    failing: BTreeSet<String>,
    rng: StdRng,
}

/// The reconcile loop of this node: acts for the apps it is the reconciler of.
pub async fn run(state: Arc<AgentState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !wait_until_settled(&state, &mut stop).await {
        return;
    }
    let mut views = state.membership.subscribe().await;
    let mut driver = Driver {
        reconciler: Reconciler::new(ReconcileConfig {
            reschedule_grace: state.config.reschedule_grace,
            ..ReconcileConfig::default()
        }),
        in_flight: BTreeMap::new(),
        stops_sent: BTreeMap::new(),
        failing: BTreeSet::new(),
        rng: StdRng::from_os_rng(),
    };
    loop {
        driver.round(&state).await;
        tokio::time::sleep(MIN_SPACING).await;
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = state.catalog_changed.notified() => {}
            changed = views.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

impl Driver {
    async fn round(&mut self, state: &AgentState) {
        let view = state.view().await;
        let records: Vec<AppRecord> = state.catalog.lock().await.apps().cloned().collect();
        let eligible: Vec<&str> = view
            .live_nodes()
            .filter(|node| !node.draining)
            .map(|node| node.node_id.as_str())
            .collect();
        let live: BTreeSet<&str> = view.live_nodes().map(|n| n.node_id.as_str()).collect();
        let gossiped: BTreeSet<(&str, &str)> = view
            .containers
            .iter()
            .map(|c| (c.node_id.as_str(), c.record.id.as_str()))
            .collect();
        self.in_flight.retain(|id, flight| {
            flight.since.elapsed() < PLACEMENT_PATIENCE
                && live.contains(flight.node_id.as_str())
                && !gossiped.contains(&(flight.node_id.as_str(), id.as_str()))
        });
        self.stops_sent
            .retain(|_, sent| sent.elapsed() < STOP_RESEND);
        let mine: BTreeSet<String> = records
            .iter()
            .filter(|record| {
                keepers(&record.name, &eligible, 1)
                    .first()
                    .map(String::as_str)
                    == Some(state.node_id())
            })
            .map(|record| record.name.clone())
            .collect();
        self.reconciler.retain(&mine);
        for record in records.iter().filter(|r| mine.contains(&r.name)) {
            let Some(release) = &record.release else {
                continue;
            };
            let desired = desired(state, record, release).await;
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
            let actions = self
                .reconciler
                .reconcile(Instant::now(), &desired, &app_state);
            let mut problem = None;
            for action in actions {
                if let Err(reason) = self.act(state, &view, record, release, action).await {
                    problem = Some(reason);
                }
            }
            self.report(state, record, release.number, problem).await;
        }
    }

    async fn act(
        &mut self,
        state: &AgentState,
        view: &ClusterView,
        record: &AppRecord,
        release: &Release,
        action: Action,
    ) -> Result<(), String> {
        match action {
            Action::Place { slot } => self.place(state, view, record, release, slot).await,
            Action::Stop {
                node_id,
                placement_id,
                reason,
            } => {
                let key = (node_id.clone(), placement_id.clone());
                if self.stops_sent.contains_key(&key) {
                    return Ok(());
                }
                self.stops_sent.insert(key, Instant::now());
                info!(app = %record.name, node = %node_id, placement = %placement_id, %reason, "stopping a replica");
                send_stop(state, view, &node_id, &placement_id, &reason).await;
                Ok(())
            }
            Action::Fail {
                release: failed,
                reason,
                rollback_to: Some(previous),
            } => {
                warn!(app = %record.name, release = failed, %reason, to = previous, "rollout failed: going back");
                crate::operations::changes::roll_back_failed(
                    state,
                    &record.name,
                    failed,
                    previous,
                    &reason,
                )
                .await
                .map_err(|err| err.to_string())?;
                Ok(())
            }
            Action::Fail {
                reason,
                rollback_to: None,
                ..
            } => Err(reason),
        }
    }

    /// Publishes (or clears) why the app's current release cannot run.
    async fn report(
        &mut self,
        state: &AgentState,
        record: &AppRecord,
        release: u64,
        problem: Option<String>,
    ) {
        match problem {
            Some(reason) => {
                warn!(app = %record.name, %reason, "the release cannot run");
                self.failing.insert(record.name.clone());
                state
                    .membership
                    .publish_failure(&RolloutFailure {
                        app: record.name.clone(),
                        release,
                        reason,
                    })
                    .await;
            }
            None => {
                if self.failing.remove(&record.name) {
                    state.membership.clear_failure(&record.name).await;
                }
            }
        }
    }

    async fn place(
        &mut self,
        state: &AgentState,
        view: &ClusterView,
        record: &AppRecord,
        release: &Release,
        slot: u32,
    ) -> Result<(), String> {
        let needs = Needs {
            cpu_millis: release.manifest.resources.cpu_millis,
            mem_bytes: release.manifest.resources.memory_bytes,
        };
        let mut candidates = candidates(view, &record.name);
        // Placements admitted but not yet in gossip still occupy their node.
        for flight in self.in_flight.values() {
            if let Some(candidate) = candidates.iter_mut().find(|c| c.node_id == flight.node_id) {
                occupy(candidate, needs, flight.app == record.name);
            }
        }
        let plans =
            plan(&candidates, needs, slot, 1, &mut self.rng).map_err(|err| err.to_string())?;
        let Some(replica_plan) = plans.into_iter().next() else {
            return Ok(());
        };
        let holders: Vec<std::net::SocketAddr> = view
            .live_nodes()
            .filter_map(|node| node.identity.as_ref().map(|identity| identity.api_addr))
            .collect();
        let id = placement_id(&record.name, release.number, slot);
        let request = PlacementRequest {
            placement_id: id.clone(),
            app: record.name.clone(),
            release: release.clone(),
            replica: slot,
            holders,
        };
        let mut refusals = Vec::new();
        for target in &replica_plan.candidates {
            let Some(addr) = view
                .node(target)
                .and_then(|n| n.identity.as_ref())
                .map(|i| i.api_addr)
            else {
                continue;
            };
            let Some(client) = state.peer(addr) else {
                continue;
            };
            match client.place(&request).await {
                Ok(reply) => {
                    info!(placement = %id, node = %target, ?reply, "replica placed");
                    self.in_flight.insert(
                        id.clone(),
                        InFlight {
                            since: Instant::now(),
                            node_id: target.clone(),
                            app: record.name.clone(),
                            release: release.number,
                            slot,
                        },
                    );
                    return Ok(());
                }
                Err(err) => {
                    debug!(placement = %id, node = %target, error = %err, "placement refused");
                    refusals.push(format!("{target}: {err}"));
                }
            }
        }
        Err(format!(
            "no node accepted replica {slot}: {}",
            refusals.join("; ")
        ))
    }
}

/// What should run for `record`: its release, its count, its rollout settings, and the
/// release to go back to (the newest earlier one that did not fail).
async fn desired(state: &AgentState, record: &AppRecord, release: &Release) -> Desired {
    let previous = state
        .catalog
        .lock()
        .await
        .releases(&record.name)
        .iter()
        .map(|r| r.number)
        .filter(|number| *number < release.number && !record.failed.contains_key(number))
        .max();
    Desired {
        app: record.name.clone(),
        release: release.number,
        replicas: record.replicas,
        max_surge: release.manifest.rollout.max_surge,
        health_timeout: Duration::from_millis(release.manifest.rollout.health_timeout_ms),
        previous,
    }
}

/// Asks `node_id` to stop one replica (this node directly, others through their API).
async fn send_stop(
    state: &AgentState,
    view: &ClusterView,
    node_id: &str,
    placement_id: &str,
    reason: &str,
) {
    let request = StopRequest {
        placement_id: placement_id.to_string(),
        reason: reason.to_string(),
    };
    if node_id == state.node_id() {
        crate::workload::supervisor::stop_replica(state, &request).await;
        return;
    }
    let client = view
        .node(node_id)
        .and_then(|n| n.identity.as_ref())
        .and_then(|i| state.peer(i.api_addr));
    let Some(client) = client else {
        warn!(
            node = node_id,
            placement = placement_id,
            "no API address to send a stop to"
        );
        return;
    };
    if let Err(err) = client.stop_replica(&request).await {
        warn!(node = node_id, placement = placement_id, error = %err, "stop request failed; will retry");
    }
}

/// A node that just started sees only itself: it would believe it is every app's reconciler
/// and that no replica runs anywhere. Wait until it has heard the cluster for a few rounds
/// (or, alone, for long enough to be sure it is alone). Returns false if told to stop.
async fn wait_until_settled(
    state: &AgentState,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let interval = state.config.gossip_interval;
    let started = Instant::now();
    let mut peers_since: Option<Instant> = None;
    loop {
        let has_peers = !state.membership.live_peer_addrs().await.is_empty();
        peers_since = match (has_peers, peers_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        let heard_enough =
            peers_since.is_some_and(|since| since.elapsed() >= interval * SETTLE_ROUNDS);
        let alone_long_enough = state.config.seeds.is_empty()
            && started.elapsed() >= interval * SETTLE_ROUNDS
            || started.elapsed() >= ALONE_PATIENCE;
        if heard_enough || alone_long_enough {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stop| *stop) => return false,
        }
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

fn candidates(view: &ClusterView, app: &str) -> Vec<NodeCandidate> {
    view.nodes
        .iter()
        .filter_map(|node| {
            let load = node.load?;
            let runs_workloads = node
                .identity
                .as_ref()
                .is_some_and(|identity| identity.runs_workloads);
            // Replicas on their way out no longer count against the node.
            let containers = view.containers.iter().filter(|c| {
                c.node_id == node.node_id && c.record.state != proto::ContainerState::Stopping
            });
            Some(NodeCandidate {
                node_id: node.node_id.clone(),
                live: node.status == NodeStatus::Live,
                draining: !runs_workloads || node.draining,
                cpu_capacity_millis: u64::from(load.cpu_cores) * 1000,
                mem_capacity_bytes: load.mem_total_bytes,
                reserved_cpu_millis: load.reserved_cpu_millis,
                reserved_mem_bytes: load.reserved_mem_bytes,
                cpu_usage_pct: load.cpu_usage_pct,
                mem_available_bytes: load.mem_available_bytes,
                containers: containers.clone().count(),
                replicas_of_app: containers.filter(|c| c.record.app == app).count(),
            })
        })
        .collect()
}

/// Node-to-node: a scheduler asks this node to run one replica.
pub async fn admit(
    state: &Arc<AgentState>,
    request: PlacementRequest,
) -> Result<PlacementReply, ApiError> {
    let catalog_release = state
        .catalog
        .lock()
        .await
        .record(&request.app)
        .filter(|record| !record.deleted)
        .and_then(|record| record.release.as_ref().map(|release| release.number));
    if catalog_release.is_some_and(|current| current > request.release.number) {
        return Err(ApiError::Conflict(format!(
            "release {} of {} is already superseded here",
            request.release.number, request.app
        )));
    }
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::Conflict(format!(
            "{} is draining: it takes no new replicas",
            state.node_id()
        )));
    }
    let needs = Needs {
        cpu_millis: request.release.manifest.resources.cpu_millis,
        mem_bytes: request.release.manifest.resources.memory_bytes,
    };
    let decision = state
        .admission
        .lock()
        .await
        .admit(&request.placement_id, needs);
    match decision {
        AdmitDecision::AlreadyAdmitted => Ok(PlacementReply::AlreadyAdmitted),
        AdmitDecision::Refused { reason } => Err(ApiError::Conflict(format!(
            "{} refuses {}: {reason}",
            state.node_id(),
            request.placement_id
        ))),
        AdmitDecision::Admitted => {
            crate::workload::supervisor::spawn_replica(state.clone(), request);
            Ok(PlacementReply::Admitted)
        }
    }
}

/// Node-to-node: the app's reconciler asks this node to stop one of its replicas.
pub async fn stop(state: &Arc<AgentState>, request: StopRequest) -> Result<(), ApiError> {
    crate::workload::supervisor::stop_replica(state, &request).await;
    Ok(())
}
