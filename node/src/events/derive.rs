//! Events from views, pure: [`Observed`] is what one node has seen of the cluster (nodes,
//! apps, replicas), built from its gossip view and its catalog, and [`changes`] turns two
//! successive observations into the events between them.
//!
//! Each subject has a lifecycle and every edge it passes between two observations is
//! emitted, in lifecycle order: a replica first seen running and healthy gives `placed`,
//! `started`, `healthy`. That is what makes two nodes agree on kinds and subjects however
//! their gossip rounds fell. What a view cannot show (a health flap shorter than a round)
//! no node reports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use proto::api::NodeStatus;
use proto::build::CacheUse;
use proto::catalog::AppRecord;
use proto::events::{Change, ReplicaRef};
use proto::{ContainerHealth, ContainerState};

use crate::cluster::membership::ClusterView;

/// One node as seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    pub generation: u64,
    pub status: NodeStatus,
    pub draining: bool,
}

/// One app as seen: its record's facts and what its replicas add up to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppSeen {
    pub tenant: Option<String>,
    pub deleted: bool,
    pub release: Option<u64>,
    pub note: Option<String>,
    pub replicas: u32,
    pub failed: BTreeMap<u64, String>,
    /// Finished builds by release.
    pub builds: BTreeMap<u64, BuildSeen>,
    /// Distinct replica slots of the current release that take traffic.
    pub healthy: u32,
    /// Whether a replica of another release still takes traffic.
    pub others_routed: bool,
    /// The last release seen fully live: carried from one observation to the next, so a
    /// flap after the rollout is not a second `release_live`.
    pub live: Option<u64>,
    pub backends: BTreeSet<SocketAddr>,
    /// Why a release cannot run, as a live node published it: (release, reason).
    pub blocked: Option<(u64, String)>,
}

/// One finished build as seen in its app's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSeen {
    pub node: String,
    pub builder: String,
    pub duration_ms: u64,
    pub cache: &'static str,
    pub error: Option<String>,
}

/// One replica as seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSeen {
    pub app: String,
    pub release: u64,
    pub replica: u32,
    pub state: ContainerState,
    pub health: ContainerHealth,
    pub detail: Option<String>,
}

/// What one node has seen of the cluster at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub nodes: BTreeMap<String, NodeSeen>,
    pub apps: BTreeMap<String, AppSeen>,
    /// By (node, placement id).
    pub replicas: BTreeMap<(String, String), ReplicaSeen>,
}

impl Observed {
    /// The observation after `self`, from a view and the merged catalog.
    pub fn next(&self, view: &ClusterView, catalog: &[AppRecord]) -> Observed {
        let nodes = view
            .nodes
            .iter()
            .map(|node| {
                let seen = NodeSeen {
                    generation: node.generation,
                    status: node.status,
                    draining: node.draining,
                };
                (node.node_id.clone(), seen)
            })
            .collect();
        let replicas: BTreeMap<(String, String), ReplicaSeen> = view
            .containers
            .iter()
            .map(|placed| {
                let record = &placed.record;
                let seen = ReplicaSeen {
                    app: record.app.clone(),
                    release: record.release,
                    replica: record.replica,
                    state: record.state,
                    health: record.health,
                    detail: record.detail.clone(),
                };
                ((placed.node_id.clone(), record.id.clone()), seen)
            })
            .collect();
        let mut apps = BTreeMap::new();
        for record in catalog {
            let release = record.release.as_ref().map(|release| release.number);
            let mut slots = BTreeSet::new();
            let mut others_routed = false;
            let mut backends = BTreeSet::new();
            for placed in view
                .containers
                .iter()
                .filter(|c| c.record.app == record.name)
            {
                if !placed.record.is_routable() {
                    continue;
                }
                backends.insert(placed.record.addr);
                if Some(placed.record.release) == release {
                    slots.insert(placed.record.replica);
                } else {
                    others_routed = true;
                }
            }
            let healthy = u32::try_from(slots.len()).unwrap_or(u32::MAX);
            let previous_live = self.apps.get(&record.name).and_then(|app| app.live);
            let live = match release {
                Some(number)
                    if !record.deleted
                        && record.replicas > 0
                        && healthy >= record.replicas
                        && !others_routed =>
                {
                    Some(number)
                }
                _ => previous_live,
            };
            let seen = AppSeen {
                tenant: record.tenant.clone(),
                deleted: record.deleted,
                release,
                note: record.release.as_ref().and_then(|r| r.note.clone()),
                replicas: record.replicas,
                failed: record.failed.clone(),
                builds: record
                    .builds
                    .iter()
                    .map(|(number, build)| {
                        let seen = BuildSeen {
                            node: build.node.clone(),
                            builder: build.builder.to_string(),
                            duration_ms: build.duration_ms,
                            cache: match build.cache {
                                CacheUse::Hit => "hit",
                                CacheUse::Miss => "miss",
                                CacheUse::None => "none",
                            },
                            error: build.error.clone(),
                        };
                        (*number, seen)
                    })
                    .collect(),
                healthy,
                others_routed,
                live,
                backends: if record.deleted {
                    BTreeSet::new()
                } else {
                    backends
                },
                blocked: view
                    .failures
                    .iter()
                    .find(|failure| failure.app == record.name)
                    .map(|failure| (failure.release, failure.reason.clone())),
            };
            apps.insert(record.name.clone(), seen);
        }
        Observed {
            nodes,
            apps,
            replicas,
        }
    }

    /// The tenant of `app`, as last seen.
    pub fn tenant_of(&self, app: &str) -> Option<&str> {
        self.apps.get(app).and_then(|seen| seen.tenant.as_deref())
    }
}

/// The events between two observations, in a fixed order: nodes, then each app's record,
/// its builds, its replicas, its rollout, its routes.
pub fn changes(before: &Observed, after: &Observed) -> Vec<Change> {
    let mut out = Vec::new();
    for (node, seen) in &after.nodes {
        node_changes(node, before.nodes.get(node), seen, &mut out);
    }
    let names: BTreeSet<&String> = before.apps.keys().chain(after.apps.keys()).collect();
    for app in names {
        let was = before.apps.get(app);
        let Some(now) = after.apps.get(app) else {
            continue;
        };
        record_changes(app, was, now, &mut out);
    }
    let keys: BTreeSet<&(String, String)> = before
        .replicas
        .keys()
        .chain(after.replicas.keys())
        .collect();
    for key in keys {
        let reason_gone = match after.nodes.get(&key.0).map(|node| node.status) {
            Some(NodeStatus::Dead) => format!("node {} is dead", key.0),
            Some(NodeStatus::Left) => format!("node {} left", key.0),
            None => format!("node {} is gone", key.0),
            _ => "stopped".to_string(),
        };
        replica_changes(
            key,
            before.replicas.get(key),
            after.replicas.get(key),
            &reason_gone,
            &mut out,
        );
    }
    for (app, now) in &after.apps {
        rollout_changes(app, before.apps.get(app), now, &mut out);
    }
    out
}

fn node_changes(node: &str, was: Option<&NodeSeen>, now: &NodeSeen, out: &mut Vec<Change>) {
    let node_id = || node.to_string();
    let generation = now.generation;
    // A new generation is the node restarted: it joins again.
    let fresh = was.is_none_or(|was| was.generation != now.generation);
    if fresh {
        out.push(Change::NodeJoined {
            node: node_id(),
            generation,
        });
    }
    let status_was = match was {
        Some(was) if !fresh => was.status,
        _ => NodeStatus::Joining,
    };
    let status_changed = status_was != now.status;
    if status_changed && now.status == NodeStatus::Live {
        out.push(Change::NodeLive {
            node: node_id(),
            generation,
        });
    }
    // Draining comes before dying: a node that saw both at once reports them in the order
    // they can happen.
    let draining_was = was.is_some_and(|was| was.draining);
    if now.draining && !draining_was {
        out.push(Change::NodeDraining { node: node_id() });
    } else if !now.draining && draining_was {
        out.push(Change::NodeUndrained { node: node_id() });
    }
    if status_changed {
        match now.status {
            NodeStatus::Dead => out.push(Change::NodeDead {
                node: node_id(),
                generation,
            }),
            NodeStatus::Left => out.push(Change::NodeLeft {
                node: node_id(),
                generation,
            }),
            NodeStatus::Live | NodeStatus::Joining => {}
        }
    }
}

fn record_changes(app: &str, was: Option<&AppSeen>, now: &AppSeen, out: &mut Vec<Change>) {
    let name = || app.to_string();
    let empty = AppSeen::default();
    let was_seen = was.unwrap_or(&empty);
    for (release, build) in &now.builds {
        if !was_seen.builds.contains_key(release) {
            out.push(Change::BuildFinished {
                app: name(),
                release: *release,
                node: build.node.clone(),
                builder: build.builder.clone(),
                duration_ms: build.duration_ms,
                cache: build.cache.to_string(),
                error: build.error.clone(),
            });
        }
    }
    for (release, reason) in &now.failed {
        if !was_seen.failed.contains_key(release) {
            out.push(Change::ReleaseFailed {
                app: name(),
                release: *release,
                reason: reason.clone(),
            });
        }
    }
    if now.deleted {
        if !was_seen.deleted && was.is_some() {
            out.push(Change::Destroyed { app: name() });
        }
        return;
    }
    let release_was = if was_seen.deleted {
        None
    } else {
        was_seen.release
    };
    match (release_was, now.release) {
        (Some(from), Some(to)) if to < from => out.push(Change::RolledBack {
            app: name(),
            from,
            to,
        }),
        (from, Some(to)) if from != Some(to) => out.push(Change::DeployAccepted {
            app: name(),
            release: to,
            note: now.note.clone(),
        }),
        _ => {}
    }
    if let Some((release, reason)) = &now.blocked
        && was_seen.blocked.as_ref() != Some(&(*release, reason.clone()))
    {
        out.push(Change::RolloutBlocked {
            app: name(),
            release: *release,
            reason: reason.clone(),
        });
    }
    if was.is_some() && !was_seen.deleted && was_seen.replicas != now.replicas {
        out.push(Change::Scaled {
            app: name(),
            from: was_seen.replicas,
            to: now.replicas,
        });
    }
}

fn replica_changes(
    (node, id): &(String, String),
    was: Option<&ReplicaSeen>,
    now: Option<&ReplicaSeen>,
    reason_gone: &str,
    out: &mut Vec<Change>,
) {
    let seen = match (was, now) {
        (_, Some(now)) => now,
        (Some(was), None) => was,
        (None, None) => return,
    };
    let replica = || ReplicaRef {
        app: seen.app.clone(),
        release: seen.release,
        replica: seen.replica,
        node: node.clone(),
        id: id.clone(),
    };
    let detail = |fallback: &str| seen.detail.clone().unwrap_or_else(|| fallback.to_string());
    let Some(now) = now else {
        // Gone from the view; one that was already stopping had its event then.
        if was.is_some_and(|was| was.state != ContainerState::Stopping) {
            out.push(Change::ReplicaStopped {
                replica: replica(),
                reason: reason_gone.to_string(),
            });
        }
        return;
    };
    let Some(was) = was else {
        out.push(Change::ReplicaPlaced { replica: replica() });
        match now.state {
            ContainerState::Starting => {}
            ContainerState::Running => {
                out.push(Change::ReplicaStarted { replica: replica() });
                health_changes(None, now, &replica, out);
            }
            ContainerState::Exited => out.push(Change::ReplicaCrashed {
                replica: replica(),
                reason: detail("exited"),
            }),
            ContainerState::Stopping => out.push(Change::ReplicaStopped {
                replica: replica(),
                reason: "stopping".into(),
            }),
        }
        return;
    };
    if was.state != now.state {
        match now.state {
            ContainerState::Running if was.state == ContainerState::Exited => {
                out.push(Change::ReplicaRestarted { replica: replica() });
            }
            ContainerState::Running => out.push(Change::ReplicaStarted { replica: replica() }),
            ContainerState::Exited => out.push(Change::ReplicaCrashed {
                replica: replica(),
                reason: detail("exited"),
            }),
            ContainerState::Stopping => out.push(Change::ReplicaStopped {
                replica: replica(),
                reason: "stopping".into(),
            }),
            ContainerState::Starting => {}
        }
    }
    if now.state == ContainerState::Running {
        let running_before = (was.state == ContainerState::Running).then_some(was);
        health_changes(running_before, now, &replica, out);
    }
}

/// Health edges of a running replica; `was` is its previous sight if it was running then.
fn health_changes(
    was: Option<&ReplicaSeen>,
    now: &ReplicaSeen,
    replica: &dyn Fn() -> ReplicaRef,
    out: &mut Vec<Change>,
) {
    let health_was = was.map_or(ContainerHealth::Unknown, |was| was.health);
    if health_was == now.health {
        return;
    }
    match now.health {
        ContainerHealth::Healthy => out.push(Change::ReplicaHealthy { replica: replica() }),
        ContainerHealth::Unhealthy => out.push(Change::ReplicaUnhealthy {
            replica: replica(),
            reason: now
                .detail
                .clone()
                .unwrap_or_else(|| "health check failed".into()),
        }),
        ContainerHealth::Unknown => {}
    }
}

fn rollout_changes(app: &str, was: Option<&AppSeen>, now: &AppSeen, out: &mut Vec<Change>) {
    if let Some(release) = now.release.filter(|_| !now.deleted) {
        let was_same_release = was.filter(|was| was.release == Some(release) && !was.deleted);
        let healthy_was = was_same_release.map(|was| was.healthy);
        let progress = Change::RolloutProgress {
            app: app.to_string(),
            release,
            healthy: now.healthy,
            desired: now.replicas,
        };
        let went_live = now.live == Some(release) && was.and_then(|was| was.live) != Some(release);
        if now.live != Some(release) {
            // Rolling out: each change of the healthy count, from the first healthy one.
            if healthy_was != Some(now.healthy) && (now.healthy > 0 || healthy_was.is_some()) {
                out.push(progress);
            }
        } else if went_live {
            if healthy_was != Some(now.healthy) {
                out.push(progress);
            }
            out.push(Change::ReleaseLive {
                app: app.to_string(),
                release,
            });
        }
    }
    let backends_was = was.map_or(0, |was| was.backends.len());
    let changed = match was {
        Some(was) => was.backends != now.backends,
        None => !now.backends.is_empty(),
    };
    if changed && (backends_was > 0 || !now.backends.is_empty()) {
        out.push(Change::RoutesChanged {
            app: app.to_string(),
            backends: u32::try_from(now.backends.len()).unwrap_or(u32::MAX),
        });
    }
}

#[cfg(test)]
mod tests;
