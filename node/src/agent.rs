//! `stratus agent`: wires membership, load sampling, seed resolution and the API together.
//! The binary calls [`run`]; so could a test.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::{ApiError, Caller, LineStream, LogQuery, Upload};
use proto::NodeIdentity;
use proto::api::{
    AppView, AppsResponse, ChangeAccepted, DeployAccepted, DrainReply, HealthResponse,
    NodesResponse, PlacementReply, PlacementRequest, ReleasesResponse, RollbackRequest,
    ScaleRequest, StopRequest,
};
use proto::catalog::AppRecord;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, watch};
use tracing::{error, info, warn};

use crate::bundle::{BlobStore, S3Store};
use crate::cluster::generation::bump_generation;
use crate::cluster::load::LoadSampler;
use crate::cluster::membership::{Membership, MembershipConfig, SealedUdpTransport};
use crate::cluster::seal::constant_time_eq;
use crate::cluster::seeds::{Seed, SeedResolver};
use crate::config::{AgentConfig, RuntimeChoice};
use crate::control::catalog::CatalogStore;
use crate::control::hlc::Hlc;
use crate::control::scheduler::Admission;
use crate::control::{catalog_sync, reconciler_driver};
use crate::operations::{changes, deploy};
use crate::state::{AgentState, unix_ms};
use crate::workload::runtime::{
    DockerDriver, DockerOptions, PortRange, ProcessDriver, ProcessOptions, RuntimeDriver,
};
use crate::workload::{logs, supervisor};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often seeds are resolved and dialed while this node knows no live peer, and after.
const SEED_RETRY_ALONE: Duration = Duration::from_secs(2);
const SEED_RETRY_JOINED: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for the API on {addr}: {source}")]
    ApiBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Membership(#[from] crate::cluster::membership::MembershipError),
    #[error("cannot open the catalog: {0}")]
    Catalog(String),
    #[error("cannot start the container runtime: {0}")]
    Runtime(String),
    #[error("cannot use the S3 store: {0}")]
    Store(String),
}

/// What an embedded ingress needs to route: the cluster view (live replicas) and the
/// catalog (apps and their domains). Sent on every change.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteFeed {
    pub view: Arc<crate::cluster::membership::ClusterView>,
    pub apps: Vec<AppRecord>,
}

/// Runs the agent until `shutdown` completes, then leaves the cluster gracefully.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    run_with_routes(config, shutdown, None).await
}

/// [`run`], also sending a [`RouteFeed`] to `routes` whenever the cluster or the catalog
/// changes (the binary wires it into the ingress; this crate never depends on it).
pub async fn run_with_routes(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
    routes: Option<watch::Sender<Option<RouteFeed>>>,
) -> Result<(), AgentError> {
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
    let listener =
        TcpListener::bind(config.api_addr)
            .await
            .map_err(|source| AgentError::ApiBind {
                addr: config.api_addr,
                source,
            })?;

    let resolver = SeedResolver::from_system();
    let mut initial_seeds = resolver.resolve(&config.seeds).await;
    initial_seeds.remove(&config.advertise_addr);
    let identity = NodeIdentity {
        node_id: config.node_id.clone(),
        gossip_addr: config.advertise_addr,
        api_addr: config.advertised_api_addr(),
        ingress_addr: config.ingress_addr,
        version: VERSION.to_string(),
        labels: config.labels.clone(),
        started_at_ms: now_ms,
        runs_workloads: config.runs_workloads,
    };
    let mut sampler = LoadSampler::new();
    let first_load = sampler.sample((0, 0));
    let _ = sampler.poll_publish(first_load);

    let transport = SealedUdpTransport::new(config.keyring.clone());
    let stats = transport.stats();
    let membership_config = MembershipConfig {
        cluster_id: config.cluster_id.clone(),
        listen_addr: config.gossip_addr,
        advertise_addr: config.advertise_addr,
        seeds: initial_seeds.into_iter().collect(),
        gossip_interval: config.gossip_interval,
        phi_threshold: config.phi_threshold,
        ..MembershipConfig::new(&config.node_id, generation, config.advertise_addr)
    };
    let membership =
        Arc::new(Membership::start(membership_config, &identity, first_load, &transport).await?);
    info!(
        node_id = %config.node_id,
        generation,
        gossip = %config.gossip_addr,
        advertise = %config.advertise_addr,
        api = %config.api_addr,
        "agent ready"
    );

    let runtime = choose_runtime(&config).await?;
    info!(runtime = runtime.name(), "container runtime ready");
    let catalog_store = CatalogStore::open(&config.data_dir.join("catalog.redb"))
        .map_err(|err| AgentError::Catalog(err.to_string()))?;
    let catalog = catalog_store
        .load()
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
    let node_token = match &config.keyring {
        Some(keyring) => keyring.node_token().to_string(),
        None => format!("insecure-{}", config.cluster_id),
    };
    let state = Arc::new(AgentState {
        membership: membership.clone(),
        stats,
        catalog: Mutex::new(catalog),
        catalog_store,
        hlc: Mutex::new(Hlc::new(&config.node_id)),
        blobs,
        s3,
        runtime,
        admission: Mutex::new(Admission::new(
            u64::from(first_load.cpu_cores) * 1000,
            first_load.mem_total_bytes,
        )),
        replicas: Mutex::new(Default::default()),
        reserved_numbers: Mutex::new(Default::default()),
        catalog_changed: Notify::new(),
        node_token,
        draining: Default::default(),
        config: config.clone(),
    });
    if changes::draining_marker(&state).exists() {
        info!(
            "this node was drained before it stopped: it stays drained (`stratus node undrain` ends it)"
        );
        if let Err(err) = changes::set_own_draining(&state, true).await {
            warn!(error = %err, "cannot restore the drain");
        }
    }

    // Before anything schedules: containers left running by a previous agent are ours.
    supervisor::adopt_existing(state.clone()).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = vec![
        tokio::spawn(load_loop(state.clone(), sampler, stop_rx.clone())),
        tokio::spawn(seed_loop(
            membership.clone(),
            resolver,
            config.seeds.clone(),
            config.advertise_addr,
            stop_rx.clone(),
        )),
        tokio::spawn(catalog_sync::run(state.clone(), stop_rx.clone())),
        tokio::spawn(reconciler_driver::run(state.clone(), stop_rx.clone())),
    ];
    if let Some(routes) = routes {
        tasks.push(tokio::spawn(route_feed(
            state.clone(),
            routes,
            stop_rx.clone(),
        )));
    }
    let api = Arc::new(AgentApi {
        state: state.clone(),
    });
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(api::serve(listener, api, async move {
        let _ = api_stop.wait_for(|stop| *stop).await;
    }));

    shutdown.await;
    info!("shutting down: leaving the cluster");
    let _ = stop_tx.send(true);
    membership.leave().await;
    for task in tasks {
        let _ = task.await;
    }
    match api_task.await {
        Ok(Err(err)) => warn!(error = %err, "API server stopped with an error"),
        Err(err) => warn!(error = %err, "API server task failed"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

/// Docker where its daemon answers (or when asked for), else plain processes.
async fn choose_runtime(config: &AgentConfig) -> Result<Arc<dyn RuntimeDriver>, AgentError> {
    let range = PortRange::new(config.port_range.0, config.port_range.1)
        .ok_or_else(|| AgentError::Runtime("invalid port range".into()))?;
    let ip = config.advertise_addr.ip();
    let docker_options = DockerOptions {
        port_range: range,
        network: config.docker_network.clone(),
        oci_runtime: config.oci_runtime.clone(),
        node_id: Some(config.node_id.clone()),
        cluster_id: Some(config.cluster_id.clone()),
        ..DockerOptions::new(ip)
    };
    let process = || -> Result<Arc<dyn RuntimeDriver>, AgentError> {
        let options = ProcessOptions {
            port_range: range,
            ..ProcessOptions::new(ip, config.data_dir.join("logs"))
        };
        Ok(Arc::new(
            ProcessDriver::new(options).map_err(|err| AgentError::Runtime(err.to_string()))?,
        ))
    };
    match config.runtime {
        RuntimeChoice::Process => process(),
        RuntimeChoice::Docker => Ok(Arc::new(
            DockerDriver::connect(docker_options)
                .await
                .map_err(|err| AgentError::Runtime(err.to_string()))?,
        )),
        RuntimeChoice::Auto => match DockerDriver::connect(docker_options).await {
            Ok(docker) if docker.is_available().await => Ok(Arc::new(docker)),
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
    state: Arc<AgentState>,
    routes: watch::Sender<Option<RouteFeed>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut views = state.membership.subscribe().await;
    loop {
        let view = views.borrow_and_update().clone();
        let apps: Vec<AppRecord> = state.catalog.lock().await.records().cloned().collect();
        let feed = Some(RouteFeed { view, apps });
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
    state: Arc<AgentState>,
    mut sampler: LoadSampler,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(state.config.load_interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let reserved = state.admission.lock().await.reserved();
        let load = sampler.sample(reserved);
        if let Some(load) = sampler.poll_publish(load) {
            state.membership.set_load(&load).await;
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

struct AgentApi {
    state: Arc<AgentState>,
}

impl api::NodeApi for AgentApi {
    async fn health(&self) -> HealthResponse {
        HealthResponse {
            status: "ok".to_string(),
            node_id: self.state.node_id().to_string(),
            version: VERSION.to_string(),
            gossip: self.state.stats.snapshot(),
        }
    }

    async fn nodes(&self) -> NodesResponse {
        let view = self.state.view().await;
        NodesResponse {
            self_id: view.self_id,
            nodes: view.nodes,
        }
    }

    fn authenticate(&self, token: &str) -> Option<Caller> {
        let node_token_ok = match &self.state.config.keyring {
            Some(keyring) => keyring.accepts_node_token(token),
            None => constant_time_eq(token.as_bytes(), self.state.node_token.as_bytes()),
        };
        if node_token_ok {
            return Some(Caller::Node);
        }
        let user_token = self.state.config.api_token.as_deref()?;
        constant_time_eq(token.as_bytes(), user_token.as_bytes()).then_some(Caller::User)
    }

    fn upload_dir(&self) -> PathBuf {
        self.state.uploads_dir()
    }

    fn max_upload_bytes(&self) -> u64 {
        self.state.config.max_upload_bytes
    }

    async fn apps(&self) -> AppsResponse {
        deploy::apps(&self.state).await
    }

    async fn app(&self, name: &str) -> Result<AppView, ApiError> {
        deploy::app_view(&self.state, name, false).await
    }

    async fn destroy(&self, name: &str) -> Result<AppView, ApiError> {
        deploy::destroy(&self.state, name).await
    }

    async fn deploy(&self, app: &str, upload: Upload) -> Result<DeployAccepted, ApiError> {
        deploy::accept(&self.state, app, upload).await
    }

    async fn blob_path(&self, sha256: &str) -> Result<PathBuf, ApiError> {
        let blobs = self.state.blobs.clone();
        let digest = sha256.to_string();
        tokio::task::spawn_blocking(move || {
            blobs
                .open_verified(&digest)
                .and_then(|_| blobs.path(&digest))
        })
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?
        .map_err(|err| ApiError::NotFound {
            method: "GET".into(),
            path: format!("/v1/blobs/{sha256}: {err}"),
        })
    }

    async fn put_blob(&self, sha256: &str, upload: Upload) -> Result<(), ApiError> {
        deploy::put_blob(&self.state, sha256, upload).await
    }

    async fn hold_record(&self, record: AppRecord) -> Result<(), ApiError> {
        deploy::hold_record(&self.state, record).await
    }

    async fn place(&self, request: PlacementRequest) -> Result<PlacementReply, ApiError> {
        reconciler_driver::admit(&self.state, request).await
    }

    async fn reserve_release_number(&self, app: &str) -> Result<u64, ApiError> {
        proto::manifest::validate_app_name(app).map_err(ApiError::BadRequest)?;
        Ok(self.state.reserve_release_number(app).await)
    }

    async fn app_logs(&self, app: &str, query: LogQuery) -> Result<LineStream, ApiError> {
        logs::app_logs(&self.state, app, query).await
    }

    async fn previous_logs(&self, app: &str, query: LogQuery) -> Result<LineStream, ApiError> {
        let lines = logs::previous_logs(&self.state, app, query.tail).await;
        Ok(Box::pin(futures_util::stream::iter(lines)))
    }

    async fn releases(&self, app: &str) -> Result<ReleasesResponse, ApiError> {
        changes::releases(&self.state, app).await
    }

    async fn scale(&self, app: &str, request: ScaleRequest) -> Result<ChangeAccepted, ApiError> {
        changes::scale(&self.state, app, request.replicas).await
    }

    async fn rollback(
        &self,
        app: &str,
        request: RollbackRequest,
    ) -> Result<ChangeAccepted, ApiError> {
        changes::rollback(&self.state, app, request.to).await
    }

    async fn restart(&self, app: &str) -> Result<ChangeAccepted, ApiError> {
        changes::restart(&self.state, app).await
    }

    async fn drain(&self, node: &str, draining: bool) -> Result<DrainReply, ApiError> {
        changes::drain(&self.state, node, draining).await
    }

    async fn set_draining(&self, draining: bool) -> Result<DrainReply, ApiError> {
        changes::set_own_draining(&self.state, draining).await?;
        Ok(DrainReply {
            node_id: self.state.node_id().to_string(),
            draining,
        })
    }

    async fn stop_replica(&self, request: StopRequest) -> Result<(), ApiError> {
        reconciler_driver::stop(&self.state, request).await
    }

    async fn replica_logs(
        &self,
        placement_id: &str,
        query: LogQuery,
    ) -> Result<LineStream, ApiError> {
        logs::replica_logs(&self.state, placement_id, query).await
    }
}
