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
use std::time::Duration;

use tokio::sync::oneshot;
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
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

impl TestNode {
    /// A client with the user token.
    pub fn client(&self) -> api::Client {
        api::Client::new(&format!("http://{}", self.api_addr))
            .expect("a socket address is a valid API URL")
            .with_token(Some(USER_TOKEN.to_string()))
    }

    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }
}

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
        let config = AgentConfig::resolve(args).map_err(|err| err.to_string())?;
        self.start(index, node_id, gossip_addr, config).await?;
        Ok(index)
    }

    async fn start(
        &mut self,
        index: usize,
        node_id: String,
        gossip_addr: SocketAddr,
        config: AgentConfig,
    ) -> Result<(), String> {
        let api = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|err| format!("cannot bind an API port: {err}"))?;
        let api_addr = api
            .local_addr()
            .map_err(|err| format!("no local address: {err}"))?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let gossip = Gossip::in_memory(self.transport.clone());
        let task = tokio::spawn(crate::agent::run(
            config,
            Listeners { api },
            gossip,
            async move {
                let _ = shutdown_rx.await;
            },
        ));
        let node = TestNode {
            node_id,
            gossip_addr,
            api_addr,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        };
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

/// What [`TestCluster::run`] can do, one step at a time.
pub enum Step {
    AddNode,
    StopNode(usize),
    CutLink(usize, usize),
    HealLink(usize, usize),
    Isolate(usize),
    Rejoin(usize),
    /// Waits until each node of `by` sees each (node, status) of `sees` (a node's view of
    /// itself is not checked).
    Expect {
        by: Vec<usize>,
        sees: Vec<(usize, proto::api::NodeStatus)>,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::AddNode => write!(f, "add a node"),
            Step::StopNode(i) => write!(f, "stop node-{i}"),
            Step::CutLink(a, b) => write!(f, "cut node-{a} <-> node-{b}"),
            Step::HealLink(a, b) => write!(f, "heal node-{a} <-> node-{b}"),
            Step::Isolate(i) => write!(f, "isolate node-{i}"),
            Step::Rejoin(i) => write!(f, "rejoin node-{i}"),
            Step::Expect { by, sees } => {
                write!(f, "wait until nodes {by:?} see")?;
                for (i, status) in sees {
                    write!(f, " node-{i}={status:?}")?;
                }
                Ok(())
            }
        }
    }
}

/// How long a waiting step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

impl TestCluster {
    /// Runs `steps` in order, printing each; the error names the step that failed.
    pub async fn run(&mut self, steps: Vec<Step>) -> Result<(), String> {
        for (number, step) in steps.into_iter().enumerate() {
            println!("step {}: {step}", number + 1);
            let label = format!("step {} ({step})", number + 1);
            let outcome = match step {
                Step::AddNode => self.add_node().await.map(|_| ()),
                Step::StopNode(i) => self.stop_node(i).await,
                Step::CutLink(a, b) => {
                    self.cut_link(a, b).await;
                    Ok(())
                }
                Step::HealLink(a, b) => {
                    self.heal_link(a, b).await;
                    Ok(())
                }
                Step::Isolate(i) => {
                    self.isolate(i).await;
                    Ok(())
                }
                Step::Rejoin(i) => {
                    self.rejoin(i).await;
                    Ok(())
                }
                Step::Expect { by, sees } => self.expect(&by, &sees).await,
            };
            outcome.map_err(|err| format!("{label} failed: {err}"))?;
        }
        Ok(())
    }

    async fn expect(
        &self,
        by: &[usize],
        expected: &[(usize, proto::api::NodeStatus)],
    ) -> Result<(), String> {
        let observers: Vec<(String, api::Client)> = by
            .iter()
            .map(|i| (self.nodes[*i].node_id.clone(), self.nodes[*i].client()))
            .collect();
        let expected: Vec<(String, proto::api::NodeStatus)> = expected
            .iter()
            .map(|(i, status)| (self.nodes[*i].node_id.clone(), *status))
            .collect();
        wait_for(STEP_TIMEOUT, || {
            let observers = &observers;
            let expected = &expected;
            async move {
                for (observer, client) in observers {
                    let view = client
                        .nodes()
                        .await
                        .map_err(|err| format!("{observer} does not answer: {err}"))?;
                    for (node_id, status) in expected {
                        let seen = view
                            .nodes
                            .iter()
                            .find(|node| &node.node_id == node_id)
                            .map(|node| node.status);
                        if observer == node_id {
                            continue;
                        }
                        if seen != Some(*status) {
                            return Err(format!("{observer} sees {node_id} as {seen:?}"));
                        }
                    }
                }
                Ok(())
            }
        })
        .await
    }
}
