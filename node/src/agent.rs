//! `stratus agent` as a library function: [`run`] takes the sockets and the gossip
//! transport the caller chose (the binary binds real ones; tests pass port-0 listeners and
//! chitchat's in-memory transport), wires membership, the catalog, the control loops and
//! the API together, and supervises every loop it spawns: one that ends before shutdown
//! takes the node down loudly instead of leaving it half alive.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::NodeIdentity;
use proto::routes::RouteFeed;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::audit_log::AuditLog;
use crate::build::builds::{BuildSettings, Builds};
use crate::bundle::{BlobStore, Bundles, S3Store};
use crate::cluster::generation::bump_generation;
use crate::cluster::load::LoadSampler;
use crate::cluster::membership::{
    ChannelTransport, Membership, MembershipConfig, SealedUdpTransport, Transport, TransportStats,
};
use crate::cluster::peers::Peers;
use crate::cluster::seal::Keyring;
use crate::cluster::seeds::{Seed, SeedResolver};
use crate::config::{AgentConfig, RuntimeChoice};
use crate::control::catalog_handle::CatalogHandle;
use crate::control::hlc::unix_ms;
use crate::control::{catalog_sync, reconciler_driver};
use crate::dns::{self, DnsCounters, DnsListeners, DnsService, TenantSubnets, Zone};
use crate::events;
use crate::events::{EventsHandle, KEPT_EVENTS};
use crate::handles::AgentHandles;
use crate::metrics::AgentMetrics;
use crate::operations::service::AgentService;
use crate::tenancy::{self, TenancyHandle};
use crate::workload::admission_control::AdmissionControl;
use crate::workload::replica::Replicas;
use crate::workload::runtime::{
    DockerDriver, DockerOptions, PortRange, ProcessDriver, ProcessOptions, RuntimeDriver,
};
use crate::workload::supervisor;

pub use crate::config::VERSION;

/// How often seeds are resolved and dialed while this node knows no live peer, and after.
const SEED_RETRY_ALONE: Duration = Duration::from_secs(2);
const SEED_RETRY_JOINED: Duration = Duration::from_secs(30);

/// After shutdown, how long the loops get to finish before they are abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the API listener's address: {0}")]
    ApiListener(#[source] std::io::Error),
    #[error(transparent)]
    Membership(#[from] crate::cluster::membership::MembershipError),
    #[error("cannot open the catalog: {0}")]
    Catalog(String),
    #[error("cannot start the container runtime: {0}")]
    Runtime(String),
    #[error("cannot use the S3 store: {0}")]
    Store(String),
    #[error("cannot serve the API over TLS: {0}")]
    ApiTls(String),
    #[error(
        "the agent's {task} loop {how} while the node was running: stopping the node rather \
         than leave it half alive (restart it; the log above says why)"
    )]
    TaskDied {
        task: &'static str,
        how: &'static str,
    },
}

/// How this node calls its peers and checks their calls: signed with its cluster keys, and
/// addressed to the API addresses it is known by (the advertised one and the bound one).
fn peers_of(config: &AgentConfig) -> Result<Peers, AgentError> {
    let mut authorities = vec![config.advertised_api_addr().to_string()];
    if !config.api_addr.ip().is_unspecified() && config.api_addr != config.advertised_api_addr() {
        authorities.push(config.api_addr.to_string());
    }
    let ca = match &config.api_tls_ca {
        Some(path) => Some((
            path.display().to_string(),
            std::fs::read(path).map_err(|err| {
                AgentError::ApiTls(format!(
                    "cannot read --api-tls-ca {}: {err}",
                    path.display()
                ))
            })?,
        )),
        None => None,
    };
    Peers::new(
        config.keyring.as_ref(),
        &config.cluster_id,
        authorities,
        ca.as_ref()
            .map(|(path, pem)| (path.as_str(), pem.as_slice())),
    )
    .map_err(|err| AgentError::ApiTls(err.to_string()))
}

/// The sockets the agent serves on, bound by the caller.
pub struct Listeners {
    /// The HTTP API. Its local address is what the node advertises (so port 0 works).
    pub api: TcpListener,
    /// The DNS server's sockets, when the config has `--dns-addr`.
    pub dns: Option<DnsListeners>,
    /// The DNS server's sockets for containers (`--internal-port`'s P+1, on every
    /// address), which tenant networks' port 53 leads to.
    pub internal_dns: Option<DnsListeners>,
}

/// What the binary's own servers read from the agent: the ingress and the node-local
/// balancer, which this crate never depends on.
#[derive(Default)]
pub struct Feeds {
    /// Sent a [`RouteFeed`] whenever the cluster or the catalog changes.
    pub routes: Option<watch::Sender<Option<RouteFeed>>>,
    /// This node's tenant networks, written by the Docker driver: who a container's
    /// address is.
    pub tenant_subnets: Arc<TenantSubnets>,
}

/// The gossip transport, chosen by the caller: sealed UDP in production, chitchat's
/// in-memory channels in in-process test clusters.
pub struct Gossip {
    transport: Box<dyn Transport>,
    stats: Arc<TransportStats>,
}

impl Gossip {
    /// UDP on the config's gossip address, every datagram sealed by `keyring` (clear text
    /// with `None`, `--insecure-no-encryption`).
    pub fn sealed_udp(keyring: Option<Keyring>) -> Gossip {
        let transport = SealedUdpTransport::new(keyring);
        let stats = transport.stats();
        Gossip {
            transport: Box::new(transport),
            stats,
        }
    }

    /// In-process channels shared by every node of a test cluster; links can be cut with
    /// [`ChannelTransport::remove_link`].
    pub fn in_memory(transport: ChannelTransport) -> Gossip {
        Gossip {
            transport: Box::new(transport),
            stats: Arc::default(),
        }
    }
}

/// Runs the agent until `shutdown` completes, then leaves the cluster gracefully.
pub async fn run(
    config: AgentConfig,
    listeners: Listeners,
    gossip: Gossip,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    run_with_feeds(config, listeners, gossip, shutdown, Feeds::default()).await
}

/// [`run`], also feeding `feeds` (the binary wires them into the ingress and the
/// node-local balancer).
pub async fn run_with_feeds(
    mut config: AgentConfig,
    listeners: Listeners,
    gossip: Gossip,
    shutdown: impl Future<Output = ()>,
    feeds: Feeds,
) -> Result<(), AgentError> {
    let Listeners {
        api: api_listener,
        dns: dns_listeners,
        internal_dns: internal_dns_listeners,
    } = listeners;
    let Feeds {
        routes,
        tenant_subnets,
    } = feeds;
    // The address actually bound, which differs from the config's with port 0.
    config.api_addr = api_listener.local_addr().map_err(AgentError::ApiListener)?;
    let now_ms = unix_ms();
    let generation =
        bump_generation(&config.data_dir, now_ms).map_err(|source| AgentError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    match &config.keyring {
        Some(keyring) => info!(key = %keyring.primary().fingerprint(), "gossip is encrypted"),
        None => error!(
            "GOSSIP IS NOT ENCRYPTED (--insecure-no-encryption): anyone who can send UDP to {} \
             can read the cluster state and join it, and anyone who can reach the API on {} \
             can call the node-to-node endpoints (their token derives from the cluster id)",
            config.gossip_addr, config.api_addr
        ),
    }

    let resolver = SeedResolver::from_system();
    let mut initial_seeds = resolver.resolve(&config.seeds).await;
    initial_seeds.remove(&config.advertise_addr);
    let (runtime, docker) = choose_runtime(&config, tenant_subnets.clone()).await?;
    let builds = Builds::new(
        docker,
        BuildSettings {
            bases: config.base_images.clone(),
            timeout: config.build_timeout,
            pull: config.image_pull,
            keep_releases: config.keep_releases,
            cache_bytes: config.build_cache_bytes,
            work_dir: config.data_dir.join("builds"),
        },
    );
    let identity = NodeIdentity {
        node_id: config.node_id.clone(),
        gossip_addr: config.advertise_addr,
        api_addr: config.advertised_api_addr(),
        api_tls: config.api_tls.is_some(),
        ingress_addr: config.ingress_addr,
        version: VERSION.to_string(),
        labels: config.labels.clone(),
        started_at_ms: now_ms,
        runs_workloads: config.runs_workloads,
        builds: config.runs_workloads && builds.can_build(),
        gvisor: config.runs_workloads && runtime.has_gvisor(),
    };
    let mut sampler = LoadSampler::new();
    let first_load = sampler.sample((0, 0));
    let _ = sampler.poll_publish(first_load);

    let membership_config = MembershipConfig {
        cluster_id: config.cluster_id.clone(),
        listen_addr: config.gossip_addr,
        advertise_addr: config.advertise_addr,
        seeds: initial_seeds.into_iter().collect(),
        gossip_interval: config.gossip_interval,
        phi_threshold: config.phi_threshold,
        ..MembershipConfig::new(&config.node_id, generation, config.advertise_addr)
    };
    let membership = Arc::new(
        Membership::start(
            membership_config,
            &identity,
            first_load,
            gossip.transport.as_ref(),
        )
        .await?,
    );
    info!(
        node_id = %config.node_id,
        generation,
        gossip = %config.gossip_addr,
        advertise = %config.advertise_addr,
        api = %config.api_addr,
        "agent ready"
    );

    info!(runtime = runtime.name(), "container runtime ready");
    let catalog = CatalogHandle::open(&config.data_dir.join("catalog.redb"), &config.node_id)
        .map_err(|err| AgentError::Catalog(err.to_string()))?;
    let tenancy = TenancyHandle::open(&config.data_dir.join("tenancy.redb"))
        .map_err(|err| AgentError::Catalog(err.to_string()))?;
    let blobs =
        BlobStore::open(&config.data_dir).map_err(|err| AgentError::Catalog(err.to_string()))?;
    let s3 = match &config.s3 {
        None => None,
        Some(s3_config) => {
            let store = S3Store::new(s3_config.clone())
                .map_err(|err| AgentError::Store(err.to_string()))?;
            // Bad credentials or endpoint stop the agent now, not at the first deploy.
            store
                .ensure_bucket()
                .await
                .map_err(|err| AgentError::Store(err.to_string()))?;
            info!(store = %s3_config.url(), "bundles are kept in S3");
            Some(store)
        }
    };
    if config.api_token.is_none() {
        warn!("no --api-token: the app endpoints (deploy, apps, destroy) refuse every request");
    }
    let admission = AdmissionControl::new(
        &config.data_dir,
        u64::from(first_load.cpu_cores) * 1000,
        first_load.mem_total_bytes,
    );
    admission.set_gvisor(identity.gvisor);
    if admission.is_draining() {
        info!(
            "this node was drained before it stopped: it stays drained (`stratus node undrain` ends it)"
        );
        membership.set_draining(true).await;
    }
    let peers = peers_of(&config)?;
    let api_tls = match &config.api_tls {
        Some((cert, key)) => Some(
            api::tls::load_server_config(cert, key)
                .map_err(|err| AgentError::ApiTls(err.to_string()))?,
        ),
        None => None,
    };
    let dns_counters = config
        .dns
        .as_ref()
        .map(|_| Arc::new(DnsCounters::default()));
    let agent = AgentHandles {
        membership: membership.clone(),
        gossip_stats: gossip.stats.clone(),
        peers,
        catalog: Arc::new(catalog),
        tenancy: Arc::new(tenancy),
        audit: Arc::new(AuditLog::new(&config.data_dir)),
        events: Arc::new(EventsHandle::new(KEPT_EVENTS)),
        metrics: Arc::new(AgentMetrics::new()),
        bundles: Arc::new(Bundles::new(&config.data_dir, blobs, s3)),
        admission: Arc::new(admission),
        replicas: Arc::new(Replicas::new(runtime)),
        builds: Arc::new(builds),
        dns: dns_counters.clone(),
        config: Arc::new(config.clone()),
    };

    // Before anything schedules: containers left running by a previous agent are ours.
    supervisor::adopt_existing(agent.clone()).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Supervised::default();
    loops.spawn(
        "load",
        load_loop(
            agent.admission.clone(),
            membership.clone(),
            config.load_interval,
            sampler,
            stop_rx.clone(),
        ),
    );
    loops.spawn(
        "seeds",
        seed_loop(
            membership.clone(),
            resolver,
            config.seeds.clone(),
            config.advertise_addr,
            stop_rx.clone(),
        ),
    );
    loops.spawn(
        "catalog sync",
        catalog_sync::run(
            agent.catalog.clone(),
            membership.clone(),
            config.node_id.clone(),
            stop_rx.clone(),
        ),
    );
    loops.spawn(
        "tenancy sync",
        tenancy::sync::run(
            agent.tenancy.clone(),
            membership.clone(),
            config.node_id.clone(),
            stop_rx.clone(),
        ),
    );
    loops.spawn(
        "events",
        events::feed::run(
            agent.events.clone(),
            agent.metrics.clone(),
            agent.catalog.clone(),
            membership.clone(),
            // Long enough for gossip to bring the peers and the catalog a node already had.
            (config.gossip_interval * 10).max(Duration::from_secs(1)),
            stop_rx.clone(),
        ),
    );
    loops.spawn(
        "reconciler driver",
        reconciler_driver::run(agent.clone(), stop_rx.clone()),
    );
    if let Some(routes) = routes {
        loops.spawn(
            "route feed",
            route_feed(
                agent.catalog.clone(),
                membership.clone(),
                routes,
                stop_rx.clone(),
            ),
        );
    }
    if let (Some(dns), Some(sockets)) = (&config.dns, dns_listeners) {
        let empty = Zone::new(dns.zone.clone(), Default::default(), Default::default(), 0);
        let (zones_tx, zones) = watch::channel(Arc::new(empty));
        loops.spawn(
            "DNS zone feed",
            dns::zone_feed::zone_feed(
                dns.zone.clone(),
                agent.catalog.clone(),
                membership.clone(),
                zones_tx,
                stop_rx.clone(),
            ),
        );
        let counters = dns_counters.clone().unwrap_or_default();
        if let Some(sockets) = internal_dns_listeners {
            let for_containers = DnsService {
                zones: zones.clone(),
                askers: tenant_subnets.clone(),
                recursor: dns.container_recursor,
                counters: counters.clone(),
            };
            loops.spawn(
                "DNS server for containers",
                dns::server::serve(sockets, Arc::new(for_containers), stop_rx.clone()),
            );
        }
        let service = DnsService {
            zones,
            askers: tenant_subnets,
            recursor: dns.recursor,
            counters,
        };
        loops.spawn(
            "DNS server",
            dns::server::serve(sockets, Arc::new(service), stop_rx.clone()),
        );
    }
    let mut api_config = api::ApiConfig::new(
        agent.bundles.uploads_dir().to_path_buf(),
        config.max_upload_bytes,
    );
    api_config.rate_limit = config.api_rate_limit;
    let router = api::router(Arc::new(AgentService::new(agent.clone())), api_config);
    let serve_limits = api::ServeLimits {
        max_connections_per_ip: config.api_max_connections_per_ip,
        ..api::ServeLimits::default()
    };
    let mut api_stop = stop_rx.clone();
    loops.spawn("API server", async move {
        let stopped = async move {
            let _ = api_stop.wait_for(|stop| *stop).await;
        };
        if let Err(err) = api::serve(api_listener, router, serve_limits, api_tls, stopped).await {
            error!(error = %err, "the API server failed");
        }
    });

    let died = tokio::select! {
        () = shutdown => None,
        died = loops.first_exit() => Some(died),
    };
    match &died {
        None => info!("shutting down: leaving the cluster"),
        Some((task, how)) => error!(task, how, "an agent loop ended: leaving the cluster"),
    }
    let _ = stop_tx.send(true);
    membership.leave().await;
    loops.finish(SHUTDOWN_GRACE).await;
    match died {
        None => Ok(()),
        Some((task, how)) => Err(AgentError::TaskDied { task, how }),
    }
}

/// The agent's loops, each named: every one runs until the node stops, so one that ends
/// first (it returned, or it panicked) is a failure of the node.
#[derive(Default)]
pub struct Supervised {
    tasks: JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Supervised {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for the first loop to end, and says which and how. Pending forever when
    /// there is none.
    pub async fn first_exit(&mut self) -> (&'static str, &'static str) {
        let Some(ended) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, how) = match ended {
            Ok((id, ())) => (id, "returned"),
            Err(err) if err.is_panic() => (err.id(), "panicked"),
            Err(err) => (err.id(), "was cancelled"),
        };
        (self.names.get(&id).copied().unwrap_or("unnamed"), how)
    }

    /// Gives every loop `grace` to notice the stop, then aborts the rest.
    pub async fn finish(mut self, grace: Duration) {
        let drained = tokio::time::timeout(grace, async {
            while let Some(ended) = self.tasks.join_next_with_id().await {
                if let Err(err) = ended
                    && err.is_panic()
                {
                    let name = self.names.get(&err.id()).copied().unwrap_or("unnamed");
                    error!(task = name, "an agent loop panicked while stopping");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(?grace, "agent loops still running after the grace: aborted");
            self.tasks.shutdown().await;
        }
    }
}

/// Docker where its daemon answers (or when asked for), else plain processes; with Docker,
/// also its client, which builds and image loads use.
async fn choose_runtime(
    config: &AgentConfig,
    tenant_subnets: Arc<TenantSubnets>,
) -> Result<(Arc<dyn RuntimeDriver>, Option<bollard::Docker>), AgentError> {
    let range = PortRange::new(config.port_range.0, config.port_range.1)
        .ok_or_else(|| AgentError::Runtime("invalid port range".into()))?;
    let ip = config.advertise_addr.ip();
    let docker_options = DockerOptions {
        docker_host: config.docker_host.clone(),
        port_range: range,
        network: config.docker_network.clone(),
        oci_runtime: config.oci_runtime.clone(),
        node_id: Some(config.node_id.clone()),
        cluster_id: Some(config.cluster_id.clone()),
        internal: config.internal,
        ..DockerOptions::new(ip)
    };
    let process = || -> Result<(Arc<dyn RuntimeDriver>, Option<bollard::Docker>), AgentError> {
        let options = ProcessOptions {
            port_range: range,
            ..ProcessOptions::new(ip, config.data_dir.join("logs"))
        };
        let driver =
            ProcessDriver::new(options).map_err(|err| AgentError::Runtime(err.to_string()))?;
        Ok((Arc::new(driver), None))
    };
    let docker = |driver: DockerDriver| {
        let client = driver.client();
        (Arc::new(driver) as Arc<dyn RuntimeDriver>, Some(client))
    };
    match config.runtime {
        RuntimeChoice::Process => process(),
        RuntimeChoice::Docker => Ok(docker(
            DockerDriver::connect(docker_options)
                .await
                .map_err(|err| AgentError::Runtime(err.to_string()))?
                .with_tenant_subnets(tenant_subnets)
                .await,
        )),
        RuntimeChoice::Auto => match DockerDriver::connect(docker_options).await {
            Ok(driver) if driver.is_available().await => {
                Ok(docker(driver.with_tenant_subnets(tenant_subnets).await))
            }
            _ => {
                warn!("docker does not answer: running apps as plain processes");
                process()
            }
        },
    }
}

/// Sends the view and the catalog whenever either changes (a view change is also how app
/// records arrive).
async fn route_feed(
    catalog: Arc<CatalogHandle>,
    membership: Arc<Membership>,
    routes: watch::Sender<Option<RouteFeed>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut views = membership.subscribe().await;
    loop {
        let view = views.borrow_and_update().clone();
        let apps = catalog.records().await;
        let replicas = view
            .containers
            .iter()
            .map(|placed| (placed.node_id.clone(), placed.record.clone()))
            .collect();
        let feed = Some(RouteFeed { apps, replicas });
        routes.send_if_modified(|current| {
            let changed = *current != feed;
            if changed {
                *current = feed;
            }
            changed
        });
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            // The catalog merges app records a moment after the view brings them.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

async fn load_loop(
    admission: Arc<AdmissionControl>,
    membership: Arc<Membership>,
    interval: Duration,
    mut sampler: LoadSampler,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let reserved = admission.reserved().await;
        let load = sampler.sample(reserved);
        if let Some(load) = sampler.poll_publish(load) {
            membership.set_load(&load).await;
        }
    }
}

/// Dials seeds found by DNS after start: chitchat only knows the addresses resolved at
/// start, and a cluster bootstrapping from one DNS name may see its records appear later.
async fn seed_loop(
    membership: Arc<Membership>,
    resolver: SeedResolver,
    seeds: Vec<Seed>,
    advertise: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    if seeds.is_empty() {
        // Nothing to dial, but a supervised loop runs until the node stops.
        let _ = stop.wait_for(|stop| *stop).await;
        return;
    }
    loop {
        let live_peers = membership.live_peer_addrs().await;
        let wait = if live_peers.is_empty() {
            SEED_RETRY_ALONE
        } else {
            SEED_RETRY_JOINED
        };
        for addr in resolver.resolve(&seeds).await {
            if addr != advertise && !live_peers.contains(&addr) {
                membership.gossip_to(addr);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_that_panics_is_reported_by_name() {
        let mut loops = Supervised::default();
        loops.spawn("forever", std::future::pending());
        loops.spawn("reconciler driver", async {
            tokio::task::yield_now().await;
            panic!("bug in the driver");
        });
        assert_eq!(loops.first_exit().await, ("reconciler driver", "panicked"));
        loops.finish(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn a_loop_that_returns_early_is_a_failure_too() {
        let mut loops = Supervised::default();
        loops.spawn("forever", std::future::pending());
        loops.spawn("route feed", async {});
        assert_eq!(loops.first_exit().await, ("route feed", "returned"));
    }

    /// Paused clock: the grace passes at once, and a loop that ignores the stop is aborted
    /// rather than holding the shutdown forever.
    #[tokio::test(start_paused = true)]
    async fn finish_aborts_what_ignores_the_stop() {
        let mut loops = Supervised::default();
        loops.spawn("stubborn", std::future::pending());
        loops.finish(Duration::from_secs(15)).await;
    }
}
