//! Rolling deploys, automatic rollback, scale, restart, rollback and drain on real agents
//! and real Docker, with continuous traffic through an ingress that must never fail.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proto::api::AppView;
use proto::{ContainerHealth, ContainerState};
use testbed::chaos::load::{Load, LoadConfig};
use testbed::harness::{LocalCluster, ensure_image, remove_containers_of, repo_root};

const APP: &str = "roll";
const INGRESS: &str = "127.0.18.2:18080";
const ROLLOUT: Duration = Duration::from_secs(120);

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers_of(APP);
    }
}

/// An app folder: the hello example's server, named `roll`, with `greeting` in its page.
fn app_dir(greeting: &str, cmd: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_root().join("examples/hello/start.sh"),
        dir.path().join("start.sh"),
    )
    .unwrap();
    let cmd = cmd.unwrap_or("sh start.sh");
    std::fs::write(
        dir.path().join("stratus.toml"),
        format!(
            "name = \"{APP}\"\ncmd = \"{cmd}\"\nreplicas = 3\n\
             [resources]\ncpu = 0.1\nmemory = \"32MiB\"\n\
             [env]\nGREETING = \"{greeting}\"\n\
             [health]\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
             [rollout]\nhealth_timeout = \"20s\"\n"
        ),
    )
    .unwrap();
    dir
}

async fn deploy(cluster: &LocalCluster, dir: &Path) -> u64 {
    let zip = tempfile::NamedTempFile::new().unwrap();
    node::bundle::pack_dir(dir, std::fs::File::create(zip.path()).unwrap()).unwrap();
    cluster.agents[1]
        .client()
        .deploy(APP, zip.path(), |_| {})
        .await
        .unwrap()
        .release
}

fn healthy(view: &AppView, release: u64) -> usize {
    view.replicas
        .iter()
        .filter(|r| {
            r.release == release
                && r.state == ContainerState::Running
                && r.health == ContainerHealth::Healthy
        })
        .count()
}

/// Replicas not on their way out.
fn active(view: &AppView) -> usize {
    view.replicas
        .iter()
        .filter(|r| r.state != ContainerState::Stopping)
        .count()
}

/// Waits for `release` to have `count` healthy replicas and nothing else running, checking
/// on every poll that the rollout never exceeds `count + 1` active replicas (or `before`,
/// the count it started from, when scaling down).
async fn rolled_out(cluster: &LocalCluster, release: u64, count: usize, what: &str) -> Duration {
    rolled_out_from(cluster, release, count, count, what).await
}

async fn rolled_out_from(
    cluster: &LocalCluster,
    release: u64,
    before: usize,
    count: usize,
    what: &str,
) -> Duration {
    let client = cluster.agents[0].client();
    let max_seen = Arc::new(AtomicU64::new(0));
    let took = cluster
        .wait_for(what, ROLLOUT, || {
            let (client, max_seen) = (client.clone(), max_seen.clone());
            async move {
                let Ok(view) = client.app(APP).await else {
                    return false;
                };
                max_seen.fetch_max(active(&view) as u64, Ordering::Relaxed);
                view.release.as_ref().map(|r| r.number) == Some(release)
                    && healthy(&view, release) == count
                    && view.replicas.len() == count
            }
        })
        .await
        .unwrap();
    let max_seen = max_seen.load(Ordering::Relaxed) as usize;
    assert!(
        max_seen <= before.max(count) + 1,
        "{what}: {max_seen} replicas at once, max_surge is 1"
    );
    println!("{what}: {:.1} s", took.as_secs_f64());
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_rollbacks_scaling_and_drains_never_fail_a_request() {
    ensure_image().unwrap();
    remove_containers_of(APP);
    let _cleanup = Cleanup;
    let mut cluster = LocalCluster::start_with(18, 0, Vec::new()).unwrap();
    cluster
        .add_agent(None, vec!["--ingress-addr".into(), INGRESS.into()])
        .unwrap();
    for _ in 0..3 {
        cluster.add_agent(None, Vec::new()).unwrap();
    }
    cluster
        .wait_for("4 live nodes", Duration::from_secs(60), || {
            cluster.converged()
        })
        .await
        .unwrap();
    let client = cluster.agents[0].client();

    let v1 = deploy(&cluster, app_dir("one", None).path()).await;
    rolled_out(&cluster, v1, 3, "first release").await;
    cluster
        .wait_for("the ingress routes to it", ROLLOUT, || async {
            reqwest::Client::new()
                .get(format!("http://{INGRESS}/"))
                .header("host", format!("{APP}.localhost"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await
        .unwrap();

    let load = Load::start(LoadConfig::new(INGRESS.parse().unwrap(), APP)).unwrap();

    // A rolling deploy: one new replica at a time, old ones stopped once the new serve.
    let v2 = deploy(&cluster, app_dir("two", None).path()).await;
    rolled_out(&cluster, v2, 3, "rolling deploy of v2").await;

    // A release that crashes: the rollout stops, the app goes back to v2, which never
    // stopped serving, and the release is marked failed with the reason.
    let v3 = deploy(
        &cluster,
        app_dir("three", Some("sh -c 'echo about to crash; exit 3'")).path(),
    )
    .await;
    cluster
        .wait_for("v3 marked failed", ROLLOUT, || async {
            client
                .app(APP)
                .await
                .is_ok_and(|view| view.failed_releases.contains_key(&v3))
        })
        .await
        .unwrap();
    let view = client.app(APP).await.unwrap();
    assert_eq!(view.release.as_ref().unwrap().number, v2, "back on v2");
    let reason = &view.failed_releases[&v3];
    assert!(reason.contains("exited"), "{reason}");
    rolled_out(&cluster, v2, 3, "v2 alone again after the failed v3").await;

    // Scale up and down.
    client.scale(APP, 5).await.unwrap();
    rolled_out(&cluster, v2, 5, "scaled to 5").await;
    client.scale(APP, 2).await.unwrap();
    rolled_out_from(&cluster, v2, 5, 2, "scaled to 2").await;
    client.scale(APP, 3).await.unwrap();
    rolled_out(&cluster, v2, 3, "scaled back to 3").await;

    // A rolling restart: a new release copying v2.
    let restart = client.restart(APP).await.unwrap();
    assert!(restart.release > v3);
    rolled_out(&cluster, restart.release, 3, "rolling restart").await;

    // Rollback with no --to: the last good release before the current (v3 failed).
    let back = client.rollback(APP, None).await.unwrap();
    assert!(
        back.message.contains(&format!("rollback to v{v2}")),
        "{}",
        back.message
    );
    rolled_out(&cluster, back.release, 3, "rollback").await;
    let back_to_one = client.rollback(APP, Some(v1)).await.unwrap();
    rolled_out(&cluster, back_to_one.release, 3, "rollback --to v1").await;

    // Drain the node that runs the most replicas: they move, nothing fails.
    let view = client.app(APP).await.unwrap();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for replica in &view.replicas {
        *per_node.entry(replica.node_id.as_str()).or_default() += 1;
    }
    let drained = per_node
        .iter()
        .max_by_key(|(_, count)| **count)
        .map(|(node, _)| node.to_string())
        .unwrap();
    client.drain(&drained, true).await.unwrap();
    let took = cluster
        .wait_for("the drained node empties", ROLLOUT, || async {
            client.app(APP).await.is_ok_and(|view| {
                healthy(&view, back_to_one.release) == 3
                    && view.replicas.len() == 3
                    && view.replicas.iter().all(|r| r.node_id != drained)
            })
        })
        .await
        .unwrap();
    println!("drain of {drained}: {:.1} s", took.as_secs_f64());
    let nodes = client.nodes().await.unwrap();
    assert!(
        nodes
            .nodes
            .iter()
            .any(|n| n.node_id == drained && n.draining)
    );
    client.drain(&drained, false).await.unwrap();

    let report = load.stop().await;
    let releases_served: BTreeSet<u64> = report
        .samples
        .iter()
        .filter_map(|sample| sample.backend().map(|backend| backend.release))
        .collect();
    println!(
        "{} requests through the ingress, answered by releases {releases_served:?}",
        report.total()
    );
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        report.total(),
        failures
    );
    assert!(
        !releases_served.contains(&v3),
        "the crashing release never served"
    );
    assert!(releases_served.contains(&v1) && releases_served.contains(&v2));

    // The whole history, failures included.
    let releases = client.releases(APP).await.unwrap();
    let failed = releases.releases.iter().find(|r| r.number == v3).unwrap();
    assert_eq!(failed.status, "failed");
    assert_eq!(releases.releases[0].status, "current");
    assert_eq!(
        releases.releases[0].note.as_deref(),
        Some(format!("rollback to v{v1}").as_str())
    );

    // The output of replaced replicas is still there.
    use futures_util::StreamExt as _;
    let previous: Vec<String> = client.previous_logs(APP, 50).await.unwrap().collect().await;
    assert!(
        previous.iter().any(|line| line.contains("about to crash")),
        "the crashed v3 replica's output was kept: {previous:?}"
    );
    assert!(previous.iter().any(|line| line.contains("serving on port")));
}
