//! The ingress with a fixed route table and no cluster: app `web` (at `web.localhost`) on
//! the backends given, to try the proxy by hand or put load on it.
//!
//! ```sh
//! cargo run --release -p ingress --example fixed_routes -- 127.0.0.1:8080 127.0.0.1:9000 127.0.0.1:9001
//! curl -H 'Host: web.localhost' http://127.0.0.1:8080/
//! ```
//!
//! With `STRATUS_ADMIN=ADDR` it also serves `/metrics` there. Stops on Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use ingress::routes::RouteTable;
use ingress::{Listeners, ProxyConfig, RouteApp, RouteState};
use proto::{ContainerHealth, ContainerRecord, ContainerState};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .ok_or("usage: fixed_routes LISTEN BACKEND...")?
        .parse()?;
    let backends = args
        .map(|arg| arg.parse::<SocketAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    let records: Vec<ContainerRecord> = backends
        .iter()
        .enumerate()
        .map(|(i, addr)| ContainerRecord {
            id: format!("b{i}"),
            app: "web".into(),
            release: 1,
            replica: u32::try_from(i).unwrap_or(u32::MAX),
            addr: *addr,
            state: ContainerState::Running,
            health: ContainerHealth::Healthy,
            detail: None,
        })
        .collect();
    let routes = Arc::new(RouteState::new(Default::default()));
    routes
        .update(RouteTable::build(
            "localhost",
            [RouteApp::new("web")].into_iter(),
            records.iter().map(|record| ("local", record)),
        ))
        .await;
    let listeners = Listeners {
        admin: std::env::var("STRATUS_ADMIN")
            .ok()
            .map(|addr| addr.parse())
            .transpose()?,
        ..Listeners::http(listen)
    };
    let handle = ingress::build(&listeners, routes, ProxyConfig::default(), 2)?.spawn()?;
    println!("web.localhost on {listen} -> {backends:?}");
    tokio::signal::ctrl_c().await?;
    tokio::task::spawn_blocking(move || handle.stop(ingress::Stop::Fast)).await?;
    Ok(())
}
