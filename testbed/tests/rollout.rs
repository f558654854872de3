//! Rolling deploys, automatic rollback, scale, restart, rollback and drain on real agents
//! and real Docker, with continuous traffic through an ingress that must never fail.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::api::AppView;
use proto::{ContainerHealth, ContainerState};
use testbed::chaos::load::{Load, LoadConfig};
use testbed::harness::{LocalCluster, ensure_image, remove_containers_of, repo_root};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

const APP: &str = "roll";
const INGRESS: &str = "127.0.18.2:18080";
const ROLLOUT: Duration = Duration::from_secs(120);
/// The app's `rollout.max_surge`: one new replica at a time, the strictest bound to hold
/// (the default starts every new replica at once).
const MAX_SURGE: usize = 1;

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
             [rollout]\nmax_surge = 1\nhealth_timeout = \"20s\"\n"
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

/// Waits for `release` to have `count` healthy replicas and nothing else running, then
/// ends a phase of the history: from the previous phase until now, at most `count` +
/// max_surge replicas ran at once (or `before` + max_surge, `before` being the count it
/// started from, when scaling down).
async fn rolled_out(
    cluster: &LocalCluster,
    history: &mut History,
    release: u64,
    count: usize,
    what: &str,
) -> Duration {
    rolled_out_from(cluster, history, release, count, count, what).await
}

async fn rolled_out_from(
    cluster: &LocalCluster,
    history: &mut History,
    release: u64,
    before: usize,
    count: usize,
    what: &str,
) -> Duration {
    let client = cluster.agents[0].client();
    let took = cluster
        .wait_for(what, ROLLOUT, || async {
            client.app(APP).await.is_ok_and(|view| {
                view.release.as_ref().map(|r| r.number) == Some(release)
                    && healthy(&view, release) == count
                    && view.replicas.len() == count
            })
        })
        .await
        .unwrap();
    history.phase(what, before.max(count) + MAX_SURGE);
    println!("{what}: {:.1} s", took.as_secs_f64());
    took
}

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos() as i128)
        .unwrap_or_default()
}

/// One line of `docker events --format '{{json .}}'` about one of the app's containers.
#[derive(Debug, Clone)]
struct DockerEvent {
    at: i128,
    id: String,
    action: String,
    /// `stratus.node`, `stratus.placement`, `stratus.release` and `stratus.replica`.
    labels: BTreeMap<String, String>,
}

impl DockerEvent {
    fn parse(line: &str) -> Option<DockerEvent> {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        let attributes = json["Actor"]["Attributes"].as_object()?;
        let labels = [
            "stratus.node",
            "stratus.placement",
            "stratus.release",
            "stratus.replica",
        ]
        .iter()
        .filter_map(|key| Some((key.to_string(), attributes.get(*key)?.as_str()?.to_string())))
        .collect();
        Some(DockerEvent {
            at: i128::from(json["timeNano"].as_i64()?),
            id: json["Actor"]["ID"].as_str()?.to_string(),
            action: json["Action"].as_str()?.to_string(),
            labels,
        })
    }

    /// The container's process has been told to go, or is gone.
    fn ends(&self) -> bool {
        matches!(
            self.action.as_str(),
            "kill" | "die" | "stop" | "destroy" | "oom"
        )
    }

    fn key(&self) -> (String, String) {
        (
            self.labels.get("stratus.node").cloned().unwrap_or_default(),
            self.labels
                .get("stratus.placement")
                .cloned()
                .unwrap_or_default(),
        )
    }

    fn describe(&self) -> String {
        let label = |key: &str| self.labels.get(key).map_or("?", String::as_str);
        format!(
            "v{}/{} on {} ({})",
            label("stratus.release"),
            label("stratus.replica"),
            label("stratus.node"),
            &self.id[..self.id.len().min(12)]
        )
    }
}

/// Every replica of the app this test's cluster ran, over the whole test, and not only at
/// the moments a poll happened to look:
/// - a container runs from Docker's `start` event (exact, from `docker events`),
/// - until Docker's `kill` or `die`, or the first moment any node's view showed it
///   `stopping` (sampled continuously from every node's API), whichever is first.
///
/// Every end is at or after the true one (a view shows `stopping` only once the replica's
/// node announced it; the agent kills a container only after announcing it), so the count
/// of replicas running at once is never under-estimated. Any node, not only the replica's
/// own: the app's reconciler places the next replica as soon as its own view shows the
/// stop, and sampling only the replica's node could see it later than that, on a loaded
/// machine later than the next replica's start.
/// (node, placement) -> each time a node's view began to show it stopping, in ns.
type StoppingSeen = BTreeMap<(String, String), Vec<i128>>;

struct History {
    docker: tokio::process::Child,
    events: Arc<Mutex<Vec<DockerEvent>>>,
    /// (node, placement) -> each time a node's view began to show it stopping.
    stopping: Arc<Mutex<StoppingSeen>>,
    tasks: Vec<JoinHandle<()>>,
    /// (end of the phase, most replicas allowed at once, what).
    phases: Vec<(i128, usize, String)>,
    labels: [String; 2],
}

impl History {
    /// Starts recording before anything of the app exists (`--since` replays what happens
    /// while `docker events` subscribes).
    fn start(cluster: &LocalCluster) -> History {
        let labels = [
            format!("label=stratus.app={APP}"),
            format!("label=stratus.cluster={}", cluster.cluster_id()),
        ];
        let since = unix_nanos() - 1_000_000_000;
        let mut docker = tokio::process::Command::new("docker")
            .args([
                "events",
                "--format",
                "{{json .}}",
                "--filter",
                "type=container",
            ])
            .args(["--filter", &labels[0], "--filter", &labels[1]])
            .args([
                "--since",
                &format!("{}.{:09}", since / 1_000_000_000, since % 1_000_000_000),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = docker.stdout.take().unwrap();
        let mut tasks = vec![tokio::spawn({
            let events = events.clone();
            async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match DockerEvent::parse(&line) {
                        Some(event) => events.lock().await.push(event),
                        None => panic!("unexpected `docker events` line: {line}"),
                    }
                }
            }
        })];
        let stopping = Arc::new(Mutex::new(BTreeMap::new()));
        for agent in &cluster.agents {
            let (client, stopping) = (agent.client(), stopping.clone());
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(20));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // What the previous sample showed stopping: a placement id comes back
                // when a slot is placed again on the same node (a scale down and up), so
                // each stretch of `stopping` is recorded, not only the first.
                let mut before: BTreeSet<(String, String)> = BTreeSet::new();
                loop {
                    every.tick().await;
                    let Ok(view) = client.app(APP).await else {
                        continue;
                    };
                    let seen = unix_nanos();
                    let now: BTreeSet<(String, String)> = view
                        .replicas
                        .iter()
                        .filter(|r| r.state == ContainerState::Stopping)
                        .map(|r| (r.node_id.clone(), r.container_id.clone()))
                        .collect();
                    let mut stopping = stopping.lock().await;
                    for key in now.difference(&before) {
                        stopping
                            .entry(key.clone())
                            .or_insert_with(Vec::new)
                            .push(seen);
                    }
                    before = now;
                }
            }));
        }
        History {
            docker,
            events,
            stopping,
            tasks,
            phases: Vec::new(),
            labels,
        }
    }

    /// Ends a phase: from the end of the previous one until now, at most `bound` replicas.
    fn phase(&mut self, what: &str, bound: usize) {
        self.phases.push((unix_nanos(), bound, what.to_string()));
    }

    /// Containers running now by Docker's events, which must be those `docker ps` lists:
    /// the recorder saw everything up to now.
    async fn running_by_events(&self) -> BTreeSet<String> {
        let mut running = BTreeSet::new();
        for event in self.events.lock().await.iter() {
            if event.action == "start" {
                running.insert(event.id.clone());
            } else if event.ends() {
                running.remove(&event.id);
            }
        }
        running
    }

    fn running_by_ps(&self) -> BTreeSet<String> {
        let output = std::process::Command::new("docker")
            .args(["ps", "-q", "--no-trunc", "--filter", &self.labels[0]])
            .args(["--filter", &self.labels[1]])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Checks every phase over the whole history; returns the most replicas seen at once
    /// in each phase.
    async fn check(mut self, cluster: &LocalCluster) -> BTreeMap<String, usize> {
        cluster
            .wait_for(
                "`docker events` to catch up with `docker ps`",
                ROLLOUT,
                || async {
                    let by_events = self.running_by_events().await;
                    !by_events.is_empty() && by_events == self.running_by_ps()
                },
            )
            .await
            .unwrap();
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.docker.kill().await;
        let events = self.events.lock().await.clone();
        let stopping = self.stopping.lock().await.clone();

        // Every stretch a container ran; `until` is None while it still runs.
        struct Stretch {
            from: i128,
            until: Option<i128>,
            started: DockerEvent,
        }
        let mut stretches: Vec<Stretch> = Vec::new();
        let mut open: BTreeMap<String, DockerEvent> = BTreeMap::new();
        for event in &events {
            if event.action == "start" {
                open.insert(event.id.clone(), event.clone());
            } else if event.ends()
                && let Some(started) = open.remove(&event.id)
            {
                stretches.push(Stretch {
                    from: started.at,
                    until: Some(event.at),
                    started,
                });
            }
        }
        stretches.extend(open.into_values().map(|started| Stretch {
            from: started.at,
            until: None,
            started,
        }));
        // The first `stopping` seen within a stretch ends it (a placement id recurs: a
        // crashed container restarted under the same name, a slot placed again).
        for stretch in &mut stretches {
            let seen = stopping
                .get(&stretch.started.key())
                .into_iter()
                .flatten()
                .copied()
                .filter(|seen| {
                    *seen >= stretch.from && stretch.until.is_none_or(|until| *seen < until)
                })
                .min();
            if let Some(seen) = seen {
                stretch.until = Some(seen);
            }
        }

        // Sweep: at each start, the stretches overlapping it must fit the phase's bound.
        let mut points: Vec<(i128, bool, usize)> = Vec::new();
        for (index, stretch) in stretches.iter().enumerate() {
            points.push((stretch.from, true, index));
            if let Some(until) = stretch.until {
                points.push((until, false, index));
            }
        }
        // At the same instant, an end comes before a start.
        points.sort_by_key(|(at, starts, _)| (*at, *starts));
        let mut running: BTreeSet<usize> = BTreeSet::new();
        let mut most: BTreeMap<String, usize> = BTreeMap::new();
        for (at, starts, index) in points {
            if !starts {
                running.remove(&index);
                continue;
            }
            running.insert(index);
            let (bound, what) = self
                .phases
                .iter()
                .find(|(end, _, _)| at <= *end)
                .map(|(_, bound, what)| (*bound, what.clone()))
                .unwrap_or_else(|| {
                    let (_, bound, what) = self.phases.last().unwrap();
                    (*bound, format!("after {what}"))
                });
            let entry = most.entry(what.clone()).or_default();
            *entry = (*entry).max(running.len());
            assert!(
                running.len() <= bound,
                "{what}: {} replicas ran at once, at most {bound} allowed (max_surge \
                 {MAX_SURGE}): {:?}",
                running.len(),
                running
                    .iter()
                    .map(|i| {
                        let stretch = &stretches[*i];
                        format!(
                            "{} from {:+} ms until {:?} ms, stopping seen at {:?} ms",
                            stretch.started.describe(),
                            (stretch.from - at) / 1_000_000,
                            stretch.until.map(|until| (until - at) / 1_000_000),
                            stopping
                                .get(&stretch.started.key())
                                .into_iter()
                                .flatten()
                                .map(|seen| (seen - at) / 1_000_000)
                                .collect::<Vec<_>>()
                        )
                    })
                    .collect::<Vec<_>>()
            );
        }
        println!("most replicas at once, per phase: {most:?}");
        most
    }
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
    let mut history = History::start(&cluster);

    let v1 = deploy(&cluster, app_dir("one", None).path()).await;
    rolled_out(&cluster, &mut history, v1, 3, "first release").await;
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
    rolled_out(&cluster, &mut history, v2, 3, "rolling deploy of v2").await;

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
    rolled_out(
        &cluster,
        &mut history,
        v2,
        3,
        "v2 alone again after the failed v3",
    )
    .await;

    // Scale up and down.
    client.scale(APP, 5).await.unwrap();
    rolled_out(&cluster, &mut history, v2, 5, "scaled to 5").await;
    client.scale(APP, 2).await.unwrap();
    rolled_out_from(&cluster, &mut history, v2, 5, 2, "scaled to 2").await;
    client.scale(APP, 3).await.unwrap();
    rolled_out(&cluster, &mut history, v2, 3, "scaled back to 3").await;

    // A rolling restart: a new release copying v2.
    let restart = client.restart(APP).await.unwrap();
    assert!(restart.release > v3);
    rolled_out(
        &cluster,
        &mut history,
        restart.release,
        3,
        "rolling restart",
    )
    .await;

    // Rollback with no --to: the last good release before the current (v3 failed).
    let back = client.rollback(APP, None).await.unwrap();
    assert!(
        back.message.contains(&format!("rollback to v{v2}")),
        "{}",
        back.message
    );
    rolled_out(&cluster, &mut history, back.release, 3, "rollback").await;
    let back_to_one = client.rollback(APP, Some(v1)).await.unwrap();
    rolled_out(
        &cluster,
        &mut history,
        back_to_one.release,
        3,
        "rollback --to v1",
    )
    .await;

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
    history.phase(&format!("drain of {drained}"), 3 + MAX_SURGE);
    println!("drain of {drained}: {:.1} s", took.as_secs_f64());
    let nodes = client.nodes().await.unwrap();
    assert!(
        nodes
            .nodes
            .iter()
            .any(|n| n.node_id == drained && n.draining)
    );
    client.drain(&drained, false).await.unwrap();

    // Over the whole history, not only at poll moments: never more than max_surge extra,
    // and the rolling deploy did use its one extra replica (the recorder saw it).
    let most = history.check(&cluster).await;
    assert_eq!(
        most.get("rolling deploy of v2"),
        Some(&(3 + MAX_SURGE)),
        "{most:?}"
    );

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
    // And that of the healthy ones replaced: their start line, or (busybox httpd -vv logs
    // every request, and a busy replica's start line may be past the last 50) a request
    // they answered.
    assert!(
        previous
            .iter()
            .any(|line| line.contains("serving on port") || line.contains("response:200")),
        "the replaced healthy replicas' output was kept: {previous:?}"
    );
}
