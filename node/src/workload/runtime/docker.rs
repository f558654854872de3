//! The Docker driver: one container per placement, through the Docker Engine API
//! (`bollard`, over the local socket or `DOCKER_HOST`).
//!
//! A container runs the spec's image with the bundle mounted read-only at `/app` (also the
//! working directory), `sh -c cmd` under Docker's init (so SIGTERM reaches the app instead
//! of being ignored by a shell running as PID 1), `PORT` and the spec's environment, and
//! the CPU and memory limits. It is named after the placement (see
//! [`super::container_name`]) and labelled with [`super::labels`], which is how `start`
//! finds an existing copy and `list` adopts containers after an agent restart.
//!
//! Addressing: without a network the app port is published on `advertise_ip` at a host
//! port from the [`PortAllocator`]; with a network the container joins it unpublished and
//! is reached at its own IP and the app port.
//!
//! Tenants: a tenant's container joins the tenant's own bridge network instead of the
//! default one (created on first use, see [`super::tenant_network`]), and the node's
//! nftables table for tenant bridges is brought up to date before it starts; a tenant
//! container never starts unprotected. A gVisor tenant's container runs under
//! [`DockerOptions::gvisor_runtime`], and is refused on a daemon that lacks it.
//!
//! Every container gets the hardened defaults of [`super::hardening`].
//!
//! Images are never pulled: a node runs only what `scripts/build-images.sh` (or an
//! operator) built on it, so a deploy cannot hang on, or be poisoned through, a registry.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    HostConfigLogConfig, NetworkCreateRequest, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, InspectNetworkOptions,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StatsOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use proto::ContainerState;
use proto::tenancy::Isolation;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::hardening::{self, Limits};
use super::ports::{PortAllocator, PortRange, bind_test};
use super::tenant_network;
use super::{
    ContainerSpec, LogStream, ResourceUsage, RunningContainer, RuntimeDriver, RuntimeError,
    container_name, labels, last_lines,
};
use crate::dns::TenantSubnets;

/// How many host ports `start` tries when Docker reports the one it chose as taken (another
/// program won the race between the bind test and Docker's own bind).
const PORT_ATTEMPTS: usize = 3;

/// Docker keeps this much of each container's output (two files of 10 MB), enough for
/// `logs` without letting a chatty app fill the disk.
const LOG_MAX_SIZE: &str = "10m";
const LOG_MAX_FILES: &str = "2";

/// `stop` waits at most this long before Docker kills: the stop request lasts as long as
/// the grace period and must end before bollard's 120 s request timeout.
pub const MAX_GRACE: Duration = Duration::from_secs(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptions {
    /// `unix:///...` or `tcp://...`; `None`: `DOCKER_HOST` or the local socket.
    pub docker_host: Option<String>,
    /// The IP published ports bind to, and the IP in addresses handed to peers.
    pub advertise_ip: IpAddr,
    /// Host ports for published containers.
    pub port_range: PortRange,
    /// Attach containers to this Docker network instead of publishing ports.
    pub network: Option<String>,
    /// Docker runtime for containers (`HostConfig.Runtime`), e.g. `runsc` for gVisor.
    pub oci_runtime: Option<String>,
    /// List only containers labelled with this node. Set it when several agents share one
    /// Docker daemon (as in the testbed), so one agent never adopts another's containers.
    pub node_id: Option<String>,
    /// Label containers with this cluster and list only those: two clusters sharing one
    /// Docker daemon (a compose cluster beside the testbed) never touch each other's.
    pub cluster_id: Option<String>,
    /// The daemon's runtime that is gVisor (`runsc`), for gVisor tenants' containers.
    pub gvisor_runtime: String,
    /// The `nft` program that applies the tenant isolation rules.
    pub nft: String,
    /// The agent's listeners for containers (the node-local balancer and DNS), where a
    /// tenant network's gateway ports 80 and 53 lead; its containers resolve through it.
    pub internal: Option<tenant_network::InternalPorts>,
}

impl DockerOptions {
    /// Publishing on `advertise_ip` from the default port range, runc, every node's
    /// containers listed.
    pub fn new(advertise_ip: IpAddr) -> DockerOptions {
        DockerOptions {
            docker_host: None,
            advertise_ip,
            port_range: PortRange::default(),
            network: None,
            oci_runtime: None,
            node_id: None,
            cluster_id: None,
            gvisor_runtime: "runsc".to_string(),
            nft: "nft".to_string(),
            internal: None,
        }
    }
}

/// What the daemon said about itself when the driver connected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DaemonFacts {
    /// Names the daemon's tenant bridges and nftables table.
    id: String,
    /// The daemon has [`DockerOptions::gvisor_runtime`].
    gvisor: bool,
}

/// Runs placements as Docker containers. Cheap to share behind an `Arc`.
pub struct DockerDriver {
    docker: Docker,
    options: DockerOptions,
    /// Held for a whole `start`, so two starts never pick the same host port and two
    /// starts of one placement never race to create it; and while a tenant network is
    /// created or removed.
    start_lock: Mutex<PortAllocator>,
    daemon: DaemonFacts,
    /// The subnets of the tenant networks in use, for the DNS server to tell who asks.
    tenant_subnets: Arc<TenantSubnets>,
}

impl DockerDriver {
    /// Connects to the local Docker daemon (`DOCKER_HOST` or the default socket) and
    /// settles on the newest API version both sides speak.
    pub async fn connect(options: DockerOptions) -> Result<DockerDriver, RuntimeError> {
        let docker = match &options.docker_host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|source| RuntimeError::DockerUnavailable { source })?;
        // bollard speaks a newer API than many installed daemons; without negotiation every
        // call to an older daemon fails with "client version is too new".
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| RuntimeError::DockerUnavailable { source })?;
        let allocator = PortAllocator::new(options.port_range);
        let daemon = match docker.info().await {
            Ok(info) => DaemonFacts {
                id: info.id.or(info.name).unwrap_or_default(),
                gvisor: info
                    .runtimes
                    .is_some_and(|runtimes| runtimes.contains_key(&options.gvisor_runtime)),
            },
            Err(err) => {
                warn!(error = %err, "docker info failed: no gVisor here, and tenant bridges named without the daemon's id");
                DaemonFacts::default()
            }
        };
        Ok(DockerDriver {
            docker,
            options,
            start_lock: Mutex::new(allocator),
            daemon,
            tenant_subnets: Arc::new(TenantSubnets::new()),
        })
    }

    /// Shares `subnets` with the DNS server: every tenant network this driver makes or
    /// finds is recorded there, those on the daemon already at once.
    pub async fn with_tenant_subnets(mut self, subnets: Arc<TenantSubnets>) -> DockerDriver {
        self.tenant_subnets = subnets;
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![labels::TENANT.to_string()]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        match self.docker.list_networks(Some(options)).await {
            Ok(networks) => {
                for network in &networks {
                    self.record_subnets(network.labels.as_ref(), network.ipam.as_ref());
                }
            }
            Err(err) => {
                warn!(error = %err, "cannot list the tenant networks: their containers' DNS questions see every app until each network is used again")
            }
        }
        self
    }

    /// Records the subnets of a tenant network (labelled with its tenant).
    fn record_subnets(
        &self,
        labels: Option<&HashMap<String, String>>,
        ipam: Option<&bollard::models::Ipam>,
    ) {
        let Some(tenant) = labels.and_then(|labels| labels.get(labels::TENANT)) else {
            return;
        };
        let configs = ipam.and_then(|ipam| ipam.config.as_ref());
        for config in configs.into_iter().flatten() {
            if let Some(subnet) = config.subnet.as_deref().and_then(|s| s.parse().ok()) {
                let gateway = config.gateway.as_deref().and_then(|g| g.parse().ok());
                self.tenant_subnets.set(tenant, subnet, gateway);
            }
        }
    }

    /// The nftables table this driver keeps the tenant isolation rules in.
    pub fn isolation_table(&self) -> String {
        tenant_network::table_name(&self.daemon.id, self.options.port_range)
    }

    /// The tenant's network on this daemon, created if missing, with the isolation rules
    /// for its bridge applied, and its gateway. Called with the start lock held.
    async fn tenant_network(&self, tenant: &str) -> Result<(String, Option<IpAddr>), RuntimeError> {
        let name = tenant_network::network_name(tenant);
        let bridge = tenant_network::bridge_name(&self.daemon.id, &name);
        let refused = |reason: String| RuntimeError::Refused {
            placement: format!("a container of tenant {tenant}"),
            reason,
        };
        let existing = match self
            .docker
            .inspect_network(&name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(network) => Some(network),
            Err(err) if is_not_found(&err) => None,
            Err(source) => return Err(docker_error(format!("inspect network {name}"), source)),
        };
        let network = match existing {
            Some(network) => network,
            None => {
                let request = tenant_network_request(&name, &bridge, tenant, &self.options);
                match self.docker.create_network(request).await {
                    Ok(_) => info!(network = name, bridge, "tenant network created"),
                    // Another agent sharing the daemon made it first: checked below.
                    Err(err) if is_conflict(&err) || is_same_bridge(&err) => {}
                    Err(source) => {
                        return Err(docker_error(format!("create network {name}"), source));
                    }
                }
                self.docker
                    .inspect_network(&name, None::<InspectNetworkOptions>)
                    .await
                    .map_err(|source| docker_error(format!("inspect network {name}"), source))?
            }
        };
        let labelled = network
            .labels
            .as_ref()
            .and_then(|labels| labels.get(labels::TENANT))
            .is_some_and(|found| found == tenant);
        let bridged = network
            .options
            .as_ref()
            .and_then(|options| options.get(tenant_network::BRIDGE_NAME_OPTION))
            .is_some_and(|found| *found == bridge);
        if !labelled || !bridged {
            return Err(refused(format!(
                "network {name} exists but Stratus did not make it for this tenant (bridge {bridge}): remove it with docker network rm"
            )));
        }
        self.apply_isolation(&[bridge]).await.map_err(refused)?;
        self.record_subnets(network.labels.as_ref(), network.ipam.as_ref());
        let gateway = network
            .ipam
            .as_ref()
            .and_then(|ipam| ipam.config.as_ref())
            .into_iter()
            .flatten()
            .find_map(|config| config.gateway.as_deref()?.parse::<IpAddr>().ok());
        Ok((name, gateway))
    }

    /// Brings this daemon's nftables table up to date and adds `bridges` to it.
    async fn apply_isolation(&self, bridges: &[String]) -> Result<(), String> {
        let script = tenant_network::nft_script(
            &self.isolation_table(),
            self.options.port_range,
            bridges,
            self.options.internal,
        );
        let mut child = tokio::process::Command::new(&self.options.nft)
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                format!(
                    "cannot run {} for the tenant isolation rules: {err} (install nftables; the agent needs root)",
                    self.options.nft
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|err| format!("cannot write the isolation rules to nft: {err}"))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|err| format!("nft did not finish: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "nft refused the tenant isolation rules ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Stops the container (SIGTERM, SIGKILL after `grace`) and removes it.
    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // Docker takes whole seconds; round up so the app gets at least `grace`.
        let grace = grace.min(MAX_GRACE);
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(source) => return Err(docker_error(format!("stop container {id}"), source)),
        }
        self.remove(id).await
    }

    /// Removes a tenant network no container uses any more (best effort: a container
    /// another agent starts on it meanwhile keeps it).
    async fn remove_network_if_unused(&self, network: &str) {
        let _held = self.start_lock.lock().await;
        let Ok(inspect) = self
            .docker
            .inspect_network(network, None::<InspectNetworkOptions>)
            .await
        else {
            return;
        };
        if inspect.containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return;
        }
        match self.docker.remove_network(network).await {
            Ok(()) => {
                // Docker may hand the subnet to another network later.
                let configs = inspect.ipam.as_ref().and_then(|ipam| ipam.config.as_ref());
                for config in configs.into_iter().flatten() {
                    if let Some(subnet) = config.subnet.as_deref().and_then(|s| s.parse().ok()) {
                        self.tenant_subnets.remove(subnet);
                    }
                }
                info!(network, "tenant network removed: no container uses it")
            }
            Err(err) => debug!(network, error = %err, "tenant network kept"),
        }
    }

    /// The daemon's client, for the builds this node runs.
    pub fn client(&self) -> Docker {
        self.docker.clone()
    }

    pub fn options(&self) -> &DockerOptions {
        &self.options
    }

    /// Whether the Docker daemon answers right now. The agent uses Docker when it does and
    /// falls back to the process driver otherwise.
    pub async fn is_available(&self) -> bool {
        self.docker.ping().await.is_ok()
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => Ok(Some(inspect)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(source) => Err(docker_error(format!("inspect container {id}"), source)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // Already gone, or Docker is already removing it: either way it will not be
            // there, and a retried stop must not fail.
            Err(err) if is_not_found(&err) || is_conflict(&err) => Ok(()),
            Err(source) => Err(docker_error(format!("remove container {id}"), source)),
        }
    }

    /// Inspects every container with a Stratus placement label, of every node.
    async fn inspect_managed(
        &self,
        node_id: Option<&str>,
    ) -> Result<Vec<ContainerInspectResponse>, RuntimeError> {
        let mut wanted = vec![labels::PLACEMENT.to_string()];
        wanted.extend(node_id.map(|node_id| format!("{}={node_id}", labels::NODE)));
        wanted.extend(
            self.options
                .cluster_id
                .as_ref()
                .map(|cluster| format!("{}={cluster}", labels::CLUSTER)),
        );
        // Docker requires every label filter to match.
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| docker_error("list containers", source))?;
        let mut found = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            // A container removed between the list and the inspect is simply not there.
            if let Some(inspect) = self.inspect(&id).await? {
                found.push(inspect);
            }
        }
        Ok(found)
    }

    /// Host ports held by any Stratus container on this daemon, running or not: an exited
    /// container gets its binding back if it is restarted by hand.
    async fn ports_in_use(&self) -> Result<BTreeSet<u16>, RuntimeError> {
        let managed = self.inspect_managed(None).await?;
        Ok(managed.iter().filter_map(published_host_port).collect())
    }

    async fn create_and_start(
        &self,
        spec: &ContainerSpec,
        name: &str,
        target: &Target,
        allocator: &mut PortAllocator,
    ) -> Result<String, RuntimeError> {
        let mut in_use = if self.options.network.is_none() {
            self.ports_in_use().await?
        } else {
            BTreeSet::new()
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let host_port = match self.options.network {
                Some(_) => None,
                None => {
                    let ip = self.options.advertise_ip;
                    let port = allocator
                        .allocate(&in_use, |port| bind_test(ip, port))
                        .ok_or(RuntimeError::NoFreePort {
                            range: allocator.range(),
                            ip,
                        })?;
                    in_use.insert(port);
                    Some(port)
                }
            };
            let body = create_body(spec, &self.options, host_port, target);
            let options = CreateContainerOptionsBuilder::new().name(name).build();
            let created = match self.docker.create_container(Some(options), body).await {
                Ok(created) => created,
                Err(err) if is_not_found(&err) => {
                    return Err(RuntimeError::ImageNotFound {
                        image: spec.image.clone(),
                    });
                }
                Err(source) => {
                    return Err(docker_error(format!("create container {name}"), source));
                }
            };
            match self
                .docker
                .start_container(&created.id, None::<StartContainerOptions>)
                .await
            {
                Ok(()) => return Ok(created.id),
                Err(err) if is_port_taken(&err) && attempt < PORT_ATTEMPTS => {
                    warn!(container = name, port = ?host_port, "host port taken at start; trying another");
                    self.remove(&created.id).await?;
                }
                Err(source) => {
                    // Leave nothing half-made behind: the next start would find it exited
                    // and recreate it anyway.
                    if let Err(err) = self.remove(&created.id).await {
                        warn!(container = name, %err, "cannot remove a container that failed to start");
                    }
                    return Err(docker_error(format!("start container {name}"), source));
                }
            }
        }
    }
}

#[async_trait]
impl RuntimeDriver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// Whether the daemon has the gVisor runtime ([`DockerOptions::gvisor_runtime`]), as
    /// its `info` listed its runtimes when the driver connected.
    fn has_gvisor(&self) -> bool {
        self.daemon.gvisor
    }

    fn id_for(&self, placement_id: &str) -> String {
        // Cluster and node in the name: agents sharing a daemon never collide on a name.
        let scoped: Vec<&str> = [
            self.options.cluster_id.as_deref(),
            self.options.node_id.as_deref(),
            Some(placement_id),
        ]
        .into_iter()
        .flatten()
        .collect();
        container_name(&scoped.join("."))
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<RunningContainer, RuntimeError> {
        let name = self.id_for(&spec.placement_id);
        let mut allocator = self.start_lock.lock().await;

        if let Some(existing) = self.inspect(&name).await? {
            let found = container_labels(&existing)
                .and_then(|labels| labels.get(labels::PLACEMENT))
                .cloned()
                .unwrap_or_default();
            if found != spec.placement_id {
                return Err(RuntimeError::NameClash {
                    name,
                    found,
                    wanted: spec.placement_id.clone(),
                });
            }
            match running_from_inspect(&existing, &self.options) {
                Some(running) if running.state == ContainerState::Running => {
                    debug!(container = name, "placement already running");
                    return Ok(running);
                }
                _ => {
                    info!(
                        container = name,
                        "placement exists but is not running; recreating it"
                    );
                    self.remove(&name).await?;
                }
            }
        }

        // Checked first for a clear error; create would also fail, with a vaguer 404.
        match self.docker.inspect_image(&spec.image).await {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {
                return Err(RuntimeError::ImageNotFound {
                    image: spec.image.clone(),
                });
            }
            Err(source) => {
                return Err(docker_error(
                    format!("inspect image {}", spec.image),
                    source,
                ));
            }
        }

        let refused = |reason: String| RuntimeError::Refused {
            placement: spec.placement_id.clone(),
            reason,
        };
        if !spec.built {
            hardening::check_binds(&[bundle_bind(spec)]).map_err(refused)?;
        }
        let mut target = target(spec, &self.options, self.daemon.gvisor).map_err(refused)?;
        if let Some(tenant) = spec_tenant(spec) {
            let (network, gateway) = self.tenant_network(tenant).await?;
            target.network = Some(network);
            // The gateway's port 53 leads to this agent's DNS (the isolation table's
            // redirect), which answers `APP.internal` and forwards the rest.
            if self.options.internal.is_some() {
                target.dns = gateway;
            }
        }
        let id = self
            .create_and_start(spec, &name, &target, &mut allocator)
            .await?;
        let inspect = self
            .inspect(&id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound { id: id.clone() })?;
        let running = running_from_inspect(&inspect, &self.options)
            .ok_or_else(|| RuntimeError::NotFound { id: id.clone() })?;
        info!(container = name, addr = %running.addr, "started");
        Ok(running)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let tenant_network = self
            .inspect(id)
            .await?
            .as_ref()
            .and_then(container_labels)
            .filter(|labels| labels.contains_key(labels::TENANT))
            .and_then(|labels| labels.get(labels::NETWORK).cloned());
        self.stop_and_remove(id, grace).await?;
        if let Some(network) = tenant_network {
            self.remove_network_if_unused(&network).await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<RunningContainer>, RuntimeError> {
        let managed = self
            .inspect_managed(self.options.node_id.as_deref())
            .await?;
        let mut containers = Vec::with_capacity(managed.len());
        for inspect in &managed {
            match running_from_inspect(inspect, &self.options) {
                Some(running) => containers.push(running),
                None => warn!(
                    container = inspect.name.as_deref().unwrap_or("?"),
                    "container has stratus labels that do not parse; leaving it alone"
                ),
            }
        }
        containers.sort_by(|a, b| a.placement_id.cmp(&b.placement_id));
        Ok(containers)
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>, RuntimeError> {
        if tail == 0 {
            return Ok(Vec::new());
        }
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        // Frames are writes, not lines: join them, then split.
        let mut bytes = Vec::new();
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(output) => bytes.extend_from_slice(output.as_ref()),
                Err(err) if is_not_found(&err) => {
                    return Err(RuntimeError::NotFound { id: id.to_string() });
                }
                Err(source) => return Err(docker_error(format!("read logs of {id}"), source)),
            }
        }
        Ok(last_lines(&bytes, tail))
    }

    async fn follow_logs(&self, id: &str, tail: usize) -> Result<LogStream, RuntimeError> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .tail(&tail.to_string())
            .build();
        // Fail now, not mid-stream, for an unknown container; but never wait for a first
        // line here: a quiet container would hold the whole answer back.
        if self.inspect(id).await?.is_none() {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        Ok(frames_to_lines(id, self.docker.logs(id, Some(options))))
    }

    async fn usage(&self, id: &str) -> Result<ResourceUsage, RuntimeError> {
        // One answer, not a stream. Not Docker's `one-shot` either: that skips the second
        // sample, and without it there is no CPU rate, only a total since the start.
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(false)
            .build();
        let mut answers = self.docker.stats(id, Some(options));
        match answers.next().await {
            Some(Ok(stats)) => Ok(usage_from_stats(&stats)),
            Some(Err(err)) if is_not_found(&err) => {
                Err(RuntimeError::NotFound { id: id.to_string() })
            }
            Some(Err(source)) => Err(docker_error(format!("read the stats of {id}"), source)),
            None => Ok(ResourceUsage::default()),
        }
    }
}

/// What `docker stats` shows, from one stats answer: the CPU rate between its two
/// samples (as a share of the host's CPU time, times its CPUs), and the memory in use
/// less the inactive page cache the kernel can take back.
fn usage_from_stats(stats: &bollard::models::ContainerStatsResponse) -> ResourceUsage {
    let cpu_millis = (|| {
        let now = stats.cpu_stats.as_ref()?;
        let before = stats.precpu_stats.as_ref()?;
        let used = now
            .cpu_usage
            .as_ref()?
            .total_usage?
            .checked_sub(before.cpu_usage.as_ref()?.total_usage?)?;
        let system = now
            .system_cpu_usage?
            .checked_sub(before.system_cpu_usage?)?;
        let cpus = now.online_cpus.filter(|cpus| *cpus > 0).or_else(|| {
            now.cpu_usage
                .as_ref()?
                .percpu_usage
                .as_ref()
                .map(|per_cpu| per_cpu.len() as u32)
        })?;
        if system == 0 {
            return None;
        }
        let millis = u128::from(used) * u128::from(cpus) * 1000 / u128::from(system);
        Some(u64::try_from(millis).unwrap_or(u64::MAX))
    })();
    let memory = stats.memory_stats.as_ref();
    let memory_bytes = memory.and_then(|memory| {
        let usage = memory.usage?;
        // cgroup v2 names it inactive_file, v1 total_inactive_file.
        let cache = memory
            .stats
            .as_ref()
            .and_then(|stats| {
                stats
                    .get("inactive_file")
                    .or_else(|| stats.get("total_inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        Some(usage.saturating_sub(cache))
    });
    ResourceUsage {
        cpu_millis,
        memory_bytes,
        memory_limit_bytes: memory
            .and_then(|memory| memory.limit)
            .filter(|limit| *limit > 0),
    }
}

/// Docker's log frames (writes, not lines) as lines of at most
/// [`super::MAX_LINE_BYTES`]. A broken stream must not look like a container that stopped
/// writing: the error is logged and the stream ends with a line that says so.
fn frames_to_lines<S, B, E>(container: &str, frames: S) -> LogStream
where
    S: futures_util::Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let state = FollowState {
        container: container.to_string(),
        frames: Box::pin(frames),
        splitter: super::LineSplitter::default(),
    };
    let lines = futures_util::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.frames.next().await {
            Some(Ok(output)) => {
                let lines = state.splitter.push(output.as_ref());
                Some((lines, Some(state)))
            }
            None => Some((state.splitter.finish().into_iter().collect(), None)),
            Some(Err(err)) => {
                warn!(container = %state.container, error = %err, "docker log stream broke");
                let mut lines: Vec<String> = state.splitter.finish().into_iter().collect();
                lines.push(format!("(log stream of {} broke: {err})", state.container));
                Some((lines, None))
            }
        }
    })
    .flat_map(futures_util::stream::iter);
    Box::pin(lines)
}

/// What [`frames_to_lines`] carries from one frame to the next.
struct FollowState<S> {
    container: String,
    frames: std::pin::Pin<Box<S>>,
    splitter: super::LineSplitter,
}

/// Where and how a container runs beyond its spec: the network it joins (`None`: the
/// daemon's default) and its runtime (`None`: the daemon's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Target {
    network: Option<String>,
    runtime: Option<String>,
    /// The container's resolver, if not Docker's default.
    dns: Option<IpAddr>,
}

/// The tenant whose container `spec` is.
fn spec_tenant(spec: &ContainerSpec) -> Option<&str> {
    spec.tenant.as_deref()
}

/// Whether `spec` must run under gVisor.
fn spec_wants_gvisor(spec: &ContainerSpec) -> bool {
    spec.isolation == Isolation::Gvisor
}

/// The target of `spec` before its tenant network is known: the configured network, and
/// gVisor for a gVisor tenant (refused when the daemon lacks it, never run under runc).
fn target(
    spec: &ContainerSpec,
    options: &DockerOptions,
    gvisor_available: bool,
) -> Result<Target, String> {
    let runtime = if spec_wants_gvisor(spec) {
        if !gvisor_available {
            return Err(format!(
                "its tenant runs under gVisor and this node's Docker has no {} runtime: \
                 install runsc and add it to the daemon's runtimes",
                options.gvisor_runtime
            ));
        }
        Some(options.gvisor_runtime.clone())
    } else {
        options.oci_runtime.clone()
    };
    Ok(Target {
        network: options.network.clone(),
        runtime,
        dns: None,
    })
}

/// The create request of a tenant's network: a bridge of a name of ours, containers of the
/// network reaching each other and the outside, labelled with the tenant.
fn tenant_network_request(
    name: &str,
    bridge: &str,
    tenant: &str,
    options: &DockerOptions,
) -> NetworkCreateRequest {
    let mut network_labels = HashMap::from([(labels::TENANT.to_string(), tenant.to_string())]);
    if let Some(cluster) = &options.cluster_id {
        network_labels.insert(labels::CLUSTER.to_string(), cluster.clone());
    }
    NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".to_string()),
        labels: Some(network_labels),
        options: Some(HashMap::from([
            (
                tenant_network::BRIDGE_NAME_OPTION.to_string(),
                bridge.to_string(),
            ),
            (
                "com.docker.network.bridge.enable_icc".to_string(),
                "true".to_string(),
            ),
            (
                "com.docker.network.bridge.enable_ip_masquerade".to_string(),
                "true".to_string(),
            ),
        ])),
        ..Default::default()
    }
}

/// The container's create request. Pure, so the mapping from spec to Docker is testable
/// without a daemon.
fn create_body(
    spec: &ContainerSpec,
    options: &DockerOptions,
    host_port: Option<u16>,
    target: &Target,
) -> ContainerCreateBody {
    let container_port = format!("{}/tcp", spec.port);
    // PORT last and authoritative: the address Stratus advertises depends on it.
    let mut env: Vec<String> = spec
        .env
        .iter()
        .filter(|(key, _)| key.as_str() != "PORT")
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    env.push(format!("PORT={}", spec.port));

    let container_labels = HashMap::from([
        (labels::APP.to_string(), spec.app.clone()),
        (labels::RELEASE.to_string(), spec.release.to_string()),
        (labels::REPLICA.to_string(), spec.replica.to_string()),
        (labels::NODE.to_string(), spec.node_id.clone()),
        (labels::PLACEMENT.to_string(), spec.placement_id.clone()),
        (labels::PORT.to_string(), spec.port.to_string()),
    ]);
    let mut container_labels = container_labels;
    if let Some(cluster) = &options.cluster_id {
        container_labels.insert(labels::CLUSTER.to_string(), cluster.clone());
    }
    if let Some(tenant) = spec_tenant(spec) {
        container_labels.insert(labels::TENANT.to_string(), tenant.to_string());
    }
    if let Some(network) = &target.network {
        container_labels.insert(labels::NETWORK.to_string(), network.clone());
    }

    let port_bindings = host_port.map(|host_port| {
        HashMap::from([(
            container_port.clone(),
            Some(vec![PortBinding {
                host_ip: Some(options.advertise_ip.to_string()),
                host_port: Some(host_port.to_string()),
            }]),
        )])
    });

    let mut host_config = hardening::host_config(Limits {
        cpu_millis: spec.cpu_millis,
        memory_bytes: spec.memory_bytes,
        pids: hardening::REPLICA_PIDS_LIMIT,
    });
    host_config.binds = (!spec.built).then(|| vec![bundle_bind(spec)]);
    host_config.readonly_rootfs = spec.read_only_root.then_some(true);
    host_config.tmpfs = spec
        .read_only_root
        .then(|| HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev,size=64m".to_string())]));
    host_config.port_bindings = port_bindings;
    host_config.network_mode = target.network.clone();
    host_config.runtime = target.runtime.clone();
    host_config.dns = target.dns.map(|ip| vec![ip.to_string()]);
    host_config.log_config = Some(HostConfigLogConfig {
        typ: Some("json-file".to_string()),
        config: Some(HashMap::from([
            ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
            ("max-file".to_string(), LOG_MAX_FILES.to_string()),
        ])),
    });

    let networking_config = target.network.as_ref().map(|network| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network.clone(),
            EndpointSettings::default(),
        )])),
    });

    // A built image starts the way its builder chose, in its own working directory, unless
    // the manifest gives a command; otherwise `sh -c cmd` in the mounted bundle.
    let (cmd, entrypoint, working_dir) = match (spec.built, spec.cmd.is_empty()) {
        (true, true) => (None, None, None),
        (true, false) => (
            Some(vec!["sh".into(), "-c".into(), spec.cmd.clone()]),
            Some(Vec::new()),
            None,
        ),
        // The image's entrypoint would otherwise wrap our `sh -c`.
        (false, _) => (
            Some(vec!["sh".into(), "-c".into(), spec.cmd.clone()]),
            Some(Vec::new()),
            Some("/app".into()),
        ),
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: spec.user.clone(),
        cmd,
        entrypoint,
        working_dir,
        env: Some(env),
        exposed_ports: Some(vec![container_port]),
        labels: Some(container_labels),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

/// The bundle, read-only at `/app`.
fn bundle_bind(spec: &ContainerSpec) -> String {
    format!("{}:/app:ro", spec.bundle_dir.display())
}

fn container_labels(inspect: &ContainerInspectResponse) -> Option<&HashMap<String, String>> {
    inspect.config.as_ref()?.labels.as_ref()
}

/// Rebuilds what Stratus knows about a container from Docker's view of it. `None` when the
/// labels are missing or do not parse (not a container Stratus made, or a damaged one).
fn running_from_inspect(
    inspect: &ContainerInspectResponse,
    options: &DockerOptions,
) -> Option<RunningContainer> {
    let labels = container_labels(inspect)?;
    let placement_id = labels.get(labels::PLACEMENT)?.clone();
    let app = labels.get(labels::APP)?.clone();
    let release = labels.get(labels::RELEASE)?.parse().ok()?;
    let replica = labels.get(labels::REPLICA)?.parse().ok()?;
    let port: u16 = labels.get(labels::PORT)?.parse().ok()?;
    let docker_state = inspect.state.as_ref();
    let state = state_from_docker(docker_state.and_then(|state| state.status));
    let exit_code = match state {
        ContainerState::Exited => docker_state.and_then(|state| state.exit_code),
        _ => None,
    };
    let addr = match published_host_port(inspect) {
        Some(host_port) => SocketAddr::new(options.advertise_ip, host_port),
        None => SocketAddr::new(
            network_ip(inspect, options).unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            port,
        ),
    };
    Some(RunningContainer {
        id: inspect.id.clone()?,
        placement_id,
        app,
        release,
        replica,
        addr,
        state,
        exit_code,
    })
}

/// The host port the app port is published on, from the container's configuration (the
/// live port map is empty once a container stops).
fn published_host_port(inspect: &ContainerInspectResponse) -> Option<u16> {
    let port = container_labels(inspect)?.get(labels::PORT)?;
    let bindings = inspect.host_config.as_ref()?.port_bindings.as_ref()?;
    let binding = bindings.get(&format!("{port}/tcp"))?.as_ref()?.first()?;
    binding.host_port.as_deref()?.parse().ok()
}

/// The container's IP on the configured network, or on any network if none is configured.
fn network_ip(inspect: &ContainerInspectResponse, options: &DockerOptions) -> Option<IpAddr> {
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    let parse = |endpoint: &EndpointSettings| -> Option<IpAddr> {
        endpoint.ip_address.as_deref()?.parse().ok()
    };
    let joined = container_labels(inspect).and_then(|labels| labels.get(labels::NETWORK));
    match joined.or(options.network.as_ref()) {
        Some(network) => parse(networks.get(network)?),
        None => networks.values().find_map(parse),
    }
}

fn state_from_docker(status: Option<ContainerStateStatusEnum>) -> ContainerState {
    match status {
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED) => {
            ContainerState::Running
        }
        Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::STOPPING) => {
            ContainerState::Stopping
        }
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
            ContainerState::Exited
        }
        Some(
            ContainerStateStatusEnum::CREATED
            | ContainerStateStatusEnum::RESTARTING
            | ContainerStateStatusEnum::EMPTY,
        )
        | None => ContainerState::Starting,
    }
}

fn docker_error(action: impl Into<String>, source: BollardError) -> RuntimeError {
    RuntimeError::Docker {
        action: action.into(),
        source,
    }
}

fn status_code(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(err: &BollardError) -> bool {
    status_code(err) == Some(404)
}

fn is_conflict(err: &BollardError) -> bool {
    status_code(err) == Some(409)
}

/// Docker's words when a network with the bridge name we chose exists already.
fn is_same_bridge(err: &BollardError) -> bool {
    match err {
        BollardError::DockerResponseServerError { message, .. } => {
            message.contains("same bridge name") || message.contains("already exists")
        }
        _ => false,
    }
}

/// Docker's words when the host port went to someone else after our bind test.
fn is_port_taken(err: &BollardError) -> bool {
    match err {
        BollardError::DockerResponseServerError { message, .. } => {
            message.contains("port is already allocated")
                || message.contains("address already in use")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use bollard::models::ContainerConfig;

    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            placement_id: "web-1-0".into(),
            app: "web".into(),
            release: 1,
            replica: 0,
            node_id: "n1".into(),
            bundle_dir: PathBuf::from("/srv/bundles/web/1"),
            image: "stratus/busybox:latest".into(),
            cmd: "busybox httpd -f -p $PORT -h /app".into(),
            built: false,
            read_only_root: false,
            user: None,
            port: 8080,
            env: BTreeMap::from([
                ("GREETING".to_string(), "hi".to_string()),
                ("PORT".to_string(), "1".to_string()),
            ]),
            cpu_millis: 250,
            memory_bytes: 64 << 20,
            tenant: None,
            isolation: Default::default(),
        }
    }

    #[test]
    fn create_body_publishes_mounts_limits_and_labels() {
        let options = DockerOptions::new("127.0.0.1".parse().unwrap());
        let body = create_body(
            &spec(),
            &options,
            Some(20001),
            &target(&spec(), &options, false).unwrap(),
        );
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(
            host.binds,
            Some(vec!["/srv/bundles/web/1:/app:ro".to_string()])
        );
        assert_eq!(host.nano_cpus, Some(250_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.network_mode, None);
        let binding = &host.port_bindings.as_ref().unwrap()["8080/tcp"]
            .as_ref()
            .unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("20001"));
        assert_eq!(
            body.env,
            Some(vec!["GREETING=hi".to_string(), "PORT=8080".to_string()])
        );
        assert_eq!(body.working_dir.as_deref(), Some("/app"));
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels[labels::PLACEMENT], "web-1-0");
        assert_eq!(labels[labels::NODE], "n1");
        assert!(body.networking_config.is_none());
    }

    #[test]
    fn create_body_on_a_network_publishes_nothing() {
        let options = DockerOptions {
            network: Some("stratus".into()),
            oci_runtime: Some("runsc".into()),
            ..DockerOptions::new("127.0.0.1".parse().unwrap())
        };
        let mut unlimited = spec();
        unlimited.cpu_millis = 0;
        unlimited.memory_bytes = 0;
        let body = create_body(
            &unlimited,
            &options,
            None,
            &target(&unlimited, &options, false).unwrap(),
        );
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.port_bindings, None);
        assert_eq!(host.network_mode.as_deref(), Some("stratus"));
        assert_eq!(host.runtime.as_deref(), Some("runsc"));
        assert_eq!(
            (host.nano_cpus, host.memory),
            (Some(250_000_000), Some(128 << 20)),
            "no limit asked is the default limit, never none"
        );
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert!(endpoints.contains_key("stratus"));
    }

    #[test]
    fn create_body_is_hardened_and_takes_the_security_options() {
        let options = DockerOptions::new("127.0.0.1".parse().unwrap());
        let body = create_body(
            &spec(),
            &options,
            Some(20001),
            &target(&spec(), &options, false).unwrap(),
        );
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".into()]));
        assert_eq!(host.cap_drop, Some(vec!["ALL".into()]));
        assert_eq!(
            host.cap_add.as_ref().unwrap().len(),
            hardening::CAPABILITIES.len()
        );
        assert_eq!(host.pids_limit, Some(hardening::REPLICA_PIDS_LIMIT));
        assert_eq!(host.privileged, Some(false));
        assert_eq!((host.readonly_rootfs, host.tmpfs.as_ref()), (None, None));
        assert_eq!(body.user, None);
        let binds = host.binds.clone().unwrap_or_default();
        assert!(
            !binds.iter().any(|bind| bind.contains("docker.sock")),
            "{binds:?}"
        );
        assert!(hardening::check_binds(&binds).is_ok());

        let mut secured = spec();
        secured.read_only_root = true;
        secured.user = Some("1000:1000".into());
        let body = create_body(
            &secured,
            &options,
            Some(20001),
            &target(&secured, &options, false).unwrap(),
        );
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.readonly_rootfs, Some(true));
        assert!(host.tmpfs.as_ref().unwrap().contains_key("/tmp"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
    }

    #[test]
    fn a_gvisor_tenant_runs_under_runsc_or_not_at_all() {
        let options = DockerOptions::new("127.0.0.1".parse().unwrap());
        let mut sandboxed = spec();
        sandboxed.tenant = Some("acme".into());
        sandboxed.isolation = Isolation::Gvisor;
        let refused = target(&sandboxed, &options, false).unwrap_err();
        assert!(refused.contains("runsc"), "{refused}");
        let chosen = target(&sandboxed, &options, true).unwrap();
        assert_eq!(chosen.runtime.as_deref(), Some("runsc"));
        assert_eq!(target(&spec(), &options, false).unwrap().runtime, None);

        let on_network = Target {
            network: Some("stratus-t-acme".into()),
            runtime: chosen.runtime.clone(),
            dns: Some("172.20.0.1".parse().unwrap()),
        };
        let body = create_body(&sandboxed, &options, Some(20001), &on_network);
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("stratus-t-acme"));
        assert_eq!(
            host.dns.as_deref(),
            Some(&["172.20.0.1".to_string()][..]),
            "resolves through the gateway, which leads to the agent's DNS"
        );
        assert_eq!(host.runtime.as_deref(), Some("runsc"));
        assert!(
            host.port_bindings.is_some(),
            "still published for agents and ingresses"
        );
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels[labels::TENANT], "acme");
        assert_eq!(labels[labels::NETWORK], "stratus-t-acme");
    }

    #[test]
    fn inspect_maps_back_to_a_running_container() {
        let options = DockerOptions::new("127.0.0.2".parse().unwrap());
        let body = create_body(
            &spec(),
            &options,
            Some(20002),
            &target(&spec(), &options, false).unwrap(),
        );
        let mut inspect = ContainerInspectResponse {
            id: Some("abc".into()),
            config: Some(ContainerConfig {
                labels: body.labels.clone(),
                ..Default::default()
            }),
            host_config: body.host_config.clone(),
            state: Some(bollard::models::ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                exit_code: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let running = running_from_inspect(&inspect, &options).unwrap();
        assert_eq!(running.addr, "127.0.0.2:20002".parse().unwrap());
        assert_eq!(
            (running.state, running.exit_code),
            (ContainerState::Running, None)
        );
        assert_eq!(
            (running.app.as_str(), running.release, running.replica),
            ("web", 1, 0)
        );

        if let Some(state) = inspect.state.as_mut() {
            state.status = Some(ContainerStateStatusEnum::EXITED);
            state.exit_code = Some(137);
        }
        let exited = running_from_inspect(&inspect, &options).unwrap();
        assert_eq!(
            (exited.state, exited.exit_code),
            (ContainerState::Exited, Some(137))
        );

        inspect.config = None;
        assert_eq!(
            running_from_inspect(&inspect, &options),
            None,
            "not ours without labels"
        );
    }

    #[test]
    fn usage_is_the_cpu_rate_between_the_samples_and_memory_less_inactive_cache() {
        use bollard::models::{
            ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerStatsResponse,
        };
        let cpu = |total, system| ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(total),
                ..Default::default()
            }),
            system_cpu_usage: Some(system),
            online_cpus: Some(4),
            ..Default::default()
        };
        // Half a second of CPU while the host's 4 CPUs ran 4 s: half a core.
        let stats = ContainerStatsResponse {
            cpu_stats: Some(cpu(1_500_000_000, 14_000_000_000)),
            precpu_stats: Some(cpu(1_000_000_000, 10_000_000_000)),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(50 << 20),
                limit: Some(256 << 20),
                stats: Some([("inactive_file".to_string(), 10 << 20)].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            usage_from_stats(&stats),
            ResourceUsage {
                cpu_millis: Some(500),
                memory_bytes: Some(40 << 20),
                memory_limit_bytes: Some(256 << 20),
            }
        );
        // A first sample only (a container that just started): no rate, no guess.
        let first = ContainerStatsResponse {
            precpu_stats: Some(ContainerCpuStats::default()),
            ..stats
        };
        assert_eq!(usage_from_stats(&first).cpu_millis, None);
        assert_eq!(
            usage_from_stats(&ContainerStatsResponse::default()),
            ResourceUsage::default()
        );
    }

    #[tokio::test]
    async fn a_broken_log_stream_ends_with_a_line_that_says_so() {
        let frames = futures_util::stream::iter([
            Ok(b"one\ntw".to_vec()),
            Ok(b"o\npartial".to_vec()),
            Err("connection reset"),
            Ok(b"never read\n".to_vec()),
        ]);
        let lines: Vec<String> = frames_to_lines("c1", frames).collect().await;
        assert_eq!(
            lines,
            [
                "one",
                "two",
                "partial",
                "(log stream of c1 broke: connection reset)"
            ]
        );
    }

    #[tokio::test]
    async fn a_log_stream_that_ends_keeps_its_last_line_and_says_nothing() {
        let frames = futures_util::stream::iter([Ok::<_, String>(b"a\nb".to_vec())]);
        let lines: Vec<String> = frames_to_lines("c1", frames).collect().await;
        assert_eq!(lines, ["a", "b"]);
    }
}
