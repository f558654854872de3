//! Deploys when things go wrong on real processes and Docker: the accepting node dies
//! (kill -9) right after acknowledging, and the whole cluster is killed and restarts,
//! adopting its containers. Concurrent deploys, misfits, a crashing app and the process
//! runtime run on the in-process cluster (`node/tests/in_process_deploys.rs`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use node::testsuite::{bundle_for_test, healthy_replicas, hello_app_for_test};
use testbed::harness::{LocalCluster, ensure_image, remove_containers_of};

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
fn app_dir(root: &std::path::Path, name: &str, replicas: u32, cpu: f64) -> std::path::PathBuf {
    hello_app_for_test(root, name, replicas, cpu).unwrap()
}

fn pack(dir: &std::path::Path) -> tempfile::NamedTempFile {
    bundle_for_test(dir).unwrap()
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
