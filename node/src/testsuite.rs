//! An in-process test cluster (feature `testsuite`): `n` real agents in one process, on
//! chitchat's in-memory transport and port-0 API listeners, running replicas with the
//! process runtime. Quickwit's `ClusterSandbox` is the model.
//!
//! It is the middle tier between the pure simulations and the process-level testbed: the
//! real agent code, the real API over real HTTP, real replicas, but no processes to spawn,
//! no fixed ports and no UDP. Kill -9, nftables partitions and Docker stay on the testbed.
//!
//! Scenarios read as lists of [`Step`]s (chitchat's `cluster_test.rs` style), and a failure
//! names the step it stopped at.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::api::{NodeStatus, NodesResponse, ReplicaView};
use proto::routes::RouteFeed;
use proto::{ContainerHealth, ContainerState};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::agent::{AgentError, Gossip, Listeners};
use crate::cluster::membership::ChannelTransport;
use crate::config::{AgentArgs, AgentConfig};

/// The token every test node accepts from users.
pub const USER_TOKEN: &str = "test-user-token";

/// Each node gets its own 500 host ports for replicas, so two nodes of one process never
/// hand out the same one.
const PORTS_PER_NODE: u16 = 500;

/// One agent of a [`TestCluster`].
pub struct TestNode {
    pub node_id: String,
    /// Virtual: the in-memory transport routes by it; nothing is bound there.
    pub gossip_addr: SocketAddr,
    /// A real listener on 127.0.0.1, port picked by the kernel.
    pub api_addr: SocketAddr,
    /// Its DNS server (UDP and TCP), when its config has one: the config's address, with
    /// the port the kernel picked for port 0.
    pub dns_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AgentError>>>,
    /// What it was started with, for [`TestCluster::restart_node`].
    config: AgentConfig,
    /// Whether it feeds routes to a receiver of the test's (such a node is not restarted:
    /// the feed went with the agent that stopped).
    feeds_routes: bool,
}

impl TestNode {
    /// A client with the user token; over https, trusting `--api-tls-ca`, for an agent
    /// that serves TLS.
    pub fn client(&self) -> api::Client {
        let client = match &self.config.api_tls {
            None => api::Client::new(&format!("http://{}", self.api_addr)),
            Some(_) => {
                let ca = self.config.api_tls_ca.as_ref().map(|path| {
                    let pem = std::fs::read(path).expect("the test wrote its CA");
                    (path.display().to_string(), pem)
                });
                let http = api::client::http_client(
                    ca.as_ref()
                        .map(|(path, pem)| (path.as_str(), pem.as_slice())),
                )
                .expect("the test's CA is valid");
                api::Client::with_http(&format!("https://{}", self.api_addr), http)
            }
        };
        client
            .expect("a socket address is a valid API URL")
            .with_token(Some(USER_TOKEN.to_string()))
    }

    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// The agent's data dir (under the cluster's temporary folder): its catalog, and its
    /// blob store in `blobs/<first 2 hex>/<sha256>` (see [`crate::bundle::BlobStore`]).
    /// Kept across [`TestCluster::restart_node`].
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Until the agent's API answers; an agent that stops while starting (a store it
    /// cannot use, a data dir it cannot write) fails here with its own error, not later
    /// as a node that "does not answer".
    async fn wait_until_serving(&mut self) -> Result<(), String> {
        let client = self.client();
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(task) = self.task.take_if(|task| task.is_finished()) {
                let why = match task.await {
                    Ok(Ok(())) => "it returned".to_string(),
                    Ok(Err(err)) => err.to_string(),
                    Err(err) => format!("it panicked: {err}"),
                };
                return Err(format!("{} stopped while starting: {why}", self.node_id));
            }
            if client.health().await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} did not answer within {STARTUP_TIMEOUT:?} of starting",
                    self.node_id
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long an agent may take from start to an answering API (an S3 store is checked
/// first, and a loaded machine is slow).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    transport: ChannelTransport,
    dir: tempfile::TempDir,
    /// Node index -> first host port of its replicas.
    next_port_base: u16,
}

/// `n` agents that find each other through the first one's gossip address.
pub async fn cluster_for_test(n: usize) -> Result<TestCluster, String> {
    let mut cluster = TestCluster {
        nodes: Vec::new(),
        transport: ChannelTransport::default(),
        dir: tempfile::tempdir().map_err(|err| format!("cannot make a temp dir: {err}"))?,
        next_port_base: 41_000,
    };
    for _ in 0..n {
        cluster.add_node().await?;
    }
    Ok(cluster)
}

impl TestCluster {
    /// Starts one more agent, seeded with the first node.
    pub async fn add_node(&mut self) -> Result<usize, String> {
        self.add_node_with(|_| {}).await
    }

    /// [`TestCluster::add_node`], with the agent's flags changed by `configure` after the
    /// defaults are set (seeds, store, `no_workloads`, ...).
    pub async fn add_node_with(
        &mut self,
        configure: impl FnOnce(&mut AgentArgs),
    ) -> Result<usize, String> {
        self.add_node_configured(configure, None).await
    }

    /// [`TestCluster::add_node_with`], the agent also sending its route feed to the
    /// returned receiver whenever the cluster or the catalog changes: what the binary hands
    /// the embedded ingress, so a test can build an ingress from one agent's routes.
    pub async fn add_node_with_routes(
        &mut self,
        configure: impl FnOnce(&mut AgentArgs),
    ) -> Result<(usize, watch::Receiver<Option<RouteFeed>>), String> {
        let (routes_tx, routes_rx) = watch::channel(None);
        let index = self.add_node_configured(configure, Some(routes_tx)).await?;
        Ok((index, routes_rx))
    }

    async fn add_node_configured(
        &mut self,
        configure: impl FnOnce(&mut AgentArgs),
        routes: Option<watch::Sender<Option<RouteFeed>>>,
    ) -> Result<usize, String> {
        let index = self.nodes.len();
        let node_id = format!("node-{index}");
        let gossip_addr: SocketAddr = ([127, 0, 0, 1], 17_000 + index as u16).into();
        let seeds = self
            .nodes
            .first()
            .map(|seed| vec![seed.gossip_addr.to_string()]);
        let ports = (
            self.next_port_base,
            self.next_port_base + PORTS_PER_NODE - 1,
        );
        self.next_port_base += PORTS_PER_NODE;
        let args = AgentArgs {
            node_id: Some(node_id.clone()),
            gossip_addr: Some(gossip_addr),
            advertise_addr: Some(gossip_addr.to_string()),
            api_addr: Some(([127, 0, 0, 1], 0).into()),
            seeds,
            data_dir: Some(self.dir.path().join(&node_id)),
            insecure_no_encryption: true,
            gossip_interval_ms: Some(100),
            reschedule_grace_ms: Some(500),
            load_interval_secs: Some(1),
            api_token: Some(USER_TOKEN.to_string()),
            runtime: Some("process".into()),
            port_range: Some(format!("{}-{}", ports.0, ports.1)),
            ..AgentArgs::default()
        };
        let mut args = args;
        configure(&mut args);
        let gossip_addr = args.gossip_addr.unwrap_or(gossip_addr);
        let config = AgentConfig::resolve(args).map_err(|err| err.to_string())?;
        self.start(index, node_id, gossip_addr, config, routes)
            .await?;
        Ok(index)
    }

    /// Starts node `index` again, after [`TestCluster::stop_node`], with its config and
    /// data dir (so its catalog too): a new generation of the same node.
    pub async fn restart_node(&mut self, index: usize) -> Result<(), String> {
        let node = &self.nodes[index];
        if node.is_running() {
            return Err(format!("{} is still running: stop it first", node.node_id));
        }
        if node.feeds_routes {
            return Err(format!(
                "{} fed routes to the test, which went with it",
                node.node_id
            ));
        }
        let (node_id, gossip_addr, config) =
            (node.node_id.clone(), node.gossip_addr, node.config.clone());
        self.start(index, node_id, gossip_addr, config, None).await
    }

    async fn start(
        &mut self,
        index: usize,
        node_id: String,
        gossip_addr: SocketAddr,
        config: AgentConfig,
        routes: Option<watch::Sender<Option<RouteFeed>>>,
    ) -> Result<(), String> {
        let api = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|err| format!("cannot bind an API port: {err}"))?;
        let api_addr = api
            .local_addr()
            .map_err(|err| format!("no local address: {err}"))?;
        let dns = match &config.dns {
            Some(dns) => Some(
                crate::dns::DnsListeners::bind(dns.addr)
                    .await
                    .map_err(|err| format!("cannot bind DNS on {}: {err}", dns.addr))?,
            ),
            None => None,
        };
        let dns_addr = dns.as_ref().and_then(|dns| dns.local_addr().ok());
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let gossip = Gossip::in_memory(self.transport.clone());
        let feeds_routes = routes.is_some();
        let task = tokio::spawn(crate::agent::run_with_feeds(
            config.clone(),
            Listeners {
                api,
                dns,
                internal_dns: None,
            },
            gossip,
            async move {
                let _ = shutdown_rx.await;
            },
            crate::agent::Feeds {
                routes,
                ..Default::default()
            },
        ));
        let mut node = TestNode {
            node_id,
            gossip_addr,
            api_addr,
            dns_addr,
            shutdown: Some(shutdown_tx),
            task: Some(task),
            config,
            feeds_routes,
        };
        node.wait_until_serving().await?;
        if index < self.nodes.len() {
            self.nodes[index] = node;
        } else {
            self.nodes.push(node);
        }
        Ok(())
    }

    pub fn node(&self, index: usize) -> &TestNode {
        &self.nodes[index]
    }

    /// Stops node `index` gracefully (it announces that it leaves) and waits for its agent.
    pub async fn stop_node(&mut self, index: usize) -> Result<(), String> {
        let node = &mut self.nodes[index];
        if let Some(shutdown) = node.shutdown.take() {
            let _ = shutdown.send(());
        }
        match node.task.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(format!("{} stopped with an error: {err}", node.node_id)),
                Err(err) => Err(format!("{} panicked: {err}", node.node_id)),
            },
            None => Ok(()),
        }
    }

    /// Cuts gossip between two nodes, both ways.
    pub async fn cut_link(&self, a: usize, b: usize) {
        let (a, b) = (self.nodes[a].gossip_addr, self.nodes[b].gossip_addr);
        self.transport.remove_link(a, b).await;
    }

    pub async fn heal_link(&self, a: usize, b: usize) {
        let (a, b) = (self.nodes[a].gossip_addr, self.nodes[b].gossip_addr);
        self.transport.add_link(a, b).await;
    }

    /// Cuts `index` off from every other node.
    pub async fn isolate(&self, index: usize) {
        for other in 0..self.nodes.len() {
            if other != index {
                self.cut_link(index, other).await;
            }
        }
    }

    pub async fn rejoin(&self, index: usize) {
        for other in 0..self.nodes.len() {
            if other != index {
                self.heal_link(index, other).await;
            }
        }
    }

    /// Stops every agent still running.
    pub async fn shutdown(mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        for index in 0..self.nodes.len() {
            if let Err(err) = self.stop_node(index).await {
                errors.push(err);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Polls `check` until it returns `Ok`, or fails with its last complaint after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(()) => return Ok(()),
            Err(complaint) => complaint,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("still not so after {timeout:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the repository's `examples/` live (the hello app, ...).
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A plain HTTP/1.0 GET of `/`, to read a replica's page without another client crate.
pub async fn http_get_for_test(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .await?;
    let mut page = String::new();
    stream.read_to_string(&mut page).await?;
    Ok(page)
}

/// True (and says so) when `STRATUS_SKIP_DOCKER_TESTS=1`: a machine without Docker skips
/// the Docker tests by asking, never silently.
pub fn skip_docker_tests() -> bool {
    let skip = std::env::var_os("STRATUS_SKIP_DOCKER_TESTS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("STRATUS_SKIP_DOCKER_TESTS=1: skipping a Docker test");
    }
    skip
}

/// Builds `stratus/busybox:latest` once per test binary if it is missing
/// (`scripts/build-images.sh` keeps an existing image).
pub fn ensure_test_image() -> Result<(), String> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-images.sh");
            let status = std::process::Command::new("bash")
                .arg(&script)
                .status()
                .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
            status
                .success()
                .then_some(())
                .ok_or_else(|| format!("{} failed: {status}", script.display()))
        })
        .clone()
}

/// `dir` packed as a bundle, as `stratus deploy` sends it.
pub fn bundle_for_test(dir: &Path) -> Result<tempfile::NamedTempFile, String> {
    let mut bundle =
        tempfile::NamedTempFile::new().map_err(|err| format!("no temp file: {err}"))?;
    crate::bundle::pack_dir(dir, bundle.as_file_mut())
        .map_err(|err| format!("cannot pack {}: {err}", dir.display()))?;
    Ok(bundle)
}

/// `examples/hello` under `root/name` as the app `name`, with `replicas` replicas of `cpu`
/// cores and 32 MiB each, answering "hi from ...", healthy once `/` answers.
pub fn hello_app_for_test(
    root: &Path,
    name: &str,
    replicas: u32,
    cpu: f64,
) -> Result<PathBuf, String> {
    let dir = root.join(name);
    let io = |err: std::io::Error| format!("cannot write {}: {err}", dir.display());
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::copy(examples_dir().join("hello/start.sh"), dir.join("start.sh")).map_err(io)?;
    std::fs::write(
        dir.join("stratus.toml"),
        format!(
            "name = \"{name}\"\ncmd = \"sh start.sh\"\nreplicas = {replicas}\n\
             [resources]\ncpu = {cpu}\nmemory = \"32MiB\"\n\
             [env]\nGREETING = \"hi\"\n[health]\npath = \"/\"\ninterval = \"1s\"\n"
        ),
    )
    .map_err(io)?;
    Ok(dir)
}

/// The replicas of `release` of `app` that run and pass their health check, as the node
/// behind `client` sees them (none when the app is unknown or the node does not answer).
pub async fn healthy_replicas(client: &api::Client, app: &str, release: u64) -> Vec<ReplicaView> {
    match client.app(app).await {
        Ok(view) => view
            .replicas
            .into_iter()
            .filter(|replica| {
                replica.release == release
                    && replica.state == ContainerState::Running
                    && replica.health == ContainerHealth::Healthy
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What a scenario can do, one step at a time, on any [`StepCluster`]: the in-process
/// [`TestCluster`] here, real agent processes in the testbed (`testbed::scenario`). Nodes
/// are named by their index, in the order they were added.
pub enum Step {
    AddNode,
    /// A graceful stop: the node announces that it leaves, and its agent must exit cleanly.
    StopNode(usize),
    /// Kill -9: no goodbye. Only real processes can be killed so; the in-process cluster
    /// fails this step.
    KillNode(usize),
    /// Starts a stopped or killed node again, with its data dir (a new generation).
    RestartNode(usize),
    CutLink(usize, usize),
    HealLink(usize, usize),
    Isolate(usize),
    Rejoin(usize),
    /// Cuts every link between the two groups, both ways.
    Partition(Vec<usize>, Vec<usize>),
    /// Heals what `Partition` with the same groups cut.
    Heal(Vec<usize>, Vec<usize>),
    /// Waits until each node of `by` sees each (node, status) of `sees` (a node's view of
    /// itself is not checked).
    Expect {
        by: Vec<usize>,
        sees: Vec<(usize, NodeStatus)>,
    },
    /// Waits until each node of `by` sees exactly the nodes of `live` as live, no more.
    ExpectLive {
        by: Vec<usize>,
        live: Vec<usize>,
    },
    /// Waits until every running node sees exactly the running nodes as live.
    Converged,
}

/// Nodes are shown by index (`#2`, the third added), which every kind of cluster has;
/// errors name them by node id.
fn names(nodes: &[usize]) -> String {
    let names: Vec<String> = nodes.iter().map(|i| format!("#{i}")).collect();
    format!("[{}]", names.join(", "))
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::AddNode => write!(f, "add a node"),
            Step::StopNode(i) => write!(f, "stop #{i}"),
            Step::KillNode(i) => write!(f, "kill -9 #{i}"),
            Step::RestartNode(i) => write!(f, "restart #{i}"),
            Step::CutLink(a, b) => write!(f, "cut #{a} <-> #{b}"),
            Step::HealLink(a, b) => write!(f, "heal #{a} <-> #{b}"),
            Step::Isolate(i) => write!(f, "isolate #{i}"),
            Step::Rejoin(i) => write!(f, "rejoin #{i}"),
            Step::Partition(a, b) => write!(f, "partition {} | {}", names(a), names(b)),
            Step::Heal(a, b) => write!(f, "heal {} | {}", names(a), names(b)),
            Step::Expect { by, sees } => {
                write!(f, "wait until {} see", names(by))?;
                for (i, status) in sees {
                    write!(f, " #{i}={status:?}")?;
                }
                Ok(())
            }
            Step::ExpectLive { by, live } => {
                write!(
                    f,
                    "wait until {} see exactly {} live",
                    names(by),
                    names(live)
                )
            }
            Step::Converged => write!(f, "wait until every running node sees the others live"),
        }
    }
}

/// Five nodes split 2|3 and healed: each side sees exactly itself live, then every node
/// sees every node live again. Runs on the in-process cluster and on real agents alike.
pub fn split_2_3_and_heal() -> Vec<Step> {
    let (minority, majority) = (vec![3, 4], vec![0, 1, 2]);
    vec![
        Step::Converged,
        Step::Partition(minority.clone(), majority.clone()),
        Step::ExpectLive {
            by: minority.clone(),
            live: minority.clone(),
        },
        Step::ExpectLive {
            by: majority.clone(),
            live: majority.clone(),
        },
        Step::Heal(minority, majority),
        Step::Converged,
    ]
}

/// How long a waiting step may take on the in-process cluster.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster [`Step`]s can run on. Indices are the order nodes were added in.
#[async_trait::async_trait]
pub trait StepCluster: Send + Sync {
    /// Nodes added so far, running or not.
    fn node_count(&self) -> usize;
    fn node_id(&self, index: usize) -> String;
    /// A client of the node's API, with the user token.
    fn client(&self, index: usize) -> api::Client;
    fn is_running(&self, index: usize) -> bool;
    async fn add_node(&mut self) -> Result<usize, String>;
    /// Graceful: the node leaves, and its agent must exit without an error.
    async fn stop_node(&mut self, index: usize) -> Result<(), String>;
    /// Abrupt, with no goodbye; a cluster that cannot do it says why.
    async fn kill_node(&mut self, index: usize) -> Result<(), String>;
    async fn restart_node(&mut self, index: usize) -> Result<(), String>;
    /// Cuts the nodes of `a` from those of `b`, both ways.
    async fn cut(&mut self, a: &[usize], b: &[usize]) -> Result<(), String>;
    /// Undoes [`StepCluster::cut`] of the same groups.
    async fn heal(&mut self, a: &[usize], b: &[usize]) -> Result<(), String>;
    /// How long a waiting step may take.
    fn step_timeout(&self) -> Duration {
        STEP_TIMEOUT
    }
    /// What a failed step adds to its error, e.g. the agents' last log lines.
    fn diagnostics(&self) -> String {
        String::new()
    }
}

/// One step of a scenario on `C`: it says what it does, then does it. [`Step`] is one on
/// every [`StepCluster`]; the testbed's chaos steps are another.
#[async_trait::async_trait]
pub trait Perform<C: ?Sized + Send>: std::fmt::Display + Send {
    async fn perform(self, on: &mut C) -> Result<(), String>;
}

/// Runs `steps` in order, printing each and how long it took; the error names the step
/// that failed.
pub async fn run_script<C, S>(on: &mut C, steps: Vec<S>) -> Result<(), String>
where
    C: ?Sized + Send,
    S: Perform<C>,
{
    for (number, step) in steps.into_iter().enumerate() {
        let label = format!("step {} ({step})", number + 1);
        println!("{label}");
        let started = tokio::time::Instant::now();
        step.perform(on)
            .await
            .map_err(|err| format!("{label} failed: {err}"))?;
        println!("  done in {:.2} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

#[async_trait::async_trait]
impl<C: StepCluster + ?Sized> Perform<C> for Step {
    async fn perform(self, cluster: &mut C) -> Result<(), String> {
        let outcome = match self {
            Step::AddNode => cluster.add_node().await.map(|_| ()),
            Step::StopNode(i) => cluster.stop_node(i).await,
            Step::KillNode(i) => cluster.kill_node(i).await,
            Step::RestartNode(i) => cluster.restart_node(i).await,
            Step::CutLink(a, b) => cluster.cut(&[a], &[b]).await,
            Step::HealLink(a, b) => cluster.heal(&[a], &[b]).await,
            Step::Isolate(i) => {
                let others = others(cluster, i);
                cluster.cut(&[i], &others).await
            }
            Step::Rejoin(i) => {
                let others = others(cluster, i);
                cluster.heal(&[i], &others).await
            }
            Step::Partition(a, b) => cluster.cut(&a, &b).await,
            Step::Heal(a, b) => cluster.heal(&a, &b).await,
            Step::Expect { by, sees } => expect(cluster, &by, &sees).await,
            Step::ExpectLive { by, live } => expect_live(cluster, &by, &live).await,
            Step::Converged => {
                let running: Vec<usize> = (0..cluster.node_count())
                    .filter(|i| cluster.is_running(*i))
                    .collect();
                expect_live(cluster, &running, &running).await
            }
        };
        outcome.map_err(|err| {
            let diagnostics = cluster.diagnostics();
            if diagnostics.is_empty() {
                err
            } else {
                format!("{err}\n{diagnostics}")
            }
        })
    }
}

fn others<C: StepCluster + ?Sized>(cluster: &C, index: usize) -> Vec<usize> {
    (0..cluster.node_count()).filter(|i| *i != index).collect()
}

/// Every node of `by`'s view, through its API.
async fn views<C: StepCluster + ?Sized>(
    cluster: &C,
    by: &[usize],
) -> Result<Vec<(String, NodesResponse)>, String> {
    let mut views = Vec::new();
    for index in by {
        let observer = cluster.node_id(*index);
        let view = cluster
            .client(*index)
            .nodes()
            .await
            .map_err(|err| format!("{observer} does not answer: {err}"))?;
        views.push((observer, view));
    }
    Ok(views)
}

async fn expect<C: StepCluster + ?Sized>(
    cluster: &C,
    by: &[usize],
    expected: &[(usize, NodeStatus)],
) -> Result<(), String> {
    let expected: Vec<(String, NodeStatus)> = expected
        .iter()
        .map(|(i, status)| (cluster.node_id(*i), *status))
        .collect();
    wait_for(cluster.step_timeout(), || async {
        for (observer, view) in views(cluster, by).await? {
            for (node_id, status) in &expected {
                if &observer == node_id {
                    continue;
                }
                let seen = view
                    .nodes
                    .iter()
                    .find(|node| &node.node_id == node_id)
                    .map(|node| node.status);
                if seen != Some(*status) {
                    return Err(format!("{observer} sees {node_id} as {seen:?}"));
                }
            }
        }
        Ok(())
    })
    .await
}

async fn expect_live<C: StepCluster + ?Sized>(
    cluster: &C,
    by: &[usize],
    live: &[usize],
) -> Result<(), String> {
    let mut expected: Vec<String> = live.iter().map(|i| cluster.node_id(*i)).collect();
    expected.sort_unstable();
    wait_for(cluster.step_timeout(), || async {
        for (observer, view) in views(cluster, by).await? {
            let mut seen: Vec<String> = view
                .nodes
                .iter()
                .filter(|node| node.status == NodeStatus::Live)
                .map(|node| node.node_id.clone())
                .collect();
            seen.sort_unstable();
            if seen != expected {
                return Err(format!("{observer} sees {seen:?} live, not {expected:?}"));
            }
        }
        Ok(())
    })
    .await
}

impl TestCluster {
    /// Runs `steps` in order, printing each; the error names the step that failed.
    pub async fn run(&mut self, steps: Vec<Step>) -> Result<(), String> {
        run_script(self, steps).await
    }
}

#[async_trait::async_trait]
impl StepCluster for TestCluster {
    fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn node_id(&self, index: usize) -> String {
        self.nodes[index].node_id.clone()
    }

    fn client(&self, index: usize) -> api::Client {
        self.nodes[index].client()
    }

    fn is_running(&self, index: usize) -> bool {
        self.nodes[index].is_running()
    }

    async fn add_node(&mut self) -> Result<usize, String> {
        TestCluster::add_node(self).await
    }

    async fn stop_node(&mut self, index: usize) -> Result<(), String> {
        TestCluster::stop_node(self, index).await
    }

    async fn kill_node(&mut self, index: usize) -> Result<(), String> {
        Err(format!(
            "node-{index} is a task of this process: kill -9 needs the process testbed"
        ))
    }

    async fn restart_node(&mut self, index: usize) -> Result<(), String> {
        TestCluster::restart_node(self, index).await
    }

    /// Gossip only: the agents' HTTP calls to each other still get through.
    async fn cut(&mut self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for x in a {
            for y in b {
                self.cut_link(*x, *y).await;
            }
        }
        Ok(())
    }

    async fn heal(&mut self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for x in a {
            for y in b {
                self.heal_link(*x, *y).await;
            }
        }
        Ok(())
    }
}
