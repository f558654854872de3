//! Chaos suite, scenarios 4 and 6: on 5 agents with an app of 3 replicas and continuous
//! traffic through an ingress member, a rolling deploy and a rollback, then a drain, with
//! zero failed requests. (Scenarios 1, 2, 3 and 5 are in `chaos.rs`.) Each is a list of
//! steps (`testbed::scenario`), printed with their times; a failure names its step.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use testbed::chaos::ChaosCluster;
use testbed::scenario::{ChaosRun, ChaosStep};

#[tokio::test(flavor = "multi_thread")]
async fn scenario_4_rolling_deploy_and_rollback_under_load_fail_no_request() {
    use ChaosStep::*;
    let chaos = ChaosCluster::start(38, "chaos-roll", 5, 3).await.unwrap();
    let steps = vec![
        StartLoad,
        Mark("deploy"),
        Deploy("second"),
        // 3 replicas of the new release, alone.
        ExpectRoutable {
            count: 3,
            off: None,
            last_release: true,
        },
        ExpectTrafficOnLastRelease,
        Mark("rollback"),
        RollbackToFirst,
        ExpectRoutable {
            count: 3,
            off: None,
            last_release: true,
        },
        ExpectTrafficOnLastRelease,
        StopLoad,
        CheckNoFailedRequest,
        // The first, the second and the rollback's release all answered.
        CheckEveryReleaseServed,
        // Exactly 3 containers remain, per Docker too, once the old ones have drained.
        ExpectContainers {
            count: 3,
            off: None,
        },
    ];
    ChaosRun::new(chaos).run(steps).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_6_drain_moves_replicas_away_and_fails_no_request() {
    use ChaosStep::*;
    let chaos = ChaosCluster::start(39, "chaos-drain", 5, 3).await.unwrap();
    let steps = vec![
        StartLoad,
        PickReplicaHost("drained"),
        Mark("drain"),
        Drain {
            node: "drained",
            draining: true,
        },
        ExpectRoutable {
            count: 3,
            off: Some("drained"),
            last_release: false,
        },
        // Docker agrees: nothing left on the drained node.
        ExpectContainers {
            count: 3,
            off: Some("drained"),
        },
        StopLoad,
        CheckNoFailedRequest,
        CheckDraining("drained"),
        // Undrained: no longer marked, and the app scales up with it in the cluster.
        Drain {
            node: "drained",
            draining: false,
        },
        ExpectNoneDraining,
        Scale(5),
        ExpectRoutable {
            count: 5,
            off: None,
            last_release: false,
        },
    ];
    ChaosRun::new(chaos).run(steps).await.unwrap();
}
