//! The app catalog every node holds: pure merge rules over [`AppRecord`]s, plus the redb
//! file that keeps it across restarts.
//!
//! Merge is last-writer-wins per app on the record's HLC [`Stamp`]. Every release ever
//! seen is kept in a history, so release numbers are never reused, even after an app is
//! destroyed and deployed again.
//!
//! Gossip volume stays bounded: an app's record is published only by its *keepers*, the 3
//! live nodes that rendezvous hashing picks for it (plus, briefly, the node that accepted a
//! change), not by every node. Since chitchat sends only deltas, a stable catalog costs
//! nothing per round beyond the digest.

use std::collections::BTreeMap;
use std::path::Path;

use proto::catalog::{AppRecord, Release};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

const APPS: TableDefinition<&str, &str> = TableDefinition::new("apps");
const RELEASES: TableDefinition<&str, &str> = TableDefinition::new("releases");

/// How many nodes keep (store and publish) each app record and bundle.
pub const KEEPERS: usize = 3;

#[derive(Debug, Default, Clone)]
pub struct Catalog {
    apps: BTreeMap<String, AppRecord>,
    releases: BTreeMap<(String, u64), Release>,
}

impl Catalog {
    /// Applies `record` if it is newer than what is known. Returns whether it changed.
    pub fn merge(&mut self, record: AppRecord) -> bool {
        if let Some(release) = &record.release {
            self.releases
                .entry((record.name.clone(), release.number))
                .or_insert_with(|| release.clone());
        }
        match self.apps.get(&record.name) {
            Some(known) if !record.supersedes(known) => false,
            _ => {
                self.apps.insert(record.name.clone(), record);
                true
            }
        }
    }

    /// The record of `app`, tombstones included.
    pub fn record(&self, app: &str) -> Option<&AppRecord> {
        self.apps.get(app)
    }

    /// Apps that exist (not destroyed).
    pub fn apps(&self) -> impl Iterator<Item = &AppRecord> {
        self.apps.values().filter(|record| !record.deleted)
    }

    /// Every record, tombstones included.
    pub fn records(&self) -> impl Iterator<Item = &AppRecord> {
        self.apps.values()
    }

    pub fn next_release_number(&self, app: &str) -> u64 {
        let in_history = self
            .releases
            .range((app.to_string(), 0)..=(app.to_string(), u64::MAX))
            .map(|((_, number), _)| *number)
            .max();
        let current = self
            .apps
            .get(app)
            .and_then(|record| record.release.as_ref())
            .map(|release| release.number);
        in_history.max(current).unwrap_or(0) + 1
    }

    /// What must be on disk before `record` may be merged: the record if it is newer than
    /// the known one, else its release if the history lacks it, else nothing.
    pub fn persist_needed(&self, record: &AppRecord) -> Persist {
        let newer = self
            .record(&record.name)
            .is_none_or(|known| record.supersedes(known));
        if newer {
            return Persist::Record;
        }
        let has_new_release = record.release.as_ref().is_some_and(|release| {
            !self
                .releases
                .contains_key(&(record.name.clone(), release.number))
        });
        if has_new_release {
            Persist::ReleaseOnly
        } else {
            Persist::Nothing
        }
    }

    /// Every release of `app` this node has seen, oldest first.
    pub fn releases(&self, app: &str) -> Vec<&Release> {
        self.releases
            .range((app.to_string(), 0)..=(app.to_string(), u64::MAX))
            .map(|(_, release)| release)
            .collect()
    }
}

/// What merging a record needs written to disk first ([`Catalog::persist_needed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Already known: the merge changes nothing.
    Nothing,
    /// Newer than the known record: [`CatalogStore::save`].
    Record,
    /// Older, but its release is new to the history: [`CatalogStore::save_release`].
    ReleaseOnly,
}

/// The `count` nodes that keep `app`: highest-random-weight (rendezvous) hashing, so every
/// node computes the same keepers from the same live set, and a node joining or leaving
/// moves only the apps it gains or loses.
pub fn keepers(app: &str, live_nodes: &[&str], count: usize) -> Vec<String> {
    let mut weighted: Vec<([u8; 32], &str)> = live_nodes
        .iter()
        .map(|node| {
            let mut hasher = Sha256::new();
            hasher.update(app.as_bytes());
            hasher.update([0]);
            hasher.update(node.as_bytes());
            (hasher.finalize().into(), *node)
        })
        .collect();
    weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    weighted
        .into_iter()
        .take(count)
        .map(|(_, node)| node.to_string())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("catalog database error: {0}")]
    Db(#[from] redb::Error),
    #[error("catalog database holds an invalid record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

macro_rules! db_err {
    ($($source:ty),*) => {$(
        impl From<$source> for StoreError {
            fn from(err: $source) -> Self {
                StoreError::Db(err.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The catalog on disk (`<data dir>/catalog.redb`). Writes are durable when they return:
/// a node acknowledges holding a release only after this.
pub struct CatalogStore {
    db: Database,
    /// Held from deciding a write (against the in-memory catalog) until it is applied in
    /// memory, so writes land on disk in the order they were decided while readers of
    /// the in-memory catalog never wait for the disk.
    write_order: tokio::sync::Mutex<()>,
}

impl CatalogStore {
    pub fn open(path: &Path) -> Result<CatalogStore, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(APPS)?;
        txn.open_table(RELEASES)?;
        txn.commit()?;
        Ok(CatalogStore {
            db,
            write_order: tokio::sync::Mutex::new(()),
        })
    }

    /// The lock that orders writes: see [`crate::control::catalog_handle::merge_in_order`].
    pub fn write_order(&self) -> &tokio::sync::Mutex<()> {
        &self.write_order
    }

    /// Writes what `needed` says of `record`.
    pub fn persist(&self, record: &AppRecord, needed: Persist) -> Result<(), StoreError> {
        match (needed, &record.release) {
            (Persist::Record, _) => self.save(record),
            (Persist::ReleaseOnly, Some(release)) => self.save_release(&record.name, release),
            (Persist::ReleaseOnly, None) | (Persist::Nothing, _) => Ok(()),
        }
    }

    pub fn load(&self) -> Result<Catalog, StoreError> {
        let txn = self.db.begin_read()?;
        let mut catalog = Catalog::default();
        for entry in txn.open_table(RELEASES)?.iter()? {
            let (_, value) = entry?;
            let release: Release = serde_json::from_str(value.value())?;
            let key = value_key(&release);
            catalog.releases.insert(key, release);
        }
        for entry in txn.open_table(APPS)?.iter()? {
            let (_, value) = entry?;
            let record: AppRecord = serde_json::from_str(value.value())?;
            catalog.merge(record);
        }
        Ok(catalog)
    }

    /// Persists `record` as the app's current record (and its release in the history).
    /// Durable when it returns.
    pub fn save(&self, record: &AppRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut apps = txn.open_table(APPS)?;
            apps.insert(
                record.name.as_str(),
                serde_json::to_string(record)?.as_str(),
            )?;
            if let Some(release) = &record.release {
                insert_release(&mut txn.open_table(RELEASES)?, &record.name, release)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Whether the database still takes a durable write (a commit of an empty write
    /// transaction goes through the same fsync path as a real one).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(APPS)?;
        txn.commit()?;
        Ok(())
    }

    /// Persists a release in the history only.
    pub fn save_release(&self, app: &str, release: &Release) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        insert_release(&mut txn.open_table(RELEASES)?, app, release)?;
        txn.commit()?;
        Ok(())
    }
}

fn insert_release(
    table: &mut redb::Table<&str, &str>,
    app: &str,
    release: &Release,
) -> Result<(), StoreError> {
    let key = format!("{app}/{:020}", release.number);
    if table.get(key.as_str())?.is_none() {
        table.insert(key.as_str(), serde_json::to_string(release)?.as_str())?;
    }
    Ok(())
}

fn value_key(release: &Release) -> (String, u64) {
    (release.manifest.name.clone(), release.number)
}

#[cfg(test)]
pub(crate) mod tests {
    use proto::catalog::{BlobRef, Stamp};
    use proto::manifest::Manifest;

    use super::*;

    /// An app record with one release, stamped at `wall_ms` by `node`.
    pub(crate) fn record(app: &str, wall_ms: u64, node: &str, release: u64) -> AppRecord {
        let manifest = Manifest::parse(&format!("name = \"{app}\"\ncmd = \"run\""), None).unwrap();
        AppRecord {
            domain_claims: Default::default(),
            tenant: None,
            builds: Default::default(),
            name: app.into(),
            stamp: Stamp {
                wall_ms,
                counter: 0,
                node_id: node.into(),
            },
            deleted: false,
            release: Some(Release {
                config: None,
                image: None,
                number: release,
                bundle: BlobRef {
                    sha256: "ab".repeat(32),
                    size: 1,
                },
                manifest,
                created_at_ms: wall_ms,
                created_on: node.into(),
                note: None,
            }),
            replicas: 1,
            failed: Default::default(),
        }
    }

    #[test]
    fn last_writer_wins_in_any_order_of_arrival() {
        let older = record("web", 10, "a", 1);
        let newer = record("web", 20, "b", 2);
        let mut forward = Catalog::default();
        assert!(forward.merge(older.clone()));
        assert!(forward.merge(newer.clone()));
        let mut backward = Catalog::default();
        assert!(backward.merge(newer.clone()));
        assert!(!backward.merge(older));
        assert_eq!(forward.record("web"), backward.record("web"));
        assert_eq!(forward.record("web").unwrap().stamp.node_id, "b");
    }

    #[test]
    fn equal_clocks_are_broken_by_node_id_identically_everywhere() {
        let from_a = record("web", 10, "a", 1);
        let from_b = record("web", 10, "b", 1);
        let mut one = Catalog::default();
        one.merge(from_a.clone());
        one.merge(from_b.clone());
        let mut two = Catalog::default();
        two.merge(from_b);
        two.merge(from_a);
        assert_eq!(one.record("web").unwrap().stamp.node_id, "b");
        assert_eq!(two.record("web").unwrap().stamp.node_id, "b");
    }

    #[test]
    fn release_numbers_are_never_reused_even_after_destroy() {
        let mut catalog = Catalog::default();
        catalog.merge(record("web", 10, "a", 1));
        catalog.merge(record("web", 20, "a", 2));
        let mut tombstone = record("web", 30, "a", 2);
        tombstone.deleted = true;
        tombstone.release = None;
        catalog.merge(tombstone);
        assert_eq!(catalog.apps().count(), 0);
        assert_eq!(catalog.next_release_number("web"), 3);
        assert_eq!(catalog.releases("web").len(), 2);
        assert_eq!(catalog.next_release_number("other"), 1);
    }

    #[test]
    fn keepers_are_stable_and_move_only_when_their_node_goes() {
        let nodes = ["n1", "n2", "n3", "n4", "n5"];
        let keepers_all = keepers("web", &nodes, 3);
        assert_eq!(keepers_all.len(), 3);
        assert_eq!(
            keepers_all,
            keepers("web", &["n5", "n4", "n3", "n2", "n1"], 3)
        );
        let gone = keepers_all[0].clone();
        let remaining: Vec<&str> = nodes.iter().copied().filter(|n| *n != gone).collect();
        let after = keepers("web", &remaining, 3);
        assert!(keepers_all[1..].iter().all(|k| after.contains(k)));
    }

    #[test]
    fn what_to_persist_follows_the_merge_rules() {
        let mut catalog = Catalog::default();
        let first = record("web", 10, "a", 1);
        assert_eq!(catalog.persist_needed(&first), Persist::Record);
        catalog.merge(first.clone());
        assert_eq!(catalog.persist_needed(&first), Persist::Nothing);
        catalog.merge(record("web", 30, "a", 3));
        // Older than the known record, but release 2 is new to the history.
        assert_eq!(
            catalog.persist_needed(&record("web", 20, "a", 2)),
            Persist::ReleaseOnly
        );
        assert_eq!(
            catalog.persist_needed(&record("web", 40, "a", 4)),
            Persist::Record
        );
    }

    #[test]
    fn the_store_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        {
            let store = CatalogStore::open(&path).unwrap();
            store.save(&record("web", 10, "a", 1)).unwrap();
            store.save(&record("web", 20, "a", 2)).unwrap();
        }
        let store = CatalogStore::open(&path).unwrap();
        let catalog = store.load().unwrap();
        assert_eq!(
            catalog
                .record("web")
                .unwrap()
                .release
                .as_ref()
                .unwrap()
                .number,
            2
        );
        assert_eq!(catalog.releases("web").len(), 2);
    }
}
