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

use super::zone::Scope;

/// The subnets of this node's tenant networks, shared by the Docker driver (which writes)
/// and the DNS server (which reads).
#[derive(Debug, Default)]
pub struct TenantSubnets {
    subnets: RwLock<Vec<(IpNet, String)>>,
}

impl TenantSubnets {
    pub fn new() -> TenantSubnets {
        TenantSubnets::default()
    }

    /// Records that `subnet` is `tenant`'s network on this node (again: a no-op). A
    /// subnet Docker handed to another tenant's network before (the old one removed)
    /// changes hands.
    pub fn set(&self, tenant: &str, subnet: IpNet) {
        let mut subnets = self.subnets.write();
        subnets.retain(|(known, _)| *known != subnet);
        subnets.push((subnet, tenant.to_string()));
    }

    /// Forgets a network this node removed.
    pub fn remove(&self, subnet: IpNet) {
        self.subnets.write().retain(|(known, _)| *known != subnet);
    }

    /// Whose names `source` may see.
    pub fn scope_of(&self, source: IpAddr) -> Scope {
        let source = canonical(source);
        self.subnets
            .read()
            .iter()
            .find(|(subnet, _)| subnet.contains(&source))
            .map_or(Scope::Everything, |(_, tenant)| {
                Scope::Tenant(tenant.clone())
            })
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
    fn a_tenant_subnet_scopes_its_addresses_and_nothing_else() {
        let subnets = TenantSubnets::new();
        subnets.set("acme", "172.20.0.0/16".parse().unwrap());
        subnets.set("globex", "172.21.0.0/16".parse().unwrap());
        let scope = |ip: &str| subnets.scope_of(ip.parse().unwrap());
        assert_eq!(scope("172.20.0.5"), Scope::Tenant("acme".into()));
        assert_eq!(scope("172.21.3.4"), Scope::Tenant("globex".into()));
        assert_eq!(scope("::ffff:172.21.3.4"), Scope::Tenant("globex".into()));
        assert_eq!(scope("127.0.0.1"), Scope::Everything);
        assert_eq!(scope("172.17.0.2"), Scope::Everything);
        // A subnet reused for another tenant's network changes hands.
        subnets.set("initech", "172.20.0.0/16".parse().unwrap());
        assert_eq!(scope("172.20.0.5"), Scope::Tenant("initech".into()));
        subnets.remove("172.20.0.0/16".parse().unwrap());
        assert_eq!(scope("172.20.0.5"), Scope::Everything);
    }
}
