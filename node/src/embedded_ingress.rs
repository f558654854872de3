//! The ingress beside the agent (`--ingress-addr`, `stratus ingress`): part of the binary
//! only, since the `node` library never depends on `ingress`. It starts the Pingora
//! servers on their own threads (they must not run inside tokio) and feeds them route
//! tables built from the agent's `proto` route feed ([`follow_routes`], which the
//! node-local balancer shares).

use std::sync::Arc;

use anyhow::Context as _;
use proto::routes::RouteFeed;
use tokio::sync::watch;

use node::config::AgentConfig;

/// A running ingress: stop it when the agent has stopped.
pub struct EmbeddedIngress {
    proxy: ingress::server::IngressHandle,
}

impl EmbeddedIngress {
    pub fn new(proxy: ingress::server::IngressHandle) -> EmbeddedIngress {
        EmbeddedIngress { proxy }
    }

    pub fn stop(self) {
        self.proxy.stop(ingress::server::Stop::Graceful);
    }
}

/// Starts the ingress `config` asks for, if any, and the task that turns every route feed
/// of `feeds` into a route table.
pub fn start(
    config: &AgentConfig,
    runtime: &tokio::runtime::Runtime,
    feeds: watch::Receiver<Option<RouteFeed>>,
) -> anyhow::Result<Option<EmbeddedIngress>> {
    let Some(listen) = config.ingress_addr else {
        return Ok(None);
    };
    let routes = Arc::new(ingress::proxy::RouteState::new(Default::default()));
    let tls = match &config.ingress_tls {
        Some((addr, certs)) => Some(ingress::TlsListener {
            addr: *addr,
            certs: certs
                .iter()
                .map(|cert| ingress::CertSpec::parse(cert))
                .collect::<Result<_, _>>()?,
        }),
        None => None,
    };
    let listeners = ingress::Listeners {
        http: listen,
        tls,
        admin: config.ingress_admin_addr,
    };
    let mut proxy_config = ingress::ProxyConfig::default();
    if let Some(max) = config.ingress_max_body_bytes {
        proxy_config.max_body_bytes = max;
    }
    let proxy = ingress::build(&listeners, routes.clone(), proxy_config, 2)
        .context("cannot start the ingress")?
        .spawn()
        .context("cannot start the ingress thread")?;
    tracing::info!(
        %listen,
        tls = ?listeners.tls.as_ref().map(|tls| tls.addr),
        admin = ?listeners.admin,
        base_domain = %config.base_domain,
        "ingress ready"
    );
    let base_domain = config.base_domain.clone();
    runtime.spawn(follow_routes(feeds, routes, move |feed| {
        ingress::RouteTable::from_feed(&base_domain, feed)
    }));
    Ok(Some(EmbeddedIngress { proxy }))
}

/// Publishes `table_of` each feed in `routes` until the agent drops its sender. The
/// ingress and the node-local balancer both run on it, each with its own table.
pub async fn follow_routes(
    mut feeds: watch::Receiver<Option<RouteFeed>>,
    routes: Arc<ingress::RouteState>,
    table_of: impl Fn(&RouteFeed) -> ingress::RouteTable,
) {
    loop {
        // A copy, so the agent's next send does not wait for the table to be built.
        let feed = feeds.borrow_and_update().clone();
        if let Some(feed) = feed {
            routes.update(table_of(&feed)).await;
        }
        if feeds.changed().await.is_err() {
            return;
        }
    }
}
