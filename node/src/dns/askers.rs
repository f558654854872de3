//! Who asks: a question's source address tells the DNS server whose names it may see.
//!
//! A tenant's containers on this node sit on its own Docker network (see
//! `workload::runtime::tenant_network`), whose subnet Docker chose when the network was
//! made. Docker's embedded resolver forwards a container's queries from inside the
//! container's network namespace, so they arrive from an address in that subnet, which no
//! other tenant's container can use: Docker allocates the addresses and the bridge only
//! carries that network. The Docker driver records each tenant network's subnets here when
//! it makes or finds the network; every other source (the host, other hosts, the
//! administrator's containers) sees every name, as the administrator's token does.

use std::net::IpAddr;

use ipnet::IpNet;
use parking_lot::RwLock;

use super::zone::{Asker, Scope};

/// The subnets of this node's tenant networks, shared by the Docker driver (which writes),
/// the DNS server and the node-local balancer (which read).
#[derive(Debug, Default)]
pub struct TenantSubnets {
    networks: RwLock<Vec<TenantNet>>,
}

#[derive(Debug, Clone)]
struct TenantNet {
    subnet: IpNet,
    tenant: String,
    gateway: IpAddr,
}

impl TenantSubnets {
    pub fn new() -> TenantSubnets {
        TenantSubnets::default()
    }

    /// Records that `subnet` is `tenant`'s network on this node, with its `gateway`
    /// (Docker's default, the subnet's first address, when `None`); again: a no-op. A
    /// subnet Docker handed to another tenant's network before (the old one removed)
    /// changes hands.
    pub fn set(&self, tenant: &str, subnet: IpNet, gateway: Option<IpAddr>) {
        let gateway = gateway.unwrap_or_else(|| first_host(subnet));
        let mut networks = self.networks.write();
        networks.retain(|known| known.subnet != subnet);
        networks.push(TenantNet {
            subnet,
            tenant: tenant.to_string(),
            gateway,
        });
    }

    /// Forgets a network this node removed.
    pub fn remove(&self, subnet: IpNet) {
        self.networks.write().retain(|known| known.subnet != subnet);
    }

    /// The tenant whose network `source` is on, if any.
    pub fn tenant_of(&self, source: IpAddr) -> Option<String> {
        self.network_of(source).map(|net| net.tenant)
    }

    /// Whose names `source` may see.
    pub fn scope_of(&self, source: IpAddr) -> Scope {
        self.asker(source).scope
    }

    /// Who `source` is: its scope, and its network's gateway.
    pub fn asker(&self, source: IpAddr) -> Asker {
        match self.network_of(source) {
            Some(net) => Asker {
                scope: Scope::Tenant(net.tenant),
                gateway: Some(net.gateway),
            },
            None => Scope::Everything.into(),
        }
    }

    fn network_of(&self, source: IpAddr) -> Option<TenantNet> {
        let source = canonical(source);
        self.networks
            .read()
            .iter()
            .find(|net| net.subnet.contains(&source))
            .cloned()
    }
}

/// The first `nameserver` of a `resolv.conf`, on port 53: where containers' questions for
/// names outside the zone go when the agent answers for them and no `--dns-recursor` is
/// set (Docker would otherwise have sent them to the host's resolvers itself).
pub fn first_nameserver(resolv_conf: &str) -> Option<std::net::SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| std::net::SocketAddr::new(ip, 53))
    })
}

/// The first address of `subnet` after its network address: where Docker puts a bridge
/// network's gateway unless told otherwise.
fn first_host(subnet: IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v4.network()).saturating_add(1),
        )),
        IpNet::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6.network()).saturating_add(1),
        )),
    }
}

/// An IPv4 address that arrived on a dual-stack socket as `::ffff:a.b.c.d` is `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_s_first_nameserver_is_read_from_resolv_conf() {
        let text = "# generated\nsearch example.com\nnameserver fe80::1%eth0\n\
                    nameserver 10.0.0.53\nnameserver 10.0.0.54\n";
        assert_eq!(
            first_nameserver(text),
            Some("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            first_nameserver("nameserver 127.0.0.53\n"),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("options ndots:5\n"), None);
    }

    #[test]
    fn a_tenant_subnet_scopes_its_addresses_and_nothing_else() {
        let subnets = TenantSubnets::new();
        subnets.set("acme", "172.20.0.0/16".parse().unwrap(), None);
        subnets.set(
            "globex",
            "172.21.0.0/16".parse().unwrap(),
            Some("172.21.0.254".parse().unwrap()),
        );
        let scope = |ip: &str| subnets.scope_of(ip.parse().unwrap());
        assert_eq!(scope("172.20.0.5"), Scope::Tenant("acme".into()));
        assert_eq!(scope("172.21.3.4"), Scope::Tenant("globex".into()));
        assert_eq!(scope("::ffff:172.21.3.4"), Scope::Tenant("globex".into()));
        assert_eq!(scope("127.0.0.1"), Scope::Everything);
        assert_eq!(scope("172.17.0.2"), Scope::Everything);
        let gateway = |ip: &str| subnets.asker(ip.parse().unwrap()).gateway;
        assert_eq!(gateway("172.20.9.9"), Some("172.20.0.1".parse().unwrap()));
        assert_eq!(gateway("172.21.0.2"), Some("172.21.0.254".parse().unwrap()));
        assert_eq!(gateway("127.0.0.1"), None);
        assert_eq!(
            subnets.tenant_of("172.21.0.2".parse().unwrap()).as_deref(),
            Some("globex")
        );
        assert_eq!(subnets.tenant_of("10.0.0.1".parse().unwrap()), None);
        // A subnet reused for another tenant's network changes hands.
        subnets.set("initech", "172.20.0.0/16".parse().unwrap(), None);
        assert_eq!(scope("172.20.0.5"), Scope::Tenant("initech".into()));
        subnets.remove("172.20.0.0/16".parse().unwrap());
        assert_eq!(scope("172.20.0.5"), Scope::Everything);
    }
}
