//! `testbed bench internal`: what the node-local balancer adds to an app-to-app call.
//!
//! One agent (the real `stratus` binary, Docker runtime, `--dns-addr` and
//! `--internal-port`), a tenant, and an app of one replica answering HTTP/1.1 keep-alive
//! (Python's `http.server`, one write per answer, on `stratus/python:3.11`). A caller
//! container of the same image sits on the tenant's network with the gateway as its
//! resolver, as replicas do, and times `requests` sequential GETs on one keep-alive
//! connection per round:
//!
//! - direct: to the replica's container address and port on the tenant network;
//! - through the balancer: to `http://APP.internal/`, that is the gateway's port 80,
//!   redirected to the balancer, which dials the replica's published port.
//!
//! Rounds alternate the two, so drift on a shared machine hits both alike. Printed: p50,
//! p90 and p99 of each, and what the balancer adds at p50 (goal ≤ 150 µs).
//!
//! The agent advertises `10.213.<net>.2`, a /32 the bench puts on `lo` (and removes), not a
//! `127.x` address: production agents advertise a routable address, whose published ports
//! the host reaches through Docker's DNAT in the kernel, while a loopback one goes through
//! `docker-proxy`, a user-space copy that added about 150 µs per request here.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use proto::api::{CreateTenantRequest, CreateTokenRequest};
use proto::tenancy::{Isolation, Role};
use proto::{ContainerHealth, ContainerState};
use serde::Deserialize;
use tokio::time::Instant;

use crate::harness::{LocalCluster, agent_port_range, remove_containers_of};
use node::workload::runtime::{PortRange, tenant_network};

const TENANT: &str = "bench-internal";
const APP: &str = "bench-internal-api";
const IMAGE: &str = "stratus/python:3.11";

/// The replica: one write per answer (no Nagle stall between headers and body).
const SERVER: &str = r#"import http.server, os
BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// The caller: `rounds` rounds of `requests` GETs to each target, nanoseconds each, as
/// JSON on stdout.
const CALLER: &str = r#"import http.client, json, socket, sys, time
direct_ip, direct_port, name, rounds, requests = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
internal_ip = socket.gethostbyname(name)
def run(ip, port, host):
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for i in range(requests + 50):
        start = time.perf_counter_ns()
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        took = time.perf_counter_ns() - start
        if response.status != 200:
            raise SystemExit(f"{host} at {ip}:{port} answered {response.status}")
        if i >= 50:
            times.append(took)
    conn.close()
    return times
out = {"internal_ip": internal_ip, "direct": [], "internal": []}
for _ in range(rounds):
    out["direct"] += run(direct_ip, direct_port, "direct")
    out["internal"] += run(internal_ip, 80, name)
print(json.dumps(out))
"#;

#[derive(Debug, Clone)]
pub struct InternalBench {
    pub net: u8,
    pub rounds: usize,
    pub requests: usize,
}

/// Latency percentiles of one path.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
}

#[derive(Debug, Clone)]
pub struct InternalReport {
    pub direct: Percentiles,
    pub balanced: Percentiles,
    pub samples: usize,
    /// What `APP.internal` resolved to in the caller: its network's gateway.
    pub internal_ip: String,
}

impl InternalReport {
    pub fn added_p50(&self) -> Duration {
        self.balanced.p50.saturating_sub(self.direct.p50)
    }
}

#[derive(Deserialize)]
struct CallerOutput {
    internal_ip: String,
    direct: Vec<u64>,
    internal: Vec<u64>,
}

/// Where the agent runs: `10.213.<net>.2`.
const PREFIX: [u8; 2] = [10, 213];

/// Runs the bench on one agent on `10.213.<net>.2`.
pub async fn internal(bench: &InternalBench) -> anyhow::Result<InternalReport> {
    let image = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()?;
    if !image.status.success() {
        bail!("{IMAGE} is missing: run scripts/build-images.sh");
    }
    let internal_port = internal_port(bench.net);
    let cleanup = Cleanup(bench.net);
    cleanup.run();
    let [a, b] = PREFIX;
    let _addr = LoopbackAddr::add(std::net::Ipv4Addr::new(a, b, bench.net, 2))?;
    let mut cluster = LocalCluster::start_on(
        PREFIX,
        bench.net,
        0,
        vec!["--runtime".into(), "docker".into()],
    )?;
    cluster.add_agent(
        None,
        vec![
            "--dns-addr".into(),
            format!("{a}.{b}.{}.2:8600", bench.net),
            "--internal-port".into(),
            internal_port.to_string(),
        ],
    )?;
    cluster
        .wait_for("the agent live", Duration::from_secs(60), || {
            cluster.converged()
        })
        .await?;
    let admin = cluster.agents[0].client();
    admin
        .create_tenant(&CreateTenantRequest {
            name: TENANT.to_string(),
            isolation: Isolation::Container,
            quota: Default::default(),
        })
        .await?;
    let token = admin
        .create_token(&CreateTokenRequest {
            tenant: TENANT.to_string(),
            role: Role::Deploy,
            name: Some("bench".into()),
            expires_in_secs: None,
        })
        .await?
        .token;
    let app = tempfile::tempdir()?;
    write_app(app.path())?;
    let deployed = Command::new(&cluster.bin)
        .arg("deploy")
        .arg(app.path())
        .args(["--api", &cluster.agents[0].api_addr().to_string()])
        .args(["--token", &token, "--timeout-secs", "120"])
        .output()?;
    if !deployed.status.success() {
        bail!(
            "the deploy failed:\n{}{}",
            String::from_utf8_lossy(&deployed.stdout),
            String::from_utf8_lossy(&deployed.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let replica = loop {
        let view = admin.app(APP).await?;
        if let Some(replica) = view.replicas.iter().find(|replica| {
            (replica.state, replica.health) == (ContainerState::Running, ContainerHealth::Healthy)
        }) {
            break replica.clone();
        }
        if Instant::now() > deadline {
            bail!("the replica never turned healthy: {view:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let container = docker_out(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=stratus.placement={}", replica.container_id),
    ])?;
    let network = tenant_network::network_name(TENANT);
    let direct_ip = docker_out(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &container,
    ])?;
    let direct_port = docker_out(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"stratus.port\"}}",
        &container,
    ])?;
    let gateway = docker_out(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &network,
    ])?;
    let caller = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            &network,
            "--dns",
            &gateway,
            IMAGE,
        ])
        .args(["python3", "-c", CALLER, &direct_ip, &direct_port])
        .arg(format!("{APP}.internal"))
        .arg(bench.rounds.to_string())
        .arg(bench.requests.to_string())
        .output()?;
    if !caller.status.success() {
        bail!(
            "the caller failed: {}{}",
            String::from_utf8_lossy(&caller.stdout),
            String::from_utf8_lossy(&caller.stderr)
        );
    }
    let output: CallerOutput =
        serde_json::from_slice(&caller.stdout).context("the caller's output")?;
    drop(cluster);
    cleanup.run();
    Ok(InternalReport {
        samples: output.direct.len().min(output.internal.len()),
        direct: percentiles(output.direct),
        balanced: percentiles(output.internal),
        internal_ip: output.internal_ip,
    })
}

/// Below Linux's ephemeral ports (an outgoing connection may hold any of those, and the
/// balancer binds every address) and below every testbed agent's replica range.
fn internal_port(net: u8) -> u16 {
    17_000 + u16::from(net) * 2
}

fn write_app(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("server.py"), SERVER)?;
    std::fs::write(
        dir.join("stratus.toml"),
        format!(
            "name = \"{APP}\"\nimage = \"{IMAGE}\"\ncmd = \"python3 server.py\"\nreplicas = 1\n\n\
             [health]\npath = \"/\"\ninterval = \"1s\"\n"
        ),
    )?;
    Ok(())
}

fn docker_out(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || text.is_empty() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn percentiles(mut nanos: Vec<u64>) -> Percentiles {
    nanos.sort_unstable();
    let at = |fraction: f64| {
        let index = ((nanos.len() as f64 * fraction) as usize).min(nanos.len().saturating_sub(1));
        Duration::from_nanos(nanos.get(index).copied().unwrap_or(0))
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    }
}

/// An address on `lo` for the bench's agent, removed when dropped.
struct LoopbackAddr(std::net::Ipv4Addr);

impl LoopbackAddr {
    fn add(addr: std::net::Ipv4Addr) -> anyhow::Result<LoopbackAddr> {
        let out = Command::new("ip")
            .args(["addr", "replace", &format!("{addr}/32"), "dev", "lo"])
            .output()?;
        if !out.status.success() {
            bail!(
                "cannot add {addr} to lo (the bench needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(LoopbackAddr(addr))
    }
}

impl Drop for LoopbackAddr {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
            .output();
    }
}

/// Removes what a run (or a killed one) left: the app's containers, the tenant's network
/// and the agent's nftables table.
struct Cleanup(u8);

impl Cleanup {
    fn run(&self) {
        remove_containers_of(APP);
        let _ = Command::new("docker")
            .args(["network", "rm", &tenant_network::network_name(TENANT)])
            .output();
        let daemon = Command::new("docker")
            .args(["info", "--format", "{{.ID}}"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default();
        let range = agent_port_range(self.0, 0);
        let ports = range
            .split_once('-')
            .and_then(|(first, last)| PortRange::new(first.parse().ok()?, last.parse().ok()?));
        if let Some(ports) = ports {
            let _ = Command::new("nft")
                .args([
                    "delete",
                    "table",
                    "inet",
                    &tenant_network::table_name(&daemon, ports),
                ])
                .output();
        }
    }
}
