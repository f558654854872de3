//! What a node publishes about itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Who a node is and where to reach it. Published once at start (and again if it changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeIdentity {
    pub node_id: String,
    /// Address peers send gossip datagrams to.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub gossip_addr: SocketAddr,
    /// Address of this node's HTTP API.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub api_addr: SocketAddr,
    /// Whether the API at `api_addr` speaks HTTPS (`--api-tls-cert`): peers call it with
    /// `https://`. Absent from nodes older than API TLS, which serve plain HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_tls: bool,
    /// Address of the ingress embedded in this node, if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub ingress_addr: Option<SocketAddr>,
    /// Version of the `stratus` binary.
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Wall-clock start time, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// False for members that only gossip (`--no-workloads`, ingress-only nodes): the
    /// scheduler never places replicas there.
    #[serde(default = "yes")]
    pub runs_workloads: bool,
    /// Whether builds may be placed here (it runs workloads and has Docker). Absent from
    /// nodes older than builds, which cannot build.
    #[serde(default)]
    pub builds: bool,
    /// Whether replicas of gVisor tenants may run here: its Docker daemon lists the
    /// `runsc` runtime. Absent from older nodes, which have no gVisor support.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gvisor: bool,
}

fn yes() -> bool {
    true
}

/// A node's capacity and how much of it is used. Republished only on meaningful change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeLoad {
    pub cpu_cores: u32,
    /// Whole-machine CPU utilisation, 0.0 to 100.0.
    pub cpu_usage_pct: f32,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    /// Sum of the CPU reservations of the containers this node runs, in millicores.
    pub reserved_cpu_millis: u64,
    /// Sum of the memory reservations of the containers this node runs.
    pub reserved_mem_bytes: u64,
}

/// Thresholds under which a load change is not worth a gossip update.
///
/// An idle cluster should be quiet: CPU jitters by a few percent every sample, and a
/// republished key costs every node a delta. Reservations always count, since the
/// scheduler relies on them being exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadChangeThresholds {
    pub cpu_pct_points: f32,
    /// Fraction of total memory, 0.0 to 1.0.
    pub mem_fraction: f64,
}

impl Default for LoadChangeThresholds {
    fn default() -> Self {
        LoadChangeThresholds {
            cpu_pct_points: 5.0,
            mem_fraction: 0.02,
        }
    }
}

impl NodeLoad {
    /// Whether `next` differs enough from `self` (the last published load) to republish.
    pub fn differs_meaningfully(&self, next: &NodeLoad, thresholds: LoadChangeThresholds) -> bool {
        if self.cpu_cores != next.cpu_cores
            || self.mem_total_bytes != next.mem_total_bytes
            || self.reserved_cpu_millis != next.reserved_cpu_millis
            || self.reserved_mem_bytes != next.reserved_mem_bytes
        {
            return true;
        }
        if (self.cpu_usage_pct - next.cpu_usage_pct).abs() >= thresholds.cpu_pct_points {
            return true;
        }
        let mem_delta = self.mem_available_bytes.abs_diff(next.mem_available_bytes) as f64;
        mem_delta >= thresholds.mem_fraction * next.mem_total_bytes.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> NodeLoad {
        NodeLoad {
            cpu_cores: 2,
            cpu_usage_pct: 10.0,
            mem_total_bytes: 1_000_000,
            mem_available_bytes: 500_000,
            reserved_cpu_millis: 0,
            reserved_mem_bytes: 0,
        }
    }

    #[test]
    fn small_jitter_is_not_republished() {
        let prev = load();
        let next = NodeLoad {
            cpu_usage_pct: 13.0,
            mem_available_bytes: 490_000,
            ..prev
        };
        assert!(!prev.differs_meaningfully(&next, LoadChangeThresholds::default()));
    }

    #[test]
    fn cpu_memory_and_reservation_changes_are_republished() {
        let prev = load();
        let thresholds = LoadChangeThresholds::default();
        let cpu = NodeLoad {
            cpu_usage_pct: 16.0,
            ..prev
        };
        let mem = NodeLoad {
            mem_available_bytes: 470_000,
            ..prev
        };
        let reserved = NodeLoad {
            reserved_cpu_millis: 1,
            ..prev
        };
        assert!(prev.differs_meaningfully(&cpu, thresholds));
        assert!(prev.differs_meaningfully(&mem, thresholds));
        assert!(prev.differs_meaningfully(&reserved, thresholds));
    }
}
