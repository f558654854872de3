//! The chaos suite (issue 5): real agents, real Docker, an app of 3 replicas on 5 agents,
//! continuous traffic through an ingress member, and something breaks. Each scenario is a
//! list of steps (`testbed::scenario`): the runner prints every step with how long it took
//! (figures, never asserted: those come from `testbed bench failover`), and a failure names
//! the step it stopped at.
//!
//! Scenarios 1 (host loss, and the host coming back), 2 (agent loss only), 3 (partition
//! 2|3, with and without a deploy on the majority), 5 (stop all, start all: at once and one
//! by one), and the partition tool itself; 4 and 6 (rollouts, drain) are in
//! `chaos_rollout.rs`. The scenarios take one whole cluster each, so they run one at a time
//! (`SERIAL`) on this 2-core machine; each uses its own loopback net (127.0.40-47.x) and app
//! name.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use node::testsuite::{Step, split_2_3_and_heal};
use testbed::cgroups::AgentCgroups;
use testbed::chaos::ChaosCluster;
use testbed::chaos::partition::{Partition, table_exists};
use testbed::harness::LocalCluster;
use testbed::scenario::{ChaosRun, ChaosStep, run_on_agents};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn ip(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, net, host)
}

/// One datagram from `from` to `to` and its echo back, each within 300 ms.
async fn udp_round_trip(from: &UdpSocket, to: &UdpSocket) -> bool {
    let wait = Duration::from_millis(300);
    if from
        .send_to(b"ping", to.local_addr().unwrap())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let Ok(Ok((_, sender))) = tokio::time::timeout(wait, to.recv_from(&mut buf)).await else {
        return false;
    };
    if to.send_to(b"pong", sender).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(wait, from.recv_from(&mut buf)).await,
        Ok(Ok(_))
    )
}

/// A TCP connection from a socket bound to `from` to `to`, within 500 ms.
async fn tcp_connects_from(from: Ipv4Addr, to: SocketAddr) -> bool {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.into(), 0)).unwrap();
    matches!(
        tokio::time::timeout(Duration::from_millis(500), socket.connect(to)).await,
        Ok(Ok(_))
    )
}

/// A TCP connection from an unbound socket of this process (source 127.0.0.1, no agent's
/// cgroup): the test's own calls and its load generator.
async fn tcp_connects(to: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(to)
        )
        .await,
        Ok(Ok(_))
    )
}

/// A TCP connection from a process living in the cgroup of the agent on `agent` (an
/// unbound socket, as an agent's API client opens), within 1 s.
fn tcp_connects_as_agent(cgroups: &AgentCgroups, agent: Ipv4Addr, to: SocketAddr) -> bool {
    // curl's telnet:// only opens a connection; time_connect stays 0 when it never opened.
    let output = Command::new("sh")
        .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
        .arg(cgroups.create(agent).unwrap())
        .args(["curl", "-s", "-o", "/dev/null", "-w", "%{time_connect}"])
        .args(["--connect-timeout", "1", "--max-time", "1"])
        .arg(format!("telnet://{to}"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let connect: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    connect > 0.0
}

/// Accepts and drops connections on `addr` in the background.
async fn listen(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_cuts_udp_and_tcp_between_the_groups_and_nothing_else_and_always_heals() {
    const NET: u8 = 40;
    let (a, b, outsider) = (ip(NET, 2), ip(NET, 3), ip(NET, 9));
    let sock_a = UdpSocket::bind((a, 0)).await.unwrap();
    let sock_b = UdpSocket::bind((b, 0)).await.unwrap();
    let sock_out = UdpSocket::bind((outsider, 0)).await.unwrap();
    let api_b = SocketAddr::new(b.into(), testbed::harness::API_PORT);
    let replica_port_b = SocketAddr::new(b.into(), 20_555);
    let api_a = SocketAddr::new(a.into(), testbed::harness::API_PORT);
    let _servers = [
        listen(api_b).await,
        listen(replica_port_b).await,
        listen(api_a).await,
    ];
    let cgroups = AgentCgroups::detect().unwrap();
    // As agents' are: in place before the partition (nft resolves a cgroup when it loads).
    cgroups.create(a).unwrap();
    cgroups.create(b).unwrap();

    assert!(udp_round_trip(&sock_a, &sock_b).await, "before: a <-> b");
    assert!(tcp_connects_from(a, api_b).await, "before: tcp a -> b");
    assert!(
        tcp_connects_as_agent(&cgroups, a, api_b),
        "before: agent a -> b's API"
    );

    let partition = Partition::new(&[a], &[b]).unwrap();
    let table = partition.table().to_string();
    assert!(table_exists(&table));
    assert!(!udp_round_trip(&sock_a, &sock_b).await, "during: a -> b");
    assert!(!udp_round_trip(&sock_b, &sock_a).await, "during: b -> a");
    assert!(!tcp_connects_from(a, api_b).await, "during: tcp a -> b");
    assert!(!tcp_connects_from(b, api_a).await, "during: tcp b -> a");
    assert!(
        !tcp_connects_as_agent(&cgroups, a, api_b),
        "during: agent a's unbound socket -> b's API"
    );
    assert!(
        !tcp_connects_as_agent(&cgroups, b, api_a),
        "during: agent b's unbound socket -> a's API"
    );
    // What must keep flowing: the test's own calls, an ingress in agent a reaching a
    // replica published on b's address, and anyone outside the two groups.
    assert!(tcp_connects(api_b).await, "during: the test -> b's API");
    assert!(
        tcp_connects_as_agent(&cgroups, a, replica_port_b),
        "during: agent a -> a replica port on b"
    );
    assert!(
        udp_round_trip(&sock_out, &sock_b).await,
        "during: outsider <-> b"
    );
    assert!(
        udp_round_trip(&sock_out, &sock_a).await,
        "during: outsider <-> a"
    );

    partition.heal().unwrap();
    assert!(!table_exists(&table), "heal removes the table");
    assert!(udp_round_trip(&sock_a, &sock_b).await, "after: a <-> b");
    assert!(tcp_connects_from(a, api_b).await, "after: tcp a -> b");
    assert!(
        tcp_connects_as_agent(&cgroups, a, api_b),
        "after: agent a -> b's API"
    );

    // A panicking test still removes its table. (The panic message in the output is this
    // deliberate one.)
    let mut table = String::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let partition = Partition::new(&[a], &[b]).unwrap();
        table = partition.table().to_string();
        panic!("deliberate panic while {table} is in place");
    }));
    assert!(outcome.is_err());
    assert!(!table_exists(&table), "a panic left {table} behind");
    assert!(
        udp_round_trip(&sock_a, &sock_b).await,
        "after a panic: a <-> b"
    );
    cgroups.remove(a);
    cgroups.remove(b);
}

/// Traffic before anything breaks, so the record shows what changed.
const WARM_UP: Duration = Duration::from_secs(2);

/// Losing a host that runs a replica (agent and containers), under load, until 3 replicas
/// are healthy on the other nodes; `victim` names it.
fn lose_a_host() -> Vec<ChaosStep> {
    use ChaosStep::*;
    vec![
        PickReplicaHost("victim"),
        Mark("kill"),
        KillHost("victim"),
        ExpectNoReplicaOn("victim"),
        ExpectRoutable {
            count: 3,
            off: Some("victim"),
            last_release: false,
        },
        Mark("replaced"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn host_loss_brings_the_replica_count_back_to_three_on_the_other_nodes() {
    use ChaosStep::*;
    let _serial = SERIAL.lock().await;
    let chaos = ChaosCluster::start(41, "chaos-host", 5, 3).await.unwrap();
    let mut steps = vec![StartLoad, Traffic(WARM_UP)];
    steps.extend(lose_a_host());
    steps.extend([
        // Exactly 3, not more: in every view and in Docker, held for a while.
        ExpectExactly(3),
        CheckEveryView {
            count: 3,
            off: Some("victim"),
        },
        StopLoad,
        ReportHostLoss("victim"),
        CheckServedAfterWithout {
            mark: "replaced",
            off: "victim",
        },
    ]);
    ChaosRun::new(chaos).run(steps).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_host_that_comes_back_leaves_exactly_three_replicas() {
    use ChaosStep::*;
    let _serial = SERIAL.lock().await;
    let chaos = ChaosCluster::start(44, "chaos-return", 5, 3).await.unwrap();
    let mut steps = vec![StartLoad];
    steps.extend(lose_a_host());
    steps.extend([
        // The host returns with its killed containers still on disk, as after a power loss.
        Mark("restart"),
        Restart("victim"),
        Agents(Step::Converged),
        ExpectExactly(3),
        StopLoad,
        ReportHostLoss("victim"),
    ]);
    ChaosRun::new(chaos).run(steps).await.unwrap();
}

/// Scenario 2: kill -9 of an agent alone; its containers keep running and answering. The
/// cluster replaces them; the agent restarts, adopts its containers, the surplus is removed
/// by the rule, exactly 3 remain, and no request fails all along (the ingress never routes
/// to a container it cannot reach).
#[tokio::test(flavor = "multi_thread")]
async fn agent_loss_only_then_restart_adopts_and_leaves_exactly_three_with_no_failed_request() {
    use ChaosStep::*;
    let _serial = SERIAL.lock().await;
    let chaos = ChaosCluster::start(44, "chaos-agent", 5, 3).await.unwrap();
    let steps = vec![
        StartLoad,
        Traffic(WARM_UP),
        PickReplicaHost("victim"),
        Mark("kill agent"),
        KillAgentOnly("victim"),
        ExpectRoutable {
            count: 3,
            off: Some("victim"),
            last_release: false,
        },
        Mark("replaced"),
        // The orphaned container still runs next to its replacement.
        CheckContainerOutlived("victim"),
        Mark("restart agent"),
        Restart("victim"),
        Agents(Step::Converged),
        ExpectExactly(3),
        StopLoad,
        CheckNoFailedRequest,
    ];
    ChaosRun::new(chaos).run(steps).await.unwrap();
}

/// Scenario 5: every agent stops (SIGTERM: together, or one after the other), then they
/// all start again: the app is served again with its last release and exactly 3 replicas.
async fn stop_all_and_start_again(net: u8, app: &str, one_by_one: bool) {
    use ChaosStep::*;
    let chaos = ChaosCluster::start(net, app, 5, 3).await.unwrap();
    let steps = vec![
        // A second release, so "the last release" is not simply the only one.
        Deploy("second"),
        ExpectRoutable {
            count: 3,
            off: None,
            last_release: true,
        },
        ExpectExactly(3),
        StartLoad,
        Traffic(WARM_UP),
        Mark("stop all"),
        StopAll { one_by_one },
        Mark("start all"),
        StartAll,
        Agents(Step::Converged),
        ExpectIngress,
        Mark("serving"),
        ExpectRoutable {
            count: 3,
            off: None,
            last_release: true,
        },
        ExpectExactly(3),
        StopLoad,
        CheckReleasesEverywhere { routable: None },
        // Once serving again, only the last release answers.
        CheckOnlyLastReleaseAfter("serving"),
    ];
    ChaosRun::new(chaos).run(steps).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_every_agent_at_once_and_starting_them_again_serves_the_last_release_with_exactly_three()
 {
    let _serial = SERIAL.lock().await;
    stop_all_and_start_again(42, "chaos-restart", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_every_agent_one_by_one_and_starting_them_again_serves_the_last_release_with_exactly_three()
 {
    let _serial = SERIAL.lock().await;
    stop_all_and_start_again(45, "chaos-rolling-stop", true).await;
}

/// Scenario 3: a partition 2|3 where the minority holds one replica; both sides act (each
/// runs 3 replicas of its own); with `deploy_during`, the majority ships a new release
/// meanwhile; then the partition heals: exactly 3 replicas of the current release remain,
/// and every node has every release.
async fn partition_2_3(net: u8, app: &str, deploy_during: bool) {
    use ChaosStep::*;
    let chaos = ChaosCluster::start(net, app, 5, 3).await.unwrap();
    // The minority holds one replica and one node without; the majority the other two
    // replicas, the rest, and the ingress member.
    let mut steps = vec![
        StartLoad,
        PickReplicaHost("with"),
        PickWorkerWithoutReplica("without"),
        Mark("partition"),
        PartitionOff(vec!["with", "without"]),
        // Both sides act: each runs 3 replicas of its own.
        ExpectEachSide {
            side: vec!["with", "without"],
            count: 3,
        },
    ];
    if deploy_during {
        // The majority ships a release while cut off from the minority.
        steps.extend([
            Deploy("during-partition"),
            ExpectRoutable {
                count: 3,
                off: None,
                last_release: true,
            },
        ]);
    }
    steps.extend([
        Mark("heal"),
        Heal,
        Agents(Step::Converged),
        ExpectExactly(3),
        StopLoad,
        // Every node agrees on the current release and keeps every release.
        CheckReleasesEverywhere { routable: Some(3) },
    ]);
    ChaosRun::new(chaos).run(steps).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_2_3_where_both_sides_act_heals_to_exactly_three() {
    let _serial = SERIAL.lock().await;
    partition_2_3(43, "chaos-split", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_2_3_with_a_deploy_on_the_majority_heals_to_exactly_three_with_every_release_intact()
 {
    let _serial = SERIAL.lock().await;
    partition_2_3(46, "chaos-split-deploy", true).await;
}

/// The partition tool on real agents: gossip and API between the two sides are cut (each
/// side sees exactly itself live), and after the heal every agent is live everywhere
/// again. The same steps run on the in-process cluster
/// (`node/tests/in_process_cluster.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_between_real_agents_splits_their_views_until_healed() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start_with(47, 0, Vec::new()).unwrap();
    cluster.isolate_agents_in_cgroups().unwrap();
    for _ in 0..5 {
        cluster.add_agent(None, Vec::new()).unwrap();
    }
    run_on_agents(&mut cluster, split_2_3_and_heal())
        .await
        .unwrap();
}
