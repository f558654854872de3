//! The catalog as the agent's tasks share it: the one place that merges app records (on
//! disk first, then in memory, with the hybrid logical clock observing every stamp), hands
//! out stamps and release numbers, and wakes whoever waits for a change. Its locks are
//! private: readers get a snapshot or run a closure on the catalog, never hold it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use proto::catalog::{AppRecord, Release, Stamp};
use tokio::sync::futures::Notified;
use tokio::sync::{Mutex, Notify};
use tracing::warn;

use crate::control::catalog::{Catalog, CatalogStore, Persist, StoreError};
use crate::control::hlc::{Hlc, Observed, unix_ms};

pub struct CatalogHandle {
    catalog: Mutex<Catalog>,
    store: CatalogStore,
    hlc: Mutex<Hlc>,
    /// Woken when the catalog changes, so the reconciler driver acts at once.
    changed: Notify,
    /// Highest release number this node handed out per app, as the app's first keeper.
    reserved_numbers: Mutex<BTreeMap<String, u64>>,
}

impl CatalogHandle {
    /// Opens (or creates) the redb file at `path` and loads what it holds.
    pub fn open(path: &Path, node_id: &str) -> Result<CatalogHandle, StoreError> {
        let store = CatalogStore::open(path)?;
        let catalog = store.load()?;
        Ok(CatalogHandle {
            catalog: Mutex::new(catalog),
            store,
            hlc: Mutex::new(Hlc::new(node_id)),
            changed: Notify::new(),
            reserved_numbers: Mutex::default(),
        })
    }

    /// Runs `read` on the catalog as it is now (under its lock: keep it short, no I/O).
    pub async fn read<R>(&self, read: impl FnOnce(&Catalog) -> R) -> R {
        read(&*self.catalog.lock().await)
    }

    /// Every record, deleted ones included, as they are now.
    pub async fn records(&self) -> Vec<AppRecord> {
        self.read(|catalog| catalog.records().cloned().collect())
            .await
    }

    /// The record of `app`, deleted or not.
    pub async fn record(&self, app: &str) -> Option<AppRecord> {
        self.read(|catalog| catalog.record(app).cloned()).await
    }

    /// The record of `app` unless it was destroyed.
    pub async fn live_record(&self, app: &str) -> Option<AppRecord> {
        self.read(|catalog| {
            catalog
                .record(app)
                .filter(|record| !record.deleted)
                .cloned()
        })
        .await
    }

    /// Every release of `app` the catalog holds, oldest first.
    pub async fn releases(&self, app: &str) -> Vec<Release> {
        self.read(|catalog| catalog.releases(app).into_iter().cloned().collect())
            .await
    }

    /// Resolves at the next change after the last one waited for (one stored permit: a
    /// change while nobody waits is not lost). One waiter: the reconciler driver.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Wakes the waiter of [`changed`](Self::changed) without a catalog change (a drain
    /// changes what the reconcilers decide, too).
    pub fn wake(&self) {
        self.changed.notify_one();
    }

    /// Whether a write to the disk would go through now (an empty transaction's commit).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.store.check_writable()
    }

    /// The next release number of `app`, never handed out twice by this node: the app's
    /// first keeper answers for everyone, so concurrent deploys on different nodes get
    /// different numbers.
    pub async fn reserve_release_number(&self, app: &str) -> u64 {
        let from_catalog = self.read(|catalog| catalog.next_release_number(app)).await;
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
    pub async fn merge(&self, record: AppRecord) -> Result<bool, StoreError> {
        self.observe(&record.stamp).await;
        let changed = merge_in_order(&self.catalog, &self.store, record).await?;
        if changed {
            self.changed.notify_one();
        }
        Ok(changed)
    }

    /// Later local stamps order after `seen`, unless it is too far ahead of our clock: a
    /// node with a clock years ahead must not freeze everyone's stamps.
    async fn observe(&self, seen: &Stamp) {
        let mut hlc = self.hlc.lock().await;
        if let Observed::TooFarAhead { ahead_ms } = hlc.observe_at(seen, unix_ms()) {
            warn!(
                node = %seen.node_id,
                ahead_ms,
                max_drift_ms = hlc.max_drift_ms(),
                "peer stamp is too far ahead of our clock; not adopted (check that node's clock)"
            );
        }
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
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::sync::Arc;

    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use tokio::sync::oneshot;

    use super::*;

    fn record(wall_ms: u64, release: u64) -> AppRecord {
        crate::control::catalog::tests::record("web", wall_ms, "a", release)
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

    #[tokio::test]
    async fn a_merge_is_durable_wakes_the_waiter_and_later_stamps_order_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        let handle = CatalogHandle::open(&path, "b").unwrap();
        let now = unix_ms();
        let waiter = handle.changed();
        assert!(handle.merge(record(now + 5_000, 1)).await.unwrap());
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("a merge that changed the catalog wakes the waiter");
        assert!(
            !handle.merge(record(now + 5_000, 1)).await.unwrap(),
            "a duplicate"
        );
        let stamp = handle.stamp().await;
        assert!(
            stamp.wall_ms >= now + 5_000,
            "a peer stamp 5 s ahead is adopted: {stamp:?}"
        );
        assert_eq!(handle.live_record("web").await.map(|r| r.replicas), Some(1));
        assert_eq!(handle.releases("web").await.len(), 1);
        assert_eq!(handle.reserve_release_number("web").await, 2);
        assert_eq!(handle.reserve_release_number("web").await, 3, "never twice");
        drop(handle);
        let reopened = CatalogHandle::open(&path, "b").unwrap();
        assert!(reopened.record("web").await.is_some(), "on disk before Ok");
    }

    #[tokio::test]
    async fn a_stamp_far_ahead_is_merged_but_does_not_drag_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let handle = CatalogHandle::open(&dir.path().join("catalog.redb"), "b").unwrap();
        let years_ahead = unix_ms() + 10 * 365 * 24 * 3600 * 1000;
        assert!(handle.merge(record(years_ahead, 1)).await.unwrap());
        let stamp = handle.stamp().await;
        assert!(
            stamp.wall_ms < years_ahead,
            "the clock stays near local time: {stamp:?}"
        );
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
