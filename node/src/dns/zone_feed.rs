//! The zone follows the node's view: [`zone_from_view`] (pure) makes a [`Zone`] of a view
//! and the catalog, and [`zone_feed`] remakes it on every view change, the moment gossip
//! brings one. A replica dying, starting or turning healthy, or a release switching, shows
//! in the very next answer (the same moment the ingress's route table changes).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::api::NodeStatus;
use proto::catalog::AppRecord;
use tokio::sync::watch;

use super::zone::{Zone, ZoneApp, ZoneConfig, ZoneReplica};
use crate::cluster::membership::{ClusterView, Membership};
use crate::control::catalog_handle::CatalogHandle;

/// The zone of `view` and the catalog's `apps`: live apps with their healthy replicas,
/// live nodes with their advertise addresses.
pub fn zone_from_view(
    config: &ZoneConfig,
    view: &ClusterView,
    apps: &[AppRecord],
    serial: u32,
) -> Zone {
    let mut zone_apps: BTreeMap<String, ZoneApp> = apps
        .iter()
        .filter(|app| !app.deleted)
        .map(|app| {
            (
                app.name.to_ascii_lowercase(),
                ZoneApp {
                    tenant: app.tenant.clone(),
                    latest_release: app.release.as_ref().map_or(0, |release| release.number),
                    replicas: Vec::new(),
                },
            )
        })
        .collect();
    for placed in &view.containers {
        let record = &placed.record;
        if !record.is_routable() {
            continue;
        }
        let Some(app) = zone_apps.get_mut(&record.app.to_ascii_lowercase()) else {
            continue;
        };
        app.latest_release = app.latest_release.max(record.release);
        app.replicas.push(ZoneReplica {
            node: placed.node_id.clone(),
            release: record.release,
            addr: record.addr,
        });
    }
    let nodes: BTreeMap<String, IpAddr> = view
        .nodes
        .iter()
        .filter(|node| node.status == NodeStatus::Live)
        .map(|node| (node.node_id.to_ascii_lowercase(), node.gossip_addr.ip()))
        .collect();
    Zone::new(config.clone(), zone_apps, nodes, serial)
}

/// Publishes the zone of every view change (and of catalog merges, which arrive a moment
/// after the view that brought them) until `stop`.
pub async fn zone_feed(
    config: ZoneConfig,
    catalog: Arc<CatalogHandle>,
    membership: Arc<Membership>,
    zones: watch::Sender<Arc<Zone>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut views = membership.subscribe().await;
    let mut serial: u32 = 1;
    loop {
        let view = views.borrow_and_update().clone();
        let apps = catalog.records().await;
        // Made with the next serial, which is kept only if the records changed.
        let zone = zone_from_view(&config, &view, &apps, serial.wrapping_add(1));
        zones.send_if_modified(|current| {
            if current.same_records(&zone) {
                return false;
            }
            serial = serial.wrapping_add(1);
            *current = Arc::new(zone);
            true
        });
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
