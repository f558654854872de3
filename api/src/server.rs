//! Serves a router on a listener the caller bound: HTTP/1.1, over TLS when given a rustls
//! config, with a header-read timeout, caps on the request head, on open connections and
//! on connections per client address, and a graceful shutdown that gives open requests a
//! bounded time.
//!
//! What the caps answer:
//! - a request head over [`ServeLimits::max_header_bytes`] or with more than
//!   [`ServeLimits::max_headers`] headers: hyper answers `431 Request Header Fields Too
//!   Large` and closes the connection;
//! - a client address with [`ServeLimits::max_connections_per_ip`] connections open: the
//!   next one is closed at once, unread (no answer: answering costs what the cap saves, and
//!   over TLS it would take a handshake first);
//! - [`ServeLimits::max_connections`] open in all: the next ones wait in the listen backlog.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, warn};

/// Connection-level limits: what the router's layers cannot see.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A client that has not sent its whole request head (or finished its TLS handshake)
    /// by then is dropped (slowloris).
    pub header_read_timeout: Duration,
    /// More connections wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Connections one client address may hold open; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Largest request head (request line and headers), in bytes: larger ones get a 431.
    /// hyper's read buffer, so at least 8192.
    pub max_header_bytes: usize,
    /// Most headers in a request: more get a 431.
    pub max_headers: usize,
    /// Open requests (followed logs never end) get this long after shutdown begins.
    pub shutdown_grace: Duration,
}

/// The smallest read buffer hyper accepts.
const MIN_HEADER_BYTES: usize = 8192;

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_ip: 256,
            max_header_bytes: 16 << 10,
            max_headers: 64,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Open connections per client address.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address; counted down when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(table: &Arc<PerAddress>, ip: IpAddr, cap: usize) -> Option<AddressSlot> {
        let mut open = table.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests finish
/// for `shutdown_grace` and drops those that have not.
/// With `tls`, every connection is TLS (HTTP/1.1 inside).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    // Connections still open when the grace ends (a followed log, the event stream) are
    // dropped then: a stopped server must not keep answering from tasks of its own, as it
    // would inside a process that goes on (the in-process test cluster).
    let closing = tokio_util::sync::CancellationToken::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let tls = tls.map(TlsAcceptor::from);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .max_headers(limits.max_headers);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Running out of file descriptors must not kill the API.
                    warn!(error = %err, "cannot accept API connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = PerAddress::take(&per_address, peer.ip(), limits.max_connections_per_ip)
        else {
            debug!(%peer, cap = limits.max_connections_per_ip, "too many API connections from one address: closed");
            drop(stream);
            continue;
        };
        let router = router.clone();
        let tls = tls.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        let closing = closing.clone();
        tokio::spawn(closing.run_until_cancelled_owned(async move {
            let _held = (permit, slot);
            let service = service_for(router, peer);
            let served = match tls {
                None => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
                Some(acceptor) => {
                    // The handshake is part of the head: a client that stalls in it is
                    // dropped after the same timeout.
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                            .await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            debug!(%peer, error = %err, "API TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "API TLS handshake timed out");
                            return;
                        }
                    };
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
            };
            if let Err(err) = served {
                debug!(%peer, error = %err, "API connection ended with an error");
            }
        }));
    }
    let _ = tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await;
    closing.cancel();
    Ok(())
}

/// The router as a hyper service that records the peer's address (the audit log records
/// who called from where; the rate limit keys unauthenticated calls by it).
fn service_for(
    router: Router,
    peer: SocketAddr,
) -> TowerToHyperService<
    impl tower::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone,
> {
    TowerToHyperService::new(router.map_request(
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            request
        },
    ))
}
