//! An agent that restarts (crash or upgrade) takes back the containers it runs instead of
//! starting new ones, and removes the containers of apps destroyed while it was down.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;
use std::time::Duration;

use proto::{ContainerHealth, ContainerState};
use testbed::harness::{LocalCluster, ensure_image, remove_containers_of, repo_root};

const APP: &str = "adopt";
const WAIT: Duration = Duration::from_secs(90);

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers_of(APP);
    }
}

/// `(container id, started at)` of the app's Docker containers on `node`.
fn containers_on(node: &str) -> Vec<(String, String)> {
    let output = Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=stratus.app={APP}"))
        .arg("--filter")
        .arg(format!("label=stratus.node={node}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|id| {
            let started = Command::new("docker")
                .args(["inspect", "-f", "{{.State.StartedAt}}", id])
                .output()
                .unwrap();
            (
                id.to_string(),
                String::from_utf8_lossy(&started.stdout).trim().to_string(),
            )
        })
        .collect()
}

async fn deploy(cluster: &LocalCluster) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_root().join("examples/hello/start.sh"),
        dir.path().join("start.sh"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("stratus.toml"),
        format!(
            "name = \"{APP}\"\ncmd = \"sh start.sh\"\nreplicas = 3\n\
             [resources]\ncpu = 0.1\nmemory = \"32MiB\"\n[env]\nGREETING = \"hi\"\n\
             [health]\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
        ),
    )
    .unwrap();
    let zip = tempfile::NamedTempFile::new().unwrap();
    node::bundle::pack_dir(dir.path(), std::fs::File::create(zip.path()).unwrap()).unwrap();
    cluster.agents[0]
        .client()
        .deploy(APP, zip.path(), |_| {})
        .await
        .unwrap();
}

async fn healthy_on(cluster: &LocalCluster, node: &str) -> usize {
    cluster.agents[0]
        .client()
        .app(APP)
        .await
        .map(|view| {
            view.replicas
                .iter()
                .filter(|r| {
                    r.node_id == node
                        && r.state == ContainerState::Running
                        && r.health == ContainerHealth::Healthy
                })
                .count()
        })
        .unwrap_or(0)
}

/// The generation of `node` that agent 0 sees live (0 if none).
async fn generation_of(cluster: &LocalCluster, node: &str) -> u64 {
    cluster.agents[0]
        .client()
        .nodes()
        .await
        .ok()
        .and_then(|nodes| {
            nodes
                .nodes
                .into_iter()
                .find(|n| n.node_id == node && n.status == proto::api::NodeStatus::Live)
        })
        .map_or(0, |n| n.generation)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_adopts_its_containers_and_removes_those_of_destroyed_apps() {
    ensure_image().unwrap();
    remove_containers_of(APP);
    let _cleanup = Cleanup;
    // A long grace period: the restart below must be an adoption, not a rescheduling.
    let mut cluster =
        LocalCluster::start_with(19, 3, vec!["--reschedule-grace-ms".into(), "60000".into()])
            .unwrap();
    cluster
        .wait_for("3 live nodes", WAIT, || cluster.converged())
        .await
        .unwrap();
    deploy(&cluster).await;
    let node = cluster.agents[2].node_id.clone();
    cluster
        .wait_for("a healthy replica on the last node", WAIT, || async {
            healthy_on(&cluster, &node).await == 1
        })
        .await
        .unwrap();
    let before = containers_on(&node);
    assert_eq!(before.len(), 1, "{before:?}");

    // Crash and restart: the same container, never restarted, is healthy again.
    let generation = generation_of(&cluster, &node).await;
    cluster.kill9(2);
    cluster.restart(2).unwrap();
    cluster
        .wait_for("the restarted agent live again", WAIT, || async {
            generation_of(&cluster, &node).await > generation
        })
        .await
        .unwrap();
    let took = cluster
        .wait_for("the replica adopted and healthy again", WAIT, || async {
            healthy_on(&cluster, &node).await == 1
        })
        .await
        .unwrap();
    println!(
        "adopted and healthy {:.1} s after the restart",
        took.as_secs_f64()
    );
    assert_eq!(
        containers_on(&node),
        before,
        "the running container was adopted, not replaced"
    );
    let view = cluster.agents[0].client().app(APP).await.unwrap();
    assert_eq!(view.replicas.len(), 3, "no duplicate: {:?}", view.replicas);

    // Down while its app is destroyed: on restart, the orphan goes.
    cluster.kill9(2);
    cluster.agents[0].client().destroy(APP).await.unwrap();
    cluster
        .wait_for("the other nodes' replicas gone", WAIT, || async {
            cluster.agents[..2]
                .iter()
                .all(|agent| containers_on(&agent.node_id).is_empty())
        })
        .await
        .unwrap();
    assert_eq!(
        containers_on(&node).len(),
        1,
        "left running while its agent was down"
    );
    cluster.restart(2).unwrap();
    cluster
        .wait_for("the orphan removed", WAIT, || async {
            containers_on(&node).is_empty()
        })
        .await
        .unwrap();
}
