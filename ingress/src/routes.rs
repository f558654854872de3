//! The route table: which backends may serve each app. Plain data, rebuilt from a
//! snapshot of container records and swapped in whole, so readers never see half an update.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use proto::ContainerRecord;

/// One replica traffic may be sent to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub addr: SocketAddr,
    pub node_id: String,
    pub container_id: String,
    pub release: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    apps: BTreeMap<String, Vec<Backend>>,
}

impl RouteTable {
    /// Builds the table from `(node_id, record)` pairs of live nodes. Only running,
    /// healthy replicas are routable; an app with none keeps an empty entry, so the
    /// proxy can tell "known app, nothing healthy" (503) from "unknown app" (404).
    pub fn build<'a>(
        records: impl IntoIterator<Item = (&'a str, &'a ContainerRecord)>,
    ) -> RouteTable {
        let mut apps: BTreeMap<String, Vec<Backend>> = BTreeMap::new();
        for (node_id, record) in records {
            let backends = apps.entry(record.app.clone()).or_default();
            if record.is_routable() {
                backends.push(Backend {
                    addr: record.addr,
                    node_id: node_id.to_string(),
                    container_id: record.id.clone(),
                    release: record.release,
                });
            }
        }
        for backends in apps.values_mut() {
            backends.sort();
        }
        RouteTable { apps }
    }

    /// `None` for an unknown app; an empty slice for an app with no healthy replica.
    pub fn backends(&self, app: &str) -> Option<&[Backend]> {
        self.apps.get(app).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proto::{ContainerHealth, ContainerState};

    use super::*;

    fn record(id: &str, app: &str, port: u16, health: ContainerHealth) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            app: app.into(),
            release: 1,
            replica: 0,
            addr: SocketAddr::from(([127, 0, 0, 2], port)),
            state: ContainerState::Running,
            health,
            detail: None,
        }
    }

    #[test]
    fn only_healthy_replicas_are_routable_and_known_apps_stay_known() {
        let records = [
            ("n1", record("a", "web", 1, ContainerHealth::Healthy)),
            ("n2", record("b", "web", 2, ContainerHealth::Unhealthy)),
            ("n2", record("c", "api", 3, ContainerHealth::Unknown)),
        ];
        let table = RouteTable::build(records.iter().map(|(node, record)| (*node, record)));
        let web = table.backends("web").unwrap();
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].node_id, "n1");
        assert_eq!(table.backends("api"), Some(&[][..]));
        assert_eq!(table.backends("nope"), None);
        assert_eq!(table.len(), 2);
    }
}
