//! The agent's handles, one per concern, each owning its state behind its own methods (no
//! lock is public): the membership and the cluster view, calls to peers, the catalog, the
//! tenants and tokens, the bundles, admission control and the replicas this node runs. The
//! loops and services of the agent are given the handles they use; a new feature adds a
//! handle here, not a field with a lock in it.

use std::sync::Arc;

use crate::audit_log::AuditLog;
use crate::build::builds::Builds;
use crate::bundle::Bundles;
use crate::cluster::membership::{ClusterView, Membership, TransportStats};
use crate::cluster::peers::Peers;
use crate::config::AgentConfig;
use crate::control::catalog_handle::CatalogHandle;
use crate::dns::DnsCounters;
use crate::events::EventsHandle;
use crate::metrics::AgentMetrics;
use crate::tenancy::TenancyHandle;
use crate::workload::admission_control::AdmissionControl;
use crate::workload::replica::Replicas;

#[derive(Clone)]
pub struct AgentHandles {
    pub config: Arc<AgentConfig>,
    pub membership: Arc<Membership>,
    /// Counters of the gossip transport (datagrams sealed, rejected...).
    pub gossip_stats: Arc<TransportStats>,
    pub peers: Peers,
    pub catalog: Arc<CatalogHandle>,
    /// Tenants and their tokens.
    pub tenancy: Arc<TenancyHandle>,
    /// The mutating API calls this node served.
    pub audit: Arc<AuditLog>,
    /// The cluster's events as this node saw them.
    pub events: Arc<EventsHandle>,
    /// What `/metrics` shows of this node.
    pub metrics: Arc<AgentMetrics>,
    pub bundles: Arc<Bundles>,
    pub admission: Arc<AdmissionControl>,
    pub replicas: Arc<Replicas>,
    /// Builds from source, and the Docker client images are loaded with.
    pub builds: Arc<Builds>,
    /// What the DNS server counted; `None`: this node answers no DNS.
    pub dns: Option<Arc<DnsCounters>>,
}

impl AgentHandles {
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The cluster as this node sees it. Every caller of a peer looks here first, so this
    /// is where [`Peers`] learns which peers serve TLS.
    pub async fn view(&self) -> ClusterView {
        let view = self.membership.view().await;
        self.peers.learn(&view);
        view
    }
}
