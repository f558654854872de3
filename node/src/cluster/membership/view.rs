//! The cluster as one node sees it, built by a pure function from gossip snapshots.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use proto::api::{NodeStatus, NodeView};
use proto::catalog::AppRecord;
use proto::gossip::{
    self, APP_KEY_PREFIX, CONTAINER_KEY_PREFIX, DRAINING_KEY, FAILURE_KEY_PREFIX, IDENTITY_KEY,
    LEAVING_KEY, LOAD_KEY, RolloutFailure, TENANT_KEY_PREFIX, TOKEN_KEY_PREFIX,
};
use proto::tenancy::{TenancyRecord, TenantRecord, TokenRecord};
use proto::{ContainerRecord, NodeIdentity, NodeLoad};
use tracing::debug;

/// What the gossip library knows about one member (one generation of one node).
#[derive(Debug, Clone)]
pub struct MemberSnapshot {
    pub node_id: String,
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    /// Live according to the failure detector (the self node always is).
    pub is_live: bool,
    /// Has been live at some point in this node's eyes: a silent member that never was is
    /// joining, not dead.
    pub was_live: bool,
    pub key_values: Vec<(String, String)>,
}

/// A container and the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedContainer {
    pub node_id: String,
    pub record: ContainerRecord,
}

/// The typed cluster view the rest of the daemon works with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub self_id: String,
    /// One entry per node id (its newest generation), sorted by node id.
    pub nodes: Vec<NodeView>,
    /// Containers of live nodes only: a dead or departing node's records vanish at once.
    pub containers: Vec<PlacedContainer>,
    /// App records published by any member, dead ones included: the catalog is merged
    /// from all of them (last writer wins), and a dead keeper's copy is still a copy.
    pub app_records: Vec<AppRecord>,
    /// Rollout failures published by live nodes.
    pub failures: Vec<RolloutFailure>,
    /// Tenant and token records published by any member, dead ones included (merged
    /// last writer wins, like app records).
    pub tenancy_records: Vec<TenancyRecord>,
}

impl ClusterView {
    pub fn build(self_id: &str, members: Vec<MemberSnapshot>) -> ClusterView {
        // A restarted node appears under its old generation (dead) and its new one: the
        // newest generation is the node.
        let mut newest: BTreeMap<String, MemberSnapshot> = BTreeMap::new();
        for member in members {
            match newest.get(&member.node_id) {
                Some(known) if known.generation >= member.generation => {}
                _ => {
                    newest.insert(member.node_id.clone(), member);
                }
            }
        }
        let mut nodes = Vec::with_capacity(newest.len());
        let mut containers = Vec::new();
        let mut app_records = Vec::new();
        let mut failures = Vec::new();
        let mut tenancy_records = Vec::new();
        for member in newest.into_values() {
            let mut identity = None;
            let mut load = None;
            let mut leaving = false;
            let mut draining = false;
            let mut records = Vec::new();
            let mut node_failures = Vec::new();
            for (key, value) in &member.key_values {
                match key.as_str() {
                    IDENTITY_KEY => identity = decode_or_log::<NodeIdentity>(key, value),
                    LOAD_KEY => load = decode_or_log::<NodeLoad>(key, value),
                    LEAVING_KEY => leaving = true,
                    DRAINING_KEY => draining = true,
                    _ if key.starts_with(CONTAINER_KEY_PREFIX) => {
                        records.extend(decode_or_log::<ContainerRecord>(key, value));
                    }
                    _ if key.starts_with(APP_KEY_PREFIX) => {
                        app_records.extend(decode_or_log::<AppRecord>(key, value));
                    }
                    _ if key.starts_with(TENANT_KEY_PREFIX) => tenancy_records.extend(
                        decode_or_log::<TenantRecord>(key, value).map(TenancyRecord::Tenant),
                    ),
                    _ if key.starts_with(TOKEN_KEY_PREFIX) => tenancy_records
                        .extend(decode_or_log::<TokenRecord>(key, value).map(TenancyRecord::Token)),
                    _ if key.starts_with(FAILURE_KEY_PREFIX) => {
                        node_failures.extend(decode_or_log::<RolloutFailure>(key, value));
                    }
                    _ => {}
                }
            }
            let status = match (member.is_live, member.was_live, leaving) {
                (false, false, _) => NodeStatus::Joining,
                (false, true, _) => NodeStatus::Dead,
                (true, _, true) => NodeStatus::Left,
                (true, _, false) => NodeStatus::Live,
            };
            let counts = status == NodeStatus::Live;
            nodes.push(NodeView {
                node_id: member.node_id.clone(),
                generation: member.generation,
                gossip_addr: member.gossip_addr,
                status,
                identity,
                load,
                containers: if counts { records.len() } else { 0 },
                draining,
            });
            if counts {
                failures.extend(node_failures);
                containers.extend(records.into_iter().map(|record| PlacedContainer {
                    node_id: member.node_id.clone(),
                    record,
                }));
            }
        }
        ClusterView {
            self_id: self_id.to_string(),
            nodes,
            containers,
            app_records,
            failures,
            tenancy_records,
        }
    }

    pub fn node(&self, node_id: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|node| node.node_id == node_id)
    }

    pub fn live_nodes(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes
            .iter()
            .filter(|node| node.status == NodeStatus::Live)
    }
}

fn decode_or_log<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Option<T> {
    match gossip::decode(key, value) {
        Ok(decoded) => Some(decoded),
        Err(err) => {
            // A peer on a newer schema, or a bug: skip the value, keep the node.
            debug!(error = %err, "ignoring gossip value");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::{ContainerHealth, ContainerState};

    use super::*;

    fn record(id: &str) -> (String, String) {
        let record = ContainerRecord {
            id: id.into(),
            app: "web".into(),
            release: 1,
            replica: 0,
            addr: "127.0.0.9:30000".parse().unwrap(),
            state: ContainerState::Running,
            health: ContainerHealth::Healthy,
            detail: None,
        };
        (gossip::container_key(id), gossip::encode(&record))
    }

    fn member(
        node_id: &str,
        generation: u64,
        is_live: bool,
        kv: Vec<(String, String)>,
    ) -> MemberSnapshot {
        MemberSnapshot {
            node_id: node_id.into(),
            generation,
            gossip_addr: "127.0.0.2:7946".parse().unwrap(),
            is_live,
            was_live: true,
            key_values: kv,
        }
    }

    #[test]
    fn dead_nodes_containers_are_excluded_at_once() {
        let view = ClusterView::build(
            "a",
            vec![
                member("a", 1, true, vec![record("c1")]),
                member("b", 1, false, vec![record("c2"), record("c3")]),
            ],
        );
        assert_eq!(view.containers.len(), 1);
        assert_eq!(view.containers[0].node_id, "a");
        let b = view.node("b").unwrap();
        assert_eq!(b.status, NodeStatus::Dead);
        assert_eq!(b.containers, 0);
    }

    #[test]
    fn the_newest_generation_of_a_restarted_node_wins() {
        let view = ClusterView::build(
            "a",
            vec![
                member("b", 5, true, vec![record("new")]),
                member("b", 3, false, vec![record("old")]),
                member("a", 1, true, vec![]),
            ],
        );
        assert_eq!(view.nodes.len(), 2);
        let b = view.node("b").unwrap();
        assert_eq!((b.generation, b.status), (5, NodeStatus::Live));
        assert_eq!(view.containers[0].record.id, "new");
    }

    #[test]
    fn a_member_never_seen_live_is_joining_not_dead() {
        let mut newcomer = member("b", 1, false, vec![record("c")]);
        newcomer.was_live = false;
        let view = ClusterView::build("a", vec![newcomer]);
        let b = view.node("b").unwrap();
        assert_eq!(b.status, NodeStatus::Joining);
        assert!(view.containers.is_empty());
    }

    #[test]
    fn leaving_nodes_are_left_and_hold_no_containers() {
        let view = ClusterView::build(
            "a",
            vec![member(
                "b",
                1,
                true,
                vec![(LEAVING_KEY.into(), "1".into()), record("c")],
            )],
        );
        assert_eq!(view.node("b").unwrap().status, NodeStatus::Left);
        assert!(view.containers.is_empty());
        assert_eq!(view.live_nodes().count(), 0);
    }

    #[test]
    fn garbage_values_from_peers_are_skipped() {
        let view = ClusterView::build(
            "a",
            vec![member(
                "b",
                1,
                true,
                vec![
                    (IDENTITY_KEY.into(), "{broken".into()),
                    (gossip::container_key("x"), "[]".into()),
                    record("ok"),
                ],
            )],
        );
        let b = view.node("b").unwrap();
        assert!(b.identity.is_none());
        assert_eq!(b.containers, 1);
    }
}
