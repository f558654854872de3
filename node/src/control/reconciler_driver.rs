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
//!
//! Split like quinn: [`decisions`] is the pure core ([`DriverCore`]: the election, the
//! placements in flight, the stops sent, the failures published; tests on simulated time
//! in `reconciler_driver/tests.rs`), and this file is the I/O around it: [`run`] feeds it,
//! a [`Dispatcher`] sends its actions concurrently with a deadline each, and the loop
//! sleeps until the core's next deadline or the next change.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use api::ApiError;
use proto::api::{PlacementReply, PlacementRequest, StopRequest};
use proto::catalog::AppRecord;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::control::reconciler::ReconcileConfig;
use crate::control::scheduler::Needs;
use crate::handles::AgentHandles;
use crate::workload::admission_control::Refusal;

mod decisions;

#[cfg(test)]
mod tests;

pub use decisions::{
    AppInput, DriverAction, DriverCore, Outcome, PLACE_RETRY, PLACEMENT_PATIENCE, STOP_RESEND,
    Target, elected, placement_id,
};

/// At most this often: a burst of gossip changes costs one round, not one each.
const MIN_SPACING: Duration = Duration::from_millis(100);
/// Gossip rounds a node must have heard peers for before it schedules.
const SETTLE_ROUNDS: u32 = 6;
/// A node with seeds but no peer schedules anyway after this: it may be the only one.
const ALONE_PATIENCE: Duration = Duration::from_secs(10);
/// Longest one call to one peer may take (a placement is only admitted there; the pull
/// and the start happen afterwards): a slow or black-holed peer costs its own action this
/// much, never the others'.
pub const PEER_DEADLINE: Duration = Duration::from_secs(5);
/// Actions carried out at once; the rest wait their turn.
pub const PARALLEL_ACTIONS: usize = 8;

/// The reconcile loop of this node: acts for the apps it is the reconciler of.
///
/// A thin loop around [`DriverCore`]: feeds it the view and the catalog, hands its actions
/// to a [`Dispatcher`], feeds back what became of them, and sleeps until the core's next
/// deadline or until something changes.
pub async fn run(agent: AgentHandles, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !wait_until_settled(&agent, &mut stop).await {
        return;
    }
    let mut views = agent.membership.subscribe().await;
    let mut core = DriverCore::new(
        agent.node_id(),
        ReconcileConfig {
            reschedule_grace: agent.config.reschedule_grace,
            ..ReconcileConfig::default()
        },
        StdRng::from_os_rng(),
    );
    let mut dispatcher = Dispatcher::new(PARALLEL_ACTIONS);
    loop {
        let view = agent.view().await;
        let apps = app_inputs(&agent).await;
        for action in core.plan(Instant::now(), &view, &apps) {
            carry_out(&agent, &mut dispatcher, action).await;
        }
        tokio::time::sleep(MIN_SPACING).await;
        let deadline = core.next_deadline();
        tokio::select! {
            _ = sleep_until(deadline) => {}
            _ = agent.catalog.changed() => {}
            changed = views.changed() => if changed.is_err() { return },
            Some(outcome) = dispatcher.next() => {
                if let Some(outcome) = outcome {
                    core.handle_outcome(Instant::now(), outcome);
                }
                // Take in whatever else finished meanwhile before the next round.
                while let Some(outcome) = dispatcher.try_next() {
                    if let Some(outcome) = outcome {
                        core.handle_outcome(Instant::now(), outcome);
                    }
                }
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Every app of the catalog with a release, and the release each would go back to.
async fn app_inputs(agent: &AgentHandles) -> Vec<AppInput> {
    let tenancy = agent.tenancy.clone();
    agent
        .catalog
        .read(|catalog| {
            catalog
                .apps()
                .filter_map(|record| {
                    let number = record.release.as_ref()?.number;
                    let previous = catalog
                        .releases(&record.name)
                        .iter()
                        .map(|r| r.number)
                        .filter(|earlier| *earlier < number && !record.failed.contains_key(earlier))
                        .max();
                    Some(AppInput {
                        record: AppRecord::clone(record),
                        previous,
                        isolation: tenancy.isolation(record.tenant.as_deref()),
                    })
                })
                .collect()
        })
        .await
}

/// Gossip writes (local and quick) are done at once; peer calls and catalog writes go to
/// the dispatcher.
async fn carry_out(agent: &AgentHandles, dispatcher: &mut Dispatcher, action: DriverAction) {
    agent.metrics.reconciler_action(match &action {
        DriverAction::PublishFailure(_) => "publish_failure",
        DriverAction::ClearFailure { .. } => "clear_failure",
        DriverAction::Place { .. } => "place",
        DriverAction::Stop { .. } => "stop",
        DriverAction::RollBack { .. } => "roll_back",
    });
    match action {
        DriverAction::PublishFailure(failure) => {
            warn!(app = %failure.app, reason = %failure.reason, "the release cannot run");
            agent.membership.publish_failure(&failure).await;
        }
        DriverAction::ClearFailure { app } => agent.membership.clear_failure(&app).await,
        DriverAction::Place { request, targets } => {
            let agent = agent.clone();
            dispatcher.push(async move {
                let outcome = place_on_first(&request, &targets, PEER_DEADLINE, |addr| {
                    let client = agent.peers.client(addr);
                    let request = &request;
                    async move {
                        match client {
                            Some(client) => client.place(request).await.map_err(|e| e.to_string()),
                            None => Err(format!("no client for {addr}")),
                        }
                    }
                })
                .await;
                Some(outcome)
            });
        }
        DriverAction::Stop {
            node_id,
            api_addr,
            request,
        } => {
            let agent = agent.clone();
            dispatcher.push(async move {
                info!(node = %node_id, placement = %request.placement_id, reason = %request.reason, "stopping a replica");
                send_stop(&agent, &node_id, api_addr, &request).await;
                None
            });
        }
        DriverAction::RollBack {
            app,
            failed,
            previous,
            reason,
        } => {
            let agent = agent.clone();
            dispatcher.push(async move {
                warn!(%app, release = failed, %reason, to = previous, "rollout failed: going back");
                let result = crate::operations::changes::roll_back_failed(
                    &agent, &app, failed, previous, &reason,
                )
                .await
                .map_err(|err| err.to_string());
                Some(Outcome::RolledBack {
                    app,
                    failed,
                    result,
                })
            });
        }
    }
}

/// Runs `call`, cut off at `deadline`: every peer call has one.
pub async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", deadline.as_millis())),
    }
}

/// Offers the placement to each target in turn until one admits it, each call cut off at
/// `deadline`. `call` sends the request to one API address.
pub async fn place_on_first<F, Fut>(
    request: &PlacementRequest,
    targets: &[Target],
    deadline: Duration,
    call: F,
) -> Outcome
where
    F: Fn(std::net::SocketAddr) -> Fut,
    Fut: Future<Output = Result<PlacementReply, String>>,
{
    let id = &request.placement_id;
    let mut refusals = Vec::new();
    for target in targets {
        match within(deadline, call(target.api_addr)).await {
            Ok(reply) => {
                info!(placement = %id, node = %target.node_id, ?reply, "replica placed");
                return Outcome::Placed {
                    placement_id: id.clone(),
                    node_id: target.node_id.clone(),
                };
            }
            Err(err) => {
                debug!(placement = %id, node = %target.node_id, error = %err, "placement refused");
                refusals.push(format!("{}: {err}", target.node_id));
            }
        }
    }
    Outcome::Refused {
        placement_id: id.clone(),
        reason: format!(
            "no node accepted replica {}: {}",
            request.replica,
            refusals.join("; ")
        ),
    }
}

type Task<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Carries out actions concurrently, at most `limit` at once, in the order they came; each
/// is a task of its own, so a slow one holds up only itself (and one of the slots).
pub struct Dispatcher<T = Option<Outcome>> {
    limit: usize,
    queue: VecDeque<Task<T>>,
    running: JoinSet<T>,
}

impl<T: Send + 'static> Dispatcher<T> {
    pub fn new(limit: usize) -> Dispatcher<T> {
        Dispatcher {
            limit: limit.max(1),
            queue: VecDeque::new(),
            running: JoinSet::new(),
        }
    }

    /// Queues `task`; it starts as soon as a slot is free (at once if one is).
    pub fn push(&mut self, task: impl Future<Output = T> + Send + 'static) {
        self.queue.push_back(Box::pin(task));
        self.fill();
    }

    /// Actions started and not finished.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Actions waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn fill(&mut self) {
        while self.running.len() < self.limit {
            let Some(task) = self.queue.pop_front() else {
                return;
            };
            self.running.spawn(task);
        }
    }

    /// The result of the next action to finish; `None` when nothing runs. Cancel-safe.
    /// A panicked action takes the caller down with it: a half-working driver must not
    /// go unnoticed.
    pub async fn next(&mut self) -> Option<T> {
        let joined = self.running.join_next().await?;
        self.fill();
        Some(unwrap_joined(joined))
    }

    /// Like [`Dispatcher::next`], without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        let joined = self.running.try_join_next()?;
        self.fill();
        Some(unwrap_joined(joined))
    }
}

fn unwrap_joined<T>(joined: Result<T, tokio::task::JoinError>) -> T {
    match joined {
        Ok(value) => value,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Tasks are only cancelled by dropping the dispatcher, which then no longer asks.
        Err(err) => panic!("a driver action was cancelled: {err}"),
    }
}

/// Asks `node_id` to stop one replica (this node directly, others through their API).
async fn send_stop(
    agent: &AgentHandles,
    node_id: &str,
    api_addr: Option<std::net::SocketAddr>,
    request: &StopRequest,
) {
    let placement = &request.placement_id;
    if node_id == agent.node_id() {
        crate::workload::supervisor::stop_replica(agent, request).await;
        return;
    }
    let Some(client) = api_addr.and_then(|addr| agent.peers.client(addr)) else {
        warn!(node = node_id, %placement, "no API address to send a stop to");
        return;
    };
    let sent = within(PEER_DEADLINE, async {
        client
            .stop_replica(request)
            .await
            .map_err(|err| err.to_string())
    })
    .await;
    if let Err(err) = sent {
        warn!(node = node_id, %placement, error = %err, "stop request failed; will retry");
    }
}

/// A node that just started sees only itself: it would believe it is every app's reconciler
/// and that no replica runs anywhere. Wait until it has heard the cluster for a few rounds
/// (or, alone, for long enough to be sure it is alone). Returns false if told to stop.
async fn wait_until_settled(
    agent: &AgentHandles,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let interval = agent.config.gossip_interval;
    let started = Instant::now();
    let mut peers_since: Option<Instant> = None;
    loop {
        let has_peers = !agent.membership.live_peer_addrs().await.is_empty();
        peers_since = match (has_peers, peers_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        let heard_enough =
            peers_since.is_some_and(|since| since.elapsed() >= interval * SETTLE_ROUNDS);
        let alone_long_enough = agent.config.seeds.is_empty()
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

/// Node-to-node: a scheduler asks this node to run one replica.
pub async fn admit(
    agent: &AgentHandles,
    request: PlacementRequest,
) -> Result<PlacementReply, ApiError> {
    let catalog_release = agent
        .catalog
        .live_record(&request.app)
        .await
        .and_then(|record| record.release.map(|release| release.number));
    if catalog_release.is_some_and(|current| current > request.release.number) {
        agent.metrics.placement("superseded");
        return Err(ApiError::Conflict(format!(
            "release {} of {} is already superseded here",
            request.release.number, request.app
        )));
    }
    let needs = Needs {
        cpu_millis: request.release.manifest.resources.cpu_millis,
        mem_bytes: request.release.manifest.resources.memory_bytes,
    };
    let needs_gvisor = placement_needs_gvisor(&request);
    let admitted = agent
        .admission
        .admit_placement(&request.placement_id, needs, needs_gvisor)
        .await;
    agent.metrics.placement(match &admitted {
        Ok(true) => "admitted",
        Ok(false) => "already_admitted",
        Err(Refusal::Draining) => "draining",
        Err(Refusal::NoRoom(_)) => "no_room",
        Err(Refusal::NoGvisor) => "no_gvisor",
    });
    match admitted {
        Ok(false) => Ok(PlacementReply::AlreadyAdmitted),
        Err(Refusal::Draining) => Err(ApiError::Conflict(format!(
            "{} is draining: it takes no new replicas",
            agent.node_id()
        ))),
        Err(Refusal::NoRoom(reason)) => Err(ApiError::Conflict(format!(
            "{} refuses {}: {reason}",
            agent.node_id(),
            request.placement_id
        ))),
        Err(refusal @ Refusal::NoGvisor) => Err(ApiError::Conflict(format!(
            "{} refuses {}: {refusal}",
            agent.node_id(),
            request.placement_id
        ))),
        Ok(true) => {
            crate::workload::supervisor::spawn_replica(agent.clone(), request);
            Ok(PlacementReply::Admitted)
        }
    }
}

/// Whether the placement's tenant runs under gVisor.
fn placement_needs_gvisor(request: &PlacementRequest) -> bool {
    request.isolation == proto::tenancy::Isolation::Gvisor
}

/// Node-to-node: the app's reconciler asks this node to stop one of its replicas.
pub async fn stop(agent: &AgentHandles, request: StopRequest) -> Result<(), ApiError> {
    crate::workload::supervisor::stop_replica(agent, &request).await;
    Ok(())
}
