//! Getting every replica of every app placed: the app's scheduler node (the first of its
//! keepers) plans missing replicas from its gossip view and asks target nodes to run them;
//! a target admits or refuses against its real reservations.
//!
//! Any live node can be an app's scheduler, and a new one takes over as soon as the old
//! one is gone from the view, so an acknowledged deploy still rolls out if the node that
//! accepted it dies. Placement ids are `app-r<release>-<replica>`: a retry of the same
//! placement on the same node never starts a second copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use api::ApiError;
use proto::api::{NodeStatus, PlacementReply, PlacementRequest};
use proto::catalog::AppRecord;
use proto::gossip::RolloutFailure;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::catalog::keepers;
use crate::membership::ClusterView;
use crate::scheduler::{AdmitDecision, Needs, NodeCandidate, plan};
use crate::state::AgentState;

/// How long a placement that a node admitted may take to show up in gossip before it is
/// tried again (pulling the bundle, unpacking, starting the container).
const PLACEMENT_PATIENCE: Duration = Duration::from_secs(60);
const SCHEDULE_EVERY: Duration = Duration::from_secs(2);
/// Gossip rounds a node must have heard peers for before it schedules.
const SETTLE_ROUNDS: u32 = 6;
/// A node with seeds but no peer schedules anyway after this: it may be the only one.
const ALONE_PATIENCE: Duration = Duration::from_secs(10);

pub fn placement_id(app: &str, release: u64, replica: u32) -> String {
    format!("{app}-r{release}-{replica}")
}

/// The scheduler loop of this node: acts for the apps it is the scheduler of.
pub async fn run(state: Arc<AgentState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !wait_until_settled(&state, &mut stop).await {
        return;
    }
    let mut rng = StdRng::from_os_rng();
    let mut in_flight: BTreeMap<String, (Instant, String)> = BTreeMap::new();
    let mut failing: BTreeSet<String> = BTreeSet::new();
    loop {
        let view = state.view().await;
        let records: Vec<AppRecord> = state.catalog.lock().await.apps().cloned().collect();
        let live: Vec<&str> = view
            .live_nodes()
            .map(|node| node.node_id.as_str())
            .collect();
        in_flight.retain(|_, (since, _)| since.elapsed() < PLACEMENT_PATIENCE);
        for record in &records {
            if keepers(&record.name, &live, 1).first().map(String::as_str) != Some(state.node_id())
            {
                continue;
            }
            match schedule_app(&state, &view, record, &mut in_flight, &mut rng).await {
                Ok(()) => {
                    if failing.remove(&record.name) {
                        state.membership.clear_failure(&record.name).await;
                    }
                }
                Err(reason) => {
                    warn!(app = %record.name, %reason, "cannot place the release");
                    let release = record.release.as_ref().map_or(0, |release| release.number);
                    failing.insert(record.name.clone());
                    state
                        .membership
                        .publish_failure(&RolloutFailure {
                            app: record.name.clone(),
                            release,
                            reason,
                        })
                        .await;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SCHEDULE_EVERY) => {}
            _ = state.catalog_changed.notified() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// A node that just started sees only itself: it would believe it is every app's scheduler
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

async fn schedule_app(
    state: &AgentState,
    view: &ClusterView,
    record: &AppRecord,
    in_flight: &mut BTreeMap<String, (Instant, String)>,
    rng: &mut StdRng,
) -> Result<(), String> {
    let Some(release) = &record.release else {
        return Ok(());
    };
    // Any record on a live node counts, even a crashed one restarting with backoff there:
    // placing it again elsewhere would leave two copies once it comes back.
    let running: BTreeSet<u32> = view
        .containers
        .iter()
        .filter(|c| c.record.app == record.name && c.record.release == release.number)
        .map(|c| c.record.replica)
        .collect();
    let missing: Vec<u32> = (0..record.replicas)
        .filter(|replica| !running.contains(replica))
        .filter(|replica| {
            !in_flight.contains_key(&placement_id(&record.name, release.number, *replica))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let needs = Needs {
        cpu_millis: release.manifest.resources.cpu_millis,
        mem_bytes: release.manifest.resources.memory_bytes,
    };
    let mut candidates = candidates(view, &record.name);
    // Placements admitted but not yet in gossip still occupy their node.
    let prefix = format!("{}-r", record.name);
    for (id, (_, node_id)) in in_flight.iter() {
        let gossiped = view.containers.iter().any(|c| &c.record.id == id);
        if id.starts_with(&prefix)
            && !gossiped
            && let Some(candidate) = candidates.iter_mut().find(|c| &c.node_id == node_id)
        {
            occupy(candidate, needs);
        }
    }
    let holders: Vec<std::net::SocketAddr> = view
        .live_nodes()
        .filter_map(|node| node.identity.as_ref().map(|identity| identity.api_addr))
        .collect();
    for replica in missing {
        let plans = plan(&candidates, needs, replica, 1, rng).map_err(|err| err.to_string())?;
        let Some(replica_plan) = plans.into_iter().next() else {
            continue;
        };
        let id = placement_id(&record.name, release.number, replica);
        let request = PlacementRequest {
            placement_id: id.clone(),
            app: record.name.clone(),
            release: release.clone(),
            replica,
            holders: holders.clone(),
        };
        let mut refusals = Vec::new();
        let mut placed = false;
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
                    in_flight.insert(id.clone(), (Instant::now(), target.clone()));
                    if let Some(candidate) = candidates.iter_mut().find(|c| &c.node_id == target) {
                        occupy(candidate, needs);
                    }
                    placed = true;
                    break;
                }
                Err(err) => {
                    debug!(placement = %id, node = %target, error = %err, "placement refused");
                    refusals.push(format!("{target}: {err}"));
                }
            }
        }
        if !placed {
            return Err(format!(
                "no node accepted replica {replica}: {}",
                refusals.join("; ")
            ));
        }
    }
    Ok(())
}

/// Counts a placement against a candidate, so the next replica spreads away from it.
fn occupy(candidate: &mut NodeCandidate, needs: Needs) {
    candidate.replicas_of_app += 1;
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
            let containers = view.containers.iter().filter(|c| c.node_id == node.node_id);
            Some(NodeCandidate {
                node_id: node.node_id.clone(),
                live: node.status == NodeStatus::Live,
                draining: !runs_workloads,
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
            crate::supervisor::spawn_replica(state.clone(), request);
            Ok(PlacementReply::Admitted)
        }
    }
}
