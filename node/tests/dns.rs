//! The agents' DNS server (`--dns-addr`), asked by real clients: Debian's `dig` and
//! hickory's resolver. Against agents in one process (`node::testsuite`): A and SRV of an
//! app's healthy replicas, NXDOMAIN, nodes, the answer changing when a node with a replica
//! dies (how long it took is printed), recursion refused or forwarded, and `/metrics`.
//! Against the server alone, fed a zone of 40 replicas: TC over UDP, then the whole
//! answer over TCP; and hostile input (garbage, loops, huge names, floods of both).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use node::dns::zone::{ZoneApp, ZoneReplica};
use node::dns::{DnsCounters, DnsListeners, DnsService, TenantSubnets, Zone, ZoneConfig};
use node::testsuite::{
    Step, TestCluster, bundle_for_test, cluster_for_test, healthy_replicas, hello_app_for_test,
    wait_for,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;

const SETTLE: Duration = Duration::from_secs(90);

/// `dig @addr -p port ARGS...`: its whole output; fails the test if dig is missing.
async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let output = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("dig runs (scripts/install-deps.sh installs bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// hickory's resolver asking only `server`, with no cache (every lookup asks).
fn resolver(server: SocketAddr) -> TokioResolver {
    let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.attempts = 1;
    options.timeout = Duration::from_secs(2);
    TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], servers),
        TokioConnectionProvider::default(),
    )
    .with_options(options)
    .build()
}

/// The (port, target address) of every SRV record for `name`, as hickory resolves them.
async fn srv_ports(resolver: &TokioResolver, name: &str) -> BTreeSet<u16> {
    match resolver.srv_lookup(name).await {
        Ok(lookup) => lookup.iter().map(|srv| srv.port()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// A 3-node cluster whose node 0 answers DNS on a free loopback port.
async fn dns_cluster() -> TestCluster {
    let mut cluster = cluster_for_test(0).await.unwrap();
    cluster
        .add_node_with(|args| args.dns_addr = Some(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    cluster.add_node().await.unwrap();
    cluster.add_node().await.unwrap();
    cluster.run(vec![Step::Converged]).await.unwrap();
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_healthy_replicas_and_a_dead_node_leaves_them() {
    let mut cluster = dns_cluster().await;
    let dns = cluster.node(0).dns_addr.unwrap();
    let work = tempfile::tempdir().unwrap();
    let bundle = bundle_for_test(&hello_app_for_test(work.path(), "web", 3, 0.1).unwrap()).unwrap();
    let client = cluster.node(0).client();
    client.deploy("web", bundle.path(), |_| {}).await.unwrap();
    let resolver = resolver(dns);
    let api_ports = || async {
        healthy_replicas(&client, "web", 1)
            .await
            .iter()
            .map(|replica| replica.addr.port())
            .collect::<BTreeSet<u16>>()
    };
    // SRV answers carry exactly the ports of the 3 replicas the API calls healthy.
    let srv_matches_api = || async {
        let api = api_ports().await;
        let dns = srv_ports(&resolver, "web.service.stratus.").await;
        (api.len() == 3 && api == dns)
            .then_some(())
            .ok_or(format!("API {api:?}, DNS {dns:?}"))
    };
    wait_for(SETTLE, srv_matches_api).await.unwrap();

    // dig agrees: A (every replica of this in-process cluster is on 127.0.0.1), SRV with
    // the target's address in the additional section, NXDOMAIN, a node's address.
    let a = dig(dns, &["web.service.stratus", "A", "+noall", "+answer"]).await;
    assert!(a.contains("\tA\t127.0.0.1"), "{a}");
    let srv = dig(dns, &["_http._tcp.web.service.stratus", "SRV"]).await;
    assert!(srv.contains("status: NOERROR"), "{srv}");
    assert!(srv.contains("flags: qr aa"), "{srv}");
    assert_eq!(srv.matches("\tSRV\t").count(), 3, "{srv}");
    assert!(
        srv.contains("7f000001.addr.stratus.\t0\tIN\tA\t127.0.0.1"),
        "{srv}"
    );
    let missing = dig(dns, &["nope.service.stratus", "A"]).await;
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    assert!(missing.contains("\tSOA\t"), "{missing}");
    let node = dig(dns, &["node-1.node.stratus", "A", "+short"]).await;
    assert_eq!(node.trim(), "127.0.0.1", "{node}");
    let release = dig(dns, &["v1.web.service.stratus", "SRV", "+short"]).await;
    assert_eq!(release.lines().count(), 3, "{release}");

    // A node with a replica dies: the next answers leave its replicas out.
    let victim = healthy_replicas(&client, "web", 1)
        .await
        .into_iter()
        .find(|replica| replica.node_id != "node-0")
        .expect("3 replicas spread over 3 nodes");
    let victim_index: usize = victim.node_id.trim_start_matches("node-").parse().unwrap();
    let gone: BTreeSet<u16> = healthy_replicas(&client, "web", 1)
        .await
        .iter()
        .filter(|replica| replica.node_id == victim.node_id)
        .map(|replica| replica.addr.port())
        .collect();
    let killed = tokio::time::Instant::now();
    cluster.stop_node(victim_index).await.unwrap();
    wait_for(SETTLE, || async {
        let dns = srv_ports(&resolver, "web.service.stratus.").await;
        (!dns.is_empty() && dns.is_disjoint(&gone))
            .then_some(())
            .ok_or(format!("DNS still answers {dns:?} (dead: {gone:?})"))
    })
    .await
    .unwrap();
    println!(
        "freshness: {} left the answers {:?} after its node stopped",
        victim.node_id,
        killed.elapsed()
    );
    // Replaced elsewhere: 3 answers again, none of the dead node's.
    wait_for(SETTLE, srv_matches_api).await.unwrap();

    // The agent's /metrics counts what it answered.
    let metrics = http_get(cluster.node(0).api_addr, "/metrics").await;
    assert!(
        metrics.contains("stratus_agent_dns_answers_total{rcode=\"NXDOMAIN\",transport=\"udp\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_names_are_refused_without_a_recursor_and_forwarded_with_one() {
    // The recursor: a DNS server of its own, for the domain `example.`.
    let upstream = serve_zone(zone_of("example", 2)).await;
    let mut cluster = cluster_for_test(0).await.unwrap();
    cluster
        .add_node_with(|args| args.dns_addr = Some(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    cluster
        .add_node_with(|args| {
            args.dns_addr = Some(([127, 0, 0, 1], 0).into());
            args.dns_recursor = Some(upstream.addr);
        })
        .await
        .unwrap();
    let alone = cluster.node(0).dns_addr.unwrap();
    let forwarding = cluster.node(1).dns_addr.unwrap();
    let refused = dig(alone, &["big.service.example", "A"]).await;
    assert!(refused.contains("status: REFUSED"), "{refused}");
    assert!(!refused.contains(" ra"), "no recursion offered: {refused}");
    for transport in ["+notcp", "+tcp"] {
        let forwarded = dig(forwarding, &["big.service.example", "A", transport]).await;
        assert!(
            forwarded.contains("status: NOERROR"),
            "{transport}: {forwarded}"
        );
        assert_eq!(forwarded.matches("\tA\t10.1.0.").count(), 2, "{forwarded}");
    }
    // Its own names are still its own.
    let own = dig(forwarding, &["nope.service.stratus", "A"]).await;
    assert!(own.contains("status: NXDOMAIN"), "{own}");
    // A recursor that never answers: SERVFAIL, after the forward timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    cluster
        .add_node_with(|args| {
            args.dns_addr = Some(([127, 0, 0, 1], 0).into());
            args.dns_recursor = Some(silent.local_addr().unwrap());
        })
        .await
        .unwrap();
    let stuck = cluster.node(2).dns_addr.unwrap();
    let failed = dig(stuck, &["example.org", "A", "+time=5"]).await;
    assert!(failed.contains("status: SERVFAIL"), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_replicas_truncate_over_udp_and_come_whole_over_tcp() {
    let server = serve_zone(zone_of("stratus", 40)).await;
    // Without EDNS a UDP answer may take 512 bytes: 40 SRV records do not fit.
    let cut = dig(
        server.addr,
        &["big.service.stratus", "SRV", "+noedns", "+ignore"],
    )
    .await;
    assert!(cut.contains("flags: qr aa tc"), "{cut}");
    assert!(cut.contains("ANSWER: 0"), "{cut}");
    // dig retries over TCP on TC and gets all 40, with their addresses.
    let whole = dig(server.addr, &["big.service.stratus", "SRV", "+noedns"]).await;
    assert!(whole.contains("Truncated, retrying in TCP mode"), "{whole}");
    assert_eq!(whole.matches("\tSRV\t").count(), 40, "{whole}");
    assert!(whole.contains("ADDITIONAL: 40"), "{whole}");
    // A and AAAA fit in 1232 bytes with EDNS, dig's default.
    let a = dig(server.addr, &["big.service.stratus", "A", "+notcp"]).await;
    assert!(!a.contains(" tc"), "{a}");
    assert_eq!(a.matches("\tA\t").count(), 40, "{a}");
    // hickory's resolver also falls back to TCP, and sees all 40.
    let resolver = resolver(server.addr);
    assert_eq!(
        srv_ports(&resolver, "big.service.stratus.").await.len(),
        40,
        "every replica has its own port"
    );
    let stats = server.counters.stats();
    assert!(stats.truncated >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packets_are_counted_and_the_server_keeps_answering() {
    let server = serve_zone(zone_of("stratus", 3)).await;
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut garbage: Vec<Vec<u8>> = Vec::new();
    // Shorter than a header; random bytes; a header with a question that is not there;
    // a compression pointer to itself; a label past the end; a response (reflection);
    // a datagram larger than any query.
    garbage.push(vec![0x12]);
    garbage.push((0..300u32).map(|i| (i * 7919 % 251) as u8).collect());
    garbage.push(vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
    let mut looped = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    garbage.push(looped);
    let mut overrun = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    overrun.extend_from_slice(&[63, b'a', b'b']);
    garbage.push(overrun);
    garbage.push(vec![0x12, 0x34, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]);
    garbage.push(vec![0u8; 5000]);
    let rounds = 2000;
    for _ in 0..rounds {
        for packet in &garbage {
            let _ = attacker.send_to(packet, server.addr).await;
        }
    }
    // Names near DNS's limit of 255 bytes, of long labels and of many: answered.
    let labels = ["a".repeat(63), "b".repeat(63), "c".repeat(63)].join(".");
    let long = format!("{labels}.service.stratus");
    let answer = dig(server.addr, &[&long, "A"]).await;
    assert!(answer.contains("status: NXDOMAIN"), "{answer}");
    let long = format!("{}.service.stratus", ["a"; 110].join("."));
    let answer = dig(server.addr, &[&long, "A"]).await;
    assert!(answer.contains("status: NXDOMAIN"), "{answer}");
    // Others are still answered, over UDP and TCP.
    let a = dig(server.addr, &["big.service.stratus", "A", "+short"]).await;
    assert_eq!(a.lines().count(), 3, "{a}");
    wait_for(Duration::from_secs(10), || async {
        let stats = server.counters.stats();
        let dropped: u64 = stats.dropped.iter().map(|(_, n)| n).sum();
        // A flood sent as fast as one socket can overruns the server's receive buffer, and
        // the kernel drops some datagrams before the server sees them: a third is enough
        // to show they are counted.
        (dropped >= (rounds as u64) * 2)
            .then_some(())
            .ok_or(format!("{stats:?}"))
    })
    .await
    .unwrap();
    let stats = server.counters.stats();
    println!(
        "after {} hostile datagrams: {stats:?}",
        rounds * garbage.len()
    );

    // A TCP flood: connections past the limit are closed at once, and a client still
    // gets its answer once the flood ends.
    let mut held = Vec::new();
    for _ in 0..(node::dns::server::MAX_TCP_CONNECTIONS + 20) {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    wait_for(Duration::from_secs(10), || async {
        let refused = server.counters.stats().tcp_refused;
        (refused >= 20)
            .then_some(())
            .ok_or(format!("{refused} refused"))
    })
    .await
    .unwrap();
    drop(held);
    let tcp = dig(server.addr, &["big.service.stratus", "A", "+tcp", "+short"]).await;
    assert_eq!(tcp.lines().count(), 3, "{tcp}");
}

/// A server for one synthetic zone on a free loopback port.
struct ServedZone {
    addr: SocketAddr,
    counters: Arc<DnsCounters>,
    _stop: watch::Sender<bool>,
}

/// `big.service.DOMAIN` with `replicas` replicas on addresses 10.1.0.1... port 20000+i.
fn zone_of(domain: &str, replicas: usize) -> Zone {
    let big = ZoneApp {
        tenant: None,
        latest_release: 1,
        replicas: (0..replicas)
            .map(|i| ZoneReplica {
                node: format!("n{i}"),
                release: 1,
                addr: SocketAddr::new(
                    IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1]),
                    20000 + i as u16,
                ),
            })
            .collect(),
    };
    Zone::new(
        ZoneConfig::new(domain, 0).unwrap(),
        BTreeMap::from([("big".to_string(), big)]),
        BTreeMap::new(),
        1,
    )
}

async fn serve_zone(zone: Zone) -> ServedZone {
    let listeners = DnsListeners::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let addr = listeners.local_addr().unwrap();
    let (_zones_tx, zones) = watch::channel(Arc::new(zone));
    let counters = Arc::new(DnsCounters::default());
    let service = DnsService {
        zones,
        askers: Arc::new(TenantSubnets::new()),
        recursor: None,
        counters: counters.clone(),
    };
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        // The zone never changes: its sender lives as long as the server.
        let _zones_tx = _zones_tx;
        node::dns::server::serve(listeners, Arc::new(service), stop_rx).await;
    });
    ServedZone {
        addr,
        counters,
        _stop: stop,
    }
}

/// A plain HTTP/1.0 GET of `path`: the whole answer.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).await.unwrap();
    page
}
