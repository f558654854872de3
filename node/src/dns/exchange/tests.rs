use std::collections::BTreeMap;
use std::net::SocketAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;
use crate::dns::zone::{Scope, ZoneApp, ZoneConfig, ZoneReplica};

/// `big` has `replicas` replicas on as many addresses.
fn zone(replicas: usize) -> Zone {
    let big = ZoneApp {
        tenant: None,
        latest_release: 1,
        replicas: (0..replicas)
            .map(|i| ZoneReplica {
                node: format!("n{i}"),
                release: 1,
                addr: SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 20000)),
            })
            .collect(),
    };
    Zone::new(
        ZoneConfig::new("stratus", 0).unwrap(),
        BTreeMap::from([("big".to_string(), big)]),
        BTreeMap::new(),
        1,
    )
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(4321)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut extension = Edns::new();
        extension.set_max_payload(size);
        message.set_edns(extension);
    }
    message.to_vec().unwrap()
}

fn run(packet: &[u8], transport: Transport, zone: &Zone, recursor: bool) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(3);
    exchange(
        packet,
        transport,
        zone,
        &Scope::Everything.into(),
        recursor,
        &mut rng,
    )
}

fn reply(outcome: &Outcome) -> (Message, usize) {
    match &outcome.action {
        Action::Reply(bytes) => (Message::from_vec(bytes).unwrap(), bytes.len()),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn an_answer_echoes_the_question_and_is_authoritative() {
    let zone = zone(3);
    let outcome = run(
        &query("big.service.stratus.", RecordType::A, None),
        Transport::Udp,
        &zone,
        false,
    );
    let (message, _) = reply(&outcome);
    assert_eq!(message.id(), 4321);
    assert_eq!(message.message_type(), MessageType::Response);
    assert!(message.authoritative());
    assert!(message.recursion_desired());
    assert!(!message.recursion_available());
    assert_eq!(message.queries().len(), 1);
    assert_eq!(message.answers().len(), 3);
    assert!(!outcome.truncated);
}

#[test]
fn udp_without_edns_fits_512_bytes_or_says_tc_and_tcp_gets_everything() {
    let zone = zone(40);
    let udp = run(
        &query("big.service.stratus.", RecordType::SRV, None),
        Transport::Udp,
        &zone,
        false,
    );
    let (message, size) = reply(&udp);
    assert!(udp.truncated);
    assert!(message.truncated());
    assert!(size <= 512, "{size} bytes");
    // No partial RRset: a client that ignored TC would not take a part for the whole.
    assert!(message.answers().is_empty());
    let tcp = run(
        &query("big.service.stratus.", RecordType::SRV, None),
        Transport::Tcp,
        &zone,
        false,
    );
    let (message, size) = reply(&tcp);
    assert!(!message.truncated());
    assert_eq!(message.answers().len(), 40);
    assert_eq!(message.additionals().len(), 40);
    assert!(size > 512);
}

#[test]
fn edns_raises_the_udp_budget_up_to_4096() {
    let zone = zone(40);
    // 40 A records need about 670 bytes: too many for 512, within 1232.
    let small = run(
        &query("big.service.stratus.", RecordType::A, None),
        Transport::Udp,
        &zone,
        false,
    );
    assert!(small.truncated);
    let edns = run(
        &query("big.service.stratus.", RecordType::A, Some(1232)),
        Transport::Udp,
        &zone,
        false,
    );
    let (message, size) = reply(&edns);
    assert!(!edns.truncated);
    assert_eq!(message.answers().len(), 40);
    assert!(size <= 1232);
    // The answer has its own OPT record.
    assert!(message.extensions().is_some());
    // A client claiming 64 KiB gets at most 4096 over UDP.
    let huge = zone_huge();
    let outcome = run(
        &query("big.service.stratus.", RecordType::SRV, Some(65000)),
        Transport::Udp,
        &huge,
        false,
    );
    let (_, size) = reply(&outcome);
    assert!(outcome.truncated);
    assert!(size <= 4096);
    // A budget under 512 counts as 512 (RFC 6891).
    let few = self::zone(3);
    let tiny = run(
        &query("big.service.stratus.", RecordType::A, Some(100)),
        Transport::Udp,
        &few,
        false,
    );
    assert!(!tiny.truncated);
}

fn zone_huge() -> Zone {
    zone(400)
}

#[test]
fn outside_names_are_refused_or_forwarded() {
    let zone = zone(1);
    let refused = run(
        &query("example.com.", RecordType::A, None),
        Transport::Udp,
        &zone,
        false,
    );
    let (message, _) = reply(&refused);
    assert_eq!(message.response_code(), ResponseCode::Refused);
    assert_eq!(refused.rcode, Some(ResponseCode::Refused));
    let forwarded = run(
        &query("example.com.", RecordType::A, None),
        Transport::Udp,
        &zone,
        true,
    );
    assert_eq!(forwarded.action, Action::Forward);
    // Names of the zone are answered here even with a recursor.
    let own = run(
        &query("big.service.stratus.", RecordType::A, None),
        Transport::Udp,
        &zone,
        true,
    );
    assert!(reply(&own).0.recursion_available());
}

#[test]
fn garbage_is_dropped_or_answered_by_a_header_and_counted() {
    let zone = zone(1);
    // Shorter than a header: nothing goes back.
    for packet in [&b""[..], &b"\x00"[..], &[0xff; 11][..]] {
        let outcome = run(packet, Transport::Udp, &zone, false);
        assert_eq!(outcome.action, Action::Drop(DropCause::Malformed));
        assert!(outcome.malformed);
    }
    // A whole header asking one question that is not there: FORMERR, 12 bytes.
    let mut packet = query("big.service.stratus.", RecordType::A, None);
    packet.truncate(14);
    let outcome = run(&packet, Transport::Udp, &zone, false);
    assert!(outcome.malformed);
    let Action::Reply(bytes) = &outcome.action else {
        panic!("FORMERR expected");
    };
    assert_eq!(bytes.len(), 12);
    let message = Message::from_vec(bytes).unwrap();
    assert_eq!(message.response_code(), ResponseCode::FormErr);
    assert_eq!(message.id(), 4321);
    // A response is never answered: no reflection.
    let mut response =
        Message::from_vec(&query("big.service.stratus.", RecordType::A, None)).unwrap();
    response.set_message_type(MessageType::Response);
    let outcome = run(&response.to_vec().unwrap(), Transport::Udp, &zone, false);
    assert_eq!(outcome.action, Action::Drop(DropCause::NotAQuery));
    // A compression pointer that points at itself (a loop) is malformed, not a hang.
    let mut looped = query("big.service.stratus.", RecordType::A, None)[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let outcome = run(&looped, Transport::Udp, &zone, false);
    assert!(outcome.malformed);
    // Random bytes of every length up to 600 never panic.
    let mut rng = SmallRng::seed_from_u64(5);
    for len in 0..600 {
        let packet: Vec<u8> = (0..len).map(|_| rand::Rng::random(&mut rng)).collect();
        let _ = run(&packet, Transport::Udp, &zone, false);
    }
}

#[test]
fn other_opcodes_many_questions_and_new_edns_versions_get_their_codes() {
    let zone = zone(1);
    let mut notify =
        Message::from_vec(&query("big.service.stratus.", RecordType::A, None)).unwrap();
    notify.set_op_code(OpCode::Notify);
    let (message, _) = reply(&run(
        &notify.to_vec().unwrap(),
        Transport::Udp,
        &zone,
        false,
    ));
    assert_eq!(message.response_code(), ResponseCode::NotImp);

    let mut two = Message::from_vec(&query("big.service.stratus.", RecordType::A, None)).unwrap();
    two.add_query(Query::query(
        Name::from_ascii("big.service.stratus.").unwrap(),
        RecordType::AAAA,
    ));
    let (message, _) = reply(&run(&two.to_vec().unwrap(), Transport::Udp, &zone, false));
    assert_eq!(message.response_code(), ResponseCode::FormErr);

    let mut future =
        Message::from_vec(&query("big.service.stratus.", RecordType::A, Some(1232))).unwrap();
    if let Some(edns) = future.extensions_mut() {
        edns.set_version(1);
    }
    let (message, _) = reply(&run(
        &future.to_vec().unwrap(),
        Transport::Udp,
        &zone,
        false,
    ));
    // 16 is BADVERS in an OPT record (RFC 6891) and BADSIG in TSIG: hickory decodes the
    // number as the latter.
    assert_eq!(u16::from(message.response_code()), 16);
}

#[test]
fn a_failed_forward_turns_into_servfail_for_the_same_question() {
    let packet = query("example.com.", RecordType::A, None);
    let message = Message::from_vec(&servfail(&packet).unwrap()).unwrap();
    assert_eq!(message.id(), 4321);
    assert_eq!(message.response_code(), ResponseCode::ServFail);
    assert_eq!(message.queries().len(), 1);
    assert!(servfail(b"junk").is_none());
}
