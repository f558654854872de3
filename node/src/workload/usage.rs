//! `stratus ps`: how long each replica of an app has run, its restarts, and the CPU and
//! memory it uses. Like `stratus logs`, the node asked gathers it: from its own replica
//! table and runtime for its replicas, from the owning node for the others. Gossip does not
//! carry it: CPU and memory change every second, and a reading costs a second of sampling.

use std::collections::BTreeMap;
use std::time::Duration;

use api::ApiError;
use proto::api::{NodeUsageReply, ReplicaUsage, ReplicaView, ReplicasResponse};

use crate::handles::AgentHandles;
use crate::operations::deploy;

/// Longest a runtime reading or a peer's answer may take: a reading samples for about a
/// second, and one stuck container or node must not hold the whole table back.
const READING_TIMEOUT: Duration = Duration::from_secs(5);

/// Every replica of `app`, each with what its node says it uses.
pub async fn app_replicas(agent: &AgentHandles, app: &str) -> Result<ReplicasResponse, ApiError> {
    let view = deploy::app_view(agent, app, false).await?;
    let cluster = agent.view().await;
    let nodes: std::collections::BTreeSet<String> = view
        .replicas
        .iter()
        .map(|replica| replica.node_id.clone())
        .collect();
    let readings = futures_util::future::join_all(nodes.into_iter().map(|node_id| {
        let cluster = &cluster;
        async move {
            let reply = if node_id == agent.node_id() {
                Ok(node_usage(agent, app).await)
            } else {
                let peer = cluster
                    .node(&node_id)
                    .and_then(|node| node.identity.as_ref())
                    .and_then(|identity| agent.peers.client(identity.api_addr));
                match peer {
                    None => Err(format!("no API address known for {node_id}")),
                    Some(client) => {
                        match tokio::time::timeout(READING_TIMEOUT * 2, client.replica_usage(app))
                            .await
                        {
                            Ok(Ok(reply)) => Ok(reply),
                            Ok(Err(err)) => Err(err.to_string()),
                            Err(_) => Err(format!(
                                "{node_id} did not answer within {:?}",
                                READING_TIMEOUT * 2
                            )),
                        }
                    }
                }
            };
            (node_id, reply)
        }
    }))
    .await;
    let readings: BTreeMap<String, Result<NodeUsageReply, String>> = readings.into_iter().collect();
    let replicas = view
        .replicas
        .into_iter()
        .map(|replica| with_usage(replica, &readings))
        .collect();
    Ok(ReplicasResponse {
        app: app.to_string(),
        node_id: agent.node_id().to_string(),
        replicas,
    })
}

/// `replica` with its node's reading of it, or a note saying why there is none.
fn with_usage(
    mut replica: ReplicaView,
    readings: &BTreeMap<String, Result<NodeUsageReply, String>>,
) -> ReplicaView {
    let usage = match readings.get(&replica.node_id) {
        Some(Ok(reply)) => reply
            .replicas
            .get(&replica.container_id)
            .cloned()
            .unwrap_or_else(|| ReplicaUsage {
                note: Some(format!(
                    "{} no longer runs it (it stopped since gossip said otherwise)",
                    replica.node_id
                )),
                ..ReplicaUsage::default()
            }),
        Some(Err(why)) => ReplicaUsage {
            note: Some(format!("no reading from {}: {why}", replica.node_id)),
            ..ReplicaUsage::default()
        },
        None => ReplicaUsage::default(),
    };
    replica.usage = Some(usage);
    replica
}

/// What the replicas of `app` on this node use (the internal route's answer).
pub async fn node_usage(agent: &AgentHandles, app: &str) -> NodeUsageReply {
    let times = agent.replicas.times_of(app).await;
    let runtime = agent.replicas.runtime();
    let readings = futures_util::future::join_all(times.into_iter().map(|times| async move {
        let mut usage = ReplicaUsage {
            started_at_ms: times.started_at_ms,
            uptime_ms: times
                .uptime
                .map(|uptime| u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX)),
            restarts: times.restarts,
            ..ReplicaUsage::default()
        };
        if times.uptime.is_some() {
            let id = runtime.id_for(&times.placement_id);
            match tokio::time::timeout(READING_TIMEOUT, runtime.usage(&id)).await {
                Ok(Ok(reading)) => {
                    usage.cpu_millis = reading.cpu_millis;
                    usage.memory_bytes = reading.memory_bytes;
                    usage.memory_limit_bytes = reading.memory_limit_bytes;
                }
                Ok(Err(err)) => {
                    usage.note = Some(format!("{} gave no figures: {err}", runtime.name()))
                }
                Err(_) => {
                    usage.note = Some(format!(
                        "{} gave no figures within {READING_TIMEOUT:?}",
                        runtime.name()
                    ))
                }
            }
        } else {
            usage.note = Some("not running".to_string());
        }
        (times.placement_id, usage)
    }))
    .await;
    NodeUsageReply {
        node_id: agent.node_id().to_string(),
        replicas: readings.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use proto::{ContainerHealth, ContainerState};

    use super::*;

    fn replica(node: &str, id: &str) -> ReplicaView {
        ReplicaView {
            node_id: node.into(),
            container_id: id.into(),
            release: 1,
            replica: 0,
            addr: "127.0.0.1:20000".parse().unwrap(),
            state: ContainerState::Running,
            health: ContainerHealth::Healthy,
            detail: None,
            usage: None,
        }
    }

    #[test]
    fn each_replica_gets_its_nodes_reading_or_says_why_not() {
        let reading = ReplicaUsage {
            uptime_ms: Some(1_000),
            restarts: 2,
            cpu_millis: Some(30),
            ..ReplicaUsage::default()
        };
        let readings = BTreeMap::from([
            (
                "a".to_string(),
                Ok(NodeUsageReply {
                    node_id: "a".into(),
                    replicas: BTreeMap::from([("web-1-0".to_string(), reading.clone())]),
                }),
            ),
            ("b".to_string(), Err("connection refused".to_string())),
        ]);
        let ok = with_usage(replica("a", "web-1-0"), &readings);
        assert_eq!(ok.usage, Some(reading));
        let gone = with_usage(replica("a", "web-1-1"), &readings);
        assert!(
            gone.usage
                .unwrap()
                .note
                .unwrap()
                .contains("no longer runs it"),
        );
        let unreachable = with_usage(replica("b", "web-1-2"), &readings);
        let note = unreachable.usage.unwrap().note.unwrap();
        assert!(
            note.contains("no reading from b: connection refused"),
            "{note}"
        );
    }
}
