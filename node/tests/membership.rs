//! Two in-process members over real sealed UDP sockets on loopback: container records are
//! published, updated, removed, and vanish from views as soon as their node is dead.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::time::Duration;

use node::cluster::membership::{ClusterView, Membership, MembershipConfig, SealedUdpTransport};
use node::cluster::seal::{ClusterKey, Keyring};
use proto::api::NodeStatus;
use proto::{ContainerHealth, ContainerRecord, ContainerState, NodeIdentity, NodeLoad};
use rand::SeedableRng;

fn keyring() -> Keyring {
    let key = ClusterKey::generate(&mut rand::rngs::StdRng::seed_from_u64(9));
    Keyring::parse(&[key]).unwrap()
}

async fn member(
    id: &str,
    addr: &str,
    seeds: &[&str],
    transport: &SealedUdpTransport,
) -> Membership {
    let addr: SocketAddr = addr.parse().unwrap();
    let config = MembershipConfig {
        seeds: seeds.iter().map(|seed| seed.parse().unwrap()).collect(),
        gossip_interval: Duration::from_millis(100),
        ..MembershipConfig::new(id, 1, addr)
    };
    let identity = NodeIdentity {
        node_id: id.into(),
        gossip_addr: addr,
        api_addr: SocketAddr::new(addr.ip(), 7070),
        api_tls: false,
        ingress_addr: None,
        version: "test".into(),
        labels: Default::default(),
        started_at_ms: 0,
        runs_workloads: true,
        builds: false,
        gvisor: false,
    };
    Membership::start(config, &identity, NodeLoad::default(), transport)
        .await
        .unwrap()
}

fn record(id: &str, health: ContainerHealth) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        app: "web".into(),
        release: 2,
        replica: 0,
        addr: "127.0.17.2:30000".parse().unwrap(),
        state: ContainerState::Running,
        health,
        detail: None,
    }
}

async fn wait_view(
    views: &mut tokio::sync::watch::Receiver<std::sync::Arc<ClusterView>>,
    what: &str,
    predicate: impl Fn(&ClusterView) -> bool,
) {
    let reached = matches!(
        tokio::time::timeout(
            Duration::from_secs(30),
            views.wait_for(|view| predicate(view))
        )
        .await,
        Ok(Ok(_))
    );
    assert!(
        reached,
        "timed out waiting for {what}: {:?}",
        *views.borrow()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn container_records_follow_their_node() {
    let transport_a = SealedUdpTransport::new(Some(keyring()));
    let transport_b = SealedUdpTransport::new(Some(keyring()));
    let a = member("a", "127.0.17.2:7946", &[], &transport_a).await;
    let b = member("b", "127.0.17.3:7946", &["127.0.17.2:7946"], &transport_b).await;
    let mut b_views = b.subscribe().await;

    a.publish_container(&record("web-2-0", ContainerHealth::Unknown))
        .await;
    wait_view(&mut b_views, "a's record on b", |view| {
        view.containers
            .iter()
            .any(|c| c.node_id == "a" && c.record.id == "web-2-0")
    })
    .await;

    a.publish_container(&record("web-2-0", ContainerHealth::Healthy))
        .await;
    wait_view(&mut b_views, "the health update", |view| {
        view.containers.iter().any(|c| c.record.is_routable())
    })
    .await;

    a.remove_container("web-2-0").await;
    wait_view(&mut b_views, "the record removed", |view| {
        view.containers.is_empty()
    })
    .await;

    a.publish_container(&record("web-2-1", ContainerHealth::Healthy))
        .await;
    wait_view(&mut b_views, "a second record", |view| {
        view.containers.len() == 1
    })
    .await;

    // a stops without a word: once b's failure detector declares it dead, its records
    // are gone from the view in the same update.
    a.shutdown().await;
    wait_view(&mut b_views, "a dead", |view| {
        view.node("a")
            .is_some_and(|node| node.status == NodeStatus::Dead)
    })
    .await;
    assert!(b_views.borrow().containers.is_empty());
    assert!(transport_b.stats().snapshot().encrypted);
    b.shutdown().await;
}
