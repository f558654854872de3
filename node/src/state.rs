//! What the agent's tasks share: the catalog, the blob store, the runtime, the admission
//! ledger and the membership. Each field has one owner task that writes it; the others
//! read.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::catalog::{AppRecord, Stamp};
use tokio::sync::{Mutex, Notify};
use tracing::warn;

use crate::bundle::{BlobStore, S3Store};
use crate::cluster::membership::{ClusterView, Membership, TransportStats};
use crate::config::AgentConfig;
use crate::control::catalog::{Catalog, CatalogStore, Persist, StoreError};
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
    pub replicas: Mutex<BTreeMap<String, crate::workload::replica::ReplicaHandle>>,
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
    /// they were, so a retry of the same record is not mistaken for a duplicate. Readers
    /// of the catalog never wait for the disk (see [`merge_in_order`]).
    pub async fn merge_record(&self, record: AppRecord) -> Result<bool, StoreError> {
        self.hlc.lock().await.observe(&record.stamp);
        let changed = merge_in_order(&self.catalog, &self.catalog_store, record).await?;
        if changed {
            // One waiter (the scheduler); a stored permit is not lost if it is busy.
            self.catalog_changed.notify_one();
        }
        Ok(changed)
    }
}

/// A write of what a merge needs on disk.
pub type PersistFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Where merges persist: the redb file in the agent, wrappers in tests (a slow disk, a
/// failing one).
pub trait DurableCatalog: Sync {
    /// Held from deciding a write to applying it in memory ([`merge_in_order`]).
    fn write_order(&self) -> &Mutex<()>;
    /// Writes what `needed` says of `record`; durable when it returns Ok.
    fn persist<'a>(&'a self, record: &'a AppRecord, needed: Persist) -> PersistFuture<'a>;
}

impl DurableCatalog for CatalogStore {
    fn write_order(&self) -> &Mutex<()> {
        CatalogStore::write_order(self)
    }

    fn persist<'a>(&'a self, record: &'a AppRecord, needed: Persist) -> PersistFuture<'a> {
        // redb writes synchronously, as merges always did; the point here is only that no
        // catalog reader waits for it.
        Box::pin(async move { CatalogStore::persist(self, record, needed) })
    }
}

/// Merges `record` into `catalog` after `store` wrote what it needs, holding the catalog
/// lock only to decide and to apply, never across the write. The store's write-order lock
/// is held from the decision to the application, so two merges (of the same app or not)
/// write in the order they decided, and a decision still holds when it is applied: every
/// change to the catalog goes through here. A failed write leaves the catalog as it was.
pub async fn merge_in_order(
    catalog: &Mutex<Catalog>,
    store: &impl DurableCatalog,
    record: AppRecord,
) -> Result<bool, StoreError> {
    let _turn = store.write_order().lock().await;
    let needed = catalog.lock().await.persist_needed(&record);
    if needed == Persist::Nothing {
        return Ok(false);
    }
    if let Err(err) = store.persist(&record, needed).await {
        warn!(app = %record.name, error = %err, "cannot persist app record");
        return Err(err);
    }
    let mut catalog = catalog.lock().await;
    debug_assert_eq!(
        catalog.persist_needed(&record),
        needed,
        "the catalog changed outside merge_in_order"
    );
    Ok(catalog.merge(record))
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::sync::Arc;

    use proto::catalog::{BlobRef, Release};
    use proto::manifest::Manifest;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use tokio::sync::oneshot;

    use super::*;

    fn record(wall_ms: u64, release: u64) -> AppRecord {
        let manifest = Manifest::parse("name = \"web\"\ncmd = \"run\"", None).unwrap();
        AppRecord {
            name: "web".into(),
            stamp: Stamp {
                wall_ms,
                counter: 0,
                node_id: "a".into(),
            },
            deleted: false,
            release: Some(Release {
                number: release,
                bundle: BlobRef {
                    sha256: "ab".repeat(32),
                    size: 1,
                },
                manifest,
                created_at_ms: wall_ms,
                created_on: "a".into(),
                note: None,
            }),
            replicas: 1,
            failed: Default::default(),
        }
    }

    fn current(catalog: &Catalog) -> Option<u64> {
        catalog.record("web")?.release.as_ref().map(|r| r.number)
    }

    fn store() -> (CatalogStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::open(&dir.path().join("catalog.redb")).unwrap();
        (store, dir)
    }

    /// The real store, yielding before each write so concurrent merges interleave.
    struct Yielding(CatalogStore);

    impl DurableCatalog for Yielding {
        fn write_order(&self) -> &Mutex<()> {
            self.0.write_order()
        }

        fn persist<'a>(&'a self, record: &'a AppRecord, needed: Persist) -> PersistFuture<'a> {
            Box::pin(async move {
                tokio::task::yield_now().await;
                CatalogStore::persist(&self.0, record, needed)
            })
        }
    }

    /// A disk that fails every write.
    struct Failing(Mutex<()>);

    impl DurableCatalog for Failing {
        fn write_order(&self) -> &Mutex<()> {
            &self.0
        }

        fn persist<'a>(&'a self, _: &'a AppRecord, _: Persist) -> PersistFuture<'a> {
            Box::pin(async {
                let broken = serde_json::from_str::<u8>("disk on fire").unwrap_err();
                Err(StoreError::Corrupt(broken))
            })
        }
    }

    /// A slow disk: a write says it started, then waits until the test lets it finish.
    struct Gated {
        order: Mutex<()>,
        entered: Mutex<Option<oneshot::Sender<()>>>,
        release: Mutex<Option<oneshot::Receiver<()>>>,
    }

    impl DurableCatalog for Gated {
        fn write_order(&self) -> &Mutex<()> {
            &self.order
        }

        fn persist<'a>(&'a self, _: &'a AppRecord, _: Persist) -> PersistFuture<'a> {
            Box::pin(async move {
                if let Some(entered) = self.entered.lock().await.take() {
                    entered.send(()).unwrap();
                }
                let release = self.release.lock().await.take();
                if let Some(release) = release {
                    release.await.unwrap();
                }
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_merges_leave_the_newest_record_on_disk_and_in_memory() {
        let (inner, _dir) = store();
        let store = Arc::new(Yielding(inner));
        let catalog = Arc::new(Mutex::new(Catalog::default()));
        let mut order: Vec<u64> = (1..=40).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
        let mut tasks = tokio::task::JoinSet::new();
        for n in order {
            let (store, catalog) = (store.clone(), catalog.clone());
            tasks.spawn(async move {
                merge_in_order(&catalog, &*store, record(n * 10, n))
                    .await
                    .unwrap()
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        let in_memory = catalog.lock().await.clone();
        let on_disk = store.0.load().unwrap();
        assert_eq!(current(&in_memory), Some(40));
        assert_eq!(current(&on_disk), Some(40), "the disk agrees with memory");
        assert_eq!(in_memory.releases("web").len(), 40);
        assert_eq!(on_disk.releases("web").len(), 40);
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_catalog_as_it_was_and_a_retry_applies() {
        let catalog = Mutex::new(Catalog::default());
        let failing = Failing(Mutex::new(()));
        assert!(
            merge_in_order(&catalog, &failing, record(10, 1))
                .await
                .is_err()
        );
        assert_eq!(current(&*catalog.lock().await), None);
        let (store, _dir) = store();
        let retried = merge_in_order(&catalog, &store, record(10, 1))
            .await
            .unwrap();
        assert!(retried, "the retry is not taken for a duplicate");
        assert_eq!(current(&store.load().unwrap()), Some(1));
    }

    #[tokio::test]
    async fn readers_do_not_wait_while_a_write_is_in_flight() {
        let (entered_tx, entered_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        let store = Arc::new(Gated {
            order: Mutex::new(()),
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(Some(release_rx)),
        });
        let catalog = Arc::new(Mutex::new(Catalog::default()));
        let writer = {
            let (store, catalog) = (store.clone(), catalog.clone());
            tokio::spawn(async move { merge_in_order(&catalog, &*store, record(10, 1)).await })
        };
        entered_rx.await.unwrap();
        {
            let read = catalog
                .try_lock()
                .expect("the catalog is free while the write is in flight");
            assert_eq!(current(&read), None, "not applied before it is durable");
        }
        assert!(
            store.order.try_lock().is_err(),
            "a second merge would wait its turn"
        );
        release_tx.send(()).unwrap();
        assert!(writer.await.unwrap().unwrap());
        assert_eq!(current(&*catalog.lock().await), Some(1));
    }
}
