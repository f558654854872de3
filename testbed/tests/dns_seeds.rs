//! Seeds given as DNS names are resolved (hosts file here, through hickory) and dialed.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proto::api::NodeStatus;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(
    bin: &std::path::Path,
    id: &str,
    gossip: &str,
    api: &str,
    seeds: &str,
    key: &str,
    dir: &std::path::Path,
) -> Agent {
    Agent(
        Command::new(bin)
            .args([
                "agent",
                "--node-id",
                id,
                "--gossip-addr",
                gossip,
                "--api-addr",
                api,
            ])
            .args([
                "--seeds",
                seeds,
                "--cluster-key",
                key,
                "--gossip-interval-ms",
                "200",
            ])
            .args(["--data-dir", &dir.join(id).display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stratus agent starts"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_joins_through_a_seed_given_by_name() {
    let bin = testbed::harness::stratus_bin().unwrap();
    let key = testbed::harness::keygen(&bin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `localhost` resolves to 127.0.0.1 through the hosts file.
    let _seed = agent(
        &bin,
        "named-seed",
        "127.0.0.1:17946",
        "127.0.0.1:17070",
        "",
        &key,
        dir.path(),
    );
    let _joiner = agent(
        &bin,
        "joiner",
        "127.0.16.3:17946",
        "127.0.16.3:17070",
        "localhost:17946",
        &key,
        dir.path(),
    );
    let client = api::Client::new("127.0.0.1:17070").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(view) = client.nodes().await
            && view
                .nodes
                .iter()
                .any(|node| node.node_id == "joiner" && node.status == NodeStatus::Live)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "joiner never appeared through the named seed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
