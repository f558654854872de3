//! The DNS answer table: what this node answers for names under its domain (`stratus.`
//! unless `--dns-domain` renames it), built from its own view. Pure: a [`Zone`] is plain
//! data made from the view, and [`Zone::answer`] takes a question, who asks and an RNG.
//!
//! Names, for a domain `D`:
//! - `APP.service.D`: A/AAAA of the app's healthy replicas (one record per address; the
//!   replicas of one node share it), SRV of each replica (port, and a target
//!   `HEX.addr.D` whose A/AAAA is in the additional section);
//! - `_http._tcp.APP.service.D`: the same SRV records, in the RFC 2782 form;
//! - `RELEASE.APP.service.D` (`3` or `v3`): the same, for one release's replicas;
//! - `NODE.node.D`: a live node's advertise address;
//! - `HEX.addr.D`: the address spelled in hex (8 digits for IPv4, 32 for IPv6), the SRV
//!   targets, as Consul spells them;
//! - `D` itself: its SOA;
//! - `APP.internal` (with the node-local balancer on, [`ZoneConfig::internal`]): the
//!   balancer, reached at the asker's own tenant network gateway (A); from anywhere else
//!   it has no address (NODATA): the balancer serves this node's containers.
//!
//! Anything else under `D` is NXDOMAIN with the SOA in the authority section (its minimum
//! is the TTL: negative answers are cached no longer than positive ones). A name that
//! exists without records of the asked type is NOERROR with no answer (NODATA). An app of
//! another tenant is NXDOMAIN, exactly as an absent app: the API's 404 rule.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand::Rng;
use rand::seq::SliceRandom;

/// Longest TTL an operator may set: answers must follow the view within seconds.
pub const MAX_TTL_SECS: u32 = 5;

/// A healthy replica, as the zone knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneReplica {
    pub node: String,
    pub release: u64,
    /// Where callers dial it.
    pub addr: SocketAddr,
}

/// An app, as the zone knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ZoneApp {
    /// `None`: the cluster administrator's own app.
    pub tenant: Option<String>,
    /// The newest release number the app has had (names of older releases exist too).
    pub latest_release: u64,
    /// Healthy replicas only.
    pub replicas: Vec<ZoneReplica>,
}

/// Whose names a question may see, told from where it comes (see `dns::askers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The host, other hosts and the administrator's containers: every app.
    Everything,
    /// A container on this tenant's network: its apps only.
    Tenant(String),
}

impl Scope {
    fn sees(&self, app: &ZoneApp) -> bool {
        match self {
            Scope::Everything => true,
            Scope::Tenant(tenant) => app.tenant.as_deref() == Some(tenant.as_str()),
        }
    }
}

/// Who asks a question, as the zone needs to know (`dns::askers` tells it from the
/// source address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    pub scope: Scope,
    /// The gateway of the asker's tenant network: where its containers reach this node's
    /// balancer, so what `APP.internal` resolves to. `None` from anywhere else.
    pub gateway: Option<IpAddr>,
}

impl From<Scope> for Asker {
    fn from(scope: Scope) -> Asker {
        Asker {
            scope,
            gateway: None,
        }
    }
}

/// What the zone says to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An answer from the zone (NOERROR, NXDOMAIN or NOTIMP), authoritative.
    Answer(Answer),
    /// The name is outside the zone: the server forwards it, or refuses it without a
    /// recursor.
    Outside,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// The zone's settings: its domain and TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// Fully qualified and lowercase, e.g. `stratus.`.
    pub domain: Name,
    /// Of every record, 0 to [`MAX_TTL_SECS`].
    pub ttl: u32,
    /// The node-local balancer is on: `APP.internal` names exist.
    pub internal: bool,
}

impl ZoneConfig {
    /// `domain` as an operator writes it (`stratus`, `cluster.example.`).
    pub fn new(domain: &str, ttl: u32) -> Result<ZoneConfig, String> {
        if ttl > MAX_TTL_SECS {
            return Err(format!(
                "a DNS TTL of {ttl} s is too long: answers must follow the cluster within seconds (0 to {MAX_TTL_SECS})"
            ));
        }
        let trimmed = domain.trim_end_matches('.');
        if trimmed.is_empty() {
            return Err("the DNS domain is empty: give one such as `stratus`".into());
        }
        let mut name = Name::from_ascii(trimmed)
            .map_err(|err| format!("{domain:?} is not a DNS domain name: {err}"))?
            .to_lowercase();
        name.set_fqdn(true);
        Ok(ZoneConfig {
            domain: name,
            ttl,
            internal: false,
        })
    }
}

/// Every name this node answers, from one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    config: ZoneConfig,
    apps: BTreeMap<String, ZoneApp>,
    /// Live nodes' advertise addresses.
    nodes: BTreeMap<String, IpAddr>,
    /// Bumped by the driver when the view changes, for the SOA.
    serial: u32,
}

impl Zone {
    pub fn new(
        config: ZoneConfig,
        apps: BTreeMap<String, ZoneApp>,
        nodes: BTreeMap<String, IpAddr>,
        serial: u32,
    ) -> Zone {
        Zone {
            config,
            apps,
            nodes,
            serial,
        }
    }

    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// Whether `other` answers every question as `self` does (the serial aside).
    pub fn same_records(&self, other: &Zone) -> bool {
        self.config == other.config && self.apps == other.apps && self.nodes == other.nodes
    }

    /// The answer to `name` (any case) of type `qtype` asked by `asker`; the records of
    /// an RRset are shuffled with `rng`, so callers that take the first spread their load.
    pub fn answer(
        &self,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
        asker: &Asker,
        rng: &mut impl Rng,
    ) -> Reply {
        let name = name.to_lowercase();
        let scope = &asker.scope;
        let internal = self.config.internal.then(|| internal_app(&name)).flatten();
        if internal.is_none() && !self.config.domain.zone_of(&name) {
            return Reply::Outside;
        }
        if qclass != DNSClass::IN && qclass != DNSClass::ANY {
            return Reply::Answer(self.refusal(ResponseCode::NotImp));
        }
        if let Some(app) = internal {
            let found = match self.apps.get(&app).filter(|entry| scope.sees(entry)) {
                None => Found::Nothing,
                Some(_) => asker.gateway.map_or(Found::NoAddress, Found::Address),
            };
            return Reply::Answer(self.records(&name, found, qtype));
        }
        // Counted by hand: `num_labels` leaves out a leading `*`, which must not turn
        // `*.D` into the apex.
        let depth = name.iter().count() - self.config.domain.iter().count();
        let labels: Vec<String> = name
            .iter()
            .take(depth)
            .map(|label| String::from_utf8_lossy(label).into_owned())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let found = match labels.as_slice() {
            [] => Found::Apex,
            [app, "service"] => self.service(app, None, scope),
            ["_http", "_tcp", app, "service"] => self.service(app, None, scope).srv_only(),
            [release, app, "service"] => match parse_release(release) {
                Some(number) => self.service(app, Some(number), scope),
                None => Found::Nothing,
            },
            [node, "node"] => self
                .nodes
                .get(*node)
                .map_or(Found::Nothing, |ip| Found::Address(*ip)),
            [hex, "addr"] => parse_hex_ip(hex).map_or(Found::Nothing, Found::Address),
            _ => Found::Nothing,
        };
        let mut answer = self.records(&name, found, qtype);
        answer.answers.shuffle(rng);
        Reply::Answer(answer)
    }

    fn service(&self, app: &str, release: Option<u64>, scope: &Scope) -> Found {
        let Some(entry) = self.apps.get(app).filter(|entry| scope.sees(entry)) else {
            return Found::Nothing;
        };
        if let Some(number) = release
            && (number == 0 || number > entry.latest_release)
        {
            return Found::Nothing;
        }
        let replicas = entry
            .replicas
            .iter()
            .filter(|replica| release.is_none_or(|number| replica.release == number))
            .map(|replica| replica.addr)
            .collect();
        Found::Service {
            replicas,
            srv_only: false,
        }
    }

    fn records(&self, name: &Name, found: Found, qtype: RecordType) -> Answer {
        let ttl = self.config.ttl;
        let mut answer = Answer {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
        };
        let wants = |kind: RecordType| qtype == kind || qtype == RecordType::ANY;
        match found {
            Found::Nothing => {
                answer.rcode = ResponseCode::NXDomain;
            }
            Found::NoAddress => {}
            Found::Apex => {
                if wants(RecordType::SOA) {
                    answer.answers.push(self.soa());
                }
            }
            Found::Address(ip) => {
                if let Some(record) = address_record(name, ip, ttl, qtype) {
                    answer.answers.push(record);
                }
            }
            Found::Service { replicas, srv_only } => {
                if !srv_only {
                    let mut seen = Vec::new();
                    for addr in &replicas {
                        if seen.contains(&addr.ip()) {
                            continue;
                        }
                        seen.push(addr.ip());
                        if let Some(record) = address_record(name, addr.ip(), ttl, qtype) {
                            answer.answers.push(record);
                        }
                    }
                }
                if wants(RecordType::SRV) {
                    let mut targets = Vec::new();
                    for addr in &replicas {
                        let target = self.addr_name(addr.ip());
                        answer.answers.push(Record::from_rdata(
                            name.clone(),
                            ttl,
                            RData::SRV(SRV::new(1, 1, addr.port(), target.clone())),
                        ));
                        if !targets.contains(&addr.ip()) {
                            targets.push(addr.ip());
                            if let Some(record) =
                                address_record(&target, addr.ip(), ttl, RecordType::ANY)
                            {
                                answer.additionals.push(record);
                            }
                        }
                    }
                }
            }
        }
        if answer.answers.is_empty() {
            // NXDOMAIN and NODATA alike carry the SOA, whose minimum bounds negative caching.
            answer.authority.push(self.soa());
        }
        answer
    }

    /// An empty answer with `rcode` and the SOA.
    pub fn refusal(&self, rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            answers: Vec::new(),
            authority: vec![self.soa()],
            additionals: Vec::new(),
        }
    }

    fn soa(&self) -> Record {
        let domain = &self.config.domain;
        let label = |prefix: &str| {
            Name::from_ascii(prefix)
                .and_then(|name| name.append_domain(domain))
                .unwrap_or_else(|_| domain.clone())
        };
        let ttl = self.config.ttl;
        Record::from_rdata(
            domain.clone(),
            ttl,
            RData::SOA(SOA::new(
                label("ns"),
                label("hostmaster"),
                self.serial,
                3600,
                600,
                86400,
                ttl,
            )),
        )
    }

    /// `HEX.addr.D` for `ip`.
    pub fn addr_name(&self, ip: IpAddr) -> Name {
        let hex = match ip {
            IpAddr::V4(v4) => hex::encode(v4.octets()),
            IpAddr::V6(v6) => hex::encode(v6.octets()),
        };
        Name::from_ascii(format!("{hex}.addr"))
            .and_then(|name| name.append_domain(&self.config.domain))
            .unwrap_or_else(|_| self.config.domain.clone())
    }
}

/// What a name under the domain stands for.
enum Found {
    Nothing,
    /// The name exists, with no record for this asker (NODATA).
    NoAddress,
    Apex,
    Address(IpAddr),
    Service {
        replicas: Vec<SocketAddr>,
        /// `_http._tcp.` names have SRV records only.
        srv_only: bool,
    },
}

impl Found {
    fn srv_only(self) -> Found {
        match self {
            Found::Service { replicas, .. } => Found::Service {
                replicas,
                srv_only: true,
            },
            other => other,
        }
    }
}

/// The A or AAAA record of `ip` named `name`, if `qtype` asks for that family.
fn address_record(name: &Name, ip: IpAddr, ttl: u32, qtype: RecordType) -> Option<Record> {
    let any = qtype == RecordType::ANY;
    match ip {
        IpAddr::V4(v4) if any || qtype == RecordType::A => {
            Some(Record::from_rdata(name.clone(), ttl, RData::A(A(v4))))
        }
        IpAddr::V6(v6) if any || qtype == RecordType::AAAA => {
            Some(Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))))
        }
        _ => None,
    }
}

/// `APP` of `APP.internal.`, lowercase; `None` for any other name.
fn internal_app(name: &Name) -> Option<String> {
    let mut labels = name.iter();
    let (Some(app), Some(b"internal"), None) = (labels.next(), labels.next(), labels.next()) else {
        return None;
    };
    Some(String::from_utf8_lossy(app).into_owned())
}

fn parse_release(label: &str) -> Option<u64> {
    let digits = label.strip_prefix('v').unwrap_or(label);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn parse_hex_ip(label: &str) -> Option<IpAddr> {
    let bytes = hex::decode(label).ok()?;
    match bytes.len() {
        4 => {
            let octets: [u8; 4] = bytes.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        16 => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
