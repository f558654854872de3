//! Scenarios on real agent processes as lists of steps, in chitchat's `cluster_test.rs`
//! style: each step is printed with how long it took, and a failure names the step it
//! stopped at.
//!
//! - [`Agents`] runs the in-process cluster's vocabulary (`node::testsuite::Step`: add,
//!   stop, kill -9, restart, cut, heal, expect) on a [`LocalCluster`], cuts being nftables
//!   [`Partition`]s, so one list of steps can run on both tiers;
//! - [`ChaosStep`] adds what only the chaos stage ([`ChaosCluster`]: real Docker, an ingress
//!   member, traffic) can do: kill a host with its containers, deploy, count replicas in
//!   every view and in Docker, and check what the traffic saw. Nodes chosen while the
//!   scenario runs (the host of a replica, ...) are picked under a name and named by it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use node::testsuite::{Perform, Step, StepCluster, run_script};
use proto::api::ReplicaView;
use tokio::time::Instant;

use crate::chaos::host::{self, DockerReplica, routable_replicas};
use crate::chaos::load::{Load, LoadReport};
use crate::chaos::partition::Partition;
use crate::chaos::{ChaosCluster, SETTLE};
use crate::harness::LocalCluster;

/// A partition a step made, and the groups it cut.
struct Cut {
    a: Vec<usize>,
    b: Vec<usize>,
    partition: Partition,
}

/// A [`LocalCluster`] as a `node::testsuite::StepCluster`: indices are the cluster's agent
/// indices (index 0 is `node-1`); cuts are nftables partitions by address and cgroup
/// (gossip and the agents' API calls alike), healed when the step says or when the scenario
/// ends.
pub struct Agents<'a> {
    cluster: &'a mut LocalCluster,
    cuts: &'a mut Vec<Cut>,
}

/// Runs `steps` on the agents of `cluster`; every partition still in place at the end is
/// removed.
pub async fn run_on_agents(cluster: &mut LocalCluster, steps: Vec<Step>) -> Result<(), String> {
    let mut cuts = Vec::new();
    let mut agents = Agents {
        cluster,
        cuts: &mut cuts,
    };
    run_script(&mut agents, steps).await
}

fn same_groups(cut: &Cut, a: &[usize], b: &[usize]) -> bool {
    let set = |group: &[usize]| group.iter().copied().collect::<BTreeSet<usize>>();
    (set(&cut.a) == set(a) && set(&cut.b) == set(b))
        || (set(&cut.a) == set(b) && set(&cut.b) == set(a))
}

#[async_trait::async_trait]
impl StepCluster for Agents<'_> {
    fn node_count(&self) -> usize {
        self.cluster.agents.len()
    }

    fn node_id(&self, index: usize) -> String {
        self.cluster.agents[index].node_id.clone()
    }

    fn client(&self, index: usize) -> api::Client {
        self.cluster.agents[index].client()
    }

    fn is_running(&self, index: usize) -> bool {
        self.cluster.agents[index].is_running()
    }

    async fn add_node(&mut self) -> Result<usize, String> {
        self.cluster
            .add_agent(None, Vec::new())
            .map_err(|err| format!("{err:#}"))
    }

    /// SIGTERM, and the agent must exit with success.
    async fn stop_node(&mut self, index: usize) -> Result<(), String> {
        let status = self
            .cluster
            .terminate(index)
            .map_err(|err| format!("{err:#}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} exited with {status}", self.node_id(index)))
        }
    }

    async fn kill_node(&mut self, index: usize) -> Result<(), String> {
        self.cluster.kill9(index);
        Ok(())
    }

    async fn restart_node(&mut self, index: usize) -> Result<(), String> {
        self.cluster
            .restart(index)
            .map_err(|err| format!("{err:#}"))
    }

    async fn cut(&mut self, a: &[usize], b: &[usize]) -> Result<(), String> {
        let ips = |group: &[usize]| {
            group
                .iter()
                .map(|i| self.cluster.agents[*i].ip)
                .collect::<Vec<_>>()
        };
        let partition = Partition::new(&ips(a), &ips(b)).map_err(|err| err.to_string())?;
        self.cuts.push(Cut {
            a: a.to_vec(),
            b: b.to_vec(),
            partition,
        });
        Ok(())
    }

    async fn heal(&mut self, a: &[usize], b: &[usize]) -> Result<(), String> {
        let position = self
            .cuts
            .iter()
            .position(|cut| same_groups(cut, a, b))
            .ok_or_else(|| format!("no partition between {a:?} and {b:?} to heal"))?;
        self.cuts
            .remove(position)
            .partition
            .heal()
            .map_err(|err| err.to_string())
    }

    fn step_timeout(&self) -> Duration {
        SETTLE
    }

    fn diagnostics(&self) -> String {
        self.cluster.logs_tail(15)
    }
}

/// A step of a chaos scenario on a [`ChaosCluster`] (index 0 is the ingress member, the
/// witness whose view the ingress routes by). `&'static str`s name nodes picked while the
/// scenario runs, or marks in the traffic's record.
pub enum ChaosStep {
    /// A step of the shared vocabulary, on the agents.
    Agents(Step),
    /// Remembers as `name` the node of the ingress member's first routable replica.
    PickReplicaHost(&'static str),
    /// Remembers as `name` a worker the ingress member sees no routable replica on.
    PickWorkerWithoutReplica(&'static str),
    /// kill -9 of the named node's agent and `docker kill` of its containers, as a power
    /// loss; fails if it ran no container.
    KillHost(&'static str),
    /// kill -9 of the named node's agent alone: its containers keep running.
    KillAgentOnly(&'static str),
    /// Starts the named node's agent again (after a kill).
    Restart(&'static str),
    /// SIGTERM to every agent, together or one after the other; each must exit cleanly.
    StopAll { one_by_one: bool },
    /// Starts every agent again.
    StartAll,
    /// Cuts the named nodes from all the others (nftables, by address and cgroup).
    PartitionOff(Vec<&'static str>),
    /// Removes the partition.
    Heal,
    /// Deploys the app with a new greeting (hence a new release), through the ingress
    /// member.
    Deploy(&'static str),
    /// Rolls back to the first release (a new release number, recorded as the last).
    RollbackToFirst,
    /// Scales the app to this many replicas.
    Scale(u32),
    /// Drains the named node (`stratus node drain`), or undrains it.
    Drain { node: &'static str, draining: bool },
    /// Starts continuous traffic through the ingress.
    StartLoad,
    /// Lets the traffic run for this long before something breaks, so the record has a
    /// before (a length of traffic, not a wait for a condition).
    Traffic(Duration),
    /// Records a mark in the traffic's record.
    Mark(&'static str),
    /// Stops the traffic and prints what it saw.
    StopLoad,
    /// Waits until the ingress member sees no replica record of the app on the named node.
    ExpectNoReplicaOn(&'static str),
    /// Waits until the ingress member sees `count` routable replicas, none on `off`, all of
    /// the last release deployed when `last_release`.
    ExpectRoutable {
        count: usize,
        off: Option<&'static str>,
        last_release: bool,
    },
    /// Waits until the named side and the rest (the ingress member's) each see `count`
    /// routable replicas on their own side only.
    ExpectEachSide {
        side: Vec<&'static str>,
        count: usize,
    },
    /// Waits until a request through the ingress is answered by a replica.
    ExpectIngress,
    /// Waits until the running traffic is answered by the last release deployed (the
    /// ingress learns routes from its feed a moment after the agents' API reports them).
    ExpectTrafficOnLastRelease,
    /// Waits until Docker runs `count` containers of the app, none of the node `off`.
    ExpectContainers {
        count: usize,
        off: Option<&'static str>,
    },
    /// Waits until the ingress member sees no node draining.
    ExpectNoneDraining,
    /// Exactly `count` running containers and as many routable replicas, held for 5 s
    /// (long enough for a duplicate or a missing replica to show up in either).
    ExpectExactly(usize),
    /// Now, on every running agent: `count` routable replicas, none on `off`.
    CheckEveryView {
        count: usize,
        off: Option<&'static str>,
    },
    /// Now, on every agent: the current release is the last deployed and every release
    /// is known; with `routable`, that many routable replicas, all of the last release.
    CheckReleasesEverywhere { routable: Option<usize> },
    /// Now: the ingress member sees the named node draining.
    CheckDraining(&'static str),
    /// In the traffic's record: every release deployed (rollbacks included) answered.
    CheckEveryReleaseServed,
    /// Now: Docker still runs a container of the named node's (its agent is gone).
    CheckContainerOutlived(&'static str),
    /// In the traffic's record: no request failed.
    CheckNoFailedRequest,
    /// In the traffic's record: after `mark`, replicas answered, none on the named node.
    CheckServedAfterWithout {
        mark: &'static str,
        off: &'static str,
    },
    /// In the traffic's record: after `mark`, only the last release answered.
    CheckOnlyLastReleaseAfter(&'static str),
    /// Prints what the traffic saw of the named host between the marks "kill" and
    /// "replaced" (figures, never asserted).
    ReportHostLoss(&'static str),
}

impl std::fmt::Display for ChaosStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChaosStep::Agents(step) => write!(f, "{step}"),
            ChaosStep::PickReplicaHost(name) => write!(f, "pick {name}: a host of a replica"),
            ChaosStep::PickWorkerWithoutReplica(name) => {
                write!(f, "pick {name}: a worker without a replica")
            }
            ChaosStep::KillHost(name) => write!(f, "kill host {name} (agent and containers)"),
            ChaosStep::KillAgentOnly(name) => write!(f, "kill -9 the agent of {name} only"),
            ChaosStep::Restart(name) => write!(f, "restart {name}"),
            ChaosStep::StopAll { one_by_one: false } => write!(f, "SIGTERM every agent at once"),
            ChaosStep::StopAll { one_by_one: true } => {
                write!(f, "SIGTERM every agent, one after the other")
            }
            ChaosStep::StartAll => write!(f, "start every agent"),
            ChaosStep::PartitionOff(names) => write!(f, "partition {names:?} | the rest"),
            ChaosStep::Heal => write!(f, "heal the partition"),
            ChaosStep::Deploy(greeting) => write!(f, "deploy a release saying {greeting:?}"),
            ChaosStep::RollbackToFirst => write!(f, "roll back to the first release"),
            ChaosStep::Scale(replicas) => write!(f, "scale to {replicas} replicas"),
            ChaosStep::Drain {
                node,
                draining: true,
            } => write!(f, "drain {node}"),
            ChaosStep::Drain {
                node,
                draining: false,
            } => write!(f, "undrain {node}"),
            ChaosStep::StartLoad => write!(f, "start traffic through the ingress"),
            ChaosStep::Traffic(length) => write!(f, "let the traffic run for {length:?}"),
            ChaosStep::Mark(label) => write!(f, "mark {label:?}"),
            ChaosStep::StopLoad => write!(f, "stop the traffic"),
            ChaosStep::ExpectTrafficOnLastRelease => {
                write!(f, "wait for the traffic to reach the last release")
            }
            ChaosStep::ExpectNoReplicaOn(name) => {
                write!(f, "wait until the ingress member sees no replica on {name}")
            }
            ChaosStep::ExpectRoutable {
                count,
                off,
                last_release,
            } => {
                write!(f, "wait for {count} routable replicas")?;
                if let Some(off) = off {
                    write!(f, ", none on {off}")?;
                }
                if *last_release {
                    write!(f, ", all of the last release")?;
                }
                Ok(())
            }
            ChaosStep::ExpectEachSide { side, count } => {
                write!(
                    f,
                    "wait for {count} replicas on {side:?} and {count} on the rest"
                )
            }
            ChaosStep::ExpectIngress => write!(f, "wait until the app answers through the ingress"),
            ChaosStep::ExpectContainers { count, off } => {
                write!(f, "wait for {count} running containers")?;
                if let Some(off) = off {
                    write!(f, ", none on {off}")?;
                }
                Ok(())
            }
            ChaosStep::ExpectNoneDraining => write!(f, "wait until no node is seen draining"),
            ChaosStep::ExpectExactly(count) => {
                write!(
                    f,
                    "wait for exactly {count} replicas (routable and in Docker), held 5 s"
                )
            }
            ChaosStep::CheckEveryView { count, off } => {
                write!(f, "check every view: {count} routable")?;
                if let Some(off) = off {
                    write!(f, ", none on {off}")?;
                }
                Ok(())
            }
            ChaosStep::CheckReleasesEverywhere { routable } => {
                write!(
                    f,
                    "check every node: the last release current, every release kept"
                )?;
                if let Some(count) = routable {
                    write!(f, ", {count} routable of the last")?;
                }
                Ok(())
            }
            ChaosStep::CheckDraining(name) => write!(f, "check {name} is seen draining"),
            ChaosStep::CheckEveryReleaseServed => {
                write!(f, "check every release deployed answered requests")
            }
            ChaosStep::CheckContainerOutlived(name) => {
                write!(f, "check a container of {name} still runs")
            }
            ChaosStep::CheckNoFailedRequest => write!(f, "check no request failed"),
            ChaosStep::CheckServedAfterWithout { mark, off } => {
                write!(
                    f,
                    "check the traffic after {mark:?} was served, never by {off}"
                )
            }
            ChaosStep::CheckOnlyLastReleaseAfter(mark) => {
                write!(f, "check only the last release answered after {mark:?}")
            }
            ChaosStep::ReportHostLoss(name) => write!(f, "report what the traffic saw of {name}"),
        }
    }
}

/// A chaos scenario under way: the stage and what its steps picked, started and recorded.
pub struct ChaosRun {
    pub chaos: ChaosCluster,
    picked: BTreeMap<&'static str, usize>,
    cuts: Vec<Cut>,
    load: Option<Load>,
    report: Option<LoadReport>,
    /// Every release deployed, in order: the one [`ChaosCluster::start`] deployed first.
    releases: Vec<u64>,
}

impl ChaosRun {
    pub fn new(chaos: ChaosCluster) -> ChaosRun {
        let releases = vec![chaos.release];
        ChaosRun {
            chaos,
            picked: BTreeMap::new(),
            cuts: Vec::new(),
            load: None,
            report: None,
            releases,
        }
    }

    /// Runs `steps` in order, printing each and how long it took; the error names the
    /// step that failed.
    pub async fn run(&mut self, steps: Vec<ChaosStep>) -> Result<(), String> {
        run_script(self, steps).await
    }

    fn index(&self, name: &str) -> Result<usize, String> {
        self.picked
            .get(name)
            .copied()
            .ok_or_else(|| format!("no node was picked as {name}"))
    }

    fn node_id(&self, name: &str) -> Result<String, String> {
        Ok(self.chaos.cluster.agents[self.index(name)?].node_id.clone())
    }

    fn last_release(&self) -> u64 {
        self.releases.last().copied().unwrap_or(self.chaos.release)
    }

    fn load(&self) -> Result<&Load, String> {
        self.load
            .as_ref()
            .ok_or_else(|| "no traffic running".to_string())
    }

    fn report(&self) -> Result<&LoadReport, String> {
        self.report
            .as_ref()
            .ok_or_else(|| "the traffic was not stopped: no record yet".to_string())
    }

    fn mark_in_report(&self, mark: &str) -> Result<Duration, String> {
        self.report()?
            .mark(mark)
            .ok_or_else(|| format!("no mark {mark:?} in the record"))
    }

    async fn expect_exactly(&self, count: usize) -> Result<(), String> {
        let start = Instant::now();
        let mut held_since: Option<Instant> = None;
        loop {
            let routable = self.chaos.routable().await;
            let docker: Vec<DockerReplica> = self.chaos.docker_replicas().unwrap_or_default();
            if routable.len() == count && docker.len() == count {
                let since = *held_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(5) {
                    return Ok(());
                }
            } else {
                held_since = None;
            }
            if start.elapsed() > SETTLE {
                let routable: Vec<String> = routable
                    .iter()
                    .map(|r| format!("{} r{}/{}", r.node_id, r.release, r.replica))
                    .collect();
                let docker: Vec<String> = docker
                    .iter()
                    .map(|d| format!("{} {}", d.node, d.placement))
                    .collect();
                return Err(format!(
                    "not exactly {count} replicas after {SETTLE:?}: routable {routable:?}, \
                     running containers {docker:?}\n{}",
                    self.chaos.cluster.logs_tail(15)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn step(&mut self, step: ChaosStep) -> Result<(), String> {
        let anyhow = |err: anyhow::Error| format!("{err:#}");
        match step {
            ChaosStep::Agents(step) => {
                let mut agents = Agents {
                    cluster: &mut self.chaos.cluster,
                    cuts: &mut self.cuts,
                };
                step.perform(&mut agents).await
            }
            ChaosStep::PickReplicaHost(name) => {
                let node_id = self
                    .chaos
                    .routable()
                    .await
                    .first()
                    .map(|replica| replica.node_id.clone())
                    .ok_or("no routable replica")?;
                let index = self.chaos.index_of(&node_id).ok_or("no such agent")?;
                println!("  {name} = {node_id}");
                self.picked.insert(name, index);
                Ok(())
            }
            ChaosStep::PickWorkerWithoutReplica(name) => {
                let hosts = nodes_of(&self.chaos.routable().await);
                let index = self
                    .chaos
                    .workers()
                    .find(|index| !hosts.contains(&self.chaos.cluster.agents[*index].node_id))
                    .ok_or_else(|| format!("every worker holds a replica: {hosts:?}"))?;
                println!("  {name} = {}", self.chaos.cluster.agents[index].node_id);
                self.picked.insert(name, index);
                Ok(())
            }
            ChaosStep::KillHost(name) => {
                let index = self.index(name)?;
                let killed = host::kill_host(&mut self.chaos.cluster, index).map_err(anyhow)?;
                if killed.containers.is_empty() {
                    return Err(format!("{} ran no container", killed.node_id));
                }
                Ok(())
            }
            ChaosStep::KillAgentOnly(name) => {
                let index = self.index(name)?;
                host::kill_agent_only(&mut self.chaos.cluster, index);
                Ok(())
            }
            ChaosStep::Restart(name) => {
                let index = self.index(name)?;
                self.chaos.cluster.restart(index).map_err(anyhow)
            }
            ChaosStep::StopAll { one_by_one } => {
                let statuses = if one_by_one {
                    let mut statuses = Vec::new();
                    for index in 0..self.chaos.cluster.agents.len() {
                        statuses.push(self.chaos.cluster.terminate(index).map_err(anyhow)?);
                    }
                    statuses
                } else {
                    self.chaos.cluster.terminate_all().map_err(anyhow)?
                };
                if statuses.iter().all(|status| status.success()) {
                    Ok(())
                } else {
                    Err(format!("not every agent exited cleanly: {statuses:?}"))
                }
            }
            ChaosStep::StartAll => {
                for index in 0..self.chaos.cluster.agents.len() {
                    self.chaos.cluster.restart(index).map_err(anyhow)?;
                }
                Ok(())
            }
            ChaosStep::PartitionOff(names) => {
                if !self.chaos.cgroups {
                    return Err("partitions need agents in cgroups of their own".into());
                }
                let side: Vec<usize> = names
                    .iter()
                    .map(|name| self.index(name))
                    .collect::<Result<_, _>>()?;
                let rest: Vec<usize> = (0..self.chaos.cluster.agents.len())
                    .filter(|index| !side.contains(index))
                    .collect();
                let mut agents = Agents {
                    cluster: &mut self.chaos.cluster,
                    cuts: &mut self.cuts,
                };
                agents.cut(&side, &rest).await
            }
            ChaosStep::Heal => {
                let cut = self.cuts.pop().ok_or("no partition to heal")?;
                cut.partition.heal().map_err(|err| err.to_string())
            }
            ChaosStep::Deploy(greeting) => {
                let release = self.chaos.deploy(greeting).await.map_err(anyhow)?;
                println!("  release {release}");
                self.releases.push(release);
                Ok(())
            }
            ChaosStep::RollbackToFirst => {
                let first = self.chaos.release;
                let back = self
                    .chaos
                    .witness()
                    .rollback(&self.chaos.app, Some(first))
                    .await
                    .map_err(|err| err.to_string())?;
                println!("  release {}", back.release);
                self.releases.push(back.release);
                Ok(())
            }
            ChaosStep::Scale(replicas) => self
                .chaos
                .witness()
                .scale(&self.chaos.app, replicas)
                .await
                .map(|_| ())
                .map_err(|err| err.to_string()),
            ChaosStep::Drain { node, draining } => {
                let node_id = self.node_id(node)?;
                self.chaos
                    .witness()
                    .drain(&node_id, draining)
                    .await
                    .map(|_| ())
                    .map_err(|err| err.to_string())
            }
            ChaosStep::StartLoad => {
                self.load = Some(self.chaos.load().map_err(anyhow)?);
                Ok(())
            }
            ChaosStep::Traffic(length) => {
                self.load()?;
                tokio::time::sleep(length).await;
                Ok(())
            }
            ChaosStep::Mark(label) => {
                self.load()?.mark(label);
                Ok(())
            }
            ChaosStep::StopLoad => {
                let load = self.load.take().ok_or("no traffic running")?;
                let report = load.stop().await;
                print!("{report}");
                self.report = Some(report);
                Ok(())
            }
            ChaosStep::ExpectNoReplicaOn(name) => {
                let victim = self.node_id(name)?;
                let witness = self.chaos.witness();
                let app = self.chaos.app.clone();
                self.chaos
                    .cluster
                    .wait_for(
                        "the dead host's replicas out of the ingress's view",
                        SETTLE,
                        || async {
                            host::all_replicas(&witness, &app)
                                .await
                                .iter()
                                .all(|r| r.node_id != victim)
                        },
                    )
                    .await
                    .map(|_| ())
                    .map_err(anyhow)
            }
            ChaosStep::ExpectRoutable {
                count,
                off,
                last_release,
            } => {
                let off = off.map(|name| self.node_id(name)).transpose()?;
                let last = self.last_release();
                self.chaos
                    .wait_for_replicas("the routable replicas", |replicas| {
                        replicas.len() == count
                            && replicas.iter().all(|r| Some(&r.node_id) != off.as_ref())
                            && (!last_release || replicas.iter().all(|r| r.release == last))
                    })
                    .await
                    .map(|_| ())
                    .map_err(anyhow)
            }
            ChaosStep::ExpectEachSide { side, count } => {
                let side: Vec<usize> = side
                    .iter()
                    .map(|name| self.index(name))
                    .collect::<Result<_, _>>()?;
                let side_ids: BTreeSet<String> = side
                    .iter()
                    .map(|i| self.chaos.cluster.agents[*i].node_id.clone())
                    .collect();
                let side_client = self.chaos.cluster.agents[side[0]].client();
                let rest_client = self.chaos.witness();
                let app = &self.chaos.app;
                self.chaos
                    .cluster
                    .wait_for("the replicas on each side", SETTLE, || async {
                        let small = routable_replicas(&side_client, app).await;
                        let large = routable_replicas(&rest_client, app).await;
                        small.len() == count
                            && nodes_of(&small).is_subset(&side_ids)
                            && large.len() == count
                            && nodes_of(&large).is_disjoint(&side_ids)
                    })
                    .await
                    .map(|_| ())
                    .map_err(anyhow)
            }
            ChaosStep::ExpectTrafficOnLastRelease => {
                let last = self.last_release();
                if self.load()?.wait_served(last, SETTLE).await {
                    Ok(())
                } else {
                    Err(format!(
                        "no request was answered by release {last} within {SETTLE:?}"
                    ))
                }
            }
            ChaosStep::ExpectIngress => self
                .chaos
                .wait_for_ingress()
                .await
                .map(|_| ())
                .map_err(anyhow),
            ChaosStep::ExpectContainers { count, off } => {
                let off = off.map(|name| self.node_id(name)).transpose()?;
                let chaos = &self.chaos;
                chaos
                    .cluster
                    .wait_for("the app's running containers", SETTLE, || async {
                        chaos.docker_replicas().is_ok_and(|running| {
                            running.len() == count
                                && running.iter().all(|r| Some(&r.node) != off.as_ref())
                        })
                    })
                    .await
                    .map(|_| ())
                    .map_err(anyhow)
            }
            ChaosStep::ExpectNoneDraining => {
                let witness = self.chaos.witness();
                self.chaos
                    .cluster
                    .wait_for("the undrain gossiped", SETTLE, || async {
                        witness
                            .nodes()
                            .await
                            .is_ok_and(|view| view.nodes.iter().all(|n| !n.draining))
                    })
                    .await
                    .map(|_| ())
                    .map_err(anyhow)
            }
            ChaosStep::ExpectExactly(count) => self.expect_exactly(count).await,
            ChaosStep::CheckEveryView { count, off } => {
                let off = off.map(|name| self.node_id(name)).transpose()?;
                for agent in self.chaos.cluster.agents.iter().filter(|a| a.is_running()) {
                    let replicas = routable_replicas(&agent.client(), &self.chaos.app).await;
                    if replicas.len() != count
                        || replicas.iter().any(|r| Some(&r.node_id) == off.as_ref())
                    {
                        let view = agent.client().app(&self.chaos.app).await;
                        return Err(format!(
                            "{} routes to {:?}: {view:?}",
                            agent.node_id,
                            nodes_of(&replicas)
                        ));
                    }
                }
                Ok(())
            }
            ChaosStep::CheckReleasesEverywhere { routable } => {
                let last = self.last_release();
                for agent in &self.chaos.cluster.agents {
                    let view = agent
                        .client()
                        .app(&self.chaos.app)
                        .await
                        .map_err(|err| format!("{}: {err}", agent.node_id))?;
                    let current = view.release.as_ref().map(|r| r.number);
                    if current != Some(last) || view.releases != self.releases {
                        return Err(format!(
                            "{} has release {current:?} current of {:?}, not {last} of {:?}",
                            agent.node_id, view.releases, self.releases
                        ));
                    }
                    if let Some(count) = routable {
                        let replicas = routable_replicas(&agent.client(), &self.chaos.app).await;
                        if replicas.len() != count || replicas.iter().any(|r| r.release != last) {
                            return Err(format!("{}: {replicas:?}", agent.node_id));
                        }
                    }
                }
                Ok(())
            }
            ChaosStep::CheckDraining(name) => {
                let node_id = self.node_id(name)?;
                let view = self
                    .chaos
                    .witness()
                    .nodes()
                    .await
                    .map_err(|err| err.to_string())?;
                if view
                    .nodes
                    .iter()
                    .any(|n| n.node_id == node_id && n.draining)
                {
                    Ok(())
                } else {
                    Err(format!("{node_id} is not seen draining: {:?}", view.nodes))
                }
            }
            ChaosStep::CheckEveryReleaseServed => {
                let served: BTreeSet<u64> = self
                    .report()?
                    .samples
                    .iter()
                    .filter_map(|sample| sample.backend().map(|backend| backend.release))
                    .collect();
                if self.releases.iter().all(|release| served.contains(release)) {
                    Ok(())
                } else {
                    Err(format!(
                        "releases {:?} deployed, {served:?} answered",
                        self.releases
                    ))
                }
            }
            ChaosStep::CheckContainerOutlived(name) => {
                let victim = self.node_id(name)?;
                let running = self.chaos.docker_replicas().map_err(anyhow)?;
                if running.iter().any(|r| r.node == victim) {
                    Ok(())
                } else {
                    Err(format!(
                        "the agent's containers should have outlived it: {running:?}"
                    ))
                }
            }
            ChaosStep::CheckNoFailedRequest => {
                let report = self.report()?;
                let failures: Vec<String> = report
                    .failures()
                    .into_iter()
                    .map(|sample| format!("{}: {:?}", report.relative(sample.at), sample.outcome))
                    .collect();
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} of {} requests failed: the ingress routed to a replica it could \
                         not reach: {failures:?}",
                        failures.len(),
                        report.total()
                    ))
                }
            }
            ChaosStep::CheckServedAfterWithout { mark, off } => {
                let victim = self.node_id(off)?;
                let after = self.mark_in_report(mark)?;
                let served: BTreeSet<String> = self
                    .report()?
                    .samples
                    .iter()
                    .filter(|s| s.at > after)
                    .filter_map(|s| s.backend().map(|b| b.node.clone()))
                    .collect();
                if !served.is_empty() && !served.contains(&victim) {
                    Ok(())
                } else {
                    Err(format!("after {mark:?} the traffic went to {served:?}"))
                }
            }
            ChaosStep::CheckOnlyLastReleaseAfter(mark) => {
                let last = self.last_release();
                let after = self.mark_in_report(mark)?;
                let stale: Vec<_> = self
                    .report()?
                    .samples
                    .iter()
                    .filter(|s| s.at > after)
                    .filter_map(|s| s.backend())
                    .filter(|backend| backend.release != last)
                    .collect();
                if stale.is_empty() {
                    Ok(())
                } else {
                    Err(format!("an old release answered: {stale:?}"))
                }
            }
            ChaosStep::ReportHostLoss(name) => {
                let victim = self.node_id(name)?;
                let report = self.report()?;
                let kill = self.mark_in_report("kill")?;
                let failed = report.failures_between(kill, self.mark_in_report("replaced")?);
                println!(
                    "traffic: last answer from {victim} {}; {} requests failed between the kill and the replacement{}",
                    report.last_answer_from(&victim, kill).map_or(
                        "before the kill".to_string(),
                        |at| format!("{:.2} s after the kill", (at - kill).as_secs_f64())
                    ),
                    failed.len(),
                    failed.first().zip(failed.last()).map_or(
                        String::new(),
                        |(first, last)| format!(
                            " ({} to {})",
                            report.relative(first.at),
                            report.relative(last.at)
                        )
                    ),
                );
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl Perform<ChaosRun> for ChaosStep {
    async fn perform(self, run: &mut ChaosRun) -> Result<(), String> {
        run.step(self).await
    }
}

fn nodes_of(replicas: &[ReplicaView]) -> BTreeSet<String> {
    replicas.iter().map(|r| r.node_id.clone()).collect()
}
