//! Deploys when things go wrong: the accepting node dies right after acknowledging, three
//! nodes take deploys at once, and a release that cannot fit is reported as failed.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::{ContainerHealth, ContainerState};
use testbed::harness::{LocalCluster, ensure_image, remove_containers_of, repo_root};

const SETTLE: Duration = Duration::from_secs(90);

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for app in &self.0 {
            remove_containers_of(app);
        }
    }
}

/// An app folder like examples/hello, under another name and with other resources.
fn app_dir(root: &Path, name: &str, replicas: u32, cpu: f64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo_root().join("examples/hello/start.sh"),
        dir.join("start.sh"),
    )
    .unwrap();
    std::fs::write(
        dir.join("stratus.toml"),
        format!(
            "name = \"{name}\"\ncmd = \"sh start.sh\"\nreplicas = {replicas}\n[resources]\ncpu = {cpu}\nmemory = \"32MiB\"\n\
             [env]\nGREETING = \"hi\"\n[health]\npath = \"/\"\ninterval = \"1s\"\n"
        ),
    )
    .unwrap();
    dir
}

fn pack(dir: &Path) -> tempfile::NamedTempFile {
    let zip = tempfile::NamedTempFile::new().unwrap();
    node::bundle::pack_dir(dir, std::fs::File::create(zip.path()).unwrap()).unwrap();
    zip
}

async fn healthy_replicas(
    client: &api::Client,
    app: &str,
    release: u64,
) -> Vec<proto::api::ReplicaView> {
    match client.app(app).await {
        Ok(view) => view
            .replicas
            .into_iter()
            .filter(|r| {
                r.release == release
                    && r.state == ContainerState::Running
                    && r.health == ContainerHealth::Healthy
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The image, a clean slate for `apps`, and `count` converged agents on `127.0.<net>.x`.
/// The returned guard removes the apps' containers when the test ends, pass or fail.
async fn converged_cluster(net: u8, count: usize, apps: &[&str]) -> (Cleanup, LocalCluster) {
    ensure_image().unwrap();
    for app in apps {
        remove_containers_of(app);
    }
    let cleanup = Cleanup(apps.iter().map(|app| app.to_string()).collect());
    let cluster = LocalCluster::start(net, count).unwrap();
    cluster
        .wait_for("every agent live", SETTLE, || cluster.converged())
        .await
        .unwrap();
    (cleanup, cluster)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_completes_when_the_accepting_node_dies_right_after_the_ack() {
    let (_cleanup, mut cluster) = converged_cluster(23, 3, &["survivor"]).await;
    let work = tempfile::tempdir().unwrap();
    let zip = pack(&app_dir(work.path(), "survivor", 2, 0.1));
    let accepted = cluster.agents[0]
        .client()
        .deploy("survivor", zip.path(), |_| {})
        .await
        .unwrap();
    assert_eq!(accepted.holders.len(), 3, "{accepted:?}");
    cluster.kill9(0);

    let witness = cluster.agents[1].client();
    let took = cluster
        .wait_for(
            "2 healthy replicas on the surviving nodes",
            SETTLE,
            || async {
                let healthy = healthy_replicas(&witness, "survivor", accepted.release).await;
                healthy.len() == 2 && healthy.iter().all(|r| r.node_id != "node-1")
            },
        )
        .await
        .unwrap();
    println!(
        "rolled out on the survivors {:.1} s after the accepting node died",
        took.as_secs_f64()
    );
    // The survivors still hold the bundle and serve it to each other.
    let view = witness.app("survivor").await.unwrap();
    assert_eq!(view.release.unwrap().bundle.sha256, accepted.sha256);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deploys_on_three_nodes_never_overcommit_and_misfits_fail_with_a_reason() {
    ensure_image().unwrap();
    let apps = ["alpha", "bravo", "charlie"];
    let _cleanup = Cleanup(
        apps.iter()
            .map(|a| a.to_string())
            .chain(["delta".to_string()])
            .collect(),
    );
    for app in apps.iter().chain(&["delta"]) {
        remove_containers_of(app);
    }
    let cluster = LocalCluster::start(24, 3).unwrap();
    cluster
        .wait_for("3 live nodes", SETTLE, || cluster.converged())
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    // Each node has 2 cores: at 0.9 core a replica, a node fits exactly 2 replicas, and
    // 3 apps of 2 replicas fill the cluster only if nothing is overcommitted.
    let zips: Vec<_> = apps
        .iter()
        .map(|app| pack(&app_dir(work.path(), app, 2, 0.9)))
        .collect();
    let mut deploys = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let client = cluster.agents[index].client();
        let path = zips[index].path().to_path_buf();
        let app = app.to_string();
        deploys.push(tokio::spawn(async move {
            client.deploy(&app, &path, |_| {}).await
        }));
    }
    for deploy in deploys {
        deploy.await.unwrap().unwrap();
    }
    let client = cluster.agents[0].client();
    cluster
        .wait_for("all 6 replicas healthy", SETTLE, || async {
            let mut total = 0;
            for app in apps {
                total += healthy_replicas(&client, app, 1).await.len();
            }
            total == 6
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
    let output = std::process::Command::new(&cluster.bin)
        .args([
            "deploy",
            &app_dir(work.path(), "delta", 1, 0.9).display().to_string(),
        ])
        .args([
            "--api",
            &cluster.agents[1].api_addr().to_string(),
            "--token",
            testbed::harness::API_TOKEN,
        ])
        .args(["--timeout-secs", "60"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a deploy that cannot fit reported success"
    );
    assert!(
        stderr.contains("failed")
            && (stderr.contains("refuses") || stderr.contains("no live node has room")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_app_fails_the_deploy_with_its_last_output() {
    let (_cleanup, cluster) = converged_cluster(25, 2, &["crasher"]).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("crasher");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("stratus.toml"),
        "name = \"crasher\"\ncmd = \"echo missing DATABASE_URL, giving up; exit 3\"\n[health]\ninterval = \"300ms\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(&cluster.bin)
        .args(["deploy", &dir.display().to_string()])
        .args([
            "--api",
            &cluster.agents[0].api_addr().to_string(),
            "--token",
            testbed::harness::API_TOKEN,
        ])
        .args(["--timeout-secs", "60"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a crashing app was reported live");
    assert!(stderr.contains("exited with code 3"), "{stderr}");
    assert!(
        stderr.contains("missing DATABASE_URL"),
        "the app's last output is not shown: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_runs_with_the_process_runtime_too() {
    let cluster =
        LocalCluster::start_with(26, 2, vec!["--runtime".into(), "process".into()]).unwrap();
    cluster
        .wait_for("2 live nodes", SETTLE, || cluster.converged())
        .await
        .unwrap();
    let zip = pack(&repo_root().join("examples/hello"));
    let client = cluster.agents[0].client();
    let accepted = client.deploy("hello", zip.path(), |_| {}).await.unwrap();
    cluster
        .wait_for("2 healthy process replicas", SETTLE, || async {
            healthy_replicas(&client, "hello", accepted.release)
                .await
                .len()
                == 2
        })
        .await
        .unwrap();
    for replica in healthy_replicas(&client, "hello", accepted.release).await {
        let body = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}/", replica.addr),
            ])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&body.stdout);
        assert!(
            body.contains(&format!("on node {}", replica.node_id)),
            "{body}"
        );
    }
    client.destroy("hello").await.unwrap();
    cluster
        .wait_for("the replicas gone", SETTLE, || async {
            client.app("hello").await.is_err()
                && cluster.views().await.is_ok_and(|views| {
                    views
                        .iter()
                        .all(|(_, v)| v.nodes.iter().all(|n| n.containers == 0))
                })
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_whole_cluster_loses_no_acknowledged_release() {
    let (_cleanup, mut cluster) = converged_cluster(28, 3, &["durable"]).await;
    let work = tempfile::tempdir().unwrap();
    let zip = pack(&app_dir(work.path(), "durable", 2, 0.1));
    let accepted = cluster.agents[1]
        .client()
        .deploy("durable", zip.path(), |_| {})
        .await
        .unwrap();

    // Everyone goes down at once, before anything could settle.
    for index in 0..3 {
        cluster.kill9(index);
    }
    for index in 0..3 {
        cluster.restart(index).unwrap();
    }
    cluster
        .wait_for("3 live nodes again", SETTLE, || cluster.converged())
        .await
        .unwrap();
    let client = cluster.agents[2].client();
    cluster
        .wait_for("the release served again", SETTLE, || async {
            healthy_replicas(&client, "durable", accepted.release)
                .await
                .len()
                == 2
        })
        .await
        .unwrap();
    let view = client.app("durable").await.unwrap();
    assert_eq!(view.release.unwrap().bundle.sha256, accepted.sha256);
    assert_eq!(view.releases, vec![accepted.release]);
    // The restarted agents adopted the containers they left running: no orphan, no double.
    cluster
        .wait_for(
            "exactly 2 durable containers on the host",
            SETTLE,
            || async {
                let listed = std::process::Command::new("docker")
                    .args(["ps", "-q", "--filter", "label=stratus.app=durable"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&listed.stdout).lines().count() == 2
            },
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deploys_of_one_app_get_distinct_numbers_and_one_winner_everywhere() {
    let (_cleanup, cluster) = converged_cluster(29, 3, &["twin"]).await;
    let work = tempfile::tempdir().unwrap();
    let zip = pack(&app_dir(work.path(), "twin", 1, 0.1));
    let mut deploys = Vec::new();
    for agent in &cluster.agents {
        let client = agent.client();
        let path = zip.path().to_path_buf();
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
    cluster
        .wait_for("every node on the same current release", SETTLE, || async {
            let mut current = Vec::new();
            for agent in &cluster.agents {
                match agent.client().app("twin").await {
                    Ok(view) => current.push((view.release.map(|r| r.number), view.releases.len())),
                    Err(_) => return false,
                }
            }
            current
                .iter()
                .all(|c| *c == current[0] && c.0.is_some() && c.1 == 3)
        })
        .await
        .unwrap();
}
