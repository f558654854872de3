//! The chaos suite's docker-compose variant (issue 5): the agents are containers of
//! `docker-compose.yml` (made 5 by `scripts/chaos-compose.yml`) on a compose network, app
//! replicas are containers on the same network, traffic goes through node-1's ingress, and
//! a partition is `docker network disconnect`. Scenarios 1 (host loss) and 3 (partition).
//!
//! Needs Docker Compose (v2 `docker compose` or v1 `docker-compose`): without it each test
//! fails and says how to install it (`scripts/install-deps.sh`, which CI runs, installs
//! Debian's `docker-compose` when neither is present). The tests run one at a time,
//! each as the compose project `stratus-chaos-49` on a network and a subnet of its own,
//! with APIs and the ingress published on 127.0.49.x, and remove all of it at the end.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

use proto::api::ReplicaView;
use testbed::chaos::host::{docker_replicas, routable_replicas};
use testbed::chaos::load::{Load, LoadConfig};
use testbed::chaos::{INGRESS_PORT, SETTLE, app_dir};
use testbed::compose::compose_command;
use testbed::harness::{API_TOKEN, ensure_image, keygen, repo_root, stratus_bin};
use tokio::sync::Mutex;
use tokio::time::Instant;

static SERIAL: Mutex<()> = Mutex::const_new(());

const APP: &str = "chaos-compose";

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Five agent containers (node-1 with the ingress) and what the test needs to reach them.
struct ComposeCluster {
    compose: Vec<String>,
    project: String,
    network: String,
    /// The first three octets of the network's subnet; agent N is `.N+1`.
    subnet_prefix: String,
    publish_net: u8,
    cluster_id: String,
    env: Vec<(String, String)>,
    data: tempfile::TempDir,
}

impl ComposeCluster {
    async fn up(compose: Vec<String>, net: u8) -> ComposeCluster {
        ensure_image().unwrap();
        let bin = stratus_bin().unwrap();
        let image = format!("stratus/agent:chaos-{net}");
        run(Command::new("bash")
            .arg(repo_root().join("scripts/build-agent-image.sh"))
            .env("STRATUS_BIN", &bin)
            .env("STRATUS_AGENT_IMAGE", &image));
        let project = format!("stratus-chaos-{net}");
        let network = format!("{project}-net");
        let cluster_id = project.clone();
        // Leftovers of an earlier run that was killed before it could clean up.
        teardown(&compose, &project, &network, &cluster_id, &[]);
        let subnet_prefix = create_network(&network);
        let data = tempfile::Builder::new()
            .prefix("stratus-chaos-compose-")
            .tempdir()
            .unwrap();
        let env = vec![
            ("STRATUS_COMPOSE_NETWORK".to_string(), network.clone()),
            ("CHAOS_SUBNET_PREFIX".to_string(), subnet_prefix.clone()),
            ("CHAOS_PUBLISH_PREFIX".to_string(), format!("127.0.{net}")),
            ("CHAOS_CLUSTER_ID".to_string(), cluster_id.clone()),
            (
                "STRATUS_COMPOSE_API".to_string(),
                format!("127.0.{net}.2:7070"),
            ),
            (
                "STRATUS_COMPOSE_DATA".to_string(),
                data.path().display().to_string(),
            ),
            ("STRATUS_AGENT_IMAGE".to_string(), image),
            ("STRATUS_CLUSTER_KEY".to_string(), keygen(&bin).unwrap()),
            ("STRATUS_API_TOKEN".to_string(), API_TOKEN.to_string()),
        ];
        let cluster = ComposeCluster {
            compose,
            project,
            network,
            subnet_prefix,
            publish_net: net,
            cluster_id,
            env,
            data,
        };
        // The agents only: the file's ingress service is not part of this variant (node-1
        // serves the traffic), and would take the host's 127.0.0.1:8080.
        cluster.compose(&["up", "-d", "node-1", "node-2", "node-3", "node-4", "node-5"]);
        let client = cluster.client(1);
        cluster
            .wait_for("5 live agents", || async {
                client
                    .nodes()
                    .await
                    .is_ok_and(|view| testbed::harness::live_ids(&view).len() == 5)
            })
            .await;
        cluster
    }

    fn compose(&self, args: &[&str]) -> Output {
        let root = repo_root();
        let mut command = Command::new(&self.compose[0]);
        command
            .args(&self.compose[1..])
            .args(["-p", &self.project, "--project-directory"])
            .arg(&root)
            .arg("-f")
            .arg(root.join("docker-compose.yml"))
            .arg("-f")
            .arg(root.join("scripts/chaos-compose.yml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run(&mut command)
    }

    /// The container of agent `node` (1-based).
    fn container(&self, node: usize) -> String {
        let output = run(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service=node-{node}"),
        ]));
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(!id.is_empty(), "no container for node-{node}");
        id
    }

    fn agent_ip(&self, node: usize) -> String {
        format!("{}.{}", self.subnet_prefix, node + 1)
    }

    /// The API of agent `node`, published on the host.
    fn client(&self, node: usize) -> api::Client {
        api::Client::new(&format!("127.0.{}.{}:7070", self.publish_net, node + 1))
            .unwrap()
            .with_token(Some(API_TOKEN.to_string()))
    }

    fn ingress(&self) -> SocketAddr {
        SocketAddr::new(
            Ipv4Addr::new(127, 0, self.publish_net, 2).into(),
            INGRESS_PORT,
        )
    }

    fn node_number(node_id: &str) -> usize {
        node_id.trim_start_matches("node-").parse().unwrap()
    }

    async fn wait_for<F, Fut>(&self, what: &str, mut condition: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if condition().await {
                return start.elapsed();
            }
            if start.elapsed() > SETTLE {
                let logs = self.compose(&["logs", "--tail", "15"]);
                panic!(
                    "timed out after {SETTLE:?} waiting for {what}\n{}",
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Routable replicas of the current release in node-1's view (node-1 runs the ingress).
    async fn routable(&self) -> Vec<ReplicaView> {
        routable_replicas(&self.client(1), APP).await
    }

    async fn deploy(&self) -> u64 {
        let dir = app_dir(self.data.path(), APP, 3, "hello").unwrap();
        let zip = tempfile::NamedTempFile::new().unwrap();
        node::bundle::pack_dir(&dir, std::fs::File::create(zip.path()).unwrap()).unwrap();
        let accepted = self
            .client(1)
            .deploy(APP, zip.path(), |_| {})
            .await
            .unwrap();
        self.wait_for("3 healthy replicas", || async {
            self.routable().await.len() == 3
        })
        .await;
        accepted.release
    }

    fn load(&self) -> Load {
        Load::start(LoadConfig::new(self.ingress(), APP)).unwrap()
    }

    async fn wait_for_ingress(&self) {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = format!("http://{}/", self.ingress());
        self.wait_for("the app answering through the ingress", || {
            let request = http
                .get(&url)
                .header(reqwest::header::HOST, format!("{APP}.localhost"))
                .send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }

    /// Exactly `count` running containers of the app and as many routable replicas in
    /// node-1's view, held for 5 s.
    async fn assert_exactly(&self, count: usize) {
        let mut held_since: Option<Instant> = None;
        let start = Instant::now();
        loop {
            let routable = self.routable().await.len();
            let running = docker_replicas(&self.cluster_id, APP).unwrap().len();
            if routable == count && running == count {
                let since = *held_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(5) {
                    return;
                }
            } else {
                held_since = None;
            }
            assert!(
                start.elapsed() < SETTLE,
                "not exactly {count} replicas after {SETTLE:?}: {routable} routable, {running} containers"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        let envs = self.env.clone();
        teardown(
            &self.compose,
            &self.project,
            &self.network,
            &self.cluster_id,
            &envs,
        );
    }
}

/// Agents first (a live agent would start its replicas again), then the app containers
/// they started, then the network.
fn teardown(
    compose: &[String],
    project: &str,
    network: &str,
    cluster_id: &str,
    env: &[(String, String)],
) {
    let root = repo_root();
    let _ = Command::new(&compose[0])
        .args(&compose[1..])
        .args(["-p", project, "--project-directory"])
        .arg(&root)
        .arg("-f")
        .arg(root.join("docker-compose.yml"))
        .arg("-f")
        .arg(root.join("scripts/chaos-compose.yml"))
        .args(["down", "--volumes", "--remove-orphans", "--timeout", "2"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // `down` reads the file, whose external network must be named.
        .env("STRATUS_COMPOSE_NETWORK", network)
        .output();
    if let Ok(output) = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=stratus.cluster={cluster_id}"))
        .output()
    {
        let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
    let _ = Command::new("docker")
        .args(["network", "rm", network])
        .output();
}

/// Creates the network with a /24 subnet of its own (user-configured, so an agent can be
/// reconnected with its old address) whose upper half is left to dynamic addresses (app
/// replicas), so no replica ever takes an agent's fixed address. Returns the prefix.
fn create_network(network: &str) -> String {
    let mut last_error = String::new();
    for third in 100..=160 {
        let prefix = format!("172.30.{third}");
        let output = Command::new("docker")
            .args(["network", "create", "--driver", "bridge"])
            .arg(format!("--subnet={prefix}.0/24"))
            .arg(format!("--ip-range={prefix}.128/25"))
            .arg(network)
            .output()
            .unwrap();
        if output.status.success() {
            return prefix;
        }
        last_error = String::from_utf8_lossy(&output.stderr).into_owned();
    }
    panic!("no free subnet for {network}: {last_error}");
}

fn kill_agent_and_its_containers(cluster: &ComposeCluster, node: usize) -> usize {
    run(Command::new("docker").args(["kill", &cluster.container(node)]));
    let output = run(Command::new("docker").args([
        "ps",
        "-q",
        "--filter",
        &format!("label=stratus.cluster={}", cluster.cluster_id),
        "--filter",
        &format!("label=stratus.node=node-{node}"),
    ]));
    let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        run(Command::new("docker").arg("kill").args(&ids));
    }
    ids.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_host_loss_brings_the_replica_count_back_to_three() {
    let compose = compose_command();
    let _serial = SERIAL.lock().await;
    let cluster = ComposeCluster::up(compose, 49).await;
    cluster.deploy().await;
    cluster.wait_for_ingress().await;
    let load = cluster.load();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A host running a replica, never node-1 (the ingress).
    let victim = cluster
        .routable()
        .await
        .into_iter()
        .map(|r| ComposeCluster::node_number(&r.node_id))
        .find(|node| *node != 1)
        .unwrap();
    let victim_id = format!("node-{victim}");
    load.mark("kill");
    let killed_at = Instant::now();
    let containers = kill_agent_and_its_containers(&cluster, victim);
    assert!(containers > 0, "{victim_id} ran no replica container");
    cluster
        .wait_for("3 healthy replicas on the other nodes", || async {
            let replicas = cluster.routable().await;
            replicas.len() == 3 && replicas.iter().all(|r| r.node_id != victim_id)
        })
        .await;
    let healthy = killed_at.elapsed();
    load.mark("replaced");
    cluster.assert_exactly(3).await;
    let report = load.stop().await;
    print!("{report}");
    let kill = report.mark("kill").unwrap();
    let failed = report.failures_between(kill, report.mark("replaced").unwrap());
    println!(
        "compose host loss of {victim_id} ({containers} container(s) killed with it): \
         replacements healthy after {:.2} s; last answer from it {}; {} requests failed meanwhile",
        healthy.as_secs_f64(),
        report.last_answer_from(&victim_id, kill).map_or(
            "before the kill".to_string(),
            |at| format!("{:.2} s after the kill", (at - kill).as_secs_f64())
        ),
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_partition_heals_to_exactly_three_with_the_release_intact() {
    let compose = compose_command();
    let _serial = SERIAL.lock().await;
    let cluster = ComposeCluster::up(compose, 49).await;
    let release = cluster.deploy().await;
    cluster.wait_for_ingress().await;
    let load = cluster.load();

    // Two agents cut off the network (node-1, the ingress, stays): one that runs a replica
    // and one more. A disconnected container has no network at all, so each of the two is
    // alone on its side: the partition is 1|1|3. Their app containers stay connected.
    let with: usize = cluster
        .routable()
        .await
        .into_iter()
        .map(|r| ComposeCluster::node_number(&r.node_id))
        .find(|node| *node != 1)
        .unwrap();
    let other = (2..=5).find(|node| *node != with).unwrap();
    let cut: BTreeSet<String> = [with, other].iter().map(|n| format!("node-{n}")).collect();
    load.mark("disconnect");
    let started = Instant::now();
    for node in [with, other] {
        run(Command::new("docker").args([
            "network",
            "disconnect",
            &cluster.network,
            &cluster.container(node),
        ]));
    }
    cluster
        .wait_for("3 replicas on the connected side", || async {
            let replicas = cluster.routable().await;
            replicas.len() == 3 && replicas.iter().all(|r| !cut.contains(&r.node_id))
        })
        .await;
    let replaced = started.elapsed();
    // Let the cut-off agents act on their own for a while.
    tokio::time::sleep(Duration::from_secs(10)).await;

    load.mark("reconnect");
    let healing = Instant::now();
    for node in [with, other] {
        run(Command::new("docker").args([
            "network",
            "connect",
            "--ip",
            &cluster.agent_ip(node),
            &cluster.network,
            &cluster.container(node),
        ]));
    }
    let client = cluster.client(1);
    cluster
        .wait_for("5 live agents again", || async {
            client
                .nodes()
                .await
                .is_ok_and(|view| testbed::harness::live_ids(&view).len() == 5)
        })
        .await;
    cluster.assert_exactly(3).await;
    let healed = healing.elapsed();
    let report = load.stop().await;
    print!("{report}");
    println!(
        "compose partition: replicas replaced on the connected side {:.2} s after the cut; \
         exactly 3 again (held 5 s) {:.2} s after the reconnect",
        replaced.as_secs_f64(),
        healed.as_secs_f64()
    );
    for node in 1..=5 {
        let view = cluster.client(node).app(APP).await.unwrap();
        assert_eq!(view.release.map(|r| r.number), Some(release), "node-{node}");
        assert_eq!(view.releases, vec![release], "node-{node}");
    }
}
