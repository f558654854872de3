//! The event stream on agents in one process (`node::testsuite`, gossip over in-memory
//! channels, replicas as plain processes): two nodes following `GET /v1/events` report the
//! same lifecycle of a deploy and of a node leaving; a reader resumes with `since`, is told
//! when its index is gone, and a blocking app read returns on the app's change; the
//! `stratus events` and `stratus deploy` commands read the stream.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use node::testsuite::{
    Step, TestCluster, USER_TOKEN, bundle_for_test, cluster_for_test, healthy_replicas,
    hello_app_for_test, wait_for,
};
use proto::events::{Change, Event, EventLine};
use tokio::sync::mpsc;

const SETTLE: Duration = Duration::from_secs(90);

async fn converged_cluster(count: usize) -> TestCluster {
    let mut cluster = cluster_for_test(count).await.unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    // The events feed takes what gossip brings in the first second as the cluster that
    // already was: only later changes are events.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster
}

/// Follows `client`'s events from now on, into a channel.
async fn follow(client: api::Client) -> mpsc::UnboundedReceiver<Event> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut lines = client.events(&api::EventQuery::default()).await.unwrap();
    tokio::spawn(async move {
        while let Some(Ok(line)) = lines.next().await {
            if let EventLine::Event(event) = line
                && sender.send(*event).is_err()
            {
                return;
            }
        }
    });
    receiver
}

/// Reads `events` until `done` holds for one, or `limit` passes; returns all read.
async fn read_until(
    events: &mut mpsc::UnboundedReceiver<Event>,
    limit: Duration,
    done: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let reading = async {
        while let Some(event) = events.recv().await {
            let finished = done(&event);
            seen.push(event);
            if finished {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(limit, reading).await;
    seen
}

/// Kind sequences by subject, without the counts (progress, routes) each node samples.
fn lifecycles(events: &[Event]) -> BTreeMap<String, Vec<&'static str>> {
    let mut by_subject: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for event in events {
        if matches!(
            event.change,
            Change::RolloutProgress { .. } | Change::RoutesChanged { .. }
        ) {
            continue;
        }
        by_subject
            .entry(event.subject.clone())
            .or_default()
            .push(event.change.kind());
    }
    by_subject
}

fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {}", e.change.kind(), e.subject))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_report_the_same_deploy_and_the_same_node_leaving() {
    let mut cluster = converged_cluster(3).await;
    let mut on_first = follow(cluster.node(0).client()).await;
    let mut on_second = follow(cluster.node(1).client()).await;
    let work = tempfile::tempdir().unwrap();
    let bundle = bundle_for_test(&hello_app_for_test(work.path(), "web", 2, 0.1).unwrap()).unwrap();
    let client = cluster.node(0).client();
    client.deploy("web", bundle.path(), |_| {}).await.unwrap();
    let live =
        |event: &Event| matches!(&event.change, Change::ReleaseLive { app, .. } if app == "web");
    let first = read_until(&mut on_first, SETTLE, live).await;
    let second = read_until(&mut on_second, SETTLE, live).await;
    assert!(
        first.iter().any(live),
        "node 0 never saw the release live: {:#?}",
        kinds(&first)
    );
    assert!(
        second.iter().any(live),
        "node 1 never saw the release live: {:#?}",
        kinds(&second)
    );
    assert_eq!(
        lifecycles(&first),
        lifecycles(&second),
        "the two nodes disagree:\n{:#?}\n{:#?}",
        kinds(&first),
        kinds(&second)
    );
    let replicas = healthy_replicas(&client, "web", 1).await;
    assert_eq!(replicas.len(), 2);
    let lifecycle = lifecycles(&first);
    assert_eq!(
        lifecycle["web"],
        ["app.deploy_accepted", "app.release_live"]
    );
    for replica in &replicas {
        let subject = format!("web/{}/{}", replica.node_id, replica.container_id);
        assert_eq!(
            lifecycle[&subject],
            ["replica.placed", "replica.started", "replica.healthy"],
            "{subject}"
        );
    }

    // A node leaves: both others report it, and its replicas stopped with the reason.
    let leaving = cluster.node(2).node_id.clone();
    cluster.stop_node(2).await.unwrap();
    let gone = |event: &Event| matches!(&event.change, Change::NodeLeft { node, .. } | Change::NodeDead { node, .. } if *node == leaving);
    let first = read_until(&mut on_first, SETTLE, gone).await;
    let second = read_until(&mut on_second, SETTLE, gone).await;
    let left = |events: &[Event]| {
        events
            .iter()
            .filter(|e| gone(e))
            .map(|e| e.change.kind())
            .collect::<Vec<_>>()
    };
    assert_eq!(left(&first).len(), 1, "{:#?}", kinds(&first));
    assert_eq!(left(&first), left(&second));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_resumes_after_its_index_and_a_blocking_read_waits_for_the_change() {
    let cluster = converged_cluster(2).await;
    let client = cluster.node(1).client();
    let work = tempfile::tempdir().unwrap();
    let bundle = bundle_for_test(&hello_app_for_test(work.path(), "api", 1, 0.1).unwrap()).unwrap();
    cluster
        .node(0)
        .client()
        .deploy("api", bundle.path(), |_| {})
        .await
        .unwrap();
    wait_for(SETTLE, || async {
        let n = healthy_replicas(&client, "api", 1).await.len();
        (n == 1).then_some(()).ok_or(format!("{n} healthy"))
    })
    .await
    .unwrap();

    let kept = |since: Option<u64>| {
        let client = client.clone();
        async move {
            let query = api::EventQuery {
                since,
                follow: Some(false),
                ..api::EventQuery::default()
            };
            let lines: Vec<_> = client.events(&query).await?.collect().await;
            Ok::<Vec<Event>, api::ClientError>(
                lines
                    .into_iter()
                    .filter_map(|line| match line.unwrap() {
                        EventLine::Event(event) => Some(*event),
                        _ => None,
                    })
                    .collect(),
            )
        }
    };
    let before = kept(None).await.unwrap();
    let last = before.last().unwrap().index;
    assert!(kept(Some(last)).await.unwrap().is_empty());

    // A blocking read on the app's newest index returns once it is scaled. First the
    // rollout's last events, which this node may record a moment after the view shows
    // the replica healthy.
    wait_for(SETTLE, || async {
        let events = kept(None).await.map_err(|e| e.to_string())?;
        events
            .iter()
            .any(|e| matches!(&e.change, Change::ReleaseLive { app, .. } if app == "api"))
            .then_some(())
            .ok_or_else(|| format!("not live yet: {:?}", kinds(&events)))
    })
    .await
    .unwrap();
    let (_, index) = client.app_after("api", None, Duration::ZERO).await.unwrap();
    assert!(index > 0);
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .app_after("api", Some(index), Duration::from_secs(60))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    if waiting.is_finished() {
        panic!(
            "the read should wait while nothing changes: {:?}",
            waiting.await.unwrap().map(|(_, index)| index)
        );
    }
    cluster.node(0).client().scale("api", 2).await.unwrap();
    let (view, newer) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the blocking read returns on the change")
        .unwrap()
        .unwrap();
    assert!(newer > index);
    assert_eq!(view.replicas_desired, 2);
    let after = kept(Some(last)).await.unwrap();
    assert!(
        after.iter().any(|e| e.change
            == Change::Scaled {
                app: "api".into(),
                from: 1,
                to: 2
            }),
        "{:#?}",
        kinds(&after)
    );

    // An index this node never gave out is refused with what to do.
    let err = kept(Some(newer + 1_000_000)).await.unwrap_err();
    assert_eq!(err.status(), Some(410));
    assert!(err.detail().unwrap().contains("since="), "{err}");

    // `stratus events` prints the kept events, one line each.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["events", "--app", "api"])
        .args([
            "--api",
            &cluster.node(1).api_addr.to_string(),
            "--token",
            USER_TOKEN,
        ])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("app.deploy_accepted"), "{printed}");
    assert!(printed.contains("app.scaled"), "{printed}");
    assert!(
        !printed.contains("node."),
        "--app keeps only the app's: {printed}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stratus_deploy_follows_the_rollout_through_the_event_stream() {
    let cluster = converged_cluster(2).await;
    let work = tempfile::tempdir().unwrap();
    let dir = hello_app_for_test(work.path(), "shown", 2, 0.1).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stratus"))
        .arg("deploy")
        .arg(&dir)
        .args([
            "--api",
            &cluster.node(0).api_addr.to_string(),
            "--token",
            USER_TOKEN,
        ])
        .args(["--timeout-secs", "60"])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("Release 1 of shown is live"), "{printed}");
    // The replicas' events, as they came, shown above the verdict.
    assert!(printed.contains("replica.healthy"), "{printed}");
    cluster.shutdown().await.unwrap();
}
