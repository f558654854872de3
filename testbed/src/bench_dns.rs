//! `testbed bench dns`: the agents' DNS server measured.
//!
//! - Queries per second on one core: the server (`node::dns::server::serve`) alone on a
//!   single-threaded runtime, fed a zone of `apps` apps with `replicas` replicas each, and
//!   `dnsperf` (Debian's; installed when missing) asking a mix of A, SRV and NXDOMAIN
//!   names in a closed loop on the other core.
//! - Freshness: agents in one process (`node::testsuite`), node 0 answering DNS, an app of
//!   3 replicas; a node with a replica stops (a new node joins after each trial), and a
//!   poller asks node 0's DNS every 2 ms and its API every 5 ms. Printed: from the stop to the first answer without the dead
//!   replicas, and from node 0's view (its API) dropping them to that answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use node::dns::zone::{ZoneApp, ZoneReplica};
use node::dns::{DnsCounters, DnsListeners, DnsService, TenantSubnets, Zone, ZoneConfig};
use node::testsuite::{
    Step, bundle_for_test, cluster_for_test, healthy_replicas, hello_app_for_test, wait_for,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct ThroughputReport {
    pub queries_per_second: f64,
    pub average_latency_ms: f64,
    pub lost: u64,
    pub sent: u64,
}

/// Runs the server on one thread and dnsperf against it for `duration`.
pub fn throughput(
    duration: Duration,
    apps: usize,
    replicas: usize,
    clients: usize,
) -> anyhow::Result<ThroughputReport> {
    ensure_dnsperf()?;
    let zone = synthetic_zone(apps, replicas);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listeners = DnsListeners::bind(([127, 0, 0, 1], 0).into()).await?;
            let _ = addr_tx.send(listeners.local_addr()?);
            let (_zones_tx, zones) = watch::channel(Arc::new(zone));
            let service = DnsService {
                zones,
                askers: Arc::new(TenantSubnets::new()),
                recursor: None,
                counters: Arc::new(DnsCounters::default()),
            };
            node::dns::server::serve(listeners, Arc::new(service), stop_rx).await;
            Ok(())
        })
    });
    let addr: SocketAddr = match addr_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(addr) => addr,
        Err(_) => {
            let why = match server.join() {
                Ok(Err(err)) => format!("{err:#}"),
                Ok(Ok(())) => "it stopped".to_string(),
                Err(_) => "it panicked".to_string(),
            };
            bail!("the DNS server did not start: {why}");
        }
    };
    let queries = tempfile::NamedTempFile::new()?;
    let mut lines = String::new();
    for index in 0..apps {
        lines.push_str(&format!("app{index}.service.stratus A\n"));
        lines.push_str(&format!("_http._tcp.app{index}.service.stratus SRV\n"));
        lines.push_str(&format!("missing{index}.service.stratus A\n"));
    }
    std::fs::write(queries.path(), lines)?;
    let output = Command::new("dnsperf")
        .args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(queries.path())
        .args(["-l", &duration.as_secs().to_string()])
        .args(["-c", &clients.to_string(), "-T", "1", "-q", "500"])
        .output()
        .context("cannot run dnsperf")?;
    let _ = stop_tx.send(true);
    let _ = server.join();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "dnsperf failed: {}{text}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let figure = |label: &str| -> anyhow::Result<f64> {
        let line = text
            .lines()
            .find(|line| line.trim_start().starts_with(label))
            .with_context(|| format!("no {label:?} in dnsperf's output:\n{text}"))?;
        let value = line[line.find(':').context("a figure")? + 1..]
            .split_whitespace()
            .next()
            .context("a figure")?;
        value
            .parse::<f64>()
            .with_context(|| format!("{value:?} in {line:?}"))
    };
    Ok(ThroughputReport {
        queries_per_second: figure("Queries per second")?,
        average_latency_ms: figure("Average Latency (s)")? * 1000.0,
        sent: figure("Queries sent")? as u64,
        lost: figure("Queries lost")? as u64,
    })
}

/// `apps` apps of `replicas` replicas on addresses 10.x.y.z, port 20000 up.
fn synthetic_zone(apps: usize, replicas: usize) -> Zone {
    let mut table = BTreeMap::new();
    for app in 0..apps {
        let replicas = (0..replicas)
            .map(|index| {
                let n = app * replicas + index;
                ZoneReplica {
                    node: format!("node-{}", index % 5),
                    release: 1,
                    addr: SocketAddr::new(
                        IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]),
                        20000 + index as u16,
                    ),
                }
            })
            .collect();
        table.insert(
            format!("app{app}"),
            ZoneApp {
                tenant: None,
                latest_release: 1,
                replicas,
            },
        );
    }
    Zone::new(
        ZoneConfig::new("stratus", 0).expect("a valid domain"),
        table,
        BTreeMap::new(),
        1,
    )
}

fn ensure_dnsperf() -> anyhow::Result<()> {
    if Command::new("dnsperf").arg("-h").output().is_ok() {
        return Ok(());
    }
    eprintln!("dnsperf is missing: installing Debian's");
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf >/dev/null",
        ])
        .status()?;
    anyhow::ensure!(
        status.success(),
        "cannot install dnsperf (apt-get install dnsperf)"
    );
    Ok(())
}

#[derive(Debug, Clone)]
pub struct FreshnessTrial {
    /// From the node's stop to the first DNS answer without its replicas.
    pub stop_to_answer: Duration,
    /// From node 0's API no longer listing them to that answer (negative: DNS was first).
    pub view_to_answer_ms: f64,
}

/// `trials` times: stop a node with a replica, time the answers, start it again.
pub async fn freshness(trials: usize) -> anyhow::Result<Vec<FreshnessTrial>> {
    let mut cluster = cluster_for_test(0).await.map_err(anyhow::Error::msg)?;
    cluster
        .add_node_with(|args| args.dns_addr = Some(([127, 0, 0, 1], 0).into()))
        .await
        .map_err(anyhow::Error::msg)?;
    for _ in 0..3 {
        cluster.add_node().await.map_err(anyhow::Error::msg)?;
    }
    cluster
        .run(vec![Step::Converged])
        .await
        .map_err(anyhow::Error::msg)?;
    let dns = cluster.node(0).dns_addr.context("node 0 answers DNS")?;
    let client = cluster.node(0).client();
    let work = tempfile::tempdir()?;
    let app = hello_app_for_test(work.path(), "fresh", 3, 0.1).map_err(anyhow::Error::msg)?;
    let bundle = bundle_for_test(&app).map_err(anyhow::Error::msg)?;
    client.deploy("fresh", bundle.path(), |_| {}).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let settle = Duration::from_secs(90);
    let mut results = Vec::new();
    for trial in 0..trials {
        wait_for(settle, || async {
            let healthy = healthy_replicas(&client, "fresh", 1).await.len();
            let answered = srv_ports(&socket, dns).await.len();
            (healthy == 3 && answered == 3)
                .then_some(())
                .ok_or(format!("{healthy} healthy, {answered} answered"))
        })
        .await
        .map_err(anyhow::Error::msg)?;
        let replicas = healthy_replicas(&client, "fresh", 1).await;
        let Some(victim) = replicas.iter().find(|r| r.node_id != "node-0") else {
            bail!("no replica off node 0: {replicas:?}");
        };
        let victim_node = victim.node_id.clone();
        let index: usize = victim_node.trim_start_matches("node-").parse()?;
        let gone: BTreeSet<u16> = replicas
            .iter()
            .filter(|r| r.node_id == victim_node)
            .map(|r| r.addr.port())
            .collect();
        let stopped = Instant::now();
        cluster.stop_node(index).await.map_err(anyhow::Error::msg)?;
        let mut view_gone = None;
        let mut last_api = Instant::now() - Duration::from_secs(1);
        let answered = loop {
            let now = Instant::now();
            if now - stopped > settle {
                bail!("trial {trial}: the answers kept {gone:?}");
            }
            if view_gone.is_none() && now - last_api >= Duration::from_millis(5) {
                last_api = now;
                let listed: BTreeSet<u16> = healthy_replicas(&client, "fresh", 1)
                    .await
                    .iter()
                    .map(|r| r.addr.port())
                    .collect();
                if listed.is_disjoint(&gone) {
                    view_gone = Some(Instant::now());
                }
            }
            let ports = srv_ports(&socket, dns).await;
            if !ports.is_empty() && ports.is_disjoint(&gone) {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let view_gone = match view_gone {
            Some(at) => at,
            None => {
                // DNS was first: wait for the API, to tell by how much.
                wait_for(settle, || async {
                    let listed: BTreeSet<u16> = healthy_replicas(&client, "fresh", 1)
                        .await
                        .iter()
                        .map(|r| r.addr.port())
                        .collect();
                    listed
                        .is_disjoint(&gone)
                        .then_some(())
                        .ok_or("still listed".to_string())
                })
                .await
                .map_err(anyhow::Error::msg)?;
                Instant::now()
            }
        };
        let view_to_answer_ms = if answered >= view_gone {
            (answered - view_gone).as_secs_f64() * 1000.0
        } else {
            -((view_gone - answered).as_secs_f64() * 1000.0)
        };
        results.push(FreshnessTrial {
            stop_to_answer: answered - stopped,
            view_to_answer_ms,
        });
        // A new node takes the stopped one's place (a restart of a node that ran replicas
        // may find its catalog still held a moment), so every trial has a node to move a
        // replica to.
        cluster.add_node().await.map_err(anyhow::Error::msg)?;
    }
    cluster.shutdown().await.map_err(anyhow::Error::msg)?;
    Ok(results)
}

/// The SRV ports node 0 answers for `fresh`, by one UDP question (EDNS, 1232 bytes).
async fn srv_ports(socket: &UdpSocket, server: SocketAddr) -> BTreeSet<u16> {
    let mut query = Message::new();
    let id: u16 = rand::random();
    let Ok(name) = Name::from_ascii("fresh.service.stratus.") else {
        return BTreeSet::new();
    };
    query
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(name, RecordType::SRV));
    let Ok(bytes) = query.to_vec() else {
        return BTreeSet::new();
    };
    if socket.send_to(&bytes, server).await.is_err() {
        return BTreeSet::new();
    }
    let mut buffer = vec![0u8; 4096];
    let deadline = Duration::from_millis(500);
    loop {
        let Ok(Ok((len, _))) = tokio::time::timeout(deadline, socket.recv_from(&mut buffer)).await
        else {
            return BTreeSet::new();
        };
        let Ok(answer) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        if answer.id() != id {
            continue;
        }
        return answer
            .answers()
            .iter()
            .filter_map(|record| match record.data() {
                RData::SRV(srv) => Some(srv.port()),
                _ => None,
            })
            .collect();
    }
}
