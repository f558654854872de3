use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;

fn replica(node: &str, release: u64, addr: &str) -> ZoneReplica {
    ZoneReplica {
        node: node.into(),
        release,
        addr: addr.parse().unwrap(),
    }
}

/// `web` (the administrator's, release 2 on two nodes, release 1 draining on a third),
/// `api` of tenant acme, `idle` with no healthy replica; nodes a and b.
fn zone() -> Zone {
    let mut apps = BTreeMap::new();
    apps.insert(
        "web".to_string(),
        ZoneApp {
            tenant: None,
            latest_release: 2,
            replicas: vec![
                replica("a", 2, "10.0.0.1:20001"),
                replica("a", 2, "10.0.0.1:20002"),
                replica("b", 2, "10.0.0.2:20001"),
                replica("c", 1, "10.0.0.3:20005"),
            ],
        },
    );
    apps.insert(
        "api".to_string(),
        ZoneApp {
            tenant: Some("acme".into()),
            latest_release: 1,
            replicas: vec![replica("b", 1, "[fd00::2]:20010")],
        },
    );
    apps.insert(
        "idle".to_string(),
        ZoneApp {
            tenant: None,
            latest_release: 1,
            replicas: vec![],
        },
    );
    let nodes = BTreeMap::from([
        ("a".to_string(), "10.0.0.1".parse().unwrap()),
        ("b".to_string(), "10.0.0.2".parse().unwrap()),
    ]);
    Zone::new(ZoneConfig::new("stratus", 0).unwrap(), apps, nodes, 7)
}

fn ask(zone: &Zone, name: &str, qtype: RecordType, scope: &Scope) -> Reply {
    let mut rng = SmallRng::seed_from_u64(1);
    zone.answer(
        &Name::from_ascii(name).unwrap(),
        qtype,
        DNSClass::IN,
        &scope.clone().into(),
        &mut rng,
    )
}

fn answer(zone: &Zone, name: &str, qtype: RecordType) -> Answer {
    match ask(zone, name, qtype, &Scope::Everything) {
        Reply::Answer(answer) => answer,
        Reply::Outside => panic!("{name} is in the zone"),
    }
}

fn ips(answer: &Answer) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|record| match record.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

fn srv_targets(zone: &Zone, answer: &Answer) -> Vec<SocketAddr> {
    let mut targets: Vec<SocketAddr> = answer
        .answers
        .iter()
        .filter_map(|record| match record.data() {
            RData::SRV(srv) => {
                // The target's address is in the additional section.
                let ip = answer
                    .additionals
                    .iter()
                    .find(|extra| extra.name() == srv.target())
                    .and_then(|extra| match extra.data() {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                        _ => None,
                    })
                    .expect("every SRV target has its address in the additional section");
                assert_eq!(*srv.target(), zone.addr_name(ip));
                Some(SocketAddr::new(ip, srv.port()))
            }
            _ => None,
        })
        .collect();
    targets.sort();
    targets
}

#[test]
fn a_records_are_the_healthy_replicas_addresses_once_each() {
    let zone = zone();
    let web = answer(&zone, "web.service.stratus.", RecordType::A);
    assert_eq!(web.rcode, ResponseCode::NoError);
    let want: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    assert_eq!(ips(&web), want);
    assert!(web.answers.iter().all(|record| record.ttl() == 0));
    // Any case, and without the final dot.
    assert_eq!(
        ips(&answer(&zone, "WEB.Service.STRATUS", RecordType::A)),
        want
    );
    // An IPv4-only app has no AAAA: NODATA, with the SOA.
    let aaaa = answer(&zone, "web.service.stratus.", RecordType::AAAA);
    assert_eq!(aaaa.rcode, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    assert_eq!(aaaa.authority[0].record_type(), RecordType::SOA);
}

#[test]
fn srv_records_carry_every_replica_port_and_their_addresses() {
    let zone = zone();
    let want: Vec<SocketAddr> = [
        "10.0.0.1:20001",
        "10.0.0.1:20002",
        "10.0.0.2:20001",
        "10.0.0.3:20005",
    ]
    .iter()
    .map(|addr| addr.parse().unwrap())
    .collect();
    for name in ["web.service.stratus.", "_http._tcp.web.service.stratus."] {
        let srv = answer(&zone, name, RecordType::SRV);
        assert_eq!(srv_targets(&zone, &srv), want, "{name}");
        // One additional record per address, not per replica.
        assert_eq!(srv.additionals.len(), 3, "{name}");
    }
    // `_http._tcp.` names have SRV records only.
    assert!(
        answer(&zone, "_http._tcp.web.service.stratus.", RecordType::A)
            .answers
            .is_empty()
    );
}

#[test]
fn a_release_name_answers_that_release_only() {
    let zone = zone();
    for name in ["1.web.service.stratus.", "v1.web.service.stratus."] {
        let srv = answer(&zone, name, RecordType::SRV);
        assert_eq!(
            srv_targets(&zone, &srv),
            vec!["10.0.0.3:20005".parse().unwrap()],
            "{name}"
        );
    }
    assert_eq!(
        ips(&answer(&zone, "2.web.service.stratus.", RecordType::A)).len(),
        2
    );
    // Past the newest release, release 0, or not a number: no such name.
    for name in [
        "3.web.service.stratus.",
        "0.web.service.stratus.",
        "x1.web.service.stratus.",
    ] {
        assert_eq!(
            answer(&zone, name, RecordType::A).rcode,
            ResponseCode::NXDomain,
            "{name}"
        );
    }
}

#[test]
fn unknown_names_are_nxdomain_with_the_soa_and_empty_apps_are_nodata() {
    let zone = zone();
    for name in [
        "nope.service.stratus.",
        "web.stratus.",
        "a.b.web.service.stratus.",
        "_grpc._tcp.web.service.stratus.",
        "*.stratus.",
        "*.service.stratus.",
        "c.node.stratus.",
        "zz.addr.stratus.",
    ] {
        let reply = answer(&zone, name, RecordType::A);
        assert_eq!(reply.rcode, ResponseCode::NXDomain, "{name}");
        assert!(reply.answers.is_empty(), "{name}");
        let soa = &reply.authority[0];
        let RData::SOA(data) = soa.data() else {
            panic!("{name}: the authority is the SOA");
        };
        assert_eq!(data.serial(), 7);
        // Negative answers are cached no longer than positive ones.
        assert_eq!(data.minimum(), 0);
    }
    let idle = answer(&zone, "idle.service.stratus.", RecordType::A);
    assert_eq!(idle.rcode, ResponseCode::NoError);
    assert!(idle.answers.is_empty());
    // The apex has its SOA.
    let apex = answer(&zone, "stratus.", RecordType::SOA);
    assert_eq!(apex.answers[0].record_type(), RecordType::SOA);
}

#[test]
fn nodes_and_addr_names_answer_their_address() {
    let zone = zone();
    assert_eq!(
        ips(&answer(&zone, "b.node.stratus.", RecordType::A)),
        vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        ips(&answer(&zone, "0a000003.addr.stratus.", RecordType::A)),
        vec!["10.0.0.3".parse::<IpAddr>().unwrap()]
    );
    let v6 = zone.addr_name("fd00::2".parse().unwrap());
    assert_eq!(
        ips(&answer(&zone, &v6.to_string(), RecordType::AAAA)),
        vec!["fd00::2".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn a_tenant_sees_its_own_apps_and_no_other() {
    let zone = zone();
    let acme = Scope::Tenant("acme".into());
    let globex = Scope::Tenant("globex".into());
    let Reply::Answer(own) = ask(&zone, "api.service.stratus.", RecordType::AAAA, &acme) else {
        panic!("in the zone");
    };
    assert_eq!(ips(&own), vec!["fd00::2".parse::<IpAddr>().unwrap()]);
    // Another tenant's app, and the administrator's, are as absent as a missing one.
    for (name, scope) in [
        ("api.service.stratus.", &globex),
        ("web.service.stratus.", &acme),
        ("1.api.service.stratus.", &globex),
    ] {
        let Reply::Answer(reply) = ask(&zone, name, RecordType::A, scope) else {
            panic!("in the zone");
        };
        assert_eq!(reply.rcode, ResponseCode::NXDomain, "{name} for {scope:?}");
        assert_eq!(
            reply,
            match ask(&zone, "nope.service.stratus.", RecordType::A, scope) {
                Reply::Answer(absent) => absent,
                Reply::Outside => unreachable!(),
            },
            "{name} for {scope:?} looks exactly like an absent app"
        );
    }
}

/// `APP.internal` leads a tenant's container to its own gateway, where the node-local
/// balancer answers; nobody else gets an address, and nothing of it exists with the
/// balancer off.
#[test]
fn an_internal_name_resolves_to_the_askers_gateway_for_its_own_apps_only() {
    let mut zone = zone();
    let gateway: IpAddr = "172.20.0.1".parse().unwrap();
    let acme = Asker {
        scope: Scope::Tenant("acme".into()),
        gateway: Some(gateway),
    };
    let globex = Asker {
        scope: Scope::Tenant("globex".into()),
        gateway: Some("172.21.0.1".parse().unwrap()),
    };
    let host: Asker = Scope::Everything.into();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut ask = |zone: &Zone, name: &str, qtype: RecordType, asker: &Asker| {
        let name = Name::from_ascii(name).unwrap();
        match zone.answer(&name, qtype, DNSClass::IN, asker, &mut rng) {
            Reply::Answer(answer) => answer,
            Reply::Outside => panic!("{name} is the zone's"),
        }
    };
    assert_eq!(
        zone.answer(
            &Name::from_ascii("api.internal.").unwrap(),
            RecordType::A,
            DNSClass::IN,
            &acme,
            &mut SmallRng::seed_from_u64(1)
        ),
        Reply::Outside,
        "no balancer, no internal names"
    );
    zone.config.internal = true;
    let own = ask(&zone, "API.internal.", RecordType::A, &acme);
    assert_eq!(own.rcode, ResponseCode::NoError);
    assert_eq!(ips(&own), vec![gateway]);
    // No IPv6 on the gateway: NODATA, so a client falls back to the A record.
    let v6 = ask(&zone, "api.internal.", RecordType::AAAA, &acme);
    assert_eq!((v6.rcode, v6.answers.len()), (ResponseCode::NoError, 0));
    // Another tenant's app and the administrator's are as absent as a missing one.
    let absent = ask(&zone, "nope.internal.", RecordType::A, &acme);
    assert_eq!(absent.rcode, ResponseCode::NXDomain);
    assert_eq!(ask(&zone, "web.internal.", RecordType::A, &acme), absent);
    let other = ask(&zone, "api.internal.", RecordType::A, &globex);
    assert_eq!(other.rcode, ResponseCode::NXDomain);
    // The host knows the name but has no gateway to reach the balancer at.
    let from_host = ask(&zone, "api.internal.", RecordType::A, &host);
    assert_eq!(
        (from_host.rcode, from_host.answers.len()),
        (ResponseCode::NoError, 0)
    );
    // Only `APP.internal` itself is the zone's.
    for name in ["internal.", "x.api.internal.", "api.internal.example."] {
        let name = Name::from_ascii(name).unwrap();
        let reply = zone.answer(
            &name,
            RecordType::A,
            DNSClass::IN,
            &acme,
            &mut SmallRng::seed_from_u64(1),
        );
        assert_eq!(reply, Reply::Outside, "{name}");
    }
}

#[test]
fn names_outside_the_domain_are_not_the_zones() {
    let zone = zone();
    for name in ["example.com.", "stratus.example.", "service.stratu."] {
        assert_eq!(
            ask(&zone, name, RecordType::A, &Scope::Everything),
            Reply::Outside,
            "{name}"
        );
    }
}

#[test]
fn a_renamed_domain_answers_under_its_name() {
    let mut zone = zone();
    zone.config = ZoneConfig::new("Cluster.Example.", 3).unwrap();
    let web = answer(&zone, "web.service.cluster.example.", RecordType::A);
    assert_eq!(web.answers.len(), 3);
    assert!(web.answers.iter().all(|record| record.ttl() == 3));
    assert_eq!(
        ask(
            &zone,
            "web.service.stratus.",
            RecordType::A,
            &Scope::Everything
        ),
        Reply::Outside
    );
}

#[test]
fn the_ttl_and_the_domain_are_checked() {
    assert!(ZoneConfig::new("stratus", 5).is_ok());
    assert!(
        ZoneConfig::new("stratus", 6)
            .unwrap_err()
            .contains("0 to 5")
    );
    assert!(ZoneConfig::new("", 0).unwrap_err().contains("empty"));
    assert!(ZoneConfig::new("a..b", 0).is_err());
}

#[test]
fn answers_are_shuffled_across_asks() {
    let zone = zone();
    let name = Name::from_ascii("web.service.stratus.").unwrap();
    let mut rng = SmallRng::seed_from_u64(9);
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let Reply::Answer(reply) = zone.answer(
            &name,
            RecordType::A,
            DNSClass::IN,
            &Scope::Everything.into(),
            &mut rng,
        ) else {
            panic!("in the zone");
        };
        firsts.insert(reply.answers[0].data().clone().into_a().ok().map(|a| a.0));
    }
    // Every address comes first sometimes: clients that take the first spread out.
    assert_eq!(firsts.len(), 3, "{firsts:?}");
}

#[test]
fn other_classes_are_not_implemented() {
    let zone = zone();
    let mut rng = SmallRng::seed_from_u64(1);
    let Reply::Answer(reply) = zone.answer(
        &Name::from_ascii("web.service.stratus.").unwrap(),
        RecordType::A,
        DNSClass::CH,
        &Scope::Everything.into(),
        &mut rng,
    ) else {
        panic!("in the zone");
    };
    assert_eq!(reply.rcode, ResponseCode::NotImp);
}
