//! The CLI's side: presentation of API answers for people, and `stratus deploy`.

pub mod deploy;
pub mod doctor;
pub mod events;
pub mod open;
pub mod ps;
pub mod tenancy;

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{Cell, Table};
use proto::api::{NodeStatus, NodesResponse};

/// `stratus nodes` as a table; the answering node is marked with `*`.
pub fn nodes_table(response: &NodesResponse) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "NODE",
        "STATUS",
        "GOSSIP",
        "API",
        "CPU",
        "MEMORY AVAIL",
        "CONTAINERS",
        "LABELS",
    ]);
    for node in &response.nodes {
        let marker = if node.node_id == response.self_id {
            " *"
        } else {
            ""
        };
        let status = match node.status {
            NodeStatus::Joining => "joining",
            NodeStatus::Live => "live",
            NodeStatus::Left => "left",
            NodeStatus::Dead => "dead",
        };
        let api = node
            .identity
            .as_ref()
            .map(|identity| identity.api_addr.to_string())
            .unwrap_or_else(|| "-".into());
        let labels = node
            .identity
            .as_ref()
            .map(|identity| {
                identity
                    .labels
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let (cpu, memory) = match &node.load {
            Some(load) => (
                format!("{:.0}% of {}", load.cpu_usage_pct, load.cpu_cores),
                format!(
                    "{} / {}",
                    gib(load.mem_available_bytes),
                    gib(load.mem_total_bytes)
                ),
            ),
            None => ("-".into(), "-".into()),
        };
        let status = if node.draining && node.status == NodeStatus::Live {
            "live, draining"
        } else {
            status
        };
        table.add_row(vec![
            Cell::new(format!("{}{marker}", node.node_id)),
            Cell::new(status),
            Cell::new(node.gossip_addr),
            Cell::new(api),
            Cell::new(cpu),
            Cell::new(memory),
            Cell::new(node.containers),
            Cell::new(labels),
        ]);
    }
    let live = response
        .nodes
        .iter()
        .filter(|node| node.status == NodeStatus::Live)
        .count();
    format!(
        "{table}\n{live} live of {} known, as seen by {} (*)",
        response.nodes.len(),
        response.self_id
    )
}

/// `stratus apps`.
pub fn apps_table(response: &proto::api::AppsResponse) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["APP", "RELEASE", "HEALTHY / DESIRED"]);
    for app in &response.apps {
        table.add_row(vec![
            Cell::new(&app.name),
            Cell::new(app.release.map_or("-".to_string(), |r| format!("v{r}"))),
            Cell::new(format!(
                "{} / {}",
                app.replicas_healthy, app.replicas_desired
            )),
        ]);
    }
    table.to_string()
}

/// `stratus builds APP`.
pub fn builds_table(response: &proto::api::BuildsResponse) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "RELEASE", "BUILDER", "NODE", "DURATION", "CACHE", "RESULT",
    ]);
    for build in &response.builds {
        let result = match &build.error {
            None => "ok".to_string(),
            Some(error) => {
                let first = error.lines().next().unwrap_or_default();
                format!("failed: {}", first.chars().take(80).collect::<String>())
            }
        };
        table.add_row(vec![
            Cell::new(format!("v{}", build.release)),
            Cell::new(build.builder),
            Cell::new(if build.node.is_empty() {
                "-"
            } else {
                &build.node
            }),
            Cell::new(format!("{:.1} s", build.duration_ms as f64 / 1000.0)),
            Cell::new(build.cache),
            Cell::new(result),
        ]);
    }
    if response.builds.is_empty() {
        return format!(
            "{} has no builds: it runs an image with no builder",
            response.app
        );
    }
    format!(
        "{table}\n`stratus logs {} --build N` prints a build's whole output",
        response.app
    )
}

/// `stratus releases APP`.
pub fn releases_table(response: &proto::api::ReleasesResponse) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["RELEASE", "STATUS", "CREATED", "ON", "BUNDLE", "NOTE"]);
    for release in &response.releases {
        let created =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(release.created_at_ms);
        let status = match &release.failure {
            Some(reason) => format!("failed: {reason}"),
            None => release.status.clone(),
        };
        table.add_row(vec![
            Cell::new(format!("v{}", release.number)),
            Cell::new(status),
            Cell::new(humantime::format_rfc3339_seconds(created)),
            Cell::new(&release.created_on),
            Cell::new(format!(
                "{} ({})",
                release.sha256.get(..12).unwrap_or(&release.sha256),
                deploy::human_bytes(release.size)
            )),
            Cell::new(release.note.as_deref().unwrap_or("deploy")),
        ]);
    }
    table.to_string()
}

/// `stratus status APP`.
pub fn app_status(view: &proto::api::AppView) -> String {
    let mut out = format!(
        "{}: release {}, {} replicas desired (releases: {})\n",
        view.name,
        view.release
            .as_ref()
            .map_or("-".to_string(), |r| format!("v{}", r.number)),
        view.replicas_desired,
        view.releases
            .iter()
            .map(|n| format!("v{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(failure) = &view.failure {
        out.push_str(&format!("failing: {failure}\n"));
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "REPLICA", "RELEASE", "NODE", "ADDRESS", "STATE", "HEALTH", "DETAIL",
    ]);
    for replica in &view.replicas {
        table.add_row(vec![
            Cell::new(replica.replica),
            Cell::new(format!("v{}", replica.release)),
            Cell::new(&replica.node_id),
            Cell::new(replica.addr),
            Cell::new(format!("{:?}", replica.state).to_lowercase()),
            Cell::new(format!("{:?}", replica.health).to_lowercase()),
            Cell::new(replica.detail.as_deref().unwrap_or("")),
        ]);
    }
    out.push_str(&table.to_string());
    out
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use proto::NodeLoad;
    use proto::api::NodeView;

    use super::*;

    #[test]
    fn table_lists_every_node_and_marks_self() {
        let node = |id: &str, status| NodeView {
            node_id: id.into(),
            generation: 1,
            gossip_addr: "127.0.0.2:7946".parse().unwrap(),
            status,
            identity: None,
            load: Some(NodeLoad {
                cpu_cores: 2,
                mem_total_bytes: 2 << 30,
                ..NodeLoad::default()
            }),
            containers: 0,
            draining: false,
        };
        let text = nodes_table(&NodesResponse {
            self_id: "a".into(),
            nodes: vec![node("a", NodeStatus::Live), node("b", NodeStatus::Dead)],
        });
        assert!(text.contains("a *"), "{text}");
        assert!(text.contains("dead"));
        assert!(text.contains("1 live of 2 known"));
    }
}
