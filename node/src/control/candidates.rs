//! What scheduling knows about each node, from the gossip view: the candidates the replica
//! reconciler and the build placement both rank.

use proto::api::NodeStatus;
use proto::tenancy::Isolation;

use crate::cluster::membership::ClusterView;
use crate::control::scheduler::NodeCandidate;

/// Every node with a load, as a scheduling candidate for `app`.
pub fn candidates(view: &ClusterView, app: &str) -> Vec<NodeCandidate> {
    candidates_for(view, app, Isolation::Container)
}

/// Every node with a load that can run `app`'s replicas under `isolation`: for gVisor,
/// only nodes whose identity says they have it (the others would refuse the placement).
pub fn candidates_for(view: &ClusterView, app: &str, isolation: Isolation) -> Vec<NodeCandidate> {
    view.nodes
        .iter()
        .filter(|node| match isolation {
            Isolation::Container => true,
            Isolation::Gvisor => node
                .identity
                .as_ref()
                .is_some_and(|identity| identity.gvisor),
        })
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
