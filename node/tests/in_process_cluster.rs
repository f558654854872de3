//! Agents in one process (`node::testsuite`): membership, partitions, graceful leave and a
//! deploy end to end, with real HTTP between the agents and real replicas (the process
//! runtime and busybox httpd, as `examples/hello` uses), but no processes to spawn and no
//! UDP. What needs kill -9, nftables or Docker stays in the testbed.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use node::testsuite::{Step, cluster_for_test, wait_for};
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
        let page = http_get(replica.addr).await;
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

/// A plain HTTP/1.0 GET, to read a replica's page without another client crate.
async fn http_get(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).await.unwrap();
    page
}
