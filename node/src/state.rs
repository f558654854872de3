//! What the agent's tasks share: the catalog, the blob store, the runtime, the admission
//! ledger and the membership. Each field has one owner task that writes it; the others
//! read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::catalog::{AppRecord, Stamp};
use tokio::sync::{Mutex, Notify};
use tracing::warn;

use crate::bundle::{BlobStore, S3Store};
use crate::cluster::membership::{ClusterView, Membership, TransportStats};
use crate::config::AgentConfig;
use crate::control::catalog::{Catalog, CatalogStore, StoreError};
use crate::control::hlc::Hlc;
use crate::control::scheduler::Admission;
use crate::workload::runtime::RuntimeDriver;

pub struct AgentState {
    pub config: AgentConfig,
    pub membership: Arc<Membership>,
    pub stats: Arc<TransportStats>,
    pub catalog: Mutex<Catalog>,
    pub catalog_store: CatalogStore,
    pub hlc: Mutex<Hlc>,
    pub blobs: BlobStore,
    /// With `--store s3://...`, the bucket every bundle is kept in (local copies are caches).
    pub s3: Option<S3Store>,
    pub runtime: Arc<dyn RuntimeDriver>,
    pub admission: Mutex<Admission>,
    /// Replicas this node runs, by placement id (owned by the supervisor).
    pub replicas: Mutex<BTreeMap<String, crate::workload::supervisor::ReplicaHandle>>,
    /// Woken when the catalog changes, so schedulers and supervisors act at once.
    pub catalog_changed: Notify,
    /// Highest release number this node handed out per app, as the app's first keeper.
    pub reserved_numbers: Mutex<BTreeMap<String, u64>>,
    /// Token this node presents to other nodes.
    pub node_token: String,
    /// Drained by an operator: refuses new placements (see [`crate::operations::changes::drain`]).
    pub draining: std::sync::atomic::AtomicBool,
}

impl AgentState {
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.config.data_dir.join("uploads")
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.config.data_dir.join("releases")
    }

    /// A client for another node's API, authenticated as a node.
    pub fn peer(&self, api_addr: SocketAddr) -> Option<api::Client> {
        api::Client::new(&api_addr.to_string())
            .ok()
            .map(|client| client.with_token(Some(self.node_token.clone())))
    }

    pub async fn view(&self) -> ClusterView {
        self.membership.view().await
    }

    /// The next release number of `app`, never handed out twice by this node: the app's
    /// first keeper answers for everyone, so concurrent deploys on different nodes get
    /// different numbers.
    pub async fn reserve_release_number(&self, app: &str) -> u64 {
        let from_catalog = self.catalog.lock().await.next_release_number(app);
        let mut reserved = self.reserved_numbers.lock().await;
        let number = reserved
            .get(app)
            .map_or(from_catalog, |last| from_catalog.max(last + 1));
        reserved.insert(app.to_string(), number);
        number
    }

    /// A fresh HLC stamp for a local catalog write.
    pub async fn stamp(&self) -> Stamp {
        self.hlc.lock().await.tick(unix_ms())
    }

    /// Merges `record` into the catalog, on disk first (durable when this returns Ok),
    /// then in memory. Returns whether it changed the catalog; an error leaves both as
    /// they were, so a retry of the same record is not mistaken for a duplicate.
    pub async fn merge_record(&self, record: AppRecord) -> Result<bool, StoreError> {
        self.hlc.lock().await.observe(&record.stamp);
        let mut catalog = self.catalog.lock().await;
        let newer = catalog
            .record(&record.name)
            .is_none_or(|known| record.supersedes(known));
        let has_new_release = record.release.as_ref().is_some_and(|release| {
            !catalog
                .releases(&record.name)
                .iter()
                .any(|r| r.number == release.number)
        });
        if !newer && !has_new_release {
            return Ok(false);
        }
        let release = record.release.clone();
        let name = record.name.clone();
        let saved = if newer {
            self.catalog_store.save(&record)
        } else {
            release.as_ref().map_or(Ok(()), |release| {
                self.catalog_store.save_release(&name, release)
            })
        };
        if let Err(err) = saved {
            warn!(app = %name, error = %err, "cannot persist app record");
            return Err(err);
        }
        let changed = catalog.merge(record);
        drop(catalog);
        if changed {
            // One waiter (the scheduler); a stored permit is not lost if it is busy.
            self.catalog_changed.notify_one();
        }
        Ok(changed)
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
