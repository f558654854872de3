//! `stratus agent`: wires membership, load sampling, seed resolution and the API together.
//! The binary calls [`run`]; so could a test.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::NodeIdentity;
use proto::api::{HealthResponse, NodesResponse};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::AgentConfig;
use crate::generation::bump_generation;
use crate::load::LoadSampler;
use crate::membership::{Membership, MembershipConfig, SealedUdpTransport, TransportStats};
use crate::seeds::{Seed, SeedResolver};

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
    Membership(#[from] crate::membership::MembershipError),
}

/// Runs the agent until `shutdown` completes, then leaves the cluster gracefully.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
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
             can read the cluster state and join it",
            config.gossip_addr
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
        ingress_addr: None,
        version: VERSION.to_string(),
        labels: config.labels.clone(),
        started_at_ms: now_ms,
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

    let (stop_tx, stop_rx) = watch::channel(false);
    let load_task = tokio::spawn(load_loop(
        membership.clone(),
        sampler,
        config.load_interval,
        stop_rx.clone(),
    ));
    let seed_task = tokio::spawn(seed_loop(
        membership.clone(),
        resolver,
        config.seeds.clone(),
        config.advertise_addr,
        stop_rx.clone(),
    ));
    let api = Arc::new(AgentApi {
        membership: membership.clone(),
        stats,
    });
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(api::serve(listener, api, async move {
        let _ = api_stop.wait_for(|stop| *stop).await;
    }));

    shutdown.await;
    info!("shutting down: leaving the cluster");
    let _ = stop_tx.send(true);
    membership.leave().await;
    for task in [load_task, seed_task] {
        let _ = task.await;
    }
    match api_task.await {
        Ok(Err(err)) => warn!(error = %err, "API server stopped with an error"),
        Err(err) => warn!(error = %err, "API server task failed"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

async fn load_loop(
    membership: Arc<Membership>,
    mut sampler: LoadSampler,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        // Reservations are added by the runtime once containers run on this node.
        let load = sampler.sample((0, 0));
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
    membership: Arc<Membership>,
    stats: Arc<TransportStats>,
}

impl api::NodeApi for AgentApi {
    async fn health(&self) -> HealthResponse {
        HealthResponse {
            status: "ok".to_string(),
            node_id: self.membership.self_id().to_string(),
            version: VERSION.to_string(),
            gossip: self.stats.snapshot(),
        }
    }

    async fn nodes(&self) -> NodesResponse {
        let view = self.membership.view().await;
        NodesResponse {
            self_id: view.self_id,
            nodes: view.nodes,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
