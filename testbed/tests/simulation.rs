//! The agent's membership code on chitchat's in-memory transport, on paused time.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use testbed::sim::measure_gossip;

#[tokio::test(start_paused = true)]
async fn a_key_reaches_every_one_of_150_simulated_nodes_within_ten_rounds() {
    let report = measure_gossip(150, Duration::from_millis(500), 60)
        .await
        .unwrap();
    let joined = report.rounds_to_join.expect("every node joined");
    let spread = report.rounds_to_spread.expect("the key reached every node");
    println!(
        "150 nodes: joined in {joined} rounds, key spread in {spread} rounds, {:.0} B/node/round",
        report.steady_bytes_per_node_round
    );
    assert!(
        spread <= 10,
        "a key took {spread} rounds to reach 150 nodes"
    );
    assert!(report.steady_bytes_per_node_round > 0.0);
}
