//! Chaos on real agents and real Docker: the tools of `testbed/tests/chaos.rs` and of
//! `testbed bench failover`.
//!
//! - [`load`]: continuous traffic through an ingress, recording every request and which
//!   replica answered;
//! - [`partition`]: cuts traffic between two groups of agents with an nftables table of the
//!   test's own, removed on heal, drop and panic;
//! - [`host`]: kill -9 of a host (agent and containers) or of an agent alone, replica
//!   counts from the API and from Docker, the ingress's access log;
//! - [`ChaosCluster`]: the stage every scenario starts from: one ingress member and
//!   `workers` agents on `127.0.<net>.x`, an app of `replicas` replicas serving through it.

pub mod host;
pub mod load;
pub mod partition;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use proto::api::ReplicaView;

use crate::harness::{LocalCluster, ensure_image, remove_containers_of, repo_root};
use load::{Load, LoadConfig};

/// Port of the ingress on the ingress member's address.
pub const INGRESS_PORT: u16 = 18080;

/// Long enough for anything that should happen on this 2-core machine to happen; the
/// figures scenarios print are what matter, never this bound.
pub const SETTLE: Duration = Duration::from_secs(90);

/// An ingress-only member (index 0, `node-1`) and `workers` agents that run workloads
/// (indices 1.., `node-2`...), with `app` deployed and answering through the ingress.
///
/// The ingress member never runs replicas, so killing any worker never takes the ingress
/// down with it, and it seeds everyone (the harness seeds every agent to index 0).
pub struct ChaosCluster {
    pub cluster: LocalCluster,
    pub app: String,
    pub replicas: u32,
    pub ingress: SocketAddr,
    /// The release deployed by [`ChaosCluster::start`].
    pub release: u64,
    /// Whether agents live in cgroups of their own (needed by partitions).
    pub cgroups: bool,
    work: tempfile::TempDir,
}

impl ChaosCluster {
    pub async fn start(
        net: u8,
        app: &str,
        workers: usize,
        replicas: u32,
    ) -> anyhow::Result<ChaosCluster> {
        ensure_image()?;
        remove_containers_of(app);
        let mut cluster = LocalCluster::start_with(net, 0, Vec::new())?;
        let cgroups = match cluster.isolate_agents_in_cgroups() {
            Ok(()) => true,
            Err(err) => {
                eprintln!("agents share one cgroup, partitions cut bound sockets only: {err}");
                false
            }
        };
        let ingress = SocketAddr::new(Ipv4Addr::new(127, 0, net, 2).into(), INGRESS_PORT);
        cluster.add_agent(
            None,
            vec![
                "--no-workloads".into(),
                "--ingress-addr".into(),
                ingress.to_string(),
            ],
        )?;
        for _ in 0..workers {
            cluster.add_agent(None, Vec::new())?;
        }
        let work = tempfile::tempdir()?;
        let mut chaos = ChaosCluster {
            cluster,
            app: app.to_string(),
            replicas,
            ingress,
            release: 0,
            cgroups,
            work,
        };
        chaos
            .cluster
            .wait_for("every agent live", SETTLE, || chaos.cluster.converged())
            .await?;
        chaos.release = chaos.deploy("hello").await?;
        let release = chaos.release;
        chaos
            .wait_for_replicas("the app's replicas healthy", |replicas| {
                replicas.len() == replicas_usize(chaos.replicas)
                    && replicas.iter().all(|r| r.release == release)
            })
            .await?;
        chaos.wait_for_ingress().await?;
        Ok(chaos)
    }

    /// Deploys the example app as `self.app` with `greeting`, through the ingress member;
    /// returns the release number.
    pub async fn deploy(&self, greeting: &str) -> anyhow::Result<u64> {
        let dir = app_dir(self.work.path(), &self.app, self.replicas, greeting)?;
        let zip = tempfile::NamedTempFile::new()?;
        node::bundle::pack_dir(&dir, std::fs::File::create(zip.path())?)?;
        let accepted = self
            .witness()
            .deploy(&self.app, zip.path(), |_| {})
            .await
            .context("deploy failed")?;
        Ok(accepted.release)
    }

    /// The ingress member's client: its view is the one the ingress routes by.
    pub fn witness(&self) -> api::Client {
        self.cluster.agents[0].client()
    }

    /// Indices of the agents that run workloads.
    pub fn workers(&self) -> std::ops::Range<usize> {
        1..self.cluster.agents.len()
    }

    pub fn index_of(&self, node_id: &str) -> Option<usize> {
        self.cluster
            .agents
            .iter()
            .position(|agent| agent.node_id == node_id)
    }

    pub fn ip(&self, index: usize) -> Ipv4Addr {
        self.cluster.agents[index].ip
    }

    /// Routable replicas of the current release, as the ingress member sees them.
    pub async fn routable(&self) -> Vec<ReplicaView> {
        host::routable_replicas(&self.witness(), &self.app).await
    }

    /// Waits until the ingress member's routable replicas satisfy `condition`.
    pub async fn wait_for_replicas<F>(&self, what: &str, condition: F) -> anyhow::Result<Duration>
    where
        F: Fn(&[ReplicaView]) -> bool,
    {
        let client = self.witness();
        let app = self.app.clone();
        let condition = &condition;
        self.cluster
            .wait_for(what, SETTLE, || {
                let client = client.clone();
                let app = app.clone();
                async move { condition(&host::routable_replicas(&client, &app).await) }
            })
            .await
    }

    /// Running containers of the app, from Docker.
    pub fn docker_replicas(&self) -> anyhow::Result<Vec<host::DockerReplica>> {
        host::docker_replicas(&self.cluster.cluster_id(), &self.app)
    }

    /// Waits until a request through the ingress is answered by a replica of the app.
    pub async fn wait_for_ingress(&self) -> anyhow::Result<Duration> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://{}/", self.ingress);
        let host = format!("{}.localhost", self.app);
        self.cluster
            .wait_for("the app answering through the ingress", SETTLE, || {
                let request = http.get(&url).header(reqwest::header::HOST, &host).send();
                async move {
                    match request.await {
                        Ok(response) if response.status().is_success() => response
                            .text()
                            .await
                            .is_ok_and(|body| load::Backend::parse(&body).is_some()),
                        _ => false,
                    }
                }
            })
            .await
    }

    /// Continuous traffic to the app through the ingress.
    pub fn load(&self) -> anyhow::Result<Load> {
        Ok(Load::start(LoadConfig::new(self.ingress, &self.app))?)
    }

    /// The ingress member's log, which holds the ingress's access log.
    pub fn ingress_log(&self) -> PathBuf {
        self.cluster.log_path(0)
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        // Agents first: a live agent would start the replicas again as they are removed.
        for index in 0..self.cluster.agents.len() {
            self.cluster.kill9(index);
        }
        remove_containers_of(&self.app);
    }
}

fn replicas_usize(replicas: u32) -> usize {
    usize::try_from(replicas).unwrap_or(usize::MAX)
}

/// `examples/hello` as `name`, with `replicas` replicas and its answers starting with
/// `greeting` (a new greeting makes a new bundle, hence a new release).
pub fn app_dir(root: &Path, name: &str, replicas: u32, greeting: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(format!("{name}-{greeting}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        repo_root().join("examples/hello/start.sh"),
        dir.join("start.sh"),
    )?;
    std::fs::write(
        dir.join("stratus.toml"),
        format!(
            "name = \"{name}\"\ncmd = \"sh start.sh\"\nreplicas = {replicas}\n\
             [resources]\ncpu = 0.1\nmemory = \"32MiB\"\n\
             [env]\nGREETING = \"{greeting}\"\n\
             [health]\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
        ),
    )?;
    Ok(dir)
}
