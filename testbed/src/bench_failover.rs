//! `bench failover`: kill -9 of a host that runs a replica, under continuous traffic
//! through an ingress, and how long until (a) the ingress no longer sends to it and (b) the
//! lost replicas are replaced and healthy.
//!
//! Per trial: a stable cluster (every agent live, exactly `replicas` healthy replicas of
//! the current release, as many containers in Docker), then the kill of a worker that runs
//! a replica, agent and containers at once ([`crate::chaos::host::kill_host`]). Measured
//! from the kill:
//!
//! - (a) *traffic off the dead host*: the last request the ingress sent to it, from the
//!   ingress's access log (a request that tried a dead replica first was retried elsewhere
//!   and is logged with `retries` > 0, or failed); also shown, when the dead host's replicas
//!   left the ingress member's view, which is what its route table is built from;
//! - (b) *replacements healthy*: `replicas` routable replicas of the current release again,
//!   none on the dead host, in the ingress member's view;
//! - the requests that failed meanwhile.
//!
//! The host is restarted between trials, blank (its containers removed), and the cluster
//! is let settle again.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::chaos::host::{access_lines, kill_host, wipe_host};
use crate::chaos::{ChaosCluster, SETTLE};

/// One trial's figures.
#[derive(Debug, Clone)]
pub struct FailoverTrial {
    pub victim: String,
    /// (a): kill → last request the ingress sent to the dead host (zero if none did).
    pub traffic_off: Duration,
    /// kill → the dead host's replicas gone from the ingress member's view.
    pub route_gone: Duration,
    /// (b): kill → the app's replicas all healthy again elsewhere.
    pub healthy: Duration,
    /// Requests through the ingress that failed between the kill and (b).
    pub failed_requests: usize,
    pub requests: usize,
}

/// Runs `trials` trials on 5 workers and an ingress member on `127.0.<net>.x`.
pub async fn failover(net: u8, trials: usize) -> anyhow::Result<Vec<FailoverTrial>> {
    const APP: &str = "chaos-bench";
    let mut chaos = ChaosCluster::start(net, APP, 5, 3).await?;
    let load = chaos.load()?;
    let mut results = Vec::new();
    for trial in 0..trials {
        settle(&chaos).await?;
        let mut on_nodes: Vec<String> = chaos
            .routable()
            .await
            .into_iter()
            .map(|replica| replica.node_id)
            .collect();
        on_nodes.sort();
        on_nodes.dedup();
        anyhow::ensure!(!on_nodes.is_empty(), "no replica to kill");
        let victim = on_nodes[trial % on_nodes.len()].clone();
        let index = chaos
            .index_of(&victim)
            .ok_or_else(|| anyhow::anyhow!("{victim} is not an agent of this cluster"))?;

        let label = format!("kill {victim} (trial {})", trial + 1);
        load.mark(&label);
        let killed_at = Instant::now();
        let killed = kill_host(&mut chaos.cluster, index)?;

        let mut route_gone = None;
        let mut healthy = None;
        while route_gone.is_none() || healthy.is_none() {
            anyhow::ensure!(
                killed_at.elapsed() < SETTLE,
                "trial {}: not recovered after {SETTLE:?}\n{}",
                trial + 1,
                chaos.cluster.logs_tail(15)
            );
            let view = crate::chaos::host::all_replicas(&chaos.witness(), APP).await;
            if route_gone.is_none() && !view.iter().any(|replica| replica.node_id == victim) {
                route_gone = Some(killed_at.elapsed());
            }
            let routable = chaos.routable().await;
            if healthy.is_none()
                && routable.len() == 3
                && routable.iter().all(|replica| replica.node_id != victim)
            {
                healthy = Some(killed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let route_gone = route_gone.unwrap_or_default();
        let healthy = healthy.unwrap_or_default();
        // The access log is written as requests end: give the last ones a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let traffic_off = last_attempt_on(&chaos, APP, &victim, killed.wall)?;
        // Request counts come from the load's report, once it stops.
        results.push(FailoverTrial {
            victim: victim.clone(),
            traffic_off,
            route_gone,
            healthy,
            failed_requests: 0,
            requests: 0,
        });
        println!(
            "trial {}: {victim} killed -9 with {} container(s); ingress off it after {:.2} s \
             (its replicas left the ingress's view after {:.2} s); replacements healthy after {:.2} s",
            trial + 1,
            killed.containers.len(),
            traffic_off.as_secs_f64(),
            route_gone.as_secs_f64(),
            healthy.as_secs_f64(),
        );
        // The host comes back blank: a returning host's old replicas next to their
        // replacements are the reconciler's business (surplus removal), not this figure's.
        wipe_host(&chaos.cluster.cluster_id(), &victim)?;
        chaos.cluster.restart(index)?;
    }
    settle(&chaos).await?;
    let report = load.stop().await;
    for (trial, result) in results.iter_mut().enumerate() {
        let label = format!("kill {} (trial {})", result.victim, trial + 1);
        let from = report.mark(&label).unwrap_or_default();
        let to = from + result.healthy;
        result.failed_requests = report.failures_between(from, to).len();
        result.requests = report
            .samples
            .iter()
            .filter(|sample| sample.at >= from && sample.at < to)
            .count();
    }
    print!("{report}");
    Ok(results)
}

/// Every agent live, exactly the app's replica count healthy on the current release, and
/// as many of its containers running in Docker (a restarted host has sorted out the
/// containers it found).
async fn settle(chaos: &ChaosCluster) -> anyhow::Result<()> {
    let wanted = usize::try_from(chaos.replicas)?;
    chaos
        .cluster
        .wait_for("a settled cluster", SETTLE, || async {
            chaos.cluster.converged().await
                && chaos.routable().await.len() == wanted
                && chaos
                    .docker_replicas()
                    .is_ok_and(|replicas| replicas.len() == wanted)
        })
        .await?;
    Ok(())
}

/// Kill → the last request the ingress sent to `victim`'s replicas: a request answered by
/// one, or retried after an attempt failed (the first attempt went to a dead replica), or
/// failed, logged after the kill.
fn last_attempt_on(
    chaos: &ChaosCluster,
    app: &str,
    victim: &str,
    killed: SystemTime,
) -> anyhow::Result<Duration> {
    let log = std::fs::read_to_string(chaos.ingress_log())?;
    let last = access_lines(&log)
        .into_iter()
        .filter(|line| line.app == app && line.wall >= killed)
        .filter(|line| {
            line.retries > 0 || line.status >= 500 || line.backend_node() == Some(victim)
        })
        .map(|line| line.wall)
        .max();
    Ok(last
        .and_then(|wall| wall.duration_since(killed).ok())
        .unwrap_or_default())
}
