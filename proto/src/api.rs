//! Bodies of the HTTP API (`/v1/...`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{NodeIdentity, NodeLoad};

/// Every error the API returns: `{ "error": "...", "detail": "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Short machine-friendly cause, e.g. `not_found`.
    pub error: String,
    /// What went wrong and what to do about it.
    pub detail: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub node_id: String,
    pub version: String,
    pub gossip: GossipStats,
}

/// Counters of the gossip transport since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStats {
    pub encrypted: bool,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Datagrams that failed authentication (wrong key, tampered, garbage): dropped.
    pub dropped_unauthenticated: u64,
    /// Datagrams that were authentic but did not decode as a gossip message: dropped.
    pub dropped_malformed: u64,
    /// Messages too large to send even after fragmentation: dropped.
    pub dropped_oversize: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heard of through gossip, not yet confirmed live by this node's failure detector
    /// (a node that just started sees everyone this way for a round or two).
    Joining,
    Live,
    /// Announced a graceful shutdown.
    Left,
    /// The failure detector stopped hearing from it.
    Dead,
}

/// One node as the answering node sees it through gossip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    /// Grows on every restart of the node.
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub status: NodeStatus,
    /// Absent until the node's identity key has reached the answering node.
    pub identity: Option<NodeIdentity>,
    pub load: Option<NodeLoad>,
    /// Containers it runs (always 0 for a node that is not live).
    pub containers: usize,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodesResponse {
    /// The node that answered.
    pub self_id: String,
    pub nodes: Vec<NodeView>,
}
