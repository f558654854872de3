//! `GET /v1/health`: what this node can vouch for, each check ok or not, instead of a
//! constant "ok".

use std::time::Duration;

use proto::api::{Check, HealthChecks, HealthResponse};

use crate::config::VERSION;
use crate::state::AgentState;

/// A check that does not answer within this long has failed: a health endpoint that hangs
/// with a hung runtime tells nobody anything.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn report(state: &AgentState) -> HealthResponse {
    let (catalog, runtime, gossip) = tokio::join!(
        catalog_check(state),
        runtime_check(state),
        gossip_check(state)
    );
    let checks = HealthChecks {
        catalog,
        runtime,
        gossip,
    };
    let all_ok = checks.catalog.ok && checks.runtime.ok && checks.gossip.ok;
    HealthResponse {
        status: if all_ok { "ok" } else { "degraded" }.to_string(),
        node_id: state.node_id().to_string(),
        version: VERSION.to_string(),
        gossip: state.stats.snapshot(),
        checks,
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

async fn catalog_check(state: &AgentState) -> Check {
    // A commit of an empty write transaction: a few milliseconds of fsync, as every catalog
    // write of this node takes.
    match state.catalog_store.check_writable() {
        Ok(()) => passed("writable"),
        Err(err) => failed(format!("cannot write the catalog: {err}")),
    }
}

async fn runtime_check(state: &AgentState) -> Check {
    if !state.config.runs_workloads {
        return passed("runs no workloads");
    }
    let name = state.runtime.name();
    match tokio::time::timeout(CHECK_TIMEOUT, state.runtime.list()).await {
        Ok(Ok(containers)) => passed(format!("{name}: {} containers", containers.len())),
        Ok(Err(err)) => failed(format!("{name} does not answer: {err}")),
        Err(_) => failed(format!("{name} did not answer within {CHECK_TIMEOUT:?}")),
    }
}

async fn gossip_check(state: &AgentState) -> Check {
    let peers = state.membership.live_peer_addrs().await.len();
    match (peers, state.config.seeds.is_empty()) {
        (0, true) => passed("no seeds given: a cluster of one until a peer joins"),
        (0, false) => failed("no live peer: check the seeds, the cluster key and UDP reachability"),
        (peers, _) => passed(format!("{peers} live peers")),
    }
}
