//! The Pingora servers around [`crate::proxy::Proxy`]: built by [`build`] (or [`run`] for
//! a plain listener alone), started on threads of their own (Pingora builds its own
//! runtimes and must not be started inside a tokio runtime), stopped through
//! [`IngressHandle`].
//!
//! An ingress serves plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge, "h2c"), TLS
//! with a certificate per domain by SNI (HTTP/2 or HTTP/1.1 by ALPN), and the admin port
//! serving `/metrics`.
//!
//! Each proxy thread is a Pingora server of its own, with one thread, its own upstream
//! connection pool and its own listening sockets (`SO_REUSEPORT`: the kernel spreads new
//! connections over them), as nginx's workers are. One Pingora service on several threads
//! shares one pool and one work-stealing scheduler instead: pooled connections and the
//! tasks that watch them move between threads, at the price of a cross-thread wake-up on
//! most requests (and without work stealing the pool loses connections to a race, pingora
//! issue 998). `testbed bench ingress` measures the difference. Servers, not services of
//! one server: a Pingora server keeps one socket per address string for all its services
//! (for graceful upgrades), so two services on one address would own the same file
//! descriptor and close it twice. [`build`] still refuses an address another ingress
//! holds (it first binds each address with a plain socket); [`run`] does not check, so
//! there a second ingress on the same address would share the port. With port 0 each
//! thread would get a port of its own, so there is one thread then.
//!
//! Pingora defaults that do not suit us, set here: `threads` is 1 (ours are servers); a graceful
//! stop sleeps `grace_period_seconds` (default 300 s), set to [`GRACE_PERIOD_SECS`]; the
//! Unix signal handlers are not installed, the caller decides when to stop. A listener
//! that cannot bind panics on Pingora's thread, so [`build`] tries every address first.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{
    Fds, ListenFds, RunArgs, RuntimeOpts, Server, ShutdownSignal, ShutdownSignalWatch,
    ShutdownWatch,
};
use pingora_core::services::listening::Service;
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::metrics::{self, Metrics};
use crate::proxy::{Proxy, ProxyConfig, RouteState};
use crate::tls::{CertSpec, SniResolver};

/// Seconds a graceful stop keeps serving requests in flight before the runtimes stop.
pub const GRACE_PERIOD_SECS: u64 = 2;

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop accepting, let requests in flight finish for [`GRACE_PERIOD_SECS`], then stop.
    Graceful,
    /// Stop now.
    Fast,
}

/// Where an ingress listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// Plain HTTP: HTTP/1.1, and HTTP/2 from clients that start with its preface (h2c
    /// with prior knowledge).
    pub http: SocketAddr,
    /// HTTPS, if any.
    pub tls: Option<TlsListener>,
    /// The admin port serving `/metrics`, if any.
    pub admin: Option<SocketAddr>,
}

impl Listeners {
    /// Plain HTTP on `http` alone.
    pub fn http(http: SocketAddr) -> Listeners {
        Listeners {
            http,
            tls: None,
            admin: None,
        }
    }
}

/// A TLS listener and its certificates; the first is the default for clients that send
/// no SNI (or one we hold no certificate for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub certs: Vec<CertSpec>,
}

/// A built, not yet started ingress: a server per proxy thread, the first one also
/// serving the admin port.
pub struct Ingress {
    servers: Vec<Server>,
    listen: SocketAddr,
    metrics: Arc<Metrics>,
}

/// Builds the Pingora server that proxies `listen` with the routes of `routes`, on
/// `threads` worker threads (at least 1): plain HTTP only, no admin port. Start it with
/// [`Ingress::spawn`].
pub fn run(
    listen: SocketAddr,
    routes: Arc<RouteState>,
    config: ProxyConfig,
    threads: usize,
) -> Ingress {
    let metrics = routes.metrics().clone();
    let listeners = Listeners::http(listen);
    let servers = (0..proxy_threads(&listeners, threads))
        .map(|_| {
            let mut server = new_server();
            let service = proxy_service(&server, &listeners, routes.clone(), &config, None);
            server.add_service(service);
            server
        })
        .collect();
    Ingress {
        servers,
        listen,
        metrics,
    }
}

/// Builds the Pingora server for every listener of `listeners`. Fails if a certificate
/// cannot be loaded or an address cannot be bound.
pub fn build(
    listeners: &Listeners,
    routes: Arc<RouteState>,
    config: ProxyConfig,
    threads: usize,
) -> Result<Ingress, Error> {
    let mut addrs = vec![listeners.http];
    addrs.extend(listeners.tls.as_ref().map(|tls| tls.addr));
    addrs.extend(listeners.admin);
    for (i, addr) in addrs.iter().enumerate() {
        if addrs[..i].contains(addr) {
            return Err(Error::Listen {
                addr: addr.to_string(),
                reason: "given for two listeners".to_string(),
            });
        }
    }
    for addr in addrs {
        // Pingora binds later, on its own thread, and panics there if it cannot: find out
        // now, with an error the caller can report.
        std::net::TcpListener::bind(addr).map_err(|error| Error::Listen {
            addr: addr.to_string(),
            reason: error.to_string(),
        })?;
    }
    assemble(
        listeners,
        routes,
        config,
        proxy_threads(listeners, threads),
        None,
    )
}

/// As [`build`], without first checking that each address is free: for a process that
/// holds its ports with `SO_REUSEPORT` sockets of its own until the servers bind them
/// (`testbed bench ingress` does), which that check would take as taken.
pub fn build_reusing(
    listeners: &Listeners,
    routes: Arc<RouteState>,
    config: ProxyConfig,
    threads: usize,
) -> Result<Ingress, Error> {
    assemble(
        listeners,
        routes,
        config,
        proxy_threads(listeners, threads),
        None,
    )
}

/// Listening sockets the caller has bound already (on port 0, say), handed to
/// [`build_bound`]: no address is given up and bound again, so none can be taken meanwhile.
#[derive(Debug)]
pub struct BoundListeners {
    pub http: std::net::TcpListener,
    /// HTTPS, and its certificates (the first is the default).
    pub tls: Option<(std::net::TcpListener, Vec<CertSpec>)>,
    pub admin: Option<std::net::TcpListener>,
}

/// As [`build`], on sockets the caller has bound. Every proxy thread accepts on the same
/// sockets (one accept queue, not one per thread as with `SO_REUSEPORT`), so any number
/// of threads works with port 0.
pub fn build_bound(
    bound: BoundListeners,
    routes: Arc<RouteState>,
    config: ProxyConfig,
    threads: usize,
) -> Result<Ingress, Error> {
    let local = |listener: &std::net::TcpListener| {
        listener.local_addr().map_err(|error| Error::Listen {
            addr: format!("{listener:?}"),
            reason: error.to_string(),
        })
    };
    let listeners = Listeners {
        http: local(&bound.http)?,
        tls: match &bound.tls {
            Some((listener, certs)) => Some(TlsListener {
                addr: local(listener)?,
                certs: certs.clone(),
            }),
            None => None,
        },
        admin: bound.admin.as_ref().map(local).transpose()?,
    };
    let mut sockets = vec![(listeners.http, bound.http)];
    if let (Some(tls), Some((listener, _))) = (&listeners.tls, bound.tls) {
        sockets.push((tls.addr, listener));
    }
    if let (Some(addr), Some(listener)) = (listeners.admin, bound.admin) {
        sockets.push((addr, listener));
    }
    assemble(&listeners, routes, config, threads.max(1), Some(&sockets))
}

/// The servers of an ingress. With `bound`, each server gets its own duplicate of every
/// bound socket (a Pingora listener owns and closes its descriptor) instead of binding.
fn assemble(
    listeners: &Listeners,
    routes: Arc<RouteState>,
    config: ProxyConfig,
    threads: usize,
    bound: Option<&[(SocketAddr, std::net::TcpListener)]>,
) -> Result<Ingress, Error> {
    let metrics = routes.metrics().clone();
    let mut servers = Vec::new();
    for index in 0..threads {
        let mut server = new_server();
        let fds = bound.map(handover_fds).transpose()?;
        // A service owns its TLS settings: each thread loads the certificates.
        let tls = match &listeners.tls {
            Some(tls) => Some(tls_settings(tls)?),
            None => None,
        };
        let service = proxy_service(&server, listeners, routes.clone(), &config, tls);
        server.add_service(Handover::new(service, fds.clone()));
        if index == 0
            && let Some(admin) = listeners.admin
        {
            let mut service = Service::new(
                "stratus ingress admin".to_string(),
                AdminApp {
                    routes: routes.clone(),
                },
            );
            service.add_tcp(&admin.to_string());
            server.add_service(Handover::new(service, fds));
        }
        servers.push(server);
    }
    Ok(Ingress {
        servers,
        listen: listeners.http,
        metrics,
    })
}

/// A table of duplicates of `bound`, keyed as Pingora looks listeners up: by the address
/// string given to `add_tcp`.
fn handover_fds(bound: &[(SocketAddr, std::net::TcpListener)]) -> Result<ListenFds, Error> {
    let mut fds = Fds::new();
    for (addr, listener) in bound {
        let listen_error = |error: std::io::Error| Error::Listen {
            addr: addr.to_string(),
            reason: error.to_string(),
        };
        let copy = listener.try_clone().map_err(listen_error)?;
        // Tokio takes the socket as it is: a blocking one would stall the runtime in
        // accept.
        copy.set_nonblocking(true).map_err(listen_error)?;
        fds.add(addr.to_string(), copy.into_raw_fd());
    }
    Ok(Arc::new(parking_lot::Mutex::new(fds)))
}

/// A service that listens on the sockets it was handed (when it was) rather than on those
/// the server passes at start, which it would bind itself. Pingora has no other way in for
/// a socket bound before the server starts.
struct Handover<S> {
    inner: S,
    fds: Option<ListenFds>,
}

impl<S> Handover<S> {
    fn new(inner: S, fds: Option<ListenFds>) -> Handover<S> {
        Handover { inner, fds }
    }
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Handover<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        let fds = self.fds.clone().or(fds);
        self.inner
            .start_service(fds, shutdown, listeners_per_fd, ready_notifier)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: std::time::Duration) {
        self.inner.on_startup_delay(time_waited);
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// How many single-threaded proxy servers serve `listeners`: `threads`, at least 1, and
/// only 1 if a listener asks for any free port (each socket would get a different one).
fn proxy_threads(listeners: &Listeners, threads: usize) -> usize {
    let any_port = listeners.http.port() == 0
        || listeners
            .tls
            .as_ref()
            .is_some_and(|tls| tls.addr.port() == 0);
    if any_port { 1 } else { threads.max(1) }
}

/// A server whose services get one thread each.
fn new_server() -> Server {
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(GRACE_PERIOD_SECS),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

fn proxy_service(
    server: &Server,
    listeners: &Listeners,
    routes: Arc<RouteState>,
    config: &ProxyConfig,
    tls: Option<(SocketAddr, TlsSettings)>,
) -> Service<pingora_proxy::HttpProxy<Proxy>> {
    let mut options = HttpServerOptions::default();
    // HTTP/2 on the plain listener for clients that open with its preface; HTTP/1.1
    // clients are told apart by a peek and served as before.
    options.h2c = true;
    // One header map per request instead of two (values and original case): the copy sent
    // to the replica drops the case anyway (`Proxy::preserve_upstream_header_case`).
    options.discard_h1_request_header_case = true;
    let mut service = pingora_proxy::ProxyServiceBuilder::new(
        &server.configuration,
        Proxy::new(routes, config.clone()),
    )
    .name("stratus ingress")
    .server_options(options)
    .build();
    service.add_tcp_with_settings(&listeners.http.to_string(), reuse_port());
    if let Some((addr, settings)) = tls {
        service.add_tls_with_settings(&addr.to_string(), Some(reuse_port()), settings);
    }
    service.threads = Some(1);
    service
}

fn reuse_port() -> TcpSocketOptions {
    let mut options = TcpSocketOptions::default();
    options.so_reuseport = Some(true);
    options
}

fn tls_settings(tls: &TlsListener) -> Result<(SocketAddr, TlsSettings), Error> {
    let resolver = SniResolver::load(&tls.certs)?;
    // `intermediate` takes file paths that `build` would read; with a resolver set they are
    // ignored, and certificates come from the resolver.
    let mut settings = TlsSettings::intermediate("", "").map_err(|error| Error::Tls {
        path: Default::default(),
        reason: error.to_string(),
    })?;
    settings.set_cert_resolver(Arc::new(resolver));
    // ALPN: h2 preferred, HTTP/1.1 allowed.
    settings.enable_h2();
    Ok((tls.addr, settings))
}

/// The admin port: `GET /metrics` in the Prometheus text format.
struct AdminApp {
    routes: Arc<RouteState>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, content_type, body) = if session.req_header().uri.path() == "/metrics" {
            let summary = self.routes.summary(Instant::now()).await;
            let metrics = self.routes.metrics();
            metrics.set_routes(summary);
            (200, metrics::CONTENT_TYPE, metrics.render())
        } else {
            (
                404,
                "text/plain; charset=utf-8",
                b"not found: the admin port serves /metrics\n".to_vec(),
            )
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        if let Ok(value) = http::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, value);
        }
        let length = response.body().len();
        response.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
        response
    }
}

impl Ingress {
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// This ingress's metrics: the registry of its [`RouteState`].
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs each server on a new OS thread (never inside a tokio runtime). Listeners are
    /// bound asynchronously: callers that need them wait until they accept.
    pub fn spawn(self) -> std::io::Result<IngressHandle> {
        let (stop_tx, stop_rx) = watch::channel(None);
        // Built first, so that if a thread cannot start, dropping it stops the others.
        let mut handle = IngressHandle {
            stop: stop_tx,
            threads: Vec::with_capacity(self.servers.len()),
            listen: self.listen,
            metrics: self.metrics,
        };
        for (index, server) in self.servers.into_iter().enumerate() {
            let stop = stop_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ingress-{index}"))
                .spawn(move || {
                    server.run(RunArgs {
                        shutdown_signal: Box::new(StopWatch(stop)),
                    });
                })?;
            handle.threads.push(thread);
        }
        Ok(handle)
    }
}

/// A running ingress. Dropping it stops it fast.
pub struct IngressHandle {
    stop: watch::Sender<Option<Stop>>,
    threads: Vec<JoinHandle<()>>,
    listen: SocketAddr,
    metrics: Arc<Metrics>,
}

impl IngressHandle {
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// This ingress's metrics: the registry of its [`RouteState`].
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Stops the servers and waits for their threads. Blocking: from async code, call it
    /// in `spawn_blocking`.
    pub fn stop(mut self, how: Stop) {
        self.stop_and_join(how);
    }

    fn stop_and_join(&mut self, how: Stop) {
        self.stop.send_replace(Some(how));
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an ingress server thread panicked");
            }
        }
    }
}

impl Drop for IngressHandle {
    fn drop(&mut self) {
        self.stop_and_join(Stop::Fast);
    }
}

struct StopWatch(watch::Receiver<Option<Stop>>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut stop = self.0.clone();
        let how = match stop.wait_for(Option::is_some).await {
            Ok(value) => *value,
            // The handle is gone without a word: stop.
            Err(_) => Some(Stop::Fast),
        };
        match how {
            Some(Stop::Graceful) => ShutdownSignal::GracefulTerminate,
            _ => ShutdownSignal::FastShutdown,
        }
    }
}
