#![allow(clippy::unwrap_used)] // tests fail loudly by design

//! The driver's core on simulated time (instants built by hand, no clock, no sockets):
//! the election, placements in flight, retries and resends. Then the I/O half's sending:
//! a black-holed peer costs its own action and no other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::api::{NodeStatus, NodeView, PlacementReply};
use proto::catalog::{AppRecord, BlobRef, Release, Stamp};
use proto::manifest::Manifest;
use proto::{ContainerHealth, ContainerRecord, ContainerState, NodeIdentity, NodeLoad};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use super::decisions::{
    AppInput, DriverAction, DriverCore, Outcome, PLACE_RETRY, PLACEMENT_PATIENCE, STOP_RESEND,
    Target, elected, placement_id,
};
use super::{Dispatcher, place_on_first, within};
use crate::cluster::membership::{ClusterView, PlacedContainer};
use crate::control::reconciler::{DEFAULT_RESCHEDULE_GRACE, ReconcileConfig};

const NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7070))
}

fn node(i: usize, status: NodeStatus, draining: bool) -> NodeView {
    let node_id = NODES[i].to_string();
    NodeView {
        node_id: node_id.clone(),
        generation: 1,
        gossip_addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7946)),
        status,
        identity: Some(NodeIdentity {
            builds: false,
            gvisor: false,
            node_id,
            gossip_addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7946)),
            api_addr: addr(i),
            api_tls: false,
            ingress_addr: None,
            version: "test".into(),
            labels: Default::default(),
            started_at_ms: 0,
            runs_workloads: true,
        }),
        load: Some(NodeLoad {
            cpu_cores: 8,
            cpu_usage_pct: 1.0,
            mem_total_bytes: 16 << 30,
            mem_available_bytes: 15 << 30,
            reserved_cpu_millis: 0,
            reserved_mem_bytes: 0,
        }),
        containers: 0,
        draining,
    }
}

fn release(app: &str, number: u64) -> Release {
    Release {
        config: None,
        image: None,
        number,
        bundle: BlobRef {
            sha256: "ab".repeat(32),
            size: 1,
        },
        manifest: Manifest::parse(&format!("name = \"{app}\"\ncmd = \"run\""), None).unwrap(),
        created_at_ms: 0,
        created_on: NODES[0].into(),
        note: None,
    }
}

fn app(name: &str, replicas: u32) -> AppInput {
    AppInput {
        record: AppRecord {
            domain_claims: Default::default(),
            builds: Default::default(),
            name: name.into(),
            stamp: Stamp {
                wall_ms: 1,
                counter: 0,
                node_id: NODES[0].into(),
            },
            deleted: false,
            release: Some(release(name, 1)),
            replicas,
            failed: Default::default(),
            tenant: None,
        },
        previous: None,
        isolation: Default::default(),
    }
}

fn running(node_id: &str, app: &str, slot: u32) -> PlacedContainer {
    PlacedContainer {
        node_id: node_id.into(),
        record: ContainerRecord {
            id: placement_id(app, 1, slot),
            app: app.into(),
            release: 1,
            replica: slot,
            addr: SocketAddr::from(([10, 9, 9, 9], 8000 + slot as u16)),
            state: ContainerState::Running,
            health: ContainerHealth::Healthy,
            detail: None,
        },
    }
}

/// Four live nodes, nothing running.
fn view() -> ClusterView {
    ClusterView {
        self_id: NODES[0].into(),
        nodes: (0..NODES.len())
            .map(|i| node(i, NodeStatus::Live, false))
            .collect(),
        ..ClusterView::default()
    }
}

fn set_status(view: &mut ClusterView, node_id: &str, status: NodeStatus) {
    for node in &mut view.nodes {
        if node.node_id == node_id {
            node.status = status;
        }
    }
}

fn core(node_id: &str) -> DriverCore {
    DriverCore::new(
        node_id,
        ReconcileConfig::default(),
        StdRng::seed_from_u64(3),
    )
}

fn places(actions: &[DriverAction]) -> Vec<(String, Vec<String>)> {
    actions
        .iter()
        .filter_map(|action| match action {
            DriverAction::Place { request, targets } => Some((
                request.placement_id.clone(),
                targets.iter().map(|t| t.node_id.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn stops(actions: &[DriverAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|action| match action {
            DriverAction::Stop { request, .. } => Some(request.placement_id.clone()),
            _ => None,
        })
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn only_the_elected_node_acts_for_an_app() {
    let view = view();
    let apps = [app("web", 1)];
    let chosen = elected(&view, "web").unwrap();
    let now = Instant::now();
    for id in NODES {
        let actions = core(id).plan(now, &view, &apps);
        if id == chosen {
            assert_eq!(places(&actions).len(), 1, "{id} is elected: it places");
        } else {
            assert!(actions.is_empty(), "{id} is not elected: {actions:?}");
        }
    }
}

#[test]
fn the_election_moves_when_the_elected_node_dies_or_drains() {
    for gone in ["dead", "left", "draining"] {
        let mut view = view();
        let first = elected(&view, "web").unwrap();
        let index = NODES.iter().position(|n| *n == first).unwrap();
        match gone {
            "dead" => set_status(&mut view, &first, NodeStatus::Dead),
            "left" => set_status(&mut view, &first, NodeStatus::Left),
            _ => view.nodes[index].draining = true,
        }
        let next = elected(&view, "web").unwrap();
        assert_ne!(next, first, "{gone}: the role moved");
        let now = Instant::now();
        let actions = core(&next).plan(now, &view, &[app("web", 1)]);
        assert_eq!(places(&actions).len(), 1, "{gone}: {next} acts at once");
        let actions = core(&first).plan(now, &view, &[app("web", 1)]);
        assert!(actions.is_empty(), "{gone}: {first} no longer acts");
    }
}

#[test]
fn no_placement_is_sent_twice_while_its_answer_is_pending() {
    let view = view();
    let me = elected(&view, "web").unwrap();
    let mut core = core(&me);
    let t0 = Instant::now();
    let sent = places(&core.plan(t0, &view, &[app("web", 2)]));
    assert_eq!(sent.len(), 2);
    assert_ne!(
        sent[0].1[0], sent[1].1[0],
        "the second spreads away from the first"
    );
    for later in [ms(100), ms(5_000), ms(59_000)] {
        let actions = core.plan(t0 + later, &view, &[app("web", 2)]);
        assert!(places(&actions).is_empty(), "sent again after {later:?}");
    }
}

#[test]
fn an_admitted_placement_is_resent_after_its_patience_and_not_before() {
    let view = view();
    let me = elected(&view, "web").unwrap();
    let mut core = core(&me);
    let apps = [app("web", 1)];
    let t0 = Instant::now();
    let sent = places(&core.plan(t0, &view, &apps));
    let (id, targets) = sent[0].clone();
    let admitted_at = t0 + ms(50);
    core.handle_outcome(
        admitted_at,
        Outcome::Placed {
            placement_id: id.clone(),
            node_id: targets[0].clone(),
        },
    );
    assert_eq!(core.next_deadline(), Some(admitted_at + PLACEMENT_PATIENCE));
    let just_before = admitted_at + PLACEMENT_PATIENCE - ms(1);
    assert!(places(&core.plan(just_before, &view, &apps)).is_empty());
    assert!(core.is_in_flight(&id));
    let resent = places(&core.plan(admitted_at + PLACEMENT_PATIENCE, &view, &apps));
    assert_eq!(resent.len(), 1, "the replica never showed: tried again");
    assert_eq!(
        resent[0].0, id,
        "same placement id, so a late start is no second copy"
    );
}

#[test]
fn a_placement_in_flight_is_dropped_when_its_node_leaves_the_view() {
    for leaves in ["dead", "gone"] {
        let mut view = view();
        let me = elected(&view, "web").unwrap();
        let other = NODES.iter().find(|n| **n != me).unwrap().to_string();
        let mut core = core(&me);
        let apps = [app("web", 1)];
        let t0 = Instant::now();
        let (id, _) = places(&core.plan(t0, &view, &apps))[0].clone();
        core.handle_outcome(
            t0,
            Outcome::Placed {
                placement_id: id.clone(),
                node_id: other.clone(),
            },
        );
        assert!(places(&core.plan(t0 + ms(100), &view, &apps)).is_empty());
        match leaves {
            "dead" => set_status(&mut view, &other, NodeStatus::Dead),
            _ => view.nodes.retain(|node| node.node_id != other),
        }
        let actions = core.plan(t0 + ms(200), &view, &apps);
        let resent = places(&actions);
        assert_eq!(resent.len(), 1, "{leaves}: placed again at once");
        assert!(
            !resent[0].1.contains(&other),
            "{leaves}: not offered to the node that left"
        );
    }
}

#[test]
fn a_placement_seen_in_gossip_is_no_longer_in_flight() {
    let mut view = view();
    let me = elected(&view, "web").unwrap();
    let mut core = core(&me);
    let apps = [app("web", 1)];
    let t0 = Instant::now();
    let (id, targets) = places(&core.plan(t0, &view, &apps))[0].clone();
    core.handle_outcome(
        t0,
        Outcome::Placed {
            placement_id: id.clone(),
            node_id: targets[0].clone(),
        },
    );
    view.containers.push(running(&targets[0], "web", 0));
    let actions = core.plan(t0 + ms(300), &view, &apps);
    assert!(actions.is_empty(), "{actions:?}");
    assert!(!core.is_in_flight(&id));
    assert_eq!(
        core.next_deadline(),
        None,
        "settled: nothing to wake up for"
    );
}

#[test]
fn a_refused_placement_is_reported_retried_after_a_pause_and_cleared_once_placed() {
    let view = view();
    let me = elected(&view, "web").unwrap();
    let mut core = core(&me);
    let apps = [app("web", 1)];
    let t0 = Instant::now();
    let (id, _) = places(&core.plan(t0, &view, &apps))[0].clone();
    let refused_at = t0 + ms(20);
    core.handle_outcome(
        refused_at,
        Outcome::Refused {
            placement_id: id.clone(),
            reason: "no node accepted replica 0: full".into(),
        },
    );
    assert_eq!(core.next_deadline(), Some(refused_at + PLACE_RETRY));
    let actions = core.plan(refused_at + ms(100), &view, &apps);
    assert!(places(&actions).is_empty(), "not hammered: {actions:?}");
    assert!(matches!(
        &actions[..],
        [DriverAction::PublishFailure(failure)] if failure.reason.contains("full")
    ));
    let actions = core.plan(refused_at + PLACE_RETRY, &view, &apps);
    assert_eq!(places(&actions).len(), 1, "tried again");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, DriverAction::PublishFailure(_))),
        "still failing while the retry is out"
    );
    core.handle_outcome(
        refused_at + PLACE_RETRY,
        Outcome::Placed {
            placement_id: id,
            node_id: NODES[1].into(),
        },
    );
    let actions = core.plan(refused_at + PLACE_RETRY + ms(100), &view, &apps);
    assert_eq!(
        actions,
        [DriverAction::ClearFailure { app: "web".into() }],
        "placed: the failure is withdrawn"
    );
}

#[test]
fn a_stop_is_sent_once_and_again_only_after_the_resend_delay() {
    let mut view = view();
    let me = elected(&view, "web").unwrap();
    view.containers.push(running(NODES[0], "web", 0));
    view.containers.push(running(NODES[1], "web", 1));
    let mut core = core(&me);
    let apps = [app("web", 1)];
    let t0 = Instant::now();
    let actions = core.plan(t0, &view, &apps);
    assert_eq!(stops(&actions), ["web-r1-1"], "scaled down to 1");
    match &actions[..] {
        [
            DriverAction::Stop {
                node_id, api_addr, ..
            },
        ] => {
            assert_eq!(node_id, NODES[1]);
            assert_eq!(*api_addr, Some(addr(1)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(core.next_deadline(), Some(t0 + STOP_RESEND));
    for later in [ms(100), STOP_RESEND - ms(1)] {
        assert!(stops(&core.plan(t0 + later, &view, &apps)).is_empty());
    }
    assert_eq!(
        stops(&core.plan(t0 + STOP_RESEND, &view, &apps)),
        ["web-r1-1"],
        "still there: sent again"
    );
}

#[test]
fn a_vanished_replica_wakes_the_driver_when_its_grace_ends() {
    let mut view = view();
    let me = elected(&view, "web").unwrap();
    let host = NODES.iter().find(|n| **n != me).unwrap().to_string();
    view.containers.push(running(&host, "web", 0));
    let mut core = core(&me);
    let apps = [app("web", 1)];
    let t0 = Instant::now();
    assert!(core.plan(t0, &view, &apps).is_empty());
    assert_eq!(core.next_deadline(), None);
    // The host stops answering: its containers leave the view with it.
    set_status(&mut view, &host, NodeStatus::Dead);
    view.containers.clear();
    let t1 = t0 + ms(500);
    assert!(core.plan(t1, &view, &apps).is_empty(), "within the grace");
    let wake = t0 + DEFAULT_RESCHEDULE_GRACE;
    assert_eq!(core.next_deadline(), Some(wake), "last seen at t0");
    assert!(core.plan(wake - ms(1), &view, &apps).is_empty());
    assert_eq!(places(&core.plan(wake, &view, &apps)).len(), 1);
}

#[test]
fn a_rollback_is_sent_once_until_its_answer_comes() {
    let mut view = view();
    let me = elected(&view, "web").unwrap();
    let mut apps = [app("web", 1)];
    apps[0].record.release = Some(release("web", 2));
    apps[0].previous = Some(1);
    // Release 1 serves; release 2's replica exited.
    let mut old = running(NODES[0], "web", 0);
    old.record.id = placement_id("web", 1, 0);
    let mut new = running(NODES[1], "web", 0);
    new.record.id = placement_id("web", 2, 0);
    new.record.release = 2;
    new.record.state = ContainerState::Exited;
    view.containers = vec![old, new];
    let mut core = core(&me);
    let t0 = Instant::now();
    let rollbacks = |actions: &[DriverAction]| {
        actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    DriverAction::RollBack {
                        failed: 2,
                        previous: 1,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(rollbacks(&core.plan(t0, &view, &apps)), 1);
    assert_eq!(rollbacks(&core.plan(t0 + ms(100), &view, &apps)), 0);
    core.handle_outcome(
        t0 + ms(150),
        Outcome::RolledBack {
            app: "web".into(),
            failed: 2,
            result: Err("catalog database error: disk full".into()),
        },
    );
    let actions = core.plan(t0 + ms(200), &view, &apps);
    assert_eq!(rollbacks(&actions), 1, "the write failed: tried again");
    assert!(
        actions.iter().any(
            |a| matches!(a, DriverAction::PublishFailure(f) if f.reason.contains("disk full"))
        )
    );
}

fn request() -> proto::api::PlacementRequest {
    proto::api::PlacementRequest {
        placement_id: placement_id("web", 1, 0),
        app: "web".into(),
        release: release("web", 1),
        replica: 0,
        holders: Vec::new(),
        tenant: None,
        isolation: Default::default(),
    }
}

fn target(node_id: &str, api_addr: SocketAddr) -> Target {
    Target {
        node_id: node_id.into(),
        api_addr,
    }
}

#[tokio::test]
async fn a_peer_that_accepts_tcp_and_never_answers_is_cut_off_at_the_deadline() {
    // The kernel completes the handshake from the backlog; nothing ever reads.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap();
    let client = api::Client::new(&hole.to_string()).unwrap();
    let started = Instant::now();
    let result = within(ms(300), async {
        client.place(&request()).await.map_err(|e| e.to_string())
    })
    .await;
    let err = result.unwrap_err();
    assert!(err.contains("no answer within 300 ms"), "{err}");
    // Loose bound: the client's own timeout is 30 s.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_black_holed_peer_does_not_delay_the_action_to_a_good_peer() {
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap();
    let good = addr(1);
    // The real client for the black hole; a fake that admits at once for the good peer.
    let send = move |to: SocketAddr| async move {
        if to == good {
            return Ok(PlacementReply::Admitted);
        }
        let client = api::Client::new(&to.to_string()).map_err(|e| e.to_string())?;
        client.place(&request()).await.map_err(|e| e.to_string())
    };
    let mut dispatcher: Dispatcher<(&str, Outcome)> = Dispatcher::new(8);
    dispatcher.push(async move {
        let targets = [target("slow", hole)];
        (
            "slow",
            place_on_first(&request(), &targets, ms(500), send).await,
        )
    });
    dispatcher.push(async move {
        let targets = [target("good", good)];
        (
            "good",
            place_on_first(&request(), &targets, ms(500), send).await,
        )
    });
    let (first, outcome) = dispatcher.next().await.unwrap();
    assert_eq!(first, "good", "the good peer's action finished first");
    assert!(matches!(outcome, Outcome::Placed { node_id, .. } if node_id == "good"));
    let (second, outcome) = dispatcher.next().await.unwrap();
    assert_eq!(second, "slow");
    assert!(
        matches!(&outcome, Outcome::Refused { reason, .. } if reason.contains("no answer within")),
        "{outcome:?}"
    );
    assert!(dispatcher.next().await.is_none());
}

#[tokio::test]
async fn a_silent_target_is_skipped_for_the_next_one_after_its_deadline() {
    let targets = [target("silent", addr(0)), target("good", addr(1))];
    let outcome = place_on_first(&request(), &targets, ms(50), |to| async move {
        if to == addr(0) {
            std::future::pending::<()>().await;
        }
        Ok(PlacementReply::Admitted)
    })
    .await;
    assert_eq!(
        outcome,
        Outcome::Placed {
            placement_id: placement_id("web", 1, 0),
            node_id: "good".into()
        }
    );
}

#[tokio::test]
async fn the_dispatcher_runs_at_most_its_limit_at_once_in_order() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut dispatcher: Dispatcher<usize> = Dispatcher::new(2);
    for i in 0..5 {
        let gate = gate.clone();
        dispatcher.push(async move {
            gate.acquire().await.unwrap().forget();
            i
        });
    }
    assert_eq!((dispatcher.running(), dispatcher.queued()), (2, 3));
    gate.add_permits(1);
    let done = dispatcher.next().await.unwrap();
    assert!(done < 2, "one of the first two finished: {done}");
    assert_eq!((dispatcher.running(), dispatcher.queued()), (2, 2));
    gate.add_permits(4);
    let mut rest = Vec::new();
    while let Some(i) = dispatcher.next().await {
        rest.push(i);
    }
    rest.sort();
    assert_eq!(rest.len(), 4);
    assert!(!rest.contains(&done));
}

#[test]
fn a_gvisor_tenant_is_placed_only_on_nodes_with_runsc_and_says_why_when_none_has_it() {
    let mut gvisor_app = app("sandboxed", 2);
    gvisor_app.isolation = proto::tenancy::Isolation::Gvisor;
    gvisor_app.record.tenant = Some("acme".into());
    let apps = [gvisor_app];
    let elected_id = elected(&view(), "sandboxed").unwrap();

    // No node has runsc: nothing is offered, and the failure names gVisor.
    let actions = core(&elected_id).plan(Instant::now(), &view(), &apps);
    assert!(places(&actions).is_empty(), "{actions:?}");
    let reason = actions
        .iter()
        .find_map(|action| match action {
            DriverAction::PublishFailure(failure) => Some(failure.reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        reason.contains("gVisor") && reason.contains("runsc"),
        "{reason}"
    );

    // Only node-c has it: every replica is offered to node-c and to no other node.
    let mut view = view();
    for node in &mut view.nodes {
        if node.node_id == "node-c"
            && let Some(identity) = node.identity.as_mut()
        {
            identity.gvisor = true;
        }
    }
    let actions = core(&elected_id).plan(Instant::now(), &view, &apps);
    let placed = places(&actions);
    assert_eq!(placed.len(), 2, "{actions:?}");
    for (_, targets) in &placed {
        assert_eq!(targets, &["node-c".to_string()]);
    }
    let requests: Vec<_> = actions
        .iter()
        .filter_map(|action| match action {
            DriverAction::Place { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    assert!(
        requests
            .iter()
            .all(|r| r.isolation == proto::tenancy::Isolation::Gvisor)
    );

    // A plain tenant's app still goes anywhere.
    let plain = [app("plain", 4)];
    let elected_plain = elected(&view, "plain").unwrap();
    let placed = places(&core(&elected_plain).plan(Instant::now(), &view, &plain));
    let nodes: std::collections::BTreeSet<_> = placed.iter().flat_map(|(_, t)| t.clone()).collect();
    assert!(nodes.len() > 1, "{placed:?}");
}
