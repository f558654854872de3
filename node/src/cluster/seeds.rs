//! Seed addresses: parsing `--seeds` and resolving DNS names with hickory.
//!
//! A seed is `ip:port`, `host:port` (every A and AAAA record is used) or an SRV name
//! `_service._udp.domain` (every target and port). Names are resolved again periodically,
//! so a cluster can bootstrap from one DNS name whose records change as hosts come and go.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::ResolverConfig;
use hickory_resolver::name_server::TokioConnectionProvider;
use tracing::{debug, warn};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seed {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
    Srv(String),
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Addr(addr) => write!(f, "{addr}"),
            Seed::Host { host, port } => write!(f, "{host}:{port}"),
            Seed::Srv(name) => write!(f, "{name}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeedError {
    #[error("seed {0:?} has no port: write host:port, ip:port or _service._udp.domain")]
    NoPort(String),
    #[error("seed {0:?} has an invalid port")]
    BadPort(String),
}

impl Seed {
    pub fn parse(text: &str) -> Result<Seed, SeedError> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Seed::Addr(addr));
        }
        if text.starts_with('_') && !text.contains(':') {
            return Ok(Seed::Srv(text.to_string()));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| SeedError::NoPort(text.to_string()))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| SeedError::BadPort(text.to_string()))?;
        if host.is_empty() {
            return Err(SeedError::NoPort(text.to_string()));
        }
        Ok(Seed::Host {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }

    /// Parses a comma-separated list; empty items are ignored.
    pub fn parse_list(text: &str) -> Result<Vec<Seed>, SeedError> {
        text.split(',')
            .filter(|item| !item.trim().is_empty())
            .map(Seed::parse)
            .collect()
    }
}

/// Resolves seeds through the system's DNS configuration and hosts file.
pub struct SeedResolver {
    resolver: TokioResolver,
}

impl SeedResolver {
    pub fn from_system() -> SeedResolver {
        let builder = TokioResolver::builder_tokio().unwrap_or_else(|err| {
            // Without a usable resolv.conf only the hosts file answers; never fall back to
            // public resolvers behind the operator's back.
            warn!(error = %err, "no system DNS configuration, resolving seeds from the hosts file only");
            TokioResolver::builder_with_config(
                ResolverConfig::new(),
                TokioConnectionProvider::default(),
            )
        });
        SeedResolver {
            resolver: builder.build(),
        }
    }

    /// Every address the seeds currently resolve to. A seed that fails to resolve is
    /// logged and skipped: the others may be enough, and the next round retries it.
    pub async fn resolve(&self, seeds: &[Seed]) -> BTreeSet<SocketAddr> {
        let mut addrs = BTreeSet::new();
        for seed in seeds {
            match seed {
                Seed::Addr(addr) => {
                    addrs.insert(*addr);
                }
                Seed::Host { host, port } => {
                    if let Ok(ip) = host.parse::<IpAddr>() {
                        addrs.insert(SocketAddr::new(ip, *port));
                        continue;
                    }
                    addrs.extend(self.lookup_host(host, *port).await);
                }
                Seed::Srv(name) => match self.resolver.srv_lookup(name.as_str()).await {
                    Ok(lookup) => {
                        let targets: Vec<(String, u16)> = lookup
                            .iter()
                            .map(|srv| (srv.target().to_utf8(), srv.port()))
                            .collect();
                        for (target, port) in targets {
                            addrs.extend(self.lookup_host(&target, port).await);
                        }
                    }
                    Err(err) => warn!(seed = %name, error = %err, "cannot resolve SRV seed"),
                },
            }
        }
        debug!(?addrs, "resolved seeds");
        addrs
    }

    async fn lookup_host(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        match self.resolver.lookup_ip(host).await {
            Ok(lookup) => lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
            Err(err) => {
                warn!(seed = %host, error = %err, "cannot resolve seed");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_seed_form() {
        let seeds =
            Seed::parse_list("127.0.0.2:7946, node-a:7946,,_stratus._udp.example.org,[::1]:9")
                .unwrap();
        assert_eq!(
            seeds,
            vec![
                Seed::Addr("127.0.0.2:7946".parse().unwrap()),
                Seed::Host {
                    host: "node-a".into(),
                    port: 7946
                },
                Seed::Srv("_stratus._udp.example.org".into()),
                Seed::Addr("[::1]:9".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn seeds_without_a_valid_port_are_refused() {
        assert_eq!(
            Seed::parse("node-a"),
            Err(SeedError::NoPort("node-a".into()))
        );
        assert_eq!(
            Seed::parse("node-a:http"),
            Err(SeedError::BadPort("node-a:http".into()))
        );
    }

    #[tokio::test]
    async fn resolves_literals_and_hosts_file_names() {
        let resolver = SeedResolver::from_system();
        let seeds = Seed::parse_list("127.0.0.3:7000,localhost:7001").unwrap();
        let addrs = resolver.resolve(&seeds).await;
        assert!(addrs.contains(&"127.0.0.3:7000".parse().unwrap()));
        assert!(
            addrs
                .iter()
                .any(|addr| addr.port() == 7001 && addr.ip().is_loopback()),
            "localhost must resolve through the hosts file: {addrs:?}"
        );
    }

    #[tokio::test]
    async fn unresolvable_names_are_skipped_not_fatal() {
        let resolver = SeedResolver::from_system();
        let seeds = Seed::parse_list("does-not-exist.invalid:7946,127.0.0.4:1").unwrap();
        let addrs = resolver.resolve(&seeds).await;
        assert_eq!(
            addrs.into_iter().collect::<Vec<_>>(),
            vec!["127.0.0.4:1".parse().unwrap()]
        );
    }
}
