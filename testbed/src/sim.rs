//! An in-process cluster on chitchat's in-memory transport, run on tokio's paused clock.
//!
//! Every node is a real [`Membership`] (the agent's own code) publishing the agent's keys;
//! only the sockets are replaced. With the clock paused, a "round" is one gossip interval of
//! virtual time and costs whatever CPU it costs, so 1,000 nodes fit on a 2-core machine.
//! Call these functions inside a runtime built with `start_paused(true)`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use node::cluster::membership::{ChannelTransport, Membership, MembershipConfig};
use node::cluster::seal::OVERHEAD;
use proto::gossip::container_key;
use proto::{ContainerHealth, ContainerRecord, ContainerState, NodeIdentity, NodeLoad};

/// chitchat's own ceiling: one UDP datagram.
const MTU: usize = 65_507;

pub struct SimCluster {
    pub transport: ChannelTransport,
    pub nodes: Vec<Membership>,
    pub gossip_interval: Duration,
}

/// Address of simulated node `index`. Nothing is ever sent to it: the transport is in memory.
pub fn sim_addr(index: usize) -> SocketAddr {
    let host = u8::try_from(index % 250 + 2).unwrap_or(2);
    let net = u8::try_from(index / 250).unwrap_or(u8::MAX);
    SocketAddr::new(Ipv4Addr::new(127, 1, net, host).into(), 7946)
}

impl SimCluster {
    /// Starts `count` nodes, each seeded with the first three.
    pub async fn start(count: usize, gossip_interval: Duration) -> anyhow::Result<SimCluster> {
        let transport = ChannelTransport::with_mtu(MTU);
        let seeds: Vec<SocketAddr> = (0..count.min(3)).map(sim_addr).collect();
        let mut nodes = Vec::with_capacity(count);
        for index in 0..count {
            let addr = sim_addr(index);
            let node_id = format!("sim-{index:04}");
            let config = MembershipConfig {
                seeds: seeds.iter().copied().filter(|seed| *seed != addr).collect(),
                gossip_interval,
                ..MembershipConfig::new(&node_id, 1, addr)
            };
            let identity = NodeIdentity {
                builds: false,
                gvisor: false,
                node_id: node_id.clone(),
                gossip_addr: addr,
                api_addr: SocketAddr::new(addr.ip(), 7070),
                api_tls: false,
                ingress_addr: None,
                version: node::agent::VERSION.to_string(),
                labels: BTreeMap::from([("zone".to_string(), format!("z{}", index % 3))]),
                started_at_ms: 0,
                runs_workloads: true,
            };
            let load = NodeLoad {
                cpu_cores: 8,
                cpu_usage_pct: 12.5,
                mem_total_bytes: 32 << 30,
                mem_available_bytes: 20 << 30,
                reserved_cpu_millis: 0,
                reserved_mem_bytes: 0,
            };
            nodes.push(Membership::start(config, &identity, load, &transport).await?);
        }
        Ok(SimCluster {
            transport,
            nodes,
            gossip_interval,
        })
    }

    /// Advances virtual time by one gossip interval.
    pub async fn round(&self) {
        tokio::time::sleep(self.gossip_interval).await;
    }

    /// How many nodes see every node as live.
    pub async fn fully_joined(&self) -> usize {
        let mut count = 0;
        for node in &self.nodes {
            if node.live_peer_addrs().await.len() + 1 == self.nodes.len() {
                count += 1;
            }
        }
        count
    }

    /// How many nodes hold `value` under `key` for node `origin`.
    pub async fn holders(&self, origin: usize, key: &str, value: &str) -> usize {
        let origin_id = self.nodes[origin].self_id().to_string();
        let mut count = 0;
        for node in &self.nodes {
            if node.peer_value(&origin_id, key).await.as_deref() == Some(value) {
                count += 1;
            }
        }
        count
    }

    pub async fn stop(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }
}

/// What one simulation measured.
#[derive(Debug, Clone)]
pub struct GossipReport {
    pub nodes: usize,
    /// Rounds until every node saw every other node live (`None`: not within the limit).
    pub rounds_to_join: Option<u32>,
    /// Rounds until a container record published on one node was held by every node.
    pub rounds_to_spread: Option<u32>,
    /// Chitchat bytes per node per round once the cluster is quiet.
    pub steady_bytes_per_node_round: f64,
    /// The same with the seal's per-datagram overhead added (what the agent puts on the wire).
    pub steady_sealed_bytes_per_node_round: f64,
    pub gossip_interval: Duration,
}

/// Joins `count` nodes, measures quiet-cluster traffic, then how fast one new key spreads.
pub async fn measure_gossip(
    count: usize,
    gossip_interval: Duration,
    max_rounds: u32,
) -> anyhow::Result<GossipReport> {
    let cluster = SimCluster::start(count, gossip_interval).await?;
    let mut rounds_to_join = None;
    for round in 1..=max_rounds {
        cluster.round().await;
        if cluster.fully_joined().await == count {
            rounds_to_join = Some(round);
            break;
        }
    }
    // Let the joining deltas drain before measuring the quiet state.
    for _ in 0..5 {
        cluster.round().await;
    }
    let before = cluster.transport.statistics();
    const STEADY_ROUNDS: u32 = 5;
    for _ in 0..STEADY_ROUNDS {
        cluster.round().await;
    }
    let after = cluster.transport.statistics();
    let bytes = (after.num_bytes_total - before.num_bytes_total) as f64;
    let messages = (after.num_messages_total - before.num_messages_total) as f64;
    let per_node_round = f64::from(STEADY_ROUNDS) * count as f64;

    let record = ContainerRecord {
        id: "bench-1".to_string(),
        app: "bench".to_string(),
        release: 1,
        replica: 0,
        addr: SocketAddr::new(sim_addr(0).ip(), 30_000),
        state: ContainerState::Running,
        health: ContainerHealth::Healthy,
        detail: None,
    };
    cluster.nodes[0].publish_container(&record).await;
    let key = container_key(&record.id);
    let value = proto::gossip::encode(&record);
    let mut rounds_to_spread = None;
    for round in 1..=max_rounds {
        cluster.round().await;
        if cluster.holders(0, &key, &value).await == count {
            rounds_to_spread = Some(round);
            break;
        }
    }
    cluster.stop().await;
    Ok(GossipReport {
        nodes: count,
        rounds_to_join,
        rounds_to_spread,
        steady_bytes_per_node_round: bytes / per_node_round,
        steady_sealed_bytes_per_node_round: (bytes + messages * OVERHEAD as f64) / per_node_round,
        gossip_interval,
    })
}
