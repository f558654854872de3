//! Chaos suite, scenarios 4 and 6: on 5 agents with an app of 3 replicas and continuous
//! traffic through an ingress member, a rolling deploy and a rollback, then a drain, with
//! zero failed requests. (Scenarios 1, 2, 3 and 5 are in `chaos.rs`.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;

use testbed::chaos::ChaosCluster;
use testbed::chaos::load::LoadReport;

fn assert_no_failures(report: &LoadReport, what: &str) {
    let failures: Vec<String> = report
        .failures()
        .into_iter()
        .map(|sample| format!("{}: {:?}", report.relative(sample.at), sample.outcome))
        .collect();
    println!(
        "{what}: {} requests, {} failed; per replica {:?}",
        report.total(),
        failures.len(),
        report.per_backend()
    );
    assert!(failures.is_empty(), "{what}: {failures:?}");
}

fn releases_served(report: &LoadReport) -> BTreeSet<u64> {
    report
        .samples
        .iter()
        .filter_map(|sample| sample.backend().map(|backend| backend.release))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_4_rolling_deploy_and_rollback_under_load_fail_no_request() {
    let chaos = ChaosCluster::start(38, "chaos-roll", 5, 3).await.unwrap();
    let client = chaos.witness();
    let first = chaos.release;
    let load = chaos.load().unwrap();

    load.mark("deploy");
    let second = chaos.deploy("second").await.unwrap();
    let took = chaos
        .wait_for_replicas("3 replicas of the new release, alone", |r| {
            r.len() == 3 && r.iter().all(|r| r.release == second)
        })
        .await
        .unwrap();
    println!("rolling deploy: {:.1} s", took.as_secs_f64());

    load.mark("rollback");
    let back = client.rollback(&chaos.app, Some(first)).await.unwrap();
    let took = chaos
        .wait_for_replicas("3 replicas of the rollback, alone", |r| {
            r.len() == 3 && r.iter().all(|r| r.release == back.release)
        })
        .await
        .unwrap();
    println!("rollback to v{first}: {:.1} s", took.as_secs_f64());
    let report = load.stop().await;
    assert_no_failures(&report, "rolling deploy and rollback");
    let served = releases_served(&report);
    assert!(
        served.contains(&first) && served.contains(&second) && served.contains(&back.release),
        "{served:?}"
    );
    // Exactly 3 containers remain, per Docker too, once the old ones have drained.
    chaos
        .cluster
        .wait_for("3 containers left", testbed::chaos::SETTLE, || async {
            chaos.docker_replicas().is_ok_and(|d| d.len() == 3)
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_6_drain_moves_replicas_away_and_fails_no_request() {
    let chaos = ChaosCluster::start(39, "chaos-drain", 5, 3).await.unwrap();
    let client = chaos.witness();
    let load = chaos.load().unwrap();
    let drained = chaos.routable().await[0].node_id.clone();

    load.mark("drain");
    client.drain(&drained, true).await.unwrap();
    let took = chaos
        .wait_for_replicas("3 replicas, none on the drained node", |r| {
            r.len() == 3 && r.iter().all(|r| r.node_id != drained)
        })
        .await
        .unwrap();
    println!("drain of {drained}: {:.1} s", took.as_secs_f64());
    // Docker agrees: nothing left on the drained node.
    chaos
        .cluster
        .wait_for(
            "the drained node's container gone",
            testbed::chaos::SETTLE,
            || async {
                chaos
                    .docker_replicas()
                    .is_ok_and(|d| d.len() == 3 && d.iter().all(|r| r.node != drained))
            },
        )
        .await
        .unwrap();
    let report = load.stop().await;
    assert_no_failures(&report, "drain");
    let view = client.nodes().await.unwrap();
    assert!(
        view.nodes
            .iter()
            .any(|n| n.node_id == drained && n.draining)
    );

    // Undrained: no longer marked, and the app scales up with it in the cluster.
    client.drain(&drained, false).await.unwrap();
    chaos
        .cluster
        .wait_for("the undrain gossiped", testbed::chaos::SETTLE, || async {
            client
                .nodes()
                .await
                .is_ok_and(|view| view.nodes.iter().all(|n| !n.draining))
        })
        .await
        .unwrap();
    client.scale(&chaos.app, 5).await.unwrap();
    chaos
        .wait_for_replicas("5 replicas", |r| r.len() == 5)
        .await
        .unwrap();
}
