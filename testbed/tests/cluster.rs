//! Real `stratus agent` processes gossiping over sealed UDP on loopback addresses: kill -9,
//! restarts, wrong keys, garbage datagrams and key rotation, which need real processes and
//! real UDP. (A graceful leave runs on the in-process cluster,
//! `node/tests/in_process_cluster.rs`.) Each test owns a distinct `127.0.<net>.0/24` so
//! they can run in parallel.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use proto::api::NodeStatus;
use rand::RngCore;
use testbed::harness::{LocalCluster, live_ids};

const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn five_agents_converge_detect_a_kill9_and_readmit_the_restarted_node() {
    let mut cluster = LocalCluster::start(11, 5).unwrap();
    let took = cluster
        .wait_for("5 live nodes everywhere", CONVERGE, || cluster.converged())
        .await
        .unwrap();
    println!("converged in {:.2} s", took.as_secs_f64());

    // Every node reports identity and load of every other.
    for (_, view) in cluster.views().await.unwrap() {
        assert_eq!(view.nodes.len(), 5);
        for node in &view.nodes {
            let identity = node.identity.as_ref().expect("identity gossiped");
            assert_eq!(identity.node_id, node.node_id);
            assert_eq!(identity.gossip_addr, node.gossip_addr);
            let load = node.load.expect("load gossiped");
            assert!(load.cpu_cores >= 1 && load.mem_total_bytes > 0);
        }
    }

    let victim = 3;
    let victim_id = cluster.agents[victim].node_id.clone();
    let old_generation = cluster.views().await.unwrap()[0]
        .1
        .nodes
        .iter()
        .find(|node| node.node_id == victim_id)
        .unwrap()
        .generation;
    cluster.kill9(victim);
    let detected = cluster
        .wait_for("the killed node dead on every peer", CONVERGE, || async {
            cluster
                .statuses_of(&victim_id)
                .await
                .is_ok_and(|statuses| statuses.iter().all(|s| *s == Some(NodeStatus::Dead)))
        })
        .await
        .unwrap();
    println!(
        "kill -9 -> dead on all peers in {:.2} s",
        detected.as_secs_f64()
    );

    cluster.restart(victim).unwrap();
    cluster
        .wait_for("the restarted node live everywhere", CONVERGE, || {
            cluster.converged()
        })
        .await
        .unwrap();
    for (_, view) in cluster.views().await.unwrap() {
        let node = view
            .nodes
            .iter()
            .find(|node| node.node_id == victim_id)
            .unwrap();
        assert_eq!(node.status, NodeStatus::Live);
        assert!(
            node.generation > old_generation,
            "restart must bring a new generation: {} <= {old_generation}",
            node.generation
        );
    }

    // The CLI prints the same view as a table.
    let output = Command::new(&cluster.bin)
        .args(["nodes", "--api", &cluster.agents[0].api_addr().to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    for agent in &cluster.agents {
        assert!(table.contains(&agent.node_id), "{table}");
    }
    assert!(table.contains("5 live of 5 known"), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_never_joins_and_garbage_datagrams_are_dropped_and_counted() {
    let mut cluster = LocalCluster::start(13, 3).unwrap();
    cluster
        .wait_for("3 live nodes everywhere", CONVERGE, || cluster.converged())
        .await
        .unwrap();
    let intruder_key = testbed::harness::keygen(&cluster.bin).unwrap();
    let intruder = cluster.add_agent(Some(intruder_key), Vec::new()).unwrap();
    let intruder_id = cluster.agents[intruder].node_id.clone();

    // Wait until the members have rejected the intruder's datagrams several times...
    let victim_client = cluster.agents[0].client();
    cluster
        .wait_for(
            "the seed to reject intruder datagrams",
            CONVERGE,
            || async {
                victim_client
                    .health()
                    .await
                    .is_ok_and(|health| health.gossip.dropped_unauthenticated >= 5)
            },
        )
        .await
        .unwrap();
    // ...and then check no view, the intruder's included, ever mixed the two.
    for _ in 0..10 {
        for (index, view) in cluster.views().await.unwrap() {
            let ids: Vec<&str> = view
                .nodes
                .iter()
                .map(|node| node.node_id.as_str())
                .collect();
            if index == intruder {
                assert_eq!(
                    ids,
                    vec![intruder_id.as_str()],
                    "intruder learned the cluster"
                );
            } else {
                assert!(
                    !ids.contains(&intruder_id.as_str()),
                    "intruder joined: {ids:?}"
                );
                assert_eq!(live_ids(&view).len(), 3);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Garbage of every shape: random bytes, truncated, right version byte, huge.
    let target = cluster.agents[1].gossip_addr();
    let client = cluster.agents[1].client();
    let before = client.health().await.unwrap().gossip;
    let socket = UdpSocket::bind("127.0.13.200:0").unwrap();
    let mut rng = rand::rng();
    let mut sent = 0u64;
    for len in [0usize, 1, 10, 54, 55, 200, 1400, 9000, 65_000] {
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        if let Some(first) = junk.first_mut() {
            *first = 1;
        }
        socket.send_to(&junk, target).unwrap();
        sent += 1;
    }
    cluster
        .wait_for("garbage to be counted", Duration::from_secs(10), || async {
            client.health().await.is_ok_and(|health| {
                health.gossip.dropped_unauthenticated >= before.dropped_unauthenticated + sent
            })
        })
        .await
        .unwrap();
    // The cluster is unharmed.
    cluster.kill9(intruder);
    cluster
        .wait_for("the three members still live", CONVERGE, || {
            cluster.converged()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_key_rotates_node_by_node_without_losing_the_cluster() {
    let mut cluster = LocalCluster::start(14, 3).unwrap();
    cluster
        .wait_for("3 live nodes", CONVERGE, || cluster.converged())
        .await
        .unwrap();
    let old = cluster.key.clone();
    let new = testbed::harness::keygen(&cluster.bin).unwrap();
    // 1. accept the new key everywhere; 2. seal with it everywhere; 3. drop the old one.
    for keys in [format!("{old},{new}"), format!("{new},{old}"), new.clone()] {
        for index in 0..cluster.agents.len() {
            cluster.agents[index].key = keys.clone();
            cluster.restart(index).unwrap();
            cluster
                .wait_for("every node live across the rotation step", CONVERGE, || {
                    cluster.converged()
                })
                .await
                .unwrap();
        }
    }
    // A node left on the old key is now an outsider: it keeps gossiping to its seed, the
    // seed rejects every datagram, and no view ever holds both sides.
    let seed = cluster.agents[0].client();
    let rejected_before = seed.health().await.unwrap().gossip.dropped_unauthenticated;
    let straggler = cluster.add_agent(Some(old), Vec::new()).unwrap();
    let straggler_id = cluster.agents[straggler].node_id.clone();
    let straggler_client = cluster.agents[straggler].client();
    const REJECTED: u64 = 10;
    cluster
        .wait_for(
            "the seed to reject 10 of the straggler's datagrams",
            CONVERGE,
            || {
                let (seed, straggler_client, cluster) = (&seed, &straggler_client, &cluster);
                let straggler_id = straggler_id.clone();
                async move {
                    // Every poll: the straggler stays out of every member's view and sees
                    // nobody but itself.
                    // (The straggler's API answers a moment after it starts.)
                    let Ok(views) = cluster.views().await else {
                        return false;
                    };
                    for (index, view) in &views {
                        let ids: Vec<&str> = view
                            .nodes
                            .iter()
                            .map(|node| node.node_id.as_str())
                            .collect();
                        if *index == straggler {
                            assert_eq!(ids, vec![straggler_id.as_str()], "straggler joined");
                        } else {
                            assert!(
                                !ids.contains(&straggler_id.as_str()),
                                "straggler in node-{}'s view: {ids:?}",
                                index + 1
                            );
                            assert_eq!(live_ids(view).len(), 3, "{ids:?}");
                        }
                    }
                    // Read the seed first: what it rejected was sent before the straggler's
                    // counter is read, so it can never exceed that counter.
                    let rejected = seed.health().await.unwrap().gossip.dropped_unauthenticated
                        - rejected_before;
                    let Ok(straggler_health) = straggler_client.health().await else {
                        return false;
                    };
                    let straggler_stats = straggler_health.gossip;
                    assert!(
                        rejected <= straggler_stats.datagrams_sent,
                        "the seed rejected {rejected} datagrams, more than the straggler's {} \
                         (something else sends with a wrong key)",
                        straggler_stats.datagrams_sent
                    );
                    assert_eq!(
                        straggler_stats.datagrams_received, 0,
                        "a member answered the straggler"
                    );
                    rejected >= REJECTED
                }
            },
        )
        .await
        .unwrap();
}

#[test]
fn the_agent_refuses_to_start_without_a_key() {
    let bin = testbed::harness::stratus_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin)
        .args([
            "agent",
            "--gossip-addr",
            "127.0.15.2:7946",
            "--api-addr",
            "127.0.15.2:7070",
        ])
        .args(["--data-dir", &dir.path().display().to_string()])
        .env_remove("STRATUS_CLUSTER_KEY")
        .env_remove("STRATUS_CLUSTER_KEY_FILE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("stratus keygen") && stderr.contains("--insecure-no-encryption"),
        "{stderr}"
    );
}

#[test]
fn keygen_prints_a_fresh_key_each_time() {
    let bin = testbed::harness::stratus_bin().unwrap();
    let first = testbed::harness::keygen(&bin).unwrap();
    let second = testbed::harness::keygen(&bin).unwrap();
    assert_ne!(first, second);
    assert!(node::cluster::seal::ClusterKey::parse(&first).is_ok());
}
