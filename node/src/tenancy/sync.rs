//! Keeps this node's tenancy directory in step with the cluster, as the catalog sync does
//! for apps: merges every tenant and token record heard in gossip (last writer wins) and
//! publishes the records this node keeps, so a revocation reaches every node and a node
//! that was away catches up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::membership::Membership;
use crate::control::catalog_sync::publishes;
use crate::control::hlc::unix_ms;
use crate::tenancy::handle::TenancyHandle;

pub async fn run(
    tenancy: Arc<TenancyHandle>,
    membership: Arc<Membership>,
    node_id: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut views = membership.subscribe().await;
    let mut published: BTreeSet<String> = BTreeSet::new();
    loop {
        let view = views.borrow_and_update().clone();
        for record in &view.tenancy_records {
            // A failed write is retried with the next view: the record is still in gossip.
            let _ = tenancy.merge(record.clone()).await;
        }
        let live: Vec<&str> = view
            .live_nodes()
            .map(|node| node.node_id.as_str())
            .collect();
        let now = unix_ms();
        for record in tenancy.snapshot().records() {
            let key = record.key();
            let stamp = record.stamp();
            if publishes(&key, stamp, &live, &node_id, now) {
                membership.publish_tenancy(&record).await;
                published.insert(key);
            } else if published.remove(&key) {
                membership.unpublish_tenancy(&key).await;
            }
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
