//! The Pingora proxy on real loopback sockets (127.0.41.x): two tiny backends that answer
//! with their name and the headers they received, and raw HTTP/1.1 clients.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ingress::routes::RouteTable;
use ingress::{
    BalancerConfig, BreakerConfig, BreakerState, IngressHandle, ProxyConfig, RouteApp, RouteState,
    Strategy,
};
use proto::{ContainerHealth, ContainerRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use tokio::time::Instant;

mod common;
use common::{http_on, record, round_robin, start, stop, wait_for};

const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 41, 1);

/// A backend answering every request with `NAME\n` followed by the request's headers.
struct TestBackend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestBackend {
    async fn start(name: &'static str, ip: Ipv4Addr) -> TestBackend {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let body = format!("{name}\n{head}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        TestBackend { addr, task }
    }

    /// Closes the listener: connections are refused from now on.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn get(proxy: SocketAddr, host: &str, extra: &str) -> Answer {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request =
        format!("GET /hello HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn record_with(id: &str, app: &str, addr: SocketAddr, health: ContainerHealth) -> ContainerRecord {
    ContainerRecord {
        health,
        ..record(id, app, addr)
    }
}

fn table(records: &[ContainerRecord]) -> RouteTable {
    RouteTable::build(
        "localhost",
        [RouteApp::new("web"), RouteApp::new("sick")].into_iter(),
        records.iter().map(|r| ("n1", r)),
    )
}

/// Starts the proxy on 2 threads; it accepts from the start.
fn start_proxy_for_test(routes: Arc<RouteState>) -> IngressHandle {
    start(http_on(PROXY_IP), routes, ProxyConfig::default(), 2)
}

/// Round-robin, with breakers that stay open long enough to be observed.
fn slow_breakers() -> BalancerConfig {
    BalancerConfig {
        strategy: Strategy::RoundRobin,
        breaker: BreakerConfig {
            base_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
        ..BalancerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_balances_forwards_headers_and_answers_404_and_503() {
    let alpha = TestBackend::start("alpha", Ipv4Addr::new(127, 0, 41, 2)).await;
    let beta = TestBackend::start("beta", Ipv4Addr::new(127, 0, 41, 3)).await;
    let routes = Arc::new(RouteState::new(round_robin()));
    routes
        .update(table(&[
            record("a", "web", alpha.addr),
            record("b", "web", beta.addr),
            record_with("s", "sick", alpha.addr, ContainerHealth::Unhealthy),
        ]))
        .await;
    let proxy = start_proxy_for_test(routes.clone());
    let listen = proxy.listen();

    // Both backends get traffic.
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..40 {
        let answer = get(listen, "web.localhost", "").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let name = answer.body.lines().next().unwrap_or_default().to_string();
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains_key("alpha") && seen.contains_key("beta"));

    // Forwarding headers arrive; a client's request id is kept and echoed back.
    let answer = get(
        listen,
        "WEB.localhost:8080",
        "x-request-id: abc-123\r\nx-forwarded-for: 198.51.100.7\r\n",
    )
    .await;
    let body = answer.body.to_ascii_lowercase();
    assert!(
        body.contains("x-forwarded-for: 198.51.100.7, 127.0.0.1"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(
        body.contains("x-forwarded-host: web.localhost:8080"),
        "{body}"
    );
    assert!(body.contains("x-request-id: abc-123"), "{body}");
    assert_eq!(answer.headers["x-request-id"], "abc-123");
    // Without one, an id is generated.
    let answer = get(listen, "web.localhost", "").await;
    let generated = &answer.headers["x-request-id"];
    assert_eq!(generated.len(), 32);
    assert!(answer.body.contains(generated.as_str()));

    // Unknown host: 404 page.
    let answer = get(listen, "nope.localhost", "").await;
    assert_eq!(answer.status, 404);
    assert!(answer.body.contains("Not found"));

    // Known app, only unhealthy replicas: 503 with Retry-After.
    let answer = get(listen, "sick.localhost", "").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["retry-after"], "5");
    assert!(answer.body.contains("Service unavailable"));

    // No request is left outstanding: every pick got its on_end.
    let outstanding = routes
        .with_balancer("web", |b| {
            b.stats(Instant::now()).map(|s| s.outstanding).sum::<u32>()
        })
        .await;
    assert_eq!(outstanding, Some(0));

    stop(proxy).await.unwrap();
    alpha.kill().await;
    beta.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_retried_around_and_ejected() {
    let alpha = TestBackend::start("alpha", Ipv4Addr::new(127, 0, 41, 4)).await;
    let beta = TestBackend::start("beta", Ipv4Addr::new(127, 0, 41, 5)).await;
    let routes = Arc::new(RouteState::new(slow_breakers()));
    routes
        .update(table(&[
            record("a", "web", alpha.addr),
            record("b", "web", beta.addr),
        ]))
        .await;
    let proxy = start_proxy_for_test(routes.clone());
    let listen = proxy.listen();
    assert_eq!(get(listen, "web.localhost", "").await.status, 200);

    beta.kill().await;
    let beta_state = || async {
        routes
            .with_balancer("web", |b| {
                b.stats(Instant::now())
                    .find(|s| s.backend.as_str() == "web/n1/b")
                    .map(|s| s.breaker)
            })
            .await
            .flatten()
    };
    let mut requests = 0;
    while beta_state().await != Some(BreakerState::Open) {
        requests += 1;
        assert!(requests <= 200, "the dead backend was never ejected");
        let answer = get(listen, "web.localhost", "").await;
        assert_eq!(answer.status, 200, "request {requests}: {}", answer.body);
        assert!(answer.body.starts_with("alpha"));
    }
    // Ejected: everything goes to alpha, without retries.
    for _ in 0..10 {
        let answer = get(listen, "web.localhost", "").await;
        assert_eq!(answer.status, 200);
        assert!(answer.body.starts_with("alpha"));
    }

    stop(proxy).await.unwrap();
    alpha.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_update_is_used_without_restart() {
    let alpha = TestBackend::start("alpha", Ipv4Addr::new(127, 0, 41, 6)).await;
    let beta = TestBackend::start("beta", Ipv4Addr::new(127, 0, 41, 7)).await;
    let routes = Arc::new(RouteState::new(round_robin()));
    let first = record("a", "web", alpha.addr);
    routes.update(table(std::slice::from_ref(&first))).await;
    let proxy = start_proxy_for_test(routes.clone());
    let listen = proxy.listen();
    for _ in 0..5 {
        assert!(
            get(listen, "web.localhost", "")
                .await
                .body
                .starts_with("alpha")
        );
    }

    routes
        .update(table(&[first, record("b", "web", beta.addr)]))
        .await;
    wait_for(
        || async {
            get(listen, "web.localhost", "")
                .await
                .body
                .starts_with("beta")
        },
        Duration::from_secs(10),
    )
    .await;

    stop(proxy).await.unwrap();
    alpha.kill().await;
    beta.kill().await;
}

/// Callers told apart by their loopback address, as the agent tells containers apart by
/// their tenant network.
struct ByAddress;

impl ingress::Callers for ByAddress {
    fn caller(&self, client: std::net::IpAddr) -> ingress::Caller {
        match client.to_string().as_str() {
            "127.0.41.11" => ingress::Caller::Tenant("acme".into()),
            "127.0.41.12" => ingress::Caller::Tenant("globex".into()),
            "127.0.41.13" => ingress::Caller::Anyone,
            _ => ingress::Caller::Stranger,
        }
    }
}

/// `GET /` for `host`, sent from `source`: the status and body.
async fn get_from(source: Ipv4Addr, proxy: SocketAddr, host: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let mut stream = socket.connect(proxy).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = common::status_code(&text);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_string())
}

/// The node-local balancer's routes: `APP.internal`, each caller kept to its tenant's apps
/// (another's answers exactly as an absent one), an unknown caller refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_proxy_keeps_each_caller_to_its_tenants_apps() {
    let alpha = TestBackend::start("alpha", Ipv4Addr::new(127, 0, 41, 8)).await;
    let beta = TestBackend::start("beta", Ipv4Addr::new(127, 0, 41, 9)).await;
    let routes = Arc::new(RouteState::new(round_robin()).scoped_by(Arc::new(ByAddress)));
    let (a, b) = (
        record("a", "api", alpha.addr),
        record("b", "shop", beta.addr),
    );
    routes
        .update(RouteTable::build(
            ingress::routes::INTERNAL_DOMAIN,
            [
                RouteApp::new("api").of_tenant("acme"),
                RouteApp::new("shop").of_tenant("globex"),
            ]
            .into_iter(),
            [("n1", &a), ("n1", &b)],
        ))
        .await;
    let proxy = start_proxy_for_test(routes);
    let listen = proxy.listen();
    let acme = Ipv4Addr::new(127, 0, 41, 11);
    let globex = Ipv4Addr::new(127, 0, 41, 12);
    let host = Ipv4Addr::new(127, 0, 41, 13);

    let (status, body) = get_from(acme, listen, "api.internal").await;
    assert_eq!((status, body.lines().next()), (200, Some("alpha")));
    let (status, body) = get_from(globex, listen, "shop.internal").await;
    assert_eq!((status, body.lines().next()), (200, Some("beta")));
    let absent = get_from(acme, listen, "nope.internal").await;
    assert_eq!(absent.0, 404);
    assert_eq!(get_from(acme, listen, "shop.internal").await, absent);
    assert_eq!(get_from(globex, listen, "api.internal").await, absent);
    for app in ["api", "shop"] {
        let (status, _) = get_from(host, listen, &format!("{app}.internal")).await;
        assert_eq!(status, 200, "{app} from the host");
    }
    let (status, body) = get_from(Ipv4Addr::new(127, 0, 41, 14), listen, "api.internal").await;
    assert_eq!(status, 403, "{body}");

    stop(proxy).await.unwrap();
    alpha.kill().await;
    beta.kill().await;
}
