//! `stratus events` for people: one line per event, time, kind, subject and the facts
//! that matter for it.

use std::time::{Duration, UNIX_EPOCH};

use proto::events::{Change, Event};

/// `2026-12-03T14:05:01Z  replica.crashed      web/n1/web-2-0  release 2, exit code 1`.
pub fn event_line(event: &Event) -> String {
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(event.at_ms));
    let facts = facts(&event.change);
    let line = format!("{at}  {:<22} {}", event.change.kind(), event.subject);
    if facts.is_empty() {
        line
    } else {
        format!("{line}  {facts}")
    }
}

fn facts(change: &Change) -> String {
    match change {
        Change::NodeJoined { generation, .. }
        | Change::NodeLive { generation, .. }
        | Change::NodeDead { generation, .. }
        | Change::NodeLeft { generation, .. } => format!("generation {generation}"),
        Change::NodeDraining { .. } | Change::NodeUndrained { .. } => String::new(),
        Change::DeployAccepted { release, note, .. } => match note {
            Some(note) => format!("release {release} ({note})"),
            None => format!("release {release}"),
        },
        Change::RolloutProgress {
            release,
            healthy,
            desired,
            ..
        } => format!("release {release}: {healthy}/{desired} healthy"),
        Change::ReleaseLive { release, .. } => format!("release {release} is live"),
        Change::ReleaseFailed {
            release, reason, ..
        } => format!("release {release} failed: {reason}"),
        Change::RolloutBlocked {
            release, reason, ..
        } => format!("release {release} cannot run: {reason}"),
        Change::RolledBack { from, to, .. } => format!("from release {from} to {to}"),
        Change::Scaled { from, to, .. } => format!("{from} -> {to} replicas"),
        Change::Destroyed { .. } => String::new(),
        Change::BuildStarted { node, builder, .. } => format!("{builder} on {node}"),
        Change::BuildFinished {
            release,
            node,
            builder,
            duration_ms,
            error,
            ..
        } => {
            let took = humantime::format_duration(Duration::from_secs(duration_ms / 1000));
            match error {
                None => format!("release {release}, {builder} on {node} in {took}"),
                Some(error) => format!("release {release} FAILED on {node}: {error}"),
            }
        }
        Change::ReplicaPlaced { replica }
        | Change::ReplicaStarted { replica }
        | Change::ReplicaHealthy { replica }
        | Change::ReplicaRestarted { replica } => {
            format!("release {}, replica {}", replica.release, replica.replica)
        }
        Change::ReplicaUnhealthy { replica, reason }
        | Change::ReplicaCrashed { replica, reason }
        | Change::ReplicaStopped { replica, reason } => format!(
            "release {}, replica {}: {reason}",
            replica.release, replica.replica
        ),
        Change::RoutesChanged { backends, .. } => format!("{backends} backends"),
    }
}

#[cfg(test)]
mod tests {
    use proto::events::{ReplicaRef, Topic};

    use super::*;

    #[test]
    fn a_line_has_the_time_the_kind_the_subject_and_the_facts() {
        let event = Event {
            index: 3,
            at_ms: 1_764_770_701_000,
            topic: Topic::Replica,
            subject: "web/n1/web-2-0".into(),
            tenant: None,
            change: Change::ReplicaCrashed {
                replica: ReplicaRef {
                    app: "web".into(),
                    release: 2,
                    replica: 0,
                    node: "n1".into(),
                    id: "web-2-0".into(),
                },
                reason: "exit code 1".into(),
            },
        };
        assert_eq!(
            event_line(&event),
            "2025-12-03T14:05:01Z  replica.crashed        web/n1/web-2-0  release 2, replica 0: exit code 1"
        );
    }
}
