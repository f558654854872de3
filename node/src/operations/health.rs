//! `GET /v1/health`: what this node can vouch for, each check ok or not, instead of a
//! constant "ok".

use std::time::Duration;

use proto::api::{Check, HealthChecks, HealthResponse};

use crate::config::VERSION;
use crate::handles::AgentHandles;

/// A check that does not answer within this long has failed: a health endpoint that hangs
/// with a hung runtime tells nobody anything.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn report(agent: &AgentHandles) -> HealthResponse {
    let (catalog, runtime, gossip) = tokio::join!(
        catalog_check(agent),
        runtime_check(agent),
        gossip_check(agent)
    );
    let checks = HealthChecks {
        catalog,
        runtime,
        gossip,
    };
    let all_ok = checks.catalog.ok && checks.runtime.ok && checks.gossip.ok;
    HealthResponse {
        status: if all_ok { "ok" } else { "degraded" }.to_string(),
        node_id: agent.node_id().to_string(),
        version: VERSION.to_string(),
        gossip: agent.gossip_stats.snapshot(),
        checks,
        time_ms: Some(crate::control::hlc::unix_ms()),
    }
}

fn passed(detail: impl Into<String>) -> Check {
    Check {
        ok: true,
        detail: detail.into(),
    }
}

fn failed(detail: impl Into<String>) -> Check {
    Check {
        ok: false,
        detail: detail.into(),
    }
}

async fn catalog_check(agent: &AgentHandles) -> Check {
    // A commit of an empty write transaction: a few milliseconds of fsync, as every catalog
    // write of this node takes.
    match agent.catalog.check_writable() {
        Ok(()) => passed("writable"),
        Err(err) => failed(format!("cannot write the catalog: {err}")),
    }
}

async fn runtime_check(agent: &AgentHandles) -> Check {
    if !agent.config.runs_workloads {
        return passed("runs no workloads");
    }
    let name = agent.replicas.runtime().name();
    match tokio::time::timeout(CHECK_TIMEOUT, agent.replicas.runtime().list()).await {
        Ok(Ok(containers)) => passed(format!("{name}: {} containers", containers.len())),
        Ok(Err(err)) => failed(format!("{name} does not answer: {err}")),
        Err(_) => failed(format!("{name} did not answer within {CHECK_TIMEOUT:?}")),
    }
}

async fn gossip_check(agent: &AgentHandles) -> Check {
    let peers = agent.membership.live_peer_addrs().await.len();
    match (peers, agent.config.seeds.is_empty()) {
        (0, true) => passed("no seeds given: a cluster of one until a peer joins"),
        (0, false) => failed("no live peer: check the seeds, the cluster key and UDP reachability"),
        (peers, _) => passed(format!("{peers} live peers")),
    }
}
