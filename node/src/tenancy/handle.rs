//! The tenancy directory as the agent's tasks share it: lock-free snapshots for the API's
//! token checks (every request makes one), and one writer at a time, on disk first.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use proto::tenancy::{Isolation, TenancyRecord, TokenText, Usage};

use crate::control::catalog::StoreError;
use crate::control::hlc::unix_ms;
use crate::tenancy::directory::{Directory, Grant, QuotaExceeded, Refusal};
use crate::tenancy::reservations::Reservations;
use crate::tenancy::store::TenancyStore;

pub struct TenancyHandle {
    directory: ArcSwap<Directory>,
    store: TenancyStore,
    /// Held from deciding a write until it is visible, so writes land in decision order.
    write_order: tokio::sync::Mutex<()>,
    /// The quota holds this node granted as some tenants' quota keeper.
    reservations: tokio::sync::Mutex<Reservations>,
}

impl TenancyHandle {
    /// Opens (or creates) the redb file at `path` and loads what it holds.
    pub fn open(path: &Path) -> Result<TenancyHandle, StoreError> {
        let store = TenancyStore::open(path)?;
        let directory = store.load()?;
        Ok(TenancyHandle {
            directory: ArcSwap::from_pointee(directory),
            store,
            write_order: tokio::sync::Mutex::new(()),
            reservations: tokio::sync::Mutex::default(),
        })
    }

    /// The directory as it is now.
    pub fn snapshot(&self) -> Arc<Directory> {
        self.directory.load_full()
    }

    /// Who `token` is now.
    pub fn authenticate(&self, token: &TokenText) -> Result<Grant, Refusal> {
        self.directory.load().authenticate(token, unix_ms())
    }

    /// How `tenant`'s replicas run (the administrator's apps: plain containers).
    pub fn isolation(&self, tenant: Option<&str>) -> Isolation {
        tenant
            .and_then(|tenant| {
                self.directory
                    .load()
                    .tenant(tenant)
                    .map(|record| record.isolation)
            })
            .unwrap_or_default()
    }

    /// Reserves `asked` for `app` of `tenant` against its quota (this node is the tenant's
    /// quota keeper; `recorded`: what the catalog says the tenant's apps reserve).
    pub async fn reserve(
        &self,
        tenant: &str,
        app: &str,
        asked: Usage,
        recorded: &BTreeMap<String, Usage>,
    ) -> Result<(), QuotaExceeded> {
        let quota = self
            .directory
            .load()
            .tenant(tenant)
            .map(|record| record.quota)
            .unwrap_or_default();
        self.reservations
            .lock()
            .await
            .reserve(tenant, app, asked, &quota, recorded, unix_ms())
    }

    /// Merges `record`, on disk first (durable when this returns Ok), then in memory.
    /// Returns whether it changed anything.
    pub async fn merge(&self, record: TenancyRecord) -> Result<bool, StoreError> {
        let _order = self.write_order.lock().await;
        if !self.directory.load().is_news(&record) {
            return Ok(false);
        }
        self.store.save(&record)?;
        let mut next = Directory::clone(&self.directory.load());
        let changed = next.merge(record);
        self.directory.store(Arc::new(next));
        Ok(changed)
    }
}
