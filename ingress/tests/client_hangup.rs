//! A client that hangs up while its request is at a backend (127.0.253.x): the backend did
//! nothing wrong, so its breaker must not count a failure and the request must not be sent
//! to another backend.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ingress::routes::RouteTable;
use ingress::{BalancerConfig, BreakerState, ProxyConfig, RouteApp, RouteState, Strategy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

mod common;
use common::{http_on, record, start, wait_for};

const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 253, 1);

/// A backend that reads a request head, counts it and never answers.
async fn silent_backend(ip: Ipv4Addr, heads: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        heads.fetch_add(1, Ordering::SeqCst);
                        buf.clear();
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_is_no_backend_failure_and_no_retry() {
    let heads = Arc::new(AtomicUsize::new(0));
    let one = silent_backend(Ipv4Addr::new(127, 0, 253, 2), heads.clone()).await;
    let two = silent_backend(Ipv4Addr::new(127, 0, 253, 3), heads.clone()).await;
    let routes = Arc::new(RouteState::new(BalancerConfig {
        strategy: Strategy::RoundRobin,
        ..BalancerConfig::default()
    }));
    let records = [record("one", "web", one), record("two", "web", two)];
    routes
        .update(RouteTable::build(
            "localhost",
            std::iter::once(RouteApp::new("web")),
            records.iter().map(|r| ("n1", r)),
        ))
        .await;
    let proxy = start(http_on(PROXY_IP), routes.clone(), ProxyConfig::default(), 2);
    let listen = proxy.listen();

    // More hang-ups than the breaker's threshold (5), alternating between the backends.
    let hangups = 12;
    for sent in 1..=hangups {
        let mut client = TcpStream::connect(listen).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: web.localhost\r\n\r\n")
            .await
            .unwrap();
        wait_for(
            || async { heads.load(Ordering::SeqCst) >= sent },
            Duration::from_secs(10),
        )
        .await;
        drop(client);
    }
    // Every attempt has ended.
    wait_for(
        || async {
            routes
                .with_balancer("web", |b| {
                    b.stats(Instant::now()).all(|s| s.outstanding == 0)
                })
                .await
                .unwrap()
        },
        Duration::from_secs(10),
    )
    .await;

    assert_eq!(
        heads.load(Ordering::SeqCst),
        hangups,
        "a request whose client left was sent again"
    );
    let states: Vec<BreakerState> = routes
        .with_balancer("web", |b| {
            b.stats(Instant::now()).map(|s| s.breaker).collect()
        })
        .await
        .unwrap();
    assert!(
        states.iter().all(|s| *s == BreakerState::Closed),
        "{states:?}"
    );
    tokio::task::spawn_blocking(move || proxy.stop(ingress::Stop::Fast))
        .await
        .unwrap();
}
