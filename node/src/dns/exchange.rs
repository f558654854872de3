//! One DNS exchange, pure: the bytes of a query in, the bytes of the answer (or what to do
//! instead) out. The server's sockets only move these bytes.
//!
//! The rules it keeps:
//! - Garbage never costs more than its own size: a packet without a whole header, a
//!   response (reflection) and anything that is not a query are dropped or answered by a
//!   header of their own size (FORMERR, NOTIMP), and counted by cause.
//! - A UDP answer fits the asker's buffer: 512 bytes without EDNS (RFC 1035; hickory's
//!   own server allows 4096 there), the advertised size with EDNS (at most 4096). One that
//!   does not fit carries no records and the TC bit, and the client asks again over TCP,
//!   which has room for all of them. Consul once cut answers without TC, and GitLab used
//!   only 3 of its 5 replicas (gitlab-ee#8979).
//! - Names outside the zone are forwarded when a recursor is set, refused otherwise.

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use rand::Rng;

use super::zone::{Answer, Asker, Reply, Zone};

/// RFC 1035's limit for UDP answers to clients without EDNS.
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// The largest UDP answer this server sends, whatever a client advertises: larger ones
/// would be fragmented (RFC 6891 recommends 4096 as the ceiling).
pub const MAX_UDP_PAYLOAD: u16 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What the server does with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Send the packet to the recursor and its answer back.
    Forward,
    /// Send nothing.
    Drop(DropCause),
}

/// Why a packet got no answer, or only an error; each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Shorter than a header, or not decodable past it.
    Malformed,
    /// A response, not a query: answering would reflect traffic.
    NotAQuery,
}

impl DropCause {
    pub fn label(self) -> &'static str {
        match self {
            DropCause::Malformed => "malformed",
            DropCause::NotAQuery => "not_a_query",
        }
    }
}

/// The result of [`exchange`], with what the counters need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    /// The answer's code, when one is sent.
    pub rcode: Option<ResponseCode>,
    /// The answer did not fit the asker's UDP buffer and went out with TC.
    pub truncated: bool,
    /// The packet was malformed even if a FORMERR went back.
    pub malformed: bool,
}

impl Outcome {
    fn dropped(cause: DropCause) -> Outcome {
        Outcome {
            action: Action::Drop(cause),
            rcode: None,
            truncated: false,
            malformed: cause == DropCause::Malformed,
        }
    }
}

/// Answers `packet`, received over `transport` from `asker`. `recursor`: a
/// recursor is set, so names outside the zone are forwarded.
pub fn exchange(
    packet: &[u8],
    transport: Transport,
    zone: &Zone,
    asker: &Asker,
    recursor: bool,
    rng: &mut impl Rng,
) -> Outcome {
    let request = match Message::from_vec(packet) {
        Ok(request) => request,
        Err(_) => return malformed(packet),
    };
    if request.message_type() != MessageType::Query {
        return Outcome::dropped(DropCause::NotAQuery);
    }
    let mut response = response_to(&request, recursor);
    if let Some(edns) = request.extensions() {
        let mut ours = Edns::new();
        ours.set_max_payload(MAX_UDP_PAYLOAD).set_version(0);
        response.set_edns(ours);
        if edns.version() > 0 {
            // RFC 6891: only version 0 exists.
            response.set_response_code(ResponseCode::BADVERS);
            return encode(response, budget(&request, transport), false);
        }
    }
    if request.op_code() != OpCode::Query {
        response.set_response_code(ResponseCode::NotImp);
        return encode(response, budget(&request, transport), false);
    }
    let [query] = request.queries() else {
        // Every server in use answers one question per message; RFC 9619 makes it the rule.
        response.set_response_code(ResponseCode::FormErr);
        return encode(response, budget(&request, transport), false);
    };
    match zone.answer(
        query.name(),
        query.query_type(),
        query.query_class(),
        asker,
        rng,
    ) {
        Reply::Outside if recursor => Outcome {
            action: Action::Forward,
            rcode: None,
            truncated: false,
            malformed: false,
        },
        Reply::Outside => {
            response.set_response_code(ResponseCode::Refused);
            encode(response, budget(&request, transport), false)
        }
        Reply::Answer(Answer {
            rcode,
            answers,
            authority,
            additionals,
        }) => {
            response
                .set_authoritative(true)
                .set_response_code(rcode)
                .add_answers(answers)
                .add_name_servers(authority)
                .add_additionals(additionals);
            encode(response, budget(&request, transport), false)
        }
    }
}

/// SERVFAIL for `packet`: the recursor did not answer. `None` if it is not a query.
pub fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let mut response = response_to(&request, true);
    response.set_response_code(ResponseCode::ServFail);
    match encode(response, CLASSIC_UDP_PAYLOAD, false).action {
        Action::Reply(bytes) => Some(bytes),
        _ => None,
    }
}

/// The answer's skeleton: `request`'s id, opcode, RD and question, with RA when a
/// recursor is set.
fn response_to(request: &Message, recursion_available: bool) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(recursion_available)
        .add_queries(request.queries().iter().cloned());
    response
}

/// How large the answer to `request` may be on `transport`.
fn budget(request: &Message, transport: Transport) -> u16 {
    match transport {
        Transport::Tcp => u16::MAX,
        Transport::Udp => request
            .extensions()
            .as_ref()
            .map_or(CLASSIC_UDP_PAYLOAD, |edns| {
                edns.max_payload()
                    .clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
            }),
    }
}

/// Encodes `response` within `budget` bytes; if the records do not fit, again without
/// them and with TC.
fn encode(mut response: Message, budget: u16, truncated: bool) -> Outcome {
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(budget);
    let fitted = response.emit(&mut encoder).is_ok();
    // hickory's encoder keeps the records that fit and sets TC itself; a partial RRset
    // would look like a whole one to a client that does not retry, so none is kept.
    let cut = bytes.get(2).is_some_and(|flags| flags & 0x02 != 0);
    if (!fitted || cut) && !truncated {
        response.take_answers();
        response.take_name_servers();
        response.take_additionals();
        response.set_truncated(true);
        return encode(response, budget, true);
    }
    let rcode = response.response_code();
    if !fitted {
        // Even the question does not fit (a name near 255 bytes in 512): a header alone.
        return header_only(&response.header().clone(), rcode, true);
    }
    Outcome {
        action: Action::Reply(bytes),
        rcode: Some(rcode),
        truncated,
        malformed: false,
    }
}

/// A packet that does not decode: FORMERR when its header is whole and it asks, else
/// nothing.
fn malformed(packet: &[u8]) -> Outcome {
    let mut decoder = BinDecoder::new(packet);
    let Ok(header) = Header::read(&mut decoder) else {
        return Outcome::dropped(DropCause::Malformed);
    };
    if header.message_type() != MessageType::Query {
        return Outcome::dropped(DropCause::NotAQuery);
    }
    let mut outcome = header_only(&header, ResponseCode::FormErr, false);
    outcome.malformed = true;
    outcome
}

/// The answer to `request`: its header turned into a response with `rcode`, and nothing
/// after it (12 bytes).
fn header_only(request: &Header, rcode: ResponseCode, truncated: bool) -> Outcome {
    let mut header = Header::new();
    header
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_response_code(rcode)
        .set_truncated(truncated);
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    match header.emit(&mut encoder) {
        Ok(()) => Outcome {
            action: Action::Reply(bytes),
            rcode: Some(rcode),
            truncated,
            malformed: false,
        },
        Err(_) => Outcome::dropped(DropCause::Malformed),
    }
}

#[cfg(test)]
mod tests;
