#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! Events from scripted histories of views: what each change gives, and that nodes which
//! saw the same history through different gossip rounds agree.

use std::collections::BTreeMap;

use proto::ContainerRecord;
use proto::api::NodeView;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::cluster::membership::PlacedContainer;
use crate::control::catalog::tests::record;

/// One moment of a scripted cluster: its view and its catalog.
#[derive(Clone, Default)]
struct Moment {
    nodes: BTreeMap<String, NodeView>,
    containers: BTreeMap<String, PlacedContainer>,
    apps: BTreeMap<String, AppRecord>,
}

impl Moment {
    fn node(mut self, id: &str, generation: u64, status: NodeStatus) -> Moment {
        let draining = self.nodes.get(id).is_some_and(|n| n.draining);
        self.nodes.insert(
            id.into(),
            NodeView {
                node_id: id.into(),
                generation,
                gossip_addr: "127.0.0.1:7946".parse().unwrap(),
                status,
                identity: None,
                load: None,
                containers: 0,
                draining,
            },
        );
        self
    }

    fn drain(mut self, id: &str, draining: bool) -> Moment {
        self.nodes.get_mut(id).unwrap().draining = draining;
        self
    }

    fn app(mut self, name: &str, release: u64, replicas: u32) -> Moment {
        let mut app = record(name, release, "n1", release);
        app.replicas = replicas;
        if let Some(old) = self.apps.get(name) {
            app.failed = old.failed.clone();
        }
        self.apps.insert(name.into(), app);
        self
    }

    fn edit(mut self, name: &str, edit: impl FnOnce(&mut AppRecord)) -> Moment {
        edit(self.apps.get_mut(name).unwrap());
        self
    }

    /// Replica `slot` of `release` on `node`, in `state` and `health`.
    fn replica(
        mut self,
        node: &str,
        app: &str,
        release: u64,
        slot: u32,
        state: ContainerState,
        health: ContainerHealth,
    ) -> Moment {
        let id = format!("{app}-{release}-{slot}");
        let port = 20_000 + u16::try_from(release * 10).unwrap() + u16::try_from(slot).unwrap();
        let detail = (state == ContainerState::Exited).then(|| "exit code 1".to_string());
        self.containers.insert(
            id.clone(),
            PlacedContainer {
                node_id: node.into(),
                record: ContainerRecord {
                    id,
                    app: app.into(),
                    release,
                    replica: slot,
                    addr: format!("10.0.0.1:{port}").parse().unwrap(),
                    state,
                    health,
                    detail,
                },
            },
        );
        self
    }

    fn gone(mut self, app: &str, release: u64, slot: u32) -> Moment {
        self.containers.remove(&format!("{app}-{release}-{slot}"));
        self
    }

    fn view(&self) -> ClusterView {
        let live: BTreeSet<&str> = self
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Live)
            .map(|n| n.node_id.as_str())
            .collect();
        ClusterView {
            self_id: "n1".into(),
            nodes: self.nodes.values().cloned().collect(),
            // As in the real view: a dead node's containers vanish with it.
            containers: self
                .containers
                .values()
                .filter(|c| live.contains(c.node_id.as_str()))
                .cloned()
                .collect(),
            ..ClusterView::default()
        }
    }

    fn catalog(&self) -> Vec<AppRecord> {
        self.apps.values().cloned().collect()
    }
}

use ContainerHealth::{Healthy, Unhealthy, Unknown};
use ContainerState::{Exited, Running, Starting, Stopping};

/// The events a node gives when it sees `moments` one after another.
fn seen(moments: &[&Moment]) -> Vec<Change> {
    let mut observed = Observed::default().next(&moments[0].view(), &moments[0].catalog());
    let mut out = Vec::new();
    for moment in &moments[1..] {
        let next = observed.next(&moment.view(), &moment.catalog());
        out.extend(changes(&observed, &next));
        observed = next;
    }
    out
}

fn kinds(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| format!("{} {}", c.kind(), c.subject()))
        .collect()
}

/// Two nodes up, `web` at release 1 with two healthy replicas.
fn settled() -> Moment {
    Moment::default()
        .node("n1", 1, NodeStatus::Live)
        .node("n2", 1, NodeStatus::Live)
        .app("web", 1, 2)
        .replica("n1", "web", 1, 0, Running, Healthy)
        .replica("n2", "web", 1, 1, Running, Healthy)
}

/// A whole story: a node joins, a deploy rolls out, a replica crashes and restarts, the
/// app scales, a node drains and dies, the app is destroyed.
fn story() -> Vec<Moment> {
    let mut moments = vec![settled()];
    let mut push = |edit: &dyn Fn(Moment) -> Moment| {
        let next = edit(moments.last().unwrap().clone());
        moments.push(next);
    };
    push(&|m| m.node("n3", 1, NodeStatus::Joining));
    push(&|m| m.node("n3", 1, NodeStatus::Live));
    push(&|m| m.app("web", 2, 2));
    push(&|m| m.replica("n3", "web", 2, 0, Starting, Unknown));
    push(&|m| m.replica("n3", "web", 2, 0, Running, Unknown));
    push(&|m| m.replica("n3", "web", 2, 0, Running, Healthy));
    push(&|m| m.replica("n1", "web", 1, 0, Stopping, Healthy));
    push(&|m| m.gone("web", 1, 0));
    push(&|m| m.replica("n1", "web", 2, 1, Starting, Unknown));
    push(&|m| m.replica("n1", "web", 2, 1, Running, Healthy));
    push(&|m| m.gone("web", 1, 1));
    push(&|m| m.replica("n1", "web", 2, 1, Exited, Unhealthy));
    push(&|m| m.replica("n1", "web", 2, 1, Running, Unknown));
    push(&|m| m.replica("n1", "web", 2, 1, Running, Healthy));
    push(&|m| m.edit("web", |app| app.replicas = 3));
    push(&|m| m.replica("n2", "web", 2, 2, Running, Healthy));
    push(&|m| m.drain("n2", true));
    push(&|m| m.node("n2", 1, NodeStatus::Dead));
    push(&|m| m.edit("web", |app| app.deleted = true));
    moments
}

#[test]
fn a_whole_story_seen_step_by_step() {
    let moments = story();
    let all: Vec<&Moment> = moments.iter().collect();
    let events = kinds(&seen(&all));
    let expected = [
        "node.joined n3",
        "node.live n3",
        "app.deploy_accepted web",
        // Release 2 has no healthy replica yet: the routes still hold release 1's two.
        "replica.placed web/n3/web-2-0",
        "replica.started web/n3/web-2-0",
        "replica.healthy web/n3/web-2-0",
        "app.rollout_progress web",
        "ingress.routes_changed web",
        "replica.stopped web/n1/web-1-0",
        "ingress.routes_changed web",
        "replica.placed web/n1/web-2-1",
        "replica.started web/n1/web-2-1",
        "replica.healthy web/n1/web-2-1",
        "app.rollout_progress web",
        "ingress.routes_changed web",
        "replica.stopped web/n2/web-1-1",
        "app.release_live web",
        "ingress.routes_changed web",
        "replica.crashed web/n1/web-2-1",
        "ingress.routes_changed web",
        "replica.restarted web/n1/web-2-1",
        "replica.healthy web/n1/web-2-1",
        "ingress.routes_changed web",
        "app.scaled web",
        "replica.placed web/n2/web-2-2",
        "replica.started web/n2/web-2-2",
        "replica.healthy web/n2/web-2-2",
        "ingress.routes_changed web",
        "node.draining n2",
        "node.dead n2",
        "replica.stopped web/n2/web-2-2",
        "ingress.routes_changed web",
        "app.destroyed web",
        "ingress.routes_changed web",
    ];
    assert_eq!(events, expected, "{events:#?}");
}

#[test]
fn nodes_that_saw_different_rounds_report_the_same_lifecycle() {
    // Progress and route events are counts as each node saw them; every other event is
    // an edge of a lifecycle, and must be the same whatever rounds a node missed, as long
    // as no subject went back to a state it had left between two of its rounds.
    let moments = story();
    let lifecycle = |changes: Vec<Change>| -> BTreeMap<String, Vec<&'static str>> {
        let mut by_subject: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for change in changes {
            if matches!(
                change,
                Change::RolloutProgress { .. } | Change::RoutesChanged { .. }
            ) {
                continue;
            }
            by_subject
                .entry(change.subject())
                .or_default()
                .push(change.kind());
        }
        by_subject
    };
    let all: Vec<&Moment> = moments.iter().collect();
    let truth = lifecycle(seen(&all));
    // What a node never saw it cannot report: it must see replica web-2-1 healthy (11)
    // and crashed (12), since its restart returns it to `running`, and web-2-2 alive
    // (16) before its node dies. Every other round may be missed.
    let must_see = [0, 11, 12, 16, moments.len() - 1];
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..200 {
        let sample: Vec<&Moment> = moments
            .iter()
            .enumerate()
            .filter(|(i, _)| must_see.contains(i) || rng.random_bool(0.4))
            .map(|(_, m)| m)
            .collect();
        assert_eq!(lifecycle(seen(&sample)), truth, "sample {round}");
    }
}

#[test]
fn a_replica_first_seen_healthy_passes_every_edge_before() {
    let before = settled();
    let after = settled().replica("n2", "web", 1, 2, Running, Healthy);
    assert_eq!(
        kinds(&seen(&[&before, &after])),
        [
            "replica.placed web/n2/web-1-2",
            "replica.started web/n2/web-1-2",
            "replica.healthy web/n2/web-1-2",
            "ingress.routes_changed web",
        ]
    );
}

#[test]
fn crash_unhealthy_and_stop_carry_their_reasons() {
    let a = settled();
    let b = settled()
        .edit("web", |_| {})
        .replica("n1", "web", 1, 0, Running, Unhealthy);
    let c = b.clone().replica("n1", "web", 1, 0, Exited, Unhealthy);
    let d = c.clone().node("n2", 1, NodeStatus::Dead);
    let events = seen(&[&a, &b, &c, &d]);
    let reasons: Vec<(&str, String)> = events
        .iter()
        .filter_map(|change| match change {
            Change::ReplicaUnhealthy { reason, .. }
            | Change::ReplicaCrashed { reason, .. }
            | Change::ReplicaStopped { reason, .. } => Some((change.kind(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("replica.unhealthy", "health check failed".to_string()),
            ("replica.crashed", "exit code 1".to_string()),
            ("replica.stopped", "node n2 is dead".to_string()),
        ]
    );
}

#[test]
fn a_failed_rollout_reports_the_failure_then_the_rollback() {
    let a = settled().app("web", 2, 2);
    let b = a.clone().replica("n1", "web", 2, 0, Exited, Unhealthy);
    let c = b.clone().gone("web", 2, 0).edit("web", |app| {
        app.failed.insert(2, "crashed 3 times".into());
        app.release.as_mut().unwrap().number = 1;
    });
    let events = seen(&[&settled(), &a, &b, &c]);
    assert!(events.contains(&Change::ReleaseFailed {
        app: "web".into(),
        release: 2,
        reason: "crashed 3 times".into()
    }));
    assert!(events.contains(&Change::RolledBack {
        app: "web".into(),
        from: 2,
        to: 1
    }));
    assert!(
        !events
            .iter()
            .any(|c| matches!(c, Change::ReleaseLive { .. })),
        "release 1 was live before the deploy, and is not live again: {events:?}"
    );
}

#[test]
fn a_flap_after_the_rollout_is_not_a_second_release_live() {
    let a = settled().app("web", 2, 1);
    let b = a.clone().gone("web", 1, 0).gone("web", 1, 1);
    let c = b.clone().replica("n1", "web", 2, 0, Running, Healthy);
    let d = c.clone().replica("n1", "web", 2, 0, Running, Unhealthy);
    let e = d.clone().replica("n1", "web", 2, 0, Running, Healthy);
    let lives = seen(&[&a, &b, &c, &d, &e])
        .into_iter()
        .filter(|c| matches!(c, Change::ReleaseLive { .. }))
        .count();
    assert_eq!(lives, 1);
}

#[test]
fn a_restarted_node_joins_again_and_undrain_is_reported() {
    let a = settled().drain("n2", true);
    let b = a.clone().node("n2", 1, NodeStatus::Dead);
    let c = b.clone().node("n2", 2, NodeStatus::Live).drain("n2", false);
    let events = kinds(&seen(&[&a, &b, &c]));
    assert_eq!(
        events,
        [
            "node.dead n2",
            "replica.stopped web/n2/web-1-1",
            "ingress.routes_changed web",
            "node.joined n2",
            "node.live n2",
            "node.undrained n2",
            "replica.placed web/n2/web-1-1",
            "replica.started web/n2/web-1-1",
            "replica.healthy web/n2/web-1-1",
            "ingress.routes_changed web",
        ]
    );
}

#[test]
fn an_apps_tenant_is_carried_to_its_events() {
    let a = settled().edit("web", |app| app.tenant = Some("acme".into()));
    let observed = Observed::default().next(&a.view(), &a.catalog());
    assert_eq!(observed.tenant_of("web"), Some("acme"));
    assert_eq!(observed.tenant_of("other"), None);
}

#[test]
fn a_release_that_cannot_run_is_reported_once_with_the_reason() {
    let moment = settled().app("web", 2, 2);
    let mut blocked = moment.view();
    blocked.failures.push(proto::gossip::RolloutFailure {
        app: "web".into(),
        release: 2,
        reason: "no live node has room".into(),
    });
    let first = Observed::default().next(&moment.view(), &moment.catalog());
    let second = first.next(&blocked, &moment.catalog());
    let third = second.next(&blocked, &moment.catalog());
    assert_eq!(
        changes(&first, &second),
        [Change::RolloutBlocked {
            app: "web".into(),
            release: 2,
            reason: "no live node has room".into()
        }]
    );
    assert!(changes(&second, &third).is_empty());
}
