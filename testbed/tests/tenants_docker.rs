//! Tenants on real agents and real Docker (issue 12): tenants and tokens made with the
//! administrator's token, apps deployed with each tenant's own token through a node that
//! runs no workloads, and what a tenant's code can reach checked from inside its replica
//! (`docker exec`).
//!
//! - Isolation: tenants A and B, on agents with the Docker runtime. From A's replica
//!   container, A's other replica on the same node answers by container IP; B's replicas
//!   (one beside A's on the same node, one on another agent started later) answer neither
//!   by container IP nor by published port, on the advertise address, on the host's
//!   `docker0` address or on A's own network gateway. The host (where agents and
//!   ingresses connect from) gets a page from every replica, and nothing about B changed
//!   (same containers, same start times, same releases).
//! - gVisor: a tenant created with `isolation: gvisor`, on a cluster where one agent runs
//!   on the host's Docker (no runsc) and another on a sandbox dockerd with runsc
//!   registered (`node::sandbox_dockerd`, as `node/tests/gvisor.rs`): both replicas are
//!   placed on the runsc node only, run with runtime `runsc`, and `dmesg` inside them
//!   shows gVisor's kernel.
//!
//! - App-to-app: `examples/frontend` calling `examples/api` as `http://APP.internal/`
//!   across a replica kill and a rolling deploy, and each tenant kept to its own apps'
//!   names (issue 15).
//!
//! Addresses: agents of the isolation test live on `10.213.52.2-4`, /32s added to `lo`
//! for the test (and removed after), because containers cannot reach the testbed's usual
//! `127.0.x.y` (their own loopback), so a published-port check against loopback would
//! pass by accident. Nets 52 and 53 (ports 40800-41239) are used by no other test.
//! Tenants, apps, containers, networks and nftables tables are named for this file and
//! removed at the end, pass or fail. Needs root, Docker, `nft`, `ip` and, for the gVisor
//! test, `runsc` (`scripts/install-deps.sh`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use node::sandbox_dockerd::{SandboxDockerd, SandboxRuntime};
use node::workload::runtime::{PortRange, tenant_network};
use proto::api::{CreateTenantRequest, CreateTokenRequest, ReplicaView};
use proto::tenancy::{Isolation, Role};
use proto::{ContainerHealth, ContainerState};
use testbed::chaos::load::{Load, LoadConfig};
use testbed::harness::{
    LocalCluster, agent_port_range, ensure_image, remove_containers_of, repo_root,
};
use tokio::time::Instant;

const CONVERGE: Duration = Duration::from_secs(60);
const REPLICAS_UP: Duration = Duration::from_secs(120);
const PREFIX: [u8; 2] = [10, 213];
const NET_ISOLATION: u8 = 52;
const NET_GVISOR: u8 = 53;
const NET_INTERNAL: u8 = 54;
/// The first agent's `--internal-port` (the second's is 2 above). The balancer listens on
/// every address, so the port must be below Linux's ephemeral range (32768-60999), where
/// any outgoing connection of another test may hold it, and below every testbed agent's
/// replica range (20000 and up); no other test uses 178xx.
const INTERNAL_PORT: u16 = 17810;
const TENANT_A: &str = "e2eiso-a";
const TENANT_B: &str = "e2eiso-b";
const TENANT_G: &str = "e2egvisor";
const APP_A: &str = "e2eiso-a-web";
const APP_B: &str = "e2eiso-b-web";
const APP_G: &str = "e2egvisor-web";
const TENANT_I: &str = "e2eint";
const TENANT_J: &str = "e2eint-other";
const APP_API: &str = "e2eint-api";
const APP_FRONT: &str = "e2eint-front";
const APP_OTHER: &str = "e2eint-other-web";
const IMAGE: &str = "stratus/busybox:latest";

/// Host addresses on `lo` for the test's agents, removed when dropped.
struct HostAddrs(Vec<Ipv4Addr>);

impl HostAddrs {
    fn add(net: u8, hosts: std::ops::RangeInclusive<u8>) -> HostAddrs {
        let [a, b] = PREFIX;
        let addrs: Vec<Ipv4Addr> = hosts.map(|host| Ipv4Addr::new(a, b, net, host)).collect();
        for addr in &addrs {
            let out = Command::new("ip")
                .args(["addr", "replace", &format!("{addr}/32"), "dev", "lo"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip addr add {addr}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        HostAddrs(addrs)
    }
}

impl Drop for HostAddrs {
    fn drop(&mut self) {
        for addr in &self.0 {
            let _ = Command::new("ip")
                .args(["addr", "del", &format!("{addr}/32"), "dev", "lo"])
                .output();
        }
    }
}

/// Removes the test's containers, tenant networks and nftables tables (on the host's
/// daemon) when dropped, and once at the start for what a killed run left.
struct Cleanup {
    apps: Vec<&'static str>,
    tenants: Vec<&'static str>,
    /// (net, agent index) of every agent that may run containers on the host's daemon.
    agents: Vec<(u8, usize)>,
}

impl Cleanup {
    fn new(apps: &[&'static str], tenants: &[&'static str], agents: &[(u8, usize)]) -> Cleanup {
        let cleanup = Cleanup {
            apps: apps.to_vec(),
            tenants: tenants.to_vec(),
            agents: agents.to_vec(),
        };
        cleanup.remove_all();
        cleanup
    }

    fn remove_all(&self) {
        for app in &self.apps {
            remove_containers_of(app);
        }
        for tenant in &self.tenants {
            let _ = Command::new("docker")
                .args(["network", "rm", &tenant_network::network_name(tenant)])
                .output();
        }
        let daemon = docker_daemon_id();
        for (net, index) in &self.agents {
            let table = tenant_network::table_name(&daemon, port_range(*net, *index));
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &table])
                .output();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.remove_all();
    }
}

fn docker_daemon_id() -> String {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ID}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn port_range(net: u8, index: usize) -> PortRange {
    let text = agent_port_range(net, index);
    let (start, end) = text.split_once('-').unwrap();
    PortRange::new(start.parse().unwrap(), end.parse().unwrap()).unwrap()
}

/// examples/hello under another name, with `replicas`.
fn app_dir(name: &str, replicas: u32) -> tempfile::TempDir {
    example_dir(
        "hello",
        &[
            ("name = \"hello\"", &format!("name = \"{name}\"")),
            ("replicas = 2", &format!("replicas = {replicas}")),
        ],
    )
}

/// A copy of `examples/<example>` with each `(from, to)` of `edits` made to its
/// manifest (each must be there).
fn example_dir(example: &str, edits: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = repo_root().join("examples").join(example);
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let mut manifest = std::fs::read_to_string(source.join("stratus.toml")).unwrap();
    for (from, to) in edits {
        assert!(
            manifest.contains(from),
            "{example}'s manifest has no {from:?}"
        );
        manifest = manifest.replace(from, to);
    }
    std::fs::write(dir.path().join("stratus.toml"), manifest).unwrap();
    dir
}

/// A tenant and a deploy token of it, made with the administrator's token.
async fn tenant_with_token(cluster: &LocalCluster, tenant: &str, isolation: Isolation) -> String {
    let admin = cluster.agents[0].client();
    let view = admin
        .create_tenant(&CreateTenantRequest {
            name: tenant.to_string(),
            isolation,
            quota: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(view.isolation, isolation);
    let created = admin
        .create_token(&CreateTokenRequest {
            tenant: tenant.to_string(),
            role: Role::Deploy,
            name: Some("e2e".into()),
            expires_in_secs: None,
        })
        .await
        .unwrap();
    assert!(created.token.starts_with("stratus_"), "{}", created.token);
    created.token
}

fn tenant_client(cluster: &LocalCluster, token: &str) -> api::Client {
    api::Client::new(&cluster.agents[0].api_addr().to_string())
        .unwrap()
        .with_token(Some(token.to_string()))
}

/// The real `stratus deploy`, with the tenant's token, through agent 0.
fn deploy(cluster: &LocalCluster, dir: &Path, token: &str, app: &str) {
    deploy_release(cluster, dir, token, app, 1);
}

/// [`deploy`], which must make `release` live.
fn deploy_release(cluster: &LocalCluster, dir: &Path, token: &str, app: &str, release: u64) {
    let output = Command::new(&cluster.bin)
        .arg("deploy")
        .arg(dir)
        .args(["--api", &cluster.agents[0].api_addr().to_string()])
        .args(["--token", token, "--timeout-secs", "120"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("Release {release} of {app} is live")),
        "deploy of {app} failed:\n{stdout}\n{stderr}\n{}",
        cluster.logs_tail(20)
    );
}

/// Waits until `app` has exactly `count` replicas, all running and healthy, and returns
/// them sorted by replica number.
async fn healthy_replicas(
    cluster: &LocalCluster,
    client: &api::Client,
    app: &str,
    count: usize,
) -> Vec<ReplicaView> {
    let deadline = Instant::now() + REPLICAS_UP;
    loop {
        let view = client.app(app).await;
        if let Ok(view) = &view {
            let ready = view.replicas.len() == count
                && view.replicas.iter().all(|replica| {
                    (replica.state, replica.health)
                        == (ContainerState::Running, ContainerHealth::Healthy)
                });
            if ready {
                let mut replicas = view.replicas.clone();
                replicas.sort_by_key(|replica| replica.replica);
                return replicas;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{app} never had {count} healthy replicas: {view:?}\n{}",
            cluster.logs_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `docker` on the host's daemon, or on `host` (`unix://...`).
fn docker(host: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new("docker");
    if let Some(host) = host {
        command.args(["-H", host]);
    }
    command.args(args).output().unwrap()
}

/// The Docker container of a replica (its view names the placement, which the container
/// carries as a label).
fn container_of(host: Option<&str>, replica: &ReplicaView) -> String {
    let filter = format!("label=stratus.placement={}", replica.container_id);
    let out = docker(host, &["ps", "-q", "--filter", &filter]);
    let ids = String::from_utf8_lossy(&out.stdout).to_string();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "containers of {replica:?}: {ids:?}");
    ids[0].to_string()
}

fn inspect(host: Option<&str>, container: &str, format: &str) -> String {
    let out = docker(host, &["inspect", "--format", format, container]);
    assert!(
        out.status.success(),
        "docker inspect {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The container's IP on its tenant's network (it must be on it).
fn tenant_ip(container: &str, tenant: &str) -> String {
    let format = format!(
        "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
        tenant_network::network_name(tenant)
    );
    let ip = inspect(None, container, &format);
    assert!(!ip.is_empty(), "{container} is not on {tenant}'s network");
    ip
}

/// The gateway of the tenant's network: the host's address on its bridge.
fn tenant_gateway(tenant: &str) -> String {
    let out = docker(
        None,
        &[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &tenant_network::network_name(tenant),
        ],
    );
    let gateway = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!gateway.is_empty(), "{tenant}'s network has no gateway");
    gateway
}

/// The host's address on docker0.
fn docker0_gateway() -> String {
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
    cidr.split('/').next().unwrap().to_string()
}

/// Whether, from inside `container`, `GET /` at `host:port` answers 200 (busybox nc, 3 s
/// at most; busybox wget's timeout option crashes in this image).
fn fetches_from(container: &str, host: &str, port: u16) -> (bool, String) {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}");
    let out = docker(None, &["exec", container, "sh", "-c", &script]);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (text.contains("200 OK"), text)
}

/// `GET /` from the host, as an agent or ingress connects.
fn host_get(addr: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{addr}/")])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What must not change about a tenant's app: its releases and, per replica, where it
/// runs, its container, when that started and how often it restarted.
async fn snapshot(cluster: &LocalCluster, app: &str) -> (Vec<u64>, BTreeMap<u32, String>) {
    let view = cluster.agents[0].client().app(app).await.unwrap();
    let replicas = view
        .replicas
        .iter()
        .map(|replica| {
            let started = inspect(
                None,
                &container_of(None, replica),
                "{{.State.StartedAt}} {{.RestartCount}} {{.State.Status}}",
            );
            (
                replica.replica,
                format!(
                    "{} {} {} {} {started}",
                    replica.release, replica.node_id, replica.container_id, replica.addr
                ),
            )
        })
        .collect();
    (view.releases.clone(), replicas)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_replica_reaches_its_own_and_nothing_of_another_tenant() {
    ensure_image().unwrap();
    let _cleanup = Cleanup::new(
        &[APP_A, APP_B],
        &[TENANT_A, TENANT_B],
        &[(NET_ISOLATION, 1), (NET_ISOLATION, 2)],
    );
    let _addrs = HostAddrs::add(NET_ISOLATION, 2..=4);
    let mut cluster = LocalCluster::start_on(
        PREFIX,
        NET_ISOLATION,
        0,
        vec!["--runtime".into(), "docker".into()],
    )
    .unwrap();
    // node-1 takes the API calls and runs nothing; node-2 runs both tenants' first
    // replicas; node-3 joins later and takes B's second.
    cluster
        .add_agent(None, vec!["--no-workloads".into()])
        .unwrap();
    cluster.add_agent(None, Vec::new()).unwrap();
    cluster
        .wait_for("2 live nodes", CONVERGE, || cluster.converged())
        .await
        .unwrap();

    let token_a = tenant_with_token(&cluster, TENANT_A, Isolation::Container).await;
    let token_b = tenant_with_token(&cluster, TENANT_B, Isolation::Container).await;
    let client_a = tenant_client(&cluster, &token_a);
    let client_b = tenant_client(&cluster, &token_b);
    let dir_a = app_dir(APP_A, 1);
    let dir_b = app_dir(APP_B, 1);
    deploy(&cluster, dir_a.path(), &token_a, APP_A);
    deploy(&cluster, dir_b.path(), &token_b, APP_B);
    client_a.scale(APP_A, 2).await.unwrap();
    let replicas_a = healthy_replicas(&cluster, &client_a, APP_A, 2).await;

    cluster.add_agent(None, Vec::new()).unwrap();
    cluster
        .wait_for("3 live nodes", CONVERGE, || cluster.converged())
        .await
        .unwrap();
    client_b.scale(APP_B, 2).await.unwrap();
    let replicas_b = healthy_replicas(&cluster, &client_b, APP_B, 2).await;
    for replica in replicas_a.iter().chain(&replicas_b) {
        assert_ne!(
            replica.node_id, "node-1",
            "the no-workloads node runs {replica:?}"
        );
        assert_eq!(
            replica.addr.ip(),
            cluster
                .agents
                .iter()
                .find(|agent| agent.node_id == replica.node_id)
                .unwrap()
                .ip,
            "published on its node's advertise address"
        );
    }
    println!("A: {replicas_a:#?}\nB: {replicas_b:#?}");
    // The other tenant's app is absent to each tenant's token.
    assert_eq!(client_a.app(APP_B).await.unwrap_err().status(), Some(404));
    assert_eq!(client_b.app(APP_A).await.unwrap_err().status(), Some(404));
    let before = snapshot(&cluster, APP_B).await;

    // Each tenant on its own network, with a label naming it.
    let a1 = &container_of(None, &replicas_a[0]);
    let a2 = &container_of(None, &replicas_a[1]);
    assert_eq!(
        replicas_a[0].node_id, replicas_a[1].node_id,
        "A's replicas on one node (the only one with workloads then)"
    );
    let a2_ip = tenant_ip(a2, TENANT_A);
    tenant_ip(a1, TENANT_A);
    for replica in &replicas_a {
        let label = inspect(
            None,
            &container_of(None, replica),
            "{{index .Config.Labels \"stratus.tenant\"}}",
        );
        assert_eq!(label, TENANT_A);
    }
    let b_ips: Vec<String> = replicas_b
        .iter()
        .map(|replica| tenant_ip(&container_of(None, replica), TENANT_B))
        .collect();

    // A reaches its own other replica by container IP, from either side.
    let (ok, text) = fetches_from(a1, &a2_ip, 8080);
    assert!(
        ok && text.contains(&format!("{APP_A} release 1")),
        "A to A: {text}"
    );
    let (ok, text) = fetches_from(a2, &tenant_ip(a1, TENANT_A), 8080);
    assert!(
        ok && text.contains(&format!("{APP_A} release 1")),
        "A to A: {text}"
    );

    // Nothing of B, from either of A's replicas: not B's container IPs, not its published
    // ports, on the advertise address, the host's docker0 address or A's own gateway.
    let gateways = [docker0_gateway(), tenant_gateway(TENANT_A)];
    let mut attempts = 0;
    for from in [a1, a2] {
        for (replica, b_ip) in replicas_b.iter().zip(&b_ips) {
            let port = replica.addr.port();
            let mut targets = vec![(b_ip.clone(), 8080), (replica.addr.ip().to_string(), port)];
            targets.extend(gateways.iter().map(|gateway| (gateway.clone(), port)));
            for (host, port) in targets {
                let (ok, text) = fetches_from(from, &host, port);
                assert!(
                    !ok,
                    "A's {from} reached B's replica {} on {}, at {host}:{port}: {text}",
                    replica.replica, replica.node_id
                );
                attempts += 1;
            }
        }
    }
    println!("{attempts} attempts from A's replicas to B's, all refused or unanswered");

    // The host, where agents and ingresses connect from, gets a page from every replica.
    for (app, replica) in replicas_a
        .iter()
        .map(|replica| (APP_A, replica))
        .chain(replicas_b.iter().map(|replica| (APP_B, replica)))
    {
        let body = host_get(&replica.addr.to_string());
        assert!(
            body.contains(&format!(
                "{app} release 1 replica {} on node {}",
                replica.replica, replica.node_id
            )),
            "{app} replica {replica:?}: {body}"
        );
    }

    // Nothing about B changed.
    assert_eq!(snapshot(&cluster, APP_B).await, before);

    // Destroy with each tenant's token; the tenants' networks go with their last
    // containers.
    client_a.destroy(APP_A).await.unwrap();
    client_b.destroy(APP_B).await.unwrap();
    for (app, tenant) in [(APP_A, TENANT_A), (APP_B, TENANT_B)] {
        cluster
            .wait_for(
                &format!("{app}'s containers and network gone"),
                CONVERGE,
                || async {
                    let listed = docker(
                        None,
                        &["ps", "-aq", "--filter", &format!("label=stratus.app={app}")],
                    );
                    let network = docker(
                        None,
                        &["network", "inspect", &tenant_network::network_name(tenant)],
                    );
                    listed.stdout.is_empty() && !network.status.success()
                },
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_tenants_replicas_run_under_runsc_on_the_node_that_has_it() {
    ensure_image().unwrap();
    let _cleanup = Cleanup::new(&[APP_G], &[TENANT_G], &[(NET_GVISOR, 0)]);
    let sandbox = SandboxDockerd::start_with(
        "tenant-e2e-gvisor",
        &[SandboxRuntime::gvisor_ptrace().unwrap()],
    )
    .unwrap();
    sandbox.copy_image_from_system(IMAGE).unwrap();
    let sandbox_host = sandbox.host();
    let sandbox_id =
        String::from_utf8_lossy(&sandbox.docker(&["info", "--format", "{{.ID}}"]).stdout)
            .trim()
            .to_string();
    let sandbox_table = tenant_network::table_name(&sandbox_id, port_range(NET_GVISOR, 1));
    let _sandbox_table = DropTable(sandbox_table);

    let mut cluster =
        LocalCluster::start_with(NET_GVISOR, 0, vec!["--runtime".into(), "docker".into()]).unwrap();
    // node-1: the host's Docker, no runsc (it also takes the API calls); node-2: the
    // sandbox daemon, with runsc.
    cluster.add_agent(None, Vec::new()).unwrap();
    cluster
        .add_agent(None, vec!["--docker-host".into(), sandbox_host.clone()])
        .unwrap();
    cluster
        .wait_for("2 live nodes", CONVERGE, || cluster.converged())
        .await
        .unwrap();
    cluster
        .wait_for("both identities at node-1", CONVERGE, || async {
            cluster.agents[0].client().nodes().await.is_ok_and(|view| {
                view.nodes.len() == 2 && view.nodes.iter().all(|node| node.identity.is_some())
            })
        })
        .await
        .unwrap();
    let nodes = cluster.agents[0].client().nodes().await.unwrap();
    let gvisor: BTreeMap<&str, bool> = nodes
        .nodes
        .iter()
        .map(|node| {
            let identity = node.identity.as_ref().unwrap();
            (node.node_id.as_str(), identity.gvisor)
        })
        .collect();
    let host_has_runsc =
        String::from_utf8_lossy(&docker(None, &["info", "--format", "{{json .Runtimes}}"]).stdout)
            .contains("runsc");
    assert_eq!(
        gvisor,
        BTreeMap::from([("node-1", host_has_runsc), ("node-2", true)]),
        "{nodes:?}"
    );
    assert!(
        !host_has_runsc,
        "the host's Docker has runsc: this test needs a node without it"
    );

    let token = tenant_with_token(&cluster, TENANT_G, Isolation::Gvisor).await;
    let client = tenant_client(&cluster, &token);
    let dir = app_dir(APP_G, 2);
    deploy(&cluster, dir.path(), &token, APP_G);
    let replicas = healthy_replicas(&cluster, &client, APP_G, 2).await;
    println!("{replicas:#?}");
    for replica in &replicas {
        assert_eq!(
            replica.node_id, "node-2",
            "placed off the runsc node: {replica:?}"
        );
        let id = &container_of(Some(&sandbox_host), replica);
        assert_eq!(
            inspect(Some(&sandbox_host), id, "{{.HostConfig.Runtime}}"),
            "runsc"
        );
        // From inside: gVisor's kernel, not the host's.
        let out = docker(
            Some(&sandbox_host),
            &["exec", id, "sh", "-c", "dmesg; cat /proc/version"],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("gVisor"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = host_get(&replica.addr.to_string());
        assert!(
            body.contains(&format!(
                "{APP_G} release 1 replica {} on node node-2",
                replica.replica
            )),
            "{body}"
        );
    }
    let on_host = docker(
        None,
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label=stratus.app={APP_G}"),
        ],
    );
    assert!(
        on_host.stdout.is_empty(),
        "a gVisor replica on the host's runc daemon"
    );

    client.destroy(APP_G).await.unwrap();
    cluster
        .wait_for("the gVisor replicas gone", CONVERGE, || async {
            docker(
                Some(&sandbox_host),
                &[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=stratus.app={APP_G}"),
                ],
            )
            .stdout
            .is_empty()
        })
        .await
        .unwrap();
    // The agents go before the sandbox daemon they use.
    drop(cluster);
}

/// `nslookup NAME` inside `container`, through its resolver (Docker's embedded one, which
/// forwards to the container's `dns`): whether it found an address, and what it printed.
fn resolves_from(container: &str, name: &str) -> (bool, String) {
    let out = docker(None, &["exec", container, "nslookup", name]);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `GET /` with `Host: host` at `ip:port`, from inside `container`: the status line and
/// body (busybox nc, 3 s at most). The request's side stays open for a second: Pingora
/// takes a client's half-close before the answer for a hang-up.
fn get_from(container: &str, ip: &str, port: u16, host: &str) -> String {
    let script = format!(
        "(printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n'; sleep 1) | nc -w 3 {ip} {port}"
    );
    let out = docker(None, &["exec", container, "sh", "-c", &script]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether every agent's view has `placement` gone or no longer running and healthy.
async fn gone_from_every_view(cluster: &LocalCluster, app: &str, placement: &str) -> bool {
    for agent in &cluster.agents {
        let Ok(view) = agent.client().app(app).await else {
            return false;
        };
        let routable = view.replicas.iter().any(|replica| {
            replica.container_id == placement
                && (replica.state, replica.health)
                    == (ContainerState::Running, ContainerHealth::Healthy)
        });
        if routable {
            return false;
        }
    }
    true
}

/// Issue 15's app-to-app calls, on real agents, real Docker and real DNS clients:
/// `examples/frontend` calls `examples/api` as `http://APP.internal/` (its resolver is its
/// network's gateway, where the node's DNS and balancer answer), with continuous calls
/// through the ingress across a replica kill and a rolling deploy of the api; and each
/// tenant's containers reach only their own tenant's apps by name, by DNS or by Host.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_apps_call_each_other_by_name_through_the_node_local_balancer() {
    ensure_image().unwrap();
    let _cleanup = Cleanup::new(
        &[APP_API, APP_FRONT, APP_OTHER],
        &[TENANT_I, TENANT_J],
        &[(NET_INTERNAL, 0), (NET_INTERNAL, 1)],
    );
    let mut cluster =
        LocalCluster::start_with(NET_INTERNAL, 0, vec!["--runtime".into(), "docker".into()])
            .unwrap();
    let ingress: SocketAddr = format!("127.0.{NET_INTERNAL}.2:8080").parse().unwrap();
    for index in 0..2u16 {
        let mut args = vec![
            "--dns-addr".to_string(),
            format!("127.0.{NET_INTERNAL}.{}:8600", index + 2),
            "--internal-port".to_string(),
            (INTERNAL_PORT + 2 * index).to_string(),
        ];
        if index == 0 {
            args.extend(["--ingress-addr".to_string(), ingress.to_string()]);
        }
        cluster.add_agent(None, args).unwrap();
    }
    cluster
        .wait_for("2 live nodes", CONVERGE, || cluster.converged())
        .await
        .unwrap();
    let token_i = tenant_with_token(&cluster, TENANT_I, Isolation::Container).await;
    let token_j = tenant_with_token(&cluster, TENANT_J, Isolation::Container).await;
    let client_i = tenant_client(&cluster, &token_i);
    let client_j = tenant_client(&cluster, &token_j);
    let api_name = format!("name = \"{APP_API}\"");
    let api_url = format!("http://{APP_API}.internal/");
    let api_dir = example_dir("api", &[("name = \"api\"", &api_name)]);
    let front_name = format!("name = \"{APP_FRONT}\"");
    let front_dir = example_dir(
        "frontend",
        &[
            ("name = \"frontend\"", &front_name),
            ("http://api.internal/", &api_url),
        ],
    );
    let other_dir = app_dir(APP_OTHER, 1);
    deploy(&cluster, api_dir.path(), &token_i, APP_API);
    deploy(&cluster, front_dir.path(), &token_i, APP_FRONT);
    deploy(&cluster, other_dir.path(), &token_j, APP_OTHER);
    let api = healthy_replicas(&cluster, &client_i, APP_API, 2).await;
    let front = healthy_replicas(&cluster, &client_i, APP_FRONT, 1).await;
    let other = healthy_replicas(&cluster, &client_j, APP_OTHER, 1).await;
    let front_container = container_of(None, &front[0]);
    let other_container = container_of(None, &other[0]);
    let gateway_i = tenant_gateway(TENANT_I);
    let gateway_j = tenant_gateway(TENANT_J);

    // A replica resolves through its network's gateway, where the node's DNS answers:
    // `APP.internal` is that gateway, `APP.service.stratus` the replicas.
    assert_eq!(
        inspect(
            None,
            &front_container,
            "{{range .HostConfig.Dns}}{{.}}{{end}}"
        ),
        gateway_i
    );
    let (found, text) = resolves_from(&front_container, &format!("{APP_API}.internal"));
    assert!(found && text.contains(&gateway_i), "{text}");
    let (found, text) = resolves_from(&front_container, &format!("{APP_API}.service.stratus"));
    assert!(found, "{text}");
    for replica in &api {
        assert!(text.contains(&replica.addr.ip().to_string()), "{text}");
    }
    let (found, text) = resolves_from(&other_container, &format!("{APP_OTHER}.internal"));
    assert!(found && text.contains(&gateway_j), "{text}");

    // Each tenant's containers know nothing of the other's apps, by name or by Host.
    for (container, app) in [
        (&front_container, APP_OTHER),
        (&other_container, APP_API),
        (&other_container, APP_FRONT),
    ] {
        let (found, text) = resolves_from(container, &format!("{app}.internal"));
        assert!(
            !found && text.contains("NXDOMAIN"),
            "{app} from {container}: {text}"
        );
    }
    let absent = get_from(&other_container, &gateway_j, 80, "nope.internal");
    assert!(absent.starts_with("HTTP/1.1 404"), "{absent}");
    let foreign = get_from(
        &other_container,
        &gateway_j,
        80,
        &format!("{APP_API}.internal"),
    );
    assert!(
        foreign.starts_with("HTTP/1.1 404"),
        "another tenant's app: {foreign}"
    );
    let own = get_from(
        &other_container,
        &gateway_j,
        80,
        &format!("{APP_OTHER}.internal"),
    );
    assert!(
        own.starts_with("HTTP/1.1 200") && own.contains(&format!("{APP_OTHER} release 1")),
        "{own}\n{}",
        cluster.logs_tail(30)
    );
    // The host (loopback) reaches any app on the balancer's own port. Any other caller is
    // refused: the host from another of its addresses gets a 403, and a container off the
    // tenant networks (the administrator's, on docker0) not even an answer.
    let curl_internal = |from: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--interface", from])
            .args(["-H", &format!("Host: {APP_API}.internal")])
            .arg(format!("http://{from}:{INTERNAL_PORT}/"))
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let from_host = curl_internal("127.0.0.1");
    assert!(
        from_host.contains(&format!("{APP_API} release 1")),
        "{from_host}"
    );
    let docker0 = docker0_gateway();
    let from_other_address = curl_internal(&docker0);
    assert!(
        from_other_address.contains("403 Forbidden"),
        "{from_other_address}"
    );
    let stranger = docker(
        None,
        &[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            &format!(
                "(printf 'GET / HTTP/1.0\\r\\nHost: {APP_API}.internal\\r\\n\\r\\n'; sleep 1) | nc -w 3 {docker0} {INTERNAL_PORT}"
            ),
        ],
    );
    let stranger = String::from_utf8_lossy(&stranger.stdout);
    assert!(!stranger.contains("HTTP/"), "{stranger}");

    // Continuous calls: the public ingress to the frontend, the frontend to the api
    // through the balancer.
    let mut config = LoadConfig::new(ingress, APP_FRONT);
    config.path = "/cgi-bin/call".to_string();
    config.clients = 2;
    let load = Load::start(config).unwrap();
    assert!(load.wait_served(1, CONVERGE).await, "no call got through");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A replica killed: the balancer's retries cover the moment until every view knows.
    load.mark("kill");
    let killed = docker(None, &["kill", &container_of(None, &api[0])]);
    assert!(killed.status.success());
    cluster
        .wait_for("the killed replica out of every view", CONVERGE, || {
            gone_from_every_view(&cluster, APP_API, &api[0].container_id)
        })
        .await
        .unwrap();
    load.mark("view changed");
    healthy_replicas(&cluster, &client_i, APP_API, 2).await;
    load.mark("healed");

    // A rolling deploy of the api.
    let api_dir = example_dir(
        "api",
        &[
            ("name = \"api\"", &api_name),
            ("GREETING = \"hello\"", "GREETING = \"howdy\""),
        ],
    );
    load.mark("deploy");
    tokio::task::block_in_place(|| deploy_release(&cluster, api_dir.path(), &token_i, APP_API, 2));
    assert!(
        load.wait_served(2, CONVERGE).await,
        "release 2 never answered"
    );
    load.mark("deployed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;

    let at = |label: &str| report.mark(label).unwrap();
    let before_view = report.failures_between(at("kill"), at("view changed"));
    let after_view = report.failures_between(at("view changed"), report.duration);
    println!(
        "{} calls through the frontend; {} failed between the kill and every view knowing it \
         ({:.3} s later), {} after; by replica: {:?}",
        report.total(),
        before_view.len(),
        (at("view changed") - at("kill")).as_secs_f64(),
        after_view.len(),
        report.per_backend()
    );
    assert!(
        report
            .failures_between(Duration::ZERO, at("kill"))
            .is_empty(),
        "calls failed before anything happened: {:?}",
        report.failures()
    );
    assert!(
        after_view.is_empty(),
        "calls failed once the view had changed: {after_view:?}"
    );
    let last = report
        .samples
        .last()
        .and_then(|sample| sample.backend())
        .unwrap();
    assert_eq!(last.release, 2, "the last call got {last}");
    let api_replicas: std::collections::BTreeSet<u32> = report
        .samples
        .iter()
        .filter_map(|sample| sample.backend())
        .map(|backend| backend.replica)
        .collect();
    assert!(
        api_replicas.len() >= 2,
        "calls spread over one replica only: {api_replicas:?}"
    );
}

/// Deletes an nftables table when dropped.
struct DropTable(String);

impl Drop for DropTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .output();
    }
}
