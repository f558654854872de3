//! The ingress's protocol features on real loopback sockets (127.0.32.x and 127.0.33.x):
//! `/metrics` on the admin port, TLS with a certificate per domain by SNI, HTTP/2 (h2c
//! with prior knowledge and ALPN h2 over TLS), the request body limit, a stale pooled
//! connection sent again, a WebSocket echo and an SSE stream delivered event by event.
//! Clients are raw TCP, tokio-tungstenite and curl.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ingress::routes::RouteTable;
use ingress::{
    BalancerConfig, BoundListeners, BreakerConfig, BreakerState, CertSpec, Listeners, ProxyConfig,
    RouteApp, RouteState, Strategy,
};
use proto::ContainerRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{bind, http_on, ip, record, round_robin, start, stop};

/// App `web` (also at `one.test` and `two.test`) on `backends`.
fn table(backends: &[SocketAddr]) -> RouteTable {
    let records: Vec<ContainerRecord> = backends
        .iter()
        .enumerate()
        .map(|(i, addr)| record(&format!("b{i}"), "web", *addr))
        .collect();
    RouteTable::build(
        "localhost",
        [RouteApp::new("web").with_domains(["one.test", "two.test"])].into_iter(),
        records.iter().map(|r| ("n1", r)),
    )
}

/// Reads one request (head and body, by Content-Length or chunked) from `stream`; `None`
/// when the peer closed first. Returns the head and the raw body (chunk framing included).
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut body = buf.split_off(head_end);
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let done = match length {
            Some(length) => body.len() >= length,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => true,
        };
        if done {
            return Some((head, body));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

/// How a test backend treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// One request per connection (`connection: close`).
    Close,
    /// Keep-alive.
    KeepAlive,
    /// Keep-alive, but a connection's second request is read and never answered: the
    /// connection is closed instead (a backend that gave up on an idle keep-alive
    /// connection just as the proxy reused it).
    DropSecond,
}

/// A backend answering `NAME\nbody N\nends M\n<request head>` after reading the whole
/// request (N raw body bytes, M chunked terminators among them).
/// Aborting its task closes its connections too.
fn spawn_backend(listener: TcpListener, name: &'static str, mode: Conn) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            connections.spawn(async move {
                let mut served = 0;
                while let Some((head, body)) = read_request(&mut stream).await {
                    served += 1;
                    if mode == Conn::DropSecond && served == 2 {
                        return;
                    }
                    // How many chunked-body terminators arrived: more than one poisons the
                    // connection (the extra one reads as the next request).
                    let ends = body.windows(5).filter(|w| *w == b"0\r\n\r\n").count();
                    let body = format!("{name}\nbody {}\nends {ends}\n{head}", body.len());
                    let close = if mode == Conn::Close {
                        "connection: close\r\n"
                    } else {
                        ""
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{close}\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() || mode == Conn::Close {
                        return;
                    }
                }
            });
            // Reap finished connections.
            while connections.try_join_next().is_some() {}
        }
    })
}

async fn backend(ip: Ipv4Addr, name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, spawn_backend(listener, name, Conn::KeepAlive))
}

/// Status line code and the whole answer of a raw HTTP/1.1 exchange that sends `request`
/// and reads to the end (requests say `connection: close`).
async fn raw(proxy: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = common::status_code(&text);
    (status, text)
}

async fn get(proxy: SocketAddr, host: &str) -> (u16, String) {
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    raw(proxy, request.as_bytes()).await
}

/// `curl ARGS`, returning (stdout, stderr, success).
fn curl(args: &[&str]) -> (String, String, bool) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    )
}

async fn scrape(admin: SocketAddr) -> String {
    let (status, text) = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4")
    );
    text
}

/// The value of the sample `line` (metric name and labels exactly) in `text`.
fn sample(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_errors_breakers_and_routes() {
    // One request per connection: no pooled connection to beta outlives it, so every
    // request to it after its death is a connect error.
    let alpha_listener = TcpListener::bind((ip(32, 2), 0)).await.unwrap();
    let alpha = alpha_listener.local_addr().unwrap();
    let alpha_task = spawn_backend(alpha_listener, "alpha", Conn::Close);
    let beta_listener = TcpListener::bind((ip(32, 3), 0)).await.unwrap();
    let beta = beta_listener.local_addr().unwrap();
    let beta_task = spawn_backend(beta_listener, "beta", Conn::Close);
    let routes = Arc::new(RouteState::new(BalancerConfig {
        strategy: Strategy::RoundRobin,
        // Open long enough to be observed at a scrape.
        breaker: BreakerConfig {
            base_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
        ..BalancerConfig::default()
    }));
    routes.update(table(&[alpha, beta])).await;
    let admin_listener = bind(ip(32, 1));
    let admin = admin_listener.local_addr().unwrap();
    let listeners = BoundListeners {
        admin: Some(admin_listener),
        ..http_on(ip(32, 1))
    };
    let proxy = start(listeners, routes.clone(), ProxyConfig::default(), 2);
    let listen = proxy.listen();

    for _ in 0..4 {
        assert_eq!(get(listen, "web.localhost").await.0, 200);
    }
    assert_eq!(get(listen, "nope.localhost").await.0, 404);
    let text = scrape(admin).await;
    assert_eq!(
        sample(
            &text,
            "stratus_ingress_requests_total{app=\"web\",class=\"2xx\"}"
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "stratus_ingress_requests_total{app=\"_none\",class=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "stratus_ingress_request_duration_seconds_count{app=\"web\"}"
        ),
        Some(4.0)
    );
    assert_eq!(sample(&text, "stratus_ingress_route_apps"), Some(1.0));
    assert_eq!(sample(&text, "stratus_ingress_route_backends"), Some(2.0));
    assert_eq!(
        sample(&text, "stratus_ingress_breakers{state=\"open\"}"),
        Some(0.0)
    );

    // Beta dies: connects fail, are retried on alpha and counted, and beta's breaker opens.
    beta_task.abort();
    let _ = beta_task.await;
    let beta_state = || async {
        routes
            .with_balancer("web", |b| {
                b.stats(Instant::now())
                    .find(|s| s.backend.as_str() == "web/n1/b1")
                    .map(|s| s.breaker)
            })
            .await
            .flatten()
    };
    let mut requests = 0;
    while beta_state().await != Some(BreakerState::Open) {
        requests += 1;
        assert!(requests <= 100, "beta's breaker never opened");
        assert_eq!(get(listen, "web.localhost").await.0, 200);
    }
    let text = scrape(admin).await;
    let connect_errors = sample(
        &text,
        "stratus_ingress_upstream_errors_total{app=\"web\",kind=\"connect\"}",
    );
    assert_eq!(connect_errors, Some(5.0), "{text}");
    assert_eq!(
        sample(&text, "stratus_ingress_retries_total{app=\"web\"}"),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            "stratus_ingress_breaker_transitions_total{app=\"web\",from=\"closed\",to=\"open\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "stratus_ingress_breakers{state=\"open\"}"),
        Some(1.0)
    );
    assert_eq!(get(admin, "admin").await.0, 404);

    stop(proxy).await.unwrap();
    alpha_task.abort();
}

/// A self-signed certificate for `domain`, written as `DIR/DOMAIN.pem` and `.key`.
fn self_signed(dir: &Path, domain: &str) -> CertSpec {
    let generated = rcgen::generate_simple_self_signed(vec![domain.to_string()]).unwrap();
    let cert = dir.join(format!("{domain}.pem"));
    let key = dir.join(format!("{domain}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    CertSpec {
        domain: domain.to_string(),
        cert,
        key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_each_domain_its_own_certificate_over_http2() {
    let (alpha, alpha_task) = backend(ip(32, 5), "alpha").await;
    let routes = Arc::new(RouteState::new(round_robin()));
    routes.update(table(&[alpha])).await;
    let dir = tempfile::tempdir().unwrap();
    let one = self_signed(dir.path(), "one.test");
    let two = self_signed(dir.path(), "two.test");
    let tls_listener = bind(ip(32, 4));
    let tls_addr = tls_listener.local_addr().unwrap();
    let listeners = BoundListeners {
        tls: Some((tls_listener, vec![one.clone(), two.clone()])),
        ..http_on(ip(32, 4))
    };
    let proxy = start(listeners, routes.clone(), ProxyConfig::default(), 2);
    let port = tls_addr.port();
    let resolve = |domain: &str| format!("{domain}:{port}:{}", tls_addr.ip());

    for (domain, spec) in [("one.test", &one), ("two.test", &two)] {
        let url = format!("https://{domain}:{port}/");
        let (out, err, ok) = curl(&[
            "--resolve",
            &resolve(domain),
            "--cacert",
            spec.cert.to_str().unwrap(),
            "-w",
            "\nversion=%{http_version} status=%{http_code}",
            &url,
        ]);
        assert!(ok, "{domain}: {err}");
        assert!(out.starts_with("alpha\n"), "{out}");
        assert!(out.ends_with("version=2 status=200"), "{out}");
        let seen = out.to_ascii_lowercase();
        assert!(seen.contains("x-forwarded-proto: https"), "{seen}");
        assert!(
            seen.contains(&format!("x-forwarded-host: {domain}:{port}")),
            "{seen}"
        );
        // HTTP/1.1 by ALPN works too.
        let (out, err, ok) = curl(&[
            "--http1.1",
            "--resolve",
            &resolve(domain),
            "--cacert",
            spec.cert.to_str().unwrap(),
            "-w",
            "\nversion=%{http_version}",
            &url,
        ]);
        assert!(ok && out.ends_with("version=1.1"), "{out} {err}");
    }
    // Each domain gets its own certificate: the other one's CA does not verify it.
    let (_, err, ok) = curl(&[
        "--resolve",
        &resolve("one.test"),
        "--cacert",
        two.cert.to_str().unwrap(),
        &format!("https://one.test:{port}/"),
    ]);
    assert!(!ok, "one.test was served two.test's certificate");
    assert!(err.contains("certificate"), "{err}");

    stop(proxy).await.unwrap();
    alpha_task.abort();
}

#[test]
fn listeners_must_be_distinct_and_free() {
    let taken = std::net::TcpListener::bind((ip(33, 7), 0)).unwrap();
    let busy = taken.local_addr().unwrap();
    let routes = || Arc::new(RouteState::new(round_robin()));
    let error = ingress::build(&Listeners::http(busy), routes(), ProxyConfig::default(), 1)
        .err()
        .unwrap();
    assert!(error.to_string().contains(&busy.to_string()), "{error}");
    // The duplicate is refused before anything is bound.
    let free = SocketAddr::new(IpAddr::V4(ip(33, 7)), 0);
    let twice = Listeners {
        admin: Some(free),
        ..Listeners::http(free)
    };
    let error = ingress::build(&twice, routes(), ProxyConfig::default(), 1)
        .err()
        .unwrap();
    assert!(error.to_string().contains("two listeners"), "{error}");
}

#[test]
fn certificate_files_are_checked_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let one = self_signed(dir.path(), "one.test");
    let two = self_signed(dir.path(), "two.test");
    assert!(ingress::tls::SniResolver::load(std::slice::from_ref(&one)).is_ok());
    let mismatched = CertSpec {
        key: two.key.clone(),
        ..one.clone()
    };
    let error = ingress::tls::SniResolver::load(&[mismatched]).unwrap_err();
    assert!(error.to_string().contains("does not fit"), "{error}");
    let missing = CertSpec {
        key: dir.path().join("nope.key"),
        ..one.clone()
    };
    let error = ingress::tls::SniResolver::load(&[missing]).unwrap_err();
    assert!(error.to_string().contains("nope.key"), "{error}");
    let swapped = CertSpec {
        cert: one.key.clone(),
        key: one.cert.clone(),
        ..one
    };
    assert!(ingress::tls::SniResolver::load(&[swapped]).is_err());
    assert!(ingress::tls::SniResolver::load(&[]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_on_the_plain_listener() {
    let (alpha, alpha_task) = backend(ip(32, 7), "alpha").await;
    let routes = Arc::new(RouteState::new(round_robin()));
    routes.update(table(&[alpha])).await;
    let proxy = start(http_on(ip(32, 6)), routes, ProxyConfig::default(), 2);
    let listen = proxy.listen();
    let url = format!("http://web.localhost:{}/", listen.port());
    let resolve = format!("web.localhost:{}:{}", listen.port(), listen.ip());
    let (out, err, ok) = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &resolve,
        "-w",
        "\nversion=%{http_version} status=%{http_code}",
        &url,
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("alpha\n"), "{out}");
    assert!(out.ends_with("version=2 status=200"), "{out}");
    // HTTP/1.1 on the same listener still works.
    let (out, _, ok) = curl(&[
        "--resolve",
        &resolve,
        "-w",
        "\nversion=%{http_version}",
        &url,
    ]);
    assert!(ok && out.ends_with("version=1.1"), "{out}");

    stop(proxy).await.unwrap();
    alpha_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_declared_or_chunked() {
    let (alpha, alpha_task) = backend(ip(32, 9), "alpha").await;
    let routes = Arc::new(RouteState::new(round_robin()));
    routes.update(table(&[alpha])).await;
    let limit: usize = 64 * 1024;
    let config = ProxyConfig {
        max_body_bytes: limit as u64,
        ..ProxyConfig::default()
    };
    let proxy = start(http_on(ip(32, 8)), routes.clone(), config, 2);
    let listen = proxy.listen();

    // At the limit: passed on whole.
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nhost: web.localhost\r\ncontent-length: {limit}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'x', limit));
    let (status, text) = raw(listen, &request).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&format!("body {limit}")), "{text}");

    // Declared over the limit: refused before any byte of the body is read.
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: web.localhost\r\ncontent-length: {}\r\n\r\n",
        limit + 1
    );
    let (status, text) = raw(listen, head.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains(&format!("at most {limit} bytes")), "{text}");

    // Chunked: refused once the streamed body passes the limit. The terminating chunk is
    // never sent: the answer must come from the ingress, not from the end of the body.
    let mut stream = TcpStream::connect(listen).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: web.localhost\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    let piece = vec![b'y'; 16 * 1024];
    let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
    chunk.extend_from_slice(&piece);
    chunk.extend_from_slice(b"\r\n");
    for _ in 0..5 {
        // The ingress may answer and close before the last pieces: stop writing then.
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains(&format!("at most {limit} bytes")), "{text}");

    // Neither is held against the backend.
    let state = routes
        .with_balancer("web", |b| {
            b.stats(Instant::now())
                .map(|s| (s.breaker, s.outstanding))
                .collect::<Vec<_>>()
        })
        .await;
    assert_eq!(state, Some(vec![(BreakerState::Closed, 0)]));
    let metrics = String::from_utf8(proxy.metrics().render()).unwrap();
    assert_eq!(
        sample(
            &metrics,
            "stratus_ingress_requests_total{app=\"web\",class=\"4xx\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(!metrics.contains("upstream_errors_total{"), "{metrics}");

    stop(proxy).await.unwrap();
    alpha_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooled_connection_is_sent_again_on_a_fresh_one() {
    // One backend only: there is no other backend to retry on, so only a fresh connection
    // to the same backend can save the request.
    let listener = TcpListener::bind((ip(32, 11), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = spawn_backend(listener, "alpha", Conn::DropSecond);
    let routes = Arc::new(RouteState::new(round_robin()));
    routes.update(table(&[addr])).await;
    let proxy = start(
        http_on(ip(32, 10)),
        routes.clone(),
        ProxyConfig::default(),
        2,
    );
    let listen = proxy.listen();
    for round in 0..6 {
        let (status, text) = get(listen, "web.localhost").await;
        assert_eq!(status, 200, "request {round}: {text}");
    }
    let metrics = String::from_utf8(proxy.metrics().render()).unwrap();
    let stale = sample(
        &metrics,
        "stratus_ingress_upstream_errors_total{app=\"web\",kind=\"stale\"}",
    );
    assert!(stale.is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(!metrics.contains("kind=\"broken\""), "{metrics}");
    let breaker = routes
        .with_balancer("web", |b| b.stats(Instant::now()).map(|s| s.breaker).next())
        .await
        .flatten();
    assert_eq!(breaker, Some(BreakerState::Closed));

    stop(proxy).await.unwrap();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_the_ingress() {
    let listener = TcpListener::bind((ip(33, 2), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        if ws.send(message).await.is_err() {
                            return;
                        }
                    } else if message.is_close() {
                        return;
                    }
                }
            });
        }
    });
    let routes = Arc::new(RouteState::new(round_robin()));
    routes.update(table(&[addr])).await;
    let proxy = start(
        http_on(ip(33, 1)),
        routes.clone(),
        ProxyConfig::default(),
        2,
    );
    let stream = TcpStream::connect(proxy.listen()).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://web.localhost/chat", stream)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 101);
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    // Past the body limit in total: an upgraded stream is not a request body.
    let big = vec![7u8; 600 * 1024];
    for _ in 0..20 {
        ws.send(Message::binary(big.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.len(), big.len());
    }
    ws.close(None).await.unwrap();

    stop(proxy).await.unwrap();
    echo.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one_as_they_are_sent() {
    // The backend sends event N+1 only once the client has received event N through the
    // ingress: any buffering in the ingress would stall the stream and hit the timeout.
    let listener = TcpListener::bind((ip(33, 4), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<u32>();
    const EVENTS: u32 = 10;
    let feed = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        for n in 0..EVENTS {
            let event = format!("id: {n}\ndata: event {n}\n\n");
            stream
                .write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
                .await
                .unwrap();
            stream.flush().await.unwrap();
            // Wait for the client to have seen it.
            assert_eq!(ack_rx.recv().await, Some(n));
        }
        stream.write_all(b"0\r\n\r\n").await.unwrap();
    });
    let routes = Arc::new(RouteState::new(round_robin()));
    routes.update(table(&[addr])).await;
    let proxy = start(http_on(ip(33, 3)), routes, ProxyConfig::default(), 2);

    let deadline = Duration::from_secs(60);
    let client = async {
        let mut stream = TcpStream::connect(proxy.listen()).await.unwrap();
        stream
            .write_all(
                b"GET /events HTTP/1.1\r\nhost: web.localhost\r\naccept: text/event-stream\r\n\r\n",
            )
            .await
            .unwrap();
        let mut seen = String::new();
        let mut chunk = [0u8; 4096];
        for n in 0..EVENTS {
            let wanted = format!("data: event {n}\n\n");
            while !seen.contains(&wanted) {
                let read = stream.read(&mut chunk).await.unwrap();
                assert!(read > 0, "stream ended before event {n}: {seen}");
                seen.push_str(&String::from_utf8_lossy(&chunk[..read]));
            }
            assert!(
                !seen.contains(&format!("data: event {}\n", n + 1)),
                "event {} arrived before it was sent",
                n + 1
            );
            ack_tx.send(n).unwrap();
        }
        seen
    };
    let seen = tokio::time::timeout(deadline, client)
        .await
        .expect("the events did not stream through the ingress one by one");
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
    feed.await.unwrap();

    stop(proxy).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_of_unknown_length_leaves_the_pooled_connection_clean() {
    // One keep-alive backend and one proxy thread (one upstream pool): every request
    // reuses the connection the upload used.
    let (alpha, alpha_task) = backend(ip(33, 6), "alpha").await;
    let routes = Arc::new(RouteState::new(round_robin()));
    routes.update(table(&[alpha])).await;
    let proxy = start(http_on(ip(33, 5)), routes, ProxyConfig::default(), 1);
    let listen = proxy.listen();
    let url = format!("http://web.localhost:{}/upload", listen.port());
    let resolve = format!("web.localhost:{}:{}", listen.port(), listen.ip());
    // `-T -` streams stdin: no Content-Length, so HTTP/2 DATA frames become a chunked
    // body upstream.
    let mut upload = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-T",
            "-",
        ])
        .args(["--resolve", &resolve, &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = upload.stdin.take().unwrap();
        stdin.write_all(&[b'z'; 5000]).unwrap();
    }
    let output = upload.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(text.starts_with("alpha\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("\nends 1\n"), "{text}");
    for _ in 0..3 {
        let (status, text) = get(listen, "web.localhost").await;
        assert_eq!(status, 200, "{text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        assert!(
            body.starts_with("alpha\nbody 0\nends 0\nget / http/1.1"),
            "{body}"
        );
    }

    stop(proxy).await.unwrap();
    alpha_task.abort();
}
