//! The ingress beside the agent (`--ingress-addr`, `stratus ingress`): part of the binary
//! only, since the `node` library never depends on `ingress`. It starts the Pingora
//! servers on their own threads (they must not run inside tokio) and feeds them route
//! tables built from the agent's `proto` route feed.

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
    pub fn stop(self) {
        self.proxy.stop(ingress::server::Stop::Graceful);
    }
}

/// Starts the ingress `config` asks for, if any, and the task that turns every route feed
/// into a route table. Returns the sender the agent feeds.
pub fn start(
    config: &AgentConfig,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<(EmbeddedIngress, watch::Sender<Option<RouteFeed>>)>> {
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
    let (feed_tx, mut feed_rx) = watch::channel::<Option<RouteFeed>>(None);
    let base_domain = config.base_domain.clone();
    runtime.spawn(async move {
        while feed_rx.changed().await.is_ok() {
            let Some(feed) = feed_rx.borrow_and_update().clone() else {
                continue;
            };
            routes
                .update(ingress::RouteTable::from_feed(&base_domain, &feed))
                .await;
        }
    });
    Ok(Some((EmbeddedIngress { proxy }, feed_tx)))
}
