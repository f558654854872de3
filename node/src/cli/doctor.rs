//! `stratus doctor`: what this host needs for `stratus agent`, checked one thing at a time.
//! The binary gathers the facts (sockets, the Docker daemon, the local agent's answers);
//! each function here only judges them, so every verdict is tested without Docker or a
//! cluster. A finding says what was seen and, when something is wrong, what to do.

use std::net::SocketAddr;
use std::path::PathBuf;

use proto::api::{NodeStatus, NodesResponse};
use serde::Serialize;

use crate::config::RuntimeChoice;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Could not be checked (no agent to ask, say): no failure, but no reassurance either.
    Skip,
    /// Works, but not as it should for a real cluster.
    Warn,
    /// The agent will not work, or not for long.
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Skip => "skip",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: String,
    pub verdict: Verdict,
    /// What was seen.
    pub detail: String,
    /// What to do about it, when something needs doing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn new(check: &str, verdict: Verdict, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            verdict,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// The findings as the terminal shows them: one line each, the fix indented under it.
pub fn report(findings: &[Finding]) -> String {
    let width = findings
        .iter()
        .map(|finding| finding.check.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for finding in findings {
        out.push_str(&format!(
            "{:<width$}  {:<4}  {}\n",
            finding.check,
            finding.verdict.label(),
            finding.detail
        ));
        if let Some(fix) = &finding.fix {
            out.push_str(&format!("{:<width$}        -> {fix}\n", ""));
        }
    }
    let failed = failures(findings);
    let warned = findings
        .iter()
        .filter(|finding| finding.verdict == Verdict::Warn)
        .count();
    out.push_str(&match (failed, warned) {
        (0, 0) => "everything the agent needs is in place".to_string(),
        (0, warned) => format!("{warned} warning(s); nothing that stops the agent"),
        (failed, _) => format!(
            "{failed} check(s) failed: fix what is marked FAIL and run `stratus doctor` again"
        ),
    });
    out
}

/// How many findings fail (the exit code is non-zero when any does).
pub fn failures(findings: &[Finding]) -> usize {
    findings
        .iter()
        .filter(|finding| finding.verdict == Verdict::Fail)
        .count()
}

/// What the Docker daemon said, if it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerFacts {
    /// `--runtime process`: Docker is not asked.
    NotUsed,
    Answered {
        host: String,
        version: String,
        api_version: String,
    },
    Unreachable {
        host: String,
        error: String,
    },
}

/// The oldest Engine API the agent is run against in its tests (Docker 20.10).
const TESTED_API: (u32, u32) = (1, 41);

pub fn docker(runtime: RuntimeChoice, facts: &DockerFacts) -> Finding {
    const CHECK: &str = "docker";
    match facts {
        DockerFacts::NotUsed => Finding::new(
            CHECK,
            Verdict::Ok,
            "not used: --runtime process runs apps as plain processes (no isolation, no \
             limits, no builds)",
        ),
        DockerFacts::Answered {
            host,
            version,
            api_version,
        } => {
            let detail = format!("Docker {version} (API {api_version}) answers at {host}");
            match parse_api_version(api_version) {
                Some(api) if api < TESTED_API => Finding::new(
                    CHECK,
                    Verdict::Warn,
                    format!(
                        "{detail}, older than the API 1.41 (Docker 20.10) Stratus is tested with"
                    ),
                )
                .fix("upgrade Docker Engine to 20.10 or later"),
                _ => Finding::new(CHECK, Verdict::Ok, detail),
            }
        }
        DockerFacts::Unreachable { host, error } => {
            let fix = "start Docker (`systemctl start docker`), check DOCKER_HOST or \
                       --docker-host, and that this user may use the socket (group docker)";
            match runtime {
                RuntimeChoice::Docker => Finding::new(
                    CHECK,
                    Verdict::Fail,
                    format!("no answer at {host}: {error}; --runtime docker needs it"),
                )
                .fix(fix),
                RuntimeChoice::Auto | RuntimeChoice::Process => Finding::new(
                    CHECK,
                    Verdict::Warn,
                    format!(
                        "no answer at {host}: {error}; the agent would fall back to plain \
                         processes (no isolation, no limits, no builds)"
                    ),
                )
                .fix(format!("{fix}; or pass --runtime process to mean it")),
            }
        }
    }
}

fn parse_api_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// What binding the address the agent would bind showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    Free,
    InUse,
    Denied,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFacts {
    /// `api port`, `gossip port`, `ingress port`.
    pub check: &'static str,
    /// The flag that moves it, for the fix.
    pub flag: &'static str,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub bind: BindOutcome,
    /// The node whose agent answered as holding it, if one did.
    pub owner: Option<String>,
}

pub fn port(facts: &PortFacts) -> Finding {
    let PortFacts {
        check,
        flag,
        addr,
        protocol,
        ..
    } = facts;
    let proto = protocol.name();
    match (&facts.bind, &facts.owner) {
        (_, Some(owner)) => Finding::new(
            check,
            Verdict::Ok,
            format!("{addr} ({proto}) is held by this host's agent ({owner})"),
        ),
        (BindOutcome::Free, None) => {
            Finding::new(check, Verdict::Ok, format!("{addr} ({proto}) is free"))
        }
        (BindOutcome::InUse, None) => {
            let ss = match protocol {
                Protocol::Tcp => "ss -ltnp",
                Protocol::Udp => "ss -lunp",
            };
            Finding::new(
                check,
                Verdict::Fail,
                format!("{addr} ({proto}) is taken, and not by an agent that answers here"),
            )
            .fix(format!(
                "find the program with `{ss} 'sport = :{}'` and stop it, or give the agent \
                 another {flag}",
                addr.port()
            ))
        }
        (BindOutcome::Denied, None) => Finding::new(
            check,
            Verdict::Fail,
            format!("may not bind {addr} ({proto}): permission denied"),
        )
        .fix(format!(
            "ports below 1024 need root or CAP_NET_BIND_SERVICE: pick a higher one with {flag}"
        )),
        (BindOutcome::Other(error), None) => Finding::new(
            check,
            Verdict::Fail,
            format!("cannot bind {addr} ({proto}): {error}"),
        )
        .fix(format!(
            "give {flag} an address of this host (0.0.0.0 binds them all)"
        )),
    }
}

/// A query for this node's own name in the agent's DNS zone (`NODE.node.DOMAIN`, A): only
/// a Stratus agent of that node answers it, which is how a taken DNS port is told to be
/// the agent's own.
pub fn dns_probe(node_id: &str, domain: &hickory_proto::rr::Name, id: u16) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let name = Name::from_ascii(format!("{node_id}.node.{domain}")).ok()?;
    let mut query = Message::new();
    query
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(name, RecordType::A));
    query.to_vec().ok()
}

/// Whether `reply` answers [`dns_probe`]'s query `id` with at least one record.
pub fn dns_answered(reply: &[u8], id: u16) -> bool {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    Message::from_vec(reply).is_ok_and(|message| {
        message.id() == id
            && message.message_type() == MessageType::Response
            && message.response_code() == ResponseCode::NoError
            && !message.answers().is_empty()
    })
}

/// Where the cluster key comes from, as the agent's flags resolve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Keys {
        count: usize,
        fingerprint: String,
    },
    /// `--insecure-no-encryption` and no key.
    Insecure,
    Missing,
    /// It could not be read or does not parse.
    Invalid(String),
}

/// Whether the local agent takes node calls signed with that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKeyCheck {
    NotAsked(String),
    Accepted { node_id: String },
    Refused { detail: String },
}

pub fn cluster_key(source: &KeySource, agent: &AgentKeyCheck) -> Finding {
    const CHECK: &str = "cluster key";
    let same_everywhere = "every node must be given the same keys (--cluster-key, \
                           STRATUS_CLUSTER_KEY or --cluster-key-file)";
    let base = match source {
        KeySource::Invalid(error) => {
            return Finding::new(CHECK, Verdict::Fail, error.clone()).fix(format!(
                "make a key with `stratus keygen`; {same_everywhere}"
            ));
        }
        KeySource::Missing => {
            return Finding::new(
                CHECK,
                Verdict::Fail,
                "none given: the agent refuses to start",
            )
            .fix(format!(
                "make one with `stratus keygen`; {same_everywhere}; or pass \
                     --insecure-no-encryption for a throwaway cluster"
            ));
        }
        KeySource::Insecure => Finding::new(
            CHECK,
            Verdict::Warn,
            "none (--insecure-no-encryption): anyone who can send UDP to the gossip port can \
             read the cluster and join it",
        )
        .fix(format!(
            "make a key with `stratus keygen`; {same_everywhere}"
        )),
        KeySource::Keys { count, fingerprint } => Finding::new(
            CHECK,
            Verdict::Ok,
            format!(
                "{count} key(s), sealing with {fingerprint}{}",
                if *count > 1 {
                    " (the others only open)"
                } else {
                    ""
                }
            ),
        ),
    };
    match agent {
        AgentKeyCheck::NotAsked(why) => Finding {
            detail: format!("{}; not compared with an agent: {why}", base.detail),
            ..base
        },
        AgentKeyCheck::Accepted { node_id } => Finding {
            detail: format!(
                "{}; the agent here ({node_id}) takes calls signed with it",
                base.detail
            ),
            ..base
        },
        AgentKeyCheck::Refused { detail } => Finding::new(
            CHECK,
            Verdict::Fail,
            format!("the agent here refuses calls signed with this key: {detail}"),
        )
        .fix(format!(
            "run doctor with the agent's own flags and environment; if they are, {same_everywhere}"
        )),
    }
}

/// One peer's clock against ours: how far its time was from the middle of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// Its clock minus ours, in milliseconds.
    pub offset_ms: i64,
    pub rtt_ms: u64,
}

/// The reading of a call sent at `sent_ms` and answered at `received_ms` (our clock) by a
/// node whose clock said `remote_ms`: it read its clock somewhere in between, taken to be
/// the middle.
pub fn clock_reading(sent_ms: u64, received_ms: u64, remote_ms: u64) -> ClockReading {
    let rtt_ms = received_ms.saturating_sub(sent_ms);
    let middle = i128::from(sent_ms) + i128::from(rtt_ms / 2);
    let offset = i128::from(remote_ms) - middle;
    ClockReading {
        offset_ms: i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX }),
        rtt_ms,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockSample {
    pub node_id: String,
    pub reading: Result<ClockReading, String>,
}

/// Skew past this makes last-writer-wins and event times misleading.
pub const CLOCK_WARN_MS: u64 = 1_000;
/// Skew past this nears the window in which node calls are accepted (30 s): placements,
/// copies and log reads between the nodes start being refused.
pub const CLOCK_FAIL_MS: u64 = 10_000;

/// `peers` is `None` when no agent answered to list them.
pub fn clock(peers: Option<&[ClockSample]>) -> Finding {
    const CHECK: &str = "clock";
    let Some(samples) = peers else {
        return Finding::new(
            CHECK,
            Verdict::Skip,
            "no agent answers here to list the peers whose clocks to compare",
        );
    };
    let readings: Vec<(&str, ClockReading)> = samples
        .iter()
        .filter_map(|sample| Some((sample.node_id.as_str(), *sample.reading.as_ref().ok()?)))
        .collect();
    let unanswered: Vec<String> = samples
        .iter()
        .filter_map(|sample| {
            let error = sample.reading.as_ref().err()?;
            Some(format!("{}: {error}", sample.node_id))
        })
        .collect();
    let unanswered_note = if unanswered.is_empty() {
        String::new()
    } else {
        format!("; no answer from {}", unanswered.join(", "))
    };
    if samples.is_empty() {
        return Finding::new(CHECK, Verdict::Skip, "no live peer to compare clocks with");
    }
    if readings.is_empty() {
        return Finding::new(
            CHECK,
            Verdict::Skip,
            format!("no live peer answered to compare clocks with{unanswered_note}"),
        );
    }
    // The least the skew can be: the peer may have read its clock anywhere in the call.
    let skew = |reading: &ClockReading| {
        reading
            .offset_ms
            .unsigned_abs()
            .saturating_sub(reading.rtt_ms / 2)
    };
    let (worst_node, worst) = readings
        .iter()
        .max_by_key(|(_, reading)| skew(reading))
        .map(|(node, reading)| (*node, *reading))
        .unwrap_or((
            "?",
            ClockReading {
                offset_ms: 0,
                rtt_ms: 0,
            },
        ));
    let worst_skew = skew(&worst);
    let direction = if worst.offset_ms >= 0 {
        "ahead of"
    } else {
        "behind"
    };
    let detail = format!(
        "{} peer(s) compared; the farthest, {worst_node}, is {} ms {direction} this host (±{} ms){unanswered_note}",
        readings.len(),
        worst.offset_ms.unsigned_abs(),
        worst.rtt_ms / 2
    );
    let fix = "run NTP on every host (`timedatectl set-ntp true`, chrony or systemd-timesyncd)";
    if worst_skew >= CLOCK_FAIL_MS {
        Finding::new(CHECK, Verdict::Fail, detail).fix(format!(
            "{fix}: node calls are refused past 30 s of skew, and catalog writes are ordered by these clocks"
        ))
    } else if worst_skew >= CLOCK_WARN_MS {
        Finding::new(CHECK, Verdict::Warn, detail).fix(fix)
    } else {
        Finding::new(CHECK, Verdict::Ok, detail)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    pub data_dir: PathBuf,
    /// The folder measured: the data dir, or its nearest existing parent before the agent
    /// has made it.
    pub measured: PathBuf,
    /// (available to the agent, total) bytes.
    pub space: Result<(u64, u64), String>,
    /// Whether a file could be made in the data dir; `None` when it does not exist yet.
    pub writable: Option<Result<(), String>>,
}

/// Below either, the node soon cannot take a deploy: bundles, unpacked releases, images
/// and build layers all land there or beside it.
pub const DISK_FAIL_BYTES: u64 = 1 << 30;
pub const DISK_WARN_BYTES: u64 = 5 << 30;

pub fn disk(facts: &DiskFacts) -> Finding {
    const CHECK: &str = "disk";
    let dir = facts.data_dir.display();
    if let Some(Err(error)) = &facts.writable {
        return Finding::new(
            CHECK,
            Verdict::Fail,
            format!("cannot write in {dir}: {error}"),
        )
        .fix(format!(
            "give the agent's user the folder (`chown -R USER {dir}`) or point --data-dir elsewhere"
        ));
    }
    let (available, total) = match &facts.space {
        Ok(space) => *space,
        Err(error) => {
            return Finding::new(
                CHECK,
                Verdict::Fail,
                format!("cannot measure {}: {error}", facts.measured.display()),
            )
            .fix("point --data-dir at a folder on a mounted, readable file system");
        }
    };
    let percent = if total == 0 {
        0.0
    } else {
        available as f64 * 100.0 / total as f64
    };
    let not_yet = if facts.writable.is_none() {
        format!(
            " (it does not exist yet: measured {})",
            facts.measured.display()
        )
    } else {
        String::new()
    };
    let detail = format!(
        "{} free of {} ({percent:.0}%) for {dir}{not_yet}",
        gib(available),
        gib(total)
    );
    let fix =
        "free space there (`docker system prune`, old logs) or point --data-dir at a larger disk";
    if available < DISK_FAIL_BYTES || percent < 5.0 {
        Finding::new(CHECK, Verdict::Fail, detail).fix(fix)
    } else if available < DISK_WARN_BYTES || percent < 10.0 {
        Finding::new(CHECK, Verdict::Warn, detail).fix(fix)
    } else {
        Finding::new(CHECK, Verdict::Ok, detail)
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// One `--seeds` entry and the addresses it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFacts {
    pub seed: String,
    pub resolved: Result<Vec<SocketAddr>, String>,
}

/// What was seen of the seeds: through the local agent's gossip when it answers, else by
/// knocking on each seed host's default API port.
#[derive(Debug, Clone, PartialEq)]
pub enum SeedView {
    /// The local agent's node list, with whether each live node's API answered from here
    /// (by node id).
    Gossip {
        nodes: NodesResponse,
        api: std::collections::BTreeMap<String, Result<(), String>>,
    },
    /// No agent answers: TCP to each address's host on the default API port.
    NoAgent {
        api_port: u16,
        tcp: std::collections::BTreeMap<SocketAddr, Result<(), String>>,
    },
}

pub fn seeds(seeds: &[SeedFacts], own_gossip: SocketAddr, view: &SeedView) -> Finding {
    const CHECK: &str = "seeds";
    if seeds.is_empty() {
        return Finding::new(
            CHECK,
            Verdict::Ok,
            "none given: this node starts a cluster, and the others join it with --seeds",
        );
    }
    let mut lines = Vec::new();
    let mut fixes = Vec::new();
    let (mut good, mut bad) = (0, 0);
    for facts in seeds {
        let addrs = match &facts.resolved {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) => {
                bad += 1;
                lines.push(format!("{} resolves to no address", facts.seed));
                fixes.push("check the seed's DNS records, or write ip:port".to_string());
                continue;
            }
            Err(error) => {
                bad += 1;
                lines.push(format!("{} does not resolve: {error}", facts.seed));
                fixes.push("check the seed's DNS records, or write ip:port".to_string());
                continue;
            }
        };
        for addr in addrs {
            let (ok, line, fix) = seed_addr(*addr, own_gossip, view);
            if ok {
                good += 1;
            } else {
                bad += 1;
            }
            lines.push(if facts.seed == addr.to_string() {
                line
            } else {
                format!("{} ({addr}): {line}", facts.seed)
            });
            fixes.extend(fix);
        }
    }
    fixes.dedup();
    let detail = lines.join("; ");
    let fix = (!fixes.is_empty()).then(|| fixes.join("; "));
    let verdict = match (good, bad, view) {
        (_, 0, SeedView::Gossip { .. }) => Verdict::Ok,
        (_, 0, SeedView::NoAgent { .. }) => Verdict::Skip,
        (0, _, _) => Verdict::Fail,
        _ => Verdict::Warn,
    };
    Finding {
        check: CHECK.to_string(),
        verdict,
        detail,
        fix,
    }
}

/// (reachable, what was seen, what to do) for one seed address.
fn seed_addr(
    addr: SocketAddr,
    own_gossip: SocketAddr,
    view: &SeedView,
) -> (bool, String, Option<String>) {
    if addr == own_gossip {
        return (true, format!("{addr} is this node itself"), None);
    }
    let udp_fix = format!(
        "open UDP {} both ways between the hosts (firewall, security group), and give both \
         nodes the same --cluster-id and cluster key",
        addr.port()
    );
    match view {
        SeedView::Gossip { nodes, api } => {
            let Some(node) = nodes
                .nodes
                .iter()
                .find(|node| node.gossip_addr == addr && node.node_id != nodes.self_id)
            else {
                return (
                    false,
                    format!("{addr} is not in this node's gossip: nothing was heard from it"),
                    Some(udp_fix),
                );
            };
            let id = &node.node_id;
            match node.status {
                NodeStatus::Live => match api.get(id) {
                    Some(Err(error)) => (
                        false,
                        format!("{addr} ({id}) is live in gossip, but its API does not answer from here: {error}"),
                        Some(
                            "open the API's TCP port between the nodes: deploys, placements and logs go through it"
                                .to_string(),
                        ),
                    ),
                    Some(Ok(())) => (true, format!("{addr} ({id}) is live, its API answers"), None),
                    None => (true, format!("{addr} ({id}) is live"), None),
                },
                NodeStatus::Joining => (
                    false,
                    format!("{addr} ({id}) is still joining: heard of, not yet heard from"),
                    Some(udp_fix),
                ),
                NodeStatus::Dead => (
                    false,
                    format!("{addr} ({id}) is dead: this node stopped hearing from it"),
                    Some(format!("start its agent again, or {udp_fix}")),
                ),
                NodeStatus::Left => (
                    false,
                    format!("{addr} ({id}) left the cluster"),
                    Some("start its agent again, or seed with a node that runs".to_string()),
                ),
            }
        }
        SeedView::NoAgent { api_port, tcp } => match tcp.get(&addr) {
            Some(Ok(())) => (
                true,
                format!(
                    "{addr}: its host answers TCP on {api_port}, an agent's API port (gossip is \
                     UDP: start the agent here and run doctor again to see it join)"
                ),
                None,
            ),
            Some(Err(error)) => (
                false,
                format!("{addr}: its host does not answer TCP on {api_port} either: {error}"),
                Some(format!("check that the seed's agent runs; {udp_fix}")),
            ),
            None => (true, format!("{addr}: not probed"), None),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto::api::NodeView;

    use super::*;

    #[test]
    fn docker_is_needed_only_when_asked_for() {
        let down = DockerFacts::Unreachable {
            host: "unix:///var/run/docker.sock".into(),
            error: "connection refused".into(),
        };
        let auto = docker(RuntimeChoice::Auto, &down);
        assert_eq!(auto.verdict, Verdict::Warn);
        assert!(auto.fix.unwrap().contains("--runtime process"));
        let required = docker(RuntimeChoice::Docker, &down);
        assert_eq!(required.verdict, Verdict::Fail);
        assert!(required.fix.unwrap().contains("systemctl start docker"));
        assert_eq!(
            docker(RuntimeChoice::Process, &DockerFacts::NotUsed).verdict,
            Verdict::Ok
        );
        let answered = |api: &str| DockerFacts::Answered {
            host: "unix:///var/run/docker.sock".into(),
            version: "28.2.2".into(),
            api_version: api.into(),
        };
        let new = docker(RuntimeChoice::Auto, &answered("1.50"));
        assert_eq!(new.verdict, Verdict::Ok);
        assert!(
            new.detail.contains("Docker 28.2.2 (API 1.50)"),
            "{}",
            new.detail
        );
        assert_eq!(
            docker(RuntimeChoice::Auto, &answered("1.41")).verdict,
            Verdict::Ok
        );
        assert_eq!(
            docker(RuntimeChoice::Auto, &answered("1.40")).verdict,
            Verdict::Warn
        );
    }

    fn port_facts(bind: BindOutcome, owner: Option<&str>) -> PortFacts {
        PortFacts {
            check: "api port",
            flag: "--api-addr",
            addr: "0.0.0.0:7070".parse().unwrap(),
            protocol: Protocol::Tcp,
            bind,
            owner: owner.map(str::to_string),
        }
    }

    #[test]
    fn a_port_is_fine_free_or_held_by_our_agent_and_says_how_to_find_a_squatter() {
        assert_eq!(
            port(&port_facts(BindOutcome::Free, None)).verdict,
            Verdict::Ok
        );
        let ours = port(&port_facts(BindOutcome::InUse, Some("node-a")));
        assert_eq!(ours.verdict, Verdict::Ok);
        assert!(ours.detail.contains("node-a"));
        let taken = port(&port_facts(BindOutcome::InUse, None));
        assert_eq!(taken.verdict, Verdict::Fail);
        assert!(taken.fix.unwrap().contains("ss -ltnp 'sport = :7070'"));
        let denied = port(&port_facts(BindOutcome::Denied, None));
        assert!(denied.fix.unwrap().contains("CAP_NET_BIND_SERVICE"));
        let udp = PortFacts {
            protocol: Protocol::Udp,
            ..port_facts(BindOutcome::InUse, None)
        };
        assert!(port(&udp).fix.unwrap().contains("ss -lunp"));
        assert_eq!(
            port(&port_facts(
                BindOutcome::Other("not an address here".into()),
                None
            ))
            .verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn a_dns_port_is_ours_when_it_answers_this_nodes_own_name() {
        use hickory_proto::op::{Message, MessageType, ResponseCode};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{Name, RData, Record};
        let domain = Name::from_ascii("stratus.").unwrap();
        let probe = dns_probe("web-1", &domain, 4242).unwrap();
        let query = Message::from_vec(&probe).unwrap();
        assert_eq!(query.queries()[0].name().to_ascii(), "web-1.node.stratus.");
        let reply = |code: ResponseCode, answer: bool| {
            let mut reply = query.clone();
            reply
                .set_message_type(MessageType::Response)
                .set_response_code(code);
            if answer {
                reply.add_answer(Record::from_rdata(
                    query.queries()[0].name().clone(),
                    5,
                    RData::A(A::new(127, 0, 0, 1)),
                ));
            }
            reply.to_vec().unwrap()
        };
        assert!(dns_answered(&reply(ResponseCode::NoError, true), 4242));
        assert!(
            !dns_answered(&reply(ResponseCode::NoError, true), 4243),
            "another query's"
        );
        assert!(!dns_answered(&reply(ResponseCode::NXDomain, false), 4242));
        assert!(!dns_answered(&reply(ResponseCode::NoError, false), 4242));
        assert!(!dns_answered(b"not dns", 4242));
        assert_eq!(dns_probe("not a label!", &domain, 1), None);
    }

    #[test]
    fn the_cluster_key_must_exist_parse_and_match_the_agents() {
        let keys = KeySource::Keys {
            count: 1,
            fingerprint: "ab12cd34".into(),
        };
        let accepted = cluster_key(
            &keys,
            &AgentKeyCheck::Accepted {
                node_id: "a".into(),
            },
        );
        assert_eq!(accepted.verdict, Verdict::Ok);
        assert!(accepted.detail.contains("ab12cd34"), "{}", accepted.detail);
        let refused = cluster_key(
            &keys,
            &AgentKeyCheck::Refused {
                detail: "signed with key ab12cd34, which this node does not hold".into(),
            },
        );
        assert_eq!(refused.verdict, Verdict::Fail);
        let alone = cluster_key(&keys, &AgentKeyCheck::NotAsked("no agent answers".into()));
        assert_eq!(alone.verdict, Verdict::Ok);
        let missing = cluster_key(&KeySource::Missing, &AgentKeyCheck::NotAsked(String::new()));
        assert_eq!(missing.verdict, Verdict::Fail);
        assert!(missing.fix.unwrap().contains("stratus keygen"));
        let invalid = cluster_key(
            &KeySource::Invalid("invalid cluster key: not base64".into()),
            &AgentKeyCheck::NotAsked(String::new()),
        );
        assert_eq!(invalid.verdict, Verdict::Fail);
        assert_eq!(
            cluster_key(
                &KeySource::Insecure,
                &AgentKeyCheck::NotAsked(String::new())
            )
            .verdict,
            Verdict::Warn
        );
    }

    #[test]
    fn a_clock_reading_takes_the_middle_of_the_call() {
        assert_eq!(
            clock_reading(1_000, 1_100, 1_050),
            ClockReading {
                offset_ms: 0,
                rtt_ms: 100
            }
        );
        assert_eq!(clock_reading(1_000, 1_100, 13_050).offset_ms, 12_000);
        assert_eq!(clock_reading(10_000, 10_000, 4_000).offset_ms, -6_000);
    }

    #[test]
    fn clock_skew_warns_past_a_second_and_fails_past_ten() {
        let sample = |node: &str, offset_ms, rtt_ms| ClockSample {
            node_id: node.into(),
            reading: Ok(ClockReading { offset_ms, rtt_ms }),
        };
        assert_eq!(clock(None).verdict, Verdict::Skip);
        assert_eq!(clock(Some(&[])).verdict, Verdict::Skip);
        let close = clock(Some(&[sample("b", 12, 4), sample("c", -30, 2)]));
        assert_eq!(close.verdict, Verdict::Ok);
        assert!(
            close.detail.contains("c, is 30 ms behind"),
            "{}",
            close.detail
        );
        // 1.2 s off, but a 1 s round trip leaves only 0.7 s certain.
        assert_eq!(
            clock(Some(&[sample("b", 1_200, 1_000)])).verdict,
            Verdict::Ok
        );
        assert_eq!(
            clock(Some(&[sample("b", 2_500, 10)])).verdict,
            Verdict::Warn
        );
        let far = clock(Some(&[sample("b", 5, 2), sample("c", -45_000, 2)]));
        assert_eq!(far.verdict, Verdict::Fail);
        assert!(far.fix.unwrap().contains("NTP"));
        let silent = clock(Some(&[ClockSample {
            node_id: "b".into(),
            reading: Err("connection refused".into()),
        }]));
        assert_eq!(silent.verdict, Verdict::Skip);
        assert!(silent.detail.contains("b: connection refused"));
    }

    #[test]
    fn disk_space_fails_when_a_deploy_would_not_fit() {
        let facts = |available: u64, total: u64, writable| DiskFacts {
            data_dir: "/var/lib/stratus".into(),
            measured: "/var/lib/stratus".into(),
            space: Ok((available, total)),
            writable,
        };
        assert_eq!(
            disk(&facts(40 << 30, 100 << 30, Some(Ok(())))).verdict,
            Verdict::Ok
        );
        // 4% of a big disk is still room, but the share says it is filling up.
        assert_eq!(
            disk(&facts(40 << 30, 1000 << 30, Some(Ok(())))).verdict,
            Verdict::Fail
        );
        assert_eq!(
            disk(&facts(3 << 30, 40 << 30, Some(Ok(())))).verdict,
            Verdict::Warn
        );
        assert_eq!(
            disk(&facts(8 << 30, 100 << 30, Some(Ok(())))).verdict,
            Verdict::Warn
        );
        assert_eq!(
            disk(&facts(500 << 20, 100 << 30, Some(Ok(())))).verdict,
            Verdict::Fail
        );
        let unwritable = disk(&facts(
            40 << 30,
            100 << 30,
            Some(Err("permission denied".into())),
        ));
        assert_eq!(unwritable.verdict, Verdict::Fail);
        assert!(unwritable.fix.unwrap().contains("chown"));
        let fresh = disk(&DiskFacts {
            measured: "/var/lib".into(),
            ..facts(40 << 30, 100 << 30, None)
        });
        assert_eq!(fresh.verdict, Verdict::Ok);
        assert!(
            fresh.detail.contains("does not exist yet"),
            "{}",
            fresh.detail
        );
    }

    fn node(id: &str, gossip: &str, status: NodeStatus) -> NodeView {
        NodeView {
            node_id: id.into(),
            generation: 1,
            gossip_addr: gossip.parse().unwrap(),
            status,
            identity: None,
            load: None,
            containers: 0,
            draining: false,
        }
    }

    #[test]
    fn seeds_are_judged_by_what_gossip_heard_of_them() {
        let own: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let seed = |text: &str| SeedFacts {
            seed: text.into(),
            resolved: Ok(vec![text.parse().unwrap()]),
        };
        let view = |api: BTreeMap<String, Result<(), String>>| SeedView::Gossip {
            nodes: NodesResponse {
                self_id: "a".into(),
                nodes: vec![
                    node("a", "10.0.0.1:7946", NodeStatus::Live),
                    node("b", "10.0.0.2:7946", NodeStatus::Live),
                    node("c", "10.0.0.3:7946", NodeStatus::Dead),
                ],
            },
            api,
        };
        let live = view(BTreeMap::from([("b".to_string(), Ok(()))]));
        let finding = seeds(&[seed("10.0.0.2:7946"), seed("10.0.0.1:7946")], own, &live);
        assert_eq!(finding.verdict, Verdict::Ok, "{finding:?}");
        assert!(finding.detail.contains("(b) is live, its API answers"));
        assert!(finding.detail.contains("this node itself"));

        let some = seeds(&[seed("10.0.0.2:7946"), seed("10.0.0.3:7946")], own, &live);
        assert_eq!(some.verdict, Verdict::Warn);
        assert!(some.detail.contains("(c) is dead"));

        let none = seeds(&[seed("10.0.0.9:7946")], own, &live);
        assert_eq!(none.verdict, Verdict::Fail);
        assert!(none.fix.unwrap().contains("open UDP 7946"));

        let api_closed = view(BTreeMap::from([("b".to_string(), Err("timed out".into()))]));
        let closed = seeds(&[seed("10.0.0.2:7946")], own, &api_closed);
        assert_eq!(closed.verdict, Verdict::Fail);
        assert!(closed.fix.unwrap().contains("TCP port"));

        let unresolved = seeds(
            &[SeedFacts {
                seed: "seed.example:7946".into(),
                resolved: Err("no record".into()),
            }],
            own,
            &live,
        );
        assert_eq!(unresolved.verdict, Verdict::Fail);
        assert!(unresolved.fix.unwrap().contains("DNS"));

        assert_eq!(seeds(&[], own, &live).verdict, Verdict::Ok);
    }

    #[test]
    fn without_an_agent_seeds_are_knocked_on_over_tcp() {
        let own: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let addr: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let seed = SeedFacts {
            seed: addr.to_string(),
            resolved: Ok(vec![addr]),
        };
        let view = |tcp: Result<(), String>| SeedView::NoAgent {
            api_port: 7070,
            tcp: BTreeMap::from([(addr, tcp)]),
        };
        let open = seeds(std::slice::from_ref(&seed), own, &view(Ok(())));
        assert_eq!(open.verdict, Verdict::Skip);
        assert!(open.detail.contains("answers TCP on 7070"));
        let closed = seeds(&[seed], own, &view(Err("connection refused".into())));
        assert_eq!(closed.verdict, Verdict::Fail);
    }

    #[test]
    fn the_report_lists_every_check_with_its_fix_and_counts_failures() {
        let findings = vec![
            Finding::new("docker", Verdict::Ok, "Docker 28 answers"),
            Finding::new("api port", Verdict::Fail, "0.0.0.0:7070 (TCP) is taken").fix("stop it"),
        ];
        let text = report(&findings);
        assert!(text.contains("docker    ok    Docker 28 answers"), "{text}");
        assert!(text.contains("api port  FAIL  0.0.0.0:7070"), "{text}");
        assert!(text.contains("-> stop it"), "{text}");
        assert!(text.contains("1 check(s) failed"), "{text}");
        assert_eq!(failures(&findings), 1);
        assert!(report(&findings[..1]).contains("everything the agent needs"));
    }
}
