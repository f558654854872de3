//! Agents in one process (`node::testsuite`): membership, partitions, graceful leave, seeds
//! given by name and a deploy end to end, with real HTTP between the agents and real
//! replicas (the process runtime and busybox httpd, as `examples/hello` uses), but no
//! processes to spawn and no UDP. What needs kill -9, nftables or Docker stays in the
//! testbed.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use node::testsuite::{Step, cluster_for_test, split_2_3_and_heal, wait_for};
use proto::api::NodeStatus::{Dead, Left, Live};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_converge_and_a_partitioned_node_is_dead_then_back() {
    let mut cluster = cluster_for_test(5).await.unwrap();
    let all: Vec<usize> = (0..5).collect();
    let steps = vec![
        Step::Expect {
            by: all.clone(),
            sees: all.iter().map(|&i| (i, Live)).collect(),
        },
        Step::Isolate(4),
        Step::Expect {
            by: vec![0, 1, 2, 3],
            sees: vec![(4, Dead), (0, Live), (1, Live), (2, Live), (3, Live)],
        },
        Step::Expect {
            by: vec![4],
            sees: vec![(0, Dead), (1, Dead), (2, Dead), (3, Dead)],
        },
        Step::Rejoin(4),
        Step::Expect {
            by: all.clone(),
            sees: all.iter().map(|&i| (i, Live)).collect(),
        },
        Step::StopNode(3),
        Step::Expect {
            by: vec![0, 1, 2, 4],
            sees: vec![(3, Left)],
        },
        Step::AddNode,
        Step::Expect {
            by: vec![0, 1, 2, 4, 5],
            sees: vec![(5, Live), (0, Live), (4, Live)],
        },
    ];
    cluster.run(steps).await.unwrap();
    cluster.shutdown().await.unwrap();
}

/// A step that cannot be taken stops the scenario, and the error names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_stops_the_scenario_and_is_named() {
    let mut cluster = cluster_for_test(1).await.unwrap();
    let err = cluster
        .run(vec![Step::Converged, Step::KillNode(0), Step::AddNode])
        .await
        .unwrap_err();
    assert!(
        err.starts_with("step 2 (kill -9 #0) failed: node-0 is a task of this process"),
        "{err}"
    );
    assert_eq!(cluster.nodes.len(), 1, "the step after the failure ran");
    cluster.shutdown().await.unwrap();
}

/// The same steps as the testbed's `a_partition_between_real_agents_splits_their_views_until_healed`
/// (there the cut is nftables on real agents; here it is gossip links).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_3_split_shows_each_side_only_itself_live_until_healed() {
    let mut cluster = cluster_for_test(5).await.unwrap();
    cluster.run(split_2_3_and_heal()).await.unwrap();
    cluster.shutdown().await.unwrap();
}

/// Moved from `testbed/tests/cluster.rs` (which sent SIGTERM; the binary's SIGTERM path is
/// still exercised by the testbed's chaos suite, which stops whole clusters that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_leaves_gracefully_and_peers_learn_at_once() {
    let mut cluster = cluster_for_test(3).await.unwrap();
    cluster
        .run(vec![
            Step::Converged,
            // Fails unless the agent exits without an error.
            Step::StopNode(2),
            Step::Expect {
                by: vec![0, 1],
                sees: vec![(2, Left)],
            },
        ])
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}

/// Moved from `testbed/tests/dns_seeds.rs`: a seed given as a DNS name is resolved (the
/// hosts file, through hickory) and dialed. node-0 gossips at 127.0.0.1:17000, which is
/// what `localhost:17000` resolves to; the joiner has no other seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_through_a_seed_given_by_name() {
    let mut cluster = cluster_for_test(1).await.unwrap();
    assert_eq!(cluster.node(0).gossip_addr.to_string(), "127.0.0.1:17000");
    cluster
        .add_node_with(|args| args.seeds = Some(vec!["localhost:17000".to_string()]))
        .await
        .unwrap();
    cluster
        .run(vec![Step::Expect {
            by: vec![0],
            sees: vec![(1, Live)],
        }])
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_one_node_runs_and_answers_on_the_others() {
    let cluster = cluster_for_test(3).await.unwrap();
    let client = cluster.node(1).client();
    wait_for(Duration::from_secs(20), || async {
        let nodes = client.nodes().await.map_err(|err| err.to_string())?;
        let live = nodes
            .nodes
            .iter()
            .filter(|node| node.status == Live)
            .count();
        (live == 3).then_some(()).ok_or(format!("{live} of 3 live"))
    })
    .await
    .unwrap();

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let mut bundle = tempfile::NamedTempFile::new().unwrap();
    node::bundle::pack_dir(&example, bundle.as_file_mut()).unwrap();
    let accepted = client.deploy("hello", bundle.path(), |_| {}).await.unwrap();
    assert_eq!(accepted.release, 1);
    assert!(accepted.holders.len() >= 2, "{:?}", accepted.holders);

    // Every node answers from its own view: the two healthy replicas show on node 2 too.
    let other = cluster.node(2).client();
    wait_for(Duration::from_secs(60), || async {
        let view = other.app("hello").await.map_err(|err| err.to_string())?;
        let healthy = view
            .replicas
            .iter()
            .filter(|replica| replica.health == proto::ContainerHealth::Healthy)
            .count();
        (healthy == 2)
            .then_some(())
            .ok_or(format!("{healthy} of 2 healthy: {:?}", view.replicas))
    })
    .await
    .unwrap();
    let view = other.app("hello").await.unwrap();
    for replica in &view.replicas {
        let page = node::testsuite::http_get_for_test(replica.addr)
            .await
            .unwrap();
        assert!(page.contains("hello from hello release 1"), "{page}");
    }

    other.destroy("hello").await.unwrap();
    wait_for(Duration::from_secs(30), || async {
        match client.app("hello").await {
            Err(err) if err.status() == Some(404) => Ok(()),
            Ok(view) => Err(format!("still there: {:?}", view.replicas)),
            Err(err) => Err(err.to_string()),
        }
    })
    .await
    .unwrap();
    cluster.shutdown().await.unwrap();
}
