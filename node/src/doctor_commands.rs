//! `stratus doctor`: gathers what the checks of `node::cli::doctor` judge. It reads the
//! agent's own flags, `STRATUS_*` variables and config file, binds the ports the agent
//! would bind, asks Docker, the local agent (if one answers) and its live peers, and
//! measures the data directory. Nothing here decides anything.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use node::cli::doctor::{
    self, AgentKeyCheck, BindOutcome, ClockSample, DiskFacts, DockerFacts, Finding, KeySource,
    PortFacts, Protocol, SeedFacts, SeedView, Verdict,
};
use node::cluster::seal::ClusterKey;
use node::config::{AgentArgs, AgentConfig, ConfigError, DEFAULT_API_PORT, RuntimeChoice};
use node::control::hlc::unix_ms;
use proto::api::{HealthResponse, NodeStatus, NodesResponse};
use rand::SeedableRng as _;

#[derive(Args)]
pub struct DoctorArgs {
    /// The local agent's API, when it is not at the advertised --api-addr
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// The findings as JSON
    #[arg(long)]
    json: bool,
    /// The agent's flags (and their STRATUS_* variables and --config file): doctor checks
    /// what the agent would use
    #[command(flatten)]
    agent: AgentArgs,
}

/// A question to Docker, the agent or a peer that has not answered by then has failed.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// True when no check failed.
pub async fn doctor(args: DoctorArgs) -> anyhow::Result<bool> {
    let (config, key_source) = match resolve(&args.agent) {
        Ok(resolved) => resolved,
        Err(error) => {
            let finding = Finding {
                check: "config".into(),
                verdict: Verdict::Fail,
                detail: error.to_string(),
                fix: Some(
                    "fix the flag, STRATUS_* variable or --config entry it names; the other \
                     checks need it"
                        .into(),
                ),
            };
            show(&[finding], args.json)?;
            return Ok(false);
        }
    };
    let http = match &config.api_tls_ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|err| {
                anyhow::anyhow!("cannot read --api-tls-ca {}: {err}", path.display())
            })?;
            api::client::http_client(Some((&path.display().to_string(), &pem)))?
        }
        None => api::client::http_client(None)?,
    };
    let scheme = if config.api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let advertised = format!("{scheme}://{}", config.advertised_api_addr());
    let agent_url = args.api.clone().unwrap_or(advertised);
    let agent = api::Client::with_http(&agent_url, http.clone())?;

    let (health, nodes, docker) = tokio::join!(
        ask(agent.health()),
        ask(agent.nodes()),
        docker_facts(&config)
    );
    let agent_id = health.as_ref().ok().map(|health| health.node_id.clone());
    let nodes = nodes.ok().filter(|_| agent_id.is_some());

    let dns_answered = match (&config.dns, &agent_id) {
        (Some(dns), Some(agent_id)) => dns_answers(dns, agent_id).await,
        _ => false,
    };
    let mut findings = vec![doctor::docker(config.runtime, &docker)];
    findings.extend(
        ports(
            &config,
            &agent_url,
            agent_id.as_deref(),
            nodes.as_ref(),
            dns_answered,
        )
        .iter()
        .map(doctor::port),
    );

    let key_check = match &health {
        Err(why) => AgentKeyCheck::NotAsked(format!("no agent answers at {agent_url} ({why})")),
        Ok(health) => key_check(&config, &agent_url, http.clone(), health).await,
    };
    findings.push(doctor::cluster_key(&key_source, &key_check));

    let peers = match &nodes {
        Some(nodes) => Some(clock_samples(nodes, &http).await),
        None => None,
    };
    findings.push(doctor::clock(peers.as_deref()));
    findings.push(doctor::disk(&disk_facts(&config.data_dir)));

    let seeds = seed_facts(&config).await;
    let view = match (nodes, &peers) {
        (Some(nodes), Some(peers)) => SeedView::Gossip {
            nodes,
            api: peers
                .iter()
                .map(|sample| {
                    let answered = sample.reading.as_ref().map(|_| ()).map_err(String::clone);
                    (sample.node_id.clone(), answered)
                })
                .collect(),
        },
        _ => SeedView::NoAgent {
            api_port: DEFAULT_API_PORT,
            tcp: knock(&seeds).await,
        },
    };
    findings.push(doctor::seeds(&seeds, config.advertise_addr, &view));
    show(&findings, args.json)?;
    Ok(doctor::failures(&findings) == 0)
}

fn show(findings: &[Finding], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(findings)?);
    } else {
        println!("{}", doctor::report(findings));
    }
    Ok(())
}

/// The agent's settings, and where its cluster key stands. A missing or broken key must
/// not hide every other check: the rest is resolved again with a stand-in key.
fn resolve(args: &AgentArgs) -> Result<(AgentConfig, KeySource), ConfigError> {
    match AgentConfig::resolve(args.clone()) {
        Ok(config) => {
            let source = match &config.keyring {
                Some(keyring) => KeySource::Keys {
                    count: keyring.mac_keys().len(),
                    fingerprint: keyring.primary().fingerprint(),
                },
                None => KeySource::Insecure,
            };
            Ok((config, source))
        }
        Err(
            error @ (ConfigError::Key(_)
            | ConfigError::MissingKey
            | ConfigError::ReadKeyFile { .. }),
        ) => {
            let source = match error {
                ConfigError::MissingKey => KeySource::Missing,
                error => KeySource::Invalid(error.to_string()),
            };
            let mut rest = args.clone();
            rest.cluster_key = Some(vec![ClusterKey::generate(
                &mut rand::rngs::StdRng::from_os_rng(),
            )]);
            rest.cluster_key_file = None;
            Ok((AgentConfig::resolve(rest)?, source))
        }
        Err(error) => Err(error),
    }
}

/// `call`'s answer within [`ASK_TIMEOUT`], or why not.
async fn ask<T>(call: impl Future<Output = Result<T, api::ClientError>>) -> Result<T, String> {
    match tokio::time::timeout(ASK_TIMEOUT, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
    }
}

async fn docker_facts(config: &AgentConfig) -> DockerFacts {
    if config.runtime == RuntimeChoice::Process {
        return DockerFacts::NotUsed;
    }
    let host = config
        .docker_host
        .clone()
        .or_else(|| {
            std::env::var("DOCKER_HOST")
                .ok()
                .filter(|host| !host.is_empty())
        })
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    let unreachable = |error: String| DockerFacts::Unreachable {
        host: host.clone(),
        error,
    };
    let docker = match &config.docker_host {
        Some(host) => bollard::Docker::connect_with_host(host),
        None => bollard::Docker::connect_with_local_defaults(),
    };
    let docker = match docker {
        Ok(docker) => docker,
        Err(err) => return unreachable(err.to_string()),
    };
    let asked = tokio::time::timeout(ASK_TIMEOUT, async {
        // As the agent does: bollard speaks a newer API than many daemons accept.
        let docker = docker.negotiate_version().await?;
        docker.version().await
    })
    .await;
    match asked {
        Ok(Ok(version)) => DockerFacts::Answered {
            host: host.clone(),
            version: version.version.unwrap_or_else(|| "?".into()),
            api_version: version.api_version.unwrap_or_else(|| "?".into()),
        },
        Ok(Err(err)) => unreachable(err.to_string()),
        Err(_) => unreachable(format!("no answer within {ASK_TIMEOUT:?}")),
    }
}

/// The API, gossip, ingress and DNS addresses, each bound for a moment. A taken one is
/// "ours" when the agent answering here says it holds it (for DNS: answers its own name
/// there, `dns_answered`).
fn ports(
    config: &AgentConfig,
    agent_url: &str,
    agent_id: Option<&str>,
    nodes: Option<&NodesResponse>,
    dns_answered: bool,
) -> Vec<PortFacts> {
    let own = nodes.and_then(|nodes| {
        nodes
            .nodes
            .iter()
            .find(|node| node.node_id == nodes.self_id)
    });
    let agent_port = url::Url::parse(agent_url)
        .ok()
        .and_then(|url| url.port_or_known_default());
    let mut wanted = vec![
        (
            "api port",
            "--api-addr",
            config.api_addr,
            Protocol::Tcp,
            agent_port == Some(config.api_addr.port()),
        ),
        (
            "gossip port",
            "--gossip-addr",
            config.gossip_addr,
            Protocol::Udp,
            own.is_some_and(|node| node.gossip_addr.port() == config.gossip_addr.port()),
        ),
    ];
    if let Some(ingress) = config.ingress_addr {
        let held = own
            .and_then(|node| node.identity.as_ref())
            .and_then(|identity| identity.ingress_addr)
            .is_some_and(|addr| addr.port() == ingress.port());
        wanted.push((
            "ingress port",
            "--ingress-addr",
            ingress,
            Protocol::Tcp,
            held,
        ));
    }
    if let Some(dns) = &config.dns {
        // The agent's DNS server binds both.
        wanted.push((
            "dns udp port",
            "--dns-addr",
            dns.addr,
            Protocol::Udp,
            dns_answered,
        ));
        wanted.push((
            "dns tcp port",
            "--dns-addr",
            dns.addr,
            Protocol::Tcp,
            dns_answered,
        ));
    }
    wanted
        .into_iter()
        .map(|(check, flag, addr, protocol, held)| {
            let bind = bind(addr, protocol);
            let owner = (bind == BindOutcome::InUse && held)
                .then(|| agent_id.map(str::to_string))
                .flatten();
            PortFacts {
                check,
                flag,
                addr,
                protocol,
                bind,
                owner,
            }
        })
        .collect()
}

/// Whether the DNS server at `--dns-addr` answers this node's own name, over UDP.
async fn dns_answers(dns: &node::config::DnsConfig, node_id: &str) -> bool {
    let id = rand::random::<u16>();
    let Some(query) = doctor::dns_probe(node_id, &dns.zone.domain, id) else {
        return false;
    };
    let target = match dns.addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, dns.addr.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, dns.addr.port()))
        }
        _ => dns.addr,
    };
    let local: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let asked = tokio::time::timeout(Duration::from_secs(2), async {
        let socket = tokio::net::UdpSocket::bind(local).await?;
        socket.send_to(&query, target).await?;
        let mut reply = vec![0u8; 4096];
        let (len, _) = socket.recv_from(&mut reply).await?;
        reply.truncate(len);
        Ok::<_, std::io::Error>(reply)
    })
    .await;
    matches!(asked, Ok(Ok(reply)) if doctor::dns_answered(&reply, id))
}

fn bind(addr: SocketAddr, protocol: Protocol) -> BindOutcome {
    let bound = match protocol {
        Protocol::Tcp => std::net::TcpListener::bind(addr).map(drop),
        Protocol::Udp => std::net::UdpSocket::bind(addr).map(drop),
    };
    match bound {
        Ok(()) => BindOutcome::Free,
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => BindOutcome::InUse,
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => BindOutcome::Denied,
        Err(err) => BindOutcome::Other(err.to_string()),
    }
}

/// A node call signed with the configured key. The agent takes node calls only at the
/// addresses it is known by (a call addressed elsewhere is refused whatever its key): the
/// advertised one, unless `--api` names another.
async fn key_check(
    config: &AgentConfig,
    agent_url: &str,
    http: reqwest::Client,
    health: &HealthResponse,
) -> AgentKeyCheck {
    let signer = node::cluster::peers::signer(config.keyring.as_ref(), &config.cluster_id);
    let client = match api::Client::with_http(agent_url, http) {
        Ok(client) => client.with_signer(signer),
        Err(err) => return AgentKeyCheck::NotAsked(err.to_string()),
    };
    let recent = api::AuditQuery {
        tenant: None,
        since_ms: Some(unix_ms()),
    };
    match tokio::time::timeout(ASK_TIMEOUT, client.audit(&recent)).await {
        Ok(Ok(_)) => AgentKeyCheck::Accepted {
            node_id: health.node_id.clone(),
        },
        Ok(Err(err)) if err.status() == Some(401) => {
            let detail = err.detail().unwrap_or_else(|| err.to_string());
            if detail.contains("which is not this node") {
                AgentKeyCheck::NotAsked(format!(
                    "the agent is not known at {agent_url}, where doctor called it: {detail}"
                ))
            } else {
                AgentKeyCheck::Refused { detail }
            }
        }
        Ok(Err(err)) => AgentKeyCheck::NotAsked(err.to_string()),
        Err(_) => AgentKeyCheck::NotAsked(format!("no answer within {ASK_TIMEOUT:?}")),
    }
}

/// Each live peer's clock, read through its health answer.
async fn clock_samples(nodes: &NodesResponse, http: &reqwest::Client) -> Vec<ClockSample> {
    let peers = nodes
        .nodes
        .iter()
        .filter(|node| node.node_id != nodes.self_id && node.status == NodeStatus::Live);
    let samples = peers.map(|node| async move {
        let reading = match &node.identity {
            None => Err("its API address has not reached this node yet".to_string()),
            Some(identity) => {
                let scheme = if identity.api_tls { "https" } else { "http" };
                match api::Client::with_http(
                    &format!("{scheme}://{}", identity.api_addr),
                    http.clone(),
                ) {
                    Err(err) => Err(err.to_string()),
                    Ok(client) => {
                        let sent = unix_ms();
                        let health = ask(client.health()).await;
                        let received = unix_ms();
                        health.and_then(|health| match health.time_ms {
                            Some(remote) => Ok(doctor::clock_reading(sent, received, remote)),
                            None => {
                                Err("its agent is older and does not tell its time: upgrade it"
                                    .to_string())
                            }
                        })
                    }
                }
            }
        };
        ClockSample {
            node_id: node.node_id.clone(),
            reading,
        }
    });
    futures_util::future::join_all(samples).await
}

fn disk_facts(data_dir: &Path) -> DiskFacts {
    let exists = data_dir.is_dir();
    let measured = nearest_existing(data_dir);
    let space = nix::sys::statvfs::statvfs(&measured)
        .map(|stats| {
            let unit = stats.fragment_size();
            (
                stats.blocks_available().saturating_mul(unit),
                stats.blocks().saturating_mul(unit),
            )
        })
        .map_err(|err| err.to_string());
    let writable = exists.then(|| {
        tempfile::tempfile_in(data_dir)
            .map(drop)
            .map_err(|err| err.to_string())
    });
    DiskFacts {
        data_dir: data_dir.to_path_buf(),
        measured,
        space,
        writable,
    }
}

/// `path`, or the closest of its parents that exists (`.` for a relative path none of
/// whose parents does).
fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|dir| !dir.as_os_str().is_empty() && dir.is_dir())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

async fn seed_facts(config: &AgentConfig) -> Vec<SeedFacts> {
    let resolver = node::cluster::seeds::SeedResolver::from_system();
    let mut facts = Vec::new();
    for seed in &config.seeds {
        let resolved =
            tokio::time::timeout(ASK_TIMEOUT, resolver.resolve(std::slice::from_ref(seed)))
                .await
                .map(|addrs| addrs.into_iter().collect())
                .map_err(|_| format!("no answer from DNS within {ASK_TIMEOUT:?}"));
        facts.push(SeedFacts {
            seed: seed.to_string(),
            resolved,
        });
    }
    facts
}

/// With no agent to show gossip: whether each seed's host takes TCP on the API's default
/// port, the nearest sign that an agent runs there.
async fn knock(seeds: &[SeedFacts]) -> BTreeMap<SocketAddr, Result<(), String>> {
    let addrs: Vec<SocketAddr> = seeds
        .iter()
        .filter_map(|seed| seed.resolved.as_ref().ok())
        .flatten()
        .copied()
        .collect();
    let knocks = addrs.into_iter().map(|addr| async move {
        let target = SocketAddr::new(addr.ip(), DEFAULT_API_PORT);
        let answered = match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(target),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("no answer within 2 s".to_string()),
        };
        (addr, answered)
    });
    futures_util::future::join_all(knocks)
        .await
        .into_iter()
        .collect()
}
