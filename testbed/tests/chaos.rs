//! The chaos suite (issue 5): real agents, real Docker, an app of 3 replicas on 5 agents,
//! continuous traffic through an ingress member, and something breaks. Each scenario is a
//! script of steps, asserts the outcome and prints its timings (never asserted: figures
//! come from `testbed bench failover`).
//!
//! Scenarios 1 (host loss, and the host coming back), 2 (agent loss only), 3 (partition
//! 2|3, with and without a deploy on the majority), 5 (stop all, start all: at once and one
//! by one), and the partition tool itself; 4 and 6 (rollouts, drain) are in
//! `chaos_rollout.rs`. The scenarios take one whole cluster each, so they run one at a time
//! (`SERIAL`) on this 2-core machine; each uses its own loopback net (127.0.40-47.x) and app
//! name.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use testbed::cgroups::AgentCgroups;
use testbed::chaos::host::{DockerReplica, kill_host, routable_replicas};
use testbed::chaos::partition::{Partition, table_exists};
use testbed::chaos::{ChaosCluster, SETTLE};
use testbed::harness::LocalCluster;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::Mutex;
use tokio::time::Instant;

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

fn nodes_of(replicas: &[proto::api::ReplicaView]) -> BTreeSet<String> {
    replicas.iter().map(|r| r.node_id.clone()).collect()
}

/// Exactly `count` running containers, and as many routable replicas, held for 5 s (long
/// enough for a duplicate or a missing replica to show up in either). Fails with both
/// lists.
async fn assert_exactly(chaos: &ChaosCluster, count: usize) {
    let start = Instant::now();
    let mut held_since: Option<Instant> = None;
    loop {
        let routable = chaos.routable().await;
        let docker: Vec<DockerReplica> = chaos.docker_replicas().unwrap_or_default();
        if routable.len() == count && docker.len() == count {
            let since = *held_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(5) {
                return;
            }
        } else {
            held_since = None;
        }
        if start.elapsed() > SETTLE {
            let routable: Vec<String> = routable
                .iter()
                .map(|r| format!("{} r{}/{}", r.node_id, r.release, r.replica))
                .collect();
            let docker: Vec<String> = docker
                .iter()
                .map(|d| format!("{} {}", d.node, d.placement))
                .collect();
            panic!(
                "not exactly {count} replicas after {SETTLE:?}: routable {routable:?}, \
                 running containers {docker:?}\n{}",
                chaos.cluster.logs_tail(15)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills a host that runs a replica of `chaos.app` (agent and containers) under load and
/// waits until 3 replicas are healthy on the other nodes; prints what the traffic saw.
/// Returns the dead host's index.
async fn lose_a_host(chaos: &mut ChaosCluster, load: &testbed::chaos::load::Load) -> usize {
    let victim = chaos.routable().await[0].node_id.clone();
    let index = chaos.index_of(&victim).unwrap();
    load.mark("kill");
    let killed_at = Instant::now();
    let killed = kill_host(&mut chaos.cluster, index).unwrap();
    assert!(!killed.containers.is_empty(), "{victim} ran no container");

    let witness = chaos.witness();
    let route_gone = chaos
        .cluster
        .wait_for(
            "the dead host's replicas out of the ingress's view",
            SETTLE,
            || async {
                testbed::chaos::host::all_replicas(&witness, &chaos.app)
                    .await
                    .iter()
                    .all(|r| r.node_id != victim)
            },
        )
        .await
        .unwrap();
    chaos
        .wait_for_replicas("3 healthy replicas on the other nodes", |replicas| {
            replicas.len() == 3 && replicas.iter().all(|r| r.node_id != victim)
        })
        .await
        .unwrap();
    let healthy = killed_at.elapsed();
    load.mark("replaced");
    println!(
        "host loss of {victim}: its replicas out of the ingress's view after {:.2} s, \
         replacements healthy after {:.2} s",
        route_gone.as_secs_f64(),
        healthy.as_secs_f64(),
    );
    index
}

/// What the traffic saw between the kill and the replacement.
fn print_host_loss(report: &testbed::chaos::load::LoadReport, victim: &str) {
    print!("{report}");
    let kill = report.mark("kill").unwrap();
    let failed = report.failures_between(kill, report.mark("replaced").unwrap());
    println!(
        "traffic: last answer from {victim} {}; {} requests failed between the kill and the replacement{}",
        report
            .last_answer_from(victim, kill)
            .map_or("before the kill".to_string(), |at| format!(
                "{:.2} s after the kill",
                (at - kill).as_secs_f64()
            )),
        failed.len(),
        failed
            .first()
            .zip(failed.last())
            .map_or(String::new(), |(first, last)| format!(
                " ({} to {})",
                report.relative(first.at),
                report.relative(last.at)
            )),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_loss_brings_the_replica_count_back_to_three_on_the_other_nodes() {
    let _serial = SERIAL.lock().await;
    let mut chaos = ChaosCluster::start(41, "chaos-host", 5, 3).await.unwrap();
    let load = chaos.load().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let index = lose_a_host(&mut chaos, &load).await;
    let victim = chaos.cluster.agents[index].node_id.clone();
    // Exactly 3, not more: in every view and in Docker, held for a while.
    assert_exactly(&chaos, 3).await;
    for agent in chaos.cluster.agents.iter().filter(|a| a.is_running()) {
        let view = agent.client().app(&chaos.app).await.unwrap();
        let replicas = routable_replicas(&agent.client(), &chaos.app).await;
        assert_eq!(replicas.len(), 3, "{}: {view:?}", agent.node_id);
        assert!(replicas.iter().all(|r| r.node_id != victim));
    }
    let report = load.stop().await;
    print_host_loss(&report, &victim);
    let replaced = report.mark("replaced").unwrap();
    let served_after: BTreeSet<String> = report
        .samples
        .iter()
        .filter(|s| s.at > replaced)
        .filter_map(|s| s.backend().map(|b| b.node.clone()))
        .collect();
    assert!(
        !served_after.is_empty() && !served_after.contains(&victim),
        "after the replacement the traffic went to {served_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_host_that_comes_back_leaves_exactly_three_replicas() {
    let _serial = SERIAL.lock().await;
    let mut chaos = ChaosCluster::start(44, "chaos-return", 5, 3).await.unwrap();
    let load = chaos.load().unwrap();
    let index = lose_a_host(&mut chaos, &load).await;
    let victim = chaos.cluster.agents[index].node_id.clone();
    // The host returns with its killed containers still on disk, as after a power loss.
    load.mark("restart");
    chaos.cluster.restart(index).unwrap();
    chaos
        .cluster
        .wait_for("the host live again", SETTLE, || chaos.cluster.converged())
        .await
        .unwrap();
    assert_exactly(&chaos, 3).await;
    let report = load.stop().await;
    print_host_loss(&report, &victim);
}

/// Scenario 2: kill -9 of an agent alone; its containers keep running and answering. The
/// cluster replaces them; the agent restarts, adopts its containers, the surplus is removed
/// by the rule, exactly 3 remain, and no request fails all along (the ingress never routes
/// to a container it cannot reach).
#[tokio::test(flavor = "multi_thread")]
async fn agent_loss_only_then_restart_adopts_and_leaves_exactly_three_with_no_failed_request() {
    let _serial = SERIAL.lock().await;
    let mut chaos = ChaosCluster::start(44, "chaos-agent", 5, 3).await.unwrap();
    let load = chaos.load().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = chaos.routable().await[0].node_id.clone();
    let index = chaos.index_of(&victim).unwrap();
    let running_before = chaos.docker_replicas().unwrap();
    load.mark("kill agent");
    let killed_at = Instant::now();
    testbed::chaos::host::kill_agent_only(&mut chaos.cluster, index);
    chaos
        .wait_for_replicas("3 healthy replicas on the other nodes", |replicas| {
            replicas.len() == 3 && replicas.iter().all(|r| r.node_id != victim)
        })
        .await
        .unwrap();
    let replaced = killed_at.elapsed();
    load.mark("replaced");
    // The orphaned container still runs next to its replacement.
    let running = chaos.docker_replicas().unwrap();
    assert!(
        running.iter().any(|r| r.node == victim),
        "the agent's containers should have outlived it: {running:?} (before: {running_before:?})"
    );
    load.mark("restart agent");
    let restarting = Instant::now();
    chaos.cluster.restart(index).unwrap();
    chaos
        .cluster
        .wait_for("the agent live again", SETTLE, || chaos.cluster.converged())
        .await
        .unwrap();
    assert_exactly(&chaos, 3).await;
    let settled = restarting.elapsed();
    let report = load.stop().await;
    print!("{report}");
    println!(
        "agent loss of {victim}: replaced after {:.2} s; after its restart exactly 3 (held 5 s) after {:.2} s",
        replaced.as_secs_f64(),
        settled.as_secs_f64()
    );
    assert!(
        report.failures().is_empty(),
        "requests failed: the ingress routed to a container it could not reach"
    );
}

/// Scenario 5: every agent stops (SIGTERM: together, or one after the other), then they
/// all start again: the app is served again with its last release and exactly 3 replicas.
async fn stop_all_and_start_again(net: u8, app: &str, one_by_one: bool) {
    let mut chaos = ChaosCluster::start(net, app, 5, 3).await.unwrap();
    // A second release, so "the last release" is not simply the only one.
    let last = chaos.deploy("second").await.unwrap();
    chaos
        .wait_for_replicas("the second release on 3 replicas", |replicas| {
            replicas.len() == 3 && replicas.iter().all(|r| r.release == last)
        })
        .await
        .unwrap();
    assert_exactly(&chaos, 3).await;
    let load = chaos.load().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    load.mark("stop all");
    let stopping = Instant::now();
    let statuses = if one_by_one {
        (0..chaos.cluster.agents.len())
            .map(|index| chaos.cluster.terminate(index).unwrap())
            .collect()
    } else {
        chaos.cluster.terminate_all().unwrap()
    };
    assert!(
        statuses.iter().all(|status| status.success()),
        "{statuses:?}"
    );
    let stopped = stopping.elapsed();
    load.mark("start all");
    let starting = Instant::now();
    for index in 0..chaos.cluster.agents.len() {
        chaos.cluster.restart(index).unwrap();
    }
    chaos
        .cluster
        .wait_for("every agent live again", SETTLE, || {
            chaos.cluster.converged()
        })
        .await
        .unwrap();
    let live = starting.elapsed();
    chaos.wait_for_ingress().await.unwrap();
    let serving = starting.elapsed();
    load.mark("serving");
    chaos
        .wait_for_replicas("3 replicas of the last release", |replicas| {
            replicas.len() == 3 && replicas.iter().all(|r| r.release == last)
        })
        .await
        .unwrap();
    assert_exactly(&chaos, 3).await;
    let report = load.stop().await;
    print!("{report}");
    println!(
        "stop all (SIGTERM): {:.2} s; start all: every agent live after {:.2} s, \
         serving through the ingress after {:.2} s",
        stopped.as_secs_f64(),
        live.as_secs_f64(),
        serving.as_secs_f64()
    );

    for agent in &chaos.cluster.agents {
        let view = agent.client().app(&chaos.app).await.unwrap();
        assert_eq!(
            view.release.map(|r| r.number),
            Some(last),
            "{}",
            agent.node_id
        );
        assert_eq!(
            view.releases,
            vec![chaos.release, last],
            "{}",
            agent.node_id
        );
    }
    // Once serving again, only the last release answers.
    let serving_at = report.mark("serving").unwrap();
    let stale: Vec<_> = report
        .samples
        .iter()
        .filter(|s| s.at > serving_at)
        .filter_map(|s| s.backend())
        .filter(|backend| backend.release != last)
        .collect();
    assert!(stale.is_empty(), "an old release answered: {stale:?}");
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
    let chaos = ChaosCluster::start(net, app, 5, 3).await.unwrap();
    assert!(
        chaos.cgroups,
        "partitions need agents in cgroups of their own"
    );
    let load = chaos.load().unwrap();

    // The minority holds one replica and one node without; the majority the other two
    // replicas, the rest, and the ingress member.
    let replica_nodes = nodes_of(&chaos.routable().await);
    let with = chaos.index_of(replica_nodes.first().unwrap()).unwrap();
    let without = chaos
        .workers()
        .find(|index| !replica_nodes.contains(&chaos.cluster.agents[*index].node_id))
        .unwrap();
    let minority = [with, without];
    let majority: Vec<usize> = (0..chaos.cluster.agents.len())
        .filter(|index| !minority.contains(index))
        .collect();
    let ips = |indices: &[usize]| indices.iter().map(|i| chaos.ip(*i)).collect::<Vec<_>>();
    let minority_client = chaos.cluster.agents[with].client();
    let majority_client = chaos.witness();
    let minority_ids: BTreeSet<String> = minority
        .iter()
        .map(|i| chaos.cluster.agents[*i].node_id.clone())
        .collect();

    load.mark("partition");
    let cut = Instant::now();
    let partition = Partition::new(&ips(&minority), &ips(&majority)).unwrap();
    // Both sides act: each runs 3 replicas of its own.
    chaos
        .cluster
        .wait_for("3 replicas on each side", SETTLE, || async {
            let small = routable_replicas(&minority_client, &chaos.app).await;
            let large = routable_replicas(&majority_client, &chaos.app).await;
            small.len() == 3
                && nodes_of(&small).is_subset(&minority_ids)
                && large.len() == 3
                && nodes_of(&large).is_disjoint(&minority_ids)
        })
        .await
        .unwrap();
    let both_sides = cut.elapsed();
    let mut releases = vec![chaos.release];
    if deploy_during {
        // The majority ships a release while cut off from the minority.
        let second = chaos.deploy("during-partition").await.unwrap();
        chaos
            .wait_for_replicas("the new release on the majority", |replicas| {
                replicas.len() == 3 && replicas.iter().all(|r| r.release == second)
            })
            .await
            .unwrap();
        releases.push(second);
    }
    let current = *releases.last().unwrap();

    load.mark("heal");
    let healing = Instant::now();
    partition.heal().unwrap();
    chaos
        .cluster
        .wait_for("one cluster again", SETTLE, || chaos.cluster.converged())
        .await
        .unwrap();
    assert_exactly(&chaos, 3).await;
    let healed = healing.elapsed();
    let report = load.stop().await;
    print!("{report}");
    println!(
        "partition 2|3: both sides ran 3 replicas {:.2} s after the cut; \
         exactly 3 again (held 5 s) {:.2} s after the heal",
        both_sides.as_secs_f64(),
        healed.as_secs_f64()
    );

    // Every node agrees on the current release and keeps every release.
    for agent in &chaos.cluster.agents {
        let view = agent.client().app(&chaos.app).await.unwrap();
        assert_eq!(
            view.release.map(|r| r.number),
            Some(current),
            "{}",
            agent.node_id
        );
        assert_eq!(view.releases, releases, "{}", agent.node_id);
        let replicas = routable_replicas(&agent.client(), &chaos.app).await;
        assert_eq!(replicas.len(), 3, "{}: {replicas:?}", agent.node_id);
        assert!(replicas.iter().all(|r| r.release == current));
    }
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
/// side sees the other dead), and after the heal every agent is live everywhere again.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_between_real_agents_splits_their_views_until_healed() {
    let _serial = SERIAL.lock().await;
    let mut cluster = LocalCluster::start_with(47, 0, Vec::new()).unwrap();
    cluster.isolate_agents_in_cgroups().unwrap();
    for _ in 0..5 {
        cluster.add_agent(None, Vec::new()).unwrap();
    }
    cluster
        .wait_for("5 live agents", SETTLE, || cluster.converged())
        .await
        .unwrap();
    let (minority, majority) = ([3usize, 4], [0usize, 1, 2]);
    let ips = |indices: &[usize]| {
        indices
            .iter()
            .map(|i| cluster.agents[*i].ip)
            .collect::<Vec<_>>()
    };
    let partition = Partition::new(&ips(&minority), &ips(&majority)).unwrap();
    let split = cluster
        .wait_for("each side to see the other dead", SETTLE, || async {
            let Ok(views) = cluster.views().await else {
                return false;
            };
            views.iter().all(|(index, view)| {
                let mine = if minority.contains(index) {
                    &minority[..]
                } else {
                    &majority[..]
                };
                let mut live = testbed::harness::live_ids(view);
                live.sort_unstable();
                let mut expected: Vec<&str> = mine
                    .iter()
                    .map(|i| cluster.agents[*i].node_id.as_str())
                    .collect();
                expected.sort_unstable();
                live == expected
            })
        })
        .await
        .unwrap();
    partition.heal().unwrap();
    let joined = cluster
        .wait_for("one cluster again", SETTLE, || cluster.converged())
        .await
        .unwrap();
    println!(
        "partition 2|3 of bare agents: split views after {:.2} s, one cluster {:.2} s after the heal",
        split.as_secs_f64(),
        joined.as_secs_f64()
    );
}
