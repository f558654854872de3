//! The loop that feeds the journal: at every change of the gossip view or the catalog
//! (and each second, for merges that land between views) it observes again and records
//! the changes since its last sight.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::membership::Membership;
use crate::control::catalog_handle::CatalogHandle;
use crate::events::derive::{Observed, changes};
use crate::events::handle::EventsHandle;
use crate::metrics::AgentMetrics;

/// `settle`: for this long after start, what gossip brings is the cluster as it already
/// was (every peer "joining", every app "deployed"), so it becomes the first sight
/// without events.
pub async fn run(
    events: Arc<EventsHandle>,
    metrics: Arc<AgentMetrics>,
    catalog: Arc<CatalogHandle>,
    membership: Arc<Membership>,
    settle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let settled_at = Instant::now() + settle;
    let mut views = membership.subscribe().await;
    let mut observed = Observed::default();
    loop {
        // Enabled before the catalog is read, so a merge right after is not missed.
        let catalog_changed = catalog.changed();
        tokio::pin!(catalog_changed);
        catalog_changed.as_mut().enable();
        let view = views.borrow_and_update().clone();
        let records = catalog.records().await;
        let next = observed.next(&view, &records);
        if next != observed {
            if Instant::now() >= settled_at {
                let changes = changes(&observed, &next);
                metrics.observe_events(&view.self_id, &changes);
                events.publish(changes, |app| next.tenant_of(app).map(str::to_string));
            }
            observed = next;
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            () = catalog_changed => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
