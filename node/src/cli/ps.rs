//! `stratus ps APP`: the replicas of an app with their uptime, restarts, CPU and memory.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{Cell, Table};
use proto::api::{ReplicaUsage, ReplicasResponse};

use super::deploy::human_bytes;

/// The table, and under it the notes of replicas whose figures are missing.
pub fn replicas_table(response: &ReplicasResponse) -> String {
    if response.replicas.is_empty() {
        return format!(
            "{} has no replica running: `stratus status {}` says why",
            response.app, response.app
        );
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "REPLICA", "RELEASE", "NODE", "STATE", "HEALTH", "UPTIME", "RESTARTS", "CPU", "MEMORY",
    ]);
    let mut notes = Vec::new();
    for replica in &response.replicas {
        let usage = replica.usage.clone().unwrap_or_default();
        if let Some(note) = &usage.note {
            notes.push(format!(
                "v{}/{} on {}: {note}",
                replica.release, replica.replica, replica.node_id
            ));
        }
        table.add_row(vec![
            Cell::new(replica.replica),
            Cell::new(format!("v{}", replica.release)),
            Cell::new(&replica.node_id),
            Cell::new(format!("{:?}", replica.state).to_lowercase()),
            Cell::new(format!("{:?}", replica.health).to_lowercase()),
            Cell::new(usage.uptime_ms.map_or("-".to_string(), uptime)),
            Cell::new(usage.restarts),
            Cell::new(usage.cpu_millis.map_or("-".to_string(), cpu)),
            Cell::new(memory(&usage)),
        ]);
    }
    let mut out = table.to_string();
    out.push_str(&format!(
        "\nCPU in % of one core; as measured by each replica's node, asked by {}",
        response.node_id
    ));
    for note in notes {
        out.push_str(&format!("\n{note}"));
    }
    out
}

/// The two largest units: `45s`, `12m 5s`, `3h 12m`, `2d 4h`.
pub fn uptime(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// Thousandths of a core as a share of one core, as `docker stats` shows it.
fn cpu(millis: u64) -> String {
    format!("{:.1}%", millis as f64 / 10.0)
}

fn memory(usage: &ReplicaUsage) -> String {
    match (usage.memory_bytes, usage.memory_limit_bytes) {
        (Some(used), Some(limit)) => format!("{} / {}", human_bytes(used), human_bytes(limit)),
        (Some(used), None) => human_bytes(used),
        (None, _) => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proto::api::ReplicaView;
    use proto::{ContainerHealth, ContainerState};

    use super::*;

    #[test]
    fn uptime_shows_the_two_largest_units() {
        assert_eq!(uptime(999), "0s");
        assert_eq!(uptime(45_000), "45s");
        assert_eq!(uptime(725_000), "12m 5s");
        assert_eq!(uptime((3 * 3600 + 12 * 60 + 7) * 1000), "3h 12m");
        assert_eq!(uptime((2 * 86_400 + 4 * 3600 + 59) * 1000), "2d 4h");
    }

    #[test]
    fn the_table_shows_figures_and_says_why_some_are_missing() {
        let replica = |replica, node: &str, usage| ReplicaView {
            node_id: node.into(),
            container_id: format!("web-2-{replica}"),
            release: 2,
            replica,
            addr: "127.0.0.1:20001".parse().unwrap(),
            state: ContainerState::Running,
            health: ContainerHealth::Healthy,
            detail: None,
            usage: Some(usage),
        };
        let text = replicas_table(&ReplicasResponse {
            app: "web".into(),
            node_id: "a".into(),
            replicas: vec![
                replica(
                    0,
                    "a",
                    ReplicaUsage {
                        uptime_ms: Some(7_260_000),
                        restarts: 3,
                        cpu_millis: Some(125),
                        memory_bytes: Some(12 << 20),
                        memory_limit_bytes: Some(256 << 20),
                        ..ReplicaUsage::default()
                    },
                ),
                replica(
                    1,
                    "b",
                    ReplicaUsage {
                        note: Some("no reading from b: connection refused".into()),
                        ..ReplicaUsage::default()
                    },
                ),
            ],
        });
        assert!(text.contains("2h 1m"), "{text}");
        assert!(text.contains("12.5%"), "{text}");
        assert!(text.contains("12.0 MiB / 256.0 MiB"), "{text}");
        assert!(
            text.contains("v2/1 on b: no reading from b: connection refused"),
            "{text}"
        );
        let empty = replicas_table(&ReplicasResponse {
            app: "web".into(),
            node_id: "a".into(),
            replicas: vec![],
        });
        assert!(empty.contains("stratus status web"), "{empty}");
    }
}
