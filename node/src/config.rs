//! `stratus agent` configuration: flags, `STRATUS_*` environment variables and an optional
//! TOML file, merged in that order of precedence over built-in defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::build::image_pull::ImagePull;
use crate::build::recipe::BaseImages;
use crate::bundle::{S3Config, S3Error};
use crate::cluster::seal::{KeyError, Keyring};
use crate::cluster::seeds::{Seed, SeedError};
use crate::workload::runtime::tenant_network::InternalPorts;

/// Version of the `stratus` binary, as every node publishes it and `/v1/health` reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
pub const DEFAULT_API_PORT: u16 = 7070;
/// Measured with `testbed bench detect --busy`: 300 ms with phi 8 declares a killed node
/// dead on every peer in under 3 s with no false deaths on a busy 2-core machine.
pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 300;

/// Flags of `stratus agent`. Every one is optional here so that a flag left out can fall
/// back to the file, then to the default.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct AgentArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g. `node_id = "a"`)
    #[arg(long, env = "STRATUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Unique name of this node [default: the hostname]
    #[arg(long, env = "STRATUS_NODE_ID")]
    pub node_id: Option<String>,
    /// UDP address to bind for gossip [default: 0.0.0.0:7946]
    #[arg(long, env = "STRATUS_GOSSIP_ADDR")]
    pub gossip_addr: Option<SocketAddr>,
    /// Gossip address peers dial: ip:port or just ip [default: the bind address, or the
    /// hostname's address when binding 0.0.0.0]
    #[arg(long, env = "STRATUS_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// TCP address of the HTTP API [default: 0.0.0.0:7070]
    #[arg(long, env = "STRATUS_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Comma-separated seeds: ip:port, host:port (all A/AAAA records) or _svc._udp.domain (SRV)
    #[arg(long, env = "STRATUS_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Where the node keeps its state [default: ./stratus-data]
    #[arg(long, env = "STRATUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cluster keys, comma-separated base64 (from `stratus keygen`); the first seals, all open
    #[arg(
        long,
        env = "STRATUS_CLUSTER_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub cluster_key: Option<Vec<String>>,
    /// File holding the cluster keys, one per line, primary first
    #[arg(long, env = "STRATUS_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Run gossip unencrypted and unauthenticated: anyone who can send UDP can join
    #[arg(long, env = "STRATUS_INSECURE_NO_ENCRYPTION")]
    pub insecure_no_encryption: bool,
    /// Node labels, comma-separated k=v
    #[arg(long, env = "STRATUS_LABELS", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Name of the cluster; nodes of other clusters are refused [default: stratus]
    #[arg(long, env = "STRATUS_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Milliseconds between gossip rounds [default: 300]
    #[arg(long, env = "STRATUS_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// Phi-accrual threshold for declaring a silent peer dead [default: 8]
    #[arg(long, env = "STRATUS_PHI_THRESHOLD")]
    pub phi_threshold: Option<f64>,
    /// Milliseconds a replica lost with its node (dead or cut off) waits before it is
    /// placed elsewhere, so a node that misses a few heartbeats is not emptied [default: 3000]
    #[arg(long, env = "STRATUS_RESCHEDULE_GRACE_MS")]
    pub reschedule_grace_ms: Option<u64>,
    /// Seconds between load samples [default: 5]
    #[arg(long, env = "STRATUS_LOAD_INTERVAL_SECS")]
    pub load_interval_secs: Option<u64>,
    /// Bearer token developers must present to the app endpoints (none: they refuse all)
    #[arg(long, env = "STRATUS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Largest bundle upload accepted, in bytes [default: 268435456 (256 MiB)]
    #[arg(long, env = "STRATUS_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Serve the API over HTTPS with this PEM certificate chain (with --api-tls-key)
    #[arg(long, env = "STRATUS_API_TLS_CERT")]
    pub api_tls_cert: Option<PathBuf>,
    /// The PEM private key of --api-tls-cert
    #[arg(long, env = "STRATUS_API_TLS_KEY")]
    pub api_tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that peers' API certificates are checked against (calls to
    /// peers that serve TLS) [default: the web's roots only]
    #[arg(long, env = "STRATUS_API_TLS_CA")]
    pub api_tls_ca: Option<PathBuf>,
    /// Requests per second per token (or per address without one) on the user API; 0: no limit [default: 50]
    #[arg(long, env = "STRATUS_API_RATE_LIMIT")]
    pub api_rate_limit: Option<u32>,
    /// Requests a token may make at once above --api-rate-limit [default: twice the limit]
    #[arg(long, env = "STRATUS_API_RATE_BURST")]
    pub api_rate_burst: Option<u32>,
    /// Open API connections per client address; more are closed at once [default: 256]
    #[arg(long, env = "STRATUS_API_MAX_CONNECTIONS_PER_IP")]
    pub api_max_connections_per_ip: Option<usize>,
    /// How containers run: docker, process, or auto (docker when its socket answers) [default: auto]
    #[arg(long, env = "STRATUS_RUNTIME")]
    pub runtime: Option<String>,
    /// Attach containers to this Docker network and gossip their network IP (compose clusters)
    #[arg(long, env = "STRATUS_DOCKER_NETWORK")]
    pub docker_network: Option<String>,
    /// OCI runtime for containers, e.g. runsc for gVisor [default: Docker's default]
    #[arg(long, env = "STRATUS_OCI_RUNTIME")]
    pub oci_runtime: Option<String>,
    /// The Docker daemon to use, e.g. unix:///run/other/docker.sock [default: DOCKER_HOST or the local socket]
    #[arg(long, env = "STRATUS_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Longest a build may take before it is stopped and reported [default: 15m]
    #[arg(long, env = "STRATUS_BUILD_TIMEOUT")]
    pub build_timeout: Option<String>,
    /// Map a runtime to a base image, RUNTIME=IMAGE, e.g. python-3.11=python:3.11-slim;
    /// repeat the flag (or separate by commas) for more [default: the stratus/* images scripts/build-images.sh builds]
    #[arg(long, env = "STRATUS_BASE_IMAGE", value_delimiter = ',')]
    pub base_image: Option<Vec<String>>,
    /// When to pull an image an app names: never, if-missing (after looking in the cluster) or always [default: if-missing]
    #[arg(long, env = "STRATUS_IMAGE_PULL")]
    pub image_pull: Option<String>,
    /// Built images kept per app: older releases' images are removed from this node [default: 5]
    #[arg(long, env = "STRATUS_KEEP_RELEASES")]
    pub keep_releases: Option<usize>,
    /// Room for dependency images on this node (e.g. 10GiB): those no kept release uses go
    /// first, then the oldest [default: 10GiB]
    #[arg(long, env = "STRATUS_BUILD_CACHE_SIZE")]
    pub build_cache_size: Option<String>,
    /// Image for apps whose manifest names none [default: stratus/busybox:latest]
    #[arg(long, env = "STRATUS_DEFAULT_IMAGE")]
    pub default_image: Option<String>,
    /// Where bundles live: `local` (on the nodes, copied to 3) or `s3://bucket[/prefix]` [default: local]
    #[arg(long, env = "STRATUS_STORE")]
    pub store: Option<String>,
    /// S3 endpoint URL, e.g. http://minio:9000 (path-style addressing)
    #[arg(long, env = "STRATUS_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: us-east-1]
    #[arg(long, env = "STRATUS_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 access key
    #[arg(long, env = "STRATUS_S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: Option<String>,
    /// S3 secret key
    #[arg(long, env = "STRATUS_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// Also serve public HTTP traffic for every app here (the embedded ingress), e.g. 0.0.0.0:8080
    #[arg(long, env = "STRATUS_INGRESS_ADDR")]
    pub ingress_addr: Option<SocketAddr>,
    /// Apps answer at APP.<base domain> on the ingress [default: localhost]
    #[arg(long, env = "STRATUS_BASE_DOMAIN")]
    pub base_domain: Option<String>,
    /// The ingress's admin port, serving /metrics (Prometheus text format), e.g. 127.0.0.1:9090
    #[arg(long, env = "STRATUS_INGRESS_ADMIN_ADDR")]
    pub ingress_admin_addr: Option<SocketAddr>,
    /// Also serve HTTPS on this address (needs --ingress-tls-cert), e.g. 0.0.0.0:8443
    #[arg(long, env = "STRATUS_INGRESS_TLS_ADDR")]
    pub ingress_tls_addr: Option<SocketAddr>,
    /// A certificate for HTTPS, DOMAIN=CERT.pem:KEY.pem (PEM files; DOMAIN may be *.example.com);
    /// repeat the flag (or separate by commas) for more domains; the first is the default
    #[arg(long, env = "STRATUS_INGRESS_TLS_CERT", value_delimiter = ',')]
    pub ingress_tls_cert: Option<Vec<String>>,
    /// Largest request body the ingress passes on, in bytes; larger ones get 413 [default: 10485760 (10 MiB)]
    #[arg(long, env = "STRATUS_INGRESS_MAX_BODY_BYTES")]
    pub ingress_max_body_bytes: Option<u64>,
    /// Join and gossip, but never run app replicas here (e.g. a dedicated ingress host)
    #[arg(long, env = "STRATUS_NO_WORKLOADS")]
    pub no_workloads: bool,
    /// Host ports published for containers, as FIRST-LAST [default: 20000-29999]
    #[arg(long, env = "STRATUS_PORT_RANGE")]
    pub port_range: Option<String>,
    /// Answer DNS (UDP and TCP) for apps and nodes here, from this node's view, e.g.
    /// 127.0.0.1:8600 [default: off]
    #[arg(long, env = "STRATUS_DNS_ADDR")]
    pub dns_addr: Option<SocketAddr>,
    /// The DNS domain apps and nodes are named under (APP.service.DOMAIN) [default: stratus]
    #[arg(long, env = "STRATUS_DNS_DOMAIN")]
    pub dns_domain: Option<String>,
    /// TTL of every DNS answer, 0s to 5s [default: 0s: every lookup sees the current view]
    #[arg(long, env = "STRATUS_DNS_TTL")]
    pub dns_ttl: Option<String>,
    /// Forward questions for names outside the domain to this server (ip:port); without
    /// it they are refused [default: none]
    #[arg(long, env = "STRATUS_DNS_RECURSOR")]
    pub dns_recursor: Option<SocketAddr>,
    /// Let tenants' containers call each other's apps as http://APP.internal/: a
    /// balancer for them on this TCP port and a DNS server for them on the next one (UDP
    /// and TCP), which their network's ports 80 and 53 lead to. Both bind every address:
    /// take ports below the ephemeral range (32768 and up on Linux), which outgoing
    /// connections may hold. Needs --dns-addr, Docker and nftables [default: off]
    #[arg(long, env = "STRATUS_INTERNAL_PORT")]
    pub internal_port: Option<u16>,
}

/// The same settings, as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    gossip_addr: Option<SocketAddr>,
    advertise_addr: Option<String>,
    api_addr: Option<SocketAddr>,
    seeds: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    cluster_key: Option<Vec<String>>,
    cluster_key_file: Option<PathBuf>,
    insecure_no_encryption: Option<bool>,
    labels: Option<BTreeMap<String, String>>,
    cluster_id: Option<String>,
    gossip_interval_ms: Option<u64>,
    phi_threshold: Option<f64>,
    reschedule_grace_ms: Option<u64>,
    load_interval_secs: Option<u64>,
    api_token: Option<String>,
    max_upload_bytes: Option<u64>,
    api_tls_cert: Option<PathBuf>,
    api_tls_key: Option<PathBuf>,
    api_tls_ca: Option<PathBuf>,
    api_rate_limit: Option<u32>,
    api_rate_burst: Option<u32>,
    api_max_connections_per_ip: Option<usize>,
    runtime: Option<String>,
    docker_network: Option<String>,
    oci_runtime: Option<String>,
    default_image: Option<String>,
    docker_host: Option<String>,
    build_timeout: Option<String>,
    base_image: Option<Vec<String>>,
    image_pull: Option<String>,
    keep_releases: Option<usize>,
    build_cache_size: Option<String>,
    port_range: Option<String>,
    no_workloads: Option<bool>,
    ingress_addr: Option<SocketAddr>,
    base_domain: Option<String>,
    ingress_admin_addr: Option<SocketAddr>,
    ingress_tls_addr: Option<SocketAddr>,
    ingress_tls_cert: Option<Vec<String>>,
    ingress_max_body_bytes: Option<u64>,
    store: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_access_key: Option<String>,
    s3_secret_key: Option<String>,
    dns_addr: Option<SocketAddr>,
    dns_domain: Option<String>,
    dns_ttl: Option<String>,
    dns_recursor: Option<SocketAddr>,
    internal_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("cannot read cluster key file {path}: {source}")]
    ReadKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cluster key: {0}")]
    Key(#[from] KeyError),
    #[error(
        "no cluster key: gossip would be readable and writable by anyone on the network. \
         Create a key with `stratus keygen` and pass it to every node with --cluster-key \
         or --cluster-key-file, or pass --insecure-no-encryption to run without one"
    )]
    MissingKey,
    #[error("invalid seed: {0}")]
    Seed(#[from] SeedError),
    #[error("invalid label {0:?}: write key=value")]
    Label(String),
    #[error("invalid advertise address {0:?}: write ip or ip:port")]
    Advertise(String),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("invalid runtime {0:?}: use docker, process or auto")]
    Runtime(String),
    #[error("invalid port range {0:?}: write FIRST-LAST, e.g. 20000-29999")]
    PortRange(String),
    #[error("invalid S3 store: {0}")]
    Store(#[from] S3Error),
    #[error("{0} is set but --store is not an s3:// URL: add --store s3://bucket or drop it")]
    S3WithoutStore(&'static str),
    #[error("{0}")]
    IngressTls(&'static str),
    #[error("{0}")]
    ApiTls(&'static str),
    #[error("invalid --build-timeout: {0}")]
    BuildTimeout(String),
    #[error("{0}")]
    BaseImage(String),
    #[error("invalid --image-pull {0:?}: use never, if-missing or always")]
    ImagePull(String),
    #[error("invalid --build-cache-size {0:?}: write a size such as 10GiB or 500MB")]
    BuildCacheSize(String),
    #[error("invalid DNS setting: {0}")]
    Dns(String),
    #[error("--{0} is set but not --dns-addr: say where to answer DNS")]
    DnsWithoutAddr(&'static str),
    #[error("invalid --internal-port: {0}")]
    InternalPort(String),
}

/// The DNS settings, or `None` without `--dns-addr` (the others need it).
fn resolve_dns(
    addr: Option<SocketAddr>,
    domain: Option<String>,
    ttl: Option<String>,
    recursor: Option<SocketAddr>,
) -> Result<Option<DnsConfig>, ConfigError> {
    let Some(addr) = addr else {
        for (set, flag) in [
            (domain.is_some(), "dns-domain"),
            (ttl.is_some(), "dns-ttl"),
            (recursor.is_some(), "dns-recursor"),
        ] {
            if set {
                return Err(ConfigError::DnsWithoutAddr(flag));
            }
        }
        return Ok(None);
    };
    let ttl_secs = match ttl {
        None => 0,
        Some(text) => {
            let ms = proto::manifest::parse_duration_ms(&text)
                .map_err(|err| ConfigError::Dns(format!("--dns-ttl {text:?}: {err}")))?;
            if ms % 1000 != 0 {
                return Err(ConfigError::Dns(format!(
                    "--dns-ttl {text:?}: DNS counts TTLs in whole seconds"
                )));
            }
            u32::try_from(ms / 1000).unwrap_or(u32::MAX)
        }
    };
    let zone = crate::dns::ZoneConfig::new(domain.as_deref().unwrap_or("stratus"), ttl_secs)
        .map_err(ConfigError::Dns)?;
    Ok(Some(DnsConfig {
        addr,
        zone,
        recursor,
        container_recursor: None,
    }))
}

/// The node-local balancer's ports (`--internal-port P`: P and P+1), which turn on the
/// zone's `APP.internal` names.
fn resolve_internal(
    port: Option<u16>,
    dns: Option<&mut DnsConfig>,
    replica_ports: (u16, u16),
) -> Result<Option<InternalPorts>, ConfigError> {
    let Some(http) = port else {
        return Ok(None);
    };
    let Some(dns) = dns else {
        return Err(ConfigError::InternalPort(
            "it needs --dns-addr: containers find APP.internal through this node's DNS".into(),
        ));
    };
    let Some(dns_port) = http.checked_add(1).filter(|_| http != 0) else {
        return Err(ConfigError::InternalPort(format!(
            "{http} leaves no port for its DNS (P+1): choose one from 1 to 65534"
        )));
    };
    let (first, last) = replica_ports;
    if (first..=last).contains(&http) || (first..=last).contains(&dns_port) {
        return Err(ConfigError::InternalPort(format!(
            "{http} and {dns_port} must lie outside the replica port range {first}-{last}: tenants' containers may not open connections to that range"
        )));
    }
    dns.zone.internal = true;
    dns.container_recursor = dns.recursor.or_else(|| {
        std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|text| crate::dns::askers::first_nameserver(&text))
    });
    Ok(Some(InternalPorts {
        http,
        dns: dns_port,
    }))
}

/// Which runtime driver runs containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Docker when its socket answers, else processes.
    Auto,
    Docker,
    Process,
}

/// Fully resolved agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_id: String,
    pub cluster_id: String,
    pub gossip_addr: SocketAddr,
    pub advertise_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub seeds: Vec<Seed>,
    pub data_dir: PathBuf,
    /// `None` only with `--insecure-no-encryption`.
    pub keyring: Option<Keyring>,
    pub labels: BTreeMap<String, String>,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    pub reschedule_grace: Duration,
    pub load_interval: Duration,
    pub api_token: Option<String>,
    pub max_upload_bytes: u64,
    /// The API's certificate chain and key (PEM files): it serves HTTPS.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// The CA peers' API certificates are checked against.
    pub api_tls_ca: Option<PathBuf>,
    /// `None`: no limit.
    pub api_rate_limit: Option<api::RateLimit>,
    pub api_max_connections_per_ip: usize,
    pub runtime: RuntimeChoice,
    pub docker_network: Option<String>,
    pub oci_runtime: Option<String>,
    pub default_image: String,
    /// `None`: `DOCKER_HOST` or the local socket.
    pub docker_host: Option<String>,
    pub build_timeout: Duration,
    pub base_images: BaseImages,
    pub image_pull: ImagePull,
    pub keep_releases: usize,
    /// Bytes of dependency images this node keeps.
    pub build_cache_bytes: u64,
    pub port_range: (u16, u16),
    pub runs_workloads: bool,
    /// Where the embedded ingress listens, if this node runs one.
    pub ingress_addr: Option<SocketAddr>,
    pub base_domain: String,
    /// The ingress's admin port (/metrics).
    pub ingress_admin_addr: Option<SocketAddr>,
    /// The ingress's HTTPS address and its certificates (`DOMAIN=CERT.pem:KEY.pem`, checked
    /// by the ingress when it starts).
    pub ingress_tls: Option<(SocketAddr, Vec<String>)>,
    /// `None`: the ingress's default.
    pub ingress_max_body_bytes: Option<u64>,
    /// `None`: bundles are stored on the nodes themselves.
    pub s3: Option<S3Config>,
    /// `None`: this node answers no DNS.
    pub dns: Option<DnsConfig>,
    /// `None`: no node-local balancer; containers resolve through Docker's defaults.
    pub internal: Option<InternalPorts>,
}

/// The DNS server's settings (`--dns-*`).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub addr: SocketAddr,
    pub zone: crate::dns::ZoneConfig,
    pub recursor: Option<SocketAddr>,
    /// Where containers' questions outside the zone go (`--internal-port`): the recursor,
    /// or else the host's first nameserver, so replicas still resolve the world.
    pub container_recursor: Option<SocketAddr>,
}

impl AgentConfig {
    pub fn resolve(args: AgentArgs) -> Result<AgentConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let node_id = args
            .node_id
            .or(file.node_id)
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
        let gossip_addr = args
            .gossip_addr
            .or(file.gossip_addr)
            .unwrap_or(SocketAddr::new(
                Ipv4Addr::UNSPECIFIED.into(),
                DEFAULT_GOSSIP_PORT,
            ));
        let advertise_addr = match args.advertise_addr.or(file.advertise_addr) {
            Some(text) => parse_advertise(&text, gossip_addr.port())?,
            None => default_advertise(gossip_addr),
        };
        let api_addr = args.api_addr.or(file.api_addr).unwrap_or(SocketAddr::new(
            Ipv4Addr::UNSPECIFIED.into(),
            DEFAULT_API_PORT,
        ));
        let seeds = args.seeds.or(file.seeds).unwrap_or_default();
        let seeds = seeds
            .iter()
            .filter(|seed| !seed.trim().is_empty())
            .map(|seed| Seed::parse(seed))
            .collect::<Result<Vec<_>, _>>()?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("stratus-data"));
        let insecure = args.insecure_no_encryption || file.insecure_no_encryption.unwrap_or(false);
        let keys = match (
            args.cluster_key.or(file.cluster_key),
            args.cluster_key_file.or(file.cluster_key_file),
        ) {
            (Some(keys), _) => keys,
            (None, Some(path)) => read_key_file(&path)?,
            (None, None) => Vec::new(),
        };
        let keyring = match (keys.is_empty(), insecure) {
            (false, _) => Some(Keyring::parse(&keys)?),
            (true, true) => None,
            (true, false) => return Err(ConfigError::MissingKey),
        };
        let labels = match args.labels {
            Some(labels) => parse_labels(&labels)?,
            None => file.labels.unwrap_or_default(),
        };
        let gossip_interval_ms = args
            .gossip_interval_ms
            .or(file.gossip_interval_ms)
            .unwrap_or(DEFAULT_GOSSIP_INTERVAL_MS);
        let load_interval_secs = args
            .load_interval_secs
            .or(file.load_interval_secs)
            .unwrap_or(5);
        if gossip_interval_ms == 0 {
            return Err(ConfigError::Zero("gossip_interval_ms"));
        }
        if load_interval_secs == 0 {
            return Err(ConfigError::Zero("load_interval_secs"));
        }
        let runtime = match args.runtime.or(file.runtime).as_deref() {
            None | Some("auto") => RuntimeChoice::Auto,
            Some("docker") => RuntimeChoice::Docker,
            Some("process") => RuntimeChoice::Process,
            Some(other) => return Err(ConfigError::Runtime(other.to_string())),
        };
        let port_range = match args.port_range.or(file.port_range) {
            None => (20_000, 29_999),
            Some(text) => parse_port_range(&text)?,
        };
        let s3 = resolve_store(
            args.store.or(file.store),
            args.s3_endpoint.or(file.s3_endpoint),
            args.s3_region.or(file.s3_region),
            args.s3_access_key.or(file.s3_access_key),
            args.s3_secret_key.or(file.s3_secret_key),
        )?;
        let api_tls = match (
            args.api_tls_cert.or(file.api_tls_cert),
            args.api_tls_key.or(file.api_tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::ApiTls(
                    "--api-tls-cert and --api-tls-key go together: give both, or neither",
                ));
            }
        };
        let ingress_tls = match (
            args.ingress_tls_addr.or(file.ingress_tls_addr),
            args.ingress_tls_cert
                .or(file.ingress_tls_cert)
                .unwrap_or_default()
                .into_iter()
                .map(|cert| cert.trim().to_string())
                .filter(|cert| !cert.is_empty())
                .collect::<Vec<_>>(),
        ) {
            (None, certs) if certs.is_empty() => None,
            (Some(addr), certs) if !certs.is_empty() => Some((addr, certs)),
            (Some(_), _) => {
                return Err(ConfigError::IngressTls(
                    "--ingress-tls-addr needs at least one --ingress-tls-cert DOMAIN=CERT.pem:KEY.pem",
                ));
            }
            (None, _) => {
                return Err(ConfigError::IngressTls(
                    "--ingress-tls-cert is set but not --ingress-tls-addr: say where to serve HTTPS",
                ));
            }
        };
        let mut dns = resolve_dns(
            args.dns_addr.or(file.dns_addr),
            args.dns_domain.or(file.dns_domain),
            args.dns_ttl.or(file.dns_ttl),
            args.dns_recursor.or(file.dns_recursor),
        )?;
        let internal = resolve_internal(
            args.internal_port.or(file.internal_port),
            dns.as_mut(),
            port_range,
        )?;
        let build_timeout = match args.build_timeout.or(file.build_timeout) {
            None => Duration::from_secs(15 * 60),
            Some(text) => Duration::from_millis(
                proto::manifest::parse_duration_ms(&text).map_err(ConfigError::BuildTimeout)?,
            ),
        };
        let mut base_images = BaseImages::local();
        for mapping in args.base_image.or(file.base_image).unwrap_or_default() {
            let mapping = mapping.trim();
            if !mapping.is_empty() {
                base_images.set(mapping).map_err(ConfigError::BaseImage)?;
            }
        }
        let image_pull = match args.image_pull.or(file.image_pull) {
            None => ImagePull::IfMissing,
            Some(text) => text.parse().map_err(|_| ConfigError::ImagePull(text))?,
        };
        let build_cache_bytes = match args.build_cache_size.or(file.build_cache_size) {
            None => 10 << 30,
            Some(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map_err(|_| ConfigError::BuildCacheSize(text.clone()))?
                .as_u64(),
        };
        Ok(AgentConfig {
            build_cache_bytes,
            docker_host: args
                .docker_host
                .or(file.docker_host)
                .filter(|host| !host.is_empty()),
            build_timeout,
            base_images,
            image_pull,
            keep_releases: args
                .keep_releases
                .or(file.keep_releases)
                .unwrap_or(5)
                .max(1),
            ingress_admin_addr: args.ingress_admin_addr.or(file.ingress_admin_addr),
            ingress_tls,
            ingress_max_body_bytes: args.ingress_max_body_bytes.or(file.ingress_max_body_bytes),
            s3,
            api_token: args.api_token.or(file.api_token).filter(|t| !t.is_empty()),
            api_tls,
            api_tls_ca: args.api_tls_ca.or(file.api_tls_ca),
            api_rate_limit: api::RateLimit::new(
                args.api_rate_limit
                    .or(file.api_rate_limit)
                    .unwrap_or(api::state::DEFAULT_RATE_PER_SECOND),
                args.api_rate_burst.or(file.api_rate_burst).unwrap_or(0),
            ),
            api_max_connections_per_ip: args
                .api_max_connections_per_ip
                .or(file.api_max_connections_per_ip)
                .unwrap_or(api::ServeLimits::default().max_connections_per_ip)
                .max(1),
            max_upload_bytes: args
                .max_upload_bytes
                .or(file.max_upload_bytes)
                .unwrap_or(256 << 20),
            runtime,
            docker_network: args.docker_network.or(file.docker_network),
            oci_runtime: args.oci_runtime.or(file.oci_runtime),
            default_image: args
                .default_image
                .or(file.default_image)
                .unwrap_or_else(|| "stratus/busybox:latest".to_string()),
            port_range,
            runs_workloads: !(args.no_workloads || file.no_workloads.unwrap_or(false)),
            ingress_addr: args.ingress_addr.or(file.ingress_addr),
            dns,
            internal,
            base_domain: args
                .base_domain
                .or(file.base_domain)
                .unwrap_or_else(|| "localhost".to_string()),
            node_id,
            cluster_id: args
                .cluster_id
                .or(file.cluster_id)
                .unwrap_or_else(|| "stratus".to_string()),
            gossip_addr,
            advertise_addr,
            api_addr,
            seeds,
            data_dir,
            keyring,
            labels,
            gossip_interval: Duration::from_millis(gossip_interval_ms),
            phi_threshold: args.phi_threshold.or(file.phi_threshold).unwrap_or(8.0),
            reschedule_grace: args
                .reschedule_grace_ms
                .or(file.reschedule_grace_ms)
                .map_or(
                    crate::control::reconciler::DEFAULT_RESCHEDULE_GRACE,
                    Duration::from_millis,
                ),
            load_interval: Duration::from_secs(load_interval_secs),
        })
    }

    /// The API address peers and clients should use (the advertise IP when bound to 0.0.0.0).
    pub fn advertised_api_addr(&self) -> SocketAddr {
        if self.api_addr.ip().is_unspecified() {
            SocketAddr::new(self.advertise_addr.ip(), self.api_addr.port())
        } else {
            self.api_addr
        }
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::ParseFile {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

fn read_key_file(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadKeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, ConfigError> {
    labels
        .iter()
        .filter(|label| !label.trim().is_empty())
        .map(|label| match label.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.trim().to_string()))
            }
            _ => Err(ConfigError::Label(label.clone())),
        })
        .collect()
}

fn resolve_store(
    store: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
) -> Result<Option<S3Config>, ConfigError> {
    let url = match store.as_deref() {
        None | Some("local") => {
            for (flag, value) in [
                ("--s3-endpoint", &endpoint),
                ("--s3-region", &region),
                ("--s3-access-key", &access_key),
                ("--s3-secret-key", &secret_key),
            ] {
                if value.is_some() {
                    return Err(ConfigError::S3WithoutStore(flag));
                }
            }
            return Ok(None);
        }
        Some(url) => url,
    };
    let mut config = S3Config::from_url(url)?;
    if let Some(endpoint) = endpoint {
        config = config.with_endpoint(endpoint);
    }
    if let Some(region) = region {
        config = config.with_region(region);
    }
    config = config.with_credentials(
        access_key.unwrap_or_default(),
        secret_key.unwrap_or_default(),
    );
    config.validate()?;
    Ok(Some(config))
}

fn parse_port_range(text: &str) -> Result<(u16, u16), ConfigError> {
    let bad = || ConfigError::PortRange(text.to_string());
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let first: u16 = first.trim().parse().map_err(|_| bad())?;
    let last: u16 = last.trim().parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(bad());
    }
    Ok((first, last))
}

fn parse_advertise(text: &str, default_port: u16) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| ConfigError::Advertise(text.to_string()))
}

/// Binding 0.0.0.0 says nothing about where peers can reach us: use the address the
/// hostname resolves to (a container's own IP under Docker), else loopback.
fn default_advertise(bind: SocketAddr) -> SocketAddr {
    if !bind.ip().is_unspecified() {
        return bind;
    }
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let resolved = (hostname.as_str(), bind.port())
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|addr| addr.is_ipv4() && !addr.ip().is_loopback()));
    resolved.unwrap_or(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bind.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "7hAYDxS4UptBwSIzOEJ733ceO/wiRro0cAYZzpkgxlg=";

    fn args() -> AgentArgs {
        AgentArgs {
            cluster_key: Some(vec![KEY.to_string()]),
            ..AgentArgs::default()
        }
    }

    #[test]
    fn api_tls_takes_both_files_and_the_rate_limit_zero_is_off() {
        let config = AgentConfig::resolve(args()).unwrap();
        assert!(config.api_tls.is_none());
        let limit = config.api_rate_limit.unwrap();
        assert_eq!((limit.per_second.get(), limit.burst.get()), (50, 100));
        assert_eq!(config.api_max_connections_per_ip, 256);

        let only_cert = AgentArgs {
            api_tls_cert: Some("cert.pem".into()),
            ..args()
        };
        let err = AgentConfig::resolve(only_cert).unwrap_err();
        assert!(err.to_string().contains("--api-tls-key"), "{err}");

        let config = AgentConfig::resolve(AgentArgs {
            api_tls_cert: Some("cert.pem".into()),
            api_tls_key: Some("key.pem".into()),
            api_rate_limit: Some(0),
            ..args()
        })
        .unwrap();
        assert_eq!(config.api_tls, Some(("cert.pem".into(), "key.pem".into())));
        assert_eq!(config.api_rate_limit, None);
    }

    #[test]
    fn the_internal_port_needs_dns_and_stays_clear_of_the_replica_ports() {
        let config = AgentConfig::resolve(args()).unwrap();
        assert_eq!(config.internal, None);
        assert!(config.dns.is_none());

        let without_dns = AgentConfig::resolve(AgentArgs {
            internal_port: Some(8711),
            ..args()
        })
        .unwrap_err();
        assert!(
            without_dns.to_string().contains("--dns-addr"),
            "{without_dns}"
        );

        let dns = || Some("127.0.0.1:8600".parse().unwrap());
        let config = AgentConfig::resolve(AgentArgs {
            internal_port: Some(8711),
            dns_addr: dns(),
            ..args()
        })
        .unwrap();
        assert_eq!(
            config.internal,
            Some(InternalPorts {
                http: 8711,
                dns: 8712
            })
        );
        assert!(
            config.dns.unwrap().zone.internal,
            "APP.internal names exist"
        );

        for (port, range, said) in [
            (20000, None, "outside the replica port range"),
            (8711, Some("8700-8711"), "outside the replica port range"),
            (8711, Some("8712-8800"), "outside the replica port range"),
            (65535, None, "no port for its DNS"),
        ] {
            let err = AgentConfig::resolve(AgentArgs {
                internal_port: Some(port),
                dns_addr: dns(),
                port_range: range.map(str::to_string),
                ..args()
            })
            .unwrap_err();
            assert!(err.to_string().contains(said), "{port} {range:?}: {err}");
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = AgentConfig::resolve(args()).unwrap();
        assert_eq!(config.gossip_addr.port(), DEFAULT_GOSSIP_PORT);
        assert_eq!(config.api_addr.port(), DEFAULT_API_PORT);
        assert_eq!(
            config.gossip_interval,
            Duration::from_millis(DEFAULT_GOSSIP_INTERVAL_MS)
        );
        assert!(!config.node_id.is_empty());
        assert!(config.keyring.is_some());
    }

    #[test]
    fn refuses_to_start_without_a_key_unless_told_so() {
        let err = AgentConfig::resolve(AgentArgs::default()).unwrap_err();
        assert!(matches!(err, ConfigError::MissingKey));
        assert!(err.to_string().contains("stratus keygen"));
        let insecure = AgentConfig::resolve(AgentArgs {
            insecure_no_encryption: true,
            ..AgentArgs::default()
        })
        .unwrap();
        assert!(insecure.keyring.is_none());
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "node_id = \"from-file\"\napi_addr = \"127.0.0.5:9000\"\nseeds = [\"127.0.0.6:7946\"]\n\
                 cluster_key = [\"{KEY}\"]\n[labels]\nzone = \"a\"\n"
            ),
        )
        .unwrap();
        let config = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            node_id: Some("from-flag".into()),
            ..AgentArgs::default()
        })
        .unwrap();
        assert_eq!(config.node_id, "from-flag");
        assert_eq!(config.api_addr, "127.0.0.5:9000".parse().unwrap());
        assert_eq!(
            config.seeds,
            vec![Seed::Addr("127.0.0.6:7946".parse().unwrap())]
        );
        assert_eq!(config.labels.get("zone").map(String::as_str), Some("a"));
    }

    #[test]
    fn ingress_tls_needs_an_address_and_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "cluster_key = [\"{KEY}\"]\ningress_tls_addr = \"127.0.0.1:8443\"\n\
                 ingress_tls_cert = [\"a.example.com=a.pem:a.key\"]\n\
                 ingress_admin_addr = \"127.0.0.1:9090\"\ningress_max_body_bytes = 1024\n"
            ),
        )
        .unwrap();
        let config = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            ..AgentArgs::default()
        })
        .unwrap();
        assert_eq!(
            config.ingress_tls,
            Some((
                "127.0.0.1:8443".parse().unwrap(),
                vec!["a.example.com=a.pem:a.key".to_string()]
            ))
        );
        assert_eq!(
            config.ingress_admin_addr,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(config.ingress_max_body_bytes, Some(1024));
        let plain = AgentConfig::resolve(args()).unwrap();
        assert_eq!(plain.ingress_tls, None);
        assert_eq!(plain.ingress_max_body_bytes, None);

        let no_cert = AgentConfig::resolve(AgentArgs {
            ingress_tls_addr: Some("127.0.0.1:8443".parse().unwrap()),
            ..args()
        })
        .unwrap_err();
        assert!(
            no_cert.to_string().contains("--ingress-tls-cert"),
            "{no_cert}"
        );
        let no_addr = AgentConfig::resolve(AgentArgs {
            ingress_tls_cert: Some(vec!["a.example.com=a.pem:a.key".into()]),
            ..args()
        })
        .unwrap_err();
        assert!(
            no_addr.to_string().contains("--ingress-tls-addr"),
            "{no_addr}"
        );
    }

    #[test]
    fn unknown_file_keys_are_reported_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "nodeid = \"typo\"\n").unwrap();
        let err = AgentConfig::resolve(AgentArgs {
            config: Some(path.clone()),
            ..args()
        })
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("agent.toml") && message.contains("nodeid"),
            "{message}"
        );
    }

    #[test]
    fn key_file_holds_primary_then_extra_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# rotation\n{KEY}\n\n{KEY}\n")).unwrap();
        let config = AgentConfig::resolve(AgentArgs {
            cluster_key_file: Some(path),
            ..AgentArgs::default()
        })
        .unwrap();
        assert!(config.keyring.is_some());
    }

    #[test]
    fn the_s3_store_is_resolved_and_stray_s3_flags_are_refused() {
        let config = AgentConfig::resolve(AgentArgs {
            store: Some("s3://bundles/prod".into()),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_access_key: Some("a".into()),
            s3_secret_key: Some("b".into()),
            ..args()
        })
        .unwrap();
        let s3 = config.s3.unwrap();
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("bundles", "prod/")
        );
        let stray = AgentConfig::resolve(AgentArgs {
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            ..args()
        });
        assert!(matches!(
            stray,
            Err(ConfigError::S3WithoutStore("--s3-endpoint"))
        ));
        assert!(AgentConfig::resolve(args()).unwrap().s3.is_none());
    }

    #[test]
    fn labels_advertise_and_intervals_are_validated() {
        let bad_label = AgentConfig::resolve(AgentArgs {
            labels: Some(vec!["zone".into()]),
            ..args()
        });
        assert!(matches!(bad_label, Err(ConfigError::Label(_))));
        let advertise = AgentConfig::resolve(AgentArgs {
            advertise_addr: Some("127.0.0.9".into()),
            gossip_addr: Some("0.0.0.0:8000".parse().unwrap()),
            ..args()
        })
        .unwrap();
        assert_eq!(advertise.advertise_addr, "127.0.0.9:8000".parse().unwrap());
        assert_eq!(
            advertise.advertised_api_addr().ip(),
            advertise.advertise_addr.ip()
        );
        let zero = AgentConfig::resolve(AgentArgs {
            gossip_interval_ms: Some(0),
            ..args()
        });
        assert!(matches!(zero, Err(ConfigError::Zero(_))));
    }
}
