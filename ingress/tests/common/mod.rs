//! Helpers shared by the ingress's socket tests: loopback addresses, listeners bound on
//! port 0 and handed to the ingress (no port is given up and bound again, so none can be
//! taken meanwhile), route records, waits and stops.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ingress::{BalancerConfig, BoundListeners, IngressHandle, ProxyConfig, RouteState, Strategy};
use proto::{ContainerHealth, ContainerRecord, ContainerState};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub fn ip(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, net, host)
}

/// A listening socket on a free port of `ip`, for the ingress to take over.
pub fn bind(ip: Ipv4Addr) -> std::net::TcpListener {
    std::net::TcpListener::bind((ip, 0)).unwrap()
}

/// Plain HTTP on a free port of `ip`, nothing else.
pub fn http_on(ip: Ipv4Addr) -> BoundListeners {
    BoundListeners {
        http: bind(ip),
        tls: None,
        admin: None,
    }
}

/// Starts an ingress on `listeners` with `threads` proxy threads (each with its own
/// upstream pool). The sockets listen already: connections made before the servers run
/// wait in the accept queue.
pub fn start(
    listeners: BoundListeners,
    routes: Arc<RouteState>,
    config: ProxyConfig,
    threads: usize,
) -> IngressHandle {
    ingress::build_bound(listeners, routes, config, threads)
        .unwrap()
        .spawn()
        .unwrap()
}

pub fn stop(handle: IngressHandle) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || handle.stop(ingress::Stop::Fast))
}

pub async fn wait_for<F, Fut>(mut predicate: F, timeout: Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !predicate().await {
        assert!(
            Instant::now() < deadline,
            "condition not met in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running, healthy replica of `app` at `addr`.
pub fn record(id: &str, app: &str, addr: SocketAddr) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        app: app.into(),
        release: 1,
        replica: 0,
        addr,
        state: ContainerState::Running,
        health: ContainerHealth::Healthy,
        detail: None,
    }
}

/// Round-robin: peak-EWMA sends sequential requests on loopback mostly to whichever
/// backend measured fastest, so a handful of requests would not reliably see both.
pub fn round_robin() -> BalancerConfig {
    BalancerConfig {
        strategy: Strategy::RoundRobin,
        ..BalancerConfig::default()
    }
}

/// The status code of an HTTP/1 answer's status line; 0 if there is none.
pub fn status_code(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
