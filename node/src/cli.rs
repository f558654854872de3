//! Presentation of API answers for people.

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
