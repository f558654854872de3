//! The tenants and tokens on disk (`<data dir>/tenancy.redb`), one JSON record per key.
//! Only digests of token secrets are ever written.

use std::path::Path;

use proto::tenancy::TenancyRecord;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::control::catalog::StoreError;
use crate::tenancy::directory::Directory;

/// Keyed by the record's gossip key (`v1:tenant:acme`, `v1:token:<id>`).
const RECORDS: TableDefinition<&str, &str> = TableDefinition::new("tenancy");

pub struct TenancyStore {
    db: Database,
}

impl TenancyStore {
    pub fn open(path: &Path) -> Result<TenancyStore, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        Ok(TenancyStore { db })
    }

    pub fn load(&self) -> Result<Directory, StoreError> {
        let txn = self.db.begin_read()?;
        let mut directory = Directory::default();
        for entry in txn.open_table(RECORDS)?.iter()? {
            let (_, value) = entry?;
            directory.merge(serde_json::from_str::<TenancyRecord>(value.value())?);
        }
        Ok(directory)
    }

    /// Durable when it returns.
    pub fn save(&self, record: &TenancyRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(RECORDS)?.insert(
            record.key().as_str(),
            serde_json::to_string(record)?.as_str(),
        )?;
        txn.commit()?;
        Ok(())
    }
}
