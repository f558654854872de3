//! The ingress's routes follow the cluster under continuous traffic: a scale up, a replica
//! container killed, a whole node killed. Once the ingress's own view has dropped a lost
//! replica, no request fails; the ones that failed before that are counted and printed.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use testbed::chaos::ChaosCluster;
use testbed::chaos::host::kill_host;
use testbed::chaos::load::LoadReport;

/// Requests that started after `from` (plus the time one request may already have been
/// under way to the lost replica) and failed.
fn failed_after(report: &LoadReport, from: Duration) -> Vec<String> {
    let slack = Duration::from_millis(100);
    report
        .failures()
        .into_iter()
        .filter(|sample| sample.at > from + slack)
        .map(|sample| format!("{}: {:?}", report.relative(sample.at), sample.outcome))
        .collect()
}

fn print_window(report: &LoadReport, what: &str, from: &str, to: &str) {
    let (Some(start), Some(end)) = (report.mark(from), report.mark(to)) else {
        return;
    };
    let before = report.failures_between(start, end + Duration::from_millis(100));
    println!(
        "{what}: out of the ingress's routes {:.2} s after it; {} requests failed before that",
        (end - start).as_secs_f64(),
        before.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_follow_scale_replica_loss_and_node_loss_under_load() {
    let mut chaos = ChaosCluster::start(17, "follow", 4, 2).await.unwrap();
    let load = chaos.load().unwrap();
    let client = chaos.witness();

    // Scale up: the new replica takes traffic with no reload.
    load.mark("scale");
    client.scale("follow", 3).await.unwrap();
    chaos
        .wait_for_replicas("3 routable replicas", |r| r.len() == 3)
        .await
        .unwrap();
    load.mark("scaled");

    // Kill one replica's container: its node restarts it, the ingress routes around it.
    let victim = chaos.docker_replicas().unwrap()[0].clone();
    load.mark("container kill");
    let killed = Command::new("docker")
        .args(["kill", &victim.id])
        .output()
        .unwrap();
    assert!(killed.status.success());
    chaos
        .wait_for_replicas("the killed replica out of the routes", |r| {
            !r.iter()
                .any(|r| r.node_id == victim.node && r.container_id == victim.placement)
        })
        .await
        .unwrap();
    load.mark("container out");
    chaos
        .wait_for_replicas("3 routable replicas again", |r| r.len() == 3)
        .await
        .unwrap();
    load.mark("container back");

    // Kill a whole node (agent and containers): its replica leaves the routes when the
    // ingress declares it dead, and is replaced elsewhere after the grace period.
    let node = chaos.routable().await[0].node_id.clone();
    let index = chaos.index_of(&node).unwrap();
    load.mark("node kill");
    kill_host(&mut chaos.cluster, index).unwrap();
    chaos
        .wait_for_replicas("the dead node out of the routes", |r| {
            !r.iter().any(|r| r.node_id == node)
        })
        .await
        .unwrap();
    load.mark("node out");
    chaos
        .wait_for_replicas("3 routable replicas on the survivors", |r| {
            r.len() == 3 && r.iter().all(|r| r.node_id != node)
        })
        .await
        .unwrap();
    load.mark("node replaced");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;

    let backends: BTreeSet<String> = report
        .samples
        .iter()
        .filter(|s| s.at > report.mark("scaled").unwrap())
        .filter_map(|s| s.backend().map(|b| format!("{}/{}", b.node, b.replica)))
        .collect();
    println!("{} requests; answered by {backends:?}", report.total());
    println!("per replica: {:?}", report.per_backend());
    print_window(
        &report,
        "killed container",
        "container kill",
        "container out",
    );
    print_window(&report, "killed node", "node kill", "node out");
    assert!(
        backends.len() >= 3,
        "the scaled-up replica took traffic: {backends:?}"
    );

    let after_container = failed_after(&report, report.mark("container out").unwrap());
    let after_container: Vec<&String> = after_container
        .iter()
        .filter(|f| !f.starts_with("node"))
        .collect();
    assert!(
        after_container.is_empty(),
        "requests failed after the killed container left the routes: {after_container:?}"
    );
    let after_node = failed_after(&report, report.mark("node out").unwrap());
    assert!(
        after_node.is_empty(),
        "requests failed after the dead node left the routes: {after_node:?}"
    );
}
