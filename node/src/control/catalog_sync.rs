//! Keeps this node's catalog in step with the cluster: merges every app record heard in
//! gossip (last writer wins), persists what is new, and publishes the records this node
//! keeps, so a node that was away catches up from whoever keeps them now.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use proto::catalog::Stamp;
use tokio::sync::watch;

use crate::cluster::membership::Membership;
use crate::control::catalog::{KEEPERS, keepers};
use crate::control::catalog_handle::CatalogHandle;
use crate::control::hlc::unix_ms;

/// A node that accepted a change keeps publishing it this long even if it is not a keeper,
/// so the keepers surely hear it.
const WRITER_GRACE_MS: u64 = 60_000;

/// Whether this node publishes the record under `key` last written at `stamp`: it keeps
/// it, or it wrote it within [`WRITER_GRACE_MS`]. App and tenancy records follow the same
/// rule.
pub fn publishes(key: &str, stamp: &Stamp, live: &[&str], node_id: &str, now_ms: u64) -> bool {
    let keeper = keepers(key, live, KEEPERS).iter().any(|k| k == node_id);
    let fresh_write =
        stamp.node_id == node_id && now_ms.saturating_sub(stamp.wall_ms) < WRITER_GRACE_MS;
    keeper || fresh_write
}

pub async fn run(
    catalog: Arc<CatalogHandle>,
    membership: Arc<Membership>,
    node_id: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut views = membership.subscribe().await;
    let mut published: BTreeSet<String> = BTreeSet::new();
    loop {
        let view = views.borrow_and_update().clone();
        for record in &view.app_records {
            // A failed write is retried with the next view: the record is still in gossip.
            let _ = catalog.merge(record.clone()).await;
        }
        let live: Vec<&str> = view
            .live_nodes()
            .map(|node| node.node_id.as_str())
            .collect();
        let records = catalog.records().await;
        let now = unix_ms();
        for record in records {
            if publishes(&record.name, &record.stamp, &live, &node_id, now) {
                membership.publish_app(&record).await;
                published.insert(record.name.clone());
            } else if published.remove(&record.name) {
                membership.unpublish_app(&record.name).await;
            }
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
