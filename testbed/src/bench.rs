//! Benchmarks that print figures. Speed is measured here, never asserted in tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use node::cluster::seal::{ClusterKey, Keyring, OVERHEAD};
use proto::api::NodeStatus;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::harness::LocalCluster;
use crate::sim::{GossipReport, measure_gossip};

/// `bench gossip`: the simulation at each size up to `max_nodes`.
pub fn gossip(
    max_nodes: usize,
    interval: Duration,
    max_rounds: u32,
) -> anyhow::Result<Vec<GossipReport>> {
    let sizes: Vec<usize> = [100, 500, 1000]
        .into_iter()
        .filter(|size| *size <= max_nodes)
        .chain((![100, 500, 1000].contains(&max_nodes)).then_some(max_nodes))
        .collect();
    let mut reports = Vec::new();
    println!(
        "{:>6} {:>14} {:>16} {:>13} {:>22} {:>22}",
        "nodes",
        "join (rounds)",
        "spread (rounds)",
        "spread (s)",
        "steady B/node/round",
        "sealed B/node/round"
    );
    for size in sizes {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?;
        let wall = std::time::SystemTime::now();
        let report = runtime.block_on(measure_gossip(size, interval, max_rounds))?;
        let rounds = |rounds: Option<u32>| rounds.map_or("> limit".to_string(), |r| r.to_string());
        let spread_secs = report.rounds_to_spread.map_or("-".to_string(), |r| {
            format!("{:.1}", f64::from(r) * interval.as_secs_f64())
        });
        println!(
            "{:>6} {:>14} {:>16} {:>13} {:>22.0} {:>22.0}   ({:.0} s of CPU)",
            size,
            rounds(report.rounds_to_join),
            rounds(report.rounds_to_spread),
            spread_secs,
            report.steady_bytes_per_node_round,
            report.steady_sealed_bytes_per_node_round,
            wall.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
        );
        reports.push(report);
    }
    println!(
        "gossip interval {interval:?}, fan-out 3 (chitchat's); one round = one interval of virtual time"
    );
    Ok(reports)
}

/// `bench seal`: what sealing and opening a datagram costs, by size.
pub fn seal() -> anyhow::Result<()> {
    let key = ClusterKey::generate(&mut StdRng::seed_from_u64(1));
    let keyring = Keyring::parse(&[key])?;
    let mut rng = StdRng::seed_from_u64(2);
    println!(
        "{:>8} {:>16} {:>12} {:>14}",
        "bytes", "seal+open (µs)", "MiB/s", "size overhead"
    );
    for size in [200usize, 1_500, 16_384, 65_000] {
        let message = vec![0x5au8; size];
        let mut iterations = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(400) {
            for datagram in keyring.seal(&message, iterations, &mut rng)? {
                std::hint::black_box(keyring.open(&datagram)?);
            }
            iterations += 1;
        }
        let per_message = start.elapsed().as_secs_f64() / iterations as f64;
        println!(
            "{:>8} {:>16.2} {:>12.0} {:>13.1}%",
            size,
            per_message * 1e6,
            size as f64 / per_message / (1 << 20) as f64,
            OVERHEAD as f64 * 100.0 / size as f64
        );
    }
    println!("XChaCha20-Poly1305, {OVERHEAD} bytes of header and tag per datagram");
    Ok(())
}

/// What `bench detect` measured.
pub struct DetectReport {
    pub detections: Vec<Duration>,
    pub false_deaths: u64,
}

/// `bench detect`: kill -9 one agent at a time and time until every other agent reports it
/// dead. With `busy`, two threads spin on the CPU all along, and any live agent reported
/// dead counts as a false death.
pub async fn detect(
    net: u8,
    agents: usize,
    trials: usize,
    busy: bool,
    agent_args: Vec<String>,
) -> anyhow::Result<DetectReport> {
    let mut cluster = LocalCluster::start_with(net, agents, agent_args)?;
    cluster
        .wait_for("the cluster to converge", Duration::from_secs(60), || {
            cluster.converged()
        })
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..if busy { 2 } else { 0 })
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    // Index + 1 of the agent currently down, 0 if none.
    let down = Arc::new(AtomicUsize::new(0));
    let false_deaths = Arc::new(AtomicU64::new(0));
    let clients: Vec<(String, api::Client)> = cluster
        .agents
        .iter()
        .map(|agent| (agent.node_id.clone(), agent.client()))
        .collect();
    let watcher = {
        let (stop, down, false_deaths) = (stop.clone(), down.clone(), false_deaths.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let victim = down.load(Ordering::Relaxed);
                for (observer, client) in &clients {
                    let Ok(view) = client.nodes().await else {
                        continue;
                    };
                    for node in &view.nodes {
                        let is_victim = victim > 0 && clients[victim - 1].0 == node.node_id;
                        if node.status == NodeStatus::Dead
                            && !is_victim
                            && down.load(Ordering::Relaxed) == victim
                        {
                            eprintln!("false death: {observer} sees {} dead", node.node_id);
                            false_deaths.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut detections = Vec::new();
    for trial in 0..trials {
        let victim = 1 + trial % (agents - 1);
        let victim_id = cluster.agents[victim].node_id.clone();
        down.store(victim + 1, Ordering::Relaxed);
        cluster.kill9(victim);
        let elapsed = cluster
            .wait_for(
                &format!("{victim_id} dead on every peer"),
                Duration::from_secs(60),
                || async {
                    match cluster.statuses_of(&victim_id).await {
                        Ok(statuses) => statuses
                            .iter()
                            .all(|status| *status == Some(NodeStatus::Dead)),
                        Err(_) => false,
                    }
                },
            )
            .await?;
        println!(
            "trial {}: {victim_id} killed -9, dead on all {} peers after {:.2} s",
            trial + 1,
            agents - 1,
            elapsed.as_secs_f64()
        );
        detections.push(elapsed);
        cluster.restart(victim)?;
        cluster
            .wait_for(
                "the restarted agent to rejoin",
                Duration::from_secs(60),
                || cluster.converged(),
            )
            .await?;
        down.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.await;
    for burner in burners {
        let _ = burner.join();
    }
    Ok(DetectReport {
        detections,
        false_deaths: false_deaths.load(Ordering::Relaxed),
    })
}

pub fn median(values: &mut [Duration]) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// `bench deploy`: time from the first byte of the upload to every replica healthy, for a
/// bundle of about `bundle_bytes` (examples/hello plus incompressible padding) on a
/// 3-agent cluster with the image present. One fresh app per run.
pub async fn deploy(net: u8, runs: usize, bundle_bytes: usize) -> anyhow::Result<Vec<Duration>> {
    crate::harness::ensure_image()?;
    let cluster = LocalCluster::start(net, 3)?;
    cluster
        .wait_for("the cluster to converge", Duration::from_secs(60), || {
            cluster.converged()
        })
        .await?;
    let work = tempfile::tempdir()?;
    let client = cluster.agents[0].client();
    let mut timings = Vec::new();
    for run in 0..runs {
        let app = format!("bench-{run}");
        let dir = work.path().join(&app);
        std::fs::create_dir_all(&dir)?;
        let hello = crate::harness::repo_root().join("examples/hello");
        std::fs::copy(hello.join("start.sh"), dir.join("start.sh"))?;
        let manifest = std::fs::read_to_string(hello.join("stratus.toml"))?
            .replace("name = \"hello\"", &format!("name = \"{app}\""));
        std::fs::write(dir.join("stratus.toml"), manifest)?;
        let mut padding = vec![0u8; bundle_bytes];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut padding);
        std::fs::write(dir.join("padding.bin"), padding)?;
        let zip = tempfile::NamedTempFile::new()?;
        node::bundle::pack_dir(&dir, std::fs::File::create(zip.path())?)?;
        let size = std::fs::metadata(zip.path())?.len();

        let start = Instant::now();
        let accepted = client.deploy(&app, zip.path(), |_| {}).await?;
        let acked = start.elapsed();
        loop {
            let view = client.app(&app).await?;
            let healthy = view
                .replicas
                .iter()
                .filter(|r| {
                    r.release == accepted.release && r.health == proto::ContainerHealth::Healthy
                })
                .count() as u32;
            if healthy >= view.replicas_desired {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "{app} not healthy after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let total = start.elapsed();
        println!(
            "run {}: {} KiB bundle acknowledged after {:.0} ms, all replicas healthy after {:.0} ms",
            run + 1,
            size / 1024,
            acked.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0
        );
        timings.push(total);
        client.destroy(&app).await?;
        crate::harness::remove_containers_of(&app);
    }
    Ok(timings)
}
