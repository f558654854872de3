//! Deploys on agents in one process (`node::testsuite`), moved from the process testbed
//! (`testbed/tests/deploy_resilience.rs`): concurrent deploys never overcommit and a misfit
//! fails with a reason, concurrent deploys of one app get distinct numbers and one winner,
//! a crashing app fails the deploy with its last output, and the example runs with the
//! process runtime; and from `testbed/tests/deploy_s3.rs`, a deploy whose bundles live in a
//! real S3-protocol server (s3s-fs, started by `scripts/start-s3.sh`). The CLI checks run
//! the real `stratus` binary against an agent's API.
//!
//! What needs kill -9 (the accepting node dying after the ack, the whole cluster going down)
//! or Docker (adopting containers) stays in the testbed.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use node::testsuite::{
    Step, TestCluster, USER_TOKEN, bundle_for_test, cluster_for_test, examples_dir,
    healthy_replicas, hello_app_for_test, wait_for,
};

/// As long as the testbed gave these waits: the bound, never the figure.
const SETTLE: Duration = Duration::from_secs(90);

/// `count` agents, every one seeing every other live.
async fn converged_cluster(count: usize) -> TestCluster {
    let mut cluster = cluster_for_test(count).await.unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    cluster
}

/// `stratus deploy DIR --api ADDR` with the user token; (success, stderr).
async fn cli_deploy(dir: &std::path::Path, api: std::net::SocketAddr) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stratus"))
        .arg("deploy")
        .arg(dir)
        .args(["--api", &api.to_string(), "--token", USER_TOKEN])
        .args(["--timeout-secs", "60"])
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_on_three_nodes_never_overcommit_and_misfits_fail_with_a_reason() {
    let cluster = converged_cluster(3).await;
    let apps = ["alpha", "bravo", "charlie"];
    let work = tempfile::tempdir().unwrap();
    // Each node has 2 cores: at 0.9 core a replica, a node fits exactly 2 replicas, and
    // 3 apps of 2 replicas fill the cluster only if nothing is overcommitted.
    let bundles: Vec<_> = apps
        .iter()
        .map(|app| bundle_for_test(&hello_app_for_test(work.path(), app, 2, 0.9).unwrap()).unwrap())
        .collect();
    let mut deploys = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let client = cluster.node(index).client();
        let path = bundles[index].path().to_path_buf();
        let app = app.to_string();
        deploys.push(tokio::spawn(async move {
            client.deploy(&app, &path, |_| {}).await
        }));
    }
    for deploy in deploys {
        deploy.await.unwrap().unwrap();
    }
    let client = cluster.node(0).client();
    wait_for(SETTLE, || async {
        let mut total = 0;
        for app in apps {
            total += healthy_replicas(&client, app, 1).await.len();
        }
        (total == 6)
            .then_some(())
            .ok_or(format!("{total} of 6 replicas healthy"))
    })
    .await
    .unwrap();
    let mut per_node = std::collections::BTreeMap::<String, u32>::new();
    for app in apps {
        for replica in healthy_replicas(&client, app, 1).await {
            *per_node.entry(replica.node_id).or_default() += 1;
        }
    }
    assert!(
        per_node.values().all(|n| *n <= 2),
        "a node was overcommitted: {per_node:?}"
    );

    // The cluster is full: one more replica cannot be placed, and the deploy says why.
    let delta = hello_app_for_test(work.path(), "delta", 1, 0.9).unwrap();
    let (success, stderr) = cli_deploy(&delta, cluster.node(1).api_addr).await;
    assert!(!success, "a deploy that cannot fit reported success");
    assert!(
        stderr.contains("failed")
            && (stderr.contains("refuses") || stderr.contains("no live node has room")),
        "{stderr}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_app_fails_the_deploy_with_its_last_output() {
    let cluster = converged_cluster(2).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("crasher");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("stratus.toml"),
        "name = \"crasher\"\ncmd = \"echo missing DATABASE_URL, giving up; exit 3\"\n[health]\ninterval = \"300ms\"\n",
    )
    .unwrap();
    let (success, stderr) = cli_deploy(&dir, cluster.node(0).api_addr).await;
    assert!(!success, "a crashing app was reported live");
    assert!(stderr.contains("exited with code 3"), "{stderr}");
    assert!(
        stderr.contains("missing DATABASE_URL"),
        "the app's last output is not shown: {stderr}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runs_with_the_process_runtime_too() {
    let cluster = converged_cluster(2).await;
    let bundle = bundle_for_test(&examples_dir().join("hello")).unwrap();
    let client = cluster.node(0).client();
    let accepted = client.deploy("hello", bundle.path(), |_| {}).await.unwrap();
    wait_for(SETTLE, || async {
        let healthy = healthy_replicas(&client, "hello", accepted.release)
            .await
            .len();
        (healthy == 2)
            .then_some(())
            .ok_or(format!("{healthy} of 2 process replicas healthy"))
    })
    .await
    .unwrap();
    for replica in healthy_replicas(&client, "hello", accepted.release).await {
        let body = node::testsuite::http_get_for_test(replica.addr)
            .await
            .unwrap();
        assert!(
            body.contains(&format!("on node {}", replica.node_id)),
            "{body}"
        );
    }
    client.destroy("hello").await.unwrap();
    wait_for(SETTLE, || async {
        if client.app("hello").await.is_ok() {
            return Err("the app is still there".to_string());
        }
        for index in 0..2 {
            let view = cluster
                .node(index)
                .client()
                .nodes()
                .await
                .map_err(|err| err.to_string())?;
            if let Some(node) = view.nodes.iter().find(|node| node.containers != 0) {
                return Err(format!(
                    "node-{index} sees {} with {} replicas",
                    node.node_id, node.containers
                ));
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_of_one_app_get_distinct_numbers_and_one_winner_everywhere() {
    let cluster = converged_cluster(3).await;
    let work = tempfile::tempdir().unwrap();
    let bundle =
        bundle_for_test(&hello_app_for_test(work.path(), "twin", 1, 0.1).unwrap()).unwrap();
    let mut deploys = Vec::new();
    for node in &cluster.nodes {
        let client = node.client();
        let path = bundle.path().to_path_buf();
        deploys.push(tokio::spawn(async move {
            client.deploy("twin", &path, |_| {}).await
        }));
    }
    let mut numbers = Vec::new();
    for deploy in deploys {
        numbers.push(deploy.await.unwrap().unwrap().release);
    }
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), 3, "release numbers were reused: {numbers:?}");
    wait_for(SETTLE, || async {
        let mut current = Vec::new();
        for node in &cluster.nodes {
            let view = node
                .client()
                .app("twin")
                .await
                .map_err(|err| err.to_string())?;
            current.push((view.release.map(|r| r.number), view.releases.len()));
        }
        current
            .iter()
            .all(|c| *c == current[0] && c.0.is_some() && c.1 == 3)
            .then_some(())
            .ok_or(format!(
                "(current release, releases known) per node: {current:?}"
            ))
    })
    .await
    .unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_with_the_s3_store_keeps_the_bundle_in_the_bucket() {
    const ENDPOINT: &str = "http://127.0.0.1:19000";
    const ACCESS_KEY: &str = "stratus-test";
    const SECRET_KEY: &str = "stratus-test-secret";
    let status = tokio::process::Command::new("bash")
        .arg(examples_dir().join("../scripts/start-s3.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "cannot start the S3 server");
    let bucket = format!("in-process-{}", std::process::id());
    let mut cluster = cluster_for_test(0).await.unwrap();
    for _ in 0..3 {
        cluster
            .add_node_with(|args| {
                args.store = Some(format!("s3://{bucket}"));
                args.s3_endpoint = Some(ENDPOINT.to_string());
                args.s3_access_key = Some(ACCESS_KEY.to_string());
                args.s3_secret_key = Some(SECRET_KEY.to_string());
            })
            .await
            .unwrap();
    }
    cluster.run(vec![Step::Converged]).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("hello-s3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(examples_dir().join("hello/start.sh"), dir.join("start.sh")).unwrap();
    let manifest = std::fs::read_to_string(examples_dir().join("hello/stratus.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"hello-s3\"");
    std::fs::write(dir.join("stratus.toml"), manifest).unwrap();
    let bundle = bundle_for_test(&dir).unwrap();

    let client = cluster.node(0).client();
    let accepted = client
        .deploy("hello-s3", bundle.path(), |_| {})
        .await
        .unwrap();
    let s3 = node::bundle::S3Store::new(
        node::bundle::S3Config::from_url(&format!("s3://{bucket}"))
            .unwrap()
            .with_endpoint(ENDPOINT)
            .with_credentials(ACCESS_KEY, SECRET_KEY),
    )
    .unwrap();
    assert!(
        s3.has(&accepted.sha256).await.unwrap(),
        "the bundle is not in the bucket"
    );
    wait_for(SETTLE, || async {
        let healthy = healthy_replicas(&client, "hello-s3", accepted.release)
            .await
            .len();
        (healthy == 2)
            .then_some(())
            .ok_or(format!("{healthy} of 2 replicas healthy"))
    })
    .await
    .unwrap();
    client.destroy("hello-s3").await.unwrap();
    cluster.shutdown().await.unwrap();
}
