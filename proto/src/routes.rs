//! What an agent tells the ingress embedded beside it: the apps (with their domains) and
//! where their replicas run. Plain data, so the ingress never depends on the node.

use crate::ContainerRecord;
use crate::catalog::AppRecord;

/// Sent on every change of the agent's view or catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteFeed {
    /// Every app record the catalog holds (tombstones included: they route nowhere).
    pub apps: Vec<AppRecord>,
    /// `(node id, record)` of every replica on a live node.
    pub replicas: Vec<(String, ContainerRecord)>,
}
