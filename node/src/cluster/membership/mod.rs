//! Cluster membership: the only module that talks to the gossip library (chitchat).
//!
//! Everything else sees typed values: it publishes a [`NodeLoad`] or a [`ContainerRecord`]
//! and reads a [`ClusterView`]. Key names and encodings come from [`proto::gossip`].

mod transport;
mod view;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use proto::catalog::AppRecord;
use proto::gossip::{self, IDENTITY_KEY, LEAVING_KEY, LOAD_KEY, RolloutFailure};
use proto::tenancy::TenancyRecord;
use proto::{ContainerRecord, NodeIdentity, NodeLoad};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

pub use chitchat::transport::{ChannelTransport, Transport};
pub use transport::{SealedUdpTransport, TransportStats};
pub use view::{ClusterView, MemberSnapshot, PlacedContainer};

/// How this node takes part in gossip.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub node_id: String,
    /// Grows on every restart, so peers can tell a new incarnation from the old one.
    pub generation: u64,
    pub cluster_id: String,
    pub listen_addr: SocketAddr,
    pub advertise_addr: SocketAddr,
    /// Seed addresses known at start; more can be dialed later with [`Membership::gossip_to`].
    pub seeds: Vec<SocketAddr>,
    pub gossip_interval: Duration,
    /// Phi-accrual threshold above which a silent peer is declared dead.
    pub phi_threshold: f64,
    /// How long a dead node (and a deleted key) is remembered before it is forgotten.
    pub dead_node_grace_period: Duration,
}

impl MembershipConfig {
    /// Defaults for a node; callers set ids and addresses.
    pub fn new(node_id: &str, generation: u64, addr: SocketAddr) -> MembershipConfig {
        MembershipConfig {
            node_id: node_id.to_string(),
            generation,
            cluster_id: "stratus".to_string(),
            listen_addr: addr,
            advertise_addr: addr,
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(crate::config::DEFAULT_GOSSIP_INTERVAL_MS),
            phi_threshold: 8.0,
            dead_node_grace_period: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot start gossip on {addr}: {source}")]
    Start {
        addr: SocketAddr,
        #[source]
        source: anyhow::Error,
    },
}

/// A running gossip member.
pub struct Membership {
    handle: ChitchatHandle,
    /// Members this node has seen live at least once (see [`MemberSnapshot::was_live`]).
    ever_live: Arc<Mutex<HashSet<ChitchatId>>>,
    self_id: String,
    gossip_interval: Duration,
    views: watch::Sender<Arc<ClusterView>>,
}

impl Membership {
    /// Joins the cluster through `transport` and publishes `identity` and `load`.
    pub async fn start(
        config: MembershipConfig,
        identity: &NodeIdentity,
        load: NodeLoad,
        transport: &dyn Transport,
    ) -> Result<Membership, MembershipError> {
        // The first sample of a new peer is measured against this prior; chitchat's 5 s
        // default would make a just-joined node take far longer to be declared dead.
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            initial_interval: config.gossip_interval,
            dead_node_grace_period: config.dead_node_grace_period,
            ..FailureDetectorConfig::default()
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                config.node_id.clone(),
                config.generation,
                config.advertise_addr,
            ),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen_addr,
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config,
            marked_for_deletion_grace_period: config.dead_node_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let initial = vec![
            (IDENTITY_KEY.to_string(), gossip::encode(identity)),
            (LOAD_KEY.to_string(), gossip::encode(&load)),
        ];
        let handle = chitchat::spawn_chitchat(chitchat_config, initial, transport)
            .await
            .map_err(|source| MembershipError::Start {
                addr: config.listen_addr,
                source,
            })?;
        let (views, _) = watch::channel(Arc::new(ClusterView::default()));
        let membership = Membership {
            handle,
            ever_live: Arc::default(),
            self_id: config.node_id,
            gossip_interval: config.gossip_interval,
            views,
        };
        membership.spawn_view_refresher().await;
        Ok(membership)
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// Rebuilds the typed view whenever chitchat reports a change in live members or in
    /// their keys. Views are built only while someone holds a subscription.
    async fn spawn_view_refresher(&self) {
        let chitchat = self.handle.chitchat();
        let mut changes = chitchat.lock().await.live_nodes_watcher();
        let views = self.views.clone();
        let self_id = self.self_id.clone();
        let ever_live = self.ever_live.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                // Every change of the live set passes here, so no member goes live unseen.
                let live_ids: Vec<ChitchatId> =
                    changes.borrow_and_update().keys().cloned().collect();
                ever_live.lock().await.extend(live_ids);
                if views.receiver_count() == 0 {
                    continue;
                }
                let mut seen = ever_live.lock().await;
                let state = chitchat.lock().await;
                let members = snapshot_members(&state, &mut seen);
                drop(state);
                drop(seen);
                let view = ClusterView::build(&self_id, members);
                views.send_if_modified(|current| {
                    let changed = **current != view;
                    if changed {
                        *current = Arc::new(view);
                    }
                    changed
                });
            }
        });
    }

    /// The current view, computed now.
    pub async fn view(&self) -> ClusterView {
        let chitchat = self.handle.chitchat();
        let mut seen = self.ever_live.lock().await;
        let state = chitchat.lock().await;
        let members = snapshot_members(&state, &mut seen);
        drop(state);
        ClusterView::build(&self.self_id, members)
    }

    /// A stream of views, starting with the current one (so a subscriber misses nothing).
    pub async fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        let receiver = self.views.subscribe();
        self.views.send_replace(Arc::new(self.view().await));
        receiver
    }

    pub async fn set_load(&self, load: &NodeLoad) {
        self.set_key(LOAD_KEY, gossip::encode(load)).await;
    }

    pub async fn publish_container(&self, record: &ContainerRecord) {
        self.set_key(&gossip::container_key(&record.id), gossip::encode(record))
            .await;
    }

    pub async fn remove_container(&self, container_id: &str) {
        self.delete_key(&gossip::container_key(container_id)).await;
    }

    pub async fn publish_app(&self, record: &AppRecord) {
        self.set_key(&gossip::app_key(&record.name), gossip::encode(record))
            .await;
    }

    pub async fn unpublish_app(&self, app: &str) {
        self.delete_key(&gossip::app_key(app)).await;
    }

    /// A tenant or token record, under its own key (the record itself, untagged).
    pub async fn publish_tenancy(&self, record: &TenancyRecord) {
        let value = match record {
            TenancyRecord::Tenant(tenant) => gossip::encode(tenant),
            TenancyRecord::Token(token) => gossip::encode(token),
        };
        self.set_key(&record.key(), value).await;
    }

    /// Stops publishing the tenancy record under `key` ([`TenancyRecord::key`]).
    pub async fn unpublish_tenancy(&self, key: &str) {
        self.delete_key(key).await;
    }

    pub async fn publish_failure(&self, failure: &RolloutFailure) {
        self.set_key(&gossip::failure_key(&failure.app), gossip::encode(failure))
            .await;
    }

    /// Announces (or withdraws) that this node is drained by an operator.
    pub async fn set_draining(&self, draining: bool) {
        if draining {
            self.set_key(gossip::DRAINING_KEY, "true".to_string()).await;
        } else {
            self.delete_key(gossip::DRAINING_KEY).await;
        }
    }

    pub async fn clear_failure(&self, app: &str) {
        self.delete_key(&gossip::failure_key(app)).await;
    }

    async fn delete_key(&self, key: &str) {
        self.handle
            .with_chitchat(|chitchat| {
                let state = chitchat.self_node_state();
                if state.get(key).is_some() {
                    state.delete(key);
                }
            })
            .await;
    }

    async fn set_key(&self, key: &str, value: String) {
        self.handle
            .with_chitchat(|chitchat| {
                let state = chitchat.self_node_state();
                // Writing an unchanged value would still bump its version and cost a delta.
                if state.get(key) != Some(value.as_str()) {
                    state.set(key, &value);
                }
            })
            .await;
    }

    /// A peer's current value for `key`, if this node has heard it.
    pub async fn peer_value(&self, node_id: &str, key: &str) -> Option<String> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        chitchat
            .node_states()
            .iter()
            .filter(|(id, _)| &*id.node_id == node_id)
            .max_by_key(|(id, _)| id.generation_id)
            .and_then(|(_, state)| state.get(key).map(str::to_string))
    }

    /// Gossip addresses of the members this node currently believes live, self excluded.
    pub async fn live_peer_addrs(&self) -> HashSet<SocketAddr> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let self_id = chitchat.self_chitchat_id().clone();
        chitchat
            .live_nodes()
            .filter(|id| **id != self_id)
            .map(|id| id.gossip_advertise_addr)
            .collect()
    }

    /// Starts a gossip exchange with `addr` now (used to reach seeds found later by DNS).
    pub fn gossip_to(&self, addr: SocketAddr) {
        if let Err(err) = self.handle.gossip(addr) {
            warn!(%addr, error = %err, "cannot gossip: membership stopped");
        }
    }

    /// Leaves gracefully: announces the departure, pushes it to every live peer for a few
    /// rounds so they learn it before the failure detector would, then stops.
    pub async fn leave(&self) {
        self.set_key(LEAVING_KEY, "1".to_string()).await;
        for _ in 0..3 {
            for addr in self.live_peer_addrs().await {
                self.gossip_to(addr);
            }
            tokio::time::sleep(self.gossip_interval / 2).await;
        }
        info!(node_id = %self.self_id, "left the cluster");
        self.shutdown().await;
    }

    /// Stops gossiping at once, without telling peers.
    pub async fn shutdown(&self) {
        if self.handle.initiate_shutdown().is_err() {
            return;
        }
        if let Err(err) = self.handle.termination_watcher().await {
            warn!(error = %err, "gossip server stopped with an error");
        }
    }
}

fn snapshot_members(
    chitchat: &chitchat::Chitchat,
    ever_live: &mut HashSet<ChitchatId>,
) -> Vec<MemberSnapshot> {
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    ever_live.extend(live.iter().map(|id| (*id).clone()));
    // Forget members chitchat itself has forgotten.
    ever_live.retain(|id| chitchat.node_state(id).is_some());
    chitchat
        .node_states()
        .iter()
        .map(|(id, state)| MemberSnapshot {
            node_id: id.node_id.to_string(),
            generation: id.generation_id,
            gossip_addr: id.gossip_advertise_addr,
            is_live: live.contains(id),
            was_live: ever_live.contains(id),
            key_values: state
                .key_values()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        })
        .collect()
}
