//! Isolation between tenants' containers on one node, against the host's real Docker
//! daemon and nftables: two tenants' replicas started by the Docker driver, each on its
//! tenant's network, published as agents need them. From A's container, B's replica is
//! out of reach by container IP and by published host port (on the host's bridge address
//! and on the advertise address); A's other replica is in reach; the host (where agents
//! and ingresses connect from) reaches both.
//!
//! And the DNS server (`node::dns`) tells a question from a tenant's container by its
//! source address: from A's container, `nslookup` finds A's app and not B's nor the
//! administrator's; the host finds all three.
//!
//! Needs root, Docker (with its iptables rules, the default), `nft` and
//! `stratus/busybox:latest`. Published on 127.0.214.1 and on the docker0 gateway address,
//! which containers can route to (a loopback address they cannot: their own loopback is
//! theirs), so the published-port test is not passed by accident. Tenant names are unique
//! to this test; containers and networks are removed at the end, even on failure.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use node::workload::health::probe;
use node::workload::runtime::{
    ContainerSpec, DockerDriver, DockerOptions, RunningContainer, RuntimeDriver, tenant_network,
};
use tokio::time::Instant;

const IMAGE: &str = "stratus/busybox:latest";
const TENANT_A: &str = "isoltest-a";
const TENANT_B: &str = "isoltest-b";

/// Removes the test's containers and tenant networks when dropped.
struct Cleanup {
    placements: Vec<String>,
    tenants: Vec<String>,
}

impl Cleanup {
    fn new(placements: &[&str], tenants: &[&str]) -> Cleanup {
        let cleanup = Cleanup {
            placements: placements.iter().map(|p| p.to_string()).collect(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
        };
        cleanup.remove_all();
        cleanup
    }

    fn remove_all(&self) {
        for placement in &self.placements {
            let filter = format!("label=stratus.placement={placement}");
            let listed = Command::new("docker")
                .args(["ps", "-aq", "--filter", &filter])
                .output()
                .unwrap();
            let ids = String::from_utf8_lossy(&listed.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
        for tenant in &self.tenants {
            let _ = Command::new("docker")
                .args(["network", "rm", &tenant_network::network_name(tenant)])
                .output();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// The host's address on docker0: containers on any bridge route to it.
fn docker0_gateway() -> IpAddr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let cidr = text
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 address on docker0: {text}"));
    cidr.split('/').next().unwrap().parse().unwrap()
}

async fn driver(advertise_ip: IpAddr, node_id: &str) -> DockerDriver {
    node::testsuite::ensure_test_image().unwrap();
    let options = DockerOptions {
        node_id: Some(node_id.to_string()),
        ..DockerOptions::new(advertise_ip)
    };
    DockerDriver::connect(options).await.unwrap()
}

fn spec(placement: &str, node_id: &str, tenant: &str, bundle_dir: &Path) -> ContainerSpec {
    ContainerSpec {
        placement_id: placement.to_string(),
        app: format!("{tenant}-web"),
        release: 1,
        replica: 0,
        node_id: node_id.to_string(),
        bundle_dir: bundle_dir.to_path_buf(),
        image: IMAGE.into(),
        cmd: "exec busybox httpd -f -p $PORT -h /app".into(),
        built: false,
        read_only_root: false,
        user: None,
        port: 8080,
        env: BTreeMap::new(),
        cpu_millis: 250,
        memory_bytes: 32 << 20,
        tenant: Some(tenant.to_string()),
        isolation: Default::default(),
    }
}

async fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = probe(addr, Some("/"), Duration::from_secs(1)).await;
        if result.is_healthy() {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} never answered: {result}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The container's IP on its tenant network.
fn container_ip(container: &str, tenant: &str) -> String {
    let format = format!(
        "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
        tenant_network::network_name(tenant)
    );
    let out = Command::new("docker")
        .args(["inspect", "--format", &format, container])
        .output()
        .unwrap();
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!ip.is_empty(), "{container} is not on {tenant}'s network");
    ip
}

/// Whether `from` gets `index.html` from `addr`, by busybox nc (3 s at most; busybox
/// wget's timeout option crashes in this build).
fn fetches(from: &RunningContainer, addr: &str) -> (bool, String) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}");
    let out = Command::new("docker")
        .args(["exec", &from.id, "sh", "-c", &script])
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (text.contains("200 OK"), text)
}

async fn start(driver: &DockerDriver, spec: &ContainerSpec) -> RunningContainer {
    let running = driver.start(spec).await.unwrap();
    wait_healthy(running.addr).await;
    running
}

#[tokio::test]
async fn a_tenants_containers_reach_each_other_and_nothing_of_another_tenant() {
    let placements = ["isol-a1", "isol-a2", "isol-b1", "isol-b2"];
    let _cleanup = Cleanup::new(&placements, &[TENANT_A, TENANT_B]);
    let node_id = "node-isolation";
    let gateway = docker0_gateway();
    // Published on an address containers can route to, as a real node's advertise address.
    let routable = driver(gateway, node_id).await;
    // And on loopback, as the testbed's agents publish.
    let loopback = driver("127.0.214.1".parse().unwrap(), node_id).await;
    let dir_a = tempfile::tempdir().unwrap();
    std::fs::write(dir_a.path().join("index.html"), "tenant a\n").unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    std::fs::write(dir_b.path().join("index.html"), "tenant b\n").unwrap();

    let a1 = start(&routable, &spec("isol-a1", node_id, TENANT_A, dir_a.path())).await;
    let a2 = start(&loopback, &spec("isol-a2", node_id, TENANT_A, dir_a.path())).await;
    let b1 = start(&routable, &spec("isol-b1", node_id, TENANT_B, dir_b.path())).await;
    let b2 = start(&loopback, &spec("isol-b2", node_id, TENANT_B, dir_b.path())).await;
    assert_eq!(a1.addr.ip(), gateway, "published on the advertise address");

    // Each tenant has its own network and bridge.
    let a_ip = container_ip(&a2.id, TENANT_A);
    let b_ip = container_ip(&b1.id, TENANT_B);
    container_ip(&a1.id, TENANT_A);
    container_ip(&b2.id, TENANT_B);

    // A reaches A: by container IP on the tenant's network.
    let (ok, body) = fetches(&a1, &format!("{a_ip}:8080"));
    assert!(ok && body.contains("tenant a"), "A to A: {body}");

    // A reaches nothing of B: not its container IP, not its published port on the
    // routable address, not the published port of B's other replica via the gateway.
    let (ok, body) = fetches(&a1, &format!("{b_ip}:8080"));
    assert!(!ok, "A reached B's container IP: {body}");
    let (ok, body) = fetches(&a1, &b1.addr.to_string());
    assert!(!ok, "A reached B's published port {}: {body}", b1.addr);
    let (ok, body) = fetches(&a1, &format!("{gateway}:{}", b2.addr.port()));
    assert!(
        !ok,
        "A reached B's loopback-published port via the host: {body}"
    );
    // Nor B reaches A.
    let (ok, body) = fetches(&b1, &format!("{a_ip}:8080"));
    assert!(!ok, "B reached A's container IP: {body}");
    let (ok, body) = fetches(&b2, &a1.addr.to_string());
    assert!(!ok, "B reached A's published port: {body}");

    // The host, where agents and ingresses connect from, reaches every replica.
    for replica in [&a1, &a2, &b1, &b2] {
        wait_healthy(replica.addr).await;
    }

    for (driver, replica) in [
        (&routable, &a1),
        (&loopback, &a2),
        (&routable, &b1),
        (&loopback, &b2),
    ] {
        driver
            .stop(&replica.id, Duration::from_secs(1))
            .await
            .unwrap();
    }
    // The last container of a tenant gone, its network goes too.
    for tenant in [TENANT_A, TENANT_B] {
        let out = Command::new("docker")
            .args(["network", "inspect", &tenant_network::network_name(tenant)])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{tenant}'s network is left behind");
    }
}

/// The host's address on `tenant`'s network (its gateway): where its containers reach
/// the node's services.
fn tenant_gateway(tenant: &str) -> String {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &tenant_network::network_name(tenant),
        ])
        .output()
        .unwrap();
    let gateway = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!gateway.is_empty(), "{tenant}'s network has no gateway");
    gateway
}

/// busybox `nslookup NAME SERVER:PORT` in `from`: (found, output).
fn nslookup(from: &RunningContainer, name: &str, server: &str) -> (bool, String) {
    let out = Command::new("docker")
        .args(["exec", &from.id, "nslookup", "-type=a", name, server])
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let found = out.status.success() && text.contains("Address: 10.9.");
    (found, text)
}

// Multi-threaded: the server answers while the test waits on `docker exec` (blocking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_questions_from_a_tenants_container_see_only_that_tenants_apps() {
    use std::sync::Arc;

    use node::dns::zone::{ZoneApp, ZoneReplica};
    use node::dns::{DnsCounters, DnsListeners, DnsService, TenantSubnets, Zone, ZoneConfig};

    const DNS_A: &str = "isoldns-a";
    const DNS_B: &str = "isoldns-b";
    let placements = ["isoldns-a1", "isoldns-b1"];
    let _cleanup = Cleanup::new(&placements, &[DNS_A, DNS_B]);
    let node_id = "node-isolation-dns";
    let subnets = Arc::new(TenantSubnets::new());
    let driver = driver(docker0_gateway(), node_id)
        .await
        .with_tenant_subnets(subnets.clone())
        .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "dns\n").unwrap();
    let a1 = start(&driver, &spec("isoldns-a1", node_id, DNS_A, dir.path())).await;
    let b1 = start(&driver, &spec("isoldns-b1", node_id, DNS_B, dir.path())).await;

    // One app per tenant and one of the administrator's, on made-up addresses.
    let app = |tenant: Option<&str>, last: u8| ZoneApp {
        tenant: tenant.map(str::to_string),
        latest_release: 1,
        replicas: vec![ZoneReplica {
            node: node_id.into(),
            release: 1,
            addr: SocketAddr::from(([10, 9, 0, last], 20000)),
        }],
    };
    let zone = Zone::new(
        ZoneConfig::new("stratus", 0).unwrap(),
        BTreeMap::from([
            ("alpha".to_string(), app(Some(DNS_A), 1)),
            ("bravo".to_string(), app(Some(DNS_B), 2)),
            ("admin".to_string(), app(None, 3)),
        ]),
        BTreeMap::new(),
        1,
    );
    // On every address, as an agent given --dns-addr 0.0.0.0:PORT: containers reach it at
    // their network's gateway.
    let listeners = DnsListeners::bind(([0, 0, 0, 0], 0).into()).await.unwrap();
    let port = listeners.local_addr().unwrap().port();
    let (zones_tx, zones) = tokio::sync::watch::channel(Arc::new(zone));
    let service = DnsService {
        zones,
        askers: subnets,
        recursor: None,
        counters: Arc::new(DnsCounters::default()),
    };
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _zones_tx = zones_tx;
        node::dns::server::serve(listeners, Arc::new(service), stop_rx).await;
    });

    for (from, tenant, own, other) in [
        (&a1, DNS_A, "alpha", "bravo"),
        (&b1, DNS_B, "bravo", "alpha"),
    ] {
        let server = format!("{}:{port}", tenant_gateway(tenant));
        let (found, text) = nslookup(from, &format!("{own}.service.stratus"), &server);
        assert!(found, "{tenant} cannot find its own app {own}: {text}");
        for hidden in [other, "admin"] {
            let (found, text) = nslookup(from, &format!("{hidden}.service.stratus"), &server);
            assert!(!found, "{tenant} found {hidden}: {text}");
            assert!(
                text.contains("NXDOMAIN"),
                "{tenant} asking {hidden}: {text}"
            );
        }
    }
    // The host sees every app.
    for name in ["alpha", "bravo", "admin"] {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+short"])
            .arg(format!("{name}.service.stratus"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.trim().starts_with("10.9.0."),
            "the host asking {name}: {text}"
        );
    }
    for replica in [&a1, &b1] {
        driver
            .stop(&replica.id, Duration::from_secs(1))
            .await
            .unwrap();
    }
}
