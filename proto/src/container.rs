//! One record per container (replica) a node runs, gossiped by that node.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Starting,
    Running,
    Stopping,
    Exited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ContainerHealth {
    /// No health check has answered yet.
    Unknown,
    Healthy,
    Unhealthy,
}

/// Where one replica of one release of an app runs, and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Unique on its node; also the suffix of the gossip key.
    pub id: String,
    pub app: String,
    pub release: u64,
    pub replica: u32,
    /// Address the ingress and peers dial to reach the app.
    pub addr: SocketAddr,
    pub state: ContainerState,
    pub health: ContainerHealth,
    /// Why it is not running or not healthy, when known (shown by `stratus status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ContainerRecord {
    /// Whether traffic may be sent to this replica.
    pub fn is_routable(&self) -> bool {
        self.state == ContainerState::Running && self.health == ContainerHealth::Healthy
    }
}
