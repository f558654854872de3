//! `api::serve` on a real socket: what hyper answers to oversized and overfull request heads
//! (431), what a client address past its connection cap gets (its connection closed,
//! unread), and HTTPS with a certificate of a test CA (a client without the CA is refused).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::ServeLimits;
use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// `api::serve` of a one-route router on port 0; the server stops when the sender drops.
async fn start(
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/", get(|| async { "ok" }));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(api::serve(listener, router, limits, tls, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Sends `head` (and the blank line) on a new connection; the status line of the answer.
async fn status_of(addr: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn head_with(headers: usize, value_bytes: usize) -> String {
    let mut head = "GET / HTTP/1.1\r\nhost: test".to_string();
    for index in 1..headers {
        head.push_str(&format!("\r\nx-h{index}: {}", "a".repeat(value_bytes)));
    }
    head
}

#[tokio::test]
async fn heads_over_16_kib_or_64_headers_get_431() {
    let (addr, _stop) = start(ServeLimits::default(), None).await;
    assert_eq!(status_of(addr, &head_with(64, 10)).await, "HTTP/1.1 200 OK");
    assert_eq!(
        status_of(addr, &head_with(65, 10)).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // One header of 15,000 bytes fits; of 17,000 it does not.
    assert_eq!(
        status_of(addr, &head_with(2, 15_000)).await,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        status_of(addr, &head_with(2, 17_000)).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Many small headers adding up past 16 KiB.
    assert_eq!(
        status_of(addr, &head_with(60, 300)).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

/// Whether the server closed `stream` without an answer.
async fn closed_unanswered(stream: &mut TcpStream) -> bool {
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await;
    let mut answer = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("the connection neither answered nor closed"),
    }
}

/// Sends a request on `stream` (kept alive) and reads the answer's first bytes.
async fn answered(stream: &mut TcpStream) -> bool {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    // The whole answer (it is small), so the next one starts afresh.
    let mut answer = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer[..read].starts_with(b"HTTP/1.1 200")
}

#[tokio::test]
async fn a_client_address_past_its_connection_cap_is_closed_unanswered() {
    let limits = ServeLimits {
        max_connections_per_ip: 2,
        ..ServeLimits::default()
    };
    let (addr, _stop) = start(limits, None).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(answered(&mut first).await);
    assert!(answered(&mut second).await);
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(closed_unanswered(&mut third).await, "a third connection");
    // Once one closes, the address may open another.
    drop(first);
    let mut reopened = false;
    for _ in 0..50 {
        let mut next = TcpStream::connect(addr).await.unwrap();
        if !closed_unanswered(&mut next).await {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reopened,
        "the slot of a closed connection was not given back"
    );
    assert!(answered(&mut second).await, "the open ones go on");
}

/// A CA, and a certificate it signed for 127.0.0.1 with its key (PEM).
fn test_pki() -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stratus test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

#[tokio::test]
async fn https_with_the_ca_and_refused_without() {
    let (ca, cert, key) = test_pki();
    let tls = api::tls::server_config(cert.as_bytes(), key.as_bytes(), "cert", "key").unwrap();
    let (addr, _stop) = start(ServeLimits::default(), Some(tls)).await;
    let url = format!("https://{addr}/");

    let trusting = api::client::http_client(Some(("ca.pem", ca.as_bytes()))).unwrap();
    let answer = trusting.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "ok");

    let stranger = api::client::http_client(None).unwrap();
    let err = stranger.get(&url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(
        format!("{err:?}").contains("UnknownIssuer"),
        "refused for its issuer: {err:?}"
    );
    // Plain HTTP on the TLS port gets no answer.
    assert!(
        trusting
            .get(format!("http://{addr}/"))
            .send()
            .await
            .is_err()
    );

    // Bad PEM says which file.
    let err = api::tls::server_config(b"junk", key.as_bytes(), "cert.pem", "key.pem").unwrap_err();
    assert!(err.to_string().contains("cert.pem"), "{err}");
    let err = api::client::http_client(Some(("ca.pem", b"junk"))).unwrap_err();
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

#[tokio::test]
async fn a_stream_still_open_after_the_grace_is_dropped_when_the_server_stops() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A body that never ends, like a followed log or the event stream.
    let router = Router::new().route(
        "/",
        get(|| async {
            let forever = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
            axum::body::Body::from_stream(forever)
        }),
    );
    let limits = ServeLimits {
        shutdown_grace: Duration::from_millis(200),
        ..ServeLimits::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, router, limits, None, async move {
        let _ = stopped.await;
    }));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let read = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..read]).starts_with("HTTP/1.1 200"));
    drop(stop);
    server.await.unwrap().unwrap();
    // The connection is closed: the client reads the end, not a silence that never ends.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stream outlived the server");
}
