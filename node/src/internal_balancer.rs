//! The node-local balancer behind `APP.internal` (`--internal-port`): the ingress's own
//! Pingora proxy, balancer, breaker and retries, on a listener for this node's containers,
//! fed from the same route feed with [`ingress::RouteTable::internal`]. Part of the binary
//! only, as the ingress is.
//!
//! It listens on every address at the port, since a container reaches it at its own
//! network's gateway (the tenant bridge's port 80, redirected by the isolation table).
//! Who calls is told by the source address, which the redirect keeps: a tenant's
//! container reaches its tenant's apps only (another's is a 404, as an absent one), the
//! host itself (loopback) reaches every app, and anyone else gets 403. ARCHITECTURE.md
//! ("App-to-app calls") has the path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use node::dns::TenantSubnets;
use node::workload::runtime::tenant_network::InternalPorts;
use proto::routes::RouteFeed;
use tokio::sync::watch;

use crate::embedded_ingress::{EmbeddedIngress, follow_routes};

/// Proxy threads: app-to-app traffic of one node's containers, beside the ingress's two.
const THREADS: usize = 1;

/// Callers told apart by this node's record of its tenant networks.
struct TenantCallers(Arc<TenantSubnets>);

impl ingress::Callers for TenantCallers {
    fn caller(&self, client: IpAddr) -> ingress::Caller {
        if let Some(tenant) = self.0.tenant_of(client) {
            return ingress::Caller::Tenant(tenant);
        }
        let loopback = match client {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
            IpAddr::V4(v4) => v4.is_loopback(),
        };
        if loopback {
            ingress::Caller::Anyone
        } else {
            ingress::Caller::Stranger
        }
    }
}

/// Starts the balancer on `ports.http`, if the config asks for one.
pub fn start(
    ports: Option<InternalPorts>,
    tenant_subnets: Arc<TenantSubnets>,
    runtime: &tokio::runtime::Runtime,
    feeds: watch::Receiver<Option<RouteFeed>>,
) -> anyhow::Result<Option<EmbeddedIngress>> {
    let Some(ports) = ports else {
        return Ok(None);
    };
    let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, ports.http));
    let routes = Arc::new(
        ingress::proxy::RouteState::new(Default::default())
            .scoped_by(Arc::new(TenantCallers(tenant_subnets))),
    );
    let proxy = ingress::build(
        &ingress::Listeners::http(listen),
        routes.clone(),
        ingress::ProxyConfig::default(),
        THREADS,
    )
    .with_context(|| format!("cannot start the node-local balancer on {listen}"))?
    .spawn()
    .context("cannot start the node-local balancer's thread")?;
    tracing::info!(%listen, dns_port = ports.dns, "node-local balancer ready for APP.internal");
    runtime.spawn(follow_routes(feeds, routes, ingress::RouteTable::internal));
    Ok(Some(EmbeddedIngress::new(proxy)))
}
