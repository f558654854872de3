//! Real agents as child processes on loopback addresses `127.0.<net>.<2..>`.
//!
//! Each test picks its own `net` octet so tests running in parallel never share an address,
//! and holds it for as long as its cluster lives (a [`NetLease`]): a second cluster on the
//! same net, in this process or another one running at the same time, fails at once with
//! a clear error instead of sharing addresses and ports with the first.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::api::{NodeStatus, NodesResponse};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::cgroups::AgentCgroups;

pub const GOSSIP_PORT: u16 = 7946;
pub const API_PORT: u16 = 7070;
/// The port of a net's lease, on `127.0.<net>.1` (agents use `.2` and up).
pub const LEASE_PORT: u16 = 7069;

/// Exclusive use of the loopback net `127.0.<net>.0/24` (its agent addresses and the app
/// port ranges derived from it) while this value lives.
///
/// The lease is a TCP listener kept bound on `127.0.<net>.1:`[`LEASE_PORT`]: the kernel
/// lets only one socket listen there, across every process, and frees it when the holder
/// drops it or dies, so a lease can neither be shared nor leak. Nothing ever connects to it.
#[derive(Debug)]
pub struct NetLease {
    net: u8,
    _listener: std::net::TcpListener,
}

impl NetLease {
    pub fn acquire(net: u8) -> anyhow::Result<NetLease> {
        let addr = SocketAddr::new(Ipv4Addr::new(127, 0, net, 1).into(), LEASE_PORT);
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => Ok(NetLease {
                net,
                _listener: listener,
            }),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "loopback net 127.0.{net}.0/24 is held by another running test ({addr} is \
                 bound): give each test that may run at the same time a net of its own"
            ),
            Err(err) => Err(err).with_context(|| format!("cannot lease net {net} at {addr}")),
        }
    }

    pub fn net(&self) -> u8 {
        self.net
    }
}

/// Path of the `stratus` binary: `$STRATUS_BIN`, else next to the running executable
/// (cargo puts test binaries in `target/<profile>/deps` and binaries in `target/<profile>`).
pub fn stratus_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("STRATUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(candidate) = dir {
        let bin = candidate.join("stratus");
        if bin.is_file() {
            return Ok(bin);
        }
        dir = candidate.parent().map(Path::to_path_buf);
        if candidate.file_name().is_some_and(|name| name == "target") {
            break;
        }
    }
    bail!(
        "stratus binary not found next to {}: run `cargo build` (or set STRATUS_BIN)",
        exe.display()
    )
}

/// A fresh cluster key from the real `stratus keygen`.
pub fn keygen(bin: &Path) -> anyhow::Result<String> {
    let output = Command::new(bin).arg("keygen").output()?;
    if !output.status.success() {
        bail!(
            "stratus keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

pub struct AgentProcess {
    pub node_id: String,
    pub ip: Ipv4Addr,
    pub key: String,
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

impl AgentProcess {
    pub fn gossip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), GOSSIP_PORT)
    }

    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), API_PORT)
    }

    /// A client with the user token.
    pub fn client(&self) -> api::Client {
        api::Client::new(&self.api_addr().to_string())
            .expect("loopback URL is valid")
            .with_token(Some(API_TOKEN.to_string()))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The API token every testbed agent accepts from users.
pub const API_TOKEN: &str = "testbed-token";

/// The repository root (the testbed crate's parent folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds the local `stratus/busybox` image with the project's script if it is missing.
pub fn ensure_image() -> anyhow::Result<()> {
    let script = repo_root().join("scripts/build-images.sh");
    let status = Command::new("bash").arg(&script).status()?;
    anyhow::ensure!(status.success(), "{} failed", script.display());
    Ok(())
}

/// Removes every container the testbed's agents started for `node_prefix` nodes.
pub fn remove_containers_of(app: &str) {
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=stratus.app={app}")])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(&ids)
            .output();
    }
}

/// Agents started from one binary with one cluster key, seeded to the first agent.
pub struct LocalCluster {
    pub bin: PathBuf,
    pub key: String,
    pub net: u8,
    /// The first two octets of the agents' addresses: `127.0` unless
    /// [`LocalCluster::start_on`] said otherwise.
    pub prefix: [u8; 2],
    pub agents: Vec<AgentProcess>,
    /// Flags given to every agent, e.g. `--gossip-interval-ms 200`.
    pub common_args: Vec<String>,
    /// Set by [`LocalCluster::isolate_agents_in_cgroups`].
    cgroups: Option<AgentCgroups>,
    dir: TempDir,
    /// Held until the agents are gone (fields drop after [`Drop::drop`] has killed them).
    _lease: NetLease,
}

impl LocalCluster {
    /// Starts `count` agents on `127.0.<net>.2`, `127.0.<net>.3`, ...
    pub fn start(net: u8, count: usize) -> anyhow::Result<LocalCluster> {
        LocalCluster::start_with(net, count, Vec::new())
    }

    /// Same, with `common_args` added to every agent's command line.
    pub fn start_with(
        net: u8,
        count: usize,
        common_args: Vec<String>,
    ) -> anyhow::Result<LocalCluster> {
        LocalCluster::start_on([127, 0], net, count, common_args)
    }

    /// Same, with agents on `<prefix>.<net>.2`, `<prefix>.<net>.3`, ... instead of
    /// loopback: addresses the caller has put on this host (say on `lo`, as /32s), which
    /// containers can route to, unlike `127.x` (their own loopback). The lease stays on
    /// `127.0.<net>.1`, so a net is still held by one test at a time.
    pub fn start_on(
        prefix: [u8; 2],
        net: u8,
        count: usize,
        common_args: Vec<String>,
    ) -> anyhow::Result<LocalCluster> {
        let lease = NetLease::acquire(net)?;
        let bin = stratus_bin()?;
        let key = keygen(&bin)?;
        let mut cluster = LocalCluster {
            bin,
            key,
            net,
            prefix,
            agents: Vec::new(),
            common_args,
            cgroups: None,
            dir: tempfile::Builder::new()
                .prefix("stratus-testbed-")
                .tempdir()?,
            _lease: lease,
        };
        for _ in 0..count {
            cluster.add_agent(None, Vec::new())?;
        }
        Ok(cluster)
    }

    pub fn data_root(&self) -> &Path {
        self.dir.path()
    }

    /// Where agent `index` writes its output.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.agents[index].node_id))
    }

    /// The `--cluster-id` every agent gets (and labels its containers with).
    pub fn cluster_id(&self) -> String {
        format!("testbed-{}", self.net)
    }

    /// Agents started (or restarted) from now on each live in a cgroup v2 of their own,
    /// named after their address, so a [`crate::chaos::partition::Partition`] can tell
    /// their unbound sockets apart (they all connect from 127.0.0.1).
    pub fn isolate_agents_in_cgroups(&mut self) -> anyhow::Result<()> {
        self.cgroups = Some(AgentCgroups::detect()?);
        Ok(())
    }

    pub fn seed(&self) -> SocketAddr {
        let [a, b] = self.prefix;
        SocketAddr::new(Ipv4Addr::new(a, b, self.net, 2).into(), GOSSIP_PORT)
    }

    /// Adds and starts one more agent; `key` overrides the cluster key (for intruders).
    pub fn add_agent(
        &mut self,
        key: Option<String>,
        extra_args: Vec<String>,
    ) -> anyhow::Result<usize> {
        let index = self.agents.len();
        let host = u8::try_from(index + 2).context("too many agents for one /24")?;
        let [a, b] = self.prefix;
        let agent = AgentProcess {
            node_id: format!("node-{}", index + 1),
            ip: Ipv4Addr::new(a, b, self.net, host),
            key: key.unwrap_or_else(|| self.key.clone()),
            extra_args,
            child: None,
        };
        self.agents.push(agent);
        self.spawn(index)?;
        Ok(index)
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let seed = self.seed().to_string();
        let data_root = self.dir.path().to_path_buf();
        let agent = &mut self.agents[index];
        let data_dir = data_root.join(&agent.node_id);
        std::fs::create_dir_all(&data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_root.join(format!("{}.log", agent.node_id)))?;
        let mut command = match &self.cgroups {
            Some(cgroups) => {
                let procs = cgroups.create(agent.ip)?;
                // The shell moves itself into the agent's cgroup, then becomes the agent
                // (same pid), so every socket the agent ever opens belongs to that cgroup.
                let mut command = Command::new("sh");
                command
                    .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(procs)
                    .arg(&self.bin);
                command
            }
            None => Command::new(&self.bin),
        };
        let child = command
            .arg("agent")
            .args(["--node-id", &agent.node_id])
            .args(["--gossip-addr", &agent.gossip_addr().to_string()])
            .args(["--api-addr", &agent.api_addr().to_string()])
            .args(["--seeds", &seed])
            .args(["--data-dir", &data_dir.display().to_string()])
            .args(["--cluster-key", &agent.key])
            .args(["--api-token", API_TOKEN])
            // No rate limit: the tests' observers poll harder than any user (rollout.rs
            // samples every agent each 20 ms beside its own calls, `testbed bench` each
            // 10 ms), and a 429 there would fail a rollout test for its observer's sake. The
            // limit has tests of its own (api/tests/routes.rs), and the in-process agents of
            // node::testsuite run with the default.
            .args(["--api-rate-limit", "0"])
            // A cluster id of its own, so clusters of parallel tests never share containers.
            .args(["--cluster-id", &format!("testbed-{}", self.net)])
            // Agents share this host: with the process runtime, apps listen on every
            // interface, so each agent gets ports of its own.
            .args(["--port-range", &agent_port_range(self.net, index)])
            .args(&self.common_args)
            .args(&agent.extra_args)
            .env("STRATUS_LOG", "info")
            // Errors, not backtraces, in the logs a failing test prints.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        agent.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the agent gets no chance to say goodbye.
    pub fn kill9(&mut self, index: usize) {
        if let Some(mut child) = self.agents[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the agent to exit on its own.
    pub fn terminate(&mut self, index: usize) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.agents[index]
            .child
            .take()
            .context("agent is not running")?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, Signal::SIGTERM)?;
        Ok(child.wait()?)
    }

    /// SIGTERM to every running agent at once, then wait for each to exit: the whole
    /// cluster going down together (as on a datacenter-wide stop), not one by one.
    pub fn terminate_all(&mut self) -> anyhow::Result<Vec<std::process::ExitStatus>> {
        let mut children = Vec::new();
        for agent in &mut self.agents {
            if let Some(child) = agent.child.take() {
                kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGTERM)?;
                children.push(child);
            }
        }
        let mut statuses = Vec::new();
        for mut child in children {
            statuses.push(child.wait()?);
        }
        Ok(statuses)
    }

    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.kill9(index);
        self.spawn(index)
    }

    /// Every running agent's view, or an error if one does not answer.
    pub async fn views(&self) -> anyhow::Result<Vec<(usize, NodesResponse)>> {
        let mut views = Vec::new();
        for (index, agent) in self.agents.iter().enumerate() {
            if agent.is_running() {
                views.push((index, agent.client().nodes().await?));
            }
        }
        Ok(views)
    }

    /// True when every running agent sees exactly the running agents as live.
    pub async fn converged(&self) -> bool {
        let running: Vec<&str> = self
            .agents
            .iter()
            .filter(|agent| agent.is_running())
            .map(|agent| agent.node_id.as_str())
            .collect();
        let Ok(views) = self.views().await else {
            return false;
        };
        views.iter().all(|(_, view)| {
            let mut live = live_ids(view);
            live.sort_unstable();
            let mut expected = running.clone();
            expected.sort_unstable();
            live == expected
        })
    }

    /// Status of `node_id` in every running agent's view.
    pub async fn statuses_of(&self, node_id: &str) -> anyhow::Result<Vec<Option<NodeStatus>>> {
        Ok(self
            .views()
            .await?
            .iter()
            .map(|(_, view)| {
                view.nodes
                    .iter()
                    .find(|node| node.node_id == node_id)
                    .map(|node| node.status)
            })
            .collect())
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for agent in &self.agents {
            let path = self.dir.path().join(format!("{}.log", agent.node_id));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // Backtrace frames say little here and push the error out of view.
            let tail: Vec<&str> = text
                .lines()
                // The ingress's access log says nothing about why a wait failed.
                .filter(|line| !line.contains("ingress::access"))
                .filter(|line| {
                    let trimmed = line.trim_start();
                    !(trimmed.starts_with("at ")
                        || trimmed.split(':').next().is_some_and(|n| {
                            n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty()
                        }))
                })
                .rev()
                .take(lines)
                .collect();
            out.push_str(&format!("--- {} ---\n", agent.node_id));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Polls `condition` until it holds; returns how long it took. Fails with the agents'
    /// logs after `timeout`.
    pub async fn wait_for<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: F,
    ) -> anyhow::Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if condition().await {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.logs_tail(15)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for index in 0..self.agents.len() {
            self.kill9(index);
        }
        if let Some(cgroups) = &self.cgroups {
            for agent in &self.agents {
                cgroups.remove(agent.ip);
            }
        }
    }
}

/// 40 ports per agent (10 agents per test), distinct for every (net, agent) a test uses.
pub fn agent_port_range(net: u8, index: usize) -> String {
    let first = 20_000 + (usize::from(net) % 100) * 400 + index * 40;
    format!("{first}-{}", first + 39)
}

pub fn live_ids(view: &NodesResponse) -> Vec<&str> {
    view.nodes
        .iter()
        .filter(|node| node.status == NodeStatus::Live)
        .map(|node| node.node_id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_net_is_leased_to_one_holder_at_a_time_and_freed_on_drop() {
        // Net 60: no test cluster uses it.
        let lease = NetLease::acquire(60).unwrap();
        assert_eq!(lease.net(), 60);
        let err = NetLease::acquire(60).unwrap_err().to_string();
        assert!(err.contains("held by another running test"), "{err}");
        assert!(NetLease::acquire(61).is_ok(), "other nets stay free");
        drop(lease);
        assert!(NetLease::acquire(60).is_ok(), "freed with its holder");
    }
}
